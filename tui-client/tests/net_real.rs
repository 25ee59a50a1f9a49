//! The network worker against real chat servers (redis-server, the server
//! binary, HAProxy, started by `chat-cluster`): token refresh from a
//! `--token-file` before `exp`, close 4003 with and without a file, and
//! `--registry` direct connect (the registry itself is a stub HTTP server
//! in the test: its server side is written elsewhere).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_cluster::{Cluster, ClusterOptions};
use chat_protocol::{ErrorCode, ServerFrame};
use jsonwebtoken::{encode, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tui_client::net::{self, Backoff, NetConfig, NetEvent, Request, Token};

const SECRET: &str = "tui-client-test-secret";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn auth_cluster(servers: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        servers,
        server_args: vec![
            "--auth".into(),
            "required".into(),
            "--jwt-secret".into(),
            SECRET.into(),
        ],
        ..Default::default()
    })
    .expect("starting a local cluster (needs redis-server, haproxy and the server binary)")
}

fn config(url: &str) -> NetConfig {
    let mut cfg = NetConfig::new(url, "", "lobby");
    cfg.history = 0;
    cfg.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(300),
    };
    cfg
}

fn token_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tui-real-{name}-{}", std::process::id()))
}

/// Wait for an event matching `pred`, collecting those before it.
async fn until(
    rx: &mut mpsc::Receiver<NetEvent>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&NetEvent) -> bool,
) -> Vec<NetEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                let done = pred(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("the worker stopped while waiting for {what}: {seen:?}"),
            Err(_) => panic!("no {what} within {limit:?}; events: {seen:?}"),
        }
    }
}

fn connected(ev: &NetEvent) -> bool {
    matches!(ev, NetEvent::Connected { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_refreshed_before_exp_and_the_connection_outlives_the_first_token() {
    let cluster = auth_cluster(1);
    let path = token_file("refresh");
    let first_exp = unix_now() + 7;
    std::fs::write(&path, token("ann", first_exp)).unwrap();
    let mut cfg = config(&cluster.server_ws_url(0));
    cfg.token = Some(Token::File(path.clone()));
    cfg.refresh_before = Duration::from_secs(4);
    let (handle, mut rx) = net::spawn(cfg);
    let evs = until(&mut rx, Duration::from_secs(15), "the welcome", connected).await;
    let Some(NetEvent::Connected { conn_id, nick, .. }) = evs.last() else {
        unreachable!()
    };
    assert_eq!(nick, "ann");
    let conn_id = conn_id.clone();
    // A renewed token lands in the file before the refresh is due.
    let second_exp = unix_now() + 3600;
    std::fs::write(&path, token("ann", second_exp)).unwrap();
    let evs = until(&mut rx, Duration::from_secs(10), "refreshed", |e| {
        matches!(e, NetEvent::Frame(ServerFrame::Refreshed { .. }))
    })
    .await;
    assert!(
        matches!(evs.last(), Some(NetEvent::Frame(ServerFrame::Refreshed { exp })) if *exp == second_exp),
        "{evs:?}"
    );
    // Past the first token's expiry the same connection is still up:
    // nothing disconnects it, and it still answers.
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(first_exp.saturating_sub(unix_now()) + 2);
    let mut meanwhile = Vec::new();
    while let Ok(ev) = tokio::time::timeout_at(deadline, rx.recv()).await {
        meanwhile.push(ev.expect("the worker stopped"));
    }
    handle.request(Request::Who(None)).unwrap();
    meanwhile.extend(
        until(&mut rx, Duration::from_secs(5), "the member list", |e| {
            matches!(e, NetEvent::Frame(ServerFrame::Members { .. }))
        })
        .await,
    );
    assert!(
        !meanwhile.iter().any(|e| matches!(
            e,
            NetEvent::Disconnected { .. } | NetEvent::Connected { .. }
        )),
        "the connection {conn_id} did not live on: {meanwhile:?}"
    );
    handle.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4003_reads_the_token_file_again_and_reconnects() {
    let cluster = auth_cluster(1);
    let path = token_file("expire");
    let exp = unix_now() + 4;
    std::fs::write(&path, token("ann", exp)).unwrap();
    let mut cfg = config(&cluster.server_ws_url(0));
    cfg.token = Some(Token::File(path.clone()));
    cfg.refresh_before = Duration::from_secs(2);
    let (handle, mut rx) = net::spawn(cfg);
    until(&mut rx, Duration::from_secs(15), "the welcome", connected).await;
    // The file now holds a token of another subject: the server refuses
    // it as a refresh (the connection stays until its own expiry) but it
    // is good for a new connection.
    std::fs::write(&path, token("bob", unix_now() + 3600)).unwrap();
    let evs = until(&mut rx, Duration::from_secs(10), "the reconnect", connected).await;
    assert!(
        evs.iter().any(|e| matches!(
            e,
            NetEvent::Frame(ServerFrame::Error { code, .. }) if *code == ErrorCode::Forbidden
        )),
        "the refresh with another subject was not refused: {evs:?}"
    );
    assert!(
        evs.iter().any(|e| matches!(
            e,
            NetEvent::Disconnected { reason, retry_in: Some(_), .. } if reason.contains("4003")
        )),
        "no 4003 close: {evs:?}"
    );
    let Some(NetEvent::Connected { nick, .. }) = evs.last() else {
        unreachable!()
    };
    assert_eq!(nick, "bob", "the new connection carries the file's token");
    handle.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4003_without_a_file_says_give_a_new_token_and_stops() {
    let cluster = auth_cluster(1);
    let mut cfg = config(&cluster.server_ws_url(0));
    cfg.token = Some(Token::Fixed(token("ann", unix_now() + 3)));
    let (handle, mut rx) = net::spawn(cfg);
    until(&mut rx, Duration::from_secs(15), "the welcome", connected).await;
    let evs = until(&mut rx, Duration::from_secs(10), "the close", |e| {
        matches!(e, NetEvent::Disconnected { .. })
    })
    .await;
    match evs.last() {
        Some(NetEvent::Disconnected {
            reason,
            retry_in: None,
            ..
        }) => assert!(
            reason.starts_with("token expired: give a new token"),
            "{reason}"
        ),
        other => panic!("expected offline, got {other:?}"),
    }
    // No retry with the dead token.
    let more = timeout(Duration::from_millis(800), rx.recv()).await;
    assert!(
        !matches!(more, Ok(Some(NetEvent::Connecting { .. }))),
        "{more:?}"
    );
    handle.shutdown(Duration::from_secs(1)).await;
}

/// A stub registry: answers `GET` with the next of `answers` (the last one
/// repeats), counting requests.
async fn stub_registry(answers: Arc<Mutex<Vec<String>>>, hits: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: a test makes a handful of requests.
        for _ in 0..1000 {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            hits.fetch_add(1, Ordering::SeqCst);
            let url = {
                let mut a = answers.lock().unwrap();
                if a.len() > 1 {
                    a.remove(0)
                } else {
                    a[0].clone()
                }
            };
            let body = format!(r#"{{"url":"{url}","app_id":"x","connections":0}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}/connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_asked_before_each_connect_and_a_dead_instance_is_not_looped_on() {
    let cluster = Cluster::start(ClusterOptions {
        servers: 2,
        ..Default::default()
    })
    .expect("starting a local cluster (needs redis-server, haproxy and the server binary)");
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/ws", l.local_addr().unwrap())
    };
    let answers = Arc::new(Mutex::new(vec![dead.clone()]));
    let hits = Arc::new(AtomicUsize::new(0));
    let registry = stub_registry(answers.clone(), hits.clone()).await;
    let mut cfg = NetConfig::new(&cluster.ws_url(), "regtest", "lobby");
    cfg.history = 0;
    cfg.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
    };
    cfg.registry = Some(registry);
    let (handle, mut rx) = net::spawn(cfg);
    // The dead instance fails, is named three more times, then --url.
    let evs = until(&mut rx, Duration::from_secs(20), "the fallback", connected).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        4,
        "one failed connect, then three answers naming it: {evs:?}"
    );
    let vias: Vec<bool> = evs
        .iter()
        .filter_map(|e| match e {
            NetEvent::Via { direct } => Some(*direct),
            _ => None,
        })
        .collect();
    assert_eq!(vias, vec![true, false], "{evs:?}");
    assert!(
        evs.iter().any(|e| matches!(
            e,
            NetEvent::Disconnected { reason, .. } if reason.contains("connection refused")
        )),
        "{evs:?}"
    );
    // Now the registry names a live instance: the reconnect goes straight
    // to it, with the session's query (nick, room).
    let live = cluster.server_ws_url(1);
    *answers.lock().unwrap() = vec![live];
    handle.request(Request::Reconnect).unwrap();
    let evs = until(
        &mut rx,
        Duration::from_secs(15),
        "the direct connect",
        connected,
    )
    .await;
    assert!(
        evs.iter()
            .any(|e| matches!(e, NetEvent::Via { direct: true })),
        "{evs:?}"
    );
    let Some(NetEvent::Connected { app_id, nick, .. }) = evs.last() else {
        unreachable!()
    };
    assert_eq!(app_id, &cluster.app_id(1));
    assert_eq!(nick, "regtest");
    let evs = until(&mut rx, Duration::from_secs(5), "the join", |e| {
        matches!(e, NetEvent::Frame(ServerFrame::Joined { .. }))
    })
    .await;
    assert!(
        matches!(evs.last(), Some(NetEvent::Frame(ServerFrame::Joined { room, .. })) if room == "lobby")
    );
    handle.shutdown(Duration::from_secs(1)).await;
}
