//! History beyond Redis: a resume from further back than `--history`, and
//! `GET /history`, read the PostgreSQL archive that a real `archiver`
//! fills, with real redis-server, PostgreSQL and server processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chat_archiver::testing::{Archiver, Postgres};
use chat_archiver::Config;
use common::*;
use serde_json::{json, Value};

const ROOM: &str = "big";
const TOTAL: usize = 3000;

/// Two servers with `--history 100` and the archive, one archiver: the
/// issue's setup, so `--archive-backlog` and `--max-replay` take their
/// defaults with `--database-url` (50,000 and 10,000).
struct Env {
    pg: Postgres,
    db: String,
    c: chat_cluster::Cluster,
    archiver: Option<Archiver>,
}

impl Env {
    async fn start() -> Env {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await
            .unwrap()
            .expect("PostgreSQL starts (needs the postgresql package: scripts/install-deps.sh)");
        let db = pg.create_database("chat").await.expect("create database");
        let args: Vec<String> = [
            "--history",
            "100",
            "--database-url",
            &db,
            "--rate",
            "100000",
            "--burst",
            "100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster(2, &args)
        })
        .await
        .unwrap();
        let archiver = Archiver::start(Config::for_test(&c.redis_url(), &db))
            .await
            .expect("archiver starts");
        Env {
            pg,
            db,
            c,
            archiver: Some(archiver),
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.c.redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Wait (bounded) until the archiver has stored `room` up to `offset`.
    async fn archived(&self, room: &str, offset: u64) {
        let mut r = self.redis().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut w = 0;
        while Instant::now() < deadline {
            w = redis::cmd("HGET")
                .arg(format!("chat:{{{room}}}:epoch"))
                .arg("archived")
                .query_async::<Option<u64>>(&mut r)
                .await
                .unwrap()
                .unwrap_or(0);
            if w >= offset {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the archiver stored {room} up to {w}, not {offset}, within 60 s");
    }

    async fn sql_count(&self, room: &str) -> (i64, i64) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.db).await.unwrap();
        sqlx::query_as(r#"SELECT count(*), count(DISTINCT "offset") FROM messages WHERE room = $1"#)
            .bind(room)
            .fetch_one(&mut c)
            .await
            .unwrap()
    }

    async fn sql(&self, q: &str) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.db).await.unwrap();
        sqlx::query(q).execute(&mut c).await.unwrap();
    }
}

/// Send `n` messages (in windows of 100, each echo read before the next
/// window) and return their echoes.
async fn send(c: &mut Client, n: usize, tag: &str) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let w = (n - i).min(100);
        for k in i..i + w {
            c.say(&format!("{tag}{k}"), &format!("{tag}-{k}")).await;
        }
        out.extend(c.messages(w).await);
        i += w;
    }
    out
}

fn offset(m: &Value) -> u64 {
    m["offset"].as_u64().unwrap()
}

/// Read what a resume sends until `n` messages came: the messages, and
/// every gap frame on the way.
async fn resumed(c: &mut Client, n: usize) -> (Vec<Value>, Vec<(u64, u64)>) {
    let mut msgs = Vec::with_capacity(n);
    let mut gaps = Vec::new();
    while msgs.len() < n {
        let Some(f) = c.try_next(T).await else {
            panic!(
                "{} of {n} messages came (gaps {gaps:?}), first {:?}, last {:?}",
                msgs.len(),
                msgs.first().map(offset),
                msgs.last().map(offset)
            );
        };
        match f["type"].as_str() {
            Some("message") => msgs.push(f),
            Some("gap") => gaps.push((f["from"].as_u64().unwrap(), f["to"].as_u64().unwrap())),
            _ => {}
        }
    }
    (msgs, gaps)
}

async fn http_get(addr: String, path: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        chat_cluster::http::get(&addr, &path, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap()
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Invariant (issue 13, "History beyond Redis"): a client resuming from
/// before everything Redis still holds gets every message after its
/// offset exactly once, in offset order, with no `gap`: the archive's part
/// first, then Redis history, then live. The archiver stores all 3,000
/// once (`count(*) = count(DISTINCT "offset")`), and `GET /history` pages
/// back through the same messages, once each, to `more: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_beyond_history_gets_the_archive_then_redis_once_in_order() {
    let env = Env::start().await;
    let mut a = Client::joined(&format!("{}?room={ROOM}&nick=ann", env.c.server_ws_url(0))).await;
    let mut sent = send(&mut a, TOTAL, "m").await;
    let first = offset(&sent[0]);
    let epoch = sent[0]["epoch"].as_str().unwrap().to_string();
    env.archived(ROOM, offset(&sent[TOTAL - 1])).await;
    assert_eq!(env.sql_count(ROOM).await, (TOTAL as i64, TOTAL as i64));
    // One more, once everything is archived: history is trimmed to 100.
    sent.extend(send(&mut a, 1, "tail").await);
    let mut r = env.redis().await;
    let xlen: u64 = redis::cmd("XLEN")
        .arg(format!("chat:{{{ROOM}}}:log"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(xlen <= 100, "Redis holds only --history 100, not {xlen}");

    // Resume on the other instance from before the first message.
    let mut b = Client::connect(&format!(
        "{}?room={ROOM}&nick=bob&since={}&epoch={epoch}",
        env.c.server_ws_url(1),
        first - 1
    ))
    .await;
    let joined = b.until("joined").await;
    assert_eq!(joined["recovered"], json!(true), "{joined}");
    // And live after it.
    a.say("live", "live-1").await;
    sent.push(a.messages(1).await.remove(0));
    let (got, gaps) = resumed(&mut b, sent.len()).await;
    assert!(
        gaps.is_empty(),
        "no gap: the archive holds it all: {gaps:?}"
    );
    assert_eq!(
        got.iter().map(offset).collect::<Vec<_>>(),
        sent.iter().map(offset).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // Every field, as sent live (the archive's frames are spliced alike).
    assert!(got == sent, "archived frames differ from the live ones");
    assert!(
        b.try_next(Duration::from_millis(300))
            .await
            .is_none_or(|f| f["type"] != "message"),
        "nothing more"
    );
    let (_, m) = get(env.c.server_addr(1), "/metrics").await;
    let from_archive = metric(&m, "chat_archive_replayed_total");
    assert!(
        from_archive >= (TOTAL - 100) as u64,
        "the archive sent what Redis no longer held: {from_archive}"
    );

    // A fresh join asking for the last 500 gets them, 400 of them from
    // the archive, and nothing announced.
    let mut d = Client::connect(&format!(
        "{}?room={ROOM}&nick=dee&history=500",
        env.c.server_ws_url(1)
    ))
    .await;
    let (got, gaps) = resumed(&mut d, 500).await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert!(
        got == sent[sent.len() - 500..],
        "the last 500, in order, once"
    );

    // GET /history pages back through all of it.
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..20 {
        let path = match before {
            Some(b) => format!("/history?room={ROOM}&limit=500&before={b}"),
            None => format!("/history?room={ROOM}&limit=500"),
        };
        let (code, body) = http_get(env.c.server_addr(0), path).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let page: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(offset)
            .collect();
        assert!(page.windows(2).all(|w| w[0] < w[1]), "oldest first");
        for m in v["messages"].as_array().unwrap() {
            assert_eq!(m["type"], "message");
        }
        seen.splice(0..0, page.iter().copied());
        before = page.first().copied();
        if v["more"] == json!(false) {
            break;
        }
    }
    let want: Vec<u64> = sent.iter().map(offset).collect();
    assert_eq!(seen, want, "GET /history: every message once, in order");
    let (code, body) = http_get(
        env.c.server_addr(0),
        format!("/history?room={ROOM}&limit=501"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    drop(env.archiver);
}

/// Invariant: a `gap` is sent only for what neither Redis nor the archive
/// holds, and exactly there. Rows missing from the middle of the archive
/// are announced as one gap between the messages around them; with
/// PostgreSQL down (kill -9), a resume still gets what Redis holds, after
/// a gap for the rest, and the server keeps serving (`GET /history`
/// answers 503 with the reason, then 200 once PostgreSQL is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_names_only_what_the_archive_lacks_and_the_database_going_down_is_survived() {
    let mut env = Env::start().await;
    let room = "holes";
    let mut a = Client::joined(&format!("{}?room={room}&nick=ann", env.c.server_ws_url(0))).await;
    let mut sent = send(&mut a, 600, "h").await;
    env.archived(room, offset(&sent[599])).await;
    sent.extend(send(&mut a, 1, "tail").await);
    let first = offset(&sent[0]);
    let epoch = sent[0]["epoch"].as_str().unwrap().to_string();
    // The archive loses offsets first+100 ..= first+149.
    let (lo, hi) = (first + 100, first + 149);
    env.sql(&format!(
        r#"DELETE FROM messages WHERE room = '{room}' AND "offset" BETWEEN {lo} AND {hi}"#
    ))
    .await;
    let url = format!(
        "{}?room={room}&nick=bob&since={}&epoch={epoch}",
        env.c.server_ws_url(1),
        first - 1
    );
    let mut b = Client::connect(&url).await;
    let (got, gaps) = resumed(&mut b, sent.len() - 50).await;
    assert_eq!(
        gaps,
        vec![(lo, hi)],
        "one gap, exactly where the archive has a hole"
    );
    let want: Vec<u64> = sent
        .iter()
        .map(offset)
        .filter(|o| !(lo..=hi).contains(o))
        .collect();
    assert_eq!(got.iter().map(offset).collect::<Vec<_>>(), want);
    drop(b);

    // PostgreSQL is killed: the resume gets a gap for what only the
    // archive held, then all of Redis history; nothing crashes.
    env.pg.kill9();
    let mut c = Client::connect(&url.replace("nick=bob", "nick=cy")).await;
    let held = sent.len().min(100);
    let (got, gaps) = resumed(&mut c, held).await;
    let redis_first = offset(&got[0]);
    assert_eq!(
        gaps,
        vec![(first, redis_first - 1)],
        "one gap for the archive's part"
    );
    assert_eq!(
        got.iter().map(offset).collect::<Vec<_>>(),
        sent[sent.len() - held..]
            .iter()
            .map(offset)
            .collect::<Vec<_>>()
    );
    let (code, body) = http_get(
        env.c.server_addr(0),
        format!("/history?room={room}&limit=10"),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("archive"), "says why: {body}");
    let (_, m) = get(env.c.server_addr(1), "/metrics").await;
    assert!(metric(&m, "chat_archive_errors_total") >= 1);
    // Back up: the archive answers again.
    let env = tokio::task::spawn_blocking(move || {
        env.pg.restart().expect("PostgreSQL restarts");
        env
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(
            env.c.server_addr(0),
            format!("/history?room={room}&limit=500&before={}", first + 200),
        )
        .await;
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let offs: BTreeSet<u64> = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(offset)
                .collect();
            assert_eq!(offs.len(), 150, "200 before, less the hole of 50");
            assert_eq!(v["more"], json!(false));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archive back within 30 s: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
