//! Every frame of the protocol, in both directions.
//!
//! Frames are JSON objects tagged by `type`. Unknown fields are ignored so
//! that either side can add fields without breaking the other; optional
//! fields are left out of the JSON when empty.

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;

/// The protocol version announced in the welcome frame. It changes only when
/// an existing field changes meaning or disappears.
pub const PROTOCOL_VERSION: u32 = 1;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Join a room (or re-join one already joined) and make it the current
    /// room for plain-text chat.
    Join {
        room: String,
        /// The last offset this client saw in the room: the server replays
        /// every later message from history, or sends a [`ServerFrame::Gap`]
        /// for the part that history no longer holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The epoch `since` belongs to (from [`ServerFrame::Joined`] or a
        /// message). If the room's epoch has changed since, recovery is
        /// impossible and `joined` says `recovered: false`. Without it,
        /// `since` is taken to be of the current epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Without `since`: how many recent messages to replay (0 if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Send chat text. `room` defaults to the current room.
    #[serde(alias = "message")]
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        text: String,
        /// The client's own message id, echoed in the delivered message and
        /// in any error about this send. It is also the send's idempotency
        /// key: a retry with the same id (same nick, same room, within the
        /// server's idempotency TTL) is never published twice. Make it
        /// unique per sender, e.g. a random per-process prefix and a counter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// An action (`/me waves`) rather than a plain line.
        #[serde(default, skip_serializing_if = "is_false")]
        action: bool,
    },
    /// Change nick in every joined room.
    Nick { nick: String },
    /// Ask for the member list of a room (default: the current room).
    Who {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// Application-level ping, for round-trip time from clients (such as
    /// browsers) that cannot send WebSocket pings. Both fields are echoed.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// A new token for the same subject, before the current one expires:
    /// the connection then lives until the new token's `exp`.
    Refresh { token: String },
}

impl ClientFrame {
    /// Every `type` a client may send, for "unknown type" errors.
    pub const TYPES: &'static [&'static str] = &[
        "join", "leave", "send", "message", "nick", "who", "ping", "refresh",
    ];
}

/// Per-connection limits of the instance, announced in the welcome frame so
/// that clients can stay inside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest chat text, in bytes of UTF-8.
    pub max_message_bytes: u32,
    /// Largest WebSocket frame or message; anything larger closes with 1009.
    pub max_frame_bytes: u32,
    /// Sustained messages per second per connection.
    pub rate_per_sec: u32,
    /// Messages a connection may send in one burst.
    pub burst: u32,
    /// Rooms one connection may be in at once.
    pub max_rooms: u32,
    /// Messages each room keeps for resume.
    pub history_len: u32,
    /// The server closes a connection that sends nothing for this long.
    pub idle_timeout_ms: u64,
    /// The server sends a WebSocket ping this often.
    pub ping_interval_ms: u64,
}

impl Limits {
    /// The server's defaults: its flags start from these, and tests and
    /// stand-in servers use them as a baseline.
    pub const DEFAULT: Limits = Limits {
        max_message_bytes: 4096,
        max_frame_bytes: 16 * 1024,
        rate_per_sec: 20,
        burst: 40,
        max_rooms: 16,
        history_len: 1000,
        idle_timeout_ms: 90_000,
        ping_interval_ms: 30_000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One member of a room, on whichever instance it is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub conn_id: String,
    pub nick: String,
    pub app_id: String,
    /// The token subject of an authenticated member; absent for anonymous
    /// ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// A chat message as every member of the room receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Strictly increasing per room across all instances, but not dense: a
    /// room starts at milliseconds since the epoch × 1000 (again, higher,
    /// if Redis ever loses it), and then counts up by one.
    pub offset: u64,
    /// The epoch of the room's offset sequence (see [`ServerFrame::Reset`]).
    /// Offsets are comparable only within one epoch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    pub nick: String,
    pub text: String,
    /// The instance that accepted the message.
    pub app_id: String,
    /// Server time in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's own message id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub action: bool,
}

/// What happened to a member of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
    /// The member changed nick; `old_nick` holds the previous one.
    Nick,
    /// A connection of a member who is still in the room through another
    /// connection ended without a leave (its instance died and the member
    /// had already reconnected elsewhere). Drop that `conn_id` from the
    /// member list; the member did not leave, so do not announce it.
    Gone,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Always the first frame on a connection.
    Welcome {
        /// The instance this connection landed on.
        app_id: String,
        /// Unique across the cluster.
        conn_id: String,
        nick: String,
        /// The initial current room.
        room: String,
        protocol: u32,
        limits: Limits,
    },
    /// A join succeeded. History replay (if asked for) follows, then live
    /// messages. `head` is the room's latest offset at join time (0 for a
    /// room without messages), so a client knows when it has caught up.
    Joined {
        room: String,
        head: u64,
        /// The epoch of the room's offset sequence; resume with it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        epoch: String,
        /// Only on a join with `since`: `true` if everything after `since`
        /// follows (or a `gap` names what history no longer holds); `false`
        /// if the room's epoch changed since the client's, so messages
        /// after `since` may have been lost for good. What history holds
        /// after `since` is still replayed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// A leave succeeded.
    Left { room: String },
    /// A chat message.
    Message(ChatMessage),
    /// Offsets `from..=to` of `room` cannot be delivered: history no longer
    /// holds them. Never a silent hole.
    Gap { room: String, from: u64, to: u64 },
    /// The room's offset sequence started a new epoch: Redis restarted,
    /// failed over or lost the room, so messages published after offset
    /// `last` of epoch `previous` may have been lost, and what follows
    /// belongs to `epoch`. Offsets keep increasing across epochs, but a
    /// client must not assume that nothing is missing across one.
    Reset {
        room: String,
        epoch: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        previous: String,
        /// The last offset delivered in the previous epoch (0: none).
        last: u64,
    },
    /// A send with an `id` that was already applied: the retry was not
    /// published again; this is the offset the original got.
    Sent {
        room: String,
        id: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        epoch: String,
        duplicate: bool,
    },
    /// Someone joined, left or changed nick.
    Presence {
        room: String,
        event: PresenceEvent,
        conn_id: String,
        nick: String,
        app_id: String,
        ts: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_nick: Option<String>,
        /// The token subject of an authenticated member.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
    },
    /// The members of a room across all instances (on join and on `who`),
    /// sorted by nick. A big room lists only the first ones: `total` says
    /// how many there are in all.
    Members {
        room: String,
        members: Vec<Member>,
        #[serde(default)]
        total: u64,
    },
    /// This connection's nick changed.
    Nick { nick: String, old: String },
    /// The answer to a [`ClientFrame::Ping`].
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
        server_ts: u64,
    },
    /// A `refresh` succeeded: the connection now lives until `exp`
    /// (seconds since the Unix epoch).
    Refreshed { exp: u64 },
    /// A request failed; the connection stays open.
    Error {
        code: ErrorCode,
        message: String,
        /// The `id` of the send that failed, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

impl ServerFrame {
    /// Serialise to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, id: Option<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            id,
        }
    }
}
