//! `--reconnect` against the real local cluster (redis-server, three chat
//! servers and HAProxy on ephemeral loopback ports, started by
//! `chat-cluster`) while one instance is killed with `kill -9`: the clients
//! it held reconnect through HAProxy, resume their rooms with `since` and
//! `epoch`, and retry unconfirmed sends with the same id, so nothing may be
//! lost, duplicated or reordered. Fails (never skips) when redis-server,
//! haproxy or the server binary is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_cluster::{Cluster, ClusterOptions};

#[test]
fn reconnect_through_a_kill_9_loses_nothing() {
    let mut cluster = Cluster::start(ClusterOptions {
        servers: 3,
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server and haproxy: apt-get install redis-server haproxy)");
    let json = std::env::temp_dir().join(format!("loadgen-reconnect-{}.json", std::process::id()));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            &cluster.ws_url(),
            "--clients",
            "90",
            "--rooms",
            "4",
            "--senders",
            "8",
            "--rate",
            "80",
            "--duration",
            "8s",
            "--grace",
            "3s",
            "--reconnect",
            "--reconnect-timeout",
            "15s",
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
    // Mid-send: every client has joined (90 at 1000/s) and messages flow.
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill_server(1);
    // Bounded: the run takes ~12 s; give it 45 s before calling it hung.
    let deadline = Instant::now() + Duration::from_secs(45);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen did not finish within 45 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed ({:?})\n{stdout}\n{stderr}",
        out.status
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let k = &r["connections"];
    let d = &r["deliveries"];
    assert_eq!(k["opened"], 90, "{stdout}");
    assert!(k["reconnects"].as_u64().unwrap() > 0, "{stdout}");
    // Every socket that app2 held was lost and came back (elsewhere).
    assert_eq!(k["reconnects"], k["disconnects"], "{stdout}");
    assert_eq!(k["dropped"], 0, "{stdout}");
    assert_eq!(k["app_id_changes"], k["reconnects"], "{stdout}");
    assert!(
        k["app_id_transitions"]
            .as_object()
            .unwrap()
            .keys()
            .all(|t| t.starts_with("app2→")),
        "{stdout}"
    );
    assert_eq!(d["lost"], 0, "{stdout}");
    assert_eq!(d["duplicated"], 0, "{stdout}");
    assert_eq!(d["out_of_order"], 0, "{stdout}");
    assert_eq!(d["announced_lost"], 0, "{stdout}");
    assert_eq!(r["sends"]["unconfirmed"], 0, "{stdout}");
    assert!(d["expected"].as_u64().unwrap() > 10_000, "{stdout}");
    assert!(r["recovery_us"]["count"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(r["frames"]["unrecognized"], 0, "{stdout}");
    let timeline = r["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .map(|p| p["reconnects"].as_u64().unwrap())
            .sum::<u64>()
            > 0,
        "{stdout}"
    );
    assert!(stdout.contains("reconnects"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
