//! Paging back through a room's history against real servers
//! (redis-server, the server binary, HAProxy, started by `chat-cluster`):
//! the network worker fetches `/history` pages from the instance it is
//! connected to, and the state puts them above what the join replayed,
//! until the server says there is nothing older.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_cluster::{Cluster, ClusterOptions};
use chat_protocol::ServerFrame;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use jsonwebtoken::{encode, EncodingKey, Header};
use ratatui::layout::Rect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tui_client::net::{self, Backoff, NetConfig, NetEvent, NetHandle, Request, Token};
use tui_client::state::clock::Clock;
use tui_client::state::older::{Older, BEGINNING, FAILED, LOADING};
use tui_client::state::room::LineKind;
use tui_client::state::{Action, App, Event, Settings};

const SECRET: &str = "tui-client-history-secret";

fn cluster(servers: usize, extra: &[&str]) -> Cluster {
    let mut server_args: Vec<String> = ["--history", "1000", "--rate", "1000", "--burst", "1000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    server_args.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start(ClusterOptions {
        servers,
        server_args,
        ..Default::default()
    })
    .expect("starting a local cluster (needs redis-server, haproxy and the server binary)")
}

fn config(url: &str, nick: &str) -> NetConfig {
    let mut cfg = NetConfig::new(url, nick, "lobby");
    cfg.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(300),
    };
    cfg
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
            Err(_) => {
                let tail = &seen[seen.len().saturating_sub(10)..];
                panic!("no {what} within {limit:?}; the last events: {tail:?}")
            }
        }
    }
}

fn joined(ev: &NetEvent) -> bool {
    matches!(ev, NetEvent::Frame(ServerFrame::Joined { .. }))
}

/// Publish `m1`..`mN` to `lobby` and wait for the last one's echo.
async fn publish(url: &str, n: u32) {
    let mut cfg = config(url, "pub");
    cfg.history = 0;
    let (handle, mut rx) = net::spawn(cfg);
    until(
        &mut rx,
        Duration::from_secs(15),
        "the publisher's join",
        joined,
    )
    .await;
    // In batches: the worker's outbox holds 256 unsent lines.
    for start in (1..=n).step_by(100) {
        let end = (start + 99).min(n);
        for k in start..=end {
            handle
                .request(Request::Send {
                    room: "lobby".into(),
                    text: format!("m{k}"),
                    id: format!("pub-{k}"),
                    action: false,
                })
                .unwrap();
        }
        let last = format!("m{end}");
        until(
            &mut rx,
            Duration::from_secs(30),
            "the batch's last echo",
            |e| matches!(e, NetEvent::Frame(ServerFrame::Message(m)) if m.text == last),
        )
        .await;
    }
    handle.shutdown(Duration::from_secs(1)).await;
}

fn app() -> App {
    let settings = Settings {
        url: "ws://unused/ws".into(),
        nick: "reader".into(),
        room: "lobby".into(),
        more_rooms: Vec::new(),
        scrollback: 10_000,
        clock: Clock::fixed(1_700_000_000_000),
        id_prefix: "r".into(),
    };
    App::new(settings, Rect::new(0, 0, 120, 40), Instant::now())
}

/// Feed network events to the app until `done` holds.
async fn pump(
    app: &mut App,
    rx: &mut mpsc::Receiver<NetEvent>,
    limit: Duration,
    what: &str,
    done: impl Fn(&App) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(app) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                app.update(Event::Net(ev));
            }
            Ok(None) => panic!("the worker stopped while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {limit:?}; the room: {:?}",
                app.room().lines.iter().map(|l| &l.text).collect::<Vec<_>>()
            ),
        }
    }
}

fn carry_out(handle: &NetHandle, actions: Vec<Action>) -> usize {
    let mut asked = 0;
    for a in actions {
        if let Action::Net(r) = a {
            asked += usize::from(matches!(r, Request::History { .. }));
            handle.request(r).unwrap();
        }
    }
    asked
}

fn messages(app: &App) -> Vec<(u64, String)> {
    app.room()
        .lines
        .iter()
        .filter(|l| matches!(l.kind, LineKind::Message { .. }))
        .map(|l| (l.offset.unwrap(), l.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_back_brings_all_300_messages_in_order_once_then_the_beginning() {
    let cluster = cluster(1, &[]);
    publish(&cluster.server_ws_url(0), 300).await;

    // The reader joins with the default small replay (50).
    let cfg = config(&cluster.ws_url(), "reader");
    assert_eq!(cfg.history, 50);
    let (handle, mut rx) = net::spawn(cfg);
    let mut app = app();
    pump(
        &mut app,
        &mut rx,
        Duration::from_secs(15),
        "the replay",
        |a| messages(a).len() == 50,
    )
    .await;
    let ctrl_home = Event::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::CONTROL));
    let page_up = Event::Key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE));
    let mut requests = 0;
    for _ in 0..20 {
        if app.room().older == Older::Done {
            break;
        }
        // To the top, then PageUp there asks for the page before.
        carry_out(&handle, app.update(ctrl_home.clone()));
        requests += carry_out(&handle, app.update(page_up.clone()));
        pump(
            &mut app,
            &mut rx,
            Duration::from_secs(15),
            "a history page",
            |a| a.room().older != Older::Loading,
        )
        .await;
        let failed: Vec<&String> = app
            .room()
            .lines
            .iter()
            .map(|l| &l.text)
            .filter(|t| t.starts_with(FAILED))
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
    }
    assert_eq!(app.room().older, Older::Done);
    // 250 older messages in pages of 100.
    assert_eq!(requests, 3);
    let got = messages(&app);
    let texts: Vec<String> = got.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<String> = (1..=300).map(|k| format!("m{k}")).collect();
    assert_eq!(texts, want, "every message once, in order");
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets increase: {got:?}"
    );
    let lines: Vec<&String> = app.room().lines.iter().map(|l| &l.text).collect();
    let first = lines.iter().position(|t| *t == "m1").unwrap();
    assert_eq!(lines[first - 1], BEGINNING, "{lines:?}");
    assert!(!lines.iter().any(|t| *t == LOADING));
    // Old news: not logged, not rung, not unread.
    assert!(app.log_out.iter().all(|e| !e.text.contains("<pub>")));
    assert!(!app.mentioned);
    assert_eq!(app.room().unread, 0);
    // Nothing more is asked once the beginning is reached.
    carry_out(&handle, app.update(ctrl_home.clone()));
    assert_eq!(carry_out(&handle, app.update(page_up)), 0);
    handle.shutdown(Duration::from_secs(1)).await;
}

/// A stub registry that always names `url`, counting requests.
async fn stub_registry(url: String, hits: Arc<AtomicUsize>) -> String {
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
            let body = format!(r#"{{"url":"{url}","app_id":"x","connections":0}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}/connect")
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("ws://{}/ws", l.local_addr().unwrap())
}

async fn history_answer(
    handle: &NetHandle,
    rx: &mut mpsc::Receiver<NetEvent>,
    room: &str,
) -> Result<net::history::Page, String> {
    handle
        .request(Request::History {
            room: room.into(),
            before: None,
            limit: 10,
        })
        .unwrap();
    let evs = until(rx, Duration::from_secs(20), "the history answer", |e| {
        matches!(e, NetEvent::History { .. })
    })
    .await;
    match evs.into_iter().last() {
        Some(NetEvent::History {
            room: r, result, ..
        }) => {
            assert_eq!(r, room);
            result
        }
        other => unreachable!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_from_the_direct_instance_and_a_dead_server_is_an_error() {
    let cluster = cluster(2, &[]);
    publish(&cluster.server_ws_url(0), 3).await;
    // `--url` leads nowhere: only the registry's instance can answer.
    let hits = Arc::new(AtomicUsize::new(0));
    let registry = stub_registry(cluster.server_ws_url(1), hits.clone()).await;
    let mut cfg = config(&dead_url(), "direct");
    cfg.registry = Some(registry);
    let (handle, mut rx) = net::spawn(cfg);
    until(&mut rx, Duration::from_secs(15), "the join", joined).await;
    let page = history_answer(&handle, &mut rx, "lobby")
        .await
        .expect("a page from the direct instance");
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["m1", "m2", "m3"]);
    assert!(!page.more);
    assert!(hits.load(Ordering::SeqCst) >= 1);
    handle.shutdown(Duration::from_secs(1)).await;

    // No server at all: the worker, reconnecting meanwhile, answers with
    // why, and keeps going.
    let (handle, mut rx) = net::spawn(config(&dead_url(), "nobody"));
    let e = history_answer(&handle, &mut rx, "lobby").await.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    let e = history_answer(&handle, &mut rx, "lobby").await.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    handle.shutdown(Duration::from_secs(1)).await;
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_sends_the_token_and_says_why_a_private_room_is_refused() {
    let cluster = cluster(1, &["--auth", "required", "--jwt-secret", SECRET]);
    let mut cfg = config(&cluster.server_ws_url(0), "");
    cfg.token = Some(Token::Fixed(token("ann")));
    let (handle, mut rx) = net::spawn(cfg);
    until(&mut rx, Duration::from_secs(15), "the join", joined).await;
    // The Bearer token gets in (without it: 401).
    let page = history_answer(&handle, &mut rx, "lobby")
        .await
        .expect("a page with the token");
    assert!(!page.more);
    // Someone else's direct-message room: refused, with the reason.
    let e = history_answer(&handle, &mut rx, "dm.bob.carl")
        .await
        .unwrap_err();
    assert!(e.starts_with("HTTP 403"), "{e}");
    handle.shutdown(Duration::from_secs(1)).await;
}
