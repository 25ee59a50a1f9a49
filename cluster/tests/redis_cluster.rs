//! The Redis Cluster topology on real processes: six nodes on loopback
//! (three masters, three replicas), no chat servers (the server does not
//! support Redis Cluster yet). A key written to the master of its slot
//! survives `redis_failover_slot`: the master's replica takes the slot
//! over with the key; the failover time is printed.

use std::time::{Duration, Instant};

use chat_cluster::redis_cluster::{self, SLOTS};
use chat_cluster::resp::{self, Reply};
use chat_cluster::{key_slot, Cluster, ClusterOptions, RedisTopology};

const T: Duration = Duration::from_secs(2);

fn redis_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        servers: 0,
        redis: RedisTopology::Cluster,
        ..Default::default()
    })
    .expect("Redis Cluster starts (needs redis-server, redis-cli and haproxy installed)")
}

#[test]
fn chat_servers_are_refused_in_cluster_mode() {
    let err = Cluster::start(ClusterOptions {
        servers: 1,
        redis: RedisTopology::Cluster,
        ..Default::default()
    })
    .expect_err("servers do not support Redis Cluster yet");
    assert!(
        format!("{err:#}").contains("the server does not support Redis Cluster yet"),
        "{err:#}"
    );
    assert_eq!(
        "cluster".parse::<RedisTopology>().unwrap(),
        RedisTopology::Cluster
    );
    assert_eq!(RedisTopology::Cluster.to_string(), "cluster");
}

#[test]
fn killing_a_slot_master_promotes_its_replica_with_the_data() {
    let mut c = redis_cluster();
    let addrs = c.cluster_node_addrs();
    assert_eq!(addrs.len(), 6);
    assert!(c.redis_node_pids().iter().all(Option::is_some));

    // Three masters and three replicas, one per master, all slots served.
    let view = redis_cluster::cluster_nodes(&addrs[0]).unwrap();
    assert_eq!(view.len(), 6, "{view:?}");
    let masters = c.cluster_masters().unwrap();
    assert_eq!(masters.len(), 3, "{view:?}");
    let replicas: Vec<_> = view.iter().filter(|e| e.is_replica()).collect();
    assert_eq!(replicas.len(), 3, "{view:?}");
    let served: usize = view
        .iter()
        .flat_map(|e| &e.slots)
        .map(|&(a, b)| usize::from(b - a) + 1)
        .sum();
    assert_eq!(served, usize::from(SLOTS));
    for slot in [0, 5460, 5461, 10922, 10923, SLOTS - 1] {
        assert!(masters.contains(&c.cluster_master_for_slot(slot).unwrap()));
    }

    // Write the key to its master and wait until its replica has it.
    let key = "{room:lobby}:messages";
    let slot = key_slot(key);
    let old = c.cluster_master_for_slot(slot).unwrap();
    let old_id = view.iter().find(|e| e.addr == old).unwrap().id.clone();
    let replica = view
        .iter()
        .find(|e| e.master_id.as_deref() == Some(old_id.as_str()))
        .expect("the slot's master has a replica")
        .addr
        .clone();
    let replies =
        resp::pipeline(&old, &[&["SET", key, "kept"], &["WAIT", "1", "2000"]], T).unwrap();
    assert_eq!(replies[0], Reply::Simple("OK".into()));
    assert_eq!(
        replies[1],
        Reply::Int(1),
        "the replica acknowledged the write"
    );

    // Kill the master; its replica must own the slot, with the key.
    let killed_at = Instant::now();
    assert_eq!(c.redis_failover_slot(slot).unwrap(), old);
    let deadline = killed_at + Duration::from_secs(15);
    let new = loop {
        if let Ok(m) = redis_cluster::cluster_nodes(&replica) {
            if m.iter()
                .any(|e| e.addr == replica && e.is_live_master() && e.owns(slot))
            {
                break replica.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica took slot {slot} over within 15s of killing {old}: {:?}",
            redis_cluster::cluster_nodes(&replica)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed_at.elapsed();
    println!(
        "redis cluster failover: killed {old} (slot {slot}), {new} took it over after {} ms",
        took.as_millis()
    );
    assert_ne!(new, old);
    let role = resp::command_ok(&new, &["ROLE"], T).unwrap();
    assert_eq!(role.items()[0].text().as_deref(), Some("master"));
    let v = resp::command_ok(&new, &["GET", key], T).unwrap();
    assert_eq!(v.text().as_deref(), Some("kept"));
}
