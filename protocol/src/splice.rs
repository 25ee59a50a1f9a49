//! The pre-encoded form of a chat message that the server fans out.
//!
//! The accepting instance knows everything about a message except its
//! offset, which Redis assigns atomically when it appends the message to the
//! room's history and publishes it. So the instance encodes the *tail* of the
//! frame once ([`encode_tail`]), and the Redis script glues
//! [`MESSAGE_PREFIX`], the offset, `,` and the tail together ([`splice`]
//! does the same in Rust). Every instance then sends those exact bytes to
//! every local member: one encoding per message for the whole cluster.

use serde::Serialize;

/// The bytes every delivered chat message starts with.
pub const MESSAGE_PREFIX: &str = "{\"type\":\"message\",\"offset\":";

/// Everything about a message except its offset.
#[derive(Debug, Serialize)]
pub struct MessageTail<'a> {
    pub room: &'a str,
    pub nick: &'a str,
    pub text: &'a str,
    pub app_id: &'a str,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub action: bool,
}

/// Encode the tail: the JSON object of [`MessageTail`] without its opening
/// brace, e.g. `"room":"lobby",...,"ts":1}`.
pub fn encode_tail(tail: &MessageTail<'_>) -> String {
    let mut json = serde_json::to_string(tail).expect("message tails always serialise");
    json.remove(0);
    json
}

/// Glue an offset and an epoch to a tail: exactly what the server's Redis
/// script does.
pub fn splice(offset: u64, epoch: &str, tail: &str) -> String {
    format!("{MESSAGE_PREFIX}{offset},\"epoch\":\"{epoch}\",{tail}")
}

/// Read the epoch of a spliced message (the field right after the offset)
/// without parsing the rest; `None` if there is none.
pub fn peek_epoch(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(MESSAGE_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest.get(digits..)?.strip_prefix(b",\"epoch\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Read the offset of a spliced message without parsing the rest; `None` if
/// `frame` is not a spliced chat message.
pub fn peek_offset(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(MESSAGE_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}
