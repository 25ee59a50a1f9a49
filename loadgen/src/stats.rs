//! Shared run state: live counters (atomics, read by the dashboard every
//! second), latency recorders (histograms sharded over a few mutexes so
//! that two runtime threads rarely contend), the APP_ID table, and error
//! counts by kind.
//!
//! The hot path per delivery is: one uncontended mutex, four histogram
//! increments, a few relaxed atomic adds. No allocation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::checker::Verdict;
use crate::hist::Hist;

/// Most distinct APP_IDs tracked; more than this are folded into the last.
pub const MAX_APPS: usize = 64;

/// Live counters. Each is a running total; rates are differences.
#[derive(Debug)]
pub struct Live {
    pub attempted: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Connections that ended before the run did (server close or error).
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    /// When the latest send was written, µs since the epoch.
    pub last_sent_us: AtomicU64,
    /// Deliveries the run should see by now: each send adds the members its
    /// room had when it went out. Used to end the grace period early.
    pub expected: AtomicU64,
    pub errors: AtomicU64,
    /// Client tasks that may hold a socket right now (for the fd estimate).
    pub sockets: AtomicU64,
    /// Opened connections that were lost (closed by the server or failed),
    /// whether or not they came back.
    pub disconnects: AtomicU64,
    /// `--reconnect`: losses that ended with the room resumed.
    pub reconnects: AtomicU64,
    /// `--reconnect`: reconnection attempts that failed.
    pub reconnect_failures: AtomicU64,
    /// `--reconnect`: clients between a loss and their resume, right now.
    pub down: AtomicU64,
    /// Connected clients per APP_ID index.
    pub per_app: [AtomicU64; MAX_APPS],
}

impl Default for Live {
    fn default() -> Self {
        Self {
            attempted: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            last_sent_us: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sockets: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            down: AtomicU64::new(0),
            per_app: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The table of APP_IDs seen, interned to small indices.
#[derive(Debug, Default)]
pub struct Apps {
    names: Mutex<Vec<String>>,
}

impl Apps {
    /// The index of `name`, adding it if new.
    pub fn intern(&self, name: &str) -> u16 {
        let mut v = self.names.lock().expect("apps lock");
        if let Some(i) = v.iter().position(|n| n == name) {
            return i as u16;
        }
        if v.len() == MAX_APPS {
            return (MAX_APPS - 1) as u16;
        }
        v.push(name.to_string());
        (v.len() - 1) as u16
    }

    pub fn name(&self, i: u16) -> String {
        self.names
            .lock()
            .expect("apps lock")
            .get(usize::from(i))
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    pub fn names(&self) -> Vec<String> {
        self.names.lock().expect("apps lock").clone()
    }
}

/// Counts and latency of one (sender APP_ID, receiver APP_ID) pair.
#[derive(Debug, Default, Clone)]
pub struct CellRec {
    pub count: u64,
    pub hist: Hist,
}

/// One shard of the latency recorders.
#[derive(Debug, Default)]
pub struct Shard {
    /// Fan-out latency from the scheduled send time.
    pub sched: Hist,
    /// Latency from the actual send.
    pub raw: Hist,
    /// TCP connect + WebSocket upgrade + welcome.
    pub connect: Hist,
    /// `sched`, reset every second for the rolling view.
    pub interval: Hist,
    /// `--reconnect`: from a socket's loss to its first delivery after
    /// resuming.
    pub recovery: Hist,
    pub matrix: HashMap<(u16, u16), CellRec>,
    /// Probe deliveries (duplicates included), duplicates, out of order:
    /// counted here under the lock the histograms need anyway, rather than
    /// in shared atomics that both runtime threads would bounce.
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// When the latest probe delivery arrived, µs since the epoch.
    pub last_delivery_us: u64,
}

/// One probe delivery, as [`Stats::record_delivery`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub verdict: Verdict,
    /// The instance that accepted the message.
    pub sender_app: u16,
    /// The instance the receiver got it through.
    pub receiver_app: u16,
    /// Latency from the scheduled send time, and from the actual write, µs.
    pub sched_lat: u64,
    pub raw_lat: u64,
    /// Now, µs since the epoch.
    pub now_us: u64,
}

/// Most recovery events kept for per-fault figures.
pub const MAX_RECOVERY_EVENTS: usize = 100_000;
/// Samples of unrecognized frames kept for the report.
pub const MAX_FRAME_SAMPLES: usize = 3;

/// Counters of rare events, touched outside the per-delivery path.
#[derive(Debug, Default)]
pub struct Rare {
    /// Messages read by the JSON fallback (not in the server's layout).
    pub frames_fallback: AtomicU64,
    /// Frames that were neither a message nor a known control frame.
    pub frames_unrecognized: AtomicU64,
    /// `gap` frames, and the offsets they named.
    pub gap_frames: AtomicU64,
    pub gap_offsets: AtomicU64,
    /// `reset` frames.
    pub resets: AtomicU64,
    /// Resumes answered `recovered: false`.
    pub unrecovered_joins: AtomicU64,
    /// Sends written again with the same id.
    pub sends_retried: AtomicU64,
    /// Sends confirmed by `sent` with `duplicate: true`.
    pub sends_confirmed_duplicate: AtomicU64,
    /// `--registry`: asks sent, and answered with an instance.
    pub registry_asks: AtomicU64,
    pub registry_answers: AtomicU64,
    /// Answers that named the instance that had just failed this client
    /// (it backed off and asked again).
    pub registry_repeats: AtomicU64,
    /// Direct connects to a named instance that failed.
    pub direct_failures: AtomicU64,
    /// Connects through `--url` after failed asks in a row.
    pub registry_fallbacks: AtomicU64,
    /// Welcomes whose APP_ID was not the one the registry named.
    pub registry_app_mismatches: AtomicU64,
    /// Successful connects (first ones and resumes): straight to the
    /// instance the registry named, or through a `--url`.
    pub connects_direct: AtomicU64,
    pub connects_via_url: AtomicU64,
    /// Everything below, under one lock.
    pub lists: Mutex<RareLists>,
}

/// The rare events' lists.
#[derive(Debug, Default)]
pub struct RareLists {
    /// `(from APP_ID, to APP_ID)` → reconnects that moved a client there.
    pub app_changes: BTreeMap<(u16, u16), u64>,
    /// `(lost at µs, recovery µs)` per recovered loss, for per-fault figures.
    pub recovery_events: Vec<(u64, u64)>,
    /// A few unrecognized frames: `reason: sample`.
    pub frame_samples: Vec<String>,
    /// `--registry`: failed asks by kind (`http 503`, `refused`,
    /// `timeout`, `bad json`, `io: …`).
    pub registry_failures: BTreeMap<String, u64>,
    /// Clients whose first connection went straight to the instance the
    /// registry named, by APP_ID index.
    pub first_direct: BTreeMap<u16, u64>,
    /// How long answered asks took, µs.
    pub ask_us: Hist,
}

/// The shared state of one run in one process.
#[derive(Debug)]
pub struct Stats {
    pub live: Live,
    pub apps: Apps,
    shards: Vec<Mutex<Shard>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// When `/proc/self/fd` was last counted, and how many descriptors were
    /// open besides the client sockets then. Counting costs ~1 µs per open
    /// descriptor (15 ms at 17k), so it is done every 10 s and estimated
    /// from the socket count in between.
    fd_base: Mutex<Option<(Instant, u64)>>,
    /// How late a 10 ms timer fires on the runtime, in µs: when loadgen is
    /// the bottleneck, deliveries queue behind each other inside it and
    /// this shows it.
    pub lag: Mutex<Hist>,
    /// The run's time origin: probe times are µs since this.
    pub epoch: Instant,
    /// `epoch` as µs since the Unix epoch (to place `--faults` in the run).
    pub epoch_unix_us: u64,
    pub rare: Rare,
}

impl Stats {
    pub fn new(shards: usize) -> Self {
        Self {
            live: Live::default(),
            apps: Apps::default(),
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            errors: Mutex::new(BTreeMap::new()),
            fd_base: Mutex::new(None),
            lag: Mutex::new(Hist::default()),
            epoch: Instant::now(),
            epoch_unix_us: unix_us(),
            rare: Rare::default(),
        }
    }

    /// Align this run's clock with a parent's: its epoch, as an `Instant`
    /// of this process and as µs since the Unix epoch.
    pub fn set_epoch(&mut self, epoch: Instant, epoch_unix_us: u64) {
        self.epoch = epoch;
        self.epoch_unix_us = epoch_unix_us;
    }

    /// A reconnect moved a client from one APP_ID to another.
    pub fn app_change(&self, from: u16, to: u16) {
        let mut l = self.rare.lists.lock().expect("rare lock");
        *l.app_changes.entry((from, to)).or_default() += 1;
    }

    /// A socket lost at `lost_at` (µs) had its first delivery after
    /// resuming `recovery_us` later.
    pub fn recovered(&self, client: usize, lost_at: u64, recovery_us: u64) {
        self.shard(client).recovery.record(recovery_us);
        let mut l = self.rare.lists.lock().expect("rare lock");
        if l.recovery_events.len() < MAX_RECOVERY_EVENTS {
            l.recovery_events.push((lost_at, recovery_us));
        }
    }

    /// A frame that is neither a message nor a known control frame.
    pub fn unrecognized(&self, reason: &str, frame: &[u8]) {
        self.rare.frames_unrecognized.fetch_add(1, Relaxed);
        self.error(format!("frame: unrecognized ({reason})"));
        let mut l = self.rare.lists.lock().expect("rare lock");
        if l.frame_samples.len() < MAX_FRAME_SAMPLES {
            l.frame_samples
                .push(format!("{reason}: {}", crate::frames::sample(frame, 120)));
        }
    }

    /// µs since the epoch.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// µs since the epoch of `t`.
    pub fn us_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Lock the shard of client `client`.
    #[inline]
    pub fn shard(&self, client: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[client % self.shards.len()]
            .lock()
            .expect("shard lock")
    }

    /// Record one probe delivery: counted always, latency only for first
    /// copies.
    #[inline]
    pub fn record_delivery(&self, client: usize, d: Delivery) {
        let Delivery {
            verdict,
            sender_app,
            receiver_app,
            sched_lat,
            raw_lat,
            now_us,
        } = d;
        let mut s = self.shard(client);
        s.received += 1;
        s.last_delivery_us = s.last_delivery_us.max(now_us);
        match verdict {
            Verdict::Duplicate => {
                s.duplicated += 1;
                return;
            }
            Verdict::OutOfOrder => s.out_of_order += 1,
            Verdict::InOrder => {}
        }
        s.sched.record(sched_lat);
        s.raw.record(raw_lat);
        s.interval.record(sched_lat);
        let c = s.matrix.entry((sender_app, receiver_app)).or_default();
        c.count += 1;
        c.hist.record(sched_lat);
    }

    /// Count an error of kind `kind` (e.g. `connect: refused`).
    pub fn error(&self, kind: impl Into<String>) {
        self.live.errors.fetch_add(1, Relaxed);
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind.into())
            .or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("errors lock").clone()
    }

    /// (received, duplicated, out of order) so far.
    pub fn delivery_counts(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for s in &self.shards {
            let s = s.lock().expect("shard lock");
            t.0 += s.received;
            t.1 += s.duplicated;
            t.2 += s.out_of_order;
        }
        t
    }

    /// When the latest probe delivery arrived (µs since the epoch; 0: none).
    pub fn last_delivery_us(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().expect("shard lock").last_delivery_us)
            .max()
            .unwrap_or(0)
    }

    /// Take the rolling histogram of the last interval from every shard.
    pub fn take_interval(&self) -> Hist {
        let mut out = Hist::default();
        for s in &self.shards {
            let mut s = s.lock().expect("shard lock");
            out.add(&s.interval);
            s.interval.0.reset();
        }
        out
    }

    /// Merge every shard into one.
    pub fn merged(&self) -> Shard {
        let mut out = Shard::default();
        for s in &self.shards {
            let s = s.lock().expect("shard lock");
            out.sched.add(&s.sched);
            out.raw.add(&s.raw);
            out.connect.add(&s.connect);
            out.recovery.add(&s.recovery);
            for (k, c) in &s.matrix {
                let o = out.matrix.entry(*k).or_default();
                o.count += c.count;
                o.hist.add(&c.hist);
            }
        }
        out
    }

    /// Open file descriptors: counted every 10 s, estimated in between.
    pub fn open_fds(&self) -> u64 {
        let sockets = self.live.sockets.load(Relaxed);
        let mut base = self.fd_base.lock().expect("fd lock");
        match *base {
            Some((at, b)) if at.elapsed() < std::time::Duration::from_secs(10) => b + sockets,
            _ => {
                let n = crate::sys::open_fds().unwrap_or(0) as u64;
                *base = Some((Instant::now(), n.saturating_sub(sockets)));
                n
            }
        }
    }

    /// Connected clients per APP_ID name.
    pub fn per_app(&self) -> BTreeMap<String, u64> {
        self.apps
            .names()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, self.live.per_app[i].load(Relaxed)))
            .collect()
    }
}

/// Now, in µs since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A point-in-time view of the live counters, for the dashboard and for
/// workers to send to their parent.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub elapsed_ms: u64,
    pub phase: String,
    pub clients: u64,
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    #[serde(default)]
    pub disconnects: u64,
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub down: u64,
    pub sent: u64,
    pub received: u64,
    pub expected: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub per_app: BTreeMap<String, u64>,
    /// Rolling fan-out latency of the last interval.
    pub interval_p50: u64,
    pub interval_p99: u64,
    pub interval_count: u64,
    pub open_fds: u64,
    pub fd_limit: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Take one; resets the rolling histogram.
    pub fn take(stats: &Stats, phase: &str, clients: usize, fd_limit: u64) -> Self {
        let l = &stats.live;
        let iv = stats.take_interval();
        let (received, duplicated, out_of_order) = stats.delivery_counts();
        Self {
            elapsed_ms: stats.epoch.elapsed().as_millis() as u64,
            phase: phase.to_string(),
            clients: clients as u64,
            attempted: l.attempted.load(Relaxed),
            connected: l.connected.load(Relaxed),
            failed: l.failed.load(Relaxed),
            dropped: l.dropped.load(Relaxed),
            disconnects: l.disconnects.load(Relaxed),
            reconnects: l.reconnects.load(Relaxed),
            down: l.down.load(Relaxed),
            sent: l.sent.load(Relaxed),
            received,
            expected: l.expected.load(Relaxed),
            duplicated,
            out_of_order,
            errors: l.errors.load(Relaxed),
            per_app: stats.per_app(),
            interval_p50: iv.q(0.5),
            interval_p99: iv.q(0.99),
            interval_count: iv.count(),
            open_fds: stats.open_fds(),
            fd_limit,
            error_kinds: stats.errors(),
        }
    }

    /// Sum snapshots of several workers (the parent's view).
    pub fn merge(parts: &[Snapshot]) -> Snapshot {
        let mut o = Snapshot::default();
        for p in parts {
            o.elapsed_ms = o.elapsed_ms.max(p.elapsed_ms);
            o.phase.clone_from(&p.phase);
            o.clients += p.clients;
            o.attempted += p.attempted;
            o.connected += p.connected;
            o.failed += p.failed;
            o.dropped += p.dropped;
            o.disconnects += p.disconnects;
            o.reconnects += p.reconnects;
            o.down += p.down;
            o.sent += p.sent;
            o.received += p.received;
            o.expected += p.expected;
            o.duplicated += p.duplicated;
            o.out_of_order += p.out_of_order;
            o.errors += p.errors;
            o.open_fds += p.open_fds;
            o.fd_limit += p.fd_limit;
            o.interval_count += p.interval_count;
            // Rolling percentiles cannot be merged exactly from summaries:
            // take the worst worker's, which is what an alarm wants.
            o.interval_p50 = o.interval_p50.max(p.interval_p50);
            o.interval_p99 = o.interval_p99.max(p.interval_p99);
            for (k, v) in &p.per_app {
                *o.per_app.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &p.error_kinds {
                *o.error_kinds.entry(k.clone()).or_default() += v;
            }
        }
        o
    }
}
