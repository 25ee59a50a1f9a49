//! Stream entries as Redis returns them, and the rows they become.
//!
//! A room's log entry has id `<offset>-0` and one field, `f`: the message
//! frame exactly as clients receive it (see `chat_protocol::ChatMessage`).
//! Replies are parsed from raw [`redis::Value`]s because a pending entry
//! that was trimmed comes back as an id with no fields, which typed
//! helpers reject.

use chat_protocol::ChatMessage;
use redis::Value;
use serde::Deserialize;

/// One row of the `messages` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub room: String,
    pub epoch: String,
    pub offset: i64,
    pub nick: String,
    pub text: String,
    pub app_id: String,
    /// Server time in ms since the Unix epoch.
    pub ts: i64,
    /// The sender's connection id, when the frame names it (`conn_id`).
    pub sender: Option<String>,
    /// The sender's token subject, when the frame names it (`sub`).
    pub sub: Option<String>,
    /// The client's own message id, echoed in the frame.
    pub msg_id: Option<String>,
    /// A `/me` action.
    pub action: bool,
}

/// What an entry read from a stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A chat message to archive.
    Row(Box<Row>),
    /// The entry was still pending but is gone from the stream (trimmed or
    /// the key expired): it can only be acknowledged, and is counted as
    /// lost.
    Gone,
    /// The entry is not a chat message frame: acknowledged and counted, so
    /// it never blocks the watermark.
    Undecodable(String),
}

/// An entry read from a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream id, `<offset>-0`.
    pub id: String,
    pub body: Body,
}

/// The frame's fields the archive keeps; the server may add `conn_id` and
/// `sub` to the stored frame, and they are kept when it does.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    ty: String,
    #[serde(flatten)]
    msg: ChatMessage,
    #[serde(default)]
    conn_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

/// The key of a room's log.
pub fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}

/// The key of a room's epoch hash (which holds the `archived` watermark).
pub fn epoch_key(room: &str) -> String {
    format!("chat:{{{room}}}:epoch")
}

/// The room of a log key, if it is one.
pub fn room_of_log_key(key: &str) -> Option<&str> {
    let room = key.strip_prefix("chat:{")?.strip_suffix("}:log")?;
    (!room.is_empty() && !room.contains(['{', '}'])).then_some(room)
}

/// The offset of a stream id `<offset>-<seq>`.
pub fn offset_of_id(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(o, _)| o).parse().ok()
}

/// Decode one message frame of `room`'s log.
pub fn decode(room: &str, frame: &[u8]) -> Body {
    let f: Frame = match serde_json::from_slice(frame) {
        Ok(f) => f,
        Err(e) => return Body::Undecodable(format!("not a message frame: {e}")),
    };
    if f.ty != "message" {
        return Body::Undecodable(format!("frame type {:?}", f.ty));
    }
    if f.msg.room != room {
        return Body::Undecodable(format!("frame of room {:?} in {room:?}'s log", f.msg.room));
    }
    let (Ok(offset), Ok(ts)) = (i64::try_from(f.msg.offset), i64::try_from(f.msg.ts)) else {
        return Body::Undecodable("offset or ts out of range".into());
    };
    Body::Row(Box::new(Row {
        room: f.msg.room,
        epoch: f.msg.epoch,
        offset,
        nick: f.msg.nick,
        text: f.msg.text,
        app_id: f.msg.app_id,
        ts,
        sender: f.conn_id,
        sub: f.sub,
        msg_id: f.msg.id,
        action: f.msg.action,
    }))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Parse a list of `[id, [field, value, ...] | nil]` entries of `room`.
pub fn parse_entries(room: &str, v: &Value) -> Result<Vec<Entry>, String> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("entries: not an array: {other:?}")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(format!("entry: not an array: {item:?}"));
        };
        let id = pair
            .first()
            .and_then(string)
            .ok_or_else(|| format!("entry without id: {pair:?}"))?;
        let body = match pair.get(1) {
            None | Some(Value::Nil) => Body::Gone,
            Some(Value::Array(fields)) => {
                let frame = fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(bytes) == Some(b"f".as_slice()))
                    .and_then(|kv| kv.get(1).and_then(bytes));
                match frame {
                    Some(f) => decode(room, f),
                    None if fields.is_empty() => Body::Gone,
                    None => Body::Undecodable("no field f".into()),
                }
            }
            Some(other) => return Err(format!("entry fields: {other:?}")),
        };
        out.push(Entry { id, body });
    }
    Ok(out)
}

/// Parse an `XREADGROUP` reply for one stream (`nil` when nothing new).
pub fn parse_xreadgroup(room: &str, v: &Value) -> Result<Vec<Entry>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let Value::Array(kv) = s else {
                    return Err(format!("XREADGROUP stream: {s:?}"));
                };
                if let Some(entries) = kv.get(1) {
                    out.extend(parse_entries(room, entries)?);
                }
            }
            Ok(out)
        }
        // RESP3 answers with a map of key → entries.
        Value::Map(m) => {
            let mut out = Vec::new();
            for (_, entries) in m {
                out.extend(parse_entries(room, entries)?);
            }
            Ok(out)
        }
        other => Err(format!("XREADGROUP: {other:?}")),
    }
}

/// What an `XAUTOCLAIM` returned: the next cursor, the entries claimed,
/// and the ids that were pending but are gone from the stream (Redis
/// dropped them from the pending list itself).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub next: String,
    pub entries: Vec<Entry>,
    pub deleted: Vec<String>,
}

/// Parse an `XAUTOCLAIM` reply.
pub fn parse_xautoclaim(room: &str, v: &Value) -> Result<Claimed, String> {
    let Value::Array(parts) = v else {
        return Err(format!("XAUTOCLAIM: {v:?}"));
    };
    let next = parts
        .first()
        .and_then(string)
        .ok_or_else(|| format!("XAUTOCLAIM cursor: {parts:?}"))?;
    let entries = match parts.get(1) {
        Some(e) => parse_entries(room, e)?,
        None => Vec::new(),
    };
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.iter().filter_map(string).collect(),
        _ => Vec::new(),
    };
    Ok(Claimed {
        next,
        entries,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    const FRAME: &str = r#"{"type":"message","offset":17,"epoch":"00000000abcd","room":"r","nick":"n","text":"hi","app_id":"app1","ts":1700000000000,"id":"c1"}"#;

    #[test]
    fn keys_and_ids() {
        assert_eq!(room_of_log_key("chat:{lobby}:log"), Some("lobby"));
        assert_eq!(room_of_log_key(&log_key("a.b")), Some("a.b"));
        assert_eq!(room_of_log_key("chat:{lobby}:seq"), None);
        assert_eq!(room_of_log_key("chat:{}:log"), None);
        assert_eq!(
            offset_of_id("1700000000000017-0"),
            Some(1_700_000_000_000_017)
        );
        assert_eq!(offset_of_id("5"), Some(5));
        assert_eq!(offset_of_id("x-0"), None);
    }

    #[test]
    fn frames_become_rows() {
        let Body::Row(row) = decode("r", FRAME.as_bytes()) else {
            panic!("a row");
        };
        assert_eq!(row.offset, 17);
        assert_eq!(row.epoch, "00000000abcd");
        assert_eq!(row.msg_id.as_deref(), Some("c1"));
        assert_eq!(row.sender, None);
        let with_sender = FRAME.replace("\"id\":\"c1\"", "\"conn_id\":\"k9\",\"sub\":\"u1\"");
        let Body::Row(row) = decode("r", with_sender.as_bytes()) else {
            panic!("a row");
        };
        assert_eq!(row.sender.as_deref(), Some("k9"));
        assert_eq!(row.sub.as_deref(), Some("u1"));
        assert!(matches!(
            decode("other", FRAME.as_bytes()),
            Body::Undecodable(_)
        ));
        assert!(matches!(decode("r", b"{oops"), Body::Undecodable(_)));
    }

    #[test]
    fn replies_with_trimmed_entries_parse() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("chat:{r}:log"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("17-0"),
                    Value::Array(vec![bulk("f"), bulk(FRAME)]),
                ]),
                Value::Array(vec![bulk("18-0"), Value::Nil]),
            ]),
        ])]);
        let e = parse_xreadgroup("r", &reply).unwrap();
        assert_eq!(e.len(), 2);
        assert!(matches!(e[0].body, Body::Row(_)));
        assert_eq!(
            e[1],
            Entry {
                id: "18-0".into(),
                body: Body::Gone
            }
        );
        assert!(parse_xreadgroup("r", &Value::Nil).unwrap().is_empty());

        let claim = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("17-0"),
                Value::Array(vec![bulk("f"), bulk(FRAME)]),
            ])]),
            Value::Array(vec![bulk("3-0")]),
        ]);
        let c = parse_xautoclaim("r", &claim).unwrap();
        assert_eq!(c.next, "0-0");
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.deleted, ["3-0"]);
    }
}
