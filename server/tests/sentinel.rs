//! Redis Sentinel under the servers (issue 8), on real processes: a
//! master, two replicas and three sentinels started by the launcher.
//! Failover under load is in `chaos.rs` (scenarios g and h); this file
//! checks `--redis-wait-replicas`.

mod common;

use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions, RedisTopology};
use common::Client;

fn sentinel_cluster(args: &[&str]) -> Cluster {
    Cluster::start(ClusterOptions {
        servers: 1,
        redis: RedisTopology::Sentinel,
        server_args: args.iter().map(|s| s.to_string()).collect(),
        server_bin: Some(env!("CARGO_BIN_EXE_server").into()),
        server_log: "info,chat_server=debug".into(),
        ..Default::default()
    })
    .expect("sentinel cluster starts (needs redis-server and haproxy installed)")
}

/// Invariant: with `--redis-wait-replicas N` a message is published only
/// after N replicas confirmed it. When they cannot (a replica is down),
/// the send is answered `timeout` and nothing is published; a retry with
/// the same id, once the replicas are back, gets `sent` (the message was
/// appended) and the message reaches members by repair, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_publishes_only_what_the_replicas_have() {
    let mut c = tokio::task::spawn_blocking(|| {
        sentinel_cluster(&[
            "--redis-wait-replicas",
            "2",
            "--redis-wait-timeout",
            "300ms",
        ])
    })
    .await
    .unwrap();
    let url = format!("{}?room=w&nick=ann", c.server_ws_url(0));
    let mut a = Client::joined(&url).await;
    let mut b = Client::joined(&format!("{}?room=w&nick=bob", c.server_ws_url(0))).await;
    a.say("replicated", "w1").await;
    let m = a.messages(1).await.remove(0);
    assert_eq!(m["text"], "replicated");
    assert_eq!(b.messages(1).await[0]["text"], "replicated");
    // Both replicas hold it.
    for addr in c.redis_node_addrs() {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let n = redis_xlen(host, port.parse().unwrap(), "chat:{w}:log");
        assert_eq!(n, 1, "{addr} holds the message");
    }
    // One replica down: the next send cannot be confirmed by two.
    let master = c.redis_master_addr().unwrap();
    let replica = c
        .redis_node_addrs()
        .into_iter()
        .position(|a| a != master)
        .unwrap();
    let pid = c.redis_node_pids()[replica].unwrap();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    a.say("unconfirmed", "w2").await;
    let e = a.until("error").await;
    assert_eq!(e["code"], "timeout", "{e}");
    assert_eq!(e["id"], "w2");
    assert!(
        b.try_next(Duration::from_millis(500)).await.is_none(),
        "nothing was published"
    );
    std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    // The retry finds the appended message: `sent`, and the members get it
    // once, by repair, when the next message shows the hole.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.say("unconfirmed", "w2").await;
    let sent = a.until("sent").await;
    assert_eq!(sent["duplicate"], true);
    a.say("next", "w3").await;
    let got = b.messages(2).await;
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["unconfirmed", "next"]);
    while let Some(f) = b.try_next(Duration::from_millis(300)).await {
        assert_ne!(f["type"], "message", "nothing twice: {f}");
    }
    tokio::task::spawn_blocking(move || c.shutdown())
        .await
        .unwrap();
}

/// `XLEN key` on a Redis node, over a raw RESP connection.
fn redis_xlen(host: &str, port: u16, key: &str) -> i64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let cmd = format!("*2\r\n$4\r\nXLEN\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let reply = std::str::from_utf8(&buf[..n]).unwrap();
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("XLEN reply {reply:?}"))
}
