//! The archive watermark: field `archived` of `chat:{room}:epoch`, the
//! highest offset such that every entry of the room's log at or below it
//! is archived. The server reads it before trimming history. It is
//! computed and raised in one Lua script (`watermark.lua`), which also
//! measures the room's lag for the metrics.

use std::sync::OnceLock;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};

use crate::entries::{epoch_key, log_key};
use crate::metrics::RoomLag;
use crate::node::GROUP;

/// The watermark script (see `watermark.lua`).
pub const WATERMARK_LUA: &str = include_str!("watermark.lua");

fn watermark_script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(WATERMARK_LUA))
}

/// Load the watermark script on a connection (after `NOSCRIPT`).
pub async fn load_watermark_script(conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(WATERMARK_LUA)
        .query_async::<String>(conn)
        .await
        .map(drop)
}

pub fn watermark_cmd(room: &str, forget_consumers_after: std::time::Duration) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(watermark_script().get_hash())
        .arg(2)
        .arg(log_key(room))
        .arg(epoch_key(room))
        .arg(GROUP)
        .arg(forget_consumers_after.as_millis() as u64);
    c
}

/// Parse the watermark script's reply: the lag and whether the watermark
/// was raised, or the status (-2: no stream, -1: no group).
pub fn parse_watermark(v: &Value, now_ms: u64) -> Option<Result<(RoomLag, bool), i64>> {
    let Value::Array(parts) = v else { return None };
    let int = |v: &Value| -> Option<u64> {
        match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    };
    let status = match parts.first()? {
        Value::Int(i) => *i,
        _ => return None,
    };
    if status != 0 {
        return Some(Err(status));
    }
    let stored = int(parts.get(2)?)?;
    let pending = int(parts.get(3)?)?;
    let lag = int(parts.get(4)?)?;
    let age_ms = match parts.get(5)? {
        Value::BulkString(b) if !b.is_empty() => serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|f| f["ts"].as_u64())
            .map_or(0, |ts| now_ms.saturating_sub(ts)),
        _ => 0,
    };
    Some(Ok((
        RoomLag {
            messages: pending + lag,
            age_ms,
            archived: stored,
        },
        parts.get(6).and_then(int) == Some(1),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_give_lag_and_watermark() {
        let frame = r#"{"type":"message","offset":11,"room":"r","nick":"n","text":"t","app_id":"a","ts":1000}"#;
        let v = Value::Array(vec![
            Value::Int(0),
            bulk("10"),
            bulk("10"),
            Value::Int(3),
            Value::Int(4),
            bulk(frame),
            Value::Int(1),
        ]);
        let (lag, raised) = parse_watermark(&v, 3500).unwrap().unwrap();
        assert_eq!(
            lag,
            RoomLag {
                messages: 7,
                age_ms: 2500,
                archived: 10
            }
        );
        assert!(raised);
        assert_eq!(
            parse_watermark(&Value::Array(vec![Value::Int(-1)]), 0),
            Some(Err(-1))
        );
        assert_eq!(parse_watermark(&Value::Nil, 0), None);
    }
}
