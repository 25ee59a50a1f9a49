//! Error codes carried in `{"type":"error"}` frames, and WebSocket close
//! codes with the reasons the server sends.

use serde::{Deserialize, Serialize};

/// Why a request failed. Serialised in `snake_case`; a client must accept
/// codes it does not know (they parse as [`ErrorCode::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame looked like a protocol frame (`{ ... "type" ... }`) but is
    /// not valid JSON.
    BadJson,
    /// A JSON object with a `type` the server does not know.
    UnknownType,
    /// A known `type` with a missing or ill-typed field.
    BadFrame,
    /// Chat text longer than the instance's `max_message_bytes`.
    MessageTooLarge,
    /// Chat text that is empty.
    EmptyMessage,
    /// More messages than the per-connection rate allows; this one was not
    /// delivered.
    RateLimited,
    /// A room name that breaks [`crate::names::validate_room`].
    InvalidRoom,
    /// A nick that breaks [`crate::names::validate_nick`].
    InvalidNick,
    /// A request for a room the connection has not joined.
    NotInRoom,
    /// Joining one more room would pass the per-connection room limit.
    TooManyRooms,
    /// Binary frames are not part of the protocol.
    BinaryUnsupported,
    /// A backend (Redis) is unreachable; the request was definitely not
    /// carried out and may be retried.
    Unavailable,
    /// Redis did not answer in time: the send may or may not have been
    /// applied. Retry with the same `id`: the retry is never published
    /// twice (it gets `sent` with `duplicate: true` if the first went
    /// through).
    Timeout,
    /// An unexpected server fault; the request was not carried out.
    Internal,
    /// Not allowed for this connection: a private or direct-message room
    /// its token does not grant, a `nick` frame on an authenticated
    /// connection (the nick is the token's), a `refresh` with another
    /// subject's token.
    Forbidden,
    /// An anonymous client asked for a nick an authenticated member holds
    /// in the room.
    NickTaken,
    /// A `refresh` token that is invalid or expired.
    Unauthorized,
    /// A code this version of the protocol crate does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name, e.g. `"rate_limited"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::BadFrame => "bad_frame",
            Self::MessageTooLarge => "message_too_large",
            Self::EmptyMessage => "empty_message",
            Self::RateLimited => "rate_limited",
            Self::InvalidRoom => "invalid_room",
            Self::InvalidNick => "invalid_nick",
            Self::NotInRoom => "not_in_room",
            Self::TooManyRooms => "too_many_rooms",
            Self::BinaryUnsupported => "binary_unsupported",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
            Self::Forbidden => "forbidden",
            Self::NickTaken => "nick_taken",
            Self::Unauthorized => "unauthorized",
            Self::Unknown => "unknown",
        }
    }
}

/// WebSocket close codes the server uses. The close frame always carries a
/// human-readable reason as well.
pub mod close {
    /// Normal closure: the client asked to close.
    pub const NORMAL: u16 = 1000;
    /// The server is going away for good (not a restart).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol violation at the WebSocket layer.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: a sustained flood past the rate limit.
    pub const POLICY: u16 = 1008;
    /// A frame or message larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected server fault.
    pub const INTERNAL: u16 = 1011;
    /// The instance is shutting down (SIGTERM): reconnect, you will land on
    /// another instance.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client could not keep up: its outbound queue filled.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing (not even a pong) arrived within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// The connection's token expired: get a new token and reconnect (or
    /// send a `refresh` frame before it expires).
    pub const TOKEN_EXPIRED: u16 = 4003;

    /// A short name for a close code, for logs and load-generator reports.
    pub fn name(code: u16) -> &'static str {
        match code {
            NORMAL => "normal",
            GOING_AWAY => "going_away",
            PROTOCOL_ERROR => "protocol_error",
            INVALID_PAYLOAD => "invalid_payload",
            POLICY => "policy",
            TOO_BIG => "too_big",
            INTERNAL => "internal",
            SERVICE_RESTART => "service_restart",
            SLOW_CONSUMER => "slow_consumer",
            IDLE_TIMEOUT => "idle_timeout",
            TOKEN_EXPIRED => "token_expired",
            1005 => "no_status",
            1006 => "abnormal",
            _ => "other",
        }
    }

    /// Whether a client should reconnect (with backoff) after this close.
    pub fn should_reconnect(code: u16) -> bool {
        !matches!(
            code,
            NORMAL | POLICY | TOO_BIG | PROTOCOL_ERROR | INVALID_PAYLOAD
        )
    }
}
