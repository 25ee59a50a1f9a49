//! The whole `loadgen` binary, as CI and scripts use it: flags, exit codes,
//! `--json -`, `--hgrm`, thresholds, and Ctrl-C still printing the report.
//! The far end is the in-repo relay on an ephemeral loopback port.

use std::process::Output;
use std::time::Duration;

use loadgen::relay::{self, Relay, RelayConfig};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

async fn start_relay(cfg: RelayConfig) -> (Relay, CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    (relay::spawn(l, cfg, stop.clone()).unwrap(), stop)
}

async fn loadgen(args: &[&str]) -> Output {
    let fut = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output();
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("loadgen finishes")
        .unwrap()
}

fn chat() -> RelayConfig {
    RelayConfig {
        chat: true,
        app_ids: vec!["app1".into(), "app2".into(), "app3".into()],
        ..RelayConfig::default()
    }
}

#[test]
fn help_lists_every_flag_scripts_rely_on() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--url",
        "--clients",
        "--rooms",
        "--members",
        "--senders",
        "--rate",
        "--duration",
        "--ramp",
        "--size",
        "--protocol",
        "--app-id-regex",
        "--json",
        "--hgrm",
        "--max-p99",
        "--max-lost",
        "--min-instances",
        "--preset",
        "--workers",
        "--source-ips",
        "--grace",
        "--no-tui",
        "--reconnect",
        "--reconnect-attempts",
        "--reconnect-timeout",
        "--faults",
        "LOADGEN_FAULTS",
        "--jwt-secret",
        "LOADGEN_JWT_SECRET",
        "--jwt-rooms",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for preset in ["smoke", "fanout", "connections"] {
        assert!(help.contains(preset), "{preset}");
    }
}

#[test]
fn bad_flags_exit_2_with_a_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--clients", "2", "--rooms", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("every room needs a member"));
}

#[test]
fn nothing_to_connect_to_exits_2_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--clients",
            "3",
            "--duration",
            "100ms",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no connection could be opened (3 × connect: connection refused)"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_preset_writes_json_to_stdout_and_hgrm() {
    let (r, stop) = start_relay(chat()).await;
    let hgrm = std::env::temp_dir().join(format!("loadgen-cli-{}.hgrm", std::process::id()));
    let url = r.ws_url();
    let out = loadgen(&[
        "--preset",
        "smoke",
        "--duration",
        "1s",
        "--url",
        &url,
        "--json",
        "-",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--min-instances",
        "3",
    ])
    .await;
    stop.cancel();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // stdout holds the JSON document only; the summary went to stderr.
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(j["schema"], "loadgen.report.v1");
    assert_eq!(j["config"]["preset"], "smoke");
    for key in [
        "expected",
        "received",
        "lost",
        "duplicated",
        "out_of_order",
        "cross_instance",
        "per_second",
    ] {
        assert!(j["deliveries"][key].is_number(), "deliveries.{key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            j["latency_us"][key].as_u64().unwrap() > 0,
            "latency_us.{key}"
        );
    }
    assert_eq!(j["deliveries"]["expected"], 80 * 15);
    assert_eq!(j["deliveries"]["lost"], 0);
    assert!(j["sends"]["per_second"].as_f64().unwrap() > 40.0);
    let timeline = j["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 2, "one point per second: {timeline:?}");
    assert!(timeline
        .iter()
        .any(|p| p["phase"] == "send" && p["deliveries_per_s"].as_f64().unwrap() > 0.0));
    assert!(stderr.contains("Deliveries   expected 1200"), "{stderr}");
    assert!(stderr.contains("p99.9"), "{stderr}");
    let h = std::fs::read_to_string(&hgrm).unwrap();
    assert!(
        h.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
        "{h}"
    );
    assert!(h.contains("Total count    =         1200]"), "{h}");
    let _ = std::fs::remove_file(hgrm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_the_thresholds_with_exit_1() {
    let (r, stop) = start_relay(RelayConfig {
        drop_every: 50,
        dup_every: 77,
        ..chat()
    })
    .await;
    let url = r.ws_url();
    let out = loadgen(&[
        "--preset",
        "smoke",
        "--duration",
        "1s",
        "--grace",
        "1s",
        "--url",
        &url,
        "--max-p99",
        "10s",
    ])
    .await;
    stop.cancel();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("THRESHOLDS FAILED"), "{stdout}");
    assert!(
        stdout.contains("--max-lost  lost deliveries: 24 > 0"),
        "{stdout}"
    );
    assert!(stdout.contains("--max-duplicated"), "{stdout}");
    // Every threshold checked is listed, the passing one too.
    assert!(stdout.contains("pass  --max-p99  fan-out p99"), "{stdout}");
    assert!(stdout.contains("FAIL  --max-duplicated"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_run_and_still_reports() {
    let (r, stop) = start_relay(chat()).await;
    let url = r.ws_url();
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            &url,
            "--clients",
            "20",
            "--rooms",
            "2",
            "--rate",
            "20",
            "--duration",
            "10m",
            "--json",
            "-",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("loadgen stops after Ctrl-C")
        .unwrap();
    stop.cancel();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], true);
    assert_eq!(j["connections"]["opened"], 20);
    assert!(j["sends"]["sent"].as_u64().unwrap() > 0);
    assert_eq!(j["deliveries"]["lost"], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("INTERRUPTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_runs_on_a_terminal_and_restores_it() {
    // `script` (util-linux) gives loadgen a pseudo-terminal, so it draws the
    // ratatui dashboard; afterwards the alternate screen must be left and
    // the report printed.
    let (r, stop) = start_relay(chat()).await;
    let cmd = format!(
        "stty cols 120 rows 40; {} --url {} --clients 10 --senders 2 --rate 20 --duration 2s",
        env!("CARGO_BIN_EXE_loadgen"),
        r.ws_url()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("finishes")
        .expect("`script` (util-linux, Debian package bsdutils) is needed for this test");
    stop.cancel();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\x1b[?1049h"), "entered the alternate screen");
    assert!(text.contains("\x1b[?1049l"), "left the alternate screen");
    // ratatui moves the cursor over blank cells, so look for single words.
    assert!(
        text.contains("APP_ID") && text.contains("deliveries/s"),
        "drew the dashboard: {text:?}"
    );
    assert!(
        text.contains("Deliveries   expected 400"),
        "printed the report: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_room_spread_over_two_workers_is_checked_as_a_whole() {
    // Raw mode is one broadcast domain: a single room, split over two
    // worker processes whose clocks and sender logs must line up.
    let (r, stop) = start_relay(RelayConfig {
        app_ids: vec!["node-a".into(), "node-b".into()],
        drop_every: 101,
        ..RelayConfig::default()
    })
    .await;
    let url = r.ws_url();
    let out = loadgen(&[
        "--protocol",
        "raw",
        "--url",
        &url,
        "--clients",
        "40",
        "--senders",
        "4",
        "--rate",
        "40",
        "--duration",
        "2s",
        "--workers",
        "2",
        "--grace",
        "1s",
        "--json",
        "-",
        "--quiet",
    ])
    .await;
    stop.cancel();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(j["loadgen"]["processes"], 2);
    assert_eq!(j["connections"]["opened"], 40);
    assert_eq!(j["sends"]["sent"], 80);
    let d = &j["deliveries"];
    assert_eq!(d["expected"], 80 * 40, "{stderr}");
    // Every 101st delivery dropped by the relay, every one reported.
    assert_eq!(
        d["lost"],
        r.counters
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        "{stderr}"
    );
    assert!(d["lost"].as_u64().unwrap() > 0);
    assert_eq!(d["duplicated"], 0);
    // Sender APP_IDs travel in the raw probe, so the matrix is complete even
    // where sender and receiver live in different processes.
    let cells = j["matrix"].as_array().unwrap();
    assert_eq!(cells.len(), 4, "{cells:?}");
    assert!(cells.iter().all(|c| c["sender"] != "?"));
    assert!(d["cross_instance"].as_u64().unwrap() > 0);
    assert!(
        j["latency_us"]["p50"].as_u64().unwrap() < 1_000_000,
        "aligned clocks: {}",
        j["latency_us"]
    );
}

#[test]
fn an_unparsable_fault_plan_exits_2_and_says_why() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--clients", "1", "--quiet"])
        .env("LOADGEN_FAULTS", "kill9:app2@5s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LOADGEN_FAULTS is not a JSON array of faults"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_from_the_environment_are_marked_on_the_timeline() {
    let (r, stop) = start_relay(chat()).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let plan = format!(
        r#"[{{"name":"kill9:app9@2s","kind":"kill9","target":"app9","at_unix_ms":{},"end_unix_ms":null}}]"#,
        now_ms + 2_000
    );
    let url = r.ws_url();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "--url",
                &url,
                "--clients",
                "12",
                "--rooms",
                "2",
                "--rate",
                "40",
                "--duration",
                "4s",
                "--reconnect",
                "--json",
                "-",
                "--no-tui",
            ])
            .env("LOADGEN_FAULTS", plan)
            .output(),
    )
    .await
    .expect("loadgen finishes")
    .unwrap();
    stop.cancel();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &j["faults"][0];
    assert_eq!(f["name"], "kill9:app9@2s", "{j}");
    let at = f["at_s"].as_f64().unwrap();
    assert!((1.0..3.0).contains(&at), "{f}");
    // Nothing failed: deliveries never dipped, no socket was lost.
    assert!(f["before_per_s"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["back_to_90pct_ms"].as_u64().unwrap() <= 2_000, "{f}");
    assert_eq!(f["sockets_lost"], 0);
    let marked: Vec<&serde_json::Value> = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["faults"].is_array())
        .collect();
    assert_eq!(marked.len(), 1, "{}", j["timeline"]);
    assert_eq!(marked[0]["t_s"], f["timeline_t_s"]);
    assert!(stderr.contains("▼ kill9:app9@2s"), "{stderr}");
    assert!(stderr.contains("Faults ("), "{stderr}");
    assert_eq!(j["config"]["reconnect"], true);
    assert_eq!(j["connections"]["reconnects"], 0);
}

/// A server that refuses every upgrade with `401` and `body`, and hands
/// back the request heads it read.
async fn refusing_server(
    body: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut chunk = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain; charset=utf-8\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refusal_is_reported_by_its_reason_and_the_secret_never_shows() {
    let (url, mut requests) = refusing_server("401 token expired\n").await;
    let fut = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &url, "--clients", "3", "--duration", "100ms"])
        .args(["--quiet", "--json", "-"])
        .env("LOADGEN_JWT_SECRET", "hunter2")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("loadgen finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("3 × upgrade: http 401 token expired): is --jwt-secret the server's?"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report on stdout");
    assert_eq!(
        report["errors"]["upgrade: http 401 token expired"], 3,
        "{stdout}"
    );
    assert_eq!(report["config"]["jwt_secret"], "set");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    // Each client sent its own token, signed with the secret.
    let mut subs = Vec::new();
    while let Ok(req) = requests.try_recv() {
        let token = req
            .lines()
            .find_map(|l| l.strip_prefix("Authorization: Bearer "))
            .unwrap_or_else(|| panic!("no bearer token in {req}"));
        let claims = jsonwebtoken::decode::<loadgen::jwt::Claims>(
            token.trim(),
            &jsonwebtoken::DecodingKey::from_secret(b"hunter2"),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert!(req.contains(&format!("nick={}", claims.sub)), "{req}");
        subs.push(claims.sub);
    }
    subs.sort();
    assert_eq!(subs, ["lg0", "lg1", "lg2"]);
}
