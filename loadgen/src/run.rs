//! One process's share of a run: ramp the connections up, send for the
//! duration, wait out the grace period for in-flight deliveries, close, and
//! verify. The phases are driven by [`Control`], so the same code serves a
//! standalone run and a worker under a parent.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::checker::{self, ReceiverLog, SenderLog};
use crate::client::{self, Ctx};
use crate::config::{Config, Protocol};
use crate::sched;
use crate::stats::Stats;
use crate::tally::{Cost, Tally, Timing};

/// The phase a run is in, for the live view.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    pub const RAMP: u8 = 0;
    pub const WAIT: u8 = 1;
    pub const SEND: u8 = 2;
    pub const DRAIN: u8 = 3;
    pub const CLOSE: u8 = 4;

    pub fn set(&self, p: u8) {
        self.0.store(p, Relaxed);
    }

    pub fn name(&self) -> &'static str {
        match self.0.load(Relaxed) {
            Self::RAMP => "ramp",
            Self::WAIT => "waiting",
            Self::SEND => "send",
            Self::DRAIN => "drain",
            _ => "close",
        }
    }
}

/// Which clients this process holds: client `c` belongs to worker
/// `c % count`, so every room (even a single huge one) spreads over every
/// worker.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    pub const ALL: Part = Part { index: 0, count: 1 };

    pub fn owns(&self, c: usize) -> bool {
        c % self.count == self.index
    }

    /// The clients of this part, in ramp order.
    pub fn clients(&self, cfg: &Config) -> Vec<usize> {
        (0..cfg.clients).filter(|&c| self.owns(c)).collect()
    }
}

/// A sender's log as it travels between processes: every worker needs
/// every sender's send times to judge its own receivers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WireSender {
    pub sender: u32,
    pub room: usize,
    pub app: String,
    pub sent_at: Vec<u64>,
    pub excluded: Vec<u32>,
    /// `(epoch hash, offset)` per seq, `(0, 0)` unknown.
    #[serde(default)]
    pub offsets: Vec<(u64, u64)>,
    /// `(first seq, APP_ID)` per move to another instance.
    #[serde(default)]
    pub moves: Vec<(u32, String)>,
}

/// Hands this process's sender logs out and gets everyone's back (workers);
/// `None` for a standalone run.
#[derive(Debug)]
pub struct Exchange {
    pub out: oneshot::Sender<Vec<WireSender>>,
    pub back: oneshot::Receiver<Vec<WireSender>>,
}

/// How the phases are driven.
#[derive(Debug)]
pub struct Control {
    /// Told when every connection attempt has settled.
    pub ramped: Option<oneshot::Sender<()>>,
    /// Sending starts when this fires (at once for a standalone run).
    pub go: oneshot::Receiver<()>,
    /// First cancel: stop sending and drain. Second (`hard_stop`): stop now.
    pub interrupt: CancellationToken,
    pub hard_stop: CancellationToken,
    pub exchange: Option<Exchange>,
}

/// Everything a live view needs to read while the run goes.
#[derive(Debug, Clone)]
pub struct Handle {
    pub stats: Arc<Stats>,
    pub phase: Arc<Phase>,
    pub clients: usize,
}

/// Create the shared state for a run of `part`. `epoch` aligns probe times
/// across processes (workers get their parent's).
pub fn prepare(cfg: &Config, part: Part, epoch: Option<(Instant, u64)>) -> Handle {
    let mut stats = Stats::new(cfg.threads * 4);
    if let Some((e, unix_us)) = epoch {
        stats.set_epoch(e, unix_us);
    }
    Handle {
        stats: Arc::new(stats),
        phase: Arc::new(Phase::default()),
        clients: part.clients(cfg).len(),
    }
}

/// Resolve each URL's host and port (once, not per connection).
async fn resolve(cfg: &Config) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for u in &cfg.urls {
        let uri: tokio_tungstenite::tungstenite::http::Uri = u.replace("{room}", "r").parse()?;
        let host = uri
            .host()
            .context("URL without host")?
            .trim_matches(|c| c == '[' || c == ']');
        let port = uri.port_u16().unwrap_or(80);
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}:{port}"))?
            .collect();
        // Prefer IPv4: `localhost` often resolves to ::1 first, while
        // HAProxy and the servers listen on 127.0.0.1.
        let addr = all
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| all.first())
            .copied()
            .with_context(|| format!("{host} has no address"))?;
        out.push(addr);
    }
    Ok(out)
}

/// Run this process's part to the end and return its tally.
pub async fn run(cfg: Arc<Config>, part: Part, h: Handle, mut control: Control) -> Result<Tally> {
    let stats = h.stats.clone();
    let addrs = resolve(&cfg).await?;
    // Source addresses only make sense towards IPv4 loopback.
    let source_ips = if addrs
        .iter()
        .all(|a| a.ip().is_loopback() && matches!(a.ip(), IpAddr::V4(_)))
    {
        cfg.source_ips.clone()
    } else {
        Vec::new()
    };
    let app_re = match cfg.protocol {
        Protocol::Raw if !cfg.app_id_regex.is_empty() => {
            Some(regex::Regex::new(&cfg.app_id_regex)?)
        }
        _ => None,
    };
    // One bounded tick queue per sender of this part; the scheduler thread
    // holds the sending ends.
    let mut queues: Vec<Option<mpsc::Sender<sched::Tick>>> = vec![None; cfg.senders];
    let mut ticks = Vec::with_capacity(cfg.senders);
    for (j, q) in queues.iter_mut().enumerate() {
        if part.owns(j) {
            let (tx, rx) = mpsc::channel(sched::QUEUE);
            *q = Some(tx);
            ticks.push(std::sync::Mutex::new(Some(rx)));
        } else {
            ticks.push(std::sync::Mutex::new(None));
        }
    }
    let registry = match &cfg.registry {
        Some(r) => {
            let ep = crate::registry::Endpoint::parse(r).map_err(anyhow::Error::msg)?;
            let addr = ep.resolve().await.map_err(anyhow::Error::msg)?;
            Some((ep, addr))
        }
        None => None,
    };
    let sem = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        stats: stats.clone(),
        addrs,
        source_ips,
        members: (0..cfg.rooms).map(|_| AtomicU64::new(0)).collect(),
        sender_apps: (0..cfg.senders).map(|_| AtomicU16::new(0)).collect(),
        ticks,
        stop_send: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        app_re,
        padding: crate::probe::padding(cfg.size),
        // Room for a big `members` list and any --size.
        max_message: cfg.size.saturating_mul(2).max(1 << 20),
        connect_sem: sem.clone(),
        registry,
    });

    // Ramp: start connections at `ramp` per second (this part's share),
    // with at most `connect_concurrency` handshakes in flight.
    let mine = part.clients(&cfg);
    let ramp = cfg.ramp / part.count as f64;
    let mut tasks = Vec::with_capacity(mine.len());
    let ramp_start = Instant::now();
    let rss_before = crate::sys::rss_bytes().unwrap_or(0);
    for (i, &c) in mine.iter().enumerate() {
        let at = ramp_start + Duration::from_secs_f64(i as f64 / ramp);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = control.interrupt.cancelled() => break,
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = control.interrupt.cancelled() => break,
        };
        tasks.push(tokio::spawn(client::run(ctx.clone(), c, permit)));
    }
    // Wait until every attempt has settled: joined, failed or timed out.
    let spawned = tasks.len() as u64;
    let settle_deadline = Instant::now() + cfg.connect_timeout + Duration::from_secs(1);
    let l = &stats.live;
    while l.connected.load(Relaxed)
        + l.failed.load(Relaxed)
        + l.dropped.load(Relaxed)
        + l.down.load(Relaxed)
        < spawned
        && Instant::now() < settle_deadline
        && !control.interrupt.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp_time = ramp_start.elapsed();
    let rss_ramped = crate::sys::rss_bytes().unwrap_or(0);
    let connected_after_ramp = l.connected.load(Relaxed);
    h.phase.set(Phase::WAIT);
    if let Some(tx) = control.ramped.take() {
        let _ = tx.send(());
    }
    let mut interrupted = control.interrupt.is_cancelled();
    if !interrupted {
        tokio::select! {
            _ = &mut control.go => {}
            _ = control.interrupt.cancelled() => interrupted = true,
        }
    }

    // Measure the runtime's own lag while messages flow.
    let lag_stop = CancellationToken::new();
    let lag_task = tokio::spawn(measure_lag(stats.clone(), lag_stop.clone()));

    // Send.
    let cpu_start = crate::sys::cpu_time_us().unwrap_or((0, 0));
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut send_end = start;
    if !interrupted && cfg.senders > 0 {
        h.phase.set(Phase::SEND);
        let scheduler = sched::spawn(
            queues,
            cfg.rate,
            start,
            end,
            ctx.stop_send.clone(),
            stats.clone(),
        );
        tokio::select! {
            _ = tokio::time::sleep_until(end.into()) => {}
            _ = control.interrupt.cancelled() => interrupted = true,
        }
        if interrupted {
            // Stop now; on a normal end senders finish their queued ticks.
            ctx.stop_send.cancel();
        }
        send_end = Instant::now().min(end);
        let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    } else if !interrupted {
        // Nobody sends: hold the connections for the duration.
        h.phase.set(Phase::SEND);
        tokio::select! {
            _ = tokio::time::sleep_until(end.into()) => {}
            _ = control.interrupt.cancelled() => interrupted = true,
        }
        send_end = Instant::now().min(end);
    }

    // Drain: wait for in-flight deliveries, up to `grace`; stop early once
    // every delivery the live count expects has arrived.
    h.phase.set(Phase::DRAIN);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + cfg.grace;
    let mut all_arrived = false;
    let mut cut_short = false;
    loop {
        let (received, duplicated, _) = stats.delivery_counts();
        let got = received - duplicated;
        // The live count only knows this process's members, so with
        // several workers (rooms spread over them) the full grace is waited.
        if part.count == 1 && got >= l.expected.load(Relaxed) {
            all_arrived = true;
            break;
        }
        if Instant::now() >= drain_deadline {
            break;
        }
        if control.hard_stop.is_cancelled() {
            cut_short = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checked_until = if all_arrived || !cut_short {
        u64::MAX
    } else {
        stats.now_us().saturating_sub(cfg.grace.as_micros() as u64)
    };
    let drain_time = drain_start.elapsed();
    let last_delivery_after_send_us = stats
        .last_delivery_us()
        .saturating_sub(stats.live.last_sent_us.load(Relaxed));
    let cpu_end = crate::sys::cpu_time_us().unwrap_or((0, 0));

    lag_stop.cancel();
    let _ = lag_task.await;

    // Close every socket and collect what each client saw.
    h.phase.set(Phase::CLOSE);
    ctx.shutdown.cancel();
    let mut senders: Vec<SenderLog> = Vec::new();
    let mut receivers: Vec<ReceiverLog> = Vec::new();
    let close_deadline = Instant::now() + Duration::from_secs(10);
    for t in tasks {
        let left = close_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t).await {
            Ok(Ok(o)) => {
                senders.extend(o.sender);
                receivers.extend(o.receiver);
            }
            Ok(Err(e)) => stats.error(format!("internal: client task failed: {e}")),
            Err(_) => stats.error("internal: a client did not close within 10s"),
        }
    }
    let grace_us = cfg.grace.as_micros() as u64;
    let unconfirmed = checker::confirm(&mut senders, &receivers, cfg.rooms, grace_us);
    let everyone = match control.exchange.take() {
        None => senders.clone(),
        Some(x) => {
            let wire = senders
                .iter()
                .map(|s| WireSender {
                    sender: s.sender,
                    room: s.room,
                    app: stats.apps.name(s.app),
                    sent_at: s.sent_at.clone(),
                    excluded: s.excluded.clone(),
                    offsets: s.offsets.clone(),
                    moves: s
                        .moves
                        .iter()
                        .map(|(q, a)| (*q, stats.apps.name(*a)))
                        .collect(),
                })
                .collect();
            let _ = x.out.send(wire);
            x.back
                .await
                .context("the parent did not send back every worker's sender logs")?
                .into_iter()
                .map(|w| SenderLog {
                    sender: w.sender,
                    room: w.room,
                    app: stats.apps.intern(&w.app),
                    sent_at: w.sent_at,
                    rejected: Vec::new(),
                    excluded: w.excluded,
                    unconfirmed: Vec::new(),
                    offsets: w.offsets,
                    moves: w
                        .moves
                        .iter()
                        .map(|(q, a)| (*q, stats.apps.intern(a)))
                        .collect(),
                })
                .collect()
        }
    };
    let v = checker::verify(&everyone, &receivers, cfg.rooms, grace_us, checked_until);
    let timing = Timing {
        ramp_ms: ramp_time.as_millis() as u64,
        send_ms: send_end.saturating_duration_since(start).as_millis() as u64,
        drain_ms: drain_time.as_millis() as u64,
        drain_us: drain_time.as_micros() as u64,
        last_delivery_after_send_us,
        interrupted: interrupted || control.interrupt.is_cancelled(),
        all_arrived,
    };
    let mem_per_socket = rss_ramped
        .saturating_sub(rss_before)
        .checked_div(connected_after_ramp)
        .unwrap_or(0);
    let cost = Cost {
        cpu_user_us: cpu_end.0.saturating_sub(cpu_start.0),
        cpu_us: (cpu_end.0 + cpu_end.1).saturating_sub(cpu_start.0 + cpu_start.1),
        rss_bytes: rss_ramped,
        mem_per_socket_bytes: mem_per_socket,
    };
    Ok(Tally::build(
        &stats,
        spawned,
        &senders,
        unconfirmed,
        &v,
        timing,
        cost,
    ))
}

/// Sleep 10 ms again and again and record how late each wakeup was: the
/// time a delivery may have waited inside loadgen before being timed.
async fn measure_lag(stats: Arc<Stats>, stop: CancellationToken) {
    let period = Duration::from_millis(10);
    loop {
        let due = Instant::now() + period;
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {
                let late = Instant::now().saturating_duration_since(due);
                stats.lag.lock().expect("lag lock").record(late.as_micros() as u64);
            }
            _ = stop.cancelled() => return,
        }
    }
}
