//! `--registry` against the real local cluster (redis-server, three chat
//! servers and HAProxy on ephemeral loopback ports, started by
//! `chat-cluster`): clients ask `GET /connect` through HAProxy and connect
//! straight to the instance it names. Nothing may be lost, messages must
//! cross instances, and the clients must spread over every instance. With
//! a kill -9 the clients of the dead instance come back elsewhere; with a
//! dead registry they fall back to `--url`. Fails (never skips) when
//! redis-server, haproxy or the server binary is missing.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chat_cluster::{Cluster, ClusterOptions};

fn cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions {
        servers: 3,
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server and haproxy: apt-get install redis-server haproxy)");
    wait_all_healthy_in_registry(&c);
    c
}

/// An instance enters the registry unhealthy and says it is healthy at
/// its next heartbeat (2 s): wait for all three, at most 15 s.
fn wait_all_healthy_in_registry(c: &Cluster) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(c.server_addr(0)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            last.clear();
            let _ = s.read_to_string(&mut last);
            if last.matches("\"healthy\":true").count() == 3 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the registry does not list 3 healthy instances within 15 s: {last}");
}

fn json_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "loadgen-registry-{name}-{}.json",
        std::process::id()
    ))
}

/// Run loadgen to the end (at most `limit`), its report and output.
fn run(args: &[&str], json: &std::path::Path, limit: Duration) -> (serde_json::Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--no-tui", "--json"])
        .arg(json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(child.wait_with_output().unwrap(), json)
}

fn finish(out: Output, json: &std::path::Path) -> (serde_json::Value, String) {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "loadgen failed ({:?})\n{text}",
        out.status
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    (r, text)
}

#[test]
fn registry_through_haproxy_connects_direct_spreads_and_loses_nothing() {
    let cluster = cluster();
    let registry = format!("{}/connect", cluster.http_url());
    let json = json_path("spread");
    // Two workers: each asks on its own, and the registry still spreads.
    let (r, out) = run(
        &[
            "--registry",
            &registry,
            "--clients",
            "120",
            "--rooms",
            "3",
            "--senders",
            "6",
            "--rate",
            "60",
            "--duration",
            "3s",
            "--workers",
            "2",
            "--max-lost",
            "0",
            "--max-duplicated",
            "0",
            "--max-out-of-order",
            "0",
            "--max-failed-connections",
            "0",
            "--min-instances",
            "3",
            "--min-cross-instance",
            "1",
        ],
        &json,
        Duration::from_secs(60),
    );
    let k = &r["connections"];
    let d = &r["deliveries"];
    let g = &r["registry"];
    assert_eq!(k["opened"], 120, "{out}");
    assert_eq!(d["lost"], 0, "{out}");
    assert_eq!(d["duplicated"], 0, "{out}");
    assert_eq!(d["out_of_order"], 0, "{out}");
    // 3 rooms of 40, 180 messages: 7200 deliveries.
    assert_eq!(d["expected"], 7200, "{out}");
    assert_eq!(d["received"], 7200, "{out}");
    assert!(d["cross_instance"].as_u64().unwrap() > 1000, "{out}");
    // Every client connected straight to an instance; none through HAProxy.
    assert_eq!(g["connects_direct"], 120, "{out}");
    assert_eq!(g["connects_via_url"], 0, "{out}");
    assert_eq!(g["answers"], 120, "{out}");
    assert_eq!(g["asks"], 120, "{out}");
    assert!(g["failures"].as_object().unwrap().is_empty(), "{out}");
    assert_eq!(g["app_id_mismatches"], 0, "{out}");
    // Spread: least-loaded first, so each of the 3 instances has about a
    // third (the two workers ask at the same time, so allow some skew).
    let per = k["per_app_id"].as_object().unwrap();
    assert_eq!(per.len(), 3, "{out}");
    for (app, n) in per {
        let n = n.as_u64().unwrap();
        assert!((25..=55).contains(&n), "{app} has {n} of 120\n{out}");
        assert_eq!(g["direct_per_app_id"][app].as_u64(), Some(n), "{out}");
    }
    // The human report says how they got in.
    assert!(out.contains("registry http://"), "{out}");
    assert!(out.contains("direct") && out.contains("proxied"), "{out}");
    assert_eq!(g["ask_us"]["count"], 120, "{out}");
}

#[test]
fn registry_reconnect_after_a_kill_9_goes_elsewhere_and_loses_nothing() {
    let mut cluster = cluster();
    let registry = format!("{}/connect", cluster.http_url());
    let json = json_path("kill");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--registry",
            &registry,
            "--clients",
            "90",
            "--rooms",
            "3",
            "--senders",
            "6",
            "--rate",
            "60",
            "--duration",
            "8s",
            "--grace",
            "3s",
            "--reconnect",
            "--reconnect-timeout",
            "20s",
            "--max-lost",
            "0",
            "--max-duplicated",
            "0",
            "--max-out-of-order",
            "0",
            "--max-failed-connections",
            "0",
            "--min-instances",
            "3",
            "--no-tui",
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // app2's heartbeat stays in the registry for a while: the clients must
    // not loop on it.
    cluster.kill_server(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (r, out) = finish(child.wait_with_output().unwrap(), &json);
    let k = &r["connections"];
    let d = &r["deliveries"];
    let g = &r["registry"];
    assert_eq!(k["opened"], 90, "{out}");
    let lost_sockets = k["disconnects"].as_u64().unwrap();
    assert!(lost_sockets > 0, "{out}");
    assert_eq!(k["reconnects"], k["disconnects"], "{out}");
    assert_eq!(k["dropped"], 0, "{out}");
    // Every client app2 held came back on another instance.
    assert_eq!(k["app_id_changes"], k["reconnects"], "{out}");
    assert!(
        k["app_id_transitions"]
            .as_object()
            .unwrap()
            .keys()
            .all(|t| t.starts_with("app2→") && !t.ends_with("app2")),
        "{out}"
    );
    assert_eq!(d["lost"], 0, "{out}");
    assert_eq!(d["duplicated"], 0, "{out}");
    assert_eq!(d["out_of_order"], 0, "{out}");
    // All direct, first connects and resumes alike.
    assert_eq!(
        g["connects_direct"].as_u64().unwrap(),
        90 + lost_sockets,
        "{out}"
    );
    assert_eq!(g["connects_via_url"], 0, "{out}");
    // Bounded: no client asked more than a handful of times per outage.
    let asks = g["asks"].as_u64().unwrap();
    assert!(asks <= 90 + lost_sockets * 16, "{asks} asks\n{out}");
}

#[test]
fn a_dead_registry_falls_back_to_url_after_three_failures() {
    let cluster = cluster();
    // A loopback port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = format!("http://{}/connect", dead.local_addr().unwrap());
    drop(dead);
    let json = json_path("fallback");
    let (r, out) = run(
        &[
            "--registry",
            &registry,
            "--url",
            &cluster.ws_url(),
            "--clients",
            "30",
            "--rooms",
            "2",
            "--senders",
            "2",
            "--rate",
            "20",
            "--duration",
            "1s",
            "--max-lost",
            "0",
            "--max-failed-connections",
            "0",
        ],
        &json,
        Duration::from_secs(60),
    );
    let g = &r["registry"];
    assert_eq!(r["connections"]["opened"], 30, "{out}");
    assert_eq!(r["deliveries"]["lost"], 0, "{out}");
    assert_eq!(g["failures"]["refused"], 90, "{out}");
    assert_eq!(g["answers"], 0, "{out}");
    assert_eq!(g["url_fallbacks"], 30, "{out}");
    assert_eq!(g["connects_via_url"], 30, "{out}");
    assert_eq!(g["connects_direct"], 0, "{out}");
    assert!(out.contains("failed refused 90"), "{out}");

    // Without --url there is nothing to fall back to: the run fails, and
    // says why, within the connect timeout.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--registry",
            &registry,
            "--clients",
            "3",
            "--connect-timeout",
            "2s",
            "--duration",
            "1s",
            "--no-tui",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(text.contains(&registry), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");
}

#[test]
fn https_registry_is_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--registry", "https://127.0.0.1:8443/connect", "--no-tui"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("https:// is not supported"), "{err}");
}
