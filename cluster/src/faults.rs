//! Faults on a schedule: parse specs like `kill9:app2@5s` or
//! `redis-stop@8s+5s`, pass the plan to a load generator
//! ([`plan`], the `LOADGEN_FAULTS` environment variable) and inject each
//! fault into a running [`Cluster`] at its time ([`run_schedule`]).
//! `cluster exec --fault SPEC` uses this; tests can too.
//!
//! # Grammar
//! `KIND[:TARGET]@T[+D]`: `T` is the time from the start of the schedule
//! (for `cluster exec`, the moment the command starts), `D` a duration;
//! both are numbers with a unit, `ms`, `s`, `m` or `h`, possibly chained
//! (`500ms`, `5s`, `1.5s`, `1m30s`).
//!
//! | spec | what happens |
//! |---|---|
//! | `kill9:appN@T` | SIGKILL server N |
//! | `term:appN@T` | SIGTERM server N (it drains and exits; waited for up to 15 s, then SIGKILL) |
//! | `stop:appN@T+D` | SIGSTOP server N, SIGCONT after D |
//! | `restart:appN@T` | start server N again (after `kill9` or `term`; a running one is left alone and the fault fails) |
//! | `redis-stop[:ROOM]@T+D` | SIGSTOP Redis, SIGCONT after D: the single `redis-server`, the current master (sentinel), the master of ROOM's slot (cluster; slot 0 without ROOM) |
//! | `redis-kill@T[+D]` | single Redis only: SIGKILL it; with `+D` start it again (empty) after D |
//! | `redis-restart@T` | single Redis only: start it again (empty), killing it first if it runs |
//! | `redis-failover[:ROOM]@T` | sentinel or cluster: SIGKILL the master (or the master of ROOM's slot); a replica takes over |
//! | `redis-hang[:ROOM]@T+D` | sentinel or cluster: `DEBUG SLEEP D` on the master (or the master of ROOM's slot) |
//!
//! A ROOM target needs the cluster topology (a room picks a slot, see
//! [`crate::room_slot`]). [`FaultSpec::check`] refuses a server out of
//! range and a Redis fault the topology does not support.
//!
//! # The plan
//! [`plan`] is a JSON array, one object per fault in the order given:
//! `{"name": "kill9:app2@5s", "kind": "kill9", "target": "app2",
//! "at_unix_ms": 1700000005000, "end_unix_ms": null}`. `target` is `appN`,
//! `redis` or `redis:ROOM`; `end_unix_ms` is `at + D` for a fault with a
//! `+D`, else `null`. `cluster exec` exports it as [`PLAN_ENV`] and the
//! start time as [`START_ENV`] (unix ms).
//!
//! # Injection
//! [`run_schedule`] runs one thread that sleeps until each fault's time
//! (start and, for `+D` faults, end) and acts at once; what takes long (a
//! `term`'s exit, a `restart`'s health) is waited for on helper threads so
//! later faults stay on time. Each event is printed to stderr (`cluster:
//! fault kill9:app2@5s: injected at +5.001s (planned +5.000s): SIGKILL app2
//! (pid 1234)`) and returned by [`Schedule::finish`]. `finish` (the command
//! exited) skips the faults not yet due and ends the ones under way (a
//! stopped process gets its SIGCONT at once). Starting Redis again
//! (`redis-kill@T+D`, `redis-restart`) holds the schedule until it answers
//! PING, normally a few tens of milliseconds.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{procs, room_slot, Cluster, RedisTopology};

/// The environment variable `cluster exec` passes the plan in.
pub const PLAN_ENV: &str = "LOADGEN_FAULTS";
/// The environment variable with the command's start time (unix ms).
pub const START_ENV: &str = "CLUSTER_EXEC_START_UNIX_MS";

/// How long a `term`ed server may drain before SIGKILL, and a restarted
/// one may take to answer `/healthz`.
const SERVER_WAIT: Duration = Duration::from_secs(15);
/// The latest time a fault may be scheduled at.
const MAX_TIME: Duration = Duration::from_secs(24 * 3600);

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill9:appN`: SIGKILL a server.
    Kill9,
    /// `term:appN`: SIGTERM a server (graceful drain).
    Term,
    /// `stop:appN@T+D`: SIGSTOP a server, SIGCONT after D.
    Stop,
    /// `restart:appN`: start a server again.
    Restart,
    /// `redis-stop[:ROOM]@T+D`: SIGSTOP Redis (or the master), SIGCONT
    /// after D.
    RedisStop,
    /// `redis-kill@T[+D]`: SIGKILL the single Redis (start it after D).
    RedisKill,
    /// `redis-restart@T`: start the single Redis again.
    RedisRestart,
    /// `redis-failover[:ROOM]@T`: SIGKILL the master (sentinel, cluster).
    RedisFailover,
    /// `redis-hang[:ROOM]@T+D`: `DEBUG SLEEP D` on the master.
    RedisHang,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Required,
    Optional,
    Forbidden,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 9] = [
        Self::Kill9,
        Self::Term,
        Self::Stop,
        Self::Restart,
        Self::RedisStop,
        Self::RedisKill,
        Self::RedisRestart,
        Self::RedisFailover,
        Self::RedisHang,
    ];

    /// The name in a spec (`kill9`, `redis-stop`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kill9 => "kill9",
            Self::Term => "term",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::RedisStop => "redis-stop",
            Self::RedisKill => "redis-kill",
            Self::RedisRestart => "redis-restart",
            Self::RedisFailover => "redis-failover",
            Self::RedisHang => "redis-hang",
        }
    }

    /// Whether it acts on a chat server (`appN`) rather than Redis.
    pub fn targets_server(self) -> bool {
        matches!(self, Self::Kill9 | Self::Term | Self::Stop | Self::Restart)
    }

    fn takes_room(self) -> bool {
        matches!(
            self,
            Self::RedisStop | Self::RedisFailover | Self::RedisHang
        )
    }

    fn duration(self) -> Needs {
        match self {
            Self::Stop | Self::RedisStop | Self::RedisHang => Needs::Required,
            Self::RedisKill => Needs::Optional,
            _ => Needs::Forbidden,
        }
    }

    fn example(self) -> &'static str {
        match self {
            Self::Kill9 => "kill9:app2@5s",
            Self::Term => "term:app1@12s",
            Self::Stop => "stop:app1@5s+2s",
            Self::Restart => "restart:app2@8s",
            Self::RedisStop => "redis-stop@8s+5s",
            Self::RedisKill => "redis-kill@5s or redis-kill@5s+2s",
            Self::RedisRestart => "redis-restart@9s",
            Self::RedisFailover => "redis-failover@5s or redis-failover:lobby@5s",
            Self::RedisHang => "redis-hang@5s+3s",
        }
    }

    fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| anyhow!("unknown fault kind {s:?} (one of {})", Self::names()))
    }
}

/// What a fault acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Chat server `i` (0-based: `app1` is 0).
    Server(usize),
    /// Redis: the single one, the sentinels' master, or in a Redis
    /// Cluster the master of `room`'s slot (slot 0 without a room).
    Redis {
        /// The room whose slot's master is hit (cluster topology only).
        room: Option<String>,
    },
}

/// One parsed fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// The spec as given, e.g. `kill9:app2@5s`.
    pub name: String,
    /// What it does.
    pub kind: FaultKind,
    /// What it acts on.
    pub target: Target,
    /// When, from the start of the schedule.
    pub at: Duration,
    /// The `+D`: how long a stop or hang lasts, or until a killed Redis
    /// is started again.
    pub duration: Option<Duration>,
}

impl FaultSpec {
    /// `appN`, `redis` or `redis:ROOM`.
    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Server(i) => format!("app{}", i + 1),
            Target::Redis { room: None } => "redis".into(),
            Target::Redis { room: Some(r) } => format!("redis:{r}"),
        }
    }

    /// When a `+D` fault ends (`at + D`).
    pub fn end(&self) -> Option<Duration> {
        self.duration.map(|d| self.at + d)
    }

    /// Refuse a server out of range (`servers` servers) and a Redis fault
    /// the `redis` topology does not support.
    pub fn check(&self, servers: usize, redis: RedisTopology) -> Result<()> {
        let name = &self.name;
        let kind = self.kind;
        match &self.target {
            Target::Server(i) if *i >= servers => {
                let have = match servers {
                    0 => "no servers".to_string(),
                    1 => "1 server (app1)".to_string(),
                    n => format!("{n} servers (app1..app{n})"),
                };
                bail!(
                    "fault {name:?}: app{} is out of range: the cluster has {have}",
                    i + 1
                )
            }
            Target::Server(_) => Ok(()),
            Target::Redis { room } => {
                let why = match kind {
                    FaultKind::RedisKill | FaultKind::RedisRestart
                        if redis != RedisTopology::Single =>
                    {
                        Some("it kills or starts the single redis-server; use redis-failover, redis-stop or redis-hang")
                    }
                    FaultKind::RedisFailover | FaultKind::RedisHang
                        if redis == RedisTopology::Single =>
                    {
                        Some("the single Redis has no replica to take over (and refuses DEBUG); use --redis sentinel or --redis cluster, or redis-kill / redis-stop")
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    bail!("fault {name:?}: {kind} is not supported with the {redis} Redis topology: {why}");
                }
                if let Some(room) = room {
                    if redis != RedisTopology::Cluster {
                        bail!("fault {name:?}: a room ({room:?}) picks the master of its slot, which needs --redis cluster; this cluster runs the {redis} Redis topology");
                    }
                }
                Ok(())
            }
        }
    }
}

impl FromStr for FaultSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse(s)
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Parse one spec, `KIND[:TARGET]@T[+D]` (see the module docs).
pub fn parse(spec: &str) -> Result<FaultSpec> {
    let name = spec.trim();
    if name.is_empty() {
        bail!("empty fault spec (e.g. kill9:app2@5s)");
    }
    let Some((head, when)) = name.rsplit_once('@') else {
        bail!("fault {name:?} has no @TIME (e.g. kill9:app2@5s, stop:app1@5s+2s)");
    };
    let (kind_s, target_s) = match head.split_once(':') {
        Some((k, t)) => (k, Some(t)),
        None => (head, None),
    };
    let kind: FaultKind = kind_s.parse().with_context(|| format!("fault {name:?}"))?;
    let (at_s, dur_s) = match when.split_once('+') {
        Some((a, d)) => (a, Some(d)),
        None => (when, None),
    };
    let at = parse_duration(at_s).with_context(|| format!("fault {name:?}: bad time"))?;
    let duration = dur_s
        .map(|d| parse_duration(d).with_context(|| format!("fault {name:?}: bad duration after +")))
        .transpose()?;
    match (kind.duration(), duration) {
        (Needs::Required, None) => bail!(
            "fault {name:?}: {kind} needs a duration, {kind}...@T+D (e.g. {})",
            kind.example()
        ),
        (Needs::Forbidden, Some(_)) => bail!(
            "fault {name:?}: {kind} takes no +D (e.g. {})",
            kind.example()
        ),
        (_, Some(d)) if d.is_zero() => bail!("fault {name:?}: the +D must be more than 0"),
        (_, Some(d)) if at + d > MAX_TIME => {
            bail!("fault {name:?}: ends after {MAX_TIME:?}, too far")
        }
        _ => {}
    }
    let target = if kind.targets_server() {
        let Some(t) = target_s.filter(|t| !t.is_empty()) else {
            bail!(
                "fault {name:?}: {kind} needs a server, {kind}:appN (e.g. {})",
                kind.example()
            );
        };
        Target::Server(parse_app(t).with_context(|| format!("fault {name:?}"))?)
    } else {
        match target_s {
            None => Target::Redis { room: None },
            Some("") => bail!("fault {name:?}: empty room after {kind}:"),
            Some(r) if kind.takes_room() => Target::Redis {
                room: Some(r.to_string()),
            },
            Some(r) => bail!(
                "fault {name:?}: {kind} takes no target ({r:?}): it acts on the single Redis (e.g. {})",
                kind.example()
            ),
        }
    };
    Ok(FaultSpec {
        name: name.to_string(),
        kind,
        target,
        at,
        duration,
    })
}

/// `appN` (N from 1) → `N - 1`.
fn parse_app(t: &str) -> Result<usize> {
    let n = t
        .strip_prefix("app")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| anyhow!("bad server {t:?}: expected appN (app1, app2, ...)"))?;
    if n == 0 {
        bail!("bad server {t:?}: servers are numbered from app1");
    }
    Ok(n - 1)
}

/// A time or duration: numbers with a unit (`ms`, `s`, `m`, `h`), possibly
/// chained (`1m30s`) or with a fraction (`1.5s`); a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if t.is_empty() {
        bail!("empty time (e.g. 5s, 500ms, 1m)");
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let b = t.as_bytes();
    let mut i = 0;
    let mut secs = 0f64;
    // Each round consumes at least one byte.
    while i < b.len() {
        let n0 = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        if i == n0 {
            bail!(
                "{t:?}: expected a number at {:?} (e.g. 5s, 500ms, 1m)",
                &t[n0..]
            );
        }
        let num: f64 = t[n0..i]
            .parse()
            .map_err(|_| anyhow!("{t:?}: bad number {:?}", &t[n0..i]))?;
        let u0 = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &t[u0..i] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => bail!("{t:?}: {} needs a unit (ms, s, m or h)", &t[n0..i]),
            other => bail!("{t:?}: unknown unit {other:?} (ms, s, m or h)"),
        };
        secs += num * unit;
    }
    if secs > MAX_TIME.as_secs_f64() {
        bail!("{t:?}: more than {MAX_TIME:?}");
    }
    // Whole microseconds: `0.1s` is 100 ms, not 100.000000000000001.
    Ok(Duration::from_micros((secs * 1e6).round() as u64))
}

/// [`FaultSpec::check`] every spec.
pub fn check_all(specs: &[FaultSpec], servers: usize, redis: RedisTopology) -> Result<()> {
    specs.iter().try_for_each(|f| f.check(servers, redis))
}

/// `t` in milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The plan for a schedule started at `start_unix_ms`: the value of
/// [`PLAN_ENV`] (see the module docs).
pub fn plan(specs: &[FaultSpec], start_unix_ms: u64) -> Value {
    Value::Array(
        specs
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "kind": f.kind.as_str(),
                    "target": f.target_name(),
                    "at_unix_ms": start_unix_ms + f.at.as_millis() as u64,
                    "end_unix_ms": f.end().map(|e| start_unix_ms + e.as_millis() as u64),
                })
            })
            .collect(),
    )
}

/// What happened to a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It was injected (for `+D` faults: its start).
    Injected,
    /// A `+D` fault ended (SIGCONT, Redis started again).
    Ended,
    /// What it set off finished (a `term`ed server exited, a restarted
    /// one is healthy).
    Done,
    /// Not injected: the schedule was finished (the command exited) first.
    Skipped,
    /// It could not be injected (e.g. the server was not running).
    Failed,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Ended => "ended",
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// One line of the fault log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    /// The fault's spec as given.
    pub fault: String,
    /// What happened.
    pub kind: EventKind,
    /// When it was planned, from the start (`None` for a `Done`).
    pub planned: Option<Duration>,
    /// When it happened, from the start (for `Skipped`: when the schedule
    /// was finished).
    pub offset: Duration,
    /// What was done, to what (pids, addresses) or why not.
    pub detail: String,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| format!("+{:.3}s", d.as_secs_f64());
        write!(f, "fault {}: {}", self.fault, self.kind.as_str())?;
        match (self.kind, self.planned) {
            (EventKind::Skipped, Some(p)) => write!(
                f,
                " (planned {}, the schedule was finished at {})",
                secs(p),
                secs(self.offset)
            )?,
            (_, Some(p)) => write!(f, " at {} (planned {})", secs(self.offset), secs(p))?,
            (_, None) => write!(f, " at {}", secs(self.offset))?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// The shared event log: printed to stderr as it grows.
#[derive(Debug, Clone)]
struct Log {
    start: Instant,
    events: Arc<Mutex<Vec<FaultEvent>>>,
}

impl Log {
    fn push(
        &self,
        fault: &str,
        kind: EventKind,
        planned: Option<Duration>,
        at: Instant,
        detail: String,
    ) {
        let e = FaultEvent {
            fault: fault.to_string(),
            kind,
            planned,
            offset: at.saturating_duration_since(self.start),
            detail,
        };
        eprintln!("cluster: {e}");
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

/// The finish signal: the moment [`Schedule::finish`] was called.
#[derive(Debug, Default)]
struct Cancel {
    at: Mutex<Option<Instant>>,
    cv: Condvar,
}

impl Cancel {
    /// Sleep until `deadline`; `Some(t)` if finished at `t` before it.
    fn wait_until(&self, deadline: Instant) -> Option<Instant> {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by `deadline`: every round waits for what is left of it.
        loop {
            if let Some(t) = *at {
                return Some(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            at = self
                .cv
                .wait_timeout(at, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn set(&self) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        at.get_or_insert_with(Instant::now);
        self.cv.notify_all();
    }
}

/// A running fault schedule (see [`run_schedule`]).
#[derive(Debug)]
pub struct Schedule {
    cancel: Arc<Cancel>,
    log: Log,
    thread: Option<JoinHandle<()>>,
}

impl Schedule {
    /// Finish now (the command exited): faults not yet due are skipped,
    /// `+D` faults under way end at once, and what was set off is waited
    /// for (a `term`ed server's exit, a restarted one's health: at most
    /// 15 s each). Returns every event.
    pub fn finish(mut self) -> Vec<FaultEvent> {
        self.cancel.set();
        self.join_thread()
    }

    /// Wait until every fault was injected and ended and what they set off
    /// is done, then return every event.
    pub fn join(mut self) -> Vec<FaultEvent> {
        self.join_thread()
    }

    fn join_thread(&mut self) -> Vec<FaultEvent> {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("cluster: the fault scheduler panicked");
            }
        }
        self.log
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Schedule {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.cancel.set();
            let _ = self.join_thread();
        }
    }
}

/// Inject `specs` into `cluster`, each at `start + at` (and, for `+D`
/// faults, end it at `start + at + D`), from a thread; see
/// [`Schedule::finish`]. Check the specs first ([`check_all`]): a fault
/// that does not fit the cluster fails when due.
pub fn run_schedule(
    cluster: Arc<Mutex<Cluster>>,
    specs: Vec<FaultSpec>,
    start: Instant,
) -> Result<Schedule> {
    let cancel = Arc::new(Cancel::default());
    let log = Log {
        start,
        events: Arc::default(),
    };
    let thread = std::thread::Builder::new()
        .name("chat-cluster-faults".into())
        .spawn({
            let cancel = cancel.clone();
            let log = log.clone();
            move || Scheduler::new(cluster, specs, log).run(start, &cancel)
        })
        .context("starting the fault scheduler thread")?;
    Ok(Schedule {
        cancel,
        log,
        thread: Some(thread),
    })
}

/// One moment of the schedule: a fault's start or its end.
#[derive(Debug, Clone, Copy)]
struct Step {
    fault: usize,
    end: bool,
    at: Duration,
}

/// What a started `+D` fault needs at its end.
#[derive(Debug)]
enum Undo {
    /// SIGCONT this pid (`what` names it).
    Cont { pid: u32, what: String },
    /// Start the single Redis again.
    StartRedis,
}

struct Scheduler {
    cluster: Arc<Mutex<Cluster>>,
    specs: Vec<FaultSpec>,
    log: Log,
    undo: HashMap<usize, Undo>,
    /// The helper waiting for a `term`ed server's exit, per server.
    terminating: HashMap<usize, JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
}

fn lock(c: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    fn new(cluster: Arc<Mutex<Cluster>>, specs: Vec<FaultSpec>, log: Log) -> Self {
        Self {
            cluster,
            specs,
            log,
            undo: HashMap::new(),
            terminating: HashMap::new(),
            helpers: Vec::new(),
        }
    }

    fn run(mut self, start: Instant, cancel: &Cancel) {
        let mut steps: Vec<Step> = Vec::new();
        for (i, f) in self.specs.iter().enumerate() {
            steps.push(Step {
                fault: i,
                end: false,
                at: f.at,
            });
            let has_end = matches!(f.kind, FaultKind::Stop | FaultKind::RedisStop)
                || (f.kind == FaultKind::RedisKill && f.duration.is_some());
            if let (true, Some(at)) = (has_end, f.end()) {
                steps.push(Step {
                    fault: i,
                    end: true,
                    at,
                });
            }
        }
        // Stable: at equal times, the order given, a start before its end.
        steps.sort_by_key(|s| (s.at, s.fault, s.end));
        let mut finished: Option<Instant> = None;
        for step in steps {
            if finished.is_none() {
                finished = cancel.wait_until(start + step.at);
            }
            let name = self.specs[step.fault].name.clone();
            match (finished, step.end) {
                (Some(t), false) => {
                    self.log
                        .push(&name, EventKind::Skipped, Some(step.at), t, String::new());
                }
                (Some(_), true) => {
                    if let Some(u) = self.undo.remove(&step.fault) {
                        self.end(step, u, "early: the schedule was finished");
                    }
                }
                (None, false) => self.begin(step),
                (None, true) => {
                    if let Some(u) = self.undo.remove(&step.fault) {
                        self.end(step, u, "");
                    }
                }
            }
        }
        for (_, h) in self.terminating.drain() {
            let _ = h.join();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }

    fn begin(&mut self, step: Step) {
        let spec = self.specs[step.fault].clone();
        let r = match (spec.kind, &spec.target) {
            (FaultKind::Restart, Target::Server(i)) => {
                self.restart(step, &spec, *i);
                return;
            }
            (k, Target::Server(i)) if k.targets_server() => self.server_fault(step, &spec, *i),
            (k, Target::Redis { room }) if !k.targets_server() => {
                self.redis_fault(step, &spec, room.as_deref())
            }
            (k, _) => Err(anyhow!("{k} cannot act on {}", spec.target_name())),
        };
        match r {
            Ok((at, detail)) => {
                self.log
                    .push(&spec.name, EventKind::Injected, Some(step.at), at, detail)
            }
            Err(e) => self.log.push(
                &spec.name,
                EventKind::Failed,
                Some(step.at),
                Instant::now(),
                format!("{e:#}"),
            ),
        }
    }

    fn server_fault(
        &mut self,
        step: Step,
        spec: &FaultSpec,
        i: usize,
    ) -> Result<(Instant, String)> {
        let mut c = lock(&self.cluster);
        let app = c.app_id(i);
        match spec.kind {
            FaultKind::Kill9 => {
                let mut child = c
                    .take_server(i)
                    .ok_or_else(|| anyhow!("{app} is not running"))?;
                let pid = child.pid();
                let at = Instant::now();
                child.kill();
                Ok((at, format!("SIGKILL {app} (pid {pid})")))
            }
            FaultKind::Term => {
                let mut child = c
                    .take_server(i)
                    .ok_or_else(|| anyhow!("{app} is not running"))?;
                drop(c);
                let pid = child.pid();
                let at = Instant::now();
                procs::signal(pid, libc::SIGTERM)?;
                let log = self.log.clone();
                let name = spec.name.clone();
                let who = app.clone();
                let h = std::thread::spawn(move || {
                    let app = who;
                    let r = child.wait_or_kill(SERVER_WAIT);
                    let took = at.elapsed().as_secs_f64();
                    let (kind, detail) = match r {
                        Ok(st) => (
                            EventKind::Done,
                            format!("{app} exited {took:.3}s after SIGTERM ({st})"),
                        ),
                        Err(e) => (EventKind::Failed, format!("{e:#}; killed")),
                    };
                    log.push(&name, kind, None, Instant::now(), detail);
                });
                if let Some(old) = self.terminating.insert(i, h) {
                    self.helpers.push(old);
                }
                Ok((at, format!("SIGTERM {app} (pid {pid})")))
            }
            FaultKind::Stop => {
                let pid = c
                    .server_pid(i)
                    .ok_or_else(|| anyhow!("{app} is not running"))?;
                drop(c);
                let at = Instant::now();
                procs::signal(pid, libc::SIGSTOP)?;
                self.undo.insert(
                    step.fault,
                    Undo::Cont {
                        pid,
                        what: format!("{app} (pid {pid})"),
                    },
                );
                Ok((at, format!("SIGSTOP {app} (pid {pid})")))
            }
            other => bail!("{other} does not act on a server"),
        }
    }

    /// Start server `i` again: spawn it (that is the injection; after a
    /// pending `term` of it exited, on a helper), then wait for its health
    /// on a helper.
    fn restart(&mut self, step: Step, spec: &FaultSpec, i: usize) {
        let cluster = self.cluster.clone();
        let log = self.log.clone();
        let name = spec.name.clone();
        let mut pending = self.terminating.remove(&i);
        if pending.as_ref().is_some_and(JoinHandle::is_finished) {
            let _ = pending.take().map(JoinHandle::join);
        }
        match pending {
            None => {
                if let Some(started) = restart_spawn(&cluster, &log, &name, step.at, i) {
                    self.helpers.push(std::thread::spawn(move || {
                        restart_wait(&log, &name, started)
                    }));
                }
            }
            Some(pending) => self.helpers.push(std::thread::spawn(move || {
                let _ = pending.join();
                if let Some(started) = restart_spawn(&cluster, &log, &name, step.at, i) {
                    restart_wait(&log, &name, started);
                }
            })),
        }
    }

    fn redis_fault(
        &mut self,
        step: Step,
        spec: &FaultSpec,
        room: Option<&str>,
    ) -> Result<(Instant, String)> {
        let mut c = lock(&self.cluster);
        let slot = room.map_or(0, room_slot);
        let of_slot = match (c.redis_topology(), room) {
            (RedisTopology::Cluster, Some(r)) => format!(" of slot {slot} (room {r:?})"),
            (RedisTopology::Cluster, None) => format!(" of slot {slot}"),
            _ => String::new(),
        };
        match spec.kind {
            FaultKind::RedisStop => {
                let (addr, pid) = redis_target(&c, slot)?;
                drop(c);
                let at = Instant::now();
                procs::signal(pid, libc::SIGSTOP)?;
                let what = format!("Redis {addr}{of_slot} (pid {pid})");
                self.undo.insert(
                    step.fault,
                    Undo::Cont {
                        pid,
                        what: what.clone(),
                    },
                );
                Ok((at, format!("SIGSTOP {what}")))
            }
            FaultKind::RedisKill => {
                let pid = c.redis_pid().context("Redis is not running")?;
                let at = Instant::now();
                c.kill_redis();
                if spec.duration.is_some() {
                    self.undo.insert(step.fault, Undo::StartRedis);
                }
                Ok((at, format!("SIGKILL Redis {} (pid {pid})", c.redis_addr())))
            }
            FaultKind::RedisRestart => {
                let at = Instant::now();
                let was = c.redis_pid();
                if was.is_some() {
                    c.restart_redis()?;
                } else {
                    c.start_redis()?;
                }
                let pid = c.redis_pid().map_or("?".into(), |p| p.to_string());
                let how = if was.is_some() {
                    "killed and started"
                } else {
                    "started"
                };
                Ok((
                    at,
                    format!("{how} Redis {} again, empty (pid {pid})", c.redis_addr()),
                ))
            }
            FaultKind::RedisFailover => {
                let master = if c.redis_topology() == RedisTopology::Cluster {
                    c.redis_failover_slot(slot)?
                } else {
                    c.redis_failover()?
                };
                Ok((Instant::now(), format!("SIGKILL master {master}{of_slot}")))
            }
            FaultKind::RedisHang => {
                let d = spec.duration.context("redis-hang needs +D")?;
                let master = if c.redis_topology() == RedisTopology::Cluster {
                    c.redis_hang_slot_master(slot, d)?
                } else {
                    c.redis_hang_master(d)?
                };
                Ok((
                    Instant::now(),
                    format!(
                        "DEBUG SLEEP {:.3} on master {master}{of_slot}",
                        d.as_secs_f64()
                    ),
                ))
            }
            other => bail!("{other} does not act on Redis"),
        }
    }

    fn end(&mut self, step: Step, undo: Undo, note: &str) {
        let name = self.specs[step.fault].name.clone();
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        let (at, r) = match undo {
            Undo::Cont { pid, what } => {
                let at = Instant::now();
                let r = procs::signal(pid, libc::SIGCONT).map(|()| format!("SIGCONT {what}{note}"));
                (at, r)
            }
            Undo::StartRedis => {
                let mut c = lock(&self.cluster);
                let at = Instant::now();
                let r = c.start_redis().map(|()| {
                    let pid = c.redis_pid().map_or("?".into(), |p| p.to_string());
                    format!(
                        "started Redis {} again, empty (pid {pid}){note}",
                        c.redis_addr()
                    )
                });
                (at, r)
            }
        };
        match r {
            Ok(detail) => self
                .log
                .push(&name, EventKind::Ended, Some(step.at), at, detail),
            Err(e) => self.log.push(
                &name,
                EventKind::Failed,
                Some(step.at),
                at,
                format!("ending it: {e:#}"),
            ),
        }
    }
}

/// A restarted server: `(app id, address, when it was spawned)`.
type Restarted = (String, String, Instant);

/// Spawn server `i` for a `restart` fault and log it.
fn restart_spawn(
    cluster: &Mutex<Cluster>,
    log: &Log,
    name: &str,
    planned: Duration,
    i: usize,
) -> Option<Restarted> {
    let mut c = lock(cluster);
    let app = c.app_id(i);
    let addr = c.server_addr(i);
    let at = Instant::now();
    let spawned = c.spawn_server_running(i);
    drop(c);
    match spawned {
        Ok(pid) => {
            log.push(
                name,
                EventKind::Injected,
                Some(planned),
                at,
                format!("started {app} (pid {pid}) on {addr}"),
            );
            Some((app, addr, at))
        }
        Err(e) => {
            log.push(name, EventKind::Failed, Some(planned), at, format!("{e:#}"));
            None
        }
    }
}

/// Wait for a restarted server's health and log it.
fn restart_wait(log: &Log, name: &str, (app, addr, at): Restarted) {
    match crate::wait_healthy(&addr, SERVER_WAIT) {
        Ok(()) => log.push(
            name,
            EventKind::Done,
            None,
            Instant::now(),
            format!(
                "{app} healthy {:.3}s after the start",
                at.elapsed().as_secs_f64()
            ),
        ),
        Err(e) => log.push(
            name,
            EventKind::Failed,
            None,
            Instant::now(),
            format!("{e:#}"),
        ),
    }
}

/// The Redis process a `redis-stop` hits: the single Redis, the current
/// master (sentinel) or the master of `slot` (cluster); `(addr, pid)`.
fn redis_target(c: &Cluster, slot: u16) -> Result<(String, u32)> {
    let addr = match c.redis_topology() {
        RedisTopology::Single => {
            let pid = c.redis_pid().context("Redis is not running")?;
            return Ok((c.redis_addr(), pid));
        }
        RedisTopology::Sentinel => c.redis_master_addr()?,
        RedisTopology::Cluster => c.cluster_master_for_slot(slot)?,
    };
    let pid = c
        .redis_node_addrs()
        .into_iter()
        .zip(c.redis_node_pids())
        .find(|(a, _)| *a == addr)
        .and_then(|(_, p)| p)
        .ok_or_else(|| anyhow!("the master {addr} is not one of our running nodes"))?;
    Ok((addr, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(parse_duration("5s").unwrap(), ms(5000));
        assert_eq!(parse_duration("500ms").unwrap(), ms(500));
        assert_eq!(parse_duration("1m").unwrap(), ms(60_000));
        assert_eq!(parse_duration("1m30s").unwrap(), ms(90_000));
        assert_eq!(parse_duration("1.5s").unwrap(), ms(1500));
        assert_eq!(parse_duration("0.1s").unwrap(), ms(100));
        assert_eq!(parse_duration("0").unwrap(), ms(0));
        for bad in ["", "5", "5x", "s", "-1s", "1.2.3s", "5 s", "25h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
