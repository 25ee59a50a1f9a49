//! How one inbound text frame is read.
//!
//! The rule, so that anyone can chat without knowing the protocol:
//! - a JSON object with a string `type` is a protocol frame; an unknown
//!   `type` or a bad field is an error;
//! - text that starts with `{`, ends with `}`, mentions `"type"` and is not
//!   valid JSON is an error (`bad_json`): it was meant as a frame;
//! - anything else, including JSON without a `type`, is chat text for the
//!   current room, delivered exactly as typed.

use serde_json::Value;

use crate::codes::ErrorCode;
use crate::frames::ClientFrame;

/// What a text frame turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A protocol frame.
    Frame(ClientFrame),
    /// Plain chat text for the current room.
    Text,
}

/// Why a text frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `id`, when it had a readable one, so the client can match
    /// the error to its request.
    pub id: Option<String>,
}

/// Classify one text frame. Plain text is returned as [`Inbound::Text`] so
/// the caller keeps ownership of the original string.
pub fn classify(text: &str) -> Result<Inbound, InboundError> {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        return Ok(Inbound::Text);
    }
    // Fast path: a well-formed protocol frame.
    if let Ok(frame) = serde_json::from_str::<ClientFrame>(trimmed) {
        return Ok(Inbound::Frame(frame));
    }
    let value = match serde_json::from_str::<Value>(trimmed) {
        Ok(v) => v,
        Err(e) if trimmed.ends_with('}') && trimmed.contains("\"type\"") => {
            return Err(InboundError {
                code: ErrorCode::BadJson,
                message: format!("malformed JSON frame: {e}"),
                id: None,
            });
        }
        Err(_) => return Ok(Inbound::Text),
    };
    let Value::Object(map) = &value else {
        return Ok(Inbound::Text);
    };
    let id = map.get("id").and_then(Value::as_str).map(str::to_owned);
    let ty = match map.get("type") {
        None => return Ok(Inbound::Text),
        Some(Value::String(ty)) => ty,
        Some(_) => {
            return Err(InboundError {
                code: ErrorCode::BadFrame,
                message: "field `type` must be a string".into(),
                id,
            })
        }
    };
    if !ClientFrame::TYPES.contains(&ty.as_str()) {
        return Err(InboundError {
            code: ErrorCode::UnknownType,
            message: format!(
                "unknown frame type {ty:?}; expected one of: {}",
                ClientFrame::TYPES.join(", ")
            ),
            id,
        });
    }
    match serde_json::from_value::<ClientFrame>(value.clone()) {
        Ok(frame) => Ok(Inbound::Frame(frame)),
        Err(e) => Err(InboundError {
            code: ErrorCode::BadFrame,
            message: format!("bad {ty:?} frame: {e}"),
            id,
        }),
    }
}
