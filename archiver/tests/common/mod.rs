//! What the archiver's integration tests share: real PostgreSQL and
//! redis-server (from `chat_archiver::testing`), chat servers started
//! in-process from the `chat-server` lib, and WebSocket clients that
//! publish through them. Everything on loopback, every wait bounded.

#![allow(dead_code, unreachable_pub)]

pub mod procs;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_archiver::testing::{Postgres, RedisServer};
use chat_archiver::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait in a test takes.
pub const T: Duration = Duration::from_secs(30);

/// PostgreSQL and Redis for one test.
pub struct Env {
    pub pg: Postgres,
    pub redis: RedisServer,
    pub db_url: String,
}

/// Log to the test's output (`RUST_LOG` picks the level; info by default).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,chat_server=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Env {
    pub async fn start(db: &str) -> Env {
        init_logs();
        let (pg, redis) = tokio::task::spawn_blocking(|| {
            let pg = Postgres::start().expect("PostgreSQL starts");
            let redis = RedisServer::start().expect("redis-server starts");
            (pg, redis)
        })
        .await
        .unwrap();
        let db_url = pg.create_database(db).await.expect("create the database");
        Env { pg, redis, db_url }
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db_url)
            .await
            .expect("connect to PostgreSQL")
    }
}

/// A chat server running in this process; stopped on drop.
pub struct Server {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Start `chat_server::run` with `--history history`, no rate limits
    /// that a test's bursts would hit.
    pub async fn start(app_id: &str, redis_url: &str, history: u32) -> Server {
        Server::start_archived(app_id, redis_url, history, 0).await
    }

    /// Like [`Server::start`], with `--archive-backlog backlog`: history
    /// keeps the entries above the archiver's watermark, up to `history +
    /// backlog`.
    pub async fn start_archived(
        app_id: &str,
        redis_url: &str,
        history: u32,
        backlog: u32,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = chat_server::Config::for_test(app_id, redis_url);
        config.history_len = history;
        config.rate_per_sec = 100_000;
        config.burst = 100_000;
        config.archive_backlog = Some(backlog);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let r = chat_server::run(listener, config, async {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = r {
                eprintln!("chat server failed: {e:#}");
            }
        });
        Server {
            addr,
            stop: Some(tx),
        }
    }

    pub fn ws_url(&self, room: &str, nick: &str) -> String {
        format!("ws://{}/ws?room={room}&nick={nick}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A message as delivered to its sender.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivered {
    pub offset: i64,
    pub epoch: String,
    pub text: String,
}

/// A WebSocket client that publishes into one room.
pub struct Publisher {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    nick: String,
    sent: u64,
    /// Every message of ours delivered back to us.
    pub delivered: Vec<Delivered>,
}

impl Publisher {
    pub async fn connect(url: &str, nick: &str) -> Publisher {
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let mut p = Publisher {
            ws,
            nick: nick.to_string(),
            sent: 0,
            delivered: Vec::new(),
        };
        p.until(|f| f["type"] == "joined").await;
        p
    }

    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Close(f))) => panic!("closed by the server: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100_000 {
            let f = self.next().await;
            if pred(&f) {
                return f;
            }
        }
        panic!("no such frame");
    }

    /// Send `n` messages at once, then read until each is delivered back;
    /// returns the deliveries.
    pub async fn send_chunk(&mut self, n: usize) -> Vec<Delivered> {
        for _ in 0..n {
            self.sent += 1;
            let text = format!("{} #{}", self.nick, self.sent);
            let id = format!("{}-{}", self.nick, self.sent);
            self.ws
                .send(Message::Text(
                    json!({"type":"send","text":text,"id":id})
                        .to_string()
                        .into(),
                ))
                .await
                .unwrap();
        }
        // The delivery is the acknowledgement of a send that went through;
        // `sent` only answers a duplicate.
        let mut got = Vec::new();
        for _ in 0..(n * 4 + 1000) {
            if got.len() == n {
                break;
            }
            let f = self.next().await;
            match f["type"].as_str() {
                Some("sent") => panic!("a send was taken for a duplicate: {f}"),
                Some("message") if f["nick"] == self.nick.as_str() => got.push(Delivered {
                    offset: f["offset"].as_i64().unwrap(),
                    epoch: f["epoch"].as_str().unwrap_or("").to_string(),
                    text: f["text"].as_str().unwrap().to_string(),
                }),
                Some("error") => panic!("error frame: {f}"),
                _ => {}
            }
        }
        assert_eq!(got.len(), n, "every send delivered");
        self.delivered.extend(got.iter().cloned());
        got
    }
}

/// Send `n` messages on a fresh connection to `url`, tolerating a Redis
/// failover under the server: errors and a closed connection end the
/// attempt, and what was delivered back (accepted by the server) is
/// returned. `None` if the connection failed.
pub async fn send_tolerant(
    url: &str,
    nick: &str,
    first: usize,
    n: usize,
) -> Option<Vec<Delivered>> {
    let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
        .await
        .ok()?
        .ok()?;
    for i in first..first + n {
        let text = format!("{nick} #{i}");
        let frame = json!({"type":"send","text":text,"id":format!("{nick}-{i}")});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
    }
    let mut got = Vec::new();
    while got.len() < n {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await
        else {
            break;
        };
        let Message::Text(t) = msg else { continue };
        let f: Value = serde_json::from_str(&t).unwrap();
        if f["type"] == "message" && f["nick"] == nick {
            got.push(Delivered {
                offset: f["offset"].as_i64().unwrap(),
                epoch: f["epoch"].as_str().unwrap_or("").to_string(),
                text: f["text"].as_str().unwrap().to_string(),
            });
        }
    }
    Some(got)
}

/// An archiver running in this process.
pub struct InProcess(chat_archiver::testing::Archiver);

impl std::ops::Deref for InProcess {
    type Target = chat_archiver::testing::Archiver;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl InProcess {
    pub async fn start(config: Config) -> InProcess {
        InProcess(
            chat_archiver::testing::Archiver::start(config)
                .await
                .expect("the archiver starts"),
        )
    }

    /// Shut down as on SIGTERM and wait (bounded) for it to return.
    pub async fn stop(self) {
        self.0
            .stop(T)
            .await
            .expect("the archiver stops cleanly in time");
    }
}

/// `count(*)` and `count(DISTINCT "offset")` of `room`'s rows.
pub async fn counts(pool: &sqlx::PgPool, room: &str) -> (i64, i64) {
    sqlx::query_as(r#"SELECT count(*), count(DISTINCT "offset") FROM messages WHERE room = $1"#)
        .bind(room)
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Every row of `room`, in offset order.
pub async fn rows(pool: &sqlx::PgPool, room: &str) -> Vec<Delivered> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        r#"SELECT "offset", epoch, text FROM messages WHERE room = $1 ORDER BY "offset""#,
    )
    .bind(room)
    .fetch_all(pool)
    .await
    .expect("read rows");
    rows.into_iter()
        .map(|(offset, epoch, text)| Delivered {
            offset,
            epoch,
            text,
        })
        .collect()
}

/// Wait (bounded by `t`) until `room` holds `n` rows; returns the counts.
pub async fn wait_rows(pool: &sqlx::PgPool, room: &str, n: i64, t: Duration) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        // The table may not exist until the archiver migrated.
        let c = sqlx::query_as::<_, (i64, i64)>(
            r#"SELECT count(*), count(DISTINCT "offset") FROM messages WHERE room = $1"#,
        )
        .bind(room)
        .fetch_one(pool)
        .await
        .unwrap_or((0, 0));
        if c.0 >= n || tokio::time::Instant::now() >= deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The room's `archived` watermark.
pub async fn watermark(redis: &mut redis::aio::MultiplexedConnection, room: &str) -> Option<i64> {
    redis::cmd("HGET")
        .arg(format!("chat:{{{room}}}:epoch"))
        .arg("archived")
        .query_async(redis)
        .await
        .unwrap()
}

/// Wait (bounded by `t`) until the watermark reaches `offset`.
pub async fn wait_watermark(
    redis: &mut redis::aio::MultiplexedConnection,
    room: &str,
    offset: i64,
    t: Duration,
) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        let w = watermark(redis, room).await;
        if w.is_some_and(|w| w >= offset) || tokio::time::Instant::now() >= deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `XLEN` of `room`'s history stream.
pub async fn xlen(redis: &mut redis::aio::MultiplexedConnection, room: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(format!("chat:{{{room}}}:log"))
        .query_async(redis)
        .await
        .unwrap()
}

/// The offset of the oldest entry left in `room`'s history stream.
pub async fn first_offset(
    redis: &mut redis::aio::MultiplexedConnection,
    room: &str,
) -> Option<i64> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("chat:{{{room}}}:log"))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await
        .unwrap();
    entries
        .first()
        .map(|(id, _)| id.split('-').next().unwrap().parse().unwrap())
}

/// The set of deliveries, checked to hold no offset twice.
pub fn as_set(d: &[Delivered]) -> BTreeSet<Delivered> {
    let set: BTreeSet<Delivered> = d.iter().cloned().collect();
    assert_eq!(set.len(), d.len(), "no message delivered twice");
    set
}

/// GET `path` from `addr` over plain HTTP/1.1: the whole answer, headers
/// included.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    out
}
