//! Cross-instance delivery, ordering, plain text and resume, on a real
//! cluster (redis-server, three servers, HAProxy).

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_gets_every_message_once_in_order_across_instances() {
    let c = cluster_async(3, &[]).await;
    let room = "?room=x&nick=";
    let mut members = Vec::new();
    for i in 0..3 {
        let url = format!("{}{room}m{i}", c.server_ws_url(i));
        members.push(Client::joined(&url).await);
    }
    let ids: Vec<String> = members.iter().map(Client::app_id).collect();
    assert_eq!(ids, ["app1", "app2", "app3"]);
    // Every member sends from its own instance.
    for round in 0..10 {
        for (i, m) in members.iter_mut().enumerate() {
            m.say(&format!("r{round} from {i}"), &format!("{i}-{round}"))
                .await;
        }
    }
    let mut first: Option<Vec<String>> = None;
    for m in members.iter_mut() {
        let msgs = m.messages(30).await;
        assert_increasing(&msgs);
        let got: Vec<String> = msgs
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 30, "exactly once: {got:?}");
        // The same order everywhere.
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f),
        }
        for v in &msgs {
            let sender: usize = v["id"].as_str().unwrap()[..1].parse().unwrap();
            assert_eq!(
                v["app_id"],
                format!("app{}", sender + 1),
                "app_id is the accepting instance"
            );
            assert_eq!(v["room"], "x");
            assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000);
        }
        assert!(m
            .try_next(std::time::Duration::from_millis(200))
            .await
            .is_none_or(|f| f["type"] != "message"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_spreads_connections_and_plain_text_is_chat() {
    let c = cluster_async(3, &[]).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(Client::joined(&format!("{}?room=plain&nick=p{i}", c.ws_url())).await);
    }
    let mut per_app = std::collections::BTreeMap::new();
    for cl in &clients {
        *per_app.entry(cl.app_id()).or_insert(0) += 1;
    }
    assert_eq!(
        per_app.len(),
        3,
        "connections on every instance: {per_app:?}"
    );
    assert!(
        per_app.values().all(|n| *n >= 5),
        "roughly even: {per_app:?}"
    );
    let typed = [
        "hello everyone",
        "{\"text\":\"json without a type\"}",
        "  spaced  ",
        "{oops",
        "日本語 ✓",
    ];
    for t in typed {
        clients[0].send_text(t).await;
    }
    for cl in clients.iter_mut() {
        let msgs = cl.messages(typed.len()).await;
        assert_eq!(texts(&msgs), typed, "delivered as typed");
        assert!(msgs.iter().all(|m| m["nick"] == "p0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_gets_exactly_what_was_missed() {
    let c = cluster_async(2, &[]).await;
    let mut a = Client::joined(&format!("{}?room=r&nick=a", c.server_ws_url(0))).await;
    let mut b = Client::joined(&format!("{}?room=r&nick=b", c.server_ws_url(1))).await;
    for i in 0..5 {
        b.say(&format!("m{i}"), &format!("b{i}")).await;
    }
    let seen = a.messages(5).await;
    let last = seen[4]["offset"].as_u64().unwrap();
    drop(a);
    for i in 5..12 {
        b.say(&format!("m{i}"), &format!("b{i}")).await;
    }
    b.messages(12).await; // all published
                          // Reconnect to the other instance with since.
    let mut a = Client::connect(&format!(
        "{}?room=r&nick=a&since={last}",
        c.server_ws_url(1)
    ))
    .await;
    let joined = a.until("joined").await;
    assert!(joined["head"].as_u64().unwrap() >= last + 7);
    let missed = a.messages(7).await;
    assert_eq!(
        texts(&missed),
        (5..12).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_increasing(&missed);
    // Then live, with no duplicates.
    b.say("live", "b-live").await;
    let live = a.messages(1).await;
    assert_eq!(live[0]["text"], "live");
    // Join frame with since on an open connection works too.
    a.send(json!({"type":"join","room":"r2"})).await;
    a.until("joined").await;
    a.send(json!({"type":"join","room":"r","since": last}))
        .await;
    a.until("joined").await;
    let again = a.messages(8).await;
    assert_eq!(again[0]["text"], "m5");
    assert_eq!(again[7]["text"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_history_gets_a_gap_notice() {
    let c = cluster_async(1, &["--history", "5", "--rate", "1000", "--burst", "1000"]).await;
    let mut a = Client::joined(&format!("{}?room=g", c.server_ws_url(0))).await;
    for i in 0..20 {
        a.say(&format!("m{i}"), &format!("a{i}")).await;
    }
    let msgs = a.messages(20).await;
    let first = msgs[0]["offset"].as_u64().unwrap();
    let mut late = Client::connect(&format!("{}?room=g&since={first}", c.server_ws_url(0))).await;
    late.until("joined").await;
    let gap = late.until("gap").await;
    assert_eq!(gap["from"].as_u64().unwrap(), first + 1);
    let kept = gap["to"].as_u64().unwrap();
    assert!(kept > first && kept < first + 19, "{gap}");
    let rest = late.messages((first + 19 - kept) as usize).await;
    assert_eq!(rest.first().unwrap()["offset"].as_u64().unwrap(), kept + 1);
    assert_eq!(rest.last().unwrap()["text"], "m19");
    // history=N without since replays the last N.
    let mut h = Client::connect(&format!("{}?room=g&history=3", c.server_ws_url(0))).await;
    let last3 = h.messages(3).await;
    assert_eq!(texts(&last3), ["m17", "m18", "m19"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_rooms_list_the_first_members_and_the_total() {
    let c = cluster_async(2, &["--members-list-max", "2"]).await;
    let mut held = Vec::new();
    for (i, nick) in ["dan", "ann", "cat"].iter().enumerate() {
        held.push(
            Client::joined(&format!("{}?room=big&nick={nick}", c.server_ws_url(i % 2))).await,
        );
    }
    let mut last = Client::connect(&format!("{}?room=big&nick=bob", c.server_ws_url(1))).await;
    let m = last.until("members").await;
    let nicks: Vec<&str> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["nick"].as_str().unwrap())
        .collect();
    assert_eq!(nicks, ["ann", "bob"], "sorted by nick, capped: {m}");
    assert_eq!(m["total"], 4);
}

/// Invariant (DELIVERY.md rule 9): one connection's sends are published in
/// the order it sent them, even when hundreds are in flight at once
/// (pipelined past the in-flight window, so the session stops reading and
/// resumes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_pipelined_sends_keep_their_order() {
    let c = cluster_async(1, &["--rate", "5000", "--burst", "5000"]).await;
    let url = c.server_ws_url(0);
    let mut a = Client::joined(&format!("{url}?room=order&nick=ann")).await;
    for round in 0..3 {
        for i in 0..300 {
            a.say(&format!("m{i}"), &format!("r{round}-{i}")).await;
        }
        let msgs = a.messages(300).await;
        assert_increasing(&msgs);
        let got: Vec<String> = msgs
            .iter()
            .map(|v| v["text"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(
            first_bad, None,
            "round {round}: published out of send order: {got:?}"
        );
    }
}
