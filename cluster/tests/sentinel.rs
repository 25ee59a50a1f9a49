//! The Sentinel topology on real processes: a master, two replicas and
//! three sentinels on loopback, no chat servers (the test talks RESP to
//! Redis directly, so it does not depend on the servers' sentinel flags).
//! Killing the master with `redis_failover()` makes the sentinels promote
//! a replica that kept the data; the failover time is printed.

use std::time::{Duration, Instant};

use chat_cluster::resp::{self, Reply};
use chat_cluster::sentinel::{self, master_addr_from};
use chat_cluster::{state, Cluster, ClusterOptions, RedisTopology};

const T: Duration = Duration::from_secs(2);

fn sentinel_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        servers: 0,
        redis: RedisTopology::Sentinel,
        ..Default::default()
    })
    .expect("sentinel cluster starts (needs redis-server and haproxy installed)")
}

fn role(addr: &str) -> String {
    let r = resp::command_ok(addr, &["ROLE"], T).unwrap();
    r.items()[0].text().unwrap()
}

#[test]
fn sentinel_topology_starts_and_is_consistent() {
    let c = sentinel_cluster();
    let nodes = c.redis_node_addrs();
    let sentinels = c.sentinel_addrs();
    assert_eq!(nodes.len(), 3);
    assert_eq!(sentinels.len(), 3);
    assert!(c.redis_node_pids().iter().all(Option::is_some));
    assert!(c.sentinel_pids().iter().all(Option::is_some));
    assert_eq!(c.sentinel_master_name(), Some("chat"));
    let master = c.redis_master_addr().unwrap();
    assert_eq!(master, nodes[0], "redis1 starts as the master");
    for s in &sentinels {
        assert_eq!(master_addr_from(s, "chat").unwrap(), master);
    }
    assert_eq!(role(&nodes[0]), "master");
    for n in &nodes[1..] {
        assert_eq!(role(n), "slave", "{n}");
    }
    // The state file another process (`cluster redis-failover`) reads.
    let path = state::write(&c).unwrap();
    let st = state::State::read(&path).unwrap();
    assert_eq!(st.redis, RedisTopology::Sentinel);
    assert_eq!(st.sentinels, sentinels);
    assert_eq!(st.sentinel_master.as_deref(), Some("chat"));
    assert_eq!(st.redis_nodes.len(), 3);
    // A hung master answers nothing until its sleep is over (shorter than
    // the sentinels' down-after, so no failover).
    let hang = Duration::from_millis(900);
    let sent = Instant::now();
    let hung = c.redis_hang_master(hang).unwrap();
    assert_eq!(hung, master);
    let pong = resp::command_ok(&master, &["PING"], T).unwrap();
    let waited = sent.elapsed();
    assert_eq!(pong, Reply::Simple("PONG".into()));
    assert!(
        waited >= Duration::from_millis(400),
        "PING answered after {waited:?}: the master did not sleep"
    );
    assert_eq!(c.redis_master_addr().unwrap(), master, "no failover");
}

#[test]
fn killing_the_master_promotes_a_replica_that_kept_the_data() {
    let mut c = sentinel_cluster();
    let nodes = c.redis_node_addrs();
    let sentinels = c.sentinel_addrs();
    let old = c.redis_master_addr().unwrap();
    resp::command_ok(&old, &["SET", "failover-key", "kept"], T).unwrap();
    // Both replicas have it before the master dies.
    let acked = resp::command_ok(&old, &["WAIT", "2", "2000"], T).unwrap();
    assert_eq!(acked, Reply::Int(2), "both replicas acknowledged the write");

    let killed = c.redis_failover().unwrap();
    let t0 = Instant::now();
    assert_eq!(killed, old);
    let pid_gone = nodes.iter().position(|n| *n == old).unwrap();
    assert_eq!(c.redis_node_pids()[pid_gone], None);

    let (new, first) = sentinel::wait_new_master(&sentinels, "chat", &old, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", c.log_dir().display()));
    assert_ne!(new, old);
    assert!(
        nodes.contains(&new),
        "the new master {new} is one of the former replicas {nodes:?}"
    );
    assert_eq!(role(&new), "master", "{new} answers ROLE as master");
    let v = resp::command_ok(&new, &["GET", "failover-key"], T).unwrap();
    assert_eq!(
        v.text().as_deref(),
        Some("kept"),
        "the new master has the key"
    );

    // The other sentinels learn it from the leader's hello messages.
    let deadline = t0 + Duration::from_secs(15);
    loop {
        let views: Vec<_> = sentinels
            .iter()
            .map(|s| master_addr_from(s, "chat").ok())
            .collect();
        if views.iter().all(|v| v.as_deref() == Some(new.as_str())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinels disagree 15 s after the kill: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = t0.elapsed();
    println!(
        "sentinel failover: kill -9 of {old} -> first sentinel names {new} after {} ms, all three after {} ms",
        first.as_millis(),
        all.as_millis()
    );
    assert!(first < Duration::from_secs(15));

    // The old master comes back as a replica of the new one.
    c.start_redis_node(pid_gone).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while role(&old) != "slave" {
        assert!(
            Instant::now() < deadline,
            "{old} did not rejoin as a replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
