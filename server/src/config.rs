//! Configuration: clap flags, each with an environment-variable fallback,
//! so the same binary runs from a shell, the local launcher and compose.

use std::net::SocketAddr;
use std::time::Duration;

use chat_protocol::Limits;
use clap::Parser;

/// The chat server: WebSockets on `/ws`, fan-out through Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// This instance's name, shown to every client in the welcome frame and
    /// in every message it accepts. Unique per instance.
    #[arg(long, env = "APP_ID")]
    pub app_id: String,

    /// Redis for pub/sub, history, presence and the instance registry.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Redis Sentinel addresses (`HOST:PORT,HOST:PORT,...`). With them the
    /// server asks the sentinels for the master of
    /// `--redis-sentinel-master` and follows every failover; `--redis-url`
    /// then only supplies the database, user and password.
    #[arg(
        long,
        env = "REDIS_SENTINELS",
        value_delimiter = ',',
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinels: Vec<String>,

    /// Redis Cluster seed nodes (`HOST:PORT,HOST:PORT,...`; one is enough,
    /// more survive one being down). The server reads the slot map from
    /// them and follows failovers and slot moves; rooms become shard
    /// channels (`SPUBLISH`/`SSUBSCRIBE`) with one subscriber connection
    /// per master. `--redis-url` then only supplies the user and password.
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster: Vec<String>,

    /// The master name the sentinels monitor.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Publish a chat message only after this many replicas confirmed it
    /// (`WAIT`), so a failover loses nothing anyone saw. 0: publish at once.
    /// It costs a replication round trip per message, and while a replica
    /// is missing every send waits `--redis-wait-timeout` and is answered
    /// `timeout`.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Longest wait for `--redis-wait-replicas`.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,

    /// How long the fan-out waits before writing what it queued, so that
    /// frames arriving meanwhile share one write per socket: less CPU per
    /// delivery in busy rooms, up to this much more latency. 0 (the
    /// default) writes as soon as the fan-out is done with a message.
    #[arg(long, env = "WRITE_DELAY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub write_delay: Duration,

    /// The WebSocket URL clients use to reach this instance directly,
    /// advertised in the registry and answered by `GET /connect` (default
    /// `ws://<--listen>/ws`; set it when listening on 0.0.0.0 or behind
    /// NAT).
    #[arg(long, env = "PUBLIC_URL", value_parser = parse_ws_url)]
    pub public_url: Option<String>,

    /// Most concurrent WebSocket connections; further upgrades get 503. It is
    /// also capped by the process file limit (less a reserve).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest WebSocket frame or message in bytes; larger closes with 1009.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = Limits::DEFAULT.max_frame_bytes as usize)]
    pub max_frame_bytes: usize,

    /// Largest chat text in bytes; larger gets a `message_too_large` error.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = Limits::DEFAULT.max_message_bytes as usize)]
    pub max_message_bytes: usize,

    /// Sustained inbound frames per second per connection.
    #[arg(long = "rate", env = "RATE_PER_SEC", default_value_t = Limits::DEFAULT.rate_per_sec)]
    pub rate_per_sec: u32,

    /// Inbound frames a connection may send in one burst.
    #[arg(long, env = "BURST", default_value_t = Limits::DEFAULT.burst)]
    pub burst: u32,

    /// Frames rejected in a row for rate before the connection is closed
    /// with 1008 (flood).
    #[arg(long, env = "FLOOD_STRIKES", default_value_t = 50)]
    pub flood_strikes: u32,

    /// Live WebSocket connections one client address may hold on this
    /// instance; further upgrades from it get 429. Unset: half of
    /// `--max-connections` (after the file-limit cap), so one address never
    /// takes every slot while a load test's few source addresses, spread
    /// over the instances, still fit. 0: no cap. The address is the TCP
    /// peer, or, when the peer is one of `--trusted-proxies`, the last
    /// address of `X-Forwarded-For`; a trusted proxy's connection without
    /// that header is not counted (the proxy is not one client).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Peers whose `X-Forwarded-For` names the client (comma-separated IP
    /// addresses), e.g. the shipped HAProxy (`option forwardfor`). From
    /// any other peer the header is ignored.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1"
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Sustained `join`, `leave` and `nick` frames per second per
    /// connection (each also counts as a frame for `--rate`); over it the
    /// frame is not applied and gets `rate_limited`. The joins in the
    /// upgrade's query count once. Each such frame can broadcast presence
    /// to a whole room and writes Redis, hence a tighter limit.
    #[arg(long, env = "MEMBERSHIP_RATE", default_value_t = 5)]
    pub membership_rate: u32,

    /// `join`, `leave` and `nick` frames a connection may send in one burst.
    #[arg(long, env = "MEMBERSHIP_BURST", default_value_t = 20)]
    pub membership_burst: u32,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "MAX_ROOMS", default_value_t = Limits::DEFAULT.max_rooms as usize)]
    pub max_rooms: usize,

    /// Outbound frames queued per connection; a client that lets its queue
    /// fill is disconnected with 4000 (slow consumer).
    #[arg(long = "queue", env = "OUTBOUND_QUEUE", default_value_t = 512)]
    pub queue: usize,

    /// SO_SNDBUF of every WebSocket socket, in bytes ("64KiB" and "1MiB"
    /// work too); 0 leaves the kernel default, which autotunes up to
    /// `net.ipv4.tcp_wmem` max (4 MiB on stock Linux). Linux doubles the
    /// value and stops autotuning that socket, which is the point: the
    /// outbox counts a client that stopped reading only once the kernel
    /// stops taking its bytes. Such a client pins at most 2 × this in the
    /// kernel (128 KiB at the default) plus `--queue` frames and one
    /// 256-frame write batch (about 3.4 MB of 4.4 KB frames, the largest
    /// with plain 4096-byte texts; frames are shared by the whole room),
    /// and is closed with 4000 once the queue fills. A socket sends at
    /// most 2 × this per round trip (1.3 MB/s at 100 ms with 64KiB).
    #[arg(long, env = "SOCKET_SEND_BUFFER", default_value = "64KiB", value_parser = parse_bytes)]
    pub socket_send_buffer: usize,

    /// Rooms with more members than this do not broadcast join and leave
    /// events (each would go to every member: O(n²) on a ramp); the member
    /// list stays available through `who`.
    #[arg(long, env = "PRESENCE_MAX_MEMBERS", default_value_t = 200)]
    pub presence_max_members: u64,

    /// Most members listed in one `members` frame (on join and `who`); the
    /// frame's `total` gives the full count.
    #[arg(long, env = "MEMBERS_LIST_MAX", default_value_t = 200)]
    pub members_list_max: usize,

    /// Messages each room keeps in history for resume.
    #[arg(long = "history", env = "HISTORY_LEN", default_value_t = Limits::DEFAULT.history_len)]
    pub history_len: u32,

    /// Most bytes of Redis memory each room's history may use, besides
    /// `--history` entries (Redis's own `MEMORY USAGE` of the stream, so
    /// its overhead counts): the oldest entries go first, the newest always
    /// stays. A resume from before them gets a `gap`. Checked every 16th
    /// message of a room, so history can pass the cap by at most 15
    /// messages; the check costs one sampled `MEMORY USAGE` (a few
    /// µs in Redis, 1/16 of the time). 0: no byte cap.
    #[arg(long, env = "HISTORY_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub history_bytes: usize,

    /// With an archiver (`archiver`, PostgreSQL): history entries it has
    /// not stored yet (above the watermark it writes in each room) are not
    /// trimmed, up to this many beyond `--history`. Past that the oldest
    /// go anyway: `chat_archive_overflow_total` counts them and the log
    /// says so. Default: 50000 with `--database-url` (an archiver is
    /// expected), else 0 (history is trimmed to `--history` alone).
    #[arg(long, env = "ARCHIVE_BACKLOG")]
    pub archive_backlog: Option<u32>,

    /// The PostgreSQL archive that `archiver` fills (e.g.
    /// `postgres://user:pass@127.0.0.1:5432/chat`): a resume from further
    /// back than Redis history gets the missing part from it, and
    /// `GET /history` pages back through it. Connected lazily: the server
    /// runs while it is down (a `gap` then names what it could not send).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Most history entries replayed for one `join` with `since` or
    /// `history` (default: `--history`, and at least 10000 with
    /// `--database-url`). A resume from further back is told
    /// with a `gap` for what lies beyond the cap and gets the latest ones.
    /// Replay reads history in pages of 100, each sent before the next read.
    #[arg(long, env = "MAX_REPLAY", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replay: Option<u32>,

    /// A room's message keys (seq, history, epoch) expire after this long
    /// without a message; the room then starts a new epoch, so a resume is
    /// told `recovered: false`. 0 keeps them forever.
    #[arg(long, env = "ROOM_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub room_ttl: Duration,

    /// How long a send's `id` is remembered as its idempotency key (per
    /// room and nick): a retry within this time is never published twice.
    /// 0 turns idempotency off.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// How often the instance publishes a liveness probe on its own
    /// channel, which its pub/sub connection must hear back.
    #[arg(long, env = "PROBE_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,

    /// A pub/sub connection that has not heard its own probe for this long
    /// counts as dead (half-open TCP, a hung Redis): it is replaced, every
    /// room is repaired from history, and `/healthz` answers 503 meanwhile.
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,

    /// How often the server pings each client (one shared clock ticks four
    /// times per interval, so a ping may go out up to a quarter late).
    #[arg(long, env = "PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Close a connection (4001) that sent nothing, not even a pong, for this
    /// long (checked four times per ping interval).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long to wait for sockets to close before exiting.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// How often this instance refreshes its entry in the instance registry.
    #[arg(long, env = "HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// An instance whose heartbeat is older than this is gone; its members
    /// are removed from presence.
    #[arg(long, env = "INSTANCE_TTL", default_value = "6s", value_parser = humantime::parse_duration)]
    pub instance_ttl: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Tokens at the upgrade: `off` ignores them, `optional` checks any
    /// given and lets anonymous clients in, `required` refuses an upgrade
    /// without a valid one (401).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "optional")]
    pub auth: AuthMode,

    /// The HS256 secret tokens are signed with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The secret before the last rotation: tokens signed with it are still
    /// accepted until they expire.
    #[arg(long, env = "JWT_PREVIOUS_SECRET", hide_env_values = true)]
    pub jwt_previous_secret: Option<String>,

    /// `Origin` values allowed to upgrade (comma-separated); others get 403.
    /// Empty: any. Requests without `Origin` (non-browser clients) pass.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Serve `/metrics` and `/cluster` only on this address (a second
    /// listener); the public one then answers 404 for them.
    #[arg(long, env = "ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

/// `--archive-backlog` when `--database-url` is set and the flag is not:
/// at most this many unarchived entries per room wait in Redis while the
/// archiver or PostgreSQL is down (some 10 MB of Redis memory for a room
/// of 200-byte messages).
pub const ARCHIVE_BACKLOG: u32 = 50_000;

/// The least `--max-replay` defaults to with `--database-url`: a resume
/// from that far back reads the archive rather than getting a gap.
pub const ARCHIVE_MAX_REPLAY: u32 = 10_000;

/// How tokens are treated at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Tokens are ignored: everyone is anonymous.
    Off,
    /// A token, if given, must be valid; anonymous clients are let in.
    Optional,
    /// Every upgrade needs a valid token.
    Required,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The limits announced to clients in the welcome frame.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes as u32,
            max_frame_bytes: self.max_frame_bytes as u32,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            max_rooms: self.max_rooms as u32,
            history_len: self.history_len,
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            ping_interval_ms: self.ping_interval.as_millis() as u64,
        }
    }

    /// The URL this instance advertises for direct connections.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/ws", self.listen))
    }

    /// Most entries one join replays (`--max-replay`, else `--history`,
    /// and at least [`ARCHIVE_MAX_REPLAY`] with `--database-url`).
    pub fn max_replay(&self) -> u32 {
        let default = if self.database_url.is_some() {
            self.history_len.max(ARCHIVE_MAX_REPLAY)
        } else {
            self.history_len
        };
        self.max_replay.unwrap_or(default).max(1)
    }

    /// Unarchived history entries kept beyond `--history`
    /// (`--archive-backlog`, else [`ARCHIVE_BACKLOG`] with
    /// `--database-url`, else 0).
    pub fn archive_backlog(&self) -> u32 {
        self.archive_backlog
            .unwrap_or(if self.database_url.is_some() {
                ARCHIVE_BACKLOG
            } else {
                0
            })
    }

    /// A configuration for tests: defaults plus the three required settings.
    pub fn for_test(app_id: &str, redis_url: &str) -> Self {
        Self::parse_from([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--app-id",
            app_id,
            "--redis-url",
            redis_url,
        ])
    }
}

/// Parse a byte count: `131072`, `128KiB` or `4MiB`.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        other => return Err(format!("unknown unit {other:?}: use bytes, KiB or MiB")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or_else(|| format!("{s:?} is not a byte count below 2 GiB"))
}

/// A `ws://` or `wss://` URL with a host.
fn parse_ws_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("ws://")
        .or_else(|| s.strip_prefix("wss://"))
        .ok_or_else(|| format!("{s:?}: a public URL starts with ws:// or wss://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{s:?}: no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(format!("{s:?}: spaces and quotes are not allowed"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_flags_announce_the_protocol_default_limits() {
        // The duration flags are written as text ("30s"); this keeps them
        // and the protocol's defaults in step.
        assert_eq!(
            Config::for_test("t", "redis://x/").limits(),
            Limits::DEFAULT
        );
    }

    #[test]
    fn byte_counts_take_binary_units() {
        assert_eq!(parse_bytes("131072"), Ok(131_072));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("64KB").is_err(), "KB is ambiguous");
        assert!(parse_bytes("KiB").is_err());
        assert!(parse_bytes("4096MiB").is_err(), "SO_SNDBUF takes an int");
    }
}
