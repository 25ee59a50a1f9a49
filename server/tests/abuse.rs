//! Abuse limits (issue 10), on real processes: connections per client
//! address (`--max-connections-per-ip`, `--trusted-proxies`) and the rate of
//! `join`, `leave` and `nick` frames (`--membership-rate`), each with a
//! bystander still chatting.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket client connecting from source address `src`, with an
/// optional `X-Forwarded-For`.
async fn connect_from(url: &str, src: &str, xff: Option<&str>) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let tcp = sock.connect(host.parse().unwrap()).await.unwrap();
    let mut req = url.into_client_request().unwrap();
    if let Some(xff) = xff {
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(
        T,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("connect in time")
    .unwrap_or_else(|e| panic!("connect {url} from {src}: {e}"));
    let mut c = Client {
        ws,
        welcome: Value::Null,
    };
    c.welcome = c.next().await;
    assert_eq!(c.welcome["type"], "welcome");
    c.until("joined").await;
    c.until("members").await;
    c
}

/// `a` says `text`; `b` receives it (and `a` its own copy). A message that
/// never comes fails the read's timeout.
async fn chat(a: &mut Client, b: &mut Client, text: &str) {
    a.say(text, &format!("id-{text}")).await;
    for c in [b, a] {
        // Earlier messages to this room may come first.
        while c.until("message").await["text"] != text {}
    }
}

/// Upgrade from `src` until it is let in (a closed connection frees its
/// slot a moment after the close).
async fn upgrade_until_101(addr: &str, src: &str, headers: &str) {
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = upgrade_raw(addr, Some(src), "", headers).await;
        if status == 101 {
            return;
        }
        assert_eq!(status, 429, "{body}");
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_peer_address_are_capped() {
    // 127.0.0.1 is not a trusted proxy here, so the TCP peer counts.
    let cluster = cluster_async(
        1,
        &[
            "--max-connections-per-ip",
            "3",
            "--trusted-proxies",
            "192.0.2.1",
        ],
    )
    .await;
    let addr = cluster.server_addr(0);
    let url = format!("{}?room=abuse", cluster.server_ws_url(0));
    let mut bystander = connect_from(&url, "127.0.0.2", None).await;
    let mut a = connect_from(&url, "127.0.0.1", None).await;
    let _b = connect_from(&url, "127.0.0.1", None).await;
    let c = connect_from(&url, "127.0.0.1", None).await;

    let (status, body) = upgrade_raw(&addr, Some("127.0.0.1"), "", "").await;
    assert_eq!(status, 429, "the 4th connection of 127.0.0.1: {body}");
    assert!(
        body.contains("too many connections from 127.0.0.1") && body.contains("at most 3"),
        "the body says why: {body:?}"
    );
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let (status, _) = upgrade_raw(
        &addr,
        Some("127.0.0.1"),
        "",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(
        status, 429,
        "X-Forwarded-For of an untrusted peer is ignored"
    );

    // Everyone already in keeps chatting, both ways.
    chat(&mut a, &mut bystander, "still here").await;
    chat(&mut bystander, &mut a, "me too").await;

    // Another address is unaffected: the bystander's holds 1 of 3.
    let _d = connect_from(&url, "127.0.0.2", None).await;
    let _e = connect_from(&url, "127.0.0.3", None).await;

    // Closing one frees its slot.
    drop(c);
    upgrade_until_101(&addr, "127.0.0.1", "").await;

    let (_, metrics) = get(addr.clone(), "/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("chat_connections_rejected_per_ip_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the refusal counter is exported");
    assert!(refused >= 2, "{refused} refusals counted");
    chat(&mut a, &mut bystander, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_forwards_the_client_address() {
    // Defaults: 127.0.0.1 is a trusted proxy, so X-Forwarded-For counts and
    // its connections without the header are not counted at all.
    let cluster = cluster_async(1, &["--max-connections-per-ip", "3"]).await;
    let addr = cluster.server_addr(0);
    let url = format!("{}?room=abuse", cluster.server_ws_url(0));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&url, "127.0.0.1", Some("198.51.100.1, 203.0.113.7")).await);
    }
    let (status, body) = upgrade_raw(
        &addr,
        Some("127.0.0.1"),
        "",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(status, 429, "the 4th of 203.0.113.7: {body}");
    assert!(body.contains("203.0.113.7"), "{body:?}");
    // Only the last address counts: 198.51.100.1 holds nothing.
    let _other = connect_from(&url, "127.0.0.1", Some("198.51.100.1")).await;
    // The proxy itself, without the header, is never refused.
    let mut bare = Vec::new();
    for _ in 0..5 {
        bare.push(connect_from(&url, "127.0.0.1", None).await);
    }
    // Through the cluster's HAProxy (which appends 127.0.0.1): more than 3
    // from one client address are refused there too, and a bystander
    // connected straight keeps chatting.
    let mut bystander = bare.pop().unwrap();
    let mut through = Vec::new();
    for _ in 0..3 {
        through.push(Client::joined(&format!("{}?room=abuse", cluster.ws_url())).await);
    }
    let (status, body) = upgrade_raw(&cluster.addr(), Some("127.0.0.1"), "", "").await;
    assert_eq!(status, 429, "the 4th through HAProxy: {body}");
    chat(&mut through[0], &mut bystander, "via haproxy").await;
    chat(&mut bystander, &mut held[0], "straight").await;
    drop(held.pop());
    upgrade_until_101(&addr, "127.0.0.1", "X-Forwarded-For: 203.0.113.7\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_rate_limited() {
    // The per-frame limit is raised so that only the membership limit acts
    // on this flood.
    let cluster = cluster_async(
        1,
        &[
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--membership-rate",
            "5",
            "--membership-burst",
            "20",
        ],
    )
    .await;
    let url = cluster.server_ws_url(0);
    let mut bystander = Client::joined(&format!("{url}?room=busy&nick=bystander")).await;
    let mut talker = Client::joined(&format!("{url}?room=busy&nick=talker")).await;
    // Its opening join (room side) took one of the 20.
    let mut flooder = Client::joined(&format!("{url}?room=side&nick=flooder")).await;
    // Presence of the talker's own join may still be on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while bystander
        .try_next(Duration::from_millis(100))
        .await
        .is_some()
    {}

    let start = Instant::now();
    for i in 0..50 {
        flooder.send(json!({"type":"join","room":"busy"})).await;
        flooder.send(json!({"type":"leave","room":"busy"})).await;
        if i == 25 {
            // The bystander keeps chatting in the middle of the flood.
            talker.say("mid-flood", "m1").await;
        }
    }
    flooder.send(json!({"type":"ping","id":"end"})).await;
    let mut limited = 0;
    let mut applied = 0;
    loop {
        let f = flooder.next().await;
        match f["type"].as_str().unwrap() {
            "error" if f["code"] == "rate_limited" => limited += 1,
            "joined" | "left" => applied += 1,
            // A leave after a refused join: admitted, not in the room.
            "error" if f["code"] == "not_in_room" => applied += 1,
            "pong" if f["id"] == "end" => break,
            _ => {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = 19.0 + 5.0 * elapsed + 1.0;
    assert!(
        applied as f64 <= allowed,
        "{applied} membership frames applied in {elapsed:.2}s (at most {allowed:.1})"
    );
    assert!(applied >= 19, "the burst was applied: {applied}");
    assert!(limited >= 100 - allowed as usize, "{limited} refused");
    assert_eq!(limited + applied, 100, "every frame was answered once");

    // The bystander got the mid-flood message, and no more presence than
    // the frames applied.
    talker.say("after-flood", "m2").await;
    let mut presence = 0;
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let f = bystander.next().await;
        match f["type"].as_str().unwrap() {
            "presence" if f["nick"] == "flooder" => presence += 1,
            "message" => texts.push(f["text"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    assert_eq!(texts, ["mid-flood", "after-flood"]);
    assert!(
        presence <= applied,
        "{presence} presence frames for {applied} applied changes"
    );
    assert!(presence > 0, "the applied joins were announced");

    // The flooder was not disconnected, and after a pause may join again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    flooder.send(json!({"type":"join","room":"busy"})).await;
    flooder.until("joined").await;
    // A nick change counts too: the bucket is nearly empty again after a
    // burst of renames.
    for i in 0..10 {
        flooder
            .send(json!({"type":"nick","nick":format!("flood{i}")}))
            .await;
    }
    let mut nick_limited = 0;
    flooder.send(json!({"type":"ping","id":"end2"})).await;
    loop {
        let f = flooder.next().await;
        if f["type"] == "error" && f["code"] == "rate_limited" {
            nick_limited += 1;
        }
        if f["type"] == "pong" && f["id"] == "end2" {
            break;
        }
    }
    assert!(nick_limited >= 5, "{nick_limited} renames refused");
    chat(&mut talker, &mut bystander, "still chatting").await;
}
