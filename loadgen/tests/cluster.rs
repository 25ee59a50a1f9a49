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
