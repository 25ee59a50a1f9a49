//! One simulated client: connect (from a chosen source address), get
//! welcomed and joined, then read every frame and, if it is a sender, send
//! on its open-loop schedule, until the run shuts down or the connection
//! ends. It returns its [`ReceiverLog`] and [`SenderLog`] for the checker.
//!
//! With `--reconnect` (chat mode) a lost connection is not the end: the
//! client reconnects with exponential backoff and jitter (trying each
//! `--url` in turn, bounded in attempts and time), resumes its room with
//! `since` (the last offset it saw) and `epoch`, and, if it sends, retries
//! every send not yet confirmed with the same id. A send is confirmed by
//! its own delivery (a sender is a member of its room) or by a `sent`
//! frame (`duplicate: true`: the retry found the original); an error
//! `unavailable`, `timeout` or `rate_limited` schedules a retry.
//!
//! Reading and writing share one task and one `select!`: a socket costs one
//! task and its WebSocket buffers, nothing more.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_protocol::ErrorCode;
use regex::Regex;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::checker::{epoch_hash, Announced, ReceiverLog, SenderLog};
use crate::config::{Config, Protocol};
use crate::frames::{self, Incoming};
use crate::probe::{self, Probe};
use crate::sched::Tick;
use crate::stats::{Delivery, Stats};
use crate::ws::{Conn, Recv};

/// Everything the clients of one run share.
#[derive(Debug)]
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub stats: Arc<Stats>,
    /// Resolved address of each `--url`.
    pub addrs: Vec<SocketAddr>,
    pub source_ips: Vec<Ipv4Addr>,
    /// Joined members per room, for the live "expected" count.
    pub members: Vec<AtomicU64>,
    /// APP_ID index + 1 of each sender (0: not connected yet).
    pub sender_apps: Vec<AtomicU16>,
    /// Each sender's queue of scheduled sends (taken by the sender).
    pub ticks: Vec<Mutex<Option<mpsc::Receiver<Tick>>>>,
    /// Senders stop sending (end of duration or Ctrl-C).
    pub stop_send: CancellationToken,
    /// Everyone closes and reports.
    pub shutdown: CancellationToken,
    /// Raw mode: finds the APP_ID in the greeting; `None` waits for no greeting.
    pub app_re: Option<Regex>,
    pub padding: String,
    /// Largest WebSocket message accepted.
    pub max_message: usize,
    /// Bounds connection attempts in flight (the ramp's and reconnects').
    pub connect_sem: Arc<Semaphore>,
    /// `--registry`: where to ask, resolved once.
    pub registry: Option<(crate::registry::Endpoint, SocketAddr)>,
}

/// What a client hands back at the end.
#[derive(Debug, Default)]
pub struct Outcome {
    pub receiver: Option<ReceiverLog>,
    pub sender: Option<SenderLog>,
}

/// First and largest pause between reconnection attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First and largest pause before retrying a send the server answered
/// `unavailable`, `timeout` or `rate_limited`.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Most times one send is retried.
const MAX_TRIES: u32 = 100;
/// `--registry`: failed asks in a row after which a client connects
/// through `--url` (when one was given).
pub const FALLBACK_AFTER: u32 = 3;
/// Most registry asks in one connect (which the caller also bounds in time).
const MAX_ASKS: u32 = 16;
/// Answers in a row naming the instance that just failed this client
/// that it skips (backing off each time) before it tries it anyway.
const MAX_REPEATS: u32 = 3;
/// First and largest pause after a failed ask.
const ASK_BACKOFF_BASE: Duration = Duration::from_millis(50);
const ASK_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter: attempt `n` (from 0) waits a random
/// time in `[d/2, d]`, `d = min(base × 2ⁿ, max)`, so a herd of clients
/// dropped at once spreads out.
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let d = base.saturating_mul(1u32 << n.min(16)).min(max);
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Close codes after which PROTOCOL.md says not to reconnect: the client
/// closed, or it broke the protocol or the rate limit.
fn close_allows_reconnect(code: Option<u16>) -> bool {
    !matches!(code, Some(1000 | 1002 | 1007 | 1008 | 1009))
}

/// Run client `c` to the end. `permit` bounds connection attempts in
/// flight and is released once the client has joined (or failed).
pub async fn run(ctx: Arc<Ctx>, c: usize, permit: OwnedSemaphorePermit) -> Outcome {
    let stats = &ctx.stats;
    stats.live.attempted.fetch_add(1, Relaxed);
    let _socket = SocketSlot::new(&stats.live.sockets);
    let room = ctx.cfg.room_of(c);
    let mut route = Route::default();
    let first = tokio::select! {
        r = tokio::time::timeout(ctx.cfg.connect_timeout, connect_any(&ctx, c, ctx.cfg.url_index(c), None, &mut route)) => match r {
            Ok(Ok(j)) => j,
            Ok(Err(kind)) => {
                stats.live.failed.fetch_add(1, Relaxed);
                stats.error(kind);
                return Outcome::default();
            }
            Err(_) => {
                stats.live.failed.fetch_add(1, Relaxed);
                stats.error(format!("connect: not welcomed and joined within {}", humantime::format_duration(ctx.cfg.connect_timeout)));
                return Outcome::default();
            }
        },
        _ = ctx.shutdown.cancelled() => return Outcome::default(),
    };
    drop(permit);
    let joined_at = stats.now_us();
    let is_sender = c < ctx.cfg.senders;
    if is_sender {
        if let Some(limit) = first.rate_limit {
            if ctx.cfg.per_sender_rate() > f64::from(limit) && c == 0 {
                stats.error(format!(
                    "config: {:.1} msg/s per sender exceeds the server's rate_per_sec {limit}: raise --senders",
                    ctx.cfg.per_sender_rate()
                ));
            }
        }
    }
    let mut s = Session {
        ctx: &ctx,
        c,
        room,
        app: first.app,
        app_name: stats.apps.name(first.app),
        recv: ReceiverLog::new(c, room, first.app, joined_at),
        send: is_sender.then(|| SenderLog {
            sender: c as u32,
            room,
            app: first.app,
            ..SenderLog::default()
        }),
        ticks: if is_sender {
            ctx.ticks[c].lock().expect("ticks lock").take()
        } else {
            None
        },
        app_cache: Vec::new(),
        epoch: first.epoch.clone(),
        epoch_hash: epoch_hash(first.epoch.as_bytes()),
        since: first.head,
        lost_at: None,
        pending: BTreeMap::new(),
        retry_at: None,
        fallback: 0,
        route,
    };
    ctx.members[room].fetch_add(1, Relaxed);
    if first.direct.is_some() {
        let mut l = stats.rare.lists.lock().expect("rare lock");
        *l.first_direct.entry(first.app).or_default() += 1;
    }
    s.route.landed(stats, &first);
    s.connected(first.app);
    let mut conn = first.conn;
    let mut losses = 0u32;
    loop {
        match s.main_loop(&mut conn).await {
            Ended::Shutdown => {
                s.disconnected();
                conn.close().await;
                break;
            }
            Ended::Lost { reconnect } => {
                let lost_at = stats.now_us();
                s.disconnected();
                stats.live.disconnects.fetch_add(1, Relaxed);
                drop(conn);
                losses = losses.saturating_add(1);
                if losses > MAX_LOSSES {
                    stats.error(format!("reconnect: gave up after {MAX_LOSSES} losses"));
                }
                let resumed = if ctx.cfg.reconnect && reconnect && losses <= MAX_LOSSES {
                    s.lost_at.get_or_insert(lost_at);
                    stats.live.down.fetch_add(1, Relaxed);
                    let r = s.reconnect().await;
                    stats.live.down.fetch_sub(1, Relaxed);
                    r
                } else {
                    None
                };
                match resumed {
                    Some(j) => {
                        conn = s.resumed(j, lost_at);
                        if s.retry_pending(&mut conn).await.is_err() {
                            // Lost again at once: the next turn reconnects.
                            continue;
                        }
                    }
                    None => {
                        // Gone for good (or still down when the run ended):
                        // nothing after the loss is owed to it.
                        stats.live.dropped.fetch_add(1, Relaxed);
                        s.recv.left_at = Some(lost_at);
                        break;
                    }
                }
            }
        }
    }
    ctx.members[room].fetch_sub(1, Relaxed);
    if s.fallback > 0 {
        stats.rare.frames_fallback.fetch_add(s.fallback, Relaxed);
    }
    if let Some(log) = &mut s.send {
        log.unconfirmed = s.pending.keys().copied().collect();
    }
    Outcome {
        receiver: Some(s.recv),
        sender: s.send,
    }
}

/// Counts this task's socket for the open-fd estimate while it lives.
struct SocketSlot<'a>(&'a AtomicU64);

impl<'a> SocketSlot<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Relaxed);
        Self(n)
    }
}

impl Drop for SocketSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A welcomed and joined connection.
struct Joined {
    conn: Conn,
    app: u16,
    rate_limit: Option<u32>,
    /// From `joined`: the room's head and epoch, and on a resume whether
    /// the epoch was still the client's.
    head: u64,
    epoch: String,
    recovered: Option<bool>,
    /// The instance URL the registry named, when connected straight to it.
    direct: Option<String>,
}

/// How one client finds its way in with `--registry`.
#[derive(Debug, Default)]
struct Route {
    /// Registry asks that failed in a row.
    fails_in_row: u32,
    /// The instance URL that failed this client last: a direct connect
    /// that failed, or the direct connection that was lost.
    last_failed: Option<String>,
    /// The instance URL of the current connection, when direct.
    current: Option<String>,
}

impl Route {
    /// A connection is up: count how it got in.
    fn landed(&mut self, stats: &Stats, j: &Joined) {
        let counter = if j.direct.is_some() {
            &stats.rare.connects_direct
        } else {
            &stats.rare.connects_via_url
        };
        counter.fetch_add(1, Relaxed);
        self.current = j.direct.clone();
    }

    /// The connection was lost: its instance is the one that just failed.
    fn lost(&mut self) {
        if let Some(u) = self.current.take() {
            self.last_failed = Some(u);
        }
    }
}

/// Most frames read while waiting for `joined` (or a raw greeting).
const MAX_HANDSHAKE_FRAMES: usize = 1000;
/// Most times one client is lost and comes back before it gives up.
const MAX_LOSSES: u32 = 1000;

/// Where a resume starts: after offset `since` of `epoch`.
#[derive(Clone, Copy)]
struct Resume<'a> {
    since: u64,
    epoch: &'a str,
}

/// Client `c`'s source address towards `dest` (loopback destinations
/// only): spread every URL's clients over every source address, so that
/// no (source, destination) pair fills its ports before the others.
fn source_for(ctx: &Ctx, c: usize, dest: &SocketAddr) -> Option<Ipv4Addr> {
    (!ctx.source_ips.is_empty() && dest.ip().is_loopback())
        .then(|| ctx.source_ips[c % ctx.source_ips.len()])
}

/// Connect the way the run says: through `--url` number `url_idx`, or
/// with `--registry` straight to the instance the registry names.
async fn connect_any(
    ctx: &Ctx,
    c: usize,
    url_idx: usize,
    resume: Option<Resume<'_>>,
    route: &mut Route,
) -> Result<Joined, String> {
    match &ctx.registry {
        None => connect_url(ctx, c, url_idx, resume).await,
        Some((ep, addr)) => connect_registry(ctx, c, url_idx, resume, route, ep, *addr).await,
    }
}

/// Through `--url` number `url_idx`.
async fn connect_url(
    ctx: &Ctx,
    c: usize,
    url_idx: usize,
    resume: Option<Resume<'_>>,
) -> Result<Joined, String> {
    let i = url_idx % ctx.addrs.len();
    connect(ctx, c, ctx.addrs[i], &ctx.cfg.urls[i], resume).await
}

/// Ask the registry, connect straight to the instance it names; if that
/// fails, ask again. An answer naming the instance that just failed this
/// client is skipped (with a growing, jittered pause) up to
/// [`MAX_REPEATS`] times in a row; after [`FALLBACK_AFTER`] failed asks in
/// a row a client with `--url` connects through it. At most [`MAX_ASKS`]
/// asks; the caller bounds the time.
async fn connect_registry(
    ctx: &Ctx,
    c: usize,
    url_idx: usize,
    resume: Option<Resume<'_>>,
    route: &mut Route,
    ep: &crate::registry::Endpoint,
    reg_addr: SocketAddr,
) -> Result<Joined, String> {
    let stats = &ctx.stats;
    let rare = &stats.rare;
    let src = source_for(ctx, c, &reg_addr);
    let mut repeats = 0u32;
    let mut last = String::from("none");
    for _ in 0..MAX_ASKS {
        if route.fails_in_row >= FALLBACK_AFTER && ctx.cfg.url_fallback {
            route.fails_in_row = 0;
            rare.registry_fallbacks.fetch_add(1, Relaxed);
            return connect_url(ctx, c, url_idx, resume).await;
        }
        rare.registry_asks.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let a = match crate::registry::ask(ep, reg_addr, src).await {
            Ok(a) => a,
            Err(e) => {
                let kind = e.kind();
                {
                    let mut l = rare.lists.lock().expect("rare lock");
                    *l.registry_failures.entry(kind.clone()).or_default() += 1;
                }
                route.fails_in_row += 1;
                last = format!("ask: {kind}");
                let wait = backoff(route.fails_in_row - 1, ASK_BACKOFF_BASE, ASK_BACKOFF_MAX);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        rare.registry_answers.fetch_add(1, Relaxed);
        rare.lists
            .lock()
            .expect("rare lock")
            .ask_us
            .record(t0.elapsed().as_micros() as u64);
        route.fails_in_row = 0;
        if route.last_failed.as_deref() == Some(a.url.as_str()) && repeats < MAX_REPEATS {
            // Never straight back to an instance that just failed: give
            // the registry time to notice, then ask again.
            repeats += 1;
            rare.registry_repeats.fetch_add(1, Relaxed);
            last = "the registry named the instance that just failed".into();
            tokio::time::sleep(backoff(repeats - 1, BACKOFF_BASE, BACKOFF_MAX)).await;
            continue;
        }
        repeats = 0;
        match connect(ctx, c, a.addr, &a.url, resume).await {
            Ok(mut j) => {
                if !a.app_id.is_empty() && stats.apps.name(j.app) != a.app_id {
                    rare.registry_app_mismatches.fetch_add(1, Relaxed);
                    stats.error("registry: the welcome's APP_ID is not the one the registry named");
                }
                route.last_failed = None;
                j.direct = Some(a.url);
                return Ok(j);
            }
            Err(kind) => {
                rare.direct_failures.fetch_add(1, Relaxed);
                stats.error(format!("direct: {kind}"));
                last = format!("direct: {kind}");
                route.last_failed = Some(a.url);
            }
        }
    }
    Err(format!(
        "registry: no connection after {MAX_ASKS} asks (last: {last})"
    ))
}

/// Connect to `addr` at `base` (a `--url`, or an instance URL the
/// registry named), upgrade, and wait for the welcome and join (chat) or
/// the greeting (raw). Errors are short kinds for the report.
async fn connect(
    ctx: &Ctx,
    c: usize,
    addr: SocketAddr,
    base: &str,
    resume: Option<Resume<'_>>,
) -> Result<Joined, String> {
    let stats = &ctx.stats;
    let t0 = Instant::now();
    let src = source_for(ctx, c, &addr);
    let url = match &resume {
        Some(r) => ctx.cfg.resume_on(base, c, r.since, r.epoch),
        None => ctx.cfg.url_on(base, c),
    };
    let token = ctx.cfg.token_for(c).transpose()?;
    let mut conn =
        Conn::open_with_token(addr, src, &url, ctx.max_message, token.as_deref()).await?;
    match ctx.cfg.protocol {
        Protocol::Chat => {
            let (app, rate) = match frames::classify(next_text(&mut conn).await?.as_bytes()) {
                Incoming::Welcome {
                    app_id,
                    rate_per_sec,
                } => (app_id, rate_per_sec),
                _ => return Err("welcome: first frame is not a welcome".into()),
            };
            if resume.is_none() {
                stats
                    .shard(c)
                    .connect
                    .record(t0.elapsed().as_micros() as u64);
            }
            let app = stats.apps.intern(&app);
            let room = ctx.cfg.room_name(ctx.cfg.room_of(c));
            // Bounded by the caller's timeout, and in frames.
            for _ in 0..MAX_HANDSHAKE_FRAMES {
                let f = next_text(&mut conn).await?;
                match frames::classify(f.as_bytes()) {
                    Incoming::Joined {
                        room: r,
                        head,
                        epoch,
                        recovered,
                    } if r == room => {
                        return Ok(Joined {
                            conn,
                            app,
                            rate_limit: Some(rate),
                            head,
                            epoch,
                            recovered,
                            direct: None,
                        })
                    }
                    Incoming::Error { code, .. } => {
                        return Err(format!("join: error frame {}", code.as_str()))
                    }
                    _ => continue,
                }
            }
            Err(format!(
                "join: no joined within {MAX_HANDSHAKE_FRAMES} frames"
            ))
        }
        Protocol::Raw => {
            let app = match &ctx.app_re {
                None => "unknown".to_string(),
                // Bounded by the caller's timeout, and in frames.
                Some(re) => {
                    let mut found = None;
                    for _ in 0..MAX_HANDSHAKE_FRAMES {
                        let f = next_text(&mut conn).await?;
                        if let Some(caps) = re.captures(&f) {
                            let m = caps
                                .name("app_id")
                                .or_else(|| caps.get(1))
                                .or_else(|| caps.get(0));
                            found = Some(m.map_or("unknown", |m| m.as_str()).to_string());
                            break;
                        }
                    }
                    found.ok_or_else(|| {
                        format!("greeting: none matched within {MAX_HANDSHAKE_FRAMES} frames")
                    })?
                }
            };
            stats
                .shard(c)
                .connect
                .record(t0.elapsed().as_micros() as u64);
            Ok(Joined {
                conn,
                app: stats.apps.intern(&app),
                rate_limit: None,
                head: 0,
                epoch: String::new(),
                recovered: None,
                direct: None,
            })
        }
    }
}

/// The next text message; anything else during the handshake is an error.
async fn next_text(conn: &mut Conn) -> Result<String, String> {
    for _ in 0..MAX_HANDSHAKE_FRAMES {
        match conn.recv().await {
            Ok(Recv::Text(t)) => return Ok(String::from_utf8_lossy(t).into_owned()),
            Ok(Recv::Closed { kind, .. }) => return Err(format!("join: {kind}")),
            Ok(Recv::Binary(_) | Recv::Control) => continue,
            Err(e) => return Err(format!("join: {}", e.trim_start_matches("read: "))),
        }
    }
    Err(format!(
        "join: no text frame within {MAX_HANDSHAKE_FRAMES} frames"
    ))
}

async fn recv_tick(q: &mut Option<mpsc::Receiver<Tick>>) -> Option<Tick> {
    match q {
        Some(q) => q.recv().await,
        None => None,
    }
}

/// How [`Session::main_loop`] ended.
enum Ended {
    /// The run is over.
    Shutdown,
    /// The connection ended; `reconnect`: the way it ended allows one.
    Lost { reconnect: bool },
}

/// A send written but not yet confirmed (`--reconnect`).
#[derive(Debug, Clone, Copy)]
struct Pending {
    probe: Probe,
    /// When to write it again (`None`: wait for an answer).
    retry_at: Option<Instant>,
    tries: u32,
}

struct Session<'a> {
    ctx: &'a Ctx,
    c: usize,
    room: usize,
    /// The APP_ID this client is connected to now.
    app: u16,
    /// This client's first APP_ID, carried in raw-mode probes.
    app_name: String,
    recv: ReceiverLog,
    send: Option<SenderLog>,
    ticks: Option<mpsc::Receiver<Tick>>,
    /// APP_ID bytes of delivered messages → index, to skip the shared table.
    app_cache: Vec<(Vec<u8>, u16)>,
    /// Resume point: the last offset seen in `epoch` (the joined head
    /// before any message).
    epoch: String,
    epoch_hash: u64,
    since: u64,
    /// When the connection was lost, until the first delivery after the
    /// resume (the recovery time).
    lost_at: Option<u64>,
    /// `--reconnect`: sends not yet confirmed, by seq.
    pending: BTreeMap<u32, Pending>,
    /// The earliest `retry_at` in `pending`.
    retry_at: Option<Instant>,
    /// Messages read by the JSON fallback.
    fallback: u64,
    /// `--registry`: which instance this client is on, and which failed.
    route: Route,
}

impl Session<'_> {
    /// Count this client as connected to `app`.
    fn connected(&mut self, app: u16) {
        let l = &self.ctx.stats.live;
        l.connected.fetch_add(1, Relaxed);
        l.per_app[usize::from(app)].fetch_add(1, Relaxed);
        self.app = app;
        if self.send.is_some() {
            self.ctx.sender_apps[self.c].store(app + 1, Relaxed);
        }
    }

    fn disconnected(&self) {
        let l = &self.ctx.stats.live;
        l.connected.fetch_sub(1, Relaxed);
        l.per_app[usize::from(self.app)].fetch_sub(1, Relaxed);
    }

    /// Try to get back in: attempts with backoff and jitter, each through
    /// the next `--url`, bounded by `--reconnect-attempts` and
    /// `--reconnect-timeout`. `None`: gave up, or the run ended meanwhile.
    async fn reconnect(&mut self) -> Option<Joined> {
        let ctx = self.ctx;
        let stats = &ctx.stats;
        let started = Instant::now();
        let deadline = started + ctx.cfg.reconnect_timeout;
        let first_url = ctx.cfg.url_index(self.c);
        self.route.lost();
        for attempt in 0..ctx.cfg.reconnect_attempts {
            let wait = backoff(attempt, BACKOFF_BASE, BACKOFF_MAX);
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown.cancelled() => return None,
            }
            let _permit = tokio::select! {
                p = ctx.connect_sem.clone().acquire_owned() => p.ok()?,
                _ = ctx.shutdown.cancelled() => return None,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = ctx.cfg.connect_timeout.min(left);
            let url = first_url + attempt as usize;
            let resume = Resume {
                since: self.since,
                epoch: &self.epoch,
            };
            let r = tokio::select! {
                r = tokio::time::timeout(limit, connect_any(ctx, self.c, url, Some(resume), &mut self.route)) => r,
                _ = ctx.shutdown.cancelled() => return None,
            };
            match r {
                Ok(Ok(j)) => return Some(j),
                Ok(Err(kind)) => stats.error(format!("reconnect: {kind}")),
                Err(_) => stats.error(format!(
                    "reconnect: not welcomed and joined within {}",
                    humantime::format_duration(limit)
                )),
            }
            stats.live.reconnect_failures.fetch_add(1, Relaxed);
        }
        stats.error(format!(
            "reconnect: gave up (--reconnect-attempts {}, --reconnect-timeout {})",
            ctx.cfg.reconnect_attempts,
            humantime::format_duration(ctx.cfg.reconnect_timeout)
        ));
        None
    }

    /// Back in after a loss: count it, note an APP_ID change and an
    /// unrecoverable resume, and schedule every unconfirmed send.
    fn resumed(&mut self, j: Joined, lost_at: u64) -> Conn {
        let stats = &self.ctx.stats;
        stats.live.reconnects.fetch_add(1, Relaxed);
        self.route.landed(stats, &j);
        if j.app != self.app {
            stats.app_change(self.app, j.app);
            // What was sent since the loss comes through the new instance.
            self.recv.moves.push((lost_at, j.app));
            if let Some(log) = &mut self.send {
                log.moves.push((log.sent_at.len() as u32, j.app));
            }
        }
        self.connected(j.app);
        if j.recovered == Some(false) {
            // The room's epoch changed since ours: what followed `since`
            // may be gone for good. The resume point stays ours until a
            // message of the new epoch arrives.
            stats.rare.unrecovered_joins.fetch_add(1, Relaxed);
            stats.error("joined recovered:false (the room's epoch changed while disconnected)");
            self.recv.announce(Announced::Reset {
                epoch: self.epoch_hash,
                after: self.since,
                at_us: stats.now_us(),
            });
        }
        let now = Instant::now();
        for p in self.pending.values_mut() {
            p.retry_at = Some(now);
        }
        self.retry_at = (!self.pending.is_empty()).then_some(now);
        j.conn
    }

    /// Read and send until shutdown or until the connection ends.
    async fn main_loop(&mut self, conn: &mut Conn) -> Ended {
        let mut ticks = self.ticks.take();
        let end = self.main_loop_inner(conn, &mut ticks).await;
        self.ticks = ticks;
        end
    }

    async fn main_loop_inner(
        &mut self,
        conn: &mut Conn,
        ticks: &mut Option<mpsc::Receiver<Tick>>,
    ) -> Ended {
        let ctx = self.ctx;
        // Created once: a `cancelled()` future made per loop turn would
        // register and unregister with the token's waiter list (a mutex) on
        // every delivery.
        let shutdown = ctx.shutdown.cancelled();
        let stop_send = ctx.stop_send.cancelled();
        tokio::pin!(shutdown, stop_send);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ended::Shutdown,
                _ = &mut stop_send, if ticks.is_some() => *ticks = None,
                m = conn.recv() => match m {
                    Ok(Recv::Text(t)) => self.on_text(t),
                    Ok(Recv::Binary(n)) => ctx.stats.unrecognized("binary frame", format!("<{n} bytes>").as_bytes()),
                    Ok(Recv::Control) => {}
                    Ok(Recv::Closed { kind, code }) => {
                        ctx.stats.error(format!("close: {kind}"));
                        return Ended::Lost { reconnect: close_allows_reconnect(code) };
                    }
                    Err(kind) => {
                        ctx.stats.error(kind);
                        return Ended::Lost { reconnect: true };
                    }
                },
                t = recv_tick(ticks), if ticks.is_some() => match t {
                    Some(t) => {
                        if let Err(kind) = self.send_one(conn, t.seq, ctx.stats.us_of(t.sched)).await {
                            ctx.stats.error(kind);
                            return Ended::Lost { reconnect: true };
                        }
                    }
                    // The schedule is over.
                    None => *ticks = None,
                },
                _ = async move {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if retry_at.is_some() => {
                    if let Err(kind) = self.retry_pending(conn).await {
                        ctx.stats.error(kind);
                        return Ended::Lost { reconnect: true };
                    }
                }
            }
        }
    }

    async fn send_one(&mut self, conn: &mut Conn, seq: u32, sched_us: u64) -> Result<(), String> {
        let ctx = self.ctx;
        let sent_us = ctx.stats.now_us();
        let p = Probe {
            sender: self.c as u32,
            seq,
            sched_us,
            sent_us,
        };
        let text = match ctx.cfg.protocol {
            Protocol::Chat => probe::chat_send_frame(&p, &ctx.padding),
            Protocol::Raw => probe::raw_text(&p, ctx.cfg.size, &self.app_name),
        };
        let r = conn.send_text(text).await;
        if r.is_err() && !ctx.cfg.reconnect {
            return r;
        }
        // With --reconnect a send that failed to go out is retried after
        // the resume, like one that went out unanswered.
        if let Some(log) = &mut self.send {
            // Seqs the scheduler could not queue (it counted them) were
            // never written: expected nowhere.
            let seq_at = seq as usize;
            while log.sent_at.len() < seq_at {
                let missing = log.sent_at.len() as u32;
                log.sent_at.push(sent_us);
                log.rejected.push(missing);
            }
            if log.sent_at.len() == seq_at {
                log.sent_at.push(sent_us);
            }
        }
        if ctx.cfg.reconnect {
            self.pending.insert(
                seq,
                Pending {
                    probe: p,
                    retry_at: None,
                    tries: 0,
                },
            );
        }
        ctx.stats.live.sent.fetch_add(1, Relaxed);
        ctx.stats.live.last_sent_us.fetch_max(sent_us, Relaxed);
        ctx.stats
            .live
            .expected
            .fetch_add(ctx.members[self.room].load(Relaxed), Relaxed);
        r
    }

    /// Write again, with the same id, every pending send that is due.
    async fn retry_pending(&mut self, conn: &mut Conn) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
            .map(|(&q, _)| q)
            .collect();
        for q in due {
            let Some(p) = self.pending.get_mut(&q) else {
                continue;
            };
            p.retry_at = None;
            let text = probe::chat_send_frame(&p.probe, &self.ctx.padding);
            self.ctx.stats.rare.sends_retried.fetch_add(1, Relaxed);
            if let Err(e) = conn.send_text(text).await {
                // Retried again after the next resume.
                if let Some(p) = self.pending.get_mut(&q) {
                    p.retry_at = Some(now);
                }
                self.update_retry_at();
                return Err(e);
            }
        }
        self.update_retry_at();
        Ok(())
    }

    fn update_retry_at(&mut self) {
        self.retry_at = self.pending.values().filter_map(|p| p.retry_at).min();
    }

    /// A send of ours is confirmed: it was published at `offset` of `epoch`.
    fn confirmed(&mut self, seq: u32, epoch: u64, offset: u64) {
        if let Some(log) = &mut self.send {
            log.learn_offset(seq, epoch, offset);
        }
        if self
            .pending
            .remove(&seq)
            .is_some_and(|p| p.retry_at.is_some())
        {
            self.update_retry_at();
        }
    }

    fn on_text(&mut self, t: &[u8]) {
        let ctx = self.ctx;
        match ctx.cfg.protocol {
            Protocol::Chat => match frames::classify(t) {
                Incoming::Message {
                    offset,
                    epoch,
                    app_id,
                    probe,
                    parsed,
                } => {
                    if parsed {
                        self.fallback += 1;
                    }
                    self.on_message(offset, &epoch, app_id.as_deref(), probe);
                }
                Incoming::Error { code, id } => self.on_error(code, id),
                Incoming::Sent {
                    id,
                    offset,
                    epoch,
                    duplicate,
                } => {
                    if let Some(p) = Probe::parse_id(id.as_bytes()) {
                        if p.sender as usize == self.c && self.send.is_some() {
                            if duplicate {
                                ctx.stats
                                    .rare
                                    .sends_confirmed_duplicate
                                    .fetch_add(1, Relaxed);
                            }
                            self.confirmed(p.seq, epoch_hash(epoch.as_bytes()), offset);
                        }
                    }
                }
                Incoming::Gap { from, to } => {
                    ctx.stats.error("gap frame: history could not fill a hole");
                    let r = &ctx.stats.rare;
                    r.gap_frames.fetch_add(1, Relaxed);
                    r.gap_offsets
                        .fetch_add(to.saturating_sub(from).saturating_add(1), Relaxed);
                    self.recv.announce(Announced::Gap {
                        epoch: self.epoch_hash,
                        from,
                        to,
                    });
                }
                Incoming::Reset { previous, last, .. } => {
                    ctx.stats.error(
                        "reset frame: the room started a new epoch (Redis lost or replaced its data)",
                    );
                    ctx.stats.rare.resets.fetch_add(1, Relaxed);
                    self.recv.announce(Announced::Reset {
                        epoch: epoch_hash(previous.as_bytes()),
                        after: last,
                        at_us: ctx.stats.now_us(),
                    });
                }
                Incoming::Joined { .. } | Incoming::Welcome { .. } | Incoming::Other => {}
                Incoming::Unrecognized(reason) => ctx.stats.unrecognized(&reason, t),
            },
            Protocol::Raw => {
                if let Some((p, app)) = probe::scan_raw(t) {
                    self.on_probe(p, None, app);
                }
            }
        }
    }

    /// A chat message: move the resume point and the order check on, end
    /// a recovery, and check our probe if it carries one.
    fn on_message(&mut self, offset: u64, epoch: &[u8], app: Option<&[u8]>, probe: Option<Probe>) {
        if epoch != self.epoch.as_bytes() {
            self.epoch = String::from_utf8_lossy(epoch).into_owned();
            self.epoch_hash = epoch_hash(epoch);
            self.since = offset;
        } else {
            self.since = self.since.max(offset);
        }
        if let Some(lost_at) = self.lost_at.take() {
            let stats = &self.ctx.stats;
            stats.recovered(self.c, lost_at, stats.now_us().saturating_sub(lost_at));
        }
        match probe {
            Some(p) => self.on_probe(p, Some((self.epoch_hash, offset)), app),
            None => self.recv.on_foreign_offset(self.epoch_hash, offset),
        }
    }

    fn on_probe(&mut self, probe: Probe, offset: Option<(u64, u64)>, msg_app: Option<&[u8]>) {
        let ctx = self.ctx;
        let rooms = ctx.cfg.rooms;
        if probe.sender as usize >= ctx.cfg.senders
            || ctx.cfg.room_of(probe.sender as usize) != self.room
        {
            // Another loadgen run's probe, or a room mix-up by the server.
            ctx.stats
                .error("deliver: probe from a sender not in this room");
            return;
        }
        if probe.seq > ctx.cfg.max_seq() {
            ctx.stats
                .error("deliver: probe with a seq this run never reaches");
            return;
        }
        if probe.sender as usize == self.c {
            if let Some((e, o)) = offset {
                self.confirmed(probe.seq, e, o);
            }
        }
        let now = ctx.stats.now_us();
        // 0: the sender lives in another worker process (or has not
        // connected), so its welcome is not known here.
        let local_app = ctx.sender_apps[probe.sender as usize].load(Relaxed);
        let sender_app = match msg_app {
            Some(a) => {
                let idx = self.intern(a);
                // After reconnects a message may have been accepted by the
                // sender's previous instance.
                if ctx.cfg.protocol == Protocol::Chat
                    && !ctx.cfg.reconnect
                    && local_app != 0
                    && idx != local_app - 1
                {
                    ctx.stats
                        .error("deliver: message app_id differs from the sender's welcome app_id");
                }
                idx
            }
            None => local_app.saturating_sub(1),
        };
        let v = self
            .recv
            .on_delivery(probe.sender as usize / rooms, probe.seq, offset);
        ctx.stats.record_delivery(
            self.c,
            Delivery {
                verdict: v,
                sender_app,
                receiver_app: self.recv.app_at(probe.sent_us),
                sched_lat: now.saturating_sub(probe.sched_us),
                raw_lat: now.saturating_sub(probe.sent_us),
                now_us: now,
            },
        );
    }

    fn intern(&mut self, app: &[u8]) -> u16 {
        if let Some((_, i)) = self.app_cache.iter().find(|(a, _)| a == app) {
            return *i;
        }
        let i = self.ctx.stats.apps.intern(&String::from_utf8_lossy(app));
        self.app_cache.push((app.to_vec(), i));
        i
    }

    /// An error frame: a refused send carries its id. With --reconnect,
    /// `unavailable`, `timeout` and `rate_limited` are retried with the
    /// same id (a retry of an applied send is not published again).
    fn on_error(&mut self, code: ErrorCode, id: Option<String>) {
        let ctx = self.ctx;
        ctx.stats.error(format!("error frame: {}", code.as_str()));
        let Some(p) = id.and_then(|i| Probe::parse_id(i.as_bytes())) else {
            return;
        };
        if p.sender as usize != self.c || self.send.is_none() {
            return;
        }
        if ctx.cfg.reconnect {
            let Some(pend) = self.pending.get_mut(&p.seq) else {
                // Already confirmed (its own delivery came first).
                return;
            };
            if matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::RateLimited
            ) {
                pend.tries += 1;
                if pend.tries <= MAX_TRIES {
                    pend.retry_at =
                        Some(Instant::now() + backoff(pend.tries - 1, RETRY_BASE, RETRY_MAX));
                    self.update_retry_at();
                }
                // Past MAX_TRIES it stays pending: unconfirmed at the end.
                return;
            }
            self.pending.remove(&p.seq);
            self.update_retry_at();
        }
        if let Some(log) = &mut self.send {
            if let Err(at) = log.rejected.binary_search(&p.seq) {
                log.rejected.insert(at, p.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for n in 0..40 {
            let d = backoff(n, BACKOFF_BASE, BACKOFF_MAX);
            let full = BACKOFF_BASE.saturating_mul(1 << n.min(16)).min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(backoff(0, BACKOFF_BASE, BACKOFF_MAX) <= BACKOFF_BASE);
    }

    #[test]
    fn reconnect_follows_the_close_code() {
        assert!(close_allows_reconnect(Some(1012)));
        assert!(close_allows_reconnect(Some(4000)));
        assert!(close_allows_reconnect(None));
        assert!(!close_allows_reconnect(Some(1008)));
        assert!(!close_allows_reconnect(Some(1000)));
    }
}
