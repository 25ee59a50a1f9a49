//! Reading a chat-mode server frame: [`classify`] tells a delivery from the
//! control frames the checker and the reconnect logic need, and says when a
//! frame is neither.
//!
//! The fast path is the server's own layout: every message it fans out
//! starts with `{"type":"message","offset":N,` (see [`crate::probe::scan_chat`]),
//! so a delivery costs a prefix check and two backward searches. PROTOCOL.md
//! does not promise that field order, though, so anything else is parsed as
//! JSON ([`chat_protocol::ServerFrame`]): a message in another field order
//! is still a message. Bulky frames loadgen has no use for (`members`,
//! `presence`) are recognised by their leading `type` and skipped unparsed.
//! A frame that is neither a message nor a known control frame is
//! [`Incoming::Unrecognized`]: the caller counts it, it is never dropped
//! silently.

use std::borrow::Cow;

use chat_protocol::ServerFrame;

use crate::kinds::frame_type;
use crate::probe::{self, Probe};

/// What one text frame is, as far as loadgen cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A chat message.
    Message {
        offset: u64,
        /// The epoch of `offset` (empty when the server sent none).
        epoch: Cow<'a, [u8]>,
        /// The instance that accepted it.
        app_id: Option<Cow<'a, [u8]>>,
        /// Our probe, when the message carried one of our ids.
        probe: Option<Probe>,
        /// Read by the JSON fallback rather than the fast path.
        parsed: bool,
    },
    Joined {
        room: String,
        head: u64,
        epoch: String,
        recovered: Option<bool>,
    },
    /// Offsets `from..=to` cannot be delivered (history lost them).
    Gap { from: u64, to: u64 },
    /// The room started epoch `epoch`; what followed `last` in `previous`
    /// may be lost.
    Reset {
        epoch: String,
        previous: String,
        last: u64,
    },
    /// A retried send that was already published (`duplicate`), with the
    /// original's offset.
    Sent {
        id: String,
        offset: u64,
        epoch: String,
        duplicate: bool,
    },
    /// A refused request; `id` is the send's id when it had one.
    Error {
        code: chat_protocol::ErrorCode,
        id: Option<String>,
    },
    /// The welcome (only expected first).
    Welcome { app_id: String, rate_per_sec: u32 },
    /// A known frame loadgen has no use for (members, presence, pong, …).
    Other,
    /// Not a frame of the protocol: the reason, for the report.
    Unrecognized(String),
}

/// Classify one text frame.
pub fn classify(t: &[u8]) -> Incoming<'_> {
    if let Some(d) = probe::scan_chat(t) {
        return Incoming::Message {
            offset: d.offset,
            epoch: Cow::Borrowed(
                chat_protocol::splice::peek_epoch(t)
                    .unwrap_or("")
                    .as_bytes(),
            ),
            app_id: d.app_id.map(Cow::Borrowed),
            probe: d.probe,
            parsed: false,
        };
    }
    // Frequent or bulky frames that need no parsing, when the server put
    // their type first (it always does; anything else is parsed below).
    if let Some(b"members" | b"presence" | b"pong" | b"nick" | b"left") = frame_type(t) {
        return Incoming::Other;
    }
    match serde_json::from_slice::<ServerFrame>(t) {
        Ok(ServerFrame::Message(m)) => Incoming::Message {
            offset: m.offset,
            probe: m.id.as_deref().and_then(|i| Probe::parse_id(i.as_bytes())),
            epoch: Cow::Owned(m.epoch.into_bytes()),
            app_id: Some(Cow::Owned(m.app_id.into_bytes())),
            parsed: true,
        },
        Ok(ServerFrame::Joined {
            room,
            head,
            epoch,
            recovered,
        }) => Incoming::Joined {
            room,
            head,
            epoch,
            recovered,
        },
        Ok(ServerFrame::Gap { from, to, .. }) => Incoming::Gap { from, to },
        Ok(ServerFrame::Reset {
            epoch,
            previous,
            last,
            ..
        }) => Incoming::Reset {
            epoch,
            previous,
            last,
        },
        Ok(ServerFrame::Sent {
            id,
            offset,
            epoch,
            duplicate,
            ..
        }) => Incoming::Sent {
            id,
            offset,
            epoch,
            duplicate,
        },
        Ok(ServerFrame::Error { code, id, .. }) => Incoming::Error { code, id },
        Ok(ServerFrame::Welcome { app_id, limits, .. }) => Incoming::Welcome {
            app_id,
            rate_per_sec: limits.rate_per_sec,
        },
        Ok(_) => Incoming::Other,
        Err(e) => Incoming::Unrecognized(reason(t, &e)),
    }
}

/// Why a frame did not parse, in a few words (no frame content).
fn reason(t: &[u8], e: &serde_json::Error) -> String {
    match serde_json::from_slice::<serde_json::Value>(t) {
        Err(_) => "not JSON".into(),
        Ok(serde_json::Value::Object(o)) => match o.get("type") {
            Some(serde_json::Value::String(ty)) => {
                // Types are short words; keep the key bounded anyway.
                let ty: String = ty.chars().take(24).collect();
                if e.is_data() && e.to_string().starts_with("unknown variant") {
                    format!("unknown type {ty:?}")
                } else {
                    format!("bad {ty:?} frame")
                }
            }
            _ => "JSON without a type".into(),
        },
        Ok(_) => "JSON that is not an object".into(),
    }
}

/// A sample of a frame for the report: at most `max` bytes, lossy UTF-8,
/// cut on a character boundary.
pub fn sample(t: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&t[..t.len().min(max)]).into_owned();
    if t.len() > max {
        format!("{s}… ({} bytes)", t.len())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Probe = Probe {
        sender: 3,
        seq: 9,
        sched_us: 100,
        sent_us: 120,
    };

    #[test]
    fn fast_path_and_any_field_order_read_the_same_message() {
        let id = P.id();
        let fast = format!(
            "{{\"type\":\"message\",\"offset\":42,\"epoch\":\"e1\",\"room\":\"r\",\"nick\":\"n\",\"text\":\"hi\",\"app_id\":\"app2\",\"ts\":1,\"id\":\"{id}\"}}"
        );
        let shuffled = format!(
            "{{\"id\":\"{id}\",\"app_id\":\"app2\",\"ts\":1,\"text\":\"hi\",\"nick\":\"n\",\"room\":\"r\",\"epoch\":\"e1\",\"offset\":42,\"type\":\"message\"}}"
        );
        let a = classify(fast.as_bytes());
        let b = classify(shuffled.as_bytes());
        let strip = |i: Incoming<'_>| match i {
            Incoming::Message {
                offset,
                epoch,
                app_id,
                probe,
                parsed,
            } => (
                offset,
                epoch.into_owned(),
                app_id.map(|a| a.into_owned()),
                probe,
                parsed,
            ),
            other => panic!("{other:?}"),
        };
        let (a, b) = (strip(a), strip(b));
        assert!(!a.4);
        assert!(b.4);
        assert_eq!((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3));
        assert_eq!(b.3, Some(P));
    }

    #[test]
    fn control_frames_in_any_order() {
        assert_eq!(
            classify(br#"{"to":9,"from":2,"room":"r","type":"gap"}"#),
            Incoming::Gap { from: 2, to: 9 }
        );
        assert_eq!(
            classify(br#"{"type":"reset","room":"r","epoch":"b","previous":"a","last":4}"#),
            Incoming::Reset {
                epoch: "b".into(),
                previous: "a".into(),
                last: 4
            }
        );
        assert_eq!(
            classify(
                br#"{"duplicate":true,"type":"sent","room":"r","id":"x","offset":5,"epoch":"a"}"#
            ),
            Incoming::Sent {
                id: "x".into(),
                offset: 5,
                epoch: "a".into(),
                duplicate: true
            }
        );
        assert!(matches!(
            classify(br#"{"type":"error","code":"brand_new","message":"?","id":"x"}"#),
            Incoming::Error {
                code: chat_protocol::ErrorCode::Unknown,
                ..
            }
        ));
        assert_eq!(
            classify(br#"{"type":"members","room":"r","members":[],"total":0}"#),
            Incoming::Other
        );
        assert_eq!(
            classify(br#"{"room":"r","members":[],"total":0,"type":"members"}"#),
            Incoming::Other
        );
    }

    #[test]
    fn anything_else_is_unrecognized_with_a_reason() {
        let r = |t: &[u8]| match classify(t) {
            Incoming::Unrecognized(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r(b"hello"), "not JSON");
        assert_eq!(r(br#"{"a":1}"#), "JSON without a type");
        assert_eq!(r(br#"[1]"#), "JSON that is not an object");
        assert_eq!(r(br#"{"type":"teleport"}"#), "unknown type \"teleport\"");
        assert_eq!(
            r(br#"{"type":"message","offset":"x"}"#),
            "bad \"message\" frame"
        );
        // A truncated fast-path frame is not a message either.
        assert_eq!(r(br#"{"type":"message","offset":7,"#), "not JSON");
        assert_eq!(
            sample("é".repeat(10).as_bytes(), 5),
            "éé\u{fffd}… (20 bytes)"
        );
    }
}
