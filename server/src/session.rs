//! One WebSocket connection: a single task that reads client frames, writes
//! queued deliveries in batches, pings, and closes with a reason.
//!
//! One task per connection (not a reader and a writer) keeps an idle
//! connection small. Deliveries arrive on a bounded queue from the hub;
//! everything queued is written with one flush, so under load many frames go
//! out in one `write`. Replies to the client's own requests are written
//! directly. Every write also watches the kick switch and shutdown, so a
//! client that stopped reading cannot pin the task.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chat_protocol::{classify, close, ErrorCode, Inbound, ServerFrame};
use futures_util::SinkExt;
use std::pin::Pin;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio::time::Instant;

use crate::commands::Session;
use crate::hub::{Member, Out};
use crate::outbox::{Outbox, Recv};
use crate::AppState;

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectParams {
    pub room: Option<String>,
    pub nick: Option<String>,
    pub since: Option<u64>,
    pub history: Option<u32>,
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
/// Most queued deliveries written per flush.
const BATCH: usize = 128;

/// The socket plus what every write must watch.
pub struct Conn {
    ws: WebSocket,
    outbox: Arc<Outbox>,
    state: AppState,
    /// Created once per connection: polling it re-registers nothing, where
    /// a fresh `cancelled()` per loop turn would lock the token each time.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// Run a write, giving up if the connection is kicked, the server shuts
/// down, or the write blocks for too long.
async fn guarded<F: std::future::Future<Output = Result<(), axum::Error>>>(
    outbox: &Outbox,
    shutdown: Pin<&mut WaitForCancellationFutureOwned>,
    write: F,
) -> Result<(), End> {
    tokio::select! {
        biased;
        _ = outbox.kicked() => Err(slow_consumer()),
        _ = shutdown => Err(restart()),
        r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone(1006)),
            Err(_) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer: write blocked".into())),
        },
    }
}

impl Conn {
    /// Send one frame now.
    pub async fn send(&mut self, msg: Message) -> Result<(), End> {
        guarded(&self.outbox, self.shutdown.as_mut(), self.ws.send(msg)).await
    }

    /// Send a server frame now.
    pub async fn frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Message::Text(frame.to_json().into())).await
    }

    /// Send an error frame now.
    pub async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<String>,
    ) -> Result<(), End> {
        self.state.metrics.error(code);
        self.frame(&ServerFrame::error(code, message, id)).await
    }

    /// After sending a close frame, read (and drop) until the client answers
    /// it, for a bounded time. Closing with unread input would make the
    /// kernel reset the connection, and the client would lose the close
    /// frame and its reason.
    async fn drain_until_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for _ in 0..10_000 {
            match tokio::time::timeout_at(deadline, self.ws.recv()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => return,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Write several pre-encoded frames with a single flush.
    async fn send_batch(&mut self, frames: impl Iterator<Item = Utf8Bytes>) -> Result<(), End> {
        let ws = &mut self.ws;
        let write = async move {
            for f in frames {
                ws.feed(Message::Text(f)).await?;
            }
            ws.flush().await
        };
        guarded(&self.outbox, self.shutdown.as_mut(), write).await
    }
}

fn slow_consumer() -> End {
    End::Close(
        close::SLOW_CONSUMER,
        "slow consumer: outbound queue full".into(),
    )
}

fn restart() -> End {
    End::Close(close::SERVICE_RESTART, "service restart: reconnect".into())
}

/// Serve one upgraded connection until it ends. `permit` holds its place
/// under the connection limit.
pub async fn run(
    state: AppState,
    ws: WebSocket,
    params: ConnectParams,
    permit: OwnedSemaphorePermit,
) {
    let metrics = state.metrics.clone();
    metrics
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics
        .connections_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outbox = Outbox::new(state.config.queue);
    let id = state.next_session_id();
    let mut conn = Conn {
        ws,
        outbox: outbox.clone(),
        state: state.clone(),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
    };
    let mut session = Session::new(state.clone(), Member { id, outbox: outbox.clone() }, params.nick);
    let end = session_loop(&mut session, &mut conn, params.room, params.since, params.history).await;
    outbox.close();
    let code = match &end {
        End::Close(code, reason) => {
            tracing::debug!(conn_id = %session.conn_id, code, reason, "closing connection");
            let frame = CloseFrame {
                code: *code,
                reason: reason.as_str().into(),
            };
            // Best effort: a client that stopped reading will not get it.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.ws.send(Message::Close(Some(frame))),
            )
            .await;
            conn.drain_until_closed().await;
            *code
        }
        End::Gone(code) => *code,
    };
    metrics.closed(code);
    drop(conn);
    Box::pin(session.leave_all()).await;
    metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    drop(permit);
}

async fn session_loop(
    session: &mut Session,
    conn: &mut Conn,
    room: Option<String>,
    since: Option<u64>,
    history: Option<u32>,
) -> End {
    let state = conn.state.clone();
    // Requests are boxed: their futures (Redis round trips) are large and
    // short-lived, and an idle connection should not carry their space.
    if let Err(end) = Box::pin(session.welcome(conn, room.as_deref())).await {
        return end;
    }
    let room = room.unwrap_or_else(|| crate::DEFAULT_ROOM.to_string());
    if let Err(end) = Box::pin(session.join(conn, &room, since, history)).await {
        return end;
    }
    let ping_every = state.config.ping_interval;
    let idle = state.config.idle_timeout;
    let ping = tokio::time::sleep(ping_every);
    tokio::pin!(ping);
    let mut last_seen = Instant::now();
    let mut batch: Vec<Out> = Vec::new();
    loop {
        let step: Result<(), End> = tokio::select! {
            biased;
            _ = conn.shutdown.as_mut() => Err(restart()),
            r = conn.outbox.recv(&mut batch, BATCH) => match r {
                Recv::Kicked => Err(slow_consumer()),
                Recv::Frames => {
                    state.metrics.ws_flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let frames = batch.iter().filter(|d| session.accept(d)).map(|d| d.frame.clone());
                    let r = conn.send_batch(frames).await;
                    batch.clear();
                    if batch.capacity() > BATCH {
                        // A burst grew it; idle connections stay small.
                        batch = Vec::new();
                    }
                    r
                }
            },
            msg = conn.ws.recv() => {
                last_seen = Instant::now();
                match msg {
                    None => Err(End::Gone(1006)),
                    Some(Err(e)) => Err(read_error(e, state.config.max_frame_bytes)),
                    Some(Ok(msg)) => Box::pin(inbound(session, conn, msg)).await,
                }
            }
            _ = ping.as_mut() => {
                if last_seen.elapsed() >= idle {
                    Err(End::Close(close::IDLE_TIMEOUT, format!("idle timeout: nothing received for {}s", idle.as_secs())))
                } else {
                    ping.as_mut().reset(Instant::now() + ping_every);
                    conn.send(Message::Ping(Default::default())).await
                }
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}

fn too_big(size: usize, max_frame: usize) -> End {
    End::Close(
        close::TOO_BIG,
        format!("frame of {size} bytes exceeds the limit of {max_frame}"),
    )
}

/// Map a read error to how the connection ends.
fn read_error(e: axum::Error, max_frame: usize) -> End {
    use tungstenite::error::{CapacityError, Error as WsError};
    match e.into_inner().downcast::<WsError>().map(|b| *b) {
        Ok(WsError::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            too_big(size, max_frame)
        }
        Ok(WsError::Capacity(e)) => End::Close(close::TOO_BIG, e.to_string()),
        Ok(WsError::Utf8(_)) => End::Close(
            close::INVALID_PAYLOAD,
            "text frame is not valid UTF-8".into(),
        ),
        Ok(WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
            End::Gone(1006)
        }
        Ok(WsError::Protocol(p)) => {
            End::Close(close::PROTOCOL_ERROR, format!("protocol error: {p}"))
        }
        _ => End::Gone(1006),
    }
}

/// Handle one inbound WebSocket message.
async fn inbound(session: &mut Session, conn: &mut Conn, msg: Message) -> Result<(), End> {
    let max_frame = conn.state.config.max_frame_bytes;
    let text = match msg {
        Message::Text(t) if t.len() > max_frame => {
            return Err(too_big(t.len(), max_frame));
        }
        Message::Binary(b) if b.len() > max_frame => {
            return Err(too_big(b.len(), max_frame));
        }
        Message::Text(t) => t,
        Message::Binary(_) => {
            if !session.admit(conn, None).await? {
                return Ok(());
            }
            return conn
                .error(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not supported: send text (JSON frames or plain chat text)",
                    None,
                )
                .await;
        }
        Message::Ping(_) | Message::Pong(_) => return Ok(()),
        Message::Close(frame) => return Err(End::Gone(frame.map_or(close::NORMAL, |f| f.code))),
    };
    let parsed = classify(&text);
    let id = match &parsed {
        Ok(Inbound::Frame(chat_protocol::ClientFrame::Send { id, .. })) => id.clone(),
        Err(e) => e.id.clone(),
        _ => None,
    };
    if !session.admit(conn, id).await? {
        return Ok(());
    }
    match parsed {
        Ok(Inbound::Frame(frame)) => session.command(conn, frame).await,
        Ok(Inbound::Text) => {
            session
                .send_chat(conn, None, text.to_string(), None, false)
                .await
        }
        Err(e) => conn.error(e.code, e.message, e.id).await,
    }
}
