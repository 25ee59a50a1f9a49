//! The Redis command side: publishing messages, history, presence and the
//! instance registry. Pub/sub *receiving* lives in [`crate::hub`].
//!
//! # Keys
//! The room name sits in a hash tag so that a room's keys share a slot in
//! Redis Cluster.
//!
//! | key | type | what |
//! |---|---|---|
//! | `chat:{room}:seq` | string | the room's last offset |
//! | `chat:{room}:log` | stream | bounded history; entry id `<offset>-0`, field `f` = the frame |
//! | `chat:{room}:members` | hash | conn_id → `{"nick","app_id","boot"}` |
//! | `chat:{room}:msgs` | channel | every message and presence frame of the room |
//! | `chat:instance:<app_id>` | string, TTL | the instance's heartbeat (JSON) |
//! | `chat:instances` | set | every app_id ever seen, for `/cluster` |

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, Script, Value};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// A Redis failure, already counted in metrics.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Appends a message to the room's history and publishes it, atomically,
/// so that offset order is publish order across every instance.
///
/// KEYS: seq, log. ARGV: tail, history length, offset base, channel.
/// A fresh `seq` (a new room, or a Redis that lost its data) starts at the
/// base, milliseconds since the epoch × 1000, so offsets never go backwards
/// even when Redis forgets a room.
const PUBLISH_LUA: &str = r#"
local off = redis.call('INCR', KEYS[1])
if off == 1 then
  redis.call('SET', KEYS[1], ARGV[3])
  off = tonumber(ARGV[3])
end
local id = string.format('%d', off)
local frame = '{"type":"message","offset":' .. id .. ',' .. ARGV[1]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 'f', frame)
redis.call('PUBLISH', ARGV[4], frame)
return off
"#;

/// The channel of a room.
pub fn channel(room: &str) -> String {
    format!("chat:{{{room}}}:msgs")
}

/// The room of a channel, if it is a room channel.
pub fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("chat:{")?.strip_suffix("}:msgs")
}

fn seq_key(room: &str) -> String {
    format!("chat:{{{room}}}:seq")
}

fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}

fn members_key(room: &str) -> String {
    format!("chat:{{{room}}}:members")
}

fn instance_key(app_id: &str) -> String {
    format!("chat:instance:{app_id}")
}

const INSTANCES_KEY: &str = "chat:instances";

/// A member's entry in a room's presence hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub nick: String,
    pub app_id: String,
    /// The boot id of the instance holding the connection; an entry whose
    /// instance boot is no longer alive is stale.
    pub boot: String,
}

/// An instance's heartbeat, as stored in the registry and shown by `/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_id: String,
    pub boot: String,
    pub listen: String,
    pub connections: u64,
    pub rooms: u64,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
}

/// What history holds for a resume.
#[derive(Debug, Default)]
pub struct History {
    /// The room's latest offset (0: no message yet).
    pub head: u64,
    /// The entries asked for, in offset order.
    pub entries: Vec<(u64, Bytes)>,
    /// The oldest offset history still holds, if any.
    pub first: Option<u64>,
}

/// A cheap-to-clone handle on the command connection.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    client: Client,
    publish: Arc<Script>,
    metrics: Arc<Metrics>,
    history_len: u32,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store that connects lazily and reconnects by itself, so the server
    /// starts (and stays up) while Redis is down.
    pub fn new(redis_url: &str, metrics: Arc<Metrics>, history_len: u32) -> StoreResult<Self> {
        let client = Client::open(redis_url)?;
        let timeout = Duration::from_secs(2);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            conn,
            client,
            publish: Arc::new(Script::new(PUBLISH_LUA)),
            metrics,
            history_len,
            timeout,
        })
    }

    /// The client, for the pub/sub connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn timed<T, F>(&self, fut: F) -> StoreResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let start = Instant::now();
        let res = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.metrics
            .redis_rtt(start.elapsed().as_micros() as u64, res.is_ok());
        res
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        self.timed(cmd.query_async(&mut conn)).await
    }

    /// PING, for `/healthz`.
    pub async fn ping(&self) -> StoreResult<()> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Reply(pong))
        }
    }

    /// Append and publish a chat message; returns its offset.
    pub async fn publish_message(&self, room: &str, tail: &str) -> StoreResult<u64> {
        let base = crate::now_ms().saturating_mul(1000);
        let mut conn = self.conn.clone();
        let mut inv = self.publish.prepare_invoke();
        inv.key(seq_key(room))
            .key(log_key(room))
            .arg(tail)
            .arg(self.history_len)
            .arg(base)
            .arg(channel(room));
        self.timed(inv.invoke_async(&mut conn)).await
    }

    /// Publish a frame that has no offset (presence) on a room's channel.
    pub async fn publish_raw(&self, room: &str, frame: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("PUBLISH").arg(channel(room)).arg(frame))
            .await
            .map(drop)
    }

    /// The room's latest offset.
    pub async fn head(&self, room: &str) -> StoreResult<u64> {
        let v: Option<u64> = self.query(redis::cmd("GET").arg(seq_key(room))).await?;
        Ok(v.unwrap_or(0))
    }

    /// Everything after `since` (at most `history_len` entries), the head
    /// and the oldest offset still held.
    pub async fn history_since(&self, room: &str, since: u64) -> StoreResult<History> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(seq_key(room))
            .cmd("XRANGE")
            .arg(log_key(room))
            .arg(format!("{}-0", since.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(self.history_len)
            .cmd("XRANGE")
            .arg(log_key(room))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let mut conn = self.conn.clone();
        let (head, entries, first): (Option<u64>, Value, Value) =
            self.timed(pipe.query_async(&mut conn)).await?;
        Ok(History {
            head: head.unwrap_or(0),
            entries: parse_entries(entries)?,
            first: parse_entries(first)?.first().map(|(o, _)| *o),
        })
    }

    /// The last `n` messages, oldest first, and the head.
    pub async fn history_last(&self, room: &str, n: u32) -> StoreResult<History> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(seq_key(room))
            .cmd("XREVRANGE")
            .arg(log_key(room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n.min(self.history_len));
        let mut conn = self.conn.clone();
        let (head, entries): (Option<u64>, Value) = self.timed(pipe.query_async(&mut conn)).await?;
        let mut entries = parse_entries(entries)?;
        entries.reverse();
        Ok(History {
            head: head.unwrap_or(0),
            first: entries.first().map(|(o, _)| *o),
            entries,
        })
    }

    /// Offsets `from..=to` from history.
    pub async fn range(&self, room: &str, from: u64, to: u64) -> StoreResult<Vec<(u64, Bytes)>> {
        let v: Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(log_key(room))
                    .arg(format!("{from}-0"))
                    .arg(format!("{to}-0")),
            )
            .await?;
        parse_entries(v)
    }

    /// Record a member in a room's presence hash; returns the number of
    /// members now recorded.
    pub async fn add_member(
        &self,
        room: &str,
        conn_id: &str,
        entry: &MemberEntry,
    ) -> StoreResult<u64> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Reply(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(members_key(room))
            .arg(conn_id)
            .arg(json)
            .ignore()
            .cmd("HLEN")
            .arg(members_key(room));
        let mut conn = self.conn.clone();
        let (n,): (u64,) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(n)
    }

    /// Remove a member. Returns whether this call removed it (so exactly
    /// one caller announces the leave) and how many members remain.
    pub async fn remove_member(&self, room: &str, conn_id: &str) -> StoreResult<(bool, u64)> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(members_key(room))
            .arg(conn_id)
            .cmd("HLEN")
            .arg(members_key(room));
        let mut conn = self.conn.clone();
        let (removed, left): (u64, u64) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok((removed > 0, left))
    }

    /// Every entry of a room's presence hash, stale ones included.
    pub async fn members(&self, room: &str) -> StoreResult<Vec<(String, MemberEntry)>> {
        let raw: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(members_key(room)))
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, json)| serde_json::from_str(&json).ok().map(|e| (id, e)))
            .collect())
    }

    /// Refresh this instance's registry entry.
    pub async fn heartbeat(&self, info: &InstanceInfo, ttl: Duration) -> StoreResult<()> {
        let json = serde_json::to_string(info).map_err(|e| StoreError::Reply(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(instance_key(&info.app_id))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(INSTANCES_KEY)
            .arg(&info.app_id)
            .ignore();
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Remove this instance's registry entry (graceful shutdown).
    pub async fn deregister(&self, app_id: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("DEL").arg(instance_key(app_id)))
            .await
            .map(drop)
    }

    /// Every live instance (heartbeat not expired), sorted by app_id.
    pub async fn instances(&self) -> StoreResult<Vec<InstanceInfo>> {
        let ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(INSTANCES_KEY))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| instance_key(id)).collect();
        let vals: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut live: Vec<InstanceInfo> = vals
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        live.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        Ok(live)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip() {
        assert_eq!(channel("lobby"), "chat:{lobby}:msgs");
        assert_eq!(room_of_channel("chat:{lobby}:msgs"), Some("lobby"));
        assert_eq!(room_of_channel("other"), None);
    }
}
