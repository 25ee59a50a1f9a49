//! One WebSocket connection: a single task that reads client frames, writes
//! queued deliveries in batches, pings, and closes with a reason.
//!
//! One task per connection (not a reader and a writer) keeps an idle
//! connection small. Deliveries arrive on a bounded [`Outbox`]; everything
//! queued goes out in one `writev`, so under load many frames share a
//! syscall. Replies to the client's own requests are written directly.
//! Every write also watches the outbox's stop reason, so a client that
//! stopped reading cannot pin the task.
//!
//! An idle connection's memory is mostly this task's future, so it is kept
//! small (a size test bounds it): pings and the idle timeout go by one
//! shared clock ([`run_clock`]) rather than a timer per connection, and
//! rare paths (requests, the close handshake, a batch the fan-out could not
//! write) are boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{classify, close, ErrorCode, Inbound, ServerFrame};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::commands::{SendJob, Session};
use crate::hub::{Member, Out};
use crate::outbox::{Outbox, Recv, Stop};
use crate::per_ip::IpSlot;
use crate::ws::{Msg, WsError, WsStream, MAX_BATCH};
use crate::AppState;

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectParams {
    pub room: Option<String>,
    pub nick: Option<String>,
    pub since: Option<u64>,
    /// The epoch `since` belongs to.
    pub epoch: Option<String>,
    pub history: Option<u32>,
    /// A token (else `Authorization: Bearer`).
    pub token: Option<String>,
    /// An anonymous client's secret for its nick: a reconnect with the same
    /// key gets the nick back while its old connection still holds it.
    pub nick_key: Option<String>,
    /// What the upgrade's token said; set by the upgrade, never the query.
    #[serde(skip)]
    pub identity: Option<Box<crate::auth::Identity>>,
}

/// How a connection ends.
#[derive(Debug)]
pub enum End {
    /// The server closes with this code and reason.
    Close(u16, String),
    /// The client closed (with this code) or the socket dropped (1006).
    Gone(u16),
}

/// Longest time one write may block before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends of one connection queued at once. The rate limit bounds it first
/// (a burst plus the rate times Redis's timeout: 80 at the defaults), so
/// below it the session keeps reading and the rate limit charges every
/// frame when it arrives. Past it (limits raised by the operator) the
/// session stops reading until a send completes: TCP pushes back on the
/// client, and nothing it sent is refused.
const MAX_IN_FLIGHT: usize = 128;

/// Sends queued, run one at a time in the order they were made: a send
/// goes to Redis only once the one before it has its answer, so a
/// connection's sends are published in order by construction (DELIVERY.md
/// rule 9). Pipelining them (all in flight at once) published one ahead of
/// fifteen earlier ones in a CI run under load, a cause never found; one
/// round trip per send caps a single connection at some 10k sends/s on
/// loopback, far above its rate limit. Allocated on the first send and
/// dropped when empty, so an idle connection holds none.
type InFlight = Option<Box<std::collections::VecDeque<SendJob>>>;

/// What a connection holds for its whole life, given back however the
/// session ends, a panic included: its entry among the live sessions, its
/// place under the connection limit and its address's slot, the outbox
/// (which refuses further frames) and the connection gauge.
struct ConnGuard {
    state: AppState,
    id: u64,
    outbox: Arc<Outbox>,
    permit: Option<OwnedSemaphorePermit>,
    /// Boxed: most servers count no addresses, and the slot is larger than
    /// a pointer.
    ip_slot: Option<Box<IpSlot>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.sessions.remove(self.id);
        drop(self.permit.take());
        drop(self.ip_slot.take());
        let _ = self.outbox.close();
        self.state.metrics.connections.fetch_sub(1, Relaxed);
    }
}

/// The socket plus what every write must watch (the outbox, in the
/// guard, which holds the rest of what the connection owns).
pub struct Conn {
    ws: WsStream,
    guard: ConnGuard,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// Run a write, giving up if the connection must stop (slow consumer,
/// shutdown) or the write blocks for too long.
async fn guarded<F: std::future::Future<Output = std::io::Result<()>>>(
    outbox: &Outbox,
    write: F,
) -> Result<(), End> {
    tokio::select! {
        biased;
        r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone(1006)),
            Err(_) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer: write blocked".into())),
        },
        why = outbox.stopped() => Err(stopped(why)),
    }
}

/// The session owns the socket (see `crate::outbox`, direct writes) while
/// this lives; the fan-out writes again once it drops.
struct Writing<'a>(&'a Outbox);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.end_write();
    }
}

/// A write of the session's own (not the outbox's frames).
enum Own<'a, F> {
    Texts(&'a [F]),
    Ping,
    Pong(&'a [u8]),
}

impl Conn {
    /// Take the socket and write: first a frame the fan-out's direct write
    /// left cut short, then `what`.
    async fn write_own<F: AsRef<[u8]>>(&mut self, what: Own<'_, F>) -> Result<(), End> {
        let partial = self.guard.outbox.begin_write();
        let _owned = Writing(&self.guard.outbox);
        if let Some((d, skip)) = partial {
            guarded(&self.guard.outbox, self.ws.send_texts(&[d], skip)).await?;
        }
        match what {
            Own::Texts(frames) => guarded(&self.guard.outbox, self.ws.send_texts(frames, 0)).await,
            Own::Ping => guarded(&self.guard.outbox, self.ws.ping()).await,
            Own::Pong(payload) => guarded(&self.guard.outbox, self.ws.pong(payload)).await,
        }
    }

    /// Send pre-encoded text frames now, in as few writes as possible.
    pub async fn send_texts<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> Result<(), End> {
        if frames.is_empty() {
            return Ok(());
        }
        self.write_own(Own::Texts(frames)).await
    }

    /// Write a batch the outbox handed over (it owns the socket already);
    /// its first `skip` bytes are written.
    /// Tries a non-blocking write first: only a batch the kernel does not
    /// take at once waits, in a boxed future, so an idle connection's
    /// future does not carry the space of a write in progress.
    async fn send_batch(&mut self, batch: &[Out], skip: usize) -> Result<(), End> {
        let _owned = Writing(&self.guard.outbox);
        let (i, skip) = match self.ws.try_send_texts(batch, skip) {
            Ok(at) => at,
            Err(_) => return Err(End::Gone(1006)),
        };
        if i == batch.len() {
            return Ok(());
        }
        Box::pin(guarded(
            &self.guard.outbox,
            self.ws.send_texts(&batch[i..], skip),
        ))
        .await
    }

    /// Send a server frame now.
    pub async fn frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_texts(&[Bytes::from(frame.to_json())]).await
    }

    /// Send an error frame now.
    pub async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<String>,
    ) -> Result<(), End> {
        self.guard.state.metrics.error(code);
        self.frame(&ServerFrame::error(code, message, id)).await
    }
}

fn stopped(why: Stop) -> End {
    match why {
        Stop::SlowConsumer => End::Close(
            close::SLOW_CONSUMER,
            "slow consumer: outbound queue full".into(),
        ),
        Stop::Restart => End::Close(close::SERVICE_RESTART, "service restart: reconnect".into()),
    }
}

/// Serve one upgraded connection until it ends. `permit` holds its place
/// under the connection limit, `ip_slot` its address's.
///
/// Not an `async fn`: one stores its arguments twice (as arguments and as
/// the locals they move into), and this future is the memory of every idle
/// connection. The setup runs here; the future captures what it needs once
/// and uses it in place.
pub fn run(
    state: AppState,
    ws: WsStream,
    mut params: Box<ConnectParams>,
    permit: OwnedSemaphorePermit,
    ip_slot: Option<IpSlot>,
) -> impl Future<Output = ()> + Send + 'static {
    state.metrics.connections.fetch_add(1, Relaxed);
    state.metrics.connections_total.fetch_add(1, Relaxed);
    let outbox = Outbox::with_socket(state.config.queue, Some(ws.socket()));
    let id = state.next_session_id();
    state.sessions.insert(id, outbox.clone());
    let guard = ConnGuard {
        state: state.clone(),
        id,
        outbox: outbox.clone(),
        permit: Some(permit),
        ip_slot: ip_slot.map(Box::new),
    };
    if state.shutdown.is_cancelled() {
        // Shutdown began between the upgrade and the registration.
        outbox.stop(Stop::Restart);
    }
    let mut session = Session::new(
        state.clone(),
        Member {
            id,
            outbox: outbox.clone(),
        },
        params.nick.take(),
        params.nick_key.take(),
        params.identity.take(),
    );
    let mut conn = Conn { ws, guard };
    async move {
        // Boxed: requests' futures (Redis round trips) are large and
        // short-lived, and an idle connection should not carry their space.
        let end = match Box::pin(opening(&mut session, &mut conn, params)).await {
            Ok(()) => session_loop(&mut session, &mut conn).await,
            Err(end) => end,
        };
        // Boxed: the close handshake's timers need not sit in every idle
        // connection's future.
        let code = Box::pin(close(&mut conn, &session, end)).await;
        conn.guard.state.metrics.closed(code);
        // Leaves the hub now and removes presence in the background (also
        // on a panic: see `impl Drop for Session`).
        drop(session);
        // Closes the socket and gives back what the guard holds.
        drop(conn);
    }
}

/// End the connection as `end` says; returns the close code.
async fn close(conn: &mut Conn, session: &Session, end: End) -> u16 {
    // Nothing more is queued or written directly; a frame a direct write
    // left cut short is finished before the close frame.
    let partial = conn.guard.outbox.close();
    if let Some((d, skip)) = partial {
        let rest = [d];
        let finish = conn.ws.send_texts(&rest, skip);
        let _ = tokio::time::timeout(Duration::from_millis(250), Box::pin(finish)).await;
    }
    match &end {
        End::Close(code, reason) => {
            tracing::debug!(conn_id = %session.conn_id, code, reason, "closing connection");
            // Best effort: a client that stopped reading will not get it,
            // so a slow consumer gets only a short try, and then a reset
            // (SO_LINGER 0) rather than an orphan socket that keeps its
            // whole send buffer in the kernel after we let go of it.
            let slow = *code == close::SLOW_CONSUMER;
            let close = async {
                if conn.ws.send_close(*code, reason).await.is_ok() {
                    conn.ws.finish_close().await;
                }
            };
            let wait = Duration::from_millis(if slow { 250 } else { 2000 });
            if tokio::time::timeout(wait, Box::pin(close)).await.is_err() && slow {
                conn.ws.abort_on_drop();
            }
            *code
        }
        End::Gone(code) => {
            if *code != 1006 {
                // Answer the client's close (echoing its code where that is
                // a code one may send), then close TCP first (RFC 6455
                // 7.1.1): the client waits for that.
                let echo = match *code {
                    1000..=1003 | 1007..=1014 | 3000..=4999 => *code,
                    _ => close::NORMAL,
                };
                let close = async {
                    if conn.ws.send_close(echo, "").await.is_ok() {
                        conn.ws.shutdown().await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), Box::pin(close)).await;
            }
            *code
        }
    }
}

/// The welcome and the first join. Boxed by its caller, and taking the
/// connect parameters by value, so that none of it stays in the space of
/// an idle connection's future.
async fn opening(
    session: &mut Session,
    conn: &mut Conn,
    params: Box<ConnectParams>,
) -> Result<(), End> {
    let ConnectParams {
        room,
        since,
        epoch,
        history,
        ..
    } = *params;
    session.welcome(conn, room.as_deref()).await?;
    let room = room.unwrap_or_else(|| crate::DEFAULT_ROOM.to_string());
    session.join(conn, &room, since, epoch, history).await
}

/// What woke the session loop (see [`poll_event`]).
enum Event {
    /// With the frames it handed over, if any: a batch is allocated only
    /// while the session writes it (rare: the fan-out writes most frames),
    /// so no idle connection keeps one.
    Outbox(Recv, Vec<Out>),
    /// The answer of the oldest send in flight, encoded (`None`: the
    /// delivery itself answers it).
    Reply(Option<Bytes>),
    Inbound(Result<Msg, WsError>),
    /// The token's expiry timer fired.
    Expiry,
}

/// The token's expiry timer, only for a connection whose token expires.
/// Pings and the idle timeout go by the shared clock instead
/// ([`run_clock`]): a timer is 112 bytes, and in every connection's future
/// it made tokio's allocation for the task 128 bytes larger.
type ExpiryTimer = Option<Pin<Box<Sleep>>>;

/// The session loop's wait: by hand rather than with `select!`, which keeps
/// every branch's future and a slot for its output in the future of every
/// idle connection. Looks where a `biased` select would, in this order: the
/// outbox (a stop must win over everything; the shared clock's ticks come
/// this way too), answers of sends in flight, the client's frames (unless
/// [`MAX_IN_FLIGHT`] sends are in flight), the token's expiry.
fn poll_event(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    in_flight: &mut InFlight,
    expiry: &mut ExpiryTimer,
) -> Poll<Event> {
    let mut batch = Vec::new();
    if let Poll::Ready(r) = conn.guard.outbox.poll_recv(cx, &mut batch, MAX_BATCH) {
        return Poll::Ready(Event::Outbox(r, batch));
    }
    let mut busy = 0;
    if let Some(queue) = in_flight.as_mut() {
        // Only the oldest send runs; the next starts once it is answered.
        let polled = queue.front_mut().map(|job| job.as_mut().poll(cx));
        match polled {
            Some(Poll::Ready(reply)) => {
                queue.pop_front();
                // The queue is freed once empty.
                if queue.is_empty() {
                    *in_flight = None;
                }
                // Encoded here: a frame in the event would make every
                // connection's future as large as a frame.
                let json = reply.map(|frame| Bytes::from(frame.to_json()));
                return Poll::Ready(Event::Reply(json));
            }
            Some(Poll::Pending) => busy = queue.len(),
            None => *in_flight = None,
        }
    }
    if busy < MAX_IN_FLIGHT {
        if let Poll::Ready(msg) = conn.ws.poll_recv(cx) {
            return Poll::Ready(Event::Inbound(msg));
        }
    }
    match expiry {
        Some(timer) => timer.as_mut().poll(cx).map(|()| Event::Expiry),
        None => Poll::Pending,
    }
}

/// Arm (or disarm) the expiry timer for the session's token.
fn set_expiry(timer: &mut ExpiryTimer, session: &Session) {
    match (expiry_instant(session.expires()), timer.as_mut()) {
        (None, _) => *timer = None,
        (Some(at), Some(t)) => t.as_mut().reset(at),
        (Some(at), None) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// The connections' shared clock: ticks every session (through its
/// outbox) four times per ping interval, and each looks at its own ping
/// and idle deadlines then. One task instead of a timer in every
/// connection; a ping goes out up to a quarter interval late. Runs until
/// aborted.
pub async fn run_clock(state: AppState) {
    let period = (state.config.ping_interval / 4).max(Duration::from_millis(10));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        state.sessions.tick_all();
    }
}

/// Serve a connection that has joined, until it ends. Requests are boxed:
/// their futures are large and short-lived, and an idle connection should
/// not carry their space.
async fn session_loop(session: &mut Session, conn: &mut Conn) -> End {
    // (Read from the config and the session where used: copies would sit
    // in every idle connection's future.)
    let mut next_ping = Instant::now() + conn.guard.state.config.ping_interval;
    let mut expiry: ExpiryTimer = None;
    set_expiry(&mut expiry, session);
    let mut last_seen = Instant::now();
    let mut in_flight: InFlight = None;
    loop {
        let event =
            std::future::poll_fn(|cx| poll_event(cx, conn, &mut in_flight, &mut expiry)).await;
        let step: Result<(), End> = match event {
            Event::Outbox(Recv::Stop(why), _) => Err(stopped(why)),
            Event::Outbox(Recv::Refresh, _) => {
                Box::pin(session.record_presence()).await;
                Ok(())
            }
            Event::Outbox(Recv::Frames { skip }, batch) => {
                conn.guard.state.metrics.ws_flushes.fetch_add(1, Relaxed);
                // Boxed: rare, like the batch.
                Box::pin(conn.send_batch(&batch, skip)).await
            }
            Event::Outbox(Recv::Tick, _) => {
                let now = Instant::now();
                let config = &conn.guard.state.config;
                if now.saturating_duration_since(last_seen) >= config.idle_timeout {
                    let secs = config.idle_timeout.as_secs();
                    let why = format!("idle timeout: nothing received for {secs}s");
                    Err(End::Close(close::IDLE_TIMEOUT, why))
                } else if now < next_ping {
                    Ok(())
                } else {
                    next_ping = now + config.ping_interval;
                    Box::pin(conn.write_own::<Bytes>(Own::Ping)).await
                }
            }
            // (Errors were counted where they were made.)
            // Boxed, like every request: an idle connection's future
            // should not carry the space of a reply in progress.
            Event::Reply(Some(json)) => {
                let json = [json];
                Box::pin(conn.send_texts(&json)).await
            }
            Event::Reply(None) => Ok(()),
            Event::Inbound(Ok(msg)) => {
                last_seen = Instant::now();
                let r = match Box::pin(inbound(session, conn, msg)).await {
                    Ok(Some(job)) => {
                        in_flight
                            .get_or_insert_with(Default::default)
                            .push_back(job);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                };
                if session.take_expiry_changed() {
                    set_expiry(&mut expiry, session);
                }
                r
            }
            Event::Inbound(Err(e)) => Err(read_error(e)),
            Event::Expiry => {
                if expiry_instant(session.expires()).is_some_and(|e| Instant::now() >= e) {
                    Err(End::Close(close::TOKEN_EXPIRED, "token_expired".into()))
                } else {
                    // The wall clock and tokio's disagreed by a little.
                    set_expiry(&mut expiry, session);
                    Ok(())
                }
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// When a token expiring at `exp` (seconds since the Unix epoch) runs out.
fn expiry_instant(exp: Option<u64>) -> Option<Instant> {
    // Capped: a far-future `exp` must not overflow the clock.
    const MAX_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
    let exp_ms = exp?.saturating_mul(1000);
    let left = exp_ms.saturating_sub(crate::now_ms()).min(MAX_MS);
    Some(Instant::now() + Duration::from_millis(left))
}

/// Map a read error to how the connection ends.
fn read_error(e: WsError) -> End {
    match e {
        WsError::TooBig(..) => End::Close(close::TOO_BIG, e.to_string()),
        WsError::Utf8 => End::Close(close::INVALID_PAYLOAD, e.to_string()),
        WsError::Protocol(_) => End::Close(close::PROTOCOL_ERROR, e.to_string()),
        WsError::Eof | WsError::Io(_) => End::Gone(1006),
    }
}

/// Handle one inbound WebSocket message.
async fn inbound(session: &mut Session, conn: &mut Conn, msg: Msg) -> Result<Option<SendJob>, End> {
    let text = match msg {
        Msg::Text(t) => t,
        Msg::Binary(_) => {
            if !session.admit(conn, None).await? {
                return Ok(None);
            }
            let msg = "binary frames are not supported: send text (JSON frames or plain chat text)";
            return conn
                .error(ErrorCode::BinaryUnsupported, msg, None)
                .await
                .map(|()| None);
        }
        Msg::Ping(payload) => {
            return conn
                .write_own::<Bytes>(Own::Pong(&payload))
                .await
                .map(|()| None);
        }
        Msg::Pong => return Ok(None),
        Msg::Close(code) => return Err(End::Gone(code)),
    };
    let parsed = classify(&text);
    let id = match &parsed {
        Ok(Inbound::Frame(chat_protocol::ClientFrame::Send { id, .. })) => id.clone(),
        Err(e) => e.id.clone(),
        _ => None,
    };
    if !session.admit(conn, id).await? {
        return Ok(None);
    }
    match parsed {
        Ok(Inbound::Frame(frame)) => session.command(conn, frame).await,
        Ok(Inbound::Text) => session.send_chat(conn, None, text, None, false).await,
        Err(e) => conn.error(e.code, e.message, e.id).await.map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    /// Every connection's task holds its session's future for its whole
    /// life, so its size is memory per idle connection (about half of the
    /// heap `tests/idle_memory.rs` counts). Requests, replies and
    /// the opening join are boxed so that they do not add to it; this keeps
    /// a change from quietly making every connection bigger.
    #[tokio::test]
    async fn an_idle_connection_future_stays_small() {
        let cfg = crate::Config::for_test("t", "redis://127.0.0.1:1/");
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let store =
            crate::store::Store::new(&cfg.redis_url, metrics.clone(), 10, Duration::from_secs(1))
                .unwrap();
        let hub = crate::hub::Hub::new(
            metrics.clone(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let state = crate::AppState(Arc::new(crate::Inner {
            app_id: "t".into(),
            boot: "b".into(),
            metrics,
            store,
            archive: None,
            hub,
            conn_limit: Arc::new(tokio::sync::Semaphore::new(1)),
            max_connections: 1,
            per_ip: crate::per_ip::PerIp::new(0),
            shutdown: Default::default(),
            tracker: Default::default(),
            sessions: Default::default(),
            started_ms: 0,
            next_session: Default::default(),
            live: Default::default(),
            assigned: Default::default(),
            auth: crate::auth::Auth::from_config(&cfg).unwrap(),
            config: cfg,
        }));
        let permit = state.conn_limit.clone().try_acquire_owned().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let ws = crate::ws::WsStream::new(tcp, bytes::Bytes::new(), 100);
        let fut = super::run(state, ws, Box::default(), permit, None);
        let size = std::mem::size_of_val(&fut);
        println!("a connection's future: {size} bytes");
        // 504 bytes with rustc 1.95 (debug and release): tokio then
        // allocates the task in 640 bytes (its header and trailer, 128-byte
        // aligned); at 536 it took 768, so a few bytes more cost 128 per
        // connection. It was 1,920 before the batch write became a
        // non-blocking try with a boxed fallback, the ping boxed and the
        // send replies encoded before the select; 1,048 before `run`
        // stopped being an `async fn` (its arguments were stored twice),
        // the session got a task of its own (not the upgrade's), the loop's
        // `select!` became `poll_event`, the fragment buffer, the address
        // slot and the batch went on the heap, and the ping timer became
        // the shared clock.
        assert!(size <= 520, "a connection's future grew to {size} bytes");
    }
}
