//! One simulated client: connect (from a chosen source address), get
//! welcomed and joined, then read every frame and, if it is a sender, send
//! on its open-loop schedule, until the run shuts down or the connection
//! ends. It returns its [`ReceiverLog`] and [`SenderLog`] for the checker.
//!
//! Reading and writing share one task and one `select!`: a socket costs one
//! task and its WebSocket buffers, nothing more.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use regex::Regex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::checker::{ReceiverLog, SenderLog};
use crate::kinds::{close_kind, error_code, frame_type, io_kind, ws_kind};
use crate::opts::{Config, Protocol};
use crate::probe::{self, Probe};
use crate::sched::Tick;
use crate::stats::Stats;

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
    pub ws_config: WebSocketConfig,
}

/// What a client hands back at the end.
#[derive(Debug, Default)]
pub struct Outcome {
    pub receiver: Option<ReceiverLog>,
    pub sender: Option<SenderLog>,
}

type Ws = WebSocketStream<TcpStream>;

/// Small WebSocket buffers: most sockets are idle, and a few KiB per socket
/// is what lets one process hold 19k of them. (tungstenite also zero-fills
/// up to this much on every read, so smaller is cheaper per delivery; a
/// frame larger than it just takes more reads.)
pub fn ws_config(size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(0)
        .max_message_size(Some((size * 2).max(1 << 20)))
        .max_frame_size(Some((size * 2).max(1 << 20)))
}

/// Run client `c` to the end. `permit` bounds connection attempts in
/// flight and is released once the client has joined (or failed).
pub async fn run(ctx: Arc<Ctx>, c: usize, permit: OwnedSemaphorePermit) -> Outcome {
    let stats = &ctx.stats;
    stats.live.attempted.fetch_add(1, Relaxed);
    let _socket = SocketSlot::new(&stats.live.sockets);
    let room = ctx.cfg.room_of(c);
    let joined = tokio::select! {
        r = tokio::time::timeout(ctx.cfg.connect_timeout, connect(&ctx, c)) => match r {
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
    let Joined {
        mut ws,
        app,
        rate_limit,
    } = joined;
    let joined_at = stats.now_us();
    stats.live.connected.fetch_add(1, Relaxed);
    stats.live.per_app[usize::from(app)].fetch_add(1, Relaxed);
    ctx.members[room].fetch_add(1, Relaxed);
    let is_sender = c < ctx.cfg.senders;
    if is_sender {
        ctx.sender_apps[c].store(app + 1, Relaxed);
        if let Some(limit) = rate_limit {
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
        app,
        app_name: stats.apps.name(app),
        recv: ReceiverLog::new(c, room, app, joined_at),
        send: is_sender.then(|| SenderLog {
            sender: c as u32,
            room,
            app,
            ..SenderLog::default()
        }),
        app_cache: Vec::new(),
    };
    let ended_early = s.main_loop(&mut ws).await;
    ctx.members[room].fetch_sub(1, Relaxed);
    stats.live.connected.fetch_sub(1, Relaxed);
    stats.live.per_app[usize::from(app)].fetch_sub(1, Relaxed);
    if ended_early {
        stats.live.dropped.fetch_add(1, Relaxed);
        s.recv.left_at = Some(stats.now_us());
    } else {
        close(&mut ws).await;
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

struct Joined {
    ws: Ws,
    app: u16,
    rate_limit: Option<u32>,
}

/// Connect, upgrade, and wait for the welcome and join (chat) or the
/// greeting (raw). Errors are short kinds for the report.
async fn connect(ctx: &Ctx, c: usize) -> Result<Joined, String> {
    let stats = &ctx.stats;
    let t0 = Instant::now();
    let addr = ctx.addrs[ctx.cfg.url_index(c)];
    // Spread every URL's clients over every source address, so that no
    // (source, destination) pair fills its ports before the others.
    let src = (!ctx.source_ips.is_empty()).then(|| ctx.source_ips[c % ctx.source_ips.len()]);
    let sock =
        crate::sys::bound_socket(src, &addr).map_err(|e| format!("connect: {}", io_kind(&e)))?;
    let tcp = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", io_kind(&e)))?;
    let url = ctx.cfg.url_for(c);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ctx.ws_config))
        .await
        .map_err(|e| format!("upgrade: {}", ws_kind(&e)))?;
    match ctx.cfg.protocol {
        Protocol::Chat => {
            let welcome = next_text(&mut ws).await?;
            let (app, rate) = match serde_json::from_str::<chat_protocol::ServerFrame>(&welcome) {
                Ok(chat_protocol::ServerFrame::Welcome { app_id, limits, .. }) => {
                    (app_id, limits.rate_per_sec)
                }
                _ => return Err("welcome: first frame is not a welcome".into()),
            };
            stats
                .shard(c)
                .connect
                .record(t0.elapsed().as_micros() as u64);
            let app = stats.apps.intern(&app);
            let room = ctx.cfg.room_name(ctx.cfg.room_of(c));
            loop {
                let f = next_text(&mut ws).await?;
                if frame_type(f.as_bytes()) == Some(b"joined") {
                    match serde_json::from_str::<chat_protocol::ServerFrame>(&f) {
                        Ok(chat_protocol::ServerFrame::Joined { room: r, .. }) if r == room => {
                            break
                        }
                        _ => continue,
                    }
                }
                if frame_type(f.as_bytes()) == Some(b"error") {
                    return Err(format!("join: {}", error_code(&f)));
                }
            }
            Ok(Joined {
                ws,
                app,
                rate_limit: Some(rate),
            })
        }
        Protocol::Raw => {
            let Some(re) = &ctx.app_re else {
                stats
                    .shard(c)
                    .connect
                    .record(t0.elapsed().as_micros() as u64);
                return Ok(Joined {
                    app: stats.apps.intern("unknown"),
                    ws,
                    rate_limit: None,
                });
            };
            loop {
                let f = next_text(&mut ws).await?;
                if let Some(caps) = re.captures(&f) {
                    let m = caps
                        .name("app_id")
                        .or_else(|| caps.get(1))
                        .or_else(|| caps.get(0));
                    let app = m.map_or("unknown", |m| m.as_str());
                    stats
                        .shard(c)
                        .connect
                        .record(t0.elapsed().as_micros() as u64);
                    return Ok(Joined {
                        app: stats.apps.intern(app),
                        ws,
                        rate_limit: None,
                    });
                }
            }
        }
    }
}

async fn recv_tick(q: &mut Option<mpsc::Receiver<Tick>>) -> Option<Tick> {
    match q {
        Some(q) => q.recv().await,
        None => None,
    }
}

/// The next text frame; anything else during the handshake phase is an error.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => return Err(format!("join: {}", close_kind(f.as_ref()))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("join: {}", ws_kind(&e))),
            None => return Err("join: closed without a close frame".into()),
        }
    }
}

/// Send a normal close and wait briefly for the server's answer.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "loadgen done".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

struct Session<'a> {
    ctx: &'a Ctx,
    c: usize,
    room: usize,
    app: u16,
    /// This client's APP_ID, carried in raw-mode probes.
    app_name: String,
    recv: ReceiverLog,
    send: Option<SenderLog>,
    /// APP_ID bytes of delivered messages → index, to skip the shared table.
    app_cache: Vec<(Vec<u8>, u16)>,
}

impl Session<'_> {
    /// Read and send until shutdown (returns false) or until the
    /// connection ends (returns true).
    async fn main_loop(&mut self, ws: &mut Ws) -> bool {
        let ctx = self.ctx;
        let mut ticks = if self.send.is_some() {
            ctx.ticks[self.c].lock().expect("ticks lock").take()
        } else {
            None
        };
        // Created once: a `cancelled()` future made per loop turn would
        // register and unregister with the token's waiter list (a mutex) on
        // every delivery.
        let shutdown = ctx.shutdown.cancelled();
        let stop_send = ctx.stop_send.cancelled();
        tokio::pin!(shutdown, stop_send);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return false,
                _ = &mut stop_send, if ticks.is_some() => ticks = None,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_bytes()),
                    Some(Ok(Message::Close(f))) => {
                        ctx.stats.error(format!("close: {}", close_kind(f.as_ref())));
                        return true;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ctx.stats.error(format!("read: {}", ws_kind(&e)));
                        return true;
                    }
                    None => {
                        ctx.stats.error("read: closed without a close frame");
                        return true;
                    }
                },
                t = recv_tick(&mut ticks), if ticks.is_some() => match t {
                    Some(t) => {
                        if let Err(e) = self.send_one(ws, t.seq, ctx.stats.us_of(t.sched)).await {
                            ctx.stats.error(format!("send: {}", ws_kind(&e)));
                            return true;
                        }
                    }
                    // The schedule is over.
                    None => ticks = None,
                },
            }
        }
    }

    async fn send_one(&mut self, ws: &mut Ws, seq: u32, sched_us: u64) -> Result<(), WsError> {
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
        ws.send(Message::text(text)).await?;
        if let Some(log) = &mut self.send {
            log.sent_at.push(sent_us);
        }
        ctx.stats.live.sent.fetch_add(1, Relaxed);
        ctx.stats
            .live
            .expected
            .fetch_add(ctx.members[self.room].load(Relaxed), Relaxed);
        Ok(())
    }

    fn on_text(&mut self, t: &[u8]) {
        let ctx = self.ctx;
        let (probe, offset, msg_app) = match ctx.cfg.protocol {
            Protocol::Chat => match probe::scan_chat(t) {
                Some(d) => match d.probe {
                    Some(p) => (p, Some(d.offset), d.app_id),
                    None => {
                        self.recv.on_foreign_offset(d.offset);
                        return;
                    }
                },
                None => return self.on_control(t),
            },
            Protocol::Raw => match probe::scan_raw(t) {
                Some((p, app)) => (p, None, app),
                None => return,
            },
        };
        let rooms = ctx.cfg.rooms;
        if probe.sender as usize >= ctx.cfg.senders
            || ctx.cfg.room_of(probe.sender as usize) != self.room
        {
            // Another loadgen run's probe, or a room mix-up by the server.
            ctx.stats
                .error("deliver: probe from a sender not in this room");
            return;
        }
        let now = ctx.stats.now_us();
        // 0: the sender lives in another worker process (or has not
        // connected), so its welcome is not known here.
        let local_app = ctx.sender_apps[probe.sender as usize].load(Relaxed);
        let sender_app = match msg_app {
            Some(a) => {
                let idx = self.intern(a);
                if ctx.cfg.protocol == Protocol::Chat && local_app != 0 && idx != local_app - 1 {
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
            v,
            sender_app,
            self.app,
            now.saturating_sub(probe.sched_us),
            now.saturating_sub(probe.sent_us),
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

    /// Frames other than messages: errors (a refused send carries its id),
    /// gaps; presence and member lists are ignored without parsing.
    fn on_control(&mut self, t: &[u8]) {
        match frame_type(t) {
            Some(b"error") => {
                let text = String::from_utf8_lossy(t);
                if let Ok(chat_protocol::ServerFrame::Error { code, id, .. }) =
                    serde_json::from_str(&text)
                {
                    self.ctx
                        .stats
                        .error(format!("error frame: {}", code.as_str()));
                    let p = id.and_then(|i| Probe::parse_id(i.as_bytes()));
                    if let (Some(p), Some(log)) = (p, &mut self.send) {
                        if p.sender as usize == self.c {
                            if let Err(at) = log.rejected.binary_search(&p.seq) {
                                log.rejected.insert(at, p.seq);
                            }
                        }
                    }
                }
            }
            Some(b"gap") => self
                .ctx
                .stats
                .error("gap frame: history could not fill a hole"),
            Some(b"reset") => self.ctx.stats.error(
                "reset frame: the room started a new epoch (Redis lost or replaced its data)",
            ),
            _ => {}
        }
    }
}
