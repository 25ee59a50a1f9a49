//! A small WebSocket test client and cluster helpers shared by the
//! integration tests. Everything runs against real processes.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const T: Duration = Duration::from_secs(10);

/// Start a cluster with the test build of the server.
pub fn cluster(servers: usize, args: &[&str]) -> Cluster {
    Cluster::start(ClusterOptions {
        servers,
        server_args: args.iter().map(|s| s.to_string()).collect(),
        server_bin: Some(env!("CARGO_BIN_EXE_server").into()),
        server_log: "info,chat_server=debug".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server and haproxy installed)")
}

/// Start a cluster from async code.
pub async fn cluster_async(servers: usize, args: &'static [&'static str]) -> Cluster {
    tokio::task::spawn_blocking(move || cluster(servers, args))
        .await
        .unwrap()
}

/// A test client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Client {
    /// Connect and read the welcome frame.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        c.welcome = c.next().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame is the welcome");
        c
    }

    /// Connect and wait until the initial room is joined.
    pub async fn joined(url: &str) -> Client {
        let mut c = Client::connect(url).await;
        c.until("joined").await;
        c.until("members").await;
        c
    }

    pub fn app_id(&self) -> String {
        self.welcome["app_id"].as_str().unwrap().to_string()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn say(&mut self, text: &str, id: &str) {
        self.send(json!({"type":"send","text":text,"id":id})).await;
    }

    /// The next text frame as JSON (pings are skipped).
    pub async fn next(&mut self) -> Value {
        self.try_next(T).await.expect("a frame in time")
    }

    pub async fn try_next(&mut self, t: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(t, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(f))) => panic!("unexpected close: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Skip frames until one of type `ty`.
    pub async fn until(&mut self, ty: &str) -> Value {
        for _ in 0..10_000 {
            let f = self.next().await;
            if f["type"] == ty {
                return f;
            }
        }
        panic!("no {ty} frame");
    }

    /// The next `n` chat messages (other frames skipped).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.until("message").await);
        }
        out
    }

    /// Read until the server closes; returns the close code (1006 when the
    /// connection ended without a close frame).
    pub async fn closed(&mut self, t: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (1006, String::new()),
            }
        }
    }
}

/// Offsets of messages are strictly increasing.
pub fn assert_increasing(msgs: &[Value]) {
    for w in msgs.windows(2) {
        assert!(
            w[0]["offset"].as_u64().unwrap() < w[1]["offset"].as_u64().unwrap(),
            "out of order: {w:?}"
        );
    }
}

/// The `text` field of each message.
pub fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// GET from a `host:port`.
pub async fn get(addr: String, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        chat_cluster::http::get(&addr, path, Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap()
}

/// A raw upgrade request to `/ws{query}` (from source address `src` when
/// given) with extra header lines: the status and body of the answer.
pub async fn upgrade_raw(
    addr: &str,
    src: Option<&str>,
    query: &str,
    extra_headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(src) = src {
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    }
    let mut tcp = sock.connect(addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let head = text[..end].to_ascii_lowercase();
            if head.starts_with("http/1.1 101") {
                break;
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    };
    tokio::time::timeout(T, read)
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
