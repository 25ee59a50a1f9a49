//! The final report: the JSON document `--json` writes (schema
//! `loadgen.report.v1`, documented field by field in `loadgen/README.md`)
//! and the numbers the human summary prints. Latencies are microseconds.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::hist::Percentiles;
use crate::opts::Config;
use crate::tally::Tally;
use crate::thresholds::Breach;

/// Identifies the JSON layout; bumped only when a field changes meaning.
pub const SCHEMA: &str = "loadgen.report.v1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub config: Config,
    pub interrupted: bool,
    pub phases_ms: Phases,
    pub connections: Connections,
    pub sends: Sends,
    pub deliveries: Deliveries,
    /// Fan-out latency from the scheduled send time (coordinated omission
    /// corrected), over every first delivery at every receiver.
    pub latency_us: Percentiles,
    /// Fan-out latency from the moment the send was actually written.
    pub raw_latency_us: Percentiles,
    /// TCP connect + WebSocket upgrade + welcome (or greeting).
    pub connect_us: Percentiles,
    pub matrix: Vec<MatrixCell>,
    pub errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub loadgen: SelfCost,
    pub thresholds: ThresholdResult,
    /// One point per second of the run (filled in by the caller that drove
    /// the live view; empty in library use).
    pub timeline: Vec<crate::live::Point>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phases {
    pub ramp: u64,
    pub send: u64,
    pub drain: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    pub dropped: u64,
    pub per_app_id: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sends {
    pub sent: u64,
    pub rejected: u64,
    /// Sent just before the sender's connection ended, never echoed back
    /// to it: the server may not have accepted them, so they are not
    /// expected anywhere.
    pub unconfirmed: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Deliveries {
    pub expected: u64,
    pub received: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub cross_instance: u64,
    pub unexpected: u64,
    pub receivers_with_loss: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixCell {
    pub sender: String,
    pub receiver: String,
    pub count: u64,
    pub expected: u64,
    pub lost: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SelfCost {
    pub processes: u64,
    pub cpu_us: u64,
    pub cpu_us_per_delivery: f64,
    /// User-space CPU only: what loadgen's own code costs, without the
    /// kernel's TCP receive path (and loopback ACK processing).
    pub user_cpu_us_per_delivery: f64,
    pub rss_bytes: u64,
    pub mem_per_socket_bytes: u64,
    /// How late loadgen's 10 ms timer fired while messages flowed (beyond
    /// the 1 ms timer granularity, this is time deliveries may have waited
    /// inside loadgen: if its p99 is a sizeable part of the fan-out p99,
    /// loadgen is a bottleneck; use --workers or fewer clients).
    pub event_loop_lag_us: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThresholdResult {
    pub passed: bool,
    pub failed: Vec<Breach>,
}

impl Report {
    /// Compute the report and check the thresholds.
    pub fn new(cfg: &Config, t: &Tally) -> Report {
        let send_s = (t.timing.send_ms as f64 / 1000.0).max(1e-3);
        let recv_s = ((t.timing.send_ms + t.timing.drain_ms) as f64 / 1000.0).max(1e-3);
        let mut r = Report {
            schema: SCHEMA,
            config: cfg.clone(),
            interrupted: t.timing.interrupted,
            phases_ms: Phases {
                ramp: t.timing.ramp_ms,
                send: t.timing.send_ms,
                drain: t.timing.drain_ms,
            },
            connections: Connections {
                attempted: t.attempted,
                opened: t.opened,
                failed: t.failed,
                dropped: t.dropped,
                per_app_id: t.per_app_id.clone(),
            },
            sends: Sends {
                sent: t.sent,
                rejected: t.rejected,
                unconfirmed: t.unconfirmed,
                per_second: round1(t.sent as f64 / send_s),
            },
            deliveries: Deliveries {
                expected: t.expected,
                received: t.received,
                delivered: t.delivered,
                lost: t.lost,
                duplicated: t.duplicated,
                out_of_order: t.out_of_order,
                cross_instance: t.cross_instance(),
                unexpected: t.unexpected,
                receivers_with_loss: t.receivers_with_loss,
                per_second: round1(t.received as f64 / recv_s),
            },
            latency_us: t.latency.summary(),
            raw_latency_us: t.raw_latency.summary(),
            connect_us: t.connect.summary(),
            matrix: t
                .matrix
                .iter()
                .map(|c| MatrixCell {
                    sender: c.sender.clone(),
                    receiver: c.receiver.clone(),
                    count: c.count,
                    expected: c.expected,
                    lost: c.lost,
                    p50_us: c.hist.q(0.5),
                    p99_us: c.hist.q(0.99),
                    max_us: c.hist.q(1.0),
                })
                .collect(),
            errors: t.errors.clone(),
            close_codes: t
                .errors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("close: ").map(|c| (c.to_string(), *v)))
                .collect(),
            loadgen: SelfCost {
                processes: t.processes,
                cpu_us: t.cpu_us,
                cpu_us_per_delivery: per(t.cpu_us, t.received),
                user_cpu_us_per_delivery: per(t.cpu_user_us, t.received),
                rss_bytes: t.rss_bytes,
                mem_per_socket_bytes: t.mem_per_socket_bytes,
                event_loop_lag_us: t.lag.summary(),
            },
            thresholds: ThresholdResult::default(),
            timeline: Vec::new(),
        };
        let failed = cfg.thresholds.check(&r);
        r.thresholds = ThresholdResult {
            passed: failed.is_empty(),
            failed,
        };
        r
    }
}

/// `a / b` to three decimals, 0 when `b` is 0.
fn per(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        (a as f64 / b as f64 * 1000.0).round() / 1000.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A duration in µs for people: `850µs`, `12.3ms`, `1.52s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
