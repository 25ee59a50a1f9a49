//! Counters and gauges, exported as Prometheus text on `GET /metrics`.
//!
//! Plain atomics rather than a metrics registry: the fan-out path adds one
//! batch per message, never one atomic per delivery.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use chat_protocol::{close, ErrorCode};

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Upgrades refused because the instance was full.
    pub connections_rejected_full: AtomicU64,
    /// Upgrades refused for a bad room or nick.
    pub connections_rejected_bad_request: AtomicU64,
    /// Upgrades refused because the client address held its cap.
    pub connections_rejected_per_ip: AtomicU64,
    /// Chat messages accepted from local clients and published.
    pub messages_in: AtomicU64,
    /// Frames received from Redis pub/sub for local rooms.
    pub messages_from_redis: AtomicU64,
    /// Chat frames queued to local sockets (one per member per message).
    pub deliveries: AtomicU64,
    /// Socket flushes of queued deliveries (deliveries / flushes = frames
    /// per write under load).
    pub ws_flushes: AtomicU64,
    /// Of those, writes the fan-out made itself (the connection's task
    /// was not woken).
    pub ws_direct_flushes: AtomicU64,
    /// History entries trimmed before the archiver stored them.
    pub archive_overflow: AtomicU64,
    /// Reads of the PostgreSQL archive that answered, rows they returned,
    /// and reads that failed (database down, slow, no table yet).
    pub archive_reads: AtomicU64,
    pub archive_rows_read: AtomicU64,
    pub archive_errors: AtomicU64,
    /// Messages a resume got from the archive.
    pub archive_replayed: AtomicU64,
    /// Deliveries dropped because a socket's outbound queue was full.
    pub fanout_drops: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Messages replayed from history on join.
    pub history_replayed: AtomicU64,
    /// Gap notices sent (history too short, or lost in a Redis outage).
    pub gaps: AtomicU64,
    /// Messages recovered from history after the subscriber missed them.
    pub repaired: AtomicU64,
    /// Redis commands sent (round trips).
    pub redis_roundtrips: AtomicU64,
    /// Redis commands that failed.
    pub redis_errors: AtomicU64,
    /// Sum of Redis round-trip times, in microseconds.
    pub redis_roundtrip_us: AtomicU64,
    /// Times the pub/sub connection was (re)established.
    pub redis_subscriber_connects: AtomicU64,
    /// 1 while the pub/sub connection is up.
    pub redis_subscriber_up: AtomicU64,
    /// Rooms with local members.
    pub rooms: AtomicU64,
    /// Pub/sub connections replaced because the liveness probe went quiet.
    pub liveness_failures: AtomicU64,
    /// Epoch changes announced to local members (`reset` frames).
    pub epoch_resets: AtomicU64,
    /// Sends not published again because their id was seen before.
    pub duplicate_sends: AtomicU64,
    /// Room repairs that failed on a history read and were retried.
    pub repair_retries: AtomicU64,
    errors: [AtomicU64; ERROR_CODES.len()],
    closes: [AtomicU64; CLOSE_CODES.len()],
}

const ERROR_CODES: [ErrorCode; 14] = [
    ErrorCode::BadJson,
    ErrorCode::UnknownType,
    ErrorCode::BadFrame,
    ErrorCode::MessageTooLarge,
    ErrorCode::EmptyMessage,
    ErrorCode::RateLimited,
    ErrorCode::InvalidRoom,
    ErrorCode::InvalidNick,
    ErrorCode::NotInRoom,
    ErrorCode::TooManyRooms,
    ErrorCode::BinaryUnsupported,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
    ErrorCode::Internal,
];

const CLOSE_CODES: [u16; 11] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::POLICY,
    close::TOO_BIG,
    close::INTERNAL,
    close::SERVICE_RESTART,
    close::SLOW_CONSUMER,
    close::IDLE_TIMEOUT,
    1006,
];

impl Metrics {
    /// Count an error frame sent to a client.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Count a connection ending with `code` (1006: dropped without a close).
    pub fn closed(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len() - 1);
        self.closes[i].fetch_add(1, Relaxed);
    }

    /// Count one Redis round trip that took `us` microseconds.
    pub fn redis_rtt(&self, us: u64, ok: bool) {
        self.redis_roundtrips.fetch_add(1, Relaxed);
        self.redis_roundtrip_us.fetch_add(us, Relaxed);
        if !ok {
            self.redis_errors.fetch_add(1, Relaxed);
        }
    }

    /// Render Prometheus text exposition format.
    pub fn render(&self, app_id: &str) -> String {
        let mut out = String::with_capacity(4096);
        let l = format!("app_id=\"{app_id}\"");
        let mut one = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {}",
                v.load(Relaxed)
            );
        };
        one(
            "chat_connections",
            "gauge",
            "Open WebSocket connections.",
            &self.connections,
        );
        one(
            "chat_connections_total",
            "counter",
            "WebSocket connections accepted.",
            &self.connections_total,
        );
        one(
            "chat_connections_rejected_full_total",
            "counter",
            "Upgrades refused with 503: instance full.",
            &self.connections_rejected_full,
        );
        one(
            "chat_connections_rejected_bad_request_total",
            "counter",
            "Upgrades refused with 400: bad room or nick.",
            &self.connections_rejected_bad_request,
        );
        one(
            "chat_connections_rejected_per_ip_total",
            "counter",
            "Upgrades refused with 429: the client address held --max-connections-per-ip.",
            &self.connections_rejected_per_ip,
        );
        one(
            "chat_messages_in_total",
            "counter",
            "Chat messages accepted from local clients.",
            &self.messages_in,
        );
        one(
            "chat_messages_from_redis_total",
            "counter",
            "Frames received from Redis pub/sub.",
            &self.messages_from_redis,
        );
        one(
            "chat_messages_out_total",
            "counter",
            "Frames queued to local sockets by fan-out.",
            &self.deliveries,
        );
        one(
            "chat_ws_flushes_total",
            "counter",
            "Batched socket writes of queued deliveries.",
            &self.ws_flushes,
        );
        one(
            "chat_ws_direct_flushes_total",
            "counter",
            "Socket writes of deliveries made by the fan-out itself, without waking the connection's task (also in chat_ws_flushes_total).",
            &self.ws_direct_flushes,
        );
        one(
            "chat_archive_overflow_total",
            "counter",
            "History entries trimmed before the archiver stored them (raise --archive-backlog or check the archiver).",
            &self.archive_overflow,
        );
        one(
            "chat_archive_reads_total",
            "counter",
            "Reads of the PostgreSQL archive (resumes from beyond history, GET /history) that answered.",
            &self.archive_reads,
        );
        one(
            "chat_archive_rows_read_total",
            "counter",
            "Messages read from the PostgreSQL archive.",
            &self.archive_rows_read,
        );
        one(
            "chat_archive_errors_total",
            "counter",
            "Reads of the PostgreSQL archive that failed or timed out (a gap or a 503 said so).",
            &self.archive_errors,
        );
        one(
            "chat_archive_replayed_total",
            "counter",
            "Messages sent to resuming clients from the PostgreSQL archive (history no longer held them).",
            &self.archive_replayed,
        );
        one(
            "chat_fanout_drops_total",
            "counter",
            "Deliveries dropped: outbound queue full.",
            &self.fanout_drops,
        );
        one(
            "chat_slow_consumer_disconnects_total",
            "counter",
            "Connections closed as slow consumers.",
            &self.slow_consumers,
        );
        one(
            "chat_history_replayed_total",
            "counter",
            "Messages replayed from history.",
            &self.history_replayed,
        );
        one(
            "chat_gaps_total",
            "counter",
            "Gap notices sent to clients.",
            &self.gaps,
        );
        one(
            "chat_repaired_total",
            "counter",
            "Messages recovered from history after the subscriber missed them.",
            &self.repaired,
        );
        one(
            "chat_redis_roundtrips_total",
            "counter",
            "Redis commands sent.",
            &self.redis_roundtrips,
        );
        one(
            "chat_redis_errors_total",
            "counter",
            "Redis commands that failed.",
            &self.redis_errors,
        );
        one(
            "chat_redis_roundtrip_microseconds_total",
            "counter",
            "Sum of Redis round-trip times.",
            &self.redis_roundtrip_us,
        );
        one(
            "chat_redis_subscriber_connects_total",
            "counter",
            "Pub/sub connections established.",
            &self.redis_subscriber_connects,
        );
        one(
            "chat_redis_subscriber_up",
            "gauge",
            "1 while the pub/sub connection is up.",
            &self.redis_subscriber_up,
        );
        one(
            "chat_rooms",
            "gauge",
            "Rooms with local members.",
            &self.rooms,
        );
        one(
            "chat_liveness_failures_total",
            "counter",
            "Pub/sub connections replaced because the instance stopped hearing its own probe.",
            &self.liveness_failures,
        );
        one(
            "chat_epoch_resets_total",
            "counter",
            "Room epoch changes announced to local members.",
            &self.epoch_resets,
        );
        one(
            "chat_duplicate_sends_total",
            "counter",
            "Sends whose id was seen before: not published again.",
            &self.duplicate_sends,
        );
        one(
            "chat_repair_retries_total",
            "counter",
            "Room repairs retried after a failed history read.",
            &self.repair_retries,
        );
        let _ = writeln!(out, "# HELP chat_errors_total Error frames sent, by code.\n# TYPE chat_errors_total counter");
        for (code, v) in ERROR_CODES.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "chat_errors_total{{{l},code=\"{}\"}} {}",
                code.as_str(),
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP chat_closes_total Connections ended, by close code.\n# TYPE chat_closes_total counter");
        for (code, v) in CLOSE_CODES.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "chat_closes_total{{{l},code=\"{code}\",reason=\"{}\"}} {}",
                close::name(*code),
                v.load(Relaxed)
            );
        }
        out
    }
}
