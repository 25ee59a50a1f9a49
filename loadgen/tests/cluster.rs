//! Against the real local cluster (redis-server, three chat servers and
//! HAProxy on ephemeral loopback ports, started by `chat-cluster`): the
//! smoke preset must see zero loss and deliveries that cross instances.
//! Fails (never skips) when redis-server, haproxy or the server binary is
//! missing, with what to install.

use std::process::Command;

use chat_cluster::{Cluster, ClusterOptions};

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
}

#[test]
fn smoke_preset_through_haproxy_has_no_loss_and_crosses_instances() {
    let cluster = Cluster::start(ClusterOptions {
        servers: 3,
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server and haproxy: apt-get install redis-server haproxy)");
    let dir = std::env::temp_dir().join(format!("loadgen-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let hgrm = dir.join("latency.hgrm");
    let out = loadgen()
        .args([
            "--preset",
            "smoke",
            "--url",
            &cluster.ws_url(),
            "--min-instances",
            "3",
            "--min-cross-instance",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--no-tui")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed ({:?})\n{stdout}\n{stderr}",
        out.status
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let d = &r["deliveries"];
    assert_eq!(r["connections"]["opened"], 60, "{stdout}");
    assert_eq!(r["connections"]["failed"], 0);
    assert_eq!(
        r["connections"]["per_app_id"].as_object().unwrap().len(),
        3,
        "{stdout}"
    );
    assert_eq!(d["lost"], 0, "{stdout}");
    assert_eq!(d["duplicated"], 0);
    assert_eq!(d["out_of_order"], 0);
    // 60 clients in 4 rooms of 15, 400 messages: 6000 deliveries.
    assert_eq!(r["sends"]["sent"], 400, "{stdout}");
    assert_eq!(d["expected"], 6000, "{stdout}");
    assert_eq!(d["received"], 6000);
    assert!(d["cross_instance"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(r["thresholds"]["passed"], true);
    let cells = r["matrix"].as_array().unwrap();
    assert!(cells.len() >= 6, "sender × receiver instances: {stdout}");
    assert!(cells
        .iter()
        .all(|c| c["lost"] == 0 && c["count"].as_u64().unwrap() > 0));
    let h = std::fs::read_to_string(&hgrm).unwrap();
    assert!(h.contains("Total count    =         6000]"), "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn direct_to_each_instance_with_two_workers() {
    let cluster = Cluster::start(ClusterOptions {
        servers: 3,
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server and haproxy: apt-get install redis-server haproxy)");
    // One URL per instance: clients are spread round-robin, so APP_IDs are
    // known exactly; two worker processes hold two rooms each.
    let mut cmd = loadgen();
    for i in 0..3 {
        cmd.args(["--url", &cluster.server_ws_url(i)]);
    }
    let out = cmd
        .args([
            "--clients",
            "120",
            "--rooms",
            "4",
            "--senders",
            "8",
            "--rate",
            "80",
            "--duration",
            "2s",
            "--workers",
            "2",
            "--json",
            "-",
            "--max-lost",
            "0",
            "--min-instances",
            "3",
            "--no-tui",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["loadgen"]["processes"], 2);
    assert_eq!(r["connections"]["opened"], 120);
    for app in ["app1", "app2", "app3"] {
        assert_eq!(r["connections"]["per_app_id"][app], 40, "{stderr}");
    }
    // 4 rooms of 30, 160 messages: 4800 deliveries, none lost.
    assert_eq!(r["deliveries"]["expected"], 4800, "{stderr}");
    assert_eq!(r["deliveries"]["lost"], 0, "{stderr}");
    assert!(
        r["deliveries"]["cross_instance"].as_u64().unwrap() >= 3000,
        "{stderr}"
    );
}

#[test]
fn an_instance_stopping_mid_run_is_reported_without_false_loss() {
    let mut cluster = Cluster::start(ClusterOptions {
        servers: 3,
        ..Default::default()
    })
    .expect("starting the local cluster (needs redis-server and haproxy: apt-get install redis-server haproxy)");
    let json = std::env::temp_dir().join(format!("loadgen-stop-{}.json", std::process::id()));
    // Direct URLs: exactly 20 of the 60 clients are on app2.
    let mut cmd = loadgen();
    for i in 0..3 {
        cmd.args(["--url", &cluster.server_ws_url(i)]);
    }
    let child = cmd
        .args([
            "--clients",
            "60",
            "--rooms",
            "4",
            "--senders",
            "8",
            "--rate",
            "80",
            "--duration",
            "6s",
            "--grace",
            "2s",
            "--max-lost",
            "0",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SIGTERM: the instance drains and closes its sockets with 1012.
    let _ = cluster.stop_server(1);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(r["connections"]["opened"], 60, "{stdout}");
    assert_eq!(r["connections"]["dropped"], 20, "{stdout}");
    assert_eq!(r["close_codes"]["1012 service_restart"], 20, "{stdout}");
    // Messages app2's members were owed before it went away were delivered,
    // and nothing after it is counted against them.
    assert_eq!(r["deliveries"]["lost"], 0, "{stdout}");
    let to_app2: u64 = r["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["receiver"] == "app2")
        .map(|c| c["expected"].as_u64().unwrap())
        .sum();
    assert!(to_app2 > 0, "{stdout}");
}
