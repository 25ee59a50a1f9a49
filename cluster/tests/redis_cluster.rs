//! The Redis Cluster topology on real processes: six nodes on loopback
//! (three masters, three replicas). No real chat server runs here (the
//! server's own tests cover it on a Redis Cluster): a stand-in records the
//! arguments the launcher gives it. A key written to the master of its
//! slot survives `redis_failover_slot`: the master's replica takes the
//! slot over with the key; the failover time is printed. `cluster
//! redis-failover --room` does the same from another process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chat_cluster::procs::haproxy_path;
use chat_cluster::redis_cluster::{self, SLOTS};
use chat_cluster::resp::{self, Reply};
use chat_cluster::state::{self, State};
use chat_cluster::{key_slot, room_slot, Cluster, ClusterOptions, RedisTopology};

const T: Duration = Duration::from_secs(2);

fn redis_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        servers: 0,
        redis: RedisTopology::Cluster,
        ..Default::default()
    })
    .expect("Redis Cluster starts (needs redis-server, redis-cli and haproxy installed)")
}

/// A stand-in for the chat server in `dir`: it writes its arguments to
/// `<dir>/<app id>.args`, one a line, and answers 200 to every HTTP
/// request on its `--listen` address (an HAProxy that only does that), so
/// the launcher sees it healthy.
fn fake_server(dir: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
dir=$(dirname "$0")
prev=
for a in "$@"; do
    case "$prev" in
        --listen) listen=$a ;;
        --app-id) app=$a ;;
    esac
    prev=$a
done
printf '%s\n' "$@" > "$dir/$app.args"
cat > "$dir/$app.cfg" <<EOF
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
frontend fake
    bind $listen
    http-request return status 200
EOF
exec {haproxy} -db -f "$dir/$app.cfg"
"#,
        haproxy = haproxy_path().display()
    );
    let path = dir.join("fake-server");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn recorded_args(dir: &Path, app_id: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{app_id}.args")))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The launcher starts servers on a Redis Cluster and gives them every
/// node as `--redis-cluster` (a per-server override keeps `--redis-url`).
#[test]
fn servers_get_every_cluster_node_as_redis_cluster() {
    assert_eq!(
        "cluster".parse::<RedisTopology>().unwrap(),
        RedisTopology::Cluster
    );
    assert_eq!(RedisTopology::Cluster.to_string(), "cluster");

    let bin_dir = chat_cluster::procs::temp_dir("fake-server").unwrap();
    let mut c = Cluster::start(ClusterOptions {
        servers: 2,
        redis: RedisTopology::Cluster,
        server_bin: Some(fake_server(&bin_dir)),
        ..Default::default()
    })
    .expect("a Redis Cluster with (stand-in) servers starts");
    let nodes = c.cluster_node_addrs();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes, c.redis_node_addrs());
    for i in 0..c.len() {
        let args = recorded_args(&bin_dir, &c.app_id(i));
        assert_eq!(
            value_of(&args, "--redis-cluster"),
            Some(nodes.join(",").as_str()),
            "{args:?}"
        );
        assert_eq!(value_of(&args, "--app-id"), Some(c.app_id(i).as_str()));
        assert_eq!(value_of(&args, "--listen"), Some(c.server_addr(i).as_str()));
        for absent in [
            "--redis-url",
            "--redis-sentinels",
            "--redis-sentinel-master",
        ] {
            assert!(!args.iter().any(|a| a == absent), "{absent}: {args:?}");
        }
        assert_eq!(
            c.server_redis_args(i),
            ["--redis-cluster".to_string(), nodes.join(",")]
        );
    }

    // A per-server override still gives a plain --redis-url.
    let url = "redis://127.0.0.1:1/".to_string();
    c.set_server_redis_url(1, Some(url.clone()));
    c.stop_server(1).unwrap();
    c.start_server(1).unwrap();
    let args = recorded_args(&bin_dir, &c.app_id(1));
    assert_eq!(
        value_of(&args, "--redis-url"),
        Some(url.as_str()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--redis-cluster"), "{args:?}");
    c.wait_all_up(Duration::from_secs(10)).unwrap();
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
    assert_eq!(
        redis_cluster::settled_master_for_slot(&addrs, slot).unwrap(),
        old
    );
    assert_eq!(c.redis_failover_slot(slot).unwrap(), old);
    let (new, took) = redis_cluster::wait_new_master(&addrs, slot, &old, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", c.log_dir().display()));
    assert_eq!(new, replica, "the slot's replica took it over");
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

/// `cluster redis-failover --state FILE --room NAME`, from another process
/// as a user would run it, kills the master of the room's slot (found
/// through the state file) and waits for its replica to take the slot over.
#[test]
fn redis_failover_command_kills_the_master_of_a_rooms_slot() {
    let c = redis_cluster();
    let path = state::write(&c).unwrap();
    let st = State::read(&path).unwrap();
    assert_eq!(st.redis, RedisTopology::Cluster);
    let addrs: Vec<String> = st.redis_nodes.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(addrs, c.cluster_node_addrs());
    assert!(st.redis_nodes.iter().all(|(_, pid)| pid.is_some()));

    // A room's keys hash on the room's name (the hash tag).
    let slot = room_slot("lobby");
    assert_eq!(slot, key_slot("chat:{lobby}:msgs"));
    assert_eq!(slot, key_slot("lobby"));
    let old = c.cluster_master_for_slot(slot).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["redis-failover", "--state"])
        .arg(&path)
        .args(["--room", "lobby"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}; logs in {}",
        String::from_utf8_lossy(&out.stderr),
        c.log_dir().display()
    );
    println!("{}", stdout.trim());
    let prefix = format!("killed master {old} of slot {slot}, room \"lobby\" (SIGKILL); ");
    let new = stdout
        .strip_prefix(&prefix)
        .and_then(|r| r.split_once(" took the slot over after "))
        .map(|(new, _)| new.to_string())
        .unwrap_or_else(|| panic!("{stdout:?} does not start with {prefix:?}"));
    assert_ne!(new, old);
    assert!(addrs.contains(&new), "{new}");
    assert!(resp::command(&old, &["PING"], T).is_err(), "{old} is dead");
    let role = resp::command_ok(&new, &["ROLE"], T).unwrap();
    assert_eq!(role.items()[0].text().as_deref(), Some("master"));

    // --room needs a Redis Cluster.
    let single = path.with_file_name("single.json");
    std::fs::write(&single, r#"{"redis":"single","redis_nodes":[]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["redis-failover", "--state"])
        .arg(&single)
        .args(["--room", "lobby"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--room needs a Redis Cluster"), "{err}");
}
