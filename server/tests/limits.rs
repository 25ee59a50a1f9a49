//! Abuse limits that protect Redis (issue 10), on real processes: the
//! member list costs a page, not the room (`--members-list-max`).

mod common;

use common::*;
use serde_json::{json, Value};

/// A plain connection to the cluster's Redis.
async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// How many times Redis ran `cmd` since the last `CONFIG RESETSTAT`.
async fn calls(r: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(r)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_in_a_big_room_is_one_page_without_hgetall() {
    let c = cluster_async(1, &["--members-list-max", "50", "--auth", "off"]).await;
    let mut r = redis_conn(&c.redis_url()).await;
    let mut a = Client::joined(&format!("{}?room=huge&nick=ann", c.server_ws_url(0))).await;
    // 499 more members of the same live instance, recorded directly.
    let key = "chat:{huge}:members";
    let vals: Vec<String> = redis::cmd("HVALS")
        .arg(key)
        .query_async(&mut r)
        .await
        .unwrap();
    let mine: Value = serde_json::from_str(&vals[0]).unwrap();
    let mut hset = redis::cmd("HSET");
    hset.arg(key);
    for i in 0..499 {
        let entry =
            json!({"nick": format!("f{i:03}"), "app_id": mine["app_id"], "boot": mine["boot"]});
        hset.arg(format!("fake{i}")).arg(entry.to_string());
    }
    let _: u64 = hset.query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut r)
        .await
        .unwrap();

    a.send(json!({"type": "who", "room": "huge"})).await;
    let m = a.until("members").await;
    let listed = m["members"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.len() <= 50,
        "{} listed",
        listed.len()
    );
    assert_eq!(m["total"], 500, "the full count");
    let nicks: Vec<&str> = listed.iter().map(|x| x["nick"].as_str().unwrap()).collect();
    let mut sorted = nicks.clone();
    sorted.sort();
    assert_eq!(nicks, sorted, "the page is sorted by nick");

    // A joiner's member list is one page too.
    let mut b = Client::connect(&format!("{}?room=huge&nick=bob", c.server_ws_url(0))).await;
    let m = b.until("members").await;
    assert!(m["members"].as_array().unwrap().len() <= 50, "{m}");
    assert_eq!(m["total"], 501);

    assert_eq!(
        calls(&mut r, "hgetall").await,
        0,
        "no HGETALL for who or join"
    );
    assert!(calls(&mut r, "hscan").await > 0, "the page came from HSCAN");
    // A bystander still chats.
    a.say("still here", "s1").await;
    let got = b.until("message").await;
    assert_eq!(got["text"], "still here");
}

/// Everything a resume gets until `n` messages arrived: frame types in
/// order, and the messages.
async fn resume_frames(c: &mut Client, n: usize) -> (Vec<Value>, Vec<Value>) {
    let mut frames = Vec::new();
    let mut msgs = Vec::new();
    while msgs.len() < n {
        let f = c.next().await;
        if f["type"] == "message" {
            msgs.push(f.clone());
        }
        frames.push(f);
    }
    (frames, msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_paged_and_capped_with_a_gap_first() {
    let c = cluster_async(
        1,
        &[
            "--history",
            "1000",
            "--max-replay",
            "150",
            "--rate",
            "1000",
            "--burst",
            "1000",
        ],
    )
    .await;
    let url = c.server_ws_url(0);
    let mut a = Client::joined(&format!("{url}?room=far&nick=ann")).await;
    for i in 0..300 {
        a.say(&format!("m{i}"), &format!("a{i}")).await;
    }
    let msgs = a.messages(300).await;
    let first = msgs[0]["offset"].as_u64().unwrap();
    let head = msgs[299]["offset"].as_u64().unwrap();
    let epoch = msgs[0]["epoch"].as_str().unwrap().to_string();

    // From far back: a gap for what lies beyond the cap, then the last 150
    // (two pages), in order, and nothing else.
    let mut late = Client::connect(&format!(
        "{url}?room=far&nick=bob&since={first}&epoch={epoch}"
    ))
    .await;
    let (frames, got) = resume_frames(&mut late, 150).await;
    let joined = frames.iter().find(|f| f["type"] == "joined").unwrap();
    assert_eq!(joined["recovered"], true);
    let gaps: Vec<&Value> = frames.iter().filter(|f| f["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{frames:?}");
    assert_eq!(gaps[0]["from"].as_u64().unwrap(), first + 1);
    assert_eq!(gaps[0]["to"].as_u64().unwrap(), head - 150);
    let gap_at = frames.iter().position(|f| f["type"] == "gap").unwrap();
    let first_msg = frames.iter().position(|f| f["type"] == "message").unwrap();
    assert!(gap_at < first_msg, "the gap comes before the messages");
    assert_increasing(&got);
    assert_eq!(got[0]["offset"].as_u64().unwrap(), head - 149);
    // Sends of one connection may be published out of send order; what
    // counts is offset order, as the sender saw it live.
    let offsets = |v: &[Value]| v.iter().map(|m| m["offset"].clone()).collect::<Vec<_>>();
    assert_eq!(offsets(&got), offsets(&msgs[150..]));
    assert_eq!(texts(&got), texts(&msgs[150..]));
    assert!(late
        .try_next(std::time::Duration::from_millis(300))
        .await
        .is_none_or(|f| f["type"] != "message"));

    // Within the cap: no gap, every message after `since` (a page and a
    // bit), exactly as before.
    let since = head - 120;
    let mut near = Client::connect(&format!(
        "{url}?room=far&nick=cat&since={since}&epoch={epoch}"
    ))
    .await;
    let (frames, got) = resume_frames(&mut near, 120).await;
    assert!(frames.iter().all(|f| f["type"] != "gap"), "{frames:?}");
    assert_eq!(got[0]["offset"].as_u64().unwrap(), since + 1);
    assert_eq!(texts(&got), texts(&msgs[180..]));
    assert_increasing(&got);

    // history=N is capped too.
    let mut h = Client::connect(&format!("{url}?room=far&nick=dan&history=500")).await;
    let (_, got) = resume_frames(&mut h, 150).await;
    assert_eq!(texts(&got), texts(&msgs[150..]));
    assert!(h
        .try_next(std::time::Duration::from_millis(300))
        .await
        .is_none_or(|f| f["type"] != "message"));

    // history=N within the cap: the last N, read in two pages, in order.
    let mut h2 = Client::connect(&format!("{url}?room=far&nick=eve&history=120")).await;
    let (frames, got) = resume_frames(&mut h2, 120).await;
    assert!(frames.iter().all(|f| f["type"] != "gap"), "{frames:?}");
    assert_eq!(texts(&got), texts(&msgs[180..]));
    assert_increasing(&got);

    // A bystander still chats, live after the replay.
    a.say("live", "live1").await;
    assert_eq!(late.until("message").await["text"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_expire_and_a_resume_is_told() {
    let c = cluster_async(1, &["--room-ttl", "2s"]).await;
    let url = c.server_ws_url(0);
    let mut r = redis_conn(&c.redis_url()).await;
    let keys = ["chat:{idle}:seq", "chat:{idle}:log", "chat:{idle}:epoch"];
    let mut a = Client::joined(&format!("{url}?room=idle&nick=ann")).await;
    a.say("before", "b1").await;
    let m = a.until("message").await;
    let (offset, epoch) = (
        m["offset"].as_u64().unwrap(),
        m["epoch"].as_str().unwrap().to_string(),
    );
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut r).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 2000,
            "{k} expires within --room-ttl: {ttl}"
        );
    }
    // A room that is used keeps its keys.
    let mut bystander = Client::joined(&format!("{url}?room=busy&nick=bob")).await;
    drop(a);
    for i in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        bystander.say(&format!("b{i}"), &format!("b{i}")).await;
        assert_eq!(bystander.until("message").await["text"], format!("b{i}"));
    }
    for k in keys {
        let n: u64 = redis::cmd("EXISTS")
            .arg(k)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(n, 0, "{k} expired");
    }
    let n: u64 = redis::cmd("EXISTS")
        .arg("chat:{busy}:log")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(n, 1, "a room with messages keeps its history");
    // The old epoch is gone: a resume is told so.
    let mut back = Client::connect(&format!(
        "{url}?room=idle&nick=ann&since={offset}&epoch={epoch}"
    ))
    .await;
    let j = back.until("joined").await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_ne!(j["epoch"], epoch.as_str());
    back.say("after", "a1").await;
    let m = back.until("message").await;
    assert_eq!(m["text"], "after");
    assert_ne!(m["epoch"], epoch.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_capped_by_bytes_with_a_gap_on_resume() {
    let c = cluster_async(
        1,
        &[
            "--history",
            "1000",
            "--history-bytes",
            "32KiB",
            "--rate",
            "1000",
            "--burst",
            "1000",
        ],
    )
    .await;
    let url = c.server_ws_url(0);
    let mut r = redis_conn(&c.redis_url()).await;
    let mut a = Client::joined(&format!("{url}?room=fat&nick=ann")).await;
    let mut bystander = Client::joined(&format!("{url}?room=fat&nick=bob")).await;
    let text = "x".repeat(300);
    let sent = 320usize;
    for i in 0..sent {
        a.say(&format!("{i:03}{text}"), &format!("a{i}")).await;
    }
    let msgs = a.messages(sent).await;
    assert_eq!(
        bystander.messages(sent).await.len(),
        sent,
        "the bystander got them all"
    );
    let first = msgs[0]["offset"].as_u64().unwrap();
    let epoch = msgs[0]["epoch"].as_str().unwrap().to_string();

    // Invariant: the log's Redis memory stays near the cap (it is checked
    // every 16th offset, so at most 15 frames of ~400 bytes above it),
    // whatever the count cap allows.
    let len: u64 = redis::cmd("XLEN")
        .arg("chat:{fat}:log")
        .query_async(&mut r)
        .await
        .unwrap();
    let used: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("chat:{fat}:log")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(
        (16..=90).contains(&len),
        "about 32 KiB of ~400-byte frames: {len} entries, {used} bytes"
    );
    assert!(
        used <= 32 * 1024 + 15 * 600,
        "{used} bytes of Redis memory for {len} entries"
    );
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("chat:{fat}:log")
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(entries.len() as u64, len);
    assert!(
        entries[entries.len() - 1]
            .0
            .starts_with(&format!("{}-", first + sent as u64 - 1)),
        "the newest stays"
    );

    // A resume from before what history holds gets a gap, then the rest.
    let mut late = Client::connect(&format!(
        "{url}?room=fat&nick=cat&since={first}&epoch={epoch}"
    ))
    .await;
    let gap = late.until("gap").await;
    assert_eq!(gap["from"].as_u64().unwrap(), first + 1);
    let kept = gap["to"].as_u64().unwrap();
    assert_eq!(
        kept + len,
        first + sent as u64 - 1,
        "the gap ends where history begins"
    );
    let rest = late.messages(len as usize).await;
    assert_eq!(rest[0]["offset"].as_u64().unwrap(), kept + 1);
    assert_eq!(texts(&rest), texts(&msgs[sent - len as usize..]));
}

/// Invariant: with `--archive-backlog`, history never trims an entry the
/// archiver has not stored (above the `archived` watermark of the room)
/// until the log holds `--history` plus the backlog; past that the oldest
/// go, and every one of them is counted (`overflow`, metric), never
/// dropped silently. Once stored, history is back to `--history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_what_the_archiver_has_not_stored_up_to_the_backlog() {
    let c = cluster_async(
        1,
        &[
            "--history",
            "20",
            "--archive-backlog",
            "50",
            "--rate",
            "1000",
            "--burst",
            "1000",
        ],
    )
    .await;
    let url = c.server_ws_url(0);
    let mut r = redis_conn(&c.redis_url()).await;
    let mut a = Client::joined(&format!("{url}?room=arch&nick=ann")).await;
    let xlen = |r: &mut redis::aio::MultiplexedConnection| {
        let mut r = r.clone();
        async move {
            redis::cmd("XLEN")
                .arg("chat:{arch}:log")
                .query_async::<u64>(&mut r)
                .await
                .unwrap()
        }
    };
    for i in 0..40 {
        a.say(&format!("m{i}"), &format!("a{i}")).await;
    }
    let msgs = a.messages(40).await;
    assert_eq!(xlen(&mut r).await, 40, "nothing archived: all 40 stay");
    // The archiver stored the first 30.
    let stored = msgs[29]["offset"].as_u64().unwrap();
    let _: () = redis::cmd("HSET")
        .arg("chat:{arch}:epoch")
        .arg("archived")
        .arg(stored)
        .query_async(&mut r)
        .await
        .unwrap();
    a.say("next", "n1").await;
    a.messages(1).await;
    assert_eq!(
        xlen(&mut r).await,
        20,
        "stored entries go down to --history"
    );
    // The archiver stops: the log grows to history + backlog, then counts.
    for i in 0..100 {
        a.say(&format!("late{i}"), &format!("l{i}")).await;
    }
    a.messages(100).await;
    assert_eq!(xlen(&mut r).await, 70, "--history 20 plus a backlog of 50");
    let overflow: u64 = redis::cmd("HGET")
        .arg("chat:{arch}:epoch")
        .arg("overflow")
        .query_async(&mut r)
        .await
        .unwrap();
    // 11 unarchived after the watermark, 100 more: 111, of which 70 stay.
    assert_eq!(overflow, 41, "every unarchived entry trimmed is counted");
    // The echo comes back through pub/sub, possibly before the publish
    // call that counts the overflow has returned: poll, bounded.
    let want = "chat_archive_overflow_total{app_id=\"app1\"} 41";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get(c.server_addr(0), "/metrics").await.1;
        if metrics.contains(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(want),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("overflow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
