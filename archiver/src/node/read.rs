//! Reading one stream: this consumer's own pending entries, claims of
//! other consumers' idle ones, then new entries (see [`super`]).

use redis::{ErrorKind, RedisError, Value};

use super::{Node, GROUP};
use crate::entries::{self, log_key, Entry};

impl Node {
    /// Read up to `want` entries of `room`'s log (see [`super`]).
    pub(super) async fn read_stream(
        &mut self,
        room: &str,
        want: usize,
    ) -> Result<Vec<Entry>, RedisError> {
        let key = log_key(room);
        let mut conn = self.conn()?;
        let consumer = self.shared.consumer.clone();
        let shared = self.shared.clone();
        let Some(st) = self.streams.get_mut(room) else {
            return Ok(Vec::new());
        };
        if !st.group {
            let r: Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(GROUP)
                .arg("0")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => tracing::debug!(room, "created the archiver group"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                // The stream is gone (expired): never create it.
                Err(e)
                    if matches!(e.kind(), ErrorKind::Server(_))
                        && e.to_string().contains("key to exist") =>
                {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(e),
            }
            st.group = true;
        }
        let mut out = Vec::new();
        let res = async {
            if st.own_pending {
                let v: Value = xreadgroup(&consumer, &key, want, "0").query_async(&mut conn).await?;
                let got = entries::parse_xreadgroup(room, &v).map_err(reply_error)?;
                if got.is_empty() {
                    st.own_pending = false;
                }
                out.extend(got);
            }
            if let Some(cursor) = st.claim_cursor.clone().filter(|_| out.len() < want) {
                let v: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(shared.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(want - out.len())
                    .query_async(&mut conn)
                    .await?;
                let c = entries::parse_xautoclaim(room, &v).map_err(reply_error)?;
                if !c.entries.is_empty() {
                    tracing::info!(room, entries = c.entries.len(), "claimed entries another archiver left pending");
                    shared.metrics.claimed(c.entries.len() as u64);
                }
                if !c.deleted.is_empty() {
                    shared.metrics.lost(c.deleted.len() as u64);
                    tracing::warn!(room, entries = c.deleted.len(), first = %c.deleted[0], "pending entries left the stream before they were archived: lost");
                }
                st.claim_cursor = (c.next != "0-0").then_some(c.next);
                out.extend(c.entries);
            }
            if out.len() < want {
                let v: Value = xreadgroup(&consumer, &key, want - out.len(), ">").query_async(&mut conn).await?;
                out.extend(entries::parse_xreadgroup(room, &v).map_err(reply_error)?);
            }
            Ok::<(), RedisError>(())
        }
        .await;
        match res {
            Ok(()) => Ok(out),
            Err(e) if e.code() == Some("NOGROUP") => {
                // The key expired and came back: the group goes again.
                st.group = false;
                st.own_pending = true;
                Ok(out)
            }
            Err(e) if !out.is_empty() => {
                // Keep what was read (it is pending now); report the rest.
                self.failed("read", &e);
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }
}

fn xreadgroup(consumer: &str, key: &str, count: usize, from: &str) -> redis::Cmd {
    let mut c = redis::cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(key)
        .arg(from);
    c
}

fn reply_error(msg: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected reply", msg))
}
