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
