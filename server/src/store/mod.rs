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
//! | `chat:{room}:epoch` | hash | the room's epoch, the `run_id` of the Redis that started it, its start offset (see [`lua`]) |
//! | `chat:{room}:idem:<bucket>` | hash, TTL | `<n>:<nick>:<id>` → `"<offset> <epoch>"` of each send with an id in that time bucket |
//! | `chat:{room}:log` | stream | bounded history; entry id `<offset>-0`, field `f` = the frame |
//! | `chat:{room}:members` | hash | conn_id → `{"nick","app_id","boot"}` |
//! | `chat:{room}:msgs` | channel | every message and presence frame of the room |
//! | `chat:instance:<app_id>` | string, TTL | the instance's heartbeat (JSON) |
//! | `chat:instances` | set | every app_id ever seen, for `/cluster` |

mod link;
mod lua;
mod messages;
mod presence;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Cmd, ErrorKind, FromRedisValue, Script};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use link::{Link, Linker, Target};

/// A Redis failure, already counted in metrics.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing was sent: there is no connection to Redis.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// `--redis-wait-replicas`: appended on the master, but fewer replicas
    /// than asked confirmed it in time, so it was not published.
    #[error("only {acked} of {wanted} replicas confirmed the message in time")]
    NotReplicated { acked: i64, wanted: u32 },
}

impl StoreError {
    /// Whether a write that failed this way may still have been applied
    /// (the command may have reached Redis): a timeout or a broken
    /// connection. An error reply or no connection at all means it was not.
    pub fn maybe_applied(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::NotReplicated { .. } => true,
            Self::Redis(e) => !matches!(e.kind(), ErrorKind::Server(_)),
            Self::Unavailable(_) | Self::Reply(_) => false,
        }
    }
}

impl StoreError {
    /// A write refused by a replica: the connection reaches a node that is
    /// no longer the master.
    pub fn is_readonly(&self) -> bool {
        matches!(self, Self::Redis(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What publishing a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    pub epoch: String,
    /// The send's id was seen before: nothing was published; `offset` and
    /// `epoch` are the original's.
    pub duplicate: bool,
}

/// A room's sequence as Redis holds it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub epoch: String,
    /// The latest offset (or, right after a new epoch began, the offset
    /// the epoch starts after).
    pub head: u64,
    /// The current epoch's first offset is `start + 1`.
    pub start: u64,
}

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

fn epoch_key(room: &str) -> String {
    format!("chat:{{{room}}}:epoch")
}

/// The idempotency bucket `n` of a room (see [`lua`]).
fn idem_key(room: &str, bucket: u64) -> String {
    format!("chat:{{{room}}}:idem:{bucket}")
}

/// A send's field in the idempotency buckets: the sender's nick and the
/// send's id (the nick's length first, so no two pairs collide).
fn idem_field(sender: &str, id: &str) -> String {
    format!("{}:{sender}:{id}", sender.len())
}

/// A fresh epoch name: 12 hex digits, unique enough that two epochs of a
/// room never share one.
fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
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
    /// The room's sequence when the entries were read.
    pub head: Head,
    /// The entries asked for, in offset order.
    pub entries: Vec<(u64, Bytes)>,
    /// The oldest offset history still holds, if any.
    pub first: Option<u64>,
}

/// A cheap-to-clone handle on the command connection.
#[derive(Clone)]
pub struct Store {
    linker: Arc<Linker>,
    publish: Arc<Script>,
    head: Arc<Script>,
    metrics: Arc<Metrics>,
    history_len: u32,
    timeout: Duration,
    /// How long a send's id is remembered (zero: not at all).
    idem_ttl: Duration,
    /// Replicas that must confirm a message before it is published (0:
    /// publish at once).
    wait_replicas: u32,
    wait_timeout: Duration,
    /// Times the sentinels named another master than the one connected:
    /// the pub/sub connection must move too.
    master_moves: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store that connects lazily and reconnects by itself, so the server
    /// starts (and stays up) while Redis is down.
    pub fn new(
        redis_url: &str,
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> StoreResult<Self> {
        let target = Target::Single(link::client(redis_url)?);
        Ok(Self::with_target(target, metrics, history_len, idem_ttl))
    }

    /// A store whose master is whatever the sentinels name now: every
    /// reconnect asks them again, and [`Store::check_master`] notices a
    /// failover even while the old master still answers.
    pub fn with_sentinels(
        redis_url: &str,
        sentinels: &[String],
        master: &str,
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> StoreResult<Self> {
        let target = Target::sentinel(redis_url, sentinels, master)?;
        Ok(Self::with_target(target, metrics, history_len, idem_ttl))
    }

    fn with_target(
        target: Target,
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> Self {
        let timeout = Duration::from_secs(2);
        let (publish, head) = (lua::publish(), lua::head());
        Self {
            publish: Arc::new(Script::new(&publish)),
            head: Arc::new(Script::new(&head)),
            linker: Arc::new(Linker::new(target, timeout, vec![publish, head])),
            metrics,
            history_len,
            timeout,
            idem_ttl,
            master_moves: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(200),
        }
    }

    /// Publish a message only after `replicas` replicas confirmed it
    /// (`WAIT`), waiting at most `timeout`; otherwise the send is answered
    /// `timeout` and the message reaches others only by repair.
    pub fn with_wait(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    /// A client for the current master (TCP keepalive and no Nagle set),
    /// for the pub/sub connection.
    pub async fn client(&self) -> StoreResult<redis::Client> {
        self.linker.client().await
    }

    /// With sentinels: ask them which node is the master; if it is not the
    /// one connected (a failover, or the old master came back as a
    /// replica), drop the command connection and count a move, so the
    /// subscriber reconnects too. Without sentinels it does nothing.
    pub async fn check_master(&self) {
        if !self.linker.follows_sentinels() {
            return;
        }
        let Some(current) = self.linker.current_addr() else {
            return;
        };
        match self.linker.client().await {
            Ok(c) => {
                let named = c.get_connection_info().addr().to_string();
                if named != current {
                    tracing::warn!(
                        from = current,
                        to = named,
                        "the sentinels name a new master: moving"
                    );
                    self.linker.drop_current();
                    self.master_moves
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot ask the sentinels"),
        }
    }

    /// How many times [`Store::check_master`] saw the master move.
    pub fn master_moves(&self) -> u64 {
        self.master_moves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop the command connection, so the next call connects afresh: the
    /// pub/sub connection went silent, and the command connection shares
    /// its path (a hung Redis, a half-open link), so waiting out its
    /// timeout would only delay the repair.
    pub fn reconnect(&self) {
        self.linker.drop_current();
    }

    /// How many times Redis was replaced (restarted, failed over) under
    /// this store, as seen by its command connection.
    pub fn redis_replacements(&self) -> u64 {
        self.linker.replacements()
    }

    /// Entries each room keeps in history.
    pub fn history_len(&self) -> u32 {
        self.history_len
    }

    /// How long one command may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn link(&self) -> StoreResult<Arc<Link>> {
        let r = self.linker.get().await;
        if r.is_err() {
            self.metrics.redis_rtt(0, false);
        }
        r
    }

    /// Run `fut` (a command on `link`) under the timeout; a link that timed
    /// out or broke is dropped, so the next call reconnects rather than
    /// queueing behind a hung connection.
    async fn timed<T, F>(&self, link: &Arc<Link>, fut: F) -> StoreResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let start = Instant::now();
        let res = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        // A link that timed out or broke may be hung; one that got
        // READONLY reaches a master that was demoted (a failover): either
        // way the next call connects afresh (asking the sentinels again).
        if res
            .as_ref()
            .err()
            .is_some_and(|e| e.maybe_applied() || e.is_readonly())
        {
            self.linker.failed(link);
        }
        self.metrics
            .redis_rtt(start.elapsed().as_micros() as u64, res.is_ok());
        res
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        let link = self.link().await?;
        let mut conn = link.conn.clone();
        self.timed(&link, cmd.query_async(&mut conn)).await
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> StoreResult<T> {
        let link = self.link().await?;
        let mut conn = link.conn.clone();
        self.timed(&link, pipe.query_async(&mut conn)).await
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
