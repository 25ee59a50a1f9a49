//! The network actor against a tiny in-test WebSocket server on loopback:
//! resume with `since` after a drop, deduplication of the replay overlap,
//! the outbox sent once after catch-up, refused sends retried with the same
//! id, a `reset` to a new epoch, offline on a policy close or a refused
//! upgrade, and a silent server taken for dead; the token on every
//! connect (from the flag or re-read from a file), a 401 that says why,
//! and close 4003 (token expired) that stops the retries.

use std::time::Duration;

use chat_protocol::{ChatMessage, ClientFrame, Limits, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request as HsRequest, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tui_client::net::{self, Backoff, NetConfig, NetEvent, NetHandle, Request};

type Ws = WebSocketStream<TcpStream>;

const LIMIT: Duration = Duration::from_secs(5);

fn limits() -> Limits {
    Limits::DEFAULT
}

fn config(addr: &str) -> NetConfig {
    let mut cfg = NetConfig::new(&format!("ws://{addr}/ws"), "alice", "lobby");
    cfg.history = 0;
    cfg.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
    };
    cfg
}

async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Accept one WebSocket; returns it with the request's path and query.
// The callback's error type is tungstenite's HTTP response, by its API.
#[allow(clippy::result_large_err)]
async fn accept(l: &TcpListener) -> (Ws, String) {
    let (tcp, _) = timeout(LIMIT, l.accept())
        .await
        .expect("no connection")
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &HsRequest, resp: Response| {
        let _ = tx.send(req.uri().to_string());
        Ok(resp)
    })
    .await
    .unwrap();
    (ws, rx.recv().await.unwrap())
}

async fn send(ws: &mut Ws, f: ServerFrame) {
    ws.send(Message::Text(f.to_json().into())).await.unwrap();
}

fn welcome(app: &str) -> ServerFrame {
    ServerFrame::Welcome {
        app_id: app.into(),
        conn_id: format!("{app}-c"),
        nick: "alice".into(),
        room: "lobby".into(),
        protocol: 1,
        limits: limits(),
    }
}

fn msg(offset: u64, id: Option<&str>) -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: "lobby".into(),
        offset,
        epoch: "e1".into(),
        nick: "bob".into(),
        text: format!("m{offset}"),
        app_id: "appX".into(),
        ts: 0,
        id: id.map(str::to_string),
        action: false,
    })
}

/// The next client frame that is not a ping.
async fn client_frame(ws: &mut Ws) -> ClientFrame {
    loop {
        let m = timeout(LIMIT, ws.next())
            .await
            .expect("client silent")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let f: ClientFrame = serde_json::from_str(&t).unwrap();
            if !matches!(f, ClientFrame::Ping { .. }) {
                return f;
            }
        }
    }
}

/// Events until `pred` matches (inclusive).
async fn events_until(
    rx: &mut mpsc::Receiver<NetEvent>,
    pred: impl Fn(&NetEvent) -> bool,
) -> Vec<NetEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = timeout(LIMIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {seen:#?}"))
            .expect("worker stopped");
        let done = pred(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn offsets(evs: &[NetEvent]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| match e {
            NetEvent::Frame(ServerFrame::Message(m)) => Some(m.offset),
            _ => None,
        })
        .collect()
}

fn is_msg(offset: u64) -> impl Fn(&NetEvent) -> bool {
    move |e| matches!(e, NetEvent::Frame(ServerFrame::Message(m)) if m.offset == offset)
}

async fn start(addr: &str) -> (NetHandle, mpsc::Receiver<NetEvent>) {
    net::spawn(config(addr))
}

#[tokio::test]
async fn resumes_from_the_last_offset_without_duplicates_and_resends_the_outbox_once() {
    let (l, addr) = listen().await;
    let (handle, mut rx) = start(&addr).await;

    // First instance: three messages, then a hard drop.
    let (mut a, uri) = accept(&l).await;
    assert!(
        uri.contains("nick=alice") && uri.contains("room=lobby"),
        "{uri}"
    );
    assert!(!uri.contains("since="), "{uri}");
    send(&mut a, welcome("app1")).await;
    send(
        &mut a,
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 0,
            epoch: "e1".into(),
            recovered: None,
        },
    )
    .await;
    for o in 1..=3 {
        send(&mut a, msg(o, None)).await;
    }
    let evs = events_until(&mut rx, is_msg(3)).await;
    assert!(evs
        .iter()
        .any(|e| matches!(e, NetEvent::Connected { app_id, .. } if app_id == "app1")));
    assert_eq!(offsets(&evs), vec![1, 2, 3]);
    handle.request(Request::Join("ops".into())).unwrap();
    assert_eq!(
        client_frame(&mut a).await,
        ClientFrame::Join {
            room: "ops".into(),
            since: None,
            epoch: None,
            history: None
        }
    );
    send(
        &mut a,
        ServerFrame::Joined {
            room: "ops".into(),
            head: 7,
            epoch: "e1".into(),
            recovered: None,
        },
    )
    .await;
    handle
        .request(Request::Send {
            room: "lobby".into(),
            text: "x".into(),
            id: "c1".into(),
            action: false,
        })
        .unwrap();
    assert!(
        matches!(client_frame(&mut a).await, ClientFrame::Send { id: Some(i), .. } if i == "c1")
    );
    drop(a);

    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            retry_in, attempt, ..
        } => {
            assert!(
                retry_in.is_some_and(|d| d <= Duration::from_millis(50)),
                "{retry_in:?}"
            );
            assert_eq!(*attempt, 1);
        }
        _ => unreachable!(),
    }
    // A line typed while disconnected waits in the outbox.
    handle
        .request(Request::Send {
            room: "lobby".into(),
            text: "y".into(),
            id: "c2".into(),
            action: false,
        })
        .unwrap();

    // Second instance: the URL resumes lobby, a join resumes ops.
    let (mut b, uri) = accept(&l).await;
    assert!(uri.contains("since=3&epoch=e1"), "{uri}");
    send(&mut b, welcome("app2")).await;
    assert_eq!(
        client_frame(&mut b).await,
        ClientFrame::Join {
            room: "ops".into(),
            since: Some(7),
            epoch: Some("e1".into()),
            history: None
        }
    );
    // Replay overlapping what was seen, and c1 which app1 accepted.
    send(
        &mut b,
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 5,
            epoch: "e1".into(),
            recovered: None,
        },
    )
    .await;
    send(&mut b, msg(3, None)).await;
    send(&mut b, msg(4, Some("c1"))).await;
    send(&mut b, msg(5, None)).await;
    let evs = events_until(&mut rx, is_msg(5)).await;
    assert!(evs
        .iter()
        .any(|e| matches!(e, NetEvent::Connected { app_id, .. } if app_id == "app2")));
    assert_eq!(offsets(&evs), vec![4, 5], "3 was a duplicate");
    // Caught up: only c2 is sent; c1 was in the replay.
    match client_frame(&mut b).await {
        ClientFrame::Send {
            id: Some(id), text, ..
        } => assert_eq!((id.as_str(), text.as_str()), ("c2", "y")),
        other => panic!("expected the queued send, got {other:?}"),
    }
    send(&mut b, msg(6, Some("c2"))).await;
    events_until(&mut rx, is_msg(6)).await;
    // Nothing else is resent.
    assert!(timeout(Duration::from_millis(300), client_frame(&mut b))
        .await
        .is_err());
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_policy_close_goes_offline_until_asked() {
    let (l, addr) = listen().await;
    let (handle, mut rx) = start(&addr).await;
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    a.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Policy,
        reason: "flood".into(),
    })))
    .await
    .unwrap();
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            retry_in: None,
            reason,
            ..
        } => {
            assert!(reason.contains("1008"), "{reason}")
        }
        other => panic!("expected offline, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_millis(400), l.accept())
            .await
            .is_err(),
        "reconnected by itself after a policy close"
    );
    handle.request(Request::Reconnect).unwrap();
    let (mut b, _) = accept(&l).await;
    send(&mut b, welcome("app1")).await;
    events_until(&mut rx, |e| matches!(e, NetEvent::Connected { .. })).await;
}

#[tokio::test]
async fn a_restart_close_reconnects_quickly() {
    let (l, addr) = listen().await;
    let (_handle, mut rx) = start(&addr).await;
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    a.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Restart,
        reason: "shutting down".into(),
    })))
    .await
    .unwrap();
    let (mut b, _) = accept(&l).await;
    send(&mut b, welcome("app2")).await;
    let evs = events_until(
        &mut rx,
        |e| matches!(e, NetEvent::Connected { app_id, .. } if app_id == "app2"),
    )
    .await;
    assert!(evs.iter().any(|e| matches!(
        e,
        NetEvent::Disconnected {
            retry_in: Some(_),
            ..
        }
    )));
}

#[tokio::test]
async fn a_refused_upgrade_says_why_and_goes_offline() {
    let (l, addr) = listen().await;
    let (_handle, mut rx) = start(&addr).await;
    let (mut tcp, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 2048];
    let _ = tcp.read(&mut buf).await.unwrap();
    let body = "nick may not contain '<'";
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(resp.as_bytes()).await.unwrap();
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            retry_in: None,
            reason,
            ..
        } => {
            assert!(reason.contains("400") && reason.contains(body), "{reason}")
        }
        other => panic!("expected offline, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_server_is_taken_for_dead() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.ping_interval = Duration::from_millis(50);
    cfg.dead_after = Duration::from_millis(300);
    let (_handle, mut rx) = net::spawn(cfg);
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    // Keep the socket open but never answer (and never read).
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            reason,
            retry_in: Some(_),
            ..
        } => {
            assert!(reason.contains("no answer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let (_b, _) = accept(&l).await;
    drop(a);
}

#[tokio::test]
async fn rtt_is_measured_with_application_pings() {
    let (l, addr) = listen().await;
    let (_handle, mut rx) = start(&addr).await;
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    let ping = loop {
        let m = timeout(LIMIT, a.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = m {
            if let Ok(ClientFrame::Ping { id, ts }) = serde_json::from_str(&t) {
                break (id, ts);
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    send(
        &mut a,
        ServerFrame::Pong {
            id: ping.0,
            ts: ping.1,
            server_ts: 0,
        },
    )
    .await;
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Rtt(_))).await;
    match evs.last().unwrap() {
        NetEvent::Rtt(d) => assert!(
            *d >= Duration::from_millis(30) && *d < Duration::from_secs(2),
            "{d:?}"
        ),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_room_of_the_command_line_is_joined_on_every_connection() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.more_rooms = vec!["rust".into(), "ops".into()];
    let (_handle, _rx) = net::spawn(cfg);
    for app in ["app1", "app2"] {
        let (mut ws, uri) = accept(&l).await;
        assert!(uri.contains("room=lobby"), "{uri}");
        send(&mut ws, welcome(app)).await;
        for room in ["rust", "ops"] {
            assert!(matches!(
                client_frame(&mut ws).await,
                ClientFrame::Join { room: r, .. } if r == room
            ));
        }
        drop(ws);
    }
}

#[tokio::test]
async fn refused_sends_are_retried_with_the_same_id_until_the_server_has_them() {
    let (l, addr) = listen().await;
    let (handle, mut rx) = start(&addr).await;
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    send(
        &mut a,
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 0,
            epoch: "e1".into(),
            recovered: None,
        },
    )
    .await;
    events_until(&mut rx, |e| {
        matches!(e, NetEvent::Frame(ServerFrame::Joined { .. }))
    })
    .await;
    handle
        .request(Request::Send {
            room: "lobby".into(),
            text: "x".into(),
            id: "c1".into(),
            action: false,
        })
        .unwrap();
    assert!(
        matches!(client_frame(&mut a).await, ClientFrame::Send { id: Some(i), .. } if i == "c1")
    );
    // Not applied (`unavailable`), then maybe applied (`timeout`): both
    // are retried with the same id after a delay.
    for code in [
        chat_protocol::ErrorCode::Unavailable,
        chat_protocol::ErrorCode::Timeout,
    ] {
        send(
            &mut a,
            ServerFrame::Error {
                code,
                message: "redis".into(),
                id: Some("c1".into()),
            },
        )
        .await;
        let started = tokio::time::Instant::now();
        assert!(
            matches!(client_frame(&mut a).await, ClientFrame::Send { id: Some(i), .. } if i == "c1")
        );
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "retried too soon"
        );
    }
    // The timed-out try had gone through: the retry is a duplicate.
    send(
        &mut a,
        ServerFrame::Sent {
            room: "lobby".into(),
            id: "c1".into(),
            offset: 1,
            epoch: "e1".into(),
            duplicate: true,
        },
    )
    .await;
    send(&mut a, msg(1, Some("c1"))).await;
    let evs = events_until(&mut rx, is_msg(1)).await;
    assert!(
        !evs.iter()
            .any(|e| matches!(e, NetEvent::Frame(ServerFrame::Error { .. }))),
        "a retried refusal reached the UI: {evs:?}"
    );
    assert!(evs
        .iter()
        .any(|e| matches!(e, NetEvent::Frame(ServerFrame::Sent { .. }))));
    // Delivered: not sent again.
    assert!(timeout(Duration::from_millis(300), client_frame(&mut a))
        .await
        .is_err());
}

#[tokio::test]
async fn a_reset_passes_and_the_next_offsets_of_the_new_epoch_are_not_duplicates() {
    let (l, addr) = listen().await;
    let (_handle, mut rx) = start(&addr).await;
    let (mut a, _) = accept(&l).await;
    send(&mut a, welcome("app1")).await;
    send(
        &mut a,
        ServerFrame::Joined {
            room: "lobby".into(),
            head: 500,
            epoch: "e1".into(),
            recovered: None,
        },
    )
    .await;
    send(&mut a, msg(501, None)).await;
    send(
        &mut a,
        ServerFrame::Reset {
            room: "lobby".into(),
            epoch: "e2".into(),
            previous: "e1".into(),
            last: 501,
        },
    )
    .await;
    let mut low = msg(7, None);
    if let ServerFrame::Message(m) = &mut low {
        m.epoch = "e2".into();
    }
    send(&mut a, low).await;
    let evs = events_until(&mut rx, is_msg(7)).await;
    assert_eq!(offsets(&evs), vec![501, 7]);
    assert!(evs
        .iter()
        .any(|e| matches!(e, NetEvent::Frame(ServerFrame::Reset { .. }))));
    // Resumed after the last offset seen, now of the new epoch.
    drop(a);
    let (_b, uri) = accept(&l).await;
    assert!(uri.contains("since=7&epoch=e2"), "{uri}");
}

#[tokio::test]
async fn the_token_goes_on_every_connect_and_an_expired_one_stops_the_retries() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.token = Some(net::Token::Fixed("eyJ.a+b/c=.sig".into()));
    let (handle, mut rx) = net::spawn(cfg);
    let (mut a, uri) = accept(&l).await;
    assert!(uri.contains("token=eyJ.a%2Bb%2Fc%3D.sig"), "{uri}");
    send(&mut a, welcome("app1")).await;
    // A restart: the reconnect carries the token again.
    a.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Restart,
        reason: "restart".into(),
    })))
    .await
    .unwrap();
    let (mut b, uri) = accept(&l).await;
    assert!(uri.contains("token=eyJ.a%2Bb%2Fc%3D.sig"), "{uri}");
    send(&mut b, welcome("app2")).await;
    events_until(
        &mut rx,
        |e| matches!(e, NetEvent::Connected { app_id, .. } if app_id == "app2"),
    )
    .await;
    b.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4003),
        reason: "token_expired".into(),
    })))
    .await
    .unwrap();
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            retry_in: None,
            reason,
            ..
        } => assert!(
            reason.starts_with("token expired: give a new token"),
            "{reason}"
        ),
        other => panic!("expected offline, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_millis(400), l.accept())
            .await
            .is_err(),
        "retried with the expired token"
    );
    handle.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_token_file_is_read_again_on_every_connect() {
    let (l, addr) = listen().await;
    let path = std::env::temp_dir().join(format!("tui-net-token-{}", std::process::id()));
    std::fs::write(&path, "first\n").unwrap();
    let mut cfg = config(&addr);
    cfg.token = Some(net::Token::File(path.clone()));
    let (handle, mut rx) = net::spawn(cfg);
    let (mut a, uri) = accept(&l).await;
    assert!(uri.ends_with("token=first"), "{uri}");
    send(&mut a, welcome("app1")).await;
    events_until(&mut rx, |e| matches!(e, NetEvent::Connected { .. })).await;
    std::fs::write(&path, "second\n").unwrap();
    handle.request(Request::Reconnect).unwrap();
    let (_b, uri) = accept(&l).await;
    assert!(uri.ends_with("token=second"), "{uri}");
    std::fs::remove_file(&path).unwrap();
    handle.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_refused_token_says_why_from_the_body() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.token = Some(net::Token::Fixed("old".into()));
    let (_handle, mut rx) = net::spawn(cfg);
    let (mut tcp, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 2048];
    let _ = tcp.read(&mut buf).await.unwrap();
    let body = "401 token expired\n";
    let resp = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(resp.as_bytes()).await.unwrap();
    let evs = events_until(&mut rx, |e| matches!(e, NetEvent::Disconnected { .. })).await;
    match evs.last().unwrap() {
        NetEvent::Disconnected {
            retry_in: None,
            reason,
            ..
        } => assert_eq!(reason, "not authorized (401): token expired"),
        other => panic!("expected offline, got {other:?}"),
    }
}
