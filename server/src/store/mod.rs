//! The Redis command side: publishing messages, history, presence and the
//! instance registry. Pub/sub *receiving* lives in [`crate::hub`].
//!
//! # Keys
//! The room name sits in a hash tag so that a room's keys share a slot in
//! Redis Cluster.
//!
//! | key | type | what |
//! |---|---|---|
//! | `chat:{room}:seq` | string, TTL | the room's last offset |
//! | `chat:{room}:epoch` | hash, TTL | the room's epoch, the `run_id` of the Redis that started it, and its start offset (see [`lua`]); `archived`: the archiver's watermark (every entry at or below it is stored in PostgreSQL), `overflow`: entries trimmed before the archiver stored them (`--archive-backlog`) |
//! | `chat:{room}:idem:<bucket>` | hash, TTL | `<n>:<nick>:<id>` → `"<offset> <epoch>"` of each send with an id in that time bucket |
//! | `chat:{room}:log` | stream, TTL | bounded history; entry id `<offset>-0`, field `f` = the frame |
//! | `chat:{room}:members` | hash | conn_id → `{"nick","app_id","boot"}` (and `"sub"` for an authenticated member) |
//! | `chat:{room}:nicks` | hash | nick → `"<owner>\n<conn_id>"`: who holds each nick in the room (see [`Store::claim_nick`]) |
//! | `chat:{room}:msgs` | channel | every message and presence frame of the room |
//! | `chat:{registry}:instance:<app_id>` | string, TTL | the instance's heartbeat (JSON) |
//! | `chat:{registry}:instances` | set | every app_id ever seen, for `/cluster` |
//!
//! With `--room-ttl`, seq, log and epoch expire together after that long
//! without a message (every publish sets the TTL again); the room then
//! starts a new epoch, so a resume is told `recovered: false`.
//!
//! The registry's keys share one hash tag too, so `/cluster`'s `MGET`
//! never spans slots. With `--redis-cluster` a room's channel is a shard
//! channel (`SPUBLISH`/`SSUBSCRIBE`) in the room's slot.

mod link;
mod lua;
mod messages;
mod presence;
pub mod router;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Cmd, ErrorKind, FromRedisValue, Script};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use link::{Link, Linker, Target};
use router::{key_slot, Router};

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
    /// A cluster redirection or refusal: `MOVED`, `ASK`, `TRYAGAIN` or
    /// `CLUSTERDOWN` (nothing was applied).
    pub fn is_redirect(&self) -> bool {
        use redis::ServerErrorKind as K;
        matches!(self, Self::Redis(e) if matches!(
            e.kind(),
            ErrorKind::Server(K::Moved | K::Ask | K::TryAgain | K::ClusterDown)
        ))
    }

    /// `MOVED`: the slot has another owner for good.
    pub fn is_moved(&self) -> bool {
        matches!(self, Self::Redis(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::Moved))
    }

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

fn nicks_key(room: &str) -> String {
    format!("chat:{{{room}}}:nicks")
}

fn instance_key(app_id: &str) -> String {
    format!("chat:{{registry}}:instance:{app_id}")
}

const INSTANCES_KEY: &str = "chat:{registry}:instances";

/// The hash slot of every key and of the channel of `room`.
pub fn room_slot(room: &str) -> u16 {
    key_slot(&seq_key(room))
}

/// The hash slot of the registry's keys.
fn registry_slot() -> u16 {
    key_slot(INSTANCES_KEY)
}

/// Every key of `room` and its channel, for tests that check they share
/// one slot.
pub fn room_keys(room: &str) -> Vec<String> {
    vec![
        seq_key(room),
        log_key(room),
        epoch_key(room),
        idem_key(room, 0),
        idem_key(room, u64::MAX),
        members_key(room),
        nicks_key(room),
        channel(room),
    ]
}

/// A member's entry in a room's presence hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub nick: String,
    pub app_id: String,
    /// The boot id of the instance holding the connection; an entry whose
    /// instance boot is no longer alive is stale.
    pub boot: String,
    /// The token subject of an authenticated member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
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
    /// Where clients connect to it directly (`--public-url`).
    #[serde(default)]
    pub public_url: String,
    /// Its connection cap (0: unknown, an older instance).
    #[serde(default)]
    pub max_connections: u64,
    /// Whether it takes new connections: its subscription is live and it
    /// is not draining.
    #[serde(default = "yes")]
    pub healthy: bool,
}

fn yes() -> bool {
    true
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

/// Where commands go: one master (fixed, or named by the sentinels), or
/// the master of each key's slot in a Redis Cluster.
#[derive(Debug)]
enum Links {
    One(Arc<Linker>),
    Cluster(Box<Router>),
}

/// A link together with the linker that made it (to drop it on failure).
struct Conn {
    linker: Arc<Linker>,
    link: Arc<Link>,
}

/// A cheap-to-clone handle on the command connection(s).
#[derive(Clone)]
pub struct Store {
    links: Arc<Links>,
    publish: Arc<Script>,
    head: Arc<Script>,
    nick_claim: Arc<Script>,
    depart: Arc<Script>,
    metrics: Arc<Metrics>,
    history_len: u32,
    timeout: Duration,
    /// How long a send's id is remembered (zero: not at all).
    idem_ttl: Duration,
    /// Replicas that must confirm a message before it is published (0:
    /// publish at once).
    wait_replicas: u32,
    wait_timeout: Duration,
    /// How long a room's message keys live without a message (zero:
    /// forever).
    room_ttl: Duration,
    /// Most bytes of Redis memory a room's history uses (zero: no byte cap).
    history_bytes: u64,
    /// Entries beyond the history length kept for the archiver (zero: no
    /// archiver; see [`lua`]).
    archive_backlog: u32,
    /// Times the sentinels named another master than the one connected,
    /// or the cluster's slot map changed: the pub/sub connection must move
    /// too.
    master_moves: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The response timeout of every command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// A store on a Redis Cluster found through `nodes` (`HOST:PORT`);
    /// `redis_url` gives the user and password.
    pub fn with_cluster(
        redis_url: &str,
        nodes: &[String],
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> StoreResult<Self> {
        let router = Router::new(redis_url, nodes, COMMAND_TIMEOUT, scripts())?;
        Ok(Self::with_links(
            Links::Cluster(Box::new(router)),
            metrics,
            history_len,
            idem_ttl,
        ))
    }

    fn with_target(
        target: Target,
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> Self {
        let linker = Linker::new(target, COMMAND_TIMEOUT, scripts());
        Self::with_links(Links::One(Arc::new(linker)), metrics, history_len, idem_ttl)
    }

    fn with_links(
        links: Links,
        metrics: Arc<Metrics>,
        history_len: u32,
        idem_ttl: Duration,
    ) -> Self {
        Self {
            publish: Arc::new(Script::new(&lua::publish())),
            head: Arc::new(Script::new(&lua::head())),
            nick_claim: Arc::new(Script::new(lua::nick_claim())),
            depart: Arc::new(Script::new(lua::depart())),
            links: Arc::new(links),
            metrics,
            history_len,
            timeout: COMMAND_TIMEOUT,
            idem_ttl,
            master_moves: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(200),
            room_ttl: Duration::ZERO,
            history_bytes: 0,
            archive_backlog: 0,
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

    /// A room's seq, log and epoch expire after `ttl` without a message
    /// (zero: never); the next publish or join starts a new epoch.
    pub fn with_room_ttl(mut self, ttl: Duration) -> Self {
        self.room_ttl = ttl;
        self
    }

    /// A room's history uses at most about `bytes` of Redis memory besides
    /// `--history` entries (zero: no byte cap); the newest always stays.
    pub fn with_history_bytes(mut self, bytes: u64) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// Keep history entries the archiver has not stored (above its
    /// watermark), up to `backlog` beyond `--history` (zero: no archiver).
    pub fn with_archive_backlog(mut self, backlog: u32) -> Self {
        self.archive_backlog = backlog;
        self
    }

    /// On a Redis Cluster: rooms are shard channels (`SPUBLISH`).
    pub fn is_cluster(&self) -> bool {
        matches!(*self.links, Links::Cluster(_))
    }

    /// The command that publishes on a room's channel.
    fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// A client for the current master (TCP keepalive and no Nagle set),
    /// for the pub/sub connection (not on a cluster: see
    /// [`Store::cluster_client`]).
    pub async fn client(&self) -> StoreResult<redis::Client> {
        match &*self.links {
            Links::One(l) => l.client().await,
            Links::Cluster(_) => Err(StoreError::Reply(
                "a cluster has no single master: use cluster_client".into(),
            )),
        }
    }

    /// On a cluster: a redis-rs cluster client for sharded pub/sub (RESP3,
    /// pushes to `push`), starting from the masters known and the seeds.
    pub fn cluster_client(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> StoreResult<redis::cluster::ClusterClient> {
        let Links::Cluster(r) = &*self.links else {
            return Err(StoreError::Reply("not a cluster".into()));
        };
        let mut nodes: Vec<String> = r.map().masters().to_vec();
        for s in r.seeds() {
            if !nodes.contains(s) {
                nodes.push(s.clone());
            }
        }
        let infos = nodes
            .iter()
            .map(|n| r.info_for(n))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(redis::cluster::ClusterClientBuilder::new(infos)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .tcp_settings(link::tcp_settings())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(COMMAND_TIMEOUT)
            .retries(2)
            .build()?)
    }

    /// On a cluster, one shard channel per master, named after `base`,
    /// each in a slot that master serves (for the liveness probe); else
    /// `base` itself.
    pub fn probe_channels(&self, base: &str) -> Vec<String> {
        let Links::Cluster(r) = &*self.links else {
            return vec![base.to_string()];
        };
        let map = r.map();
        map.masters()
            .iter()
            .filter_map(|m| {
                (0..100_000u32)
                    .map(|n| format!("{base}:{{{n}}}"))
                    .find(|c| map.master(key_slot(c)) == Some(m.as_str()))
            })
            .collect()
    }

    /// With sentinels: ask them which node is the master; if it is not the
    /// one connected (a failover, or the old master came back as a
    /// replica), drop the command connection and count a move, so the
    /// subscriber reconnects too. On a cluster: load the slot map again and
    /// count a move if it changed. With one fixed Redis it does nothing.
    pub async fn check_master(&self) {
        let moved = match &*self.links {
            Links::Cluster(r) => match r.reload(false).await {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot load the cluster's slot map");
                    false
                }
            },
            Links::One(l) => check_sentinel_master(l).await,
        };
        if moved {
            self.master_moves
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// On a cluster: load the slot map now (the subscriber does before
    /// every connect). Elsewhere it does nothing.
    pub async fn load_topology(&self) -> StoreResult<()> {
        match &*self.links {
            Links::Cluster(r) => r.reload(true).await.map(drop),
            Links::One(_) => Ok(()),
        }
    }

    /// How many times [`Store::check_master`] saw the master move.
    pub fn master_moves(&self) -> u64 {
        self.master_moves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop the command connection(s), so the next call connects afresh:
    /// the pub/sub connection went silent, and the command connection
    /// shares its path (a hung Redis, a half-open link), so waiting out its
    /// timeout would only delay the repair.
    pub fn reconnect(&self) {
        match &*self.links {
            Links::One(l) => l.drop_current(),
            Links::Cluster(r) => r.drop_all(),
        }
    }

    /// How many times Redis was replaced (restarted, failed over) under
    /// this store, as seen by its command connection(s).
    pub fn redis_replacements(&self) -> u64 {
        match &*self.links {
            Links::One(l) => l.replacements(),
            Links::Cluster(r) => r.replacements(),
        }
    }

    /// Entries each room keeps in history.
    pub fn history_len(&self) -> u32 {
        self.history_len
    }

    /// How long one command may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The link to the master serving `slot` (the slot is ignored without
    /// a cluster). An error here means nothing was sent.
    async fn link(&self, slot: u16) -> StoreResult<Conn> {
        let linker = match &*self.links {
            Links::One(l) => Ok(l.clone()),
            Links::Cluster(r) => r.linker(slot).await,
        };
        let r = match linker {
            Ok(linker) => linker.get().await.map(|link| Conn { linker, link }),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.metrics.redis_rtt(0, false);
            if let Links::Cluster(router) = &*self.links {
                // The master may have moved: look again (rate-limited).
                let _ = router.reload(false).await;
            }
        }
        r
    }

    /// Run `f` on the link for `slot`. On a cluster, a redirection
    /// (`MOVED`: nothing was applied) reloads the slot map and runs `f`
    /// once more on the new owner.
    async fn on_slot<T, F, Fut>(&self, slot: u16, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let conn = self.link(slot).await?;
        let res = f(conn).await;
        let Links::Cluster(router) = &*self.links else {
            return res;
        };
        match res {
            Err(e) if e.is_redirect() => {
                tracing::debug!(slot, error = %e, "redirected: reloading the slot map");
                if let Err(e) = router.reload(true).await {
                    tracing::warn!(error = %e, "cannot load the slot map");
                }
                if !e.is_moved() {
                    return Err(e);
                }
                let conn = self.link(slot).await?;
                f(conn).await
            }
            r => r,
        }
    }

    /// Run `fut` (a command on `conn`) under the timeout; a link that timed
    /// out or broke is dropped, so the next call reconnects rather than
    /// queueing behind a hung connection.
    async fn timed<T, F>(&self, conn: &Conn, fut: F) -> StoreResult<T>
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
            conn.linker.failed(&conn.link);
        }
        self.metrics
            .redis_rtt(start.elapsed().as_micros() as u64, res.is_ok());
        res
    }

    async fn query<T: FromRedisValue>(&self, slot: u16, cmd: &Cmd) -> StoreResult<T> {
        self.on_slot(slot, |c| async move {
            let mut conn = c.link.conn.clone();
            self.timed(&c, cmd.query_async(&mut conn)).await
        })
        .await
    }

    async fn query_pipe<T: FromRedisValue>(
        &self,
        slot: u16,
        pipe: &redis::Pipeline,
    ) -> StoreResult<T> {
        self.on_slot(slot, |c| async move {
            let mut conn = c.link.conn.clone();
            self.timed(&c, pipe.query_async(&mut conn)).await
        })
        .await
    }

    /// PING (on a cluster: the registry's master), for `/healthz`.
    pub async fn ping(&self) -> StoreResult<()> {
        let pong: String = self.query(registry_slot(), &redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Reply(pong))
        }
    }
}

/// The scripts every new connection loads.
fn scripts() -> Vec<String> {
    vec![lua::publish(), lua::head()]
}

/// With sentinels: whether they name another master than the one the
/// command link reaches (then the link is dropped).
async fn check_sentinel_master(linker: &Linker) -> bool {
    if !linker.follows_sentinels() {
        return false;
    }
    let Some(current) = linker.current_addr() else {
        return false;
    };
    match linker.client().await {
        Ok(c) => {
            let named = c.get_connection_info().addr().to_string();
            if named != current {
                tracing::warn!(
                    from = current,
                    to = named,
                    "the sentinels name a new master: moving"
                );
                linker.drop_current();
                return true;
            }
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask the sentinels");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: every key of a room and its channel share one hash
    /// slot, so the publish script (which touches them all and publishes
    /// on the channel) never meets CROSSSLOT on a Redis Cluster, and a
    /// room's sharded subscription lives on the master holding its keys.
    /// (Checked against Redis's own `CLUSTER KEYSLOT` in
    /// `tests/redis_cluster.rs`.)
    #[test]
    fn a_rooms_keys_and_channel_share_one_slot() {
        let alphabet: Vec<char> = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain("-_.#".chars())
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rooms: Vec<String> = vec!["a".into(), "#".into(), "lobby".into(), "x".repeat(64)];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 64) as usize;
            let room: String = (0..len)
                .map(|i| alphabet[((x >> (i % 58)) as usize + i * 7) % alphabet.len()])
                .collect();
            rooms.push(room);
        }
        for room in rooms {
            chat_protocol::names::validate_room(&room).expect("a valid room name");
            let slot = room_slot(&room);
            for key in room_keys(&room) {
                assert_eq!(key_slot(&key), slot, "{key} of room {room:?}");
            }
            assert_eq!(key_slot(&room), slot, "the hash tag is the room name");
        }
        // The registry's keys share one slot too.
        assert_eq!(key_slot(&instance_key("app1")), registry_slot());
        assert_eq!(key_slot(&instance_key("z-9")), registry_slot());
    }

    #[test]
    fn channels_round_trip() {
        assert_eq!(channel("lobby"), "chat:{lobby}:msgs");
        assert_eq!(room_of_channel("chat:{lobby}:msgs"), Some("lobby"));
        assert_eq!(room_of_channel("other"), None);
    }
}
