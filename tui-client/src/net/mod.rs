//! The network worker: an actor that owns the WebSocket, reconnects with
//! backoff, resumes every room, and reports to the UI as [`NetEvent`]s.
//!
//! The UI talks to it only through a [`NetHandle`] (typed requests; the
//! shutdown waits on a `oneshot` reply) and never blocks on the network:
//! requests are queued with `try_send`, and events arrive on a bounded
//! channel that the UI drains between frames.
//!
//! - [`session`] — what survives a reconnect (offsets, outbox), pure logic.
//! - [`backoff`] — exponential backoff with jitter.
//! - [`bucket`] — pacing sends inside the server's rate limit.
//! - [`url`] — the connect URL.
//! - [`jwt`] — reading a token's `exp` and `sub` (not verifying it).
//! - [`registry`] — asking the registry which instance to connect to.
//! - [`history`] — older pages of a room from the server's `/history`.
//! - [`http`] — the minimal HTTP/1.1 GET both of those use.
//! - `reasons`: why a connection ended, in words, and what follows.
//! - `actor`: the connection loop itself.

mod actor;
pub mod backoff;
pub mod bucket;
pub mod history;
pub mod http;
pub mod jwt;
mod reasons;
pub mod registry;
pub mod session;
pub mod url;

use std::time::Duration;

use chat_protocol::{Limits, ServerFrame};
use tokio::sync::{mpsc, oneshot};

pub use backoff::Backoff;

/// What the UI asks the network to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join(String),
    Leave(String),
    Nick(String),
    Send {
        room: String,
        text: String,
        /// The client's message id, echoed by the server: it matches the
        /// local echo to the delivered message.
        id: String,
        action: bool,
    },
    Who(Option<String>),
    /// Fetch the page of `room`'s history before offset `before` (the
    /// newest without one) from the instance the client is connected to;
    /// answered by [`NetEvent::History`]. It goes over HTTP beside the
    /// WebSocket, so it works while reconnecting too.
    History {
        room: String,
        before: Option<u64>,
        limit: u32,
    },
    /// Drop the wait (or the connection) and connect now.
    Reconnect,
}

/// What the network tells the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// A connection attempt started; `attempt` is 0 for the first connect
    /// and counts failed attempts after that.
    Connecting { attempt: u32 },
    /// The welcome arrived.
    Connected {
        app_id: String,
        conn_id: String,
        nick: String,
        limits: Limits,
    },
    /// A server frame, duplicates already dropped.
    Frame(ServerFrame),
    /// How the next connection goes: straight to an instance the registry
    /// named (`direct`), or through `--url`. Sent before `Connected`.
    Via { direct: bool },
    /// A round-trip time measured with an application ping.
    Rtt(Duration),
    /// The connection is gone. `retry_in` is `None` when the client will
    /// not retry by itself (the server refused it for good); `attempt` is
    /// the number of the next attempt.
    Disconnected {
        reason: String,
        retry_in: Option<Duration>,
        attempt: u32,
    },
    /// The answer to [`Request::History`]: a page, or why there is none.
    History {
        room: String,
        before: Option<u64>,
        result: Result<history::Page, String>,
    },
    /// A send was refused before it reached the server.
    SendFailed {
        id: String,
        room: String,
        reason: String,
    },
}

/// How the network worker behaves.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The server URL without the session's query parameters.
    pub url: String,
    pub nick: String,
    pub room: String,
    /// More rooms to join after `room` on every connection.
    pub more_rooms: Vec<String>,
    /// Messages to replay when a room is joined for the first time.
    pub history: u32,
    pub backoff: Backoff,
    /// How often to measure the round trip (and show liveness).
    pub ping_interval: Duration,
    /// With nothing heard for this long, the connection is taken as dead
    /// (a half-open TCP connection otherwise hangs for minutes).
    pub dead_after: Duration,
    /// The limit for connecting and receiving the welcome.
    pub connect_timeout: Duration,
    /// A connection that lasted this long resets the backoff.
    pub stable_after: Duration,
    /// Where the JWT for `?token=` comes from, if the server wants one.
    pub token: Option<Token>,
    /// With a `--token-file`, how long before the token's `exp` the file
    /// is read again and a newer token sent as `refresh`.
    pub refresh_before: Duration,
    /// The registry to ask for an instance before every connect
    /// (`--registry`); `url` is the fallback.
    pub registry: Option<String>,
    /// Sent as `?nick_key=` without a token: the server gives a reconnect
    /// with the same key its nick back while the old connection (on a
    /// killed instance, say) still holds it. One random key per run.
    pub nick_key: String,
}

/// The JWT sent on every connection attempt.
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    /// Given on the command line (`--token`, `CHAT_TOKEN`).
    Fixed(String),
    /// Read from this file on every attempt (`--token-file`), so that a
    /// renewed token is picked up by the next (re)connect.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for Token {
    // Never the token itself: it would land in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("Fixed(***)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Token {
    /// The token to send now.
    pub fn current(&self) -> Result<String, String> {
        match self {
            Self::Fixed(t) => Ok(t.trim().to_string()),
            Self::File(p) => read_token_file(p),
        }
    }
}

/// The token in a file: its first non-empty line.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{} holds no token", path.display()))
}

impl NetConfig {
    pub fn new(url: &str, nick: &str, room: &str) -> Self {
        Self {
            url: url.to_string(),
            nick: nick.to_string(),
            room: room.to_string(),
            more_rooms: Vec::new(),
            history: 50,
            backoff: Backoff::default(),
            ping_interval: Duration::from_secs(5),
            dead_after: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            token: None,
            refresh_before: Duration::from_secs(30),
            registry: None,
            nick_key: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// Why a request could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("the network worker is busy; try again")]
    Busy,
    #[error("the network worker has stopped")]
    Stopped,
}

#[derive(Debug)]
enum Command {
    Request(Request),
    Shutdown(oneshot::Sender<()>),
}

/// The UI's handle on the network worker.
#[derive(Debug, Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
}

/// Requests the UI may queue before the worker catches up (a paste of many
/// lines is one request per line).
const REQUEST_QUEUE: usize = 1024;
/// Events the worker may queue before it waits for the UI: in a busy room
/// this is what pushes back on the socket instead of growing memory.
const EVENT_QUEUE: usize = 4096;

impl NetHandle {
    /// Queue a request without waiting.
    pub fn request(&self, r: Request) -> Result<(), NetError> {
        self.tx.try_send(Command::Request(r)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NetError::Busy,
            mpsc::error::TrySendError::Closed(_) => NetError::Stopped,
        })
    }

    /// Close the connection politely (close code 1000) and stop the worker;
    /// waits at most `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// Start the network worker on the current tokio runtime.
pub fn spawn(config: NetConfig) -> (NetHandle, mpsc::Receiver<NetEvent>) {
    let (tx, commands) = mpsc::channel(REQUEST_QUEUE);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(actor::Actor::new(config, commands, events_tx).run());
    (NetHandle { tx }, events)
}
