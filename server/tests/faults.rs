//! Faults: slow consumers, Redis restarts, SIGTERM, kill -9, on real
//! processes.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_never_slows_the_room() {
    // The default queue (512 frames, 1.5 MB of these 3 KB frames) over a
    // 64 KiB kernel buffer: a reader that keeps up never fills it, even on
    // a loaded machine; the one that never reads fills it with 12 MB.
    let c = cluster_async(2, &["--rate", "100000", "--burst", "100000"]).await;
    let url = |i: usize, nick: &str| format!("{}?room=s&nick={nick}", c.server_ws_url(i));
    let mut slow = Client::joined(&url(0, "slow")).await;
    let mut fast = Client::joined(&url(0, "fast")).await;
    let sender = Client::joined(&url(1, "sender")).await;
    // 4000 x 3 KB = 12 MB: more than the kernel buffers of a reader that
    // never reads, sent at a pace a reading client keeps up with.
    let n = 4000;
    let text = "x".repeat(3000);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut last = 0;
        while got < n {
            match tokio::time::timeout(T, fast.ws.next())
                .await
                .expect("fast reader fed in time")
            {
                Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"message\"") => {
                    let off: u64 = t[27..t[27..].find(',').unwrap() + 27].parse().unwrap();
                    assert!(off > last, "in order");
                    last = off;
                    got += 1;
                }
                Some(Ok(Message::Close(f))) => panic!("fast reader closed: {f:?}"),
                Some(Ok(_)) => {}
                other => panic!("fast reader ended: {other:?}"),
            }
        }
        got
    });
    // The sender is a member too: it must read its own echoes.
    let (mut sink, mut echoes) = sender.ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = echoes.next().await {} });
    for i in 0..n {
        let frame = json!({"type":"send","text":text,"id":format!("s{i}")}).to_string();
        sink.send(Message::Text(frame.into())).await.unwrap();
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    assert_eq!(reader.await.unwrap(), n, "the fast member got everything");
    drain.abort();
    // The slow member (which never read) was cut off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        match tokio::time::timeout_at(deadline, slow.ws.next())
            .await
            .expect("slow consumer closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            _ => break 1006,
        }
    };
    let (_, metrics) = get(c.server_addr(0), "/metrics").await;
    assert!(
        metrics.contains("chat_slow_consumer_disconnects_total{app_id=\"app1\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("slow") || l.contains("drops"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The close frame may be lost in the full socket buffer; when it
    // arrives it says why.
    assert!(code == 4000 || code == 1006, "{code}");
}

/// Send one message from `from` and check every client gets it exactly once.
async fn round(from: usize, clients: &mut [Client], tag: &str) -> Vec<u64> {
    clients[from].say(tag, tag).await;
    let mut offsets = Vec::new();
    for c in clients.iter_mut() {
        let m = c.messages(1).await;
        assert_eq!(m[0]["text"], tag);
        offsets.push(m[0]["offset"].as_u64().unwrap());
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_recovers_after_a_redis_restart() {
    let mut c = cluster_async(3, &[]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::joined(&format!("{}?room=rr&nick=c{i}", c.server_ws_url(i))).await);
    }
    let before = round(0, &mut clients, "before").await;
    c = tokio::task::spawn_blocking(move || {
        c.restart_redis().unwrap();
        c
    })
    .await
    .unwrap();
    // Health goes back to 200 once the instances reconnect by themselves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for i in 0..3 {
        loop {
            let (code, _) = get(c.server_addr(i), "/healthz").await;
            if code == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "app{} healthy again in time",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Sends right after may still see the old connection die: retry until
    // accepted, then every member gets every accepted message once.
    let mut accepted = 0;
    for k in 0..3 {
        let tag = format!("after{k}");
        loop {
            clients[k].say(&tag, &tag).await;
            let f = loop {
                let f = clients[k].next().await;
                if f["type"] == "message" || f["type"] == "error" {
                    break f;
                }
            };
            if f["type"] == "message" {
                assert_eq!(f["text"], tag.as_str());
                accepted += 1;
                break;
            }
            // Not applied, or maybe applied: either way the same id retries.
            assert!(f["code"] == "unavailable" || f["code"] == "timeout", "{f}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (j, other) in clients.iter_mut().enumerate() {
            if j != k {
                let m = other.messages(1).await;
                assert_eq!(m[0]["text"], tag.as_str(), "client {j} got {tag}");
                assert!(
                    m[0]["offset"].as_u64().unwrap() > before[j],
                    "offsets never go back"
                );
            }
        }
    }
    assert_eq!(accepted, 3);
    // No stray duplicates.
    for cl in clients.iter_mut() {
        while let Some(f) = cl.try_next(Duration::from_millis(300)).await {
            assert_ne!(f["type"], "message", "unexpected extra message {f}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_redis_is_down() {
    let mut c = cluster_async(1, &[]).await;
    let (code, body) = get(c.server_addr(0), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    c = tokio::task::spawn_blocking(move || {
        c.kill_redis();
        c
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(c.server_addr(0), "/healthz").await;
        if code == 503 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "unavailable");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "503 in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server stays up and answers sends with an explicit error.
    let (code, _) = get(c.server_addr(0), "/metrics").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1012_and_clients_land_elsewhere() {
    let mut c = cluster_async(2, &[]).await;
    let mut a = Client::joined(&format!("{}?room=t&nick=a", c.server_ws_url(0))).await;
    let mut b = Client::joined(&format!("{}?room=t&nick=b", c.server_ws_url(1))).await;
    let stop = tokio::task::spawn_blocking(move || {
        let st = c.stop_server(0);
        (c, st)
    });
    let (code, reason) = a.closed(T).await;
    assert_eq!(code, 1012, "{reason}");
    let (c, status) = stop.await.unwrap();
    assert!(status.unwrap().success(), "clean exit on SIGTERM");
    // Reconnect through HAProxy: only app2 is left.
    tokio::task::spawn_blocking({
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let addr = c.addr();
        move || loop {
            // HAProxy notices the stopped server within a couple of checks.
            if let Ok((200, _)) = chat_cluster::http::get(&addr, "/healthz", Duration::from_secs(1))
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline);
        }
    })
    .await
    .unwrap();
    let mut a2 = Client::joined(&format!("{}?room=t&nick=a", c.ws_url())).await;
    assert_eq!(a2.app_id(), "app2");
    a2.say("back", "a-back").await;
    assert_eq!(b.messages(1).await[0]["text"], "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_cluster_view_across_instances_and_kill_9() {
    let mut c = cluster_async(3, &["--heartbeat", "300ms", "--instance-ttl", "1s"]).await;
    let mut a = Client::joined(&format!("{}?room=p&nick=ann", c.server_ws_url(0))).await;
    let mut b = Client::connect(&format!("{}?room=p&nick=bob", c.server_ws_url(1))).await;
    b.until("joined").await;
    let members = b.until("members").await;
    let nicks: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["nick"].as_str().unwrap())
        .collect();
    assert_eq!(nicks, ["ann", "bob"]);
    let join = loop {
        let p = a.until("presence").await;
        if p["nick"] != "ann" {
            break p;
        }
    };
    assert_eq!(
        (
            join["event"].as_str(),
            join["nick"].as_str(),
            join["app_id"].as_str()
        ),
        (Some("join"), Some("bob"), Some("app2"))
    );
    // Nick change is seen across instances.
    b.send(json!({"type":"nick","nick":"bobby"})).await;
    assert_eq!(b.until("nick").await["old"], "bob");
    let p = a.until("presence").await;
    assert_eq!(
        (
            p["event"].as_str(),
            p["nick"].as_str(),
            p["old_nick"].as_str()
        ),
        (Some("nick"), Some("bobby"), Some("bob"))
    );
    // /cluster lists every live instance with its connections.
    let _c3 = Client::joined(&format!("{}?room=q", c.server_ws_url(2))).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (code, body) = get(c.server_addr(0), "/cluster").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let inst: Vec<(String, u64)> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["app_id"].as_str().unwrap().to_string(),
                i["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        inst,
        [("app1".into(), 1), ("app2".into(), 1), ("app3".into(), 1)],
        "{body}"
    );
    // kill -9 app2: its member leaves, seen by ann on app1.
    c = tokio::task::spawn_blocking(move || {
        c.kill_server(1);
        c
    })
    .await
    .unwrap();
    let leave = loop {
        let f = a.until("presence").await;
        if f["event"] == "leave" {
            break f;
        }
    };
    assert_eq!(leave["nick"], "bobby");
    a.send(json!({"type":"who"})).await;
    let m = a.until("members").await;
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{m}");
    let (_, body) = get(c.server_addr(0), "/cluster").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instances"].as_array().unwrap().len(), 2, "{body}");
}

/// Invariant: a member who reconnected elsewhere before its old instance
/// was declared dead is never announced as `left`; its old connection is
/// dropped from member lists with a `gone` event (keyed by `conn_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_reconnected_elsewhere_is_never_announced_as_left() {
    let mut c = cluster_async(2, &["--heartbeat", "300ms", "--instance-ttl", "1500ms"]).await;
    // A reconnecting client keeps its nick with its `nick_key` while the
    // old connection (on the dead instance) still holds it.
    let ann = Client::joined(&format!(
        "{}?room=fo&nick=ann&nick_key=ann-key-1",
        c.server_ws_url(0)
    ))
    .await;
    let old_conn = ann.welcome["conn_id"].as_str().unwrap().to_string();
    let mut bob = Client::joined(&format!("{}?room=fo&nick=bob", c.server_ws_url(1))).await;
    c = tokio::task::spawn_blocking(move || {
        c.kill_server(0);
        c
    })
    .await
    .unwrap();
    drop(ann);
    // ann's client reconnects at once, to the surviving instance.
    let ann2 = Client::joined(&format!(
        "{}?room=fo&nick=ann&nick_key=ann-key-1",
        c.server_ws_url(1)
    ))
    .await;
    let new_conn = ann2.welcome["conn_id"].as_str().unwrap().to_string();
    // Within the dead instance's TTL plus two beats, the old connection is
    // swept: as `gone`, never as `leave`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let gone = loop {
        assert!(tokio::time::Instant::now() < deadline, "no gone event");
        let Some(f) = bob.try_next(Duration::from_secs(1)).await else {
            continue;
        };
        if f["type"] != "presence" || f["nick"] != "ann" {
            continue;
        }
        assert_ne!(f["event"], "leave", "ann never left: {f}");
        if f["event"] == "gone" {
            break f;
        }
    };
    assert_eq!(gone["conn_id"], old_conn.as_str());
    bob.send(json!({"type":"who"})).await;
    let m = bob.until("members").await;
    let ids: Vec<&str> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["nick"] == "ann")
        .map(|x| x["conn_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [new_conn.as_str()], "{m}");
}

/// Invariant: a Redis that lost its data starts a new epoch for every room;
/// members are told with `reset` before the first message of the new epoch,
/// nothing of the new epoch is dropped as a duplicate, and a resume from
/// the old epoch answers `recovered: false` and still gets what history
/// holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_starts_a_new_epoch_announced_with_reset() {
    let mut c = cluster_async(1, &[]).await;
    let mut a = Client::joined(&format!("{}?room=ep", c.server_ws_url(0))).await;
    a.say("one", "e1").await;
    let m1 = a.messages(1).await.remove(0);
    let (e1, o1) = (
        m1["epoch"].as_str().unwrap().to_string(),
        m1["offset"].as_u64().unwrap(),
    );
    c = tokio::task::spawn_blocking(move || {
        c.restart_redis().unwrap();
        c
    })
    .await
    .unwrap();
    // Retry the same id until it goes through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut frames = Vec::new();
    'send: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "send accepted in time: {frames:?}"
        );
        a.say("two", "e2").await;
        loop {
            let f = a.next().await;
            frames.push(f.clone());
            match f["type"].as_str() {
                Some("message") => break 'send,
                Some("error") => break,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reset = frames
        .iter()
        .find(|f| f["type"] == "reset")
        .unwrap_or_else(|| panic!("a reset before the new epoch's first message: {frames:?}"));
    let m2 = frames.last().unwrap();
    assert_eq!(m2["text"], "two");
    let e2 = m2["epoch"].as_str().unwrap();
    assert_ne!(e2, e1, "a new epoch");
    assert_eq!(reset["previous"], e1.as_str());
    assert_eq!(reset["epoch"], e2);
    assert_eq!(reset["last"], o1);
    // A resume from the old epoch: not recovered, and history is replayed.
    let mut late = Client::connect(&format!(
        "{}?room=ep&since={o1}&epoch={e1}",
        c.server_ws_url(0)
    ))
    .await;
    let j = late.until("joined").await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["epoch"], e2);
    let replay = late.messages(1).await;
    assert_eq!(replay[0]["text"], "two");
    // A resume in the current epoch is recovered and replays nothing old.
    let o2 = m2["offset"].as_u64().unwrap();
    let mut fresh = Client::connect(&format!(
        "{}?room=ep&since={o2}&epoch={e2}",
        c.server_ws_url(0)
    ))
    .await;
    assert_eq!(fresh.until("joined").await["recovered"], true);
    // Presence lost with Redis's data is recorded again by the sessions
    // that are still connected.
    let a_conn = a.welcome["conn_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        fresh.send(json!({"type":"who"})).await;
        let m = fresh.until("members").await;
        let listed = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["conn_id"] == a_conn.as_str());
        if listed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a connection that outlived Redis's data is listed again: {m}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Invariant: a send's id is an idempotency key: a retry of a send that
/// went through is not published again and answers `sent` with the
/// original offset; every member gets the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_published_once() {
    let c = cluster_async(2, &[]).await;
    let mut a = Client::joined(&format!("{}?room=idem&nick=ann", c.server_ws_url(0))).await;
    let mut b = Client::joined(&format!("{}?room=idem&nick=bob", c.server_ws_url(1))).await;
    a.say("hello", "k1").await;
    let first = a.messages(1).await.remove(0);
    a.say("hello", "k1").await;
    let sent = a.until("sent").await;
    assert_eq!(sent["duplicate"], true);
    assert_eq!(sent["id"], "k1");
    assert_eq!(sent["offset"], first["offset"]);
    assert_eq!(sent["epoch"], first["epoch"]);
    // The same id from another nick is another send.
    b.say("hello", "k1").await;
    let got = b.messages(2).await;
    assert_eq!(got[0]["offset"], first["offset"]);
    assert_eq!(got[1]["nick"], "bob");
    while let Some(f) = a.try_next(Duration::from_millis(300)).await {
        if f["type"] == "message" {
            assert_eq!(f["nick"], "bob", "ann's send is delivered once: {f}");
        }
    }
}
