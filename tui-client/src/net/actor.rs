//! The connection loop: connect, read the welcome, resume, relay frames,
//! ping, and on any loss wait (backoff with jitter) and start over.
//!
//! One task owns the socket and the [`Session`]; the UI reaches it only
//! through its command channel, so no lock is ever shared.

use std::time::{Duration, Instant};

use chat_protocol::{ClientFrame, ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::bucket::Bucket;
use super::history;
use super::reasons::{close_exit, connect_error, lost, raw_error_code, Exit, TOKEN_EXPIRED_REASON};
use super::registry::{self, Chooser, Decision};
use super::session::{Outgoing, Session};
use super::{jwt, url, Command, NetConfig, NetEvent, Request, Token};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(super) struct Actor {
    cfg: NetConfig,
    session: Session,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    rng: StdRng,
    /// The zero of the ping timestamps.
    epoch: Instant,
    next_ping: u64,
    /// The `exp` of the token the connection lives on (seconds since the
    /// Unix epoch), when known.
    token_exp: Option<u64>,
    /// The token last sent (on connect or in a `refresh`).
    token_sent: Option<String>,
    /// Registry answers against `--url`.
    chooser: Chooser,
    /// The WebSocket base of the instance last connected to (the direct
    /// instance with `--registry`, else `--url`): `/history` is asked
    /// there, so pages come from the server the client actually talks to.
    base: String,
}

impl Actor {
    pub(super) fn new(
        cfg: NetConfig,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
    ) -> Self {
        let mut session = Session::new(&cfg.nick, &cfg.room, cfg.history);
        for room in &cfg.more_rooms {
            session.join(room);
        }
        let base = cfg.url.clone();
        Self {
            session,
            cfg,
            commands,
            events,
            rng: StdRng::from_os_rng(),
            epoch: Instant::now(),
            next_ping: 0,
            token_exp: None,
            token_sent: None,
            chooser: Chooser::default(),
            base,
        }
    }

    fn has_token_file(&self) -> bool {
        matches!(self.cfg.token, Some(Token::File(_)))
    }

    /// Where this attempt connects: the registry's instance, or `--url`.
    /// `None`: the registry named the instance that just failed; wait and
    /// ask again.
    async fn target_base(&mut self) -> Option<(String, bool)> {
        let Some(reg) = self.cfg.registry.clone() else {
            return Some((self.cfg.url.clone(), false));
        };
        let answer = registry::ask(&reg, self.cfg.connect_timeout).await;
        if let Ok(a) = &answer {
            tracing::info!(url = %a.url, app_id = ?a.app_id, "registry answered");
        }
        match self.chooser.decide(answer, &self.cfg.url) {
            Decision::Direct(u) => Some((u, true)),
            Decision::Fallback(u) => Some((u, false)),
            Decision::AskAgain => None,
        }
    }

    /// Tell the UI; false when the UI is gone.
    async fn emit(&self, ev: NetEvent) -> bool {
        self.events.send(ev).await.is_ok()
    }

    pub(super) async fn run(mut self) {
        // Consecutive failures: the backoff grows with it and a stable
        // connection resets it.
        let mut failures: u32 = 0;
        loop {
            if !self.emit(NetEvent::Connecting { attempt: failures }).await {
                return;
            }
            let token = match self
                .cfg
                .token
                .as_ref()
                .map(super::Token::current)
                .transpose()
            {
                Ok(t) => t,
                Err(e) => {
                    // A token file that cannot be read will not fix itself
                    // within a backoff: wait for /reconnect.
                    let ev = NetEvent::Disconnected {
                        reason: format!("no token: {e}"),
                        retry_in: None,
                        attempt: failures + 1,
                    };
                    if !self.emit(ev).await {
                        return;
                    }
                    if let Some(Exit::Shutdown(done)) = self.wait(None).await {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    continue;
                }
            };
            self.token_exp = token.as_deref().and_then(jwt::exp);
            self.token_sent.clone_from(&token);
            let expired = self.token_exp.is_some_and(|e| e <= unix_now());
            let route = if expired {
                None
            } else {
                self.target_base().await
            };
            let exit = match route {
                // A token already past its `exp` cannot connect: say so
                // rather than collect a 401.
                _ if expired => Exit::Offline(self.token_expired_reason()),
                None => Exit::Retry(
                    "the registry named the instance that just failed; asking again".into(),
                ),
                Some((base, direct)) => {
                    if !self.emit(NetEvent::Via { direct }).await {
                        return;
                    }
                    let mut params = self.session.connect_params();
                    if token.is_none() {
                        params.push(("nick_key", self.cfg.nick_key.clone()));
                    }
                    let target = url::connect_url(&base, &params, token.as_deref());
                    tracing::info!(url = %url::redact(&target), attempt = failures, direct, "connecting");
                    match self.connect(&target).await {
                        Ok(ws) => {
                            self.chooser.connected();
                            self.base.clone_from(&base);
                            let started = Instant::now();
                            let exit = self.connected(ws).await;
                            if started.elapsed() >= self.cfg.stable_after {
                                failures = 0;
                            }
                            exit
                        }
                        Err(exit) => {
                            if direct {
                                self.chooser.failed(&base);
                            }
                            exit
                        }
                    }
                }
            };
            let (reason, retry_in) = match exit {
                Exit::Shutdown(done) => {
                    if let Some(done) = done {
                        // The UI may have stopped waiting: nothing to tell.
                        let _ = done.send(());
                    }
                    return;
                }
                Exit::Now => {
                    failures = 0;
                    continue;
                }
                Exit::Retry(reason) => {
                    failures += 1;
                    let delay = self.cfg.backoff.delay(failures, &mut self.rng);
                    tracing::warn!(%reason, attempt = failures, ?delay, "disconnected; will retry");
                    (reason, Some(delay))
                }
                Exit::Offline(reason) => {
                    failures += 1;
                    tracing::warn!(%reason, "disconnected; not retrying until asked");
                    (reason, None)
                }
            };
            let ev = NetEvent::Disconnected {
                reason,
                retry_in,
                attempt: failures,
            };
            if !self.emit(ev).await {
                return;
            }
            if let Some(Exit::Shutdown(done)) = self.wait(retry_in).await {
                if let Some(done) = done {
                    // As above: the UI may have stopped waiting.
                    let _ = done.send(());
                }
                return;
            }
        }
    }

    /// Wait out the backoff (or forever, when offline) while still taking
    /// requests: joins, leaves and sends made now apply on the next
    /// connection. Returns `Some` only to shut down.
    async fn wait(&mut self, delay: Option<Duration>) -> Option<Exit> {
        let sleep = tokio::time::sleep(delay.unwrap_or(Duration::MAX / 4));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep, if delay.is_some() => return None,
                cmd = self.commands.recv() => match cmd {
                    None => return Some(Exit::Shutdown(None)),
                    Some(Command::Shutdown(done)) => return Some(Exit::Shutdown(Some(done))),
                    Some(Command::Request(Request::Reconnect)) => return None,
                    Some(Command::Request(r)) => {
                        if !self.offline_request(r).await {
                            return Some(Exit::Shutdown(None));
                        }
                    }
                },
            }
        }
    }

    /// A request while there is no connection. False when the UI is gone.
    async fn offline_request(&mut self, r: Request) -> bool {
        match r {
            Request::Join(room) => {
                self.session.join(&room);
            }
            Request::Leave(room) => {
                self.session.leave(&room);
            }
            Request::Nick(nick) => self.session.nick = nick,
            Request::Send {
                room,
                text,
                id,
                action,
            } => return self.enqueue(room, text, id, action).await,
            Request::History {
                room,
                before,
                limit,
            } => self.fetch_history(room, before, limit),
            // The UI says "not connected" itself; nothing to remember.
            Request::Who(_) | Request::Reconnect => {}
        }
        true
    }

    async fn enqueue(&mut self, room: String, text: String, id: String, action: bool) -> bool {
        let out = Outgoing::new(&id, &room, &text, action);
        match self.session.enqueue(out) {
            Ok(()) => true,
            Err(reason) => self.emit(NetEvent::SendFailed { id, room, reason }).await,
        }
    }

    /// Open the WebSocket, still answering requests meanwhile.
    async fn connect(&mut self, target: &str) -> Result<Ws, Exit> {
        let attempt = tokio::time::timeout(
            self.cfg.connect_timeout,
            // Nagle off: chat frames are small and latency is the point;
            // with it on, a ping waits ~40 ms for a delayed ACK.
            tokio_tungstenite::connect_async_with_config(target, None, true),
        );
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                res = &mut attempt => {
                    return match res {
                        Err(_) => Err(Exit::Retry(format!(
                            "no answer within {}s", self.cfg.connect_timeout.as_secs()
                        ))),
                        Ok(Ok((ws, _))) => Ok(ws),
                        Ok(Err(e)) => Err(connect_error(e)),
                    };
                }
                cmd = self.commands.recv() => match cmd {
                    None => return Err(Exit::Shutdown(None)),
                    Some(Command::Shutdown(done)) => return Err(Exit::Shutdown(Some(done))),
                    Some(Command::Request(Request::Reconnect)) => return Err(Exit::Now),
                    Some(Command::Request(r)) => {
                        if !self.offline_request(r).await {
                            return Err(Exit::Shutdown(None));
                        }
                    }
                },
            }
        }
    }

    /// Run one connection until it ends.
    async fn connected(&mut self, ws: Ws) -> Exit {
        let (mut sink, mut stream) = ws.split();
        let welcome = tokio::time::timeout(self.cfg.connect_timeout, stream.next()).await;
        let frame = match welcome {
            Err(_) => return Exit::Retry("no welcome from the server".into()),
            Ok(None) => return Exit::Retry("closed before the welcome".into()),
            Ok(Some(Err(e))) => return Exit::Retry(lost(&e)),
            Ok(Some(Ok(Message::Close(cf)))) => return self.close_exit(cf),
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ServerFrame>(&t),
            Ok(Some(Ok(other))) => {
                return Exit::Retry(format!("expected a welcome, got {other:?}"));
            }
        };
        let (app_id, conn_id, nick, limits) = match frame {
            Ok(ServerFrame::Welcome {
                app_id,
                conn_id,
                nick,
                limits,
                ..
            }) => (app_id, conn_id, nick, limits),
            other => return Exit::Retry(format!("expected a welcome, got {other:?}")),
        };
        tracing::info!(%app_id, %conn_id, %nick, "connected");
        self.session.nick.clone_from(&nick);
        let mut bucket = Bucket::inside(limits.rate_per_sec, limits.burst, Instant::now());
        let ev = NetEvent::Connected {
            app_id,
            conn_id,
            nick,
            limits,
        };
        if !self.emit(ev).await {
            return Exit::Shutdown(None);
        }
        for join in self.session.on_connected() {
            if let Err(e) = send(&mut sink, &join).await {
                return Exit::Retry(lost(&e));
            }
        }
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        let mut last_heard = Instant::now();
        let mut pace: Option<Instant> = None;
        let mut refresh_at = self.refresh_at();
        loop {
            // Write whatever may go now, inside the rate limit.
            while pace.is_none() && self.session.has_sendable(Instant::now()) {
                let now = Instant::now();
                if !bucket.try_take(now) {
                    pace = Some(bucket.next_token(now));
                    break;
                }
                if let Some(frame) = self.session.next_sendable(now) {
                    if let Err(e) = send(&mut sink, &frame).await {
                        return Exit::Retry(lost(&e));
                    }
                }
            }
            // Wake for the rate limit, or for a send held back for a
            // retry, whichever comes first.
            let wake = match (pace, self.session.next_retry(Instant::now())) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wake_at = wake.unwrap_or_else(Instant::now);
            tokio::select! {
                msg = stream.next() => {
                    last_heard = Instant::now();
                    match msg {
                        None => return Exit::Retry("the server closed the connection".into()),
                        Some(Err(e)) => return Exit::Retry(lost(&e)),
                        Some(Ok(Message::Close(cf))) => return self.close_exit(cf),
                        Some(Ok(Message::Text(t))) => {
                            if !self.on_text(&t).await {
                                return Exit::Shutdown(None);
                            }
                        }
                        // Pings are answered by tungstenite; binary is not
                        // part of the protocol.
                        Some(Ok(_)) => {}
                    }
                }
                cmd = self.commands.recv() => {
                    let frame = match cmd {
                        None => return Exit::Shutdown(None),
                        Some(Command::Shutdown(done)) => {
                            let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
                            // Quitting either way; a dead socket must not
                            // hold the quit up for more than half a second.
                            let _ = tokio::time::timeout(
                                Duration::from_millis(500),
                                sink.send(Message::Close(Some(bye))),
                            ).await;
                            return Exit::Shutdown(Some(done));
                        }
                        Some(Command::Request(r)) => match r {
                            Request::Reconnect => {
                                // Best effort: the socket is dropped next
                                // whether or not the close got out.
                                let _ = sink.send(Message::Close(None)).await;
                                return Exit::Now;
                            }
                            Request::Send { room, text, id, action } => {
                                if !self.enqueue(room, text, id, action).await {
                                    return Exit::Shutdown(None);
                                }
                                None
                            }
                            Request::Join(room) => self.session.join(&room),
                            Request::Leave(room) => Some(self.session.leave(&room)),
                            Request::Nick(nick) => Some(ClientFrame::Nick { nick }),
                            Request::Who(room) => Some(ClientFrame::Who { room }),
                            Request::History { room, before, limit } => {
                                self.fetch_history(room, before, limit);
                                None
                            }
                        },
                    };
                    if let Some(frame) = frame {
                        if let Err(e) = send(&mut sink, &frame).await {
                            return Exit::Retry(lost(&e));
                        }
                    }
                }
                _ = ping.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= self.cfg.dead_after {
                        return Exit::Retry(format!(
                            "no answer from the server for {}s", silent.as_secs()
                        ));
                    }
                    self.next_ping += 1;
                    let frame = ClientFrame::Ping {
                        id: Some(format!("p{}", self.next_ping)),
                        // Microseconds, so that loopback round trips do
                        // not all read as 0 ms.
                        ts: Some(self.epoch.elapsed().as_micros() as u64),
                    };
                    if let Err(e) = send(&mut sink, &frame).await {
                        return Exit::Retry(lost(&e));
                    }
                }
                _ = tokio::time::sleep_until(wake_at.into()), if wake.is_some() => {
                    if pace.is_some_and(|p| p <= Instant::now()) {
                        pace = None;
                    }
                }
                _ = tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now).into()), if refresh_at.is_some() => {
                    if let Some(frame) = self.refresh_frame() {
                        tracing::info!("sending a refreshed token");
                        if let Err(e) = send(&mut sink, &frame).await {
                            return Exit::Retry(lost(&e));
                        }
                    }
                    // Look again shortly (the `refreshed` answer moves the
                    // expiry on); past the expiry the server closes with
                    // 4003.
                    refresh_at = self.refresh_at().map(|t| t.max(Instant::now() + REFRESH_RECHECK));
                }
            }
        }
    }

    /// When to read the token file again: [`NetConfig::refresh_before`]
    /// ahead of the token's `exp`. Only with a `--token-file` (a fixed
    /// token cannot be renewed) and a token with an `exp`.
    fn refresh_at(&self) -> Option<Instant> {
        if !self.has_token_file() {
            return None;
        }
        let exp = self.token_exp?;
        let now = unix_now();
        let lead = self.cfg.refresh_before.as_secs();
        let wait = exp.saturating_sub(lead).saturating_sub(now);
        Some(Instant::now() + Duration::from_secs(wait))
    }

    /// A `refresh` frame with the token file's token, if it holds a newer
    /// one than the connection lives on.
    fn refresh_frame(&mut self) -> Option<ClientFrame> {
        let new = match self.cfg.token.as_ref()?.current() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the token file to refresh");
                return None;
            }
        };
        if self.token_sent.as_deref() == Some(new.as_str()) {
            return None;
        }
        let new_exp = jwt::exp(&new);
        if new_exp.is_some_and(|n| self.token_exp.is_some_and(|old| n <= old)) {
            return None;
        }
        self.token_sent = Some(new.clone());
        Some(ClientFrame::Refresh { token: new })
    }

    /// Why the client stopped: the token expired. With a token file the
    /// user can renew it in place.
    fn token_expired_reason(&self) -> String {
        match &self.cfg.token {
            Some(Token::File(p)) => format!(
                "{TOKEN_EXPIRED_REASON} (write it to {}, then /reconnect)",
                p.display()
            ),
            _ => format!("{TOKEN_EXPIRED_REASON} (restart with a new --token)"),
        }
    }

    /// Fetch a page of history from the instance last connected to, in
    /// a task of its own (see [`history::spawn_fetch`]).
    fn fetch_history(&self, room: String, before: Option<u64>, limit: u32) {
        let token = self
            .token_sent
            .clone()
            .or_else(|| self.cfg.token.as_ref().and_then(|t| t.current().ok()));
        let ask = history::Ask {
            room,
            before,
            limit,
        };
        history::spawn_fetch(&self.base, token, ask, self.events.clone());
    }

    /// One text frame from the server. False when the UI is gone.
    async fn on_text(&mut self, text: &str) -> bool {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, frame = %text, "unreadable frame from the server");
                return true;
            }
        };
        match frame {
            ServerFrame::Pong { ts: Some(ts), .. } => {
                let now = self.epoch.elapsed().as_micros() as u64;
                let rtt = Duration::from_micros(now.saturating_sub(ts));
                self.emit(NetEvent::Rtt(rtt)).await
            }
            ServerFrame::Pong { .. } => true,
            ServerFrame::Refreshed { exp } => {
                tracing::info!(exp, "token refreshed");
                self.token_exp = Some(exp);
                self.emit(NetEvent::Frame(ServerFrame::Refreshed { exp }))
                    .await
            }
            mut frame => {
                if let ServerFrame::Error { code, message, id } = &mut frame {
                    tracing::info!(code = code.as_str(), %message, ?id, "error from the server");
                    if *code == ErrorCode::Unknown {
                        // A code newer than the protocol crate (e.g.
                        // `forbidden`, `nick_taken`): keep its name for
                        // the UI, which reads it back with
                        // `crate::state::split_unknown_code`.
                        if let Some(raw) = raw_error_code(text) {
                            *message = format!("{raw}: {message}");
                        }
                    }
                }
                if self.session.observe(&frame) {
                    self.emit(NetEvent::Frame(frame)).await
                } else {
                    tracing::debug!(?frame, "dropped a duplicate");
                    true
                }
            }
        }
    }
}

async fn send<S>(sink: &mut S, frame: &ClientFrame) -> Result<(), WsError>
where
    S: SinkExt<Message, Error = WsError> + Unpin,
{
    let json = serde_json::to_string(frame).expect("client frames always serialise");
    sink.send(Message::Text(json.into())).await
}

/// How often to look at the token file again while it holds no newer
/// token.
const REFRESH_RECHECK: Duration = Duration::from_secs(5);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Actor {
    /// What a close frame from the server means for us. A `4003` with a
    /// token file reconnects with what the file holds now (the next
    /// attempt says so if that token has expired too).
    fn close_exit(&self, cf: Option<CloseFrame>) -> Exit {
        close_exit(cf, self.has_token_file())
    }
}
