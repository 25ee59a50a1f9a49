//! Chat messages in Redis: publishing (with its epoch and idempotency
//! key, see [`super::lua`]), a room's head, and history reads.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use redis::Value;

use super::router::key_slot;
use super::{
    channel, epoch_key, idem_field, idem_key, log_key, new_epoch, room_slot, seq_key, Conn, Head,
    History, Published, Store, StoreError, StoreResult,
};

impl Store {
    /// Append and publish a chat message. With `idem` (the sender's nick
    /// and the send's id) a retry of a send already applied publishes
    /// nothing and returns the original offset.
    pub async fn publish_message(
        &self,
        room: &str,
        tail: &str,
        idem: Option<(&str, &str)>,
    ) -> StoreResult<Published> {
        let now = crate::now_ms();
        let base = now.saturating_mul(1000);
        // Buckets as long as the TTL; one lives two buckets long.
        let width = (self.idem_ttl.as_millis() as u64).max(1);
        let bucket = now / width;
        let field = match idem {
            Some((nick, id)) if !self.idem_ttl.is_zero() => idem_field(nick, id),
            _ => String::new(),
        };
        let (seq, log, ep) = (seq_key(room), log_key(room), epoch_key(room));
        let (bucket_now, bucket_before) = (
            idem_key(room, bucket),
            idem_key(room, bucket.saturating_sub(1)),
        );
        let keys = [&seq, &log, &ep, &bucket_now, &bucket_before];
        let defer = self.wait_replicas > 0;
        let chan = channel(room);
        let publish_cmd = self.publish_command();
        let (keys, chan, field) = (&keys, &chan, &field);
        self.on_slot(room_slot(room), |c: Conn| async move {
            let c = &c;
            let mut eval = redis::cmd("EVALSHA");
            eval.arg(self.publish.get_hash())
                .arg(keys.len())
                .arg(&keys[..]);
            eval.arg(&*c.link.run_id)
                .arg(new_epoch())
                .arg(base)
                .arg(tail)
                .arg(self.history_len)
                .arg(chan)
                .arg(field)
                .arg(width.saturating_mul(2))
                .arg(if defer { "1" } else { "0" })
                .arg(publish_cmd)
                .arg(self.room_ttl.as_millis() as u64)
                .arg(self.history_bytes)
                .arg(self.archive_backlog);
            let mut conn = c.link.conn.clone();
            // The scripts are loaded on every new connection (see `link`),
            // so EVALSHA finds them.
            let (res, dup, frame, overflow) = if defer {
                // Append now, publish only once enough replicas have it: a
                // failover to any of them then loses nothing that was seen.
                let mut pipe = redis::pipe();
                pipe.add_command(eval)
                    .cmd("WAIT")
                    .arg(self.wait_replicas)
                    .arg(self.wait_timeout.as_millis() as u64);
                let ((res, dup, frame, overflow), acked): ((String, i64, String, u64), i64) =
                    self.timed(c, pipe.query_async(&mut conn)).await?;
                if dup == 0 && acked < i64::from(self.wait_replicas) {
                    return Err(StoreError::NotReplicated {
                        acked,
                        wanted: self.wait_replicas,
                    });
                }
                (res, dup, Some(frame), overflow)
            } else {
                let (res, dup, _, overflow): (String, i64, String, u64) =
                    self.timed(c, eval.query_async(&mut conn)).await?;
                (res, dup, None, overflow)
            };
            if overflow > 0 {
                self.metrics.archive_overflow.fetch_add(overflow, Relaxed);
                tracing::warn!(
                    room,
                    overflow,
                    "history trimmed messages the archiver had not stored: \
                     raise --archive-backlog or check the archiver"
                );
            }
            let (offset, epoch) = res
                .split_once(' ')
                .and_then(|(o, e)| Some((o.parse().ok()?, e.to_string())))
                .ok_or_else(|| StoreError::Reply(format!("publish: {res:?}")))?;
            if let Some(frame) = frame.filter(|f| dup == 0 && !f.is_empty()) {
                // Subscribers that miss it (this fails) get it by repair: it
                // is in history, and the next message shows the hole.
                let publish = redis::cmd(publish_cmd).arg(chan).arg(frame).clone();
                self.timed::<i64, _>(c, publish.query_async(&mut conn))
                    .await?;
            }
            Ok(Published {
                offset,
                epoch,
                duplicate: dup != 0,
            })
        })
        .await
    }

    /// Publish a frame that has no offset (presence) on a room's channel.
    pub async fn publish_raw(&self, room: &str, frame: &str) -> StoreResult<()> {
        self.publish_to(&channel(room), frame).await
    }

    /// Publish on an arbitrary channel (the liveness probe); on a cluster
    /// it is a shard channel, published on the master of its slot.
    pub async fn publish_to(&self, channel: &str, payload: &str) -> StoreResult<()> {
        let cmd = redis::cmd(self.publish_command())
            .arg(channel)
            .arg(payload)
            .clone();
        self.query::<i64>(key_slot(channel), &cmd).await.map(drop)
    }

    /// The room's epoch and head, starting a new epoch first if Redis is
    /// not the process that started the current one (see [`lua`]).
    pub async fn head(&self, room: &str) -> StoreResult<Head> {
        let base = crate::now_ms().saturating_mul(1000);
        self.on_slot(room_slot(room), |c: Conn| async move {
            let c = &c;
            let mut inv = self.head.prepare_invoke();
            inv.key(seq_key(room))
                .key(log_key(room))
                .key(epoch_key(room))
                .arg(&*c.link.run_id)
                .arg(new_epoch())
                .arg(base)
                .arg(self.room_ttl.as_millis() as u64);
            let mut conn = c.link.conn.clone();
            let (epoch, head, start): (String, u64, u64) =
                self.timed(c, inv.invoke_async(&mut conn)).await?;
            Ok(Head { epoch, head, start })
        })
        .await
    }

    /// Entries after offset `after` (at most `history_len`), the room's
    /// head, and the oldest offset history still holds.
    pub async fn history_after(&self, room: &str, head: Head, after: u64) -> StoreResult<History> {
        self.history_after_n(room, head, after, self.history_len)
            .await
    }

    /// Like [`Store::history_after`], at most `count` entries (one page of
    /// a replay; the next page is [`Store::history_page`]).
    pub async fn history_after_n(
        &self,
        room: &str,
        head: Head,
        after: u64,
        count: u32,
    ) -> StoreResult<History> {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(log_key(room))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .cmd("XRANGE")
            .arg(log_key(room))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (entries, first): (Value, Value) = self.query_pipe(room_slot(room), &pipe).await?;
        Ok(History {
            head,
            entries: parse_entries(entries)?,
            first: parse_entries(first)?.first().map(|(o, _)| *o),
        })
    }

    /// At most `count` entries after offset `after`, in offset order.
    pub async fn history_page(
        &self,
        room: &str,
        after: u64,
        count: u32,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        let v: Value = self
            .query(
                room_slot(room),
                redis::cmd("XRANGE")
                    .arg(log_key(room))
                    .arg(format!("{}-0", after.saturating_add(1)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count.max(1)),
            )
            .await?;
        parse_entries(v)
    }

    /// At most `count` entries below offset `before` (or the newest, with
    /// none), newest first.
    pub async fn history_before(
        &self,
        room: &str,
        before: Option<u64>,
        count: u32,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        let end = match before {
            Some(0) => return Ok(Vec::new()),
            Some(b) => format!("{}-0", b - 1),
            None => "+".to_string(),
        };
        let v: Value = self
            .query(
                room_slot(room),
                redis::cmd("XREVRANGE")
                    .arg(log_key(room))
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(count.max(1)),
            )
            .await?;
        parse_entries(v)
    }

    /// Offsets `from..=to` from history.
    pub async fn range(&self, room: &str, from: u64, to: u64) -> StoreResult<Vec<(u64, Bytes)>> {
        let v: Value = self
            .query(
                room_slot(room),
                redis::cmd("XRANGE")
                    .arg(log_key(room))
                    .arg(format!("{from}-0"))
                    .arg(format!("{to}-0")),
            )
            .await?;
        parse_entries(v)
    }
}

/// Parse an XRANGE reply: `[[id, [field, value, ...]], ...]` into
/// `(offset, frame)` pairs.
fn parse_entries(v: Value) -> StoreResult<Vec<(u64, Bytes)>> {
    let bad = |what: &str| StoreError::Reply(format!("stream entry: {what}"));
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("not an array")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(bad("entry not an array"));
        };
        if pair.len() != 2 {
            return Err(bad("entry not a pair"));
        }
        let fields = pair.pop().expect("len 2");
        let id = pair.pop().expect("len 2");
        let id: String = redis::from_redis_value(id).map_err(|e| bad(&e.to_string()))?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| bad("id"))?;
        let Value::Array(mut fields) = fields else {
            return Err(bad("fields not an array"));
        };
        if fields.len() < 2 {
            return Err(bad("no field"));
        }
        let frame = match fields.swap_remove(1) {
            Value::BulkString(b) => Bytes::from(b),
            Value::SimpleString(s) => Bytes::from(s),
            _ => return Err(bad("frame not a string")),
        };
        out.push((offset, frame));
    }
    Ok(out)
}
