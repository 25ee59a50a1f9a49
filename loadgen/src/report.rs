//! The final report: the JSON document `--json` writes (schema
//! `loadgen.report.v1`, documented field by field in `loadgen/README.md`)
//! and the numbers the human summary prints. Latencies are microseconds.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::hist::Percentiles;
use crate::tally::Tally;
use crate::thresholds::{Breach, Check, Measured};

/// Identifies the JSON layout; bumped only when a field changes meaning.
pub const SCHEMA: &str = "loadgen.report.v1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub config: Config,
    pub interrupted: bool,
    pub phases_ms: Phases,
    pub drain: Drain,
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
    /// `--reconnect`: from a socket's loss to its first delivery after
    /// resuming the room.
    pub recovery_us: Percentiles,
    /// Losses the server announced (never counted as delivered).
    pub announced: Announced,
    /// How frames were read.
    pub frames: Frames,
    pub matrix: Vec<MatrixCell>,
    pub errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub loadgen: SelfCost,
    pub thresholds: ThresholdResult,
    /// One point per second of the run (filled in by the caller that drove
    /// the live view; empty in library use).
    pub timeline: Vec<crate::timeline::Point>,
    /// Each `--faults` entry: when it hit and the recovery after it.
    pub faults: Vec<crate::faults::FaultReport>,
    /// `--registry`: the asks, their failures by kind, and how many
    /// connections went straight to an instance (`null` without it).
    pub registry: Option<RegistryReport>,
}

/// How clients got in with `--registry`.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryReport {
    pub url: String,
    /// `GET`s sent, and answered with an instance.
    pub asks: u64,
    pub answers: u64,
    /// Failed asks by kind: `http <status>`, `refused`, `timeout`,
    /// `bad json`, `io: <kind>`.
    pub failures: BTreeMap<String, u64>,
    /// Answers naming the instance that had just failed the client (it
    /// backed off and asked again instead of connecting).
    pub named_failed_instance: u64,
    /// Direct connects to the named instance that failed (then asked again).
    pub direct_failures: u64,
    /// Connects through `--url` after 3 failed asks in a row.
    pub url_fallbacks: u64,
    /// Welcomes from another APP_ID than the answer named.
    pub app_id_mismatches: u64,
    /// Successful connects (first ones and resumes) straight to an
    /// instance, and through `--url` (HAProxy by default: proxied).
    pub connects_direct: u64,
    pub connects_via_url: u64,
    /// Clients whose first connection was direct, by APP_ID (the rest of
    /// `connections.per_app_id` came through `--url`).
    pub direct_per_app_id: BTreeMap<String, u64>,
    /// Time of an answered ask.
    pub ask_us: Percentiles,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phases {
    pub ramp: u64,
    pub send: u64,
    pub drain: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drain {
    /// How long the drain waited (it ends once every delivery counted
    /// live as expected has arrived, or after `--grace`).
    pub waited_us: u64,
    /// How long after the last send was written the last delivery arrived:
    /// the tail of the in-flight messages.
    pub last_delivery_after_send_us: u64,
    /// Every delivery counted live as expected arrived within `--grace`.
    pub all_arrived: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    /// Ended before the run did, for good (not resumed).
    pub dropped: u64,
    /// Where clients first landed.
    pub per_app_id: BTreeMap<String, u64>,
    /// Opened connections lost (closed or failed), resumed or not.
    pub disconnects: u64,
    /// `--reconnect`: losses that ended with the room resumed.
    pub reconnects: u64,
    /// `--reconnect`: attempts that failed along the way.
    pub reconnect_failures: u64,
    /// Reconnects that landed on another APP_ID than before.
    pub app_id_changes: u64,
    /// The same, per transition: `{"app2→app1": 7}`.
    pub app_id_transitions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Announced {
    /// `gap` frames, and the offsets they named.
    pub gap_frames: u64,
    pub gap_offsets: u64,
    /// `reset` frames (a new epoch: Redis lost or replaced the room).
    pub resets: u64,
    /// Resumes answered `recovered: false`.
    pub unrecovered_resumes: u64,
    /// Expected deliveries never seen that one of these covers (also
    /// `deliveries.announced_lost`).
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Frames {
    /// Messages read by the JSON fallback (their fields not in the
    /// server's order).
    pub fallback_parsed: u64,
    /// Frames that were neither a message nor a known control frame.
    pub unrecognized: u64,
    /// A few of them, `reason: start of the frame`.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sends {
    pub sent: u64,
    pub rejected: u64,
    /// `--reconnect`: writes of an unconfirmed send again, with its id.
    pub retried: u64,
    /// Retries answered `sent` with `duplicate: true` (the original had
    /// been published).
    pub confirmed_duplicate: u64,
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
    /// Expected, never seen, and covered by a `gap`, a `reset` or a
    /// `recovered: false` the server sent that receiver: not in `lost`.
    pub announced_lost: u64,
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
    /// The failed ones (also in `checked`).
    pub failed: Vec<Breach>,
    /// Every threshold that was set, with its verdict.
    pub checked: Vec<Check>,
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
            drain: Drain {
                waited_us: t.timing.drain_us,
                last_delivery_after_send_us: t.timing.last_delivery_after_send_us,
                all_arrived: t.timing.all_arrived,
            },
            connections: Connections {
                attempted: t.attempted,
                opened: t.opened,
                failed: t.failed,
                dropped: t.dropped,
                per_app_id: t.per_app_id.clone(),
                disconnects: t.disconnects,
                reconnects: t.reconnects,
                reconnect_failures: t.reconnect_failures,
                app_id_changes: t.app_id_changes.values().sum(),
                app_id_transitions: t.app_id_changes.clone(),
            },
            sends: Sends {
                sent: t.sent,
                rejected: t.rejected,
                retried: t.retried,
                confirmed_duplicate: t.confirmed_duplicate,
                unconfirmed: t.unconfirmed,
                per_second: round1(t.sent as f64 / send_s),
            },
            deliveries: Deliveries {
                expected: t.expected,
                received: t.received,
                delivered: t.delivered,
                lost: t.lost,
                announced_lost: t.announced_lost,
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
            recovery_us: t.recovery.summary(),
            announced: Announced {
                gap_frames: t.gap_frames,
                gap_offsets: t.gap_offsets,
                resets: t.resets,
                unrecovered_resumes: t.unrecovered_joins,
                lost: t.announced_lost,
            },
            frames: Frames {
                fallback_parsed: t.frames_fallback,
                unrecognized: t.frames_unrecognized,
                samples: t.frame_samples.clone(),
            },
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
            faults: Vec::new(),
            registry: cfg.registry.as_ref().map(|url| {
                let g = &t.registry;
                RegistryReport {
                    url: url.clone(),
                    asks: g.asks,
                    answers: g.answers,
                    failures: g.failures.clone(),
                    named_failed_instance: g.repeats,
                    direct_failures: g.direct_failures,
                    url_fallbacks: g.fallbacks,
                    app_id_mismatches: g.app_id_mismatches,
                    connects_direct: g.connects_direct,
                    connects_via_url: g.connects_via_url,
                    direct_per_app_id: g.first_direct.clone(),
                    ask_us: g.ask.summary(),
                }
            }),
        };
        r.matrix.sort_by(|a, b| {
            crate::units::natural(&a.sender, &b.sender)
                .then_with(|| crate::units::natural(&a.receiver, &b.receiver))
        });
        let checked = cfg.thresholds.check(&r.measured());
        let failed: Vec<Breach> = checked
            .iter()
            .filter(|c| !c.passed)
            .map(|c| Breach {
                flag: c.flag,
                message: c.message.clone(),
            })
            .collect();
        r.thresholds = ThresholdResult {
            passed: failed.is_empty(),
            failed,
            checked,
        };
        r
    }
}

impl Report {
    /// Attach the per-second timeline, mark the faults on it and work out
    /// the recovery after each.
    pub fn set_timeline(&mut self, mut timeline: Vec<crate::timeline::Point>, t: &Tally) {
        self.faults = crate::faults::analyse(
            &self.config.faults,
            t.epoch_unix_us,
            &mut timeline,
            &t.recovery_events,
        );
        self.timeline = timeline;
    }

    /// The figures thresholds are checked against.
    pub fn measured(&self) -> Measured {
        Measured {
            lost: self.deliveries.lost,
            duplicated: self.deliveries.duplicated,
            out_of_order: self.deliveries.out_of_order,
            failed_connections: self.connections.failed,
            p99_us: self.latency_us.p99,
            latency_count: self.latency_us.count,
            instances: self.connections.per_app_id.len(),
            cross_instance: self.deliveries.cross_instance,
        }
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
