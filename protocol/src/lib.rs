//! The wire contract between chat clients and chat servers.
//!
//! Every WebSocket text frame is one JSON object with a `type` tag, except
//! plain chat text: a text frame that is *not* a JSON object with a `type`
//! field is chat text for the connection's current room (see
//! [`inbound::classify`]). `PROTOCOL.md` at the repository root is the
//! human-readable reference; the golden tests in `tests/golden.rs` pin the
//! exact bytes.
//!
//! # Layout
//! - [`frames`]: [`ClientFrame`] (client to server) and [`ServerFrame`]
//!   (server to client) with their payload structs.
//! - [`codes`]: [`ErrorCode`] for error frames and [`close`] codes.
//! - [`inbound`]: how a text frame becomes a protocol frame or chat text.
//! - [`names`]: what a valid room name and nick look like.
//! - [`splice`]: the pre-encoded chat message form the server fans out.

pub mod codes;
pub mod frames;
pub mod inbound;
pub mod names;
pub mod splice;

pub use codes::{close, ErrorCode};
pub use frames::{
    ChatMessage, ClientFrame, Limits, Member, PresenceEvent, ServerFrame, PROTOCOL_VERSION,
};
pub use inbound::{classify, Inbound, InboundError};
