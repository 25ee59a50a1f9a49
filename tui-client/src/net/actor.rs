//! The connection loop: connect, read the welcome, resume, relay frames,
//! ping, and on any loss wait (backoff with jitter) and start over.
//!
//! One task owns the socket and the [`Session`]; the UI reaches it only
//! through its command channel, so no lock is ever shared.

use std::time::{Duration, Instant};

use chat_protocol::{close, ClientFrame, ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::bucket::Bucket;
use super::session::{Outgoing, Session};
use super::{url, Command, NetConfig, NetEvent, Request};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection (or an attempt) ended.
enum Exit {
    /// Lost: retry after a backoff.
    Retry(String),
    /// Refused for good: wait for the user.
    Offline(String),
    /// The user asked to reconnect now.
    Now,
    /// Stop the worker (the UI is gone or asked to quit).
    Shutdown(Option<oneshot::Sender<()>>),
}

pub(super) struct Actor {
    cfg: NetConfig,
    session: Session,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    rng: StdRng,
    /// The zero of the ping timestamps.
    epoch: Instant,
    next_ping: u64,
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
        Self {
            session,
            cfg,
            commands,
            events,
            rng: StdRng::from_os_rng(),
            epoch: Instant::now(),
            next_ping: 0,
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
            let target = url::connect_url(
                &self.cfg.url,
                &self.session.connect_params(),
                token.as_deref(),
            );
            tracing::info!(url = %url::redact(&target), attempt = failures, "connecting");
            let exit = match self.connect(&target).await {
                Ok(ws) => {
                    let started = Instant::now();
                    let exit = self.connected(ws).await;
                    if started.elapsed() >= self.cfg.stable_after {
                        failures = 0;
                    }
                    exit
                }
                Err(exit) => exit,
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
            Ok(Some(Ok(Message::Close(cf)))) => return close_exit(cf),
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
                        Some(Ok(Message::Close(cf))) => return close_exit(cf),
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
            }
        }
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

/// The `code` of an error frame, as sent.
fn raw_error_code(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let code = v.get("code")?.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit());
    plain.then(|| code.to_string())
}

/// The close code the server sends when the connection's token expires.
pub(crate) const TOKEN_EXPIRED: u16 = 4003;

/// What the user reads when the token expired: retrying with the same
/// token cannot work, so the client waits for a new one and /reconnect.
pub(crate) const TOKEN_EXPIRED_REASON: &str =
    "token expired: get a new token (update --token-file, or restart with a new --token), then /reconnect";

/// What a close frame from the server means for us.
fn close_exit(cf: Option<CloseFrame>) -> Exit {
    let Some(cf) = cf else {
        return Exit::Retry("the server closed the connection".into());
    };
    let code = u16::from(cf.code);
    if code == TOKEN_EXPIRED {
        return Exit::Offline(format!(
            "{TOKEN_EXPIRED_REASON} (closed with {code} {})",
            cf.reason
        ));
    }
    let detail = if cf.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", cf.reason)
    };
    let reason = format!(
        "closed by the server ({code} {}{detail})",
        close::name(code)
    );
    if close::should_reconnect(code) {
        Exit::Retry(reason)
    } else {
        Exit::Offline(reason)
    }
}

/// What a failed connection attempt means: a `400` (bad nick or room) will
/// not get better by retrying; anything else might.
fn connect_error(e: WsError) -> Exit {
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            let status = resp.status();
            // The first line only: the status bar has one.
            let body = body.lines().next().unwrap_or("").trim();
            // The chat server starts the body with the status (`401 token
            // expired`): once is enough.
            let code = status.as_str();
            let body = match body.strip_prefix(code) {
                Some(rest) if rest.is_empty() || rest.starts_with([' ', ':']) => {
                    rest.trim_start_matches([' ', ':'])
                }
                _ => body,
            };
            let reason = match status.as_u16() {
                401 if body.is_empty() => {
                    "not authorized (401): the server wants a valid token (--token)".to_string()
                }
                401 => format!("not authorized (401): {body}"),
                403 if body.is_empty() => "forbidden (403)".to_string(),
                403 => format!("forbidden (403): {body}"),
                _ => format!("the server refused the connection: {status} {body}"),
            };
            if status.is_client_error() && status.as_u16() != 429 {
                Exit::Offline(reason)
            } else {
                Exit::Retry(reason)
            }
        }
        other => Exit::Retry(format!("cannot connect: {other}")),
    }
}

/// A lost connection in words a user understands.
fn lost(e: &WsError) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "the connection dropped without a goodbye (the instance may have died)".into()
        }
        WsError::Io(io) => format!("connection lost: {io}"),
        other => format!("connection lost: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http;

    fn exit_text(e: Exit) -> (bool, String) {
        match e {
            Exit::Retry(r) => (true, r),
            Exit::Offline(r) => (false, r),
            Exit::Now | Exit::Shutdown(_) => panic!("not a disconnect"),
        }
    }

    #[test]
    fn an_expired_token_stops_the_retries_and_says_why() {
        let cf = CloseFrame {
            code: CloseCode::from(TOKEN_EXPIRED),
            reason: "token_expired".into(),
        };
        let (retry, reason) = exit_text(close_exit(Some(cf)));
        assert!(!retry, "same expired token: no retry");
        assert!(
            reason.starts_with("token expired: get a new token"),
            "{reason}"
        );
        assert!(reason.contains("4003 token_expired"), "{reason}");
        // A restart still reconnects by itself.
        let cf = CloseFrame {
            code: CloseCode::Restart,
            reason: "restart".into(),
        };
        assert!(exit_text(close_exit(Some(cf))).0);
    }

    fn refused(status: u16, body: &str) -> (bool, String) {
        let resp = http::Response::builder()
            .status(status)
            .body(Some(body.as_bytes().to_vec()))
            .unwrap();
        exit_text(connect_error(WsError::Http(Box::new(resp))))
    }

    #[test]
    fn refusals_by_token_or_origin_say_why_and_wait_for_the_user() {
        assert_eq!(
            refused(401, "token expired\n"),
            (false, "not authorized (401): token expired".to_string())
        );
        assert_eq!(
            refused(401, ""),
            (
                false,
                "not authorized (401): the server wants a valid token (--token)".to_string()
            )
        );
        assert_eq!(
            refused(401, "401 token signature invalid\n"),
            (
                false,
                "not authorized (401): token signature invalid".to_string()
            )
        );
        assert_eq!(
            refused(403, "bad origin"),
            (false, "forbidden (403): bad origin".to_string())
        );
        let (retry, reason) = refused(503, "busy");
        assert!(
            retry && reason.contains("503") && reason.contains("busy"),
            "{reason}"
        );
    }

    #[test]
    fn new_error_codes_keep_their_name() {
        assert_eq!(
            raw_error_code(r#"{"type":"error","code":"nick_taken","message":"x"}"#).as_deref(),
            Some("nick_taken")
        );
        assert_eq!(raw_error_code(r#"{"type":"error","code":"<b>"}"#), None);
        assert_eq!(raw_error_code("nope"), None);
    }
}
