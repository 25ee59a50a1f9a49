//! Older pages of a room from the server's archive:
//! `GET /history?room=R&before=OFFSET&limit=N` on the host and port of the
//! WebSocket the client is connected to (`ws://H:P/ws` →
//! `http://H:P/history`), with the connection's token as a Bearer header.
//!
//! The answer is `{"room":R,"messages":[message frames, oldest first],
//! "more":bool}`; `more: false` means nothing older exists. Errors (400,
//! 401, 403, 503) carry a text body saying why, which becomes the error.

use std::time::Duration;

use chat_protocol::{ChatMessage, ServerFrame};
use tokio::sync::mpsc;

use super::{http, url, NetEvent};

/// The most a page may take, connect to last byte.
const FETCH_LIMIT: Duration = Duration::from_secs(15);

/// Most bytes of one page: 500 messages (the server's largest `limit`) of
/// the longest text, escaped, fit with room to spare.
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// One page of a room's history, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub messages: Vec<ChatMessage>,
    /// Whether anything older exists.
    pub more: bool,
}

/// The `/history` URL for the WebSocket base `ws_base` (the `--url` or
/// the instance the registry named): its scheme becomes `http`, its last
/// path segment `history`, and its query is replaced. Also returns a
/// `token` the base carried in its query (a `--url` with `?token=`).
pub fn history_url(
    ws_base: &str,
    room: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<(String, Option<String>), String> {
    let rest = ws_base
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{ws_base}: history needs a ws:// server URL"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    let mut params = vec![("room", room.to_string())];
    if let Some(b) = before {
        params.push(("before", b.to_string()));
    }
    params.push(("limit", limit.to_string()));
    let url = url::with_params(&format!("http://{host}{dir}history"), &params);
    Ok((url, token))
}

/// What page to fetch.
#[derive(Debug, Clone)]
pub struct Ask {
    pub room: String,
    pub before: Option<u64>,
    pub limit: u32,
}

/// Fetch a page from the server at the WebSocket base `ws_base` in a task
/// of its own, so that the socket is served meanwhile; the answer arrives
/// as a [`NetEvent::History`]. The UI asks for one page per room at a
/// time and every fetch ends within [`FETCH_LIMIT`], so these tasks stay
/// few.
pub fn spawn_fetch(ws_base: &str, token: Option<String>, ask: Ask, events: mpsc::Sender<NetEvent>) {
    let target = history_url(ws_base, &ask.room, ask.before, ask.limit);
    tokio::spawn(async move {
        let result = match target {
            Ok((url, base_token)) => {
                tracing::info!(%url, "fetching history");
                let token = token.or(base_token);
                fetch(&url, token.as_deref(), FETCH_LIMIT).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(room = %ask.room, before = ?ask.before, error = %e, "history page");
        }
        let ev = NetEvent::History {
            room: ask.room,
            before: ask.before,
            result,
        };
        // The UI may be gone (quitting): nobody to tell then.
        let _ = events.send(ev).await;
    });
}

/// Fetch one page. `token` goes in an `Authorization: Bearer` header.
pub async fn fetch(url: &str, token: Option<&str>, limit: Duration) -> Result<Page, String> {
    let headers: Vec<(&str, String)> = token
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .into_iter()
        .collect();
    let resp = http::get(url, &headers, MAX_PAGE_BYTES, limit).await?;
    page(&resp)
}

/// A `/history` answer as a page, or why not.
pub fn page(resp: &http::Response) -> Result<Page, String> {
    if resp.status == 404 {
        return Err("this server has no /history (HTTP 404)".into());
    }
    if resp.status != 200 {
        return Err(resp.reason());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("the history JSON: {e}"))?;
    let items = v
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or("the history answer has no messages")?;
    let more = v
        .get("more")
        .and_then(serde_json::Value::as_bool)
        .ok_or("the history answer has no \"more\"")?;
    let mut messages = Vec::with_capacity(items.len());
    for item in items {
        match serde_json::from_value::<ServerFrame>(item.clone()) {
            Ok(ServerFrame::Message(m)) => messages.push(m),
            Ok(other) => tracing::warn!(?other, "history: not a message; skipped"),
            Err(e) => tracing::warn!(error = %e, %item, "history: unreadable message; skipped"),
        }
    }
    // Oldest first, each offset once, whatever the server did.
    messages.sort_by_key(|m| m.offset);
    messages.dedup_by_key(|m| m.offset);
    Ok(Page { messages, more })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_url_follows_the_websocket_base() {
        let (u, t) = history_url("ws://127.0.0.1:9000/ws", "lobby", Some(42), 100).unwrap();
        assert_eq!(
            u,
            "http://127.0.0.1:9000/history?room=lobby&before=42&limit=100"
        );
        assert_eq!(t, None);
        // A path prefix (a proxy) stays; the query is replaced, its token
        // kept for the header.
        let (u, t) = history_url("ws://h:1/chat/ws?token=abc&x=1", "#r", None, 50).unwrap();
        assert_eq!(u, "http://h:1/chat/history?room=%23r&limit=50");
        assert_eq!(t.as_deref(), Some("abc"));
        let (u, _) = history_url("ws://h:1", "r", None, 1).unwrap();
        assert_eq!(u, "http://h:1/history?room=r&limit=1");
        assert!(history_url("wss://h/ws", "r", None, 1).is_err());
    }

    fn resp(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reads_a_page_and_refuses_errors_with_their_reason() {
        let body = r#"{"room":"lobby","messages":[
            {"type":"message","room":"lobby","offset":7,"epoch":"e","nick":"b","text":"two","app_id":"app1","ts":2},
            {"type":"message","room":"lobby","offset":5,"epoch":"e","nick":"a","text":"one","app_id":"app1","ts":1,"id":"x-1","action":true},
            {"type":"message","room":"lobby","offset":7,"epoch":"e","nick":"b","text":"two","app_id":"app1","ts":2},
            {"type":"pong"}
        ],"more":true}"#;
        let p = page(&resp(200, body)).unwrap();
        let offsets: Vec<u64> = p.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![5, 7]);
        assert!(p.more);
        assert!(p.messages[0].action);
        let p = page(&resp(200, r#"{"room":"r","messages":[],"more":false}"#)).unwrap();
        assert!(p.messages.is_empty() && !p.more);
        let e = page(&resp(403, "private room: not a member\n")).unwrap_err();
        assert_eq!(e, "HTTP 403: private room: not a member");
        let e = page(&resp(503, "history unavailable: redis down")).unwrap_err();
        assert!(e.contains("503") && e.contains("redis down"), "{e}");
        assert!(page(&resp(404, "")).unwrap_err().contains("no /history"));
        assert!(page(&resp(200, "not json")).is_err());
        assert!(page(&resp(200, r#"{"messages":[]}"#)).is_err());
    }
}
