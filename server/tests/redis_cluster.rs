//! Redis Cluster under the servers (issue 8), on real processes: six
//! `redis-server` nodes (three masters, three replicas) started by the
//! launcher, three instances with `--redis-cluster`, HAProxy. Failover
//! under load is in `chaos.rs` (scenarios i and j).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions, RedisTopology};
use chat_server::store::{room_keys, room_slot};
use common::{assert_increasing, get, texts, Client};

fn redis_cluster(servers: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        servers,
        redis: RedisTopology::Cluster,
        server_args: ["--rate", "200", "--burst", "400"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        server_bin: Some(env!("CARGO_BIN_EXE_server").into()),
        server_log: "info,chat_server=debug".into(),
        ..Default::default()
    })
    .expect("redis cluster starts (needs redis-server, redis-cli and haproxy installed)")
}

fn redis(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(3))
        .unwrap()
}

/// Invariant: every key of a room and its channel land in one hash slot,
/// as Redis itself computes it (`CLUSTER KEYSLOT`), and that slot is the
/// one the server routes the room to. Otherwise the publish script fails
/// with CROSSSLOT, or the room's subscription sits on another master than
/// its messages.
#[test]
fn a_rooms_keys_and_channel_share_a_slot_as_redis_computes_it() {
    let c = redis_cluster(0);
    let mut conn = redis(&c.cluster_node_addrs()[0]);
    let mut rooms: Vec<String> = ["lobby", "c1", "c2", "a", "#ops", "team.eng", "x-_.#9"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    rooms.extend((0..200).map(|i| format!("room-{i}")));
    rooms.push("z".repeat(64));
    let mut slots = HashSet::new();
    for room in &rooms {
        let want = room_slot(room);
        slots.insert(want);
        for key in room_keys(room) {
            let got: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query(&mut conn)
                .unwrap();
            assert_eq!(
                got, want,
                "{key} (room {room:?}) is in slot {got}, not {want}"
            );
        }
    }
    assert!(slots.len() > 100, "rooms spread over many slots");
}

/// Invariant: with `--redis-cluster`, rooms spread over the masters as
/// shard channels; each instance holds one sharded subscriber connection
/// per master (not one per room); every member gets every message once,
/// in order, across instances; and presence, `who` and `/cluster` work
/// without cross-slot commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_the_masters_with_one_subscriber_connection_each() {
    let c = tokio::task::spawn_blocking(|| redis_cluster(3))
        .await
        .unwrap();
    let rooms = ["c1", "c2", "c3", "lobby", "room1", "team.eng"];
    let masters = c.cluster_masters().unwrap();
    assert_eq!(masters.len(), 3);
    let owners: HashSet<String> = rooms
        .iter()
        .map(|r| c.cluster_master_for_slot(room_slot(r)).unwrap())
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "the test's rooms live on all three masters"
    );

    // Two members per room, on different instances.
    let mut members = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for k in 0..2 {
            let url = format!("{}?room={room}&nick=u{i}x{k}", c.server_ws_url((i + k) % 3));
            members.push(Client::joined(&url).await);
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        let m = &mut members[2 * i];
        for n in 0..5 {
            m.say(&format!("{room} {n}"), &format!("{room}-{n}")).await;
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        for k in 0..2 {
            let msgs = members[2 * i + k].messages(5).await;
            assert_increasing(&msgs);
            let want: Vec<String> = (0..5).map(|n| format!("{room} {n}")).collect();
            assert_eq!(texts(&msgs), want, "room {room}, member {k}");
        }
    }

    // Shard channels on every master, each room on its own slot's master.
    for m in &masters {
        let chans: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg("chat:{*}:msgs")
            .query(&mut redis(m))
            .unwrap();
        assert!(!chans.is_empty(), "{m} carries some rooms");
        for ch in &chans {
            let room = ch
                .strip_prefix("chat:{")
                .and_then(|r| r.strip_suffix("}:msgs"))
                .unwrap();
            assert_eq!(
                &c.cluster_master_for_slot(room_slot(room)).unwrap(),
                m,
                "{ch} is subscribed on the master of its slot"
            );
        }
        // One sharded subscriber connection per instance on this master,
        // however many rooms it carries.
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut redis(m))
            .unwrap();
        let sharded = list
            .lines()
            .filter(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("ssub="))
                    .is_some_and(|n| n != "0")
            })
            .count();
        assert_eq!(
            sharded, 3,
            "{m}: one sharded subscriber per instance:\n{list}"
        );
    }

    // Presence across instances: `who` in a room lists both members.
    let m = &mut members[0];
    m.send(serde_json::json!({"type": "who", "room": "c1"}))
        .await;
    let who = m.until("members").await;
    let nicks: HashSet<String> = who["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["nick"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        nicks,
        HashSet::from(["u0x0".to_string(), "u0x1".to_string()])
    );

    // The registry: every instance listed.
    let (code, body) = get(c.server_addr(0), "/cluster").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instances"].as_array().unwrap().len(), 3, "{body}");
    let (code, body) = get(c.server_addr(1), "/healthz").await;
    assert_eq!(code, 200, "{body}");
}
