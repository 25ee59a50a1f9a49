//! Bad input fails the request or the connection with a reason; the
//! server and everyone else's chat carry on.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A bystander on another instance keeps chatting.
async fn still_chatting(bystander: &mut Client, peer: &mut Client, tag: &str) {
    peer.say(tag, tag).await;
    let got = bystander.messages(1).await;
    assert_eq!(got[0]["text"], tag, "bystander still receives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_binary_and_oversized_input() {
    let c = cluster_async(
        2,
        &["--max-message-bytes", "100", "--max-frame-bytes", "1000"],
    )
    .await;
    let mut bystander = Client::joined(&format!("{}?room=b&nick=by", c.server_ws_url(1))).await;
    let mut peer = Client::joined(&format!("{}?room=b&nick=peer", c.server_ws_url(0))).await;
    let mut bad = Client::joined(&format!("{}?room=b&nick=bad", c.server_ws_url(0))).await;

    let cases = [
        (r#"{"type":"send","text":}"#.to_string(), "bad_json"),
        (r#"{"type":"dance","id":"d1"}"#.to_string(), "unknown_type"),
        (r#"{"type":"send"}"#.to_string(), "bad_frame"),
        (
            r#"{"type":"join","room":"no spaces"}"#.to_string(),
            "invalid_room",
        ),
        (
            r#"{"type":"nick","nick":"<b>"}"#.to_string(),
            "invalid_nick",
        ),
        (
            r#"{"type":"leave","room":"elsewhere"}"#.to_string(),
            "not_in_room",
        ),
        (
            r#"{"type":"send","room":"elsewhere","text":"x"}"#.to_string(),
            "not_in_room",
        ),
        (
            json!({"type":"send","text":"x".repeat(101),"id":"big"}).to_string(),
            "message_too_large",
        ),
        (
            json!({"type":"send","text":"","id":"e"}).to_string(),
            "empty_message",
        ),
    ];
    for (frame, code) in &cases {
        bad.send_text(frame).await;
        let e = bad.until("error").await;
        assert_eq!(e["code"], *code, "for {frame}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let e = {
        bad.send(json!({"type":"send","text":"y".repeat(200),"id":"m-7"}))
            .await;
        bad.until("error").await
    };
    assert_eq!(e["id"], "m-7", "errors carry the send's id");
    bad.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(bad.until("error").await["code"], "binary_unsupported");
    still_chatting(&mut bystander, &mut peer, "after errors").await;
    // The bad client is still connected and can chat too.
    bad.say("i am fine", "ok1").await;
    assert_eq!(bystander.messages(1).await[0]["text"], "i am fine");

    // A frame over max-frame-bytes closes that connection with 1009.
    bad.send_text(&"z".repeat(3000)).await;
    let (code, reason) = bad.closed(T).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("limit"), "{reason}");
    still_chatting(&mut bystander, &mut peer, "after oversize").await;
    // A huge frame is cut off at the protocol layer; the server survives.
    let mut huge = Client::joined(&format!("{}?room=b&nick=huge", c.server_ws_url(0))).await;
    let _ = huge
        .ws
        .send(Message::Text("h".repeat(1_000_000).into()))
        .await;
    let (code, _) = huge.closed(T).await;
    assert!(code == 1009 || code == 1006, "{code}");
    still_chatting(&mut bystander, &mut peer, "after huge").await;

    // Bad query parameters refuse the upgrade with 400 and a reason.
    let err = tokio_tungstenite::connect_async(format!("{}?room=a%20b", c.server_ws_url(0)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let (code, body) = get(c.server_addr(0), "/ws?nick=%3Cx%3E").await;
    assert!(code == 400 || code == 426 || code == 405, "{code} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_gets_rate_limited_then_closed_with_1008() {
    let c = cluster_async(2, &["--rate", "5", "--burst", "5", "--flood-strikes", "30"]).await;
    let mut bystander = Client::joined(&format!("{}?room=f&nick=by", c.server_ws_url(1))).await;
    let mut peer = Client::joined(&format!("{}?room=f&nick=peer", c.server_ws_url(0))).await;
    let mut flooder = Client::joined(&format!("{}?room=f&nick=fl", c.server_ws_url(0))).await;
    for i in 0..200 {
        if flooder
            .ws
            .send(Message::Text(format!("spam {i}").into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut rate_limited = 0;
    let code = loop {
        match tokio::time::timeout(T, futures_util::StreamExt::next(&mut flooder.ws))
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => rate_limited += 1,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("flooder ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(rate_limited >= 20, "{rate_limited} rate_limited errors");
    // The bystander saw at most the burst of spam, and chat goes on.
    let mut spam = 0;
    while let Some(f) = bystander.try_next(Duration::from_millis(300)).await {
        if f["type"] == "message" {
            spam += 1;
        }
    }
    assert!(spam <= 6, "{spam} spam messages got through");
    still_chatting(&mut bystander, &mut peer, "after flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_instance_refuses_upgrades_with_503() {
    let c = cluster_async(1, &["--max-connections", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::joined(&c.server_ws_url(0)).await);
    }
    let err = tokio_tungstenite::connect_async(c.server_ws_url(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // Through HAProxy the refusal is retried, then still refused: no crash.
    let err = tokio_tungstenite::connect_async(c.ws_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // A freed slot is usable again.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::joined(&c.server_ws_url(0)).await;
    again.say("room for one more", "x").await;
    assert_eq!(again.messages(1).await[0]["text"], "room for one more");
    let (_, metrics) = get(c.server_addr(0), "/metrics").await;
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_connections_rejected_full_total{app_id=\"app1\"} "))
        .expect("metric present")
        .parse()
        .unwrap();
    assert!(rejected >= 2, "{rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rooms_and_leave() {
    let c = cluster_async(1, &["--max-rooms", "2"]).await;
    let mut a = Client::joined(&format!("{}?room=r1", c.server_ws_url(0))).await;
    a.send(json!({"type":"join","room":"r2"})).await;
    a.until("joined").await;
    a.send(json!({"type":"join","room":"r3"})).await;
    assert_eq!(a.until("error").await["code"], "too_many_rooms");
    a.send(json!({"type":"leave","room":"r2"})).await;
    assert_eq!(a.until("left").await["room"], "r2");
    // Plain text now goes to r1, the remaining current room.
    a.send_text("back in r1").await;
    let m = a.messages(1).await;
    assert_eq!(m[0]["room"], "r1");
    a.send(json!({"type":"leave","room":"r1"})).await;
    a.until("left").await;
    a.send_text("nowhere").await;
    assert_eq!(a.until("error").await["code"], "not_in_room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_with_4001_and_answering_ones_stay() {
    let c = cluster_async(1, &["--ping-interval", "200ms", "--idle-timeout", "700ms"]).await;
    let mut silent = Client::joined(&c.server_ws_url(0)).await;
    let mut alive = Client::joined(&c.server_ws_url(0)).await;
    // `alive` reads (and so answers pings) for 1.5 s; `silent` does not.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        let _ = alive.try_next(Duration::from_millis(100)).await;
    }
    let (code, reason) = silent.closed(T).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    alive.say("still here", "a1").await;
    assert_eq!(alive.messages(1).await[0]["text"], "still here");
}
