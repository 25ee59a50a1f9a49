//! The raw, mergeable result of one process's run: counts, full
//! histograms (serialised in HdrHistogram's V2 encoding when a worker
//! sends its tally to the parent), and the APP_ID matrix keyed by name.
//! [`crate::report::Report`] is computed from a (merged) tally.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checker::{SenderLog, Verification};
use crate::hist::Hist;
use crate::stats::Stats;

/// How long each phase took.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timing {
    pub ramp_ms: u64,
    pub send_ms: u64,
    pub drain_ms: u64,
    /// The drain's wait in µs (`drain_ms` rounds a quick drain to 0).
    #[serde(default)]
    pub drain_us: u64,
    /// How long after the last send was written the last delivery
    /// arrived, µs.
    #[serde(default)]
    pub last_delivery_after_send_us: u64,
    /// Stopped by Ctrl-C (or the parent).
    pub interrupted: bool,
    /// Every delivery counted live as expected arrived before the grace
    /// period ended.
    pub all_arrived: bool,
}

/// What the run cost loadgen itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// CPU (user + system) from the start of sending to the end of the drain.
    pub cpu_us: u64,
    /// The user-space part of `cpu_us`.
    pub cpu_user_us: u64,
    pub rss_bytes: u64,
    pub mem_per_socket_bytes: u64,
}

/// One (sender APP_ID, receiver APP_ID) cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cell {
    pub sender: String,
    pub receiver: String,
    /// Deliveries received (first copies).
    pub count: u64,
    pub expected: u64,
    pub lost: u64,
    /// Fan-out latency from the scheduled send time.
    pub hist: Hist,
}

/// Everything one process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    /// Opened, then ended before the run did.
    pub dropped: u64,
    pub per_app_id: BTreeMap<String, u64>,
    pub sent: u64,
    pub rejected: u64,
    pub unconfirmed: u64,
    pub expected: u64,
    pub received: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub receivers_with_loss: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Hist,
    pub raw_latency: Hist,
    pub connect: Hist,
    /// Event-loop lag of loadgen's runtime (see `Stats::lag`).
    pub lag: Hist,
    pub matrix: Vec<Cell>,
    pub timing: Timing,
    /// CPU time this process spent from the start of sending to the end of
    /// the drain.
    pub cpu_us: u64,
    /// The user-space part of `cpu_us`.
    pub cpu_user_us: u64,
    pub rss_bytes: u64,
    /// RSS growth during the ramp per connection opened.
    pub mem_per_socket_bytes: u64,
    pub processes: u64,
    /// Opened connections lost (closed or failed), resumed or not.
    #[serde(default)]
    pub disconnects: u64,
    /// `--reconnect`: losses that ended with the room resumed.
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub reconnect_failures: u64,
    /// `"app1→app2"` → reconnects that moved a client between them.
    #[serde(default)]
    pub app_id_changes: BTreeMap<String, u64>,
    /// From a socket's loss to its first delivery after resuming.
    #[serde(default)]
    pub recovery: Hist,
    /// `(lost at µs, recovery µs)` per recovered loss (bounded).
    #[serde(default)]
    pub recovery_events: Vec<(u64, u64)>,
    #[serde(default)]
    pub frames_fallback: u64,
    #[serde(default)]
    pub frames_unrecognized: u64,
    #[serde(default)]
    pub frame_samples: Vec<String>,
    #[serde(default)]
    pub gap_frames: u64,
    #[serde(default)]
    pub gap_offsets: u64,
    #[serde(default)]
    pub resets: u64,
    #[serde(default)]
    pub unrecovered_joins: u64,
    /// Expected deliveries never seen but announced lost by the server.
    #[serde(default)]
    pub announced_lost: u64,
    #[serde(default)]
    pub retried: u64,
    #[serde(default)]
    pub confirmed_duplicate: u64,
    /// The run's time origin, µs since the Unix epoch.
    #[serde(default)]
    pub epoch_unix_us: u64,
    /// `--registry` and how clients got in.
    #[serde(default)]
    pub registry: RegistryTally,
}

/// How clients got in (`--registry`): asks and their failures, and
/// connections straight to an instance vs through `--url`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryTally {
    pub asks: u64,
    pub answers: u64,
    /// Failed asks by kind.
    pub failures: BTreeMap<String, u64>,
    pub repeats: u64,
    pub direct_failures: u64,
    pub fallbacks: u64,
    pub app_id_mismatches: u64,
    pub connects_direct: u64,
    pub connects_via_url: u64,
    /// Clients whose first connection was direct, by APP_ID.
    pub first_direct: BTreeMap<String, u64>,
    pub ask: Hist,
}

impl RegistryTally {
    fn merge(&mut self, o: &RegistryTally) {
        self.asks += o.asks;
        self.answers += o.answers;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.repeats += o.repeats;
        self.direct_failures += o.direct_failures;
        self.fallbacks += o.fallbacks;
        self.app_id_mismatches += o.app_id_mismatches;
        self.connects_direct += o.connects_direct;
        self.connects_via_url += o.connects_via_url;
        for (k, v) in &o.first_direct {
            *self.first_direct.entry(k.clone()).or_default() += v;
        }
        self.ask.add(&o.ask);
    }
}

impl Tally {
    /// Build from a finished run's state and the checker's verdict.
    pub fn build(
        stats: &Stats,
        attempted: u64,
        senders: &[SenderLog],
        unconfirmed: u64,
        v: &Verification,
        timing: Timing,
        cost: Cost,
    ) -> Tally {
        let merged = stats.merged();
        let live = &stats.live;
        let failed = live.failed.load(std::sync::atomic::Ordering::Relaxed);
        let dropped = live.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let mut matrix: BTreeMap<(u16, u16), Cell> = BTreeMap::new();
        fn cell<'a>(
            m: &'a mut BTreeMap<(u16, u16), Cell>,
            stats: &Stats,
            k: (u16, u16),
        ) -> &'a mut Cell {
            m.entry(k).or_insert_with(|| Cell {
                sender: stats.apps.name(k.0),
                receiver: stats.apps.name(k.1),
                ..Cell::default()
            })
        }
        for (k, c) in &merged.matrix {
            let e = cell(&mut matrix, stats, *k);
            e.count += c.count;
            e.hist.add(&c.hist);
        }
        for (k, c) in &v.cells {
            let e = cell(&mut matrix, stats, *k);
            e.expected += c.expected;
            e.lost += c.lost;
        }
        let rare = &stats.rare;
        let lists = rare.lists.lock().expect("rare lock");
        let app_id_changes = lists
            .app_changes
            .iter()
            .map(|((a, b), n)| {
                (
                    format!("{}→{}", stats.apps.name(*a), stats.apps.name(*b)),
                    *n,
                )
            })
            .collect();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let mut per_app_id = BTreeMap::new();
        for (k, c) in &v.members_per_app {
            *per_app_id.entry(stats.apps.name(*k)).or_default() += c;
        }
        Tally {
            attempted,
            opened: v.members,
            failed,
            dropped,
            per_app_id,
            sent: senders.iter().map(|s| s.sent_at.len() as u64).sum(),
            rejected: senders.iter().map(|s| s.rejected.len() as u64).sum(),
            unconfirmed,
            expected: v.expected,
            received: v.received,
            delivered: v.delivered,
            lost: v.lost,
            duplicated: v.duplicated,
            out_of_order: v.out_of_order,
            unexpected: v.unexpected,
            receivers_with_loss: v.receivers_with_loss,
            errors: stats.errors(),
            latency: merged.sched,
            raw_latency: merged.raw,
            connect: merged.connect,
            lag: stats.lag.lock().expect("lag lock").clone(),
            matrix: matrix.into_values().collect(),
            timing,
            cpu_us: cost.cpu_us,
            cpu_user_us: cost.cpu_user_us,
            rss_bytes: cost.rss_bytes,
            mem_per_socket_bytes: cost.mem_per_socket_bytes,
            processes: 1,
            disconnects: load(&live.disconnects),
            reconnects: load(&live.reconnects),
            reconnect_failures: load(&live.reconnect_failures),
            app_id_changes,
            recovery: merged.recovery,
            recovery_events: lists.recovery_events.clone(),
            frames_fallback: load(&rare.frames_fallback),
            frames_unrecognized: load(&rare.frames_unrecognized),
            frame_samples: lists.frame_samples.clone(),
            gap_frames: load(&rare.gap_frames),
            gap_offsets: load(&rare.gap_offsets),
            resets: load(&rare.resets),
            unrecovered_joins: load(&rare.unrecovered_joins),
            announced_lost: v.announced_lost,
            retried: load(&rare.sends_retried),
            confirmed_duplicate: load(&rare.sends_confirmed_duplicate),
            epoch_unix_us: stats.epoch_unix_us,
            registry: RegistryTally {
                asks: load(&rare.registry_asks),
                answers: load(&rare.registry_answers),
                failures: lists.registry_failures.clone(),
                repeats: load(&rare.registry_repeats),
                direct_failures: load(&rare.direct_failures),
                fallbacks: load(&rare.registry_fallbacks),
                app_id_mismatches: load(&rare.registry_app_mismatches),
                connects_direct: load(&rare.connects_direct),
                connects_via_url: load(&rare.connects_via_url),
                first_direct: lists
                    .first_direct
                    .iter()
                    .map(|(a, n)| (stats.apps.name(*a), *n))
                    .collect(),
                ask: lists.ask_us.clone(),
            },
        }
    }

    /// Add another process's tally (workers of one run).
    pub fn merge(&mut self, o: &Tally) {
        let sum = |a: &mut u64, b: u64| *a += b;
        sum(&mut self.attempted, o.attempted);
        sum(&mut self.opened, o.opened);
        sum(&mut self.failed, o.failed);
        sum(&mut self.dropped, o.dropped);
        sum(&mut self.sent, o.sent);
        sum(&mut self.rejected, o.rejected);
        sum(&mut self.unconfirmed, o.unconfirmed);
        sum(&mut self.expected, o.expected);
        sum(&mut self.received, o.received);
        sum(&mut self.delivered, o.delivered);
        sum(&mut self.lost, o.lost);
        sum(&mut self.duplicated, o.duplicated);
        sum(&mut self.out_of_order, o.out_of_order);
        sum(&mut self.unexpected, o.unexpected);
        sum(&mut self.receivers_with_loss, o.receivers_with_loss);
        sum(&mut self.cpu_us, o.cpu_us);
        sum(&mut self.cpu_user_us, o.cpu_user_us);
        sum(&mut self.rss_bytes, o.rss_bytes);
        // Weighted by sockets, so the merged figure stays "per socket".
        let (a, b) = (self.opened - o.opened, o.opened);
        if let Some(m) =
            (self.mem_per_socket_bytes * a + o.mem_per_socket_bytes * b).checked_div(a + b)
        {
            self.mem_per_socket_bytes = m;
        }
        sum(&mut self.processes, o.processes);
        sum(&mut self.disconnects, o.disconnects);
        sum(&mut self.reconnects, o.reconnects);
        sum(&mut self.reconnect_failures, o.reconnect_failures);
        sum(&mut self.frames_fallback, o.frames_fallback);
        sum(&mut self.frames_unrecognized, o.frames_unrecognized);
        sum(&mut self.gap_frames, o.gap_frames);
        sum(&mut self.gap_offsets, o.gap_offsets);
        sum(&mut self.resets, o.resets);
        sum(&mut self.unrecovered_joins, o.unrecovered_joins);
        sum(&mut self.announced_lost, o.announced_lost);
        sum(&mut self.retried, o.retried);
        sum(&mut self.confirmed_duplicate, o.confirmed_duplicate);
        for (k, v) in &o.app_id_changes {
            *self.app_id_changes.entry(k.clone()).or_default() += v;
        }
        self.recovery.add(&o.recovery);
        let room = crate::stats::MAX_RECOVERY_EVENTS.saturating_sub(self.recovery_events.len());
        self.recovery_events
            .extend(o.recovery_events.iter().take(room).copied());
        let room = crate::stats::MAX_FRAME_SAMPLES.saturating_sub(self.frame_samples.len());
        self.frame_samples
            .extend(o.frame_samples.iter().take(room).cloned());
        if self.epoch_unix_us == 0 {
            self.epoch_unix_us = o.epoch_unix_us;
        }
        self.registry.merge(&o.registry);
        for (k, v) in &o.per_app_id {
            *self.per_app_id.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency.add(&o.latency);
        self.raw_latency.add(&o.raw_latency);
        self.connect.add(&o.connect);
        self.lag.add(&o.lag);
        for c in &o.matrix {
            match self
                .matrix
                .iter_mut()
                .find(|m| m.sender == c.sender && m.receiver == c.receiver)
            {
                Some(m) => {
                    m.count += c.count;
                    m.expected += c.expected;
                    m.lost += c.lost;
                    m.hist.add(&c.hist);
                }
                None => self.matrix.push(c.clone()),
            }
        }
        self.matrix
            .sort_by(|a, b| (&a.sender, &a.receiver).cmp(&(&b.sender, &b.receiver)));
        let (t, u) = (&mut self.timing, &o.timing);
        t.ramp_ms = t.ramp_ms.max(u.ramp_ms);
        t.send_ms = t.send_ms.max(u.send_ms);
        t.drain_ms = t.drain_ms.max(u.drain_ms);
        t.drain_us = t.drain_us.max(u.drain_us);
        t.last_delivery_after_send_us = t
            .last_delivery_after_send_us
            .max(u.last_delivery_after_send_us);
        t.interrupted |= u.interrupted;
        t.all_arrived &= u.all_arrived;
    }

    /// Deliveries whose sender and receiver landed on different instances.
    pub fn cross_instance(&self) -> u64 {
        self.matrix
            .iter()
            .filter(|c| c.sender != c.receiver)
            .map(|c| c.count)
            .sum()
    }
}
