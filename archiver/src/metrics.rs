//! Counters and gauges for `/metrics` (Prometheus text), and the HTTP
//! listener that serves them with `/healthz`.
//!
//! Per-room series are bounded: only the [`TOP_ROOMS`] rooms with the
//! largest lag get their own `room` label; the totals cover every room.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Rooms shown with their own series.
pub const TOP_ROOMS: usize = 50;

/// A room's archive state, as last measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomLag {
    /// Entries of the log above the watermark (pending or not yet read).
    pub messages: u64,
    /// Age of the oldest of them, in ms (0 when there is none).
    pub age_ms: u64,
    /// The `archived` watermark.
    pub archived: u64,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    batches: AtomicU64,
    rows_inserted: AtomicU64,
    rows_duplicate: AtomicU64,
    entries_claimed: AtomicU64,
    /// Entries acknowledged without a row: gone from the stream before
    /// they were archived, or not a message frame.
    entries_lost: AtomicU64,
    entries_undecodable: AtomicU64,
    watermark_raises: AtomicU64,
    postgres_up: AtomicBool,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Keyed by (Redis node, room): a room lives on one node at a time.
    rooms: Mutex<HashMap<String, RoomLag>>,
    masters: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            batches: AtomicU64::new(0),
            rows_inserted: AtomicU64::new(0),
            rows_duplicate: AtomicU64::new(0),
            entries_claimed: AtomicU64::new(0),
            entries_lost: AtomicU64::new(0),
            entries_undecodable: AtomicU64::new(0),
            watermark_raises: AtomicU64::new(0),
            postgres_up: AtomicBool::new(false),
            errors: Mutex::new(BTreeMap::new()),
            rooms: Mutex::new(HashMap::new()),
            masters: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn batch(&self, inserted: u64, duplicates: u64) {
        self.batches.fetch_add(1, Relaxed);
        self.rows_inserted.fetch_add(inserted, Relaxed);
        self.rows_duplicate.fetch_add(duplicates, Relaxed);
    }

    pub fn claimed(&self, n: u64) {
        self.entries_claimed.fetch_add(n, Relaxed);
    }

    pub fn lost(&self, n: u64) {
        self.entries_lost.fetch_add(n, Relaxed);
    }

    pub fn undecodable(&self, n: u64) {
        self.entries_undecodable.fetch_add(n, Relaxed);
    }

    pub fn watermark_raised(&self) {
        self.watermark_raises.fetch_add(1, Relaxed);
    }

    /// Count an error of `kind` (`redis`, `postgres`, `decode`, ...).
    pub fn error(&self, kind: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    pub fn set_postgres_up(&self, up: bool) {
        self.postgres_up.store(up, Relaxed);
    }

    pub fn postgres_up(&self) -> bool {
        self.postgres_up.load(Relaxed)
    }

    pub fn set_masters(&self, n: usize) {
        self.masters.store(n as u64, Relaxed);
    }

    /// Record a room's lag.
    pub fn room(&self, room: &str, lag: RoomLag) {
        self.rooms_lock().insert(room.to_string(), lag);
    }

    /// Forget a room (its stream is gone or moved to another node).
    pub fn forget_room(&self, room: &str) {
        self.rooms_lock().remove(room);
    }

    /// The lag of `room`, as last measured.
    pub fn room_lag(&self, room: &str) -> Option<RoomLag> {
        self.rooms_lock().get(room).copied()
    }

    /// Entries not yet archived, over every room.
    pub fn total_lag(&self) -> u64 {
        self.rooms_lock().values().map(|l| l.messages).sum()
    }

    /// Rows inserted so far.
    pub fn rows_inserted(&self) -> u64 {
        self.rows_inserted.load(Relaxed)
    }

    /// Entries claimed from other consumers so far.
    pub fn entries_claimed(&self) -> u64 {
        self.entries_claimed.load(Relaxed)
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: &str) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    fn rooms_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomLag>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "archiver_batches_total",
            "Batches committed to PostgreSQL.",
            self.batches.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_rows_inserted_total",
            "Rows inserted.",
            self.rows_inserted.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_rows_duplicate_total",
            "Rows skipped as already archived (ON CONFLICT DO NOTHING).",
            self.rows_duplicate.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_entries_claimed_total",
            "Pending entries taken over from other consumers (XAUTOCLAIM).",
            self.entries_claimed.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_entries_lost_total",
            "Entries that left the stream before they were archived (acknowledged without a row).",
            self.entries_lost.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_entries_undecodable_total",
            "Entries that are not message frames (acknowledged without a row).",
            self.entries_undecodable.load(Relaxed),
        );
        counter(
            &mut out,
            "archiver_watermark_raises_total",
            "Times a room's archived watermark was raised.",
            self.watermark_raises.load(Relaxed),
        );
        gauge(
            &mut out,
            "archiver_postgres_up",
            "1 while PostgreSQL accepts commits.",
            u64::from(self.postgres_up()),
        );
        gauge(
            &mut out,
            "archiver_redis_masters",
            "Redis masters being scanned.",
            self.masters.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP archiver_errors_total Errors by kind.\n# TYPE archiver_errors_total counter"
        );
        for (kind, n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "archiver_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let mut rooms: Vec<(String, RoomLag)> = self
            .rooms_lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let total: u64 = rooms.iter().map(|(_, l)| l.messages).sum();
        let oldest = rooms.iter().map(|(_, l)| l.age_ms).max().unwrap_or(0);
        gauge(
            &mut out,
            "archiver_rooms",
            "Room streams being archived.",
            rooms.len() as u64,
        );
        gauge(
            &mut out,
            "archiver_lag_messages",
            "Entries not yet archived, over every room.",
            total,
        );
        let _ = writeln!(
            out,
            "# HELP archiver_lag_seconds Age of the oldest entry not yet archived, over every room.\n# TYPE archiver_lag_seconds gauge\narchiver_lag_seconds {:.3}",
            oldest as f64 / 1000.0
        );
        rooms.sort_by(|a, b| {
            b.1.messages
                .cmp(&a.1.messages)
                .then(b.1.age_ms.cmp(&a.1.age_ms))
                .then(a.0.cmp(&b.0))
        });
        rooms.truncate(TOP_ROOMS);
        let _ = writeln!(out, "# HELP archiver_room_lag_messages Entries not yet archived (the {TOP_ROOMS} rooms with the most).\n# TYPE archiver_room_lag_messages gauge");
        for (room, l) in &rooms {
            let _ = writeln!(
                out,
                "archiver_room_lag_messages{{room=\"{}\"}} {}",
                escape(room),
                l.messages
            );
        }
        let _ = writeln!(out, "# HELP archiver_room_lag_seconds Age of the oldest entry not yet archived.\n# TYPE archiver_room_lag_seconds gauge");
        for (room, l) in &rooms {
            let _ = writeln!(
                out,
                "archiver_room_lag_seconds{{room=\"{}\"}} {:.3}",
                escape(room),
                l.age_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(out, "# HELP archiver_room_archived_offset The room's archive watermark (field archived of chat:{{room}}:epoch).\n# TYPE archiver_room_archived_offset gauge");
        for (room, l) in &rooms {
            let _ = writeln!(
                out,
                "archiver_room_archived_offset{{room=\"{}\"}} {}",
                escape(room),
                l.archived
            );
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `/metrics` and `/healthz` (503 while PostgreSQL is down) until
/// `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.postgres_up() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "postgres unreachable\n")
                }
            }),
        )
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_room_series_are_bounded_and_totals_cover_all() {
        let m = Metrics::default();
        for i in 0..(TOP_ROOMS as u64 + 30) {
            m.room(
                &format!("r{i}"),
                RoomLag {
                    messages: i,
                    age_ms: i * 10,
                    archived: 7,
                },
            );
        }
        m.error("redis");
        let text = m.render();
        let rooms = text
            .lines()
            .filter(|l| l.starts_with("archiver_room_lag_messages{"))
            .count();
        assert_eq!(rooms, TOP_ROOMS);
        assert!(
            text.contains("archiver_room_lag_messages{room=\"r79\"} 79"),
            "the largest lag is shown"
        );
        assert!(!text.contains("room=\"r0\""), "the smallest is not");
        let total: u64 = (0..80).sum();
        assert!(text.contains(&format!("archiver_lag_messages {total}\n")));
        assert!(text.contains("archiver_lag_seconds 0.790"));
        assert!(text.contains("archiver_errors_total{kind=\"redis\"} 1"));
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
