//! The report's `timeline`: one [`Point`] per second of the run, recorded
//! from the same snapshots the live view shows.

use crate::stats::Snapshot;

/// One second of the run, for the report's `timeline`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t_s: f64,
    pub phase: String,
    pub connected: u64,
    pub failed: u64,
    pub sends_per_s: f64,
    pub deliveries_per_s: f64,
    /// Fan-out latency over this second only (0 without deliveries).
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
    /// Connections lost in this second, and resumed in it (`--reconnect`).
    pub disconnects: u64,
    pub reconnects: u64,
    /// Clients between a loss and their resume at the end of the second.
    pub down: u64,
    /// `--faults` that fell in this second (filled in by the report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
}

/// Most points kept: a day at one per second. Longer runs keep the first
/// day, so the timeline cannot grow without limit.
const MAX_POINTS: usize = 86_400;

/// Wrap a snapshot source so that every snapshot also lands in `timeline`.
pub fn recording<F: FnMut() -> Snapshot>(
    mut snap: F,
    timeline: std::sync::Arc<std::sync::Mutex<Vec<Point>>>,
) -> impl FnMut() -> Snapshot {
    let mut last = Snapshot::default();
    move || {
        let s = snap();
        let dt = (s.elapsed_ms.saturating_sub(last.elapsed_ms) as f64 / 1000.0).max(1e-3);
        let p = Point {
            t_s: s.elapsed_ms as f64 / 1000.0,
            phase: s.phase.clone(),
            connected: s.connected,
            failed: s.failed,
            sends_per_s: (s.sent.saturating_sub(last.sent) as f64 / dt).round(),
            deliveries_per_s: (s.received.saturating_sub(last.received) as f64 / dt).round(),
            p50_us: s.interval_p50,
            p99_us: s.interval_p99,
            errors: s.errors,
            disconnects: s.disconnects.saturating_sub(last.disconnects),
            reconnects: s.reconnects.saturating_sub(last.reconnects),
            down: s.down,
            faults: Vec::new(),
        };
        let mut t = timeline.lock().expect("timeline lock");
        if t.len() < MAX_POINTS {
            t.push(p);
        }
        last = s.clone();
        s
    }
}
