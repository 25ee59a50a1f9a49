//! Several HAProxy processes on one client port (`SO_REUSEPORT`): they
//! all start, every one sees the servers up, connections through the port
//! all work and are spread over the processes, shutdown stops them all;
//! `cluster exec --haproxy-procs 3` exports their PIDs.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_cluster::procs::temp_dir;
use chat_cluster::{http, sizing, Cluster, ClusterOptions};

const T: Duration = Duration::from_secs(2);

fn alive_haproxy(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "haproxy")
}

/// Client sessions HAProxy's stats page at `url` counts on the `chat`
/// frontend (`stot`).
fn frontend_sessions(url: &str) -> u64 {
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/stats"))
        .unwrap();
    let (code, body) = http::get(addr, "/stats;csv", T).unwrap();
    assert_eq!(code, 200);
    body.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > 7 && f[0] == "chat" && f[1] == "FRONTEND")
        .map(|f| f[7].parse().unwrap())
        .unwrap_or_else(|| panic!("no chat FRONTEND line in {body}"))
}

/// 30 GETs of /healthz through `addr`; each must answer 200.
fn thirty_requests(addr: &str) {
    for i in 0..30 {
        let (code, body) = http::get(addr, "/healthz", T)
            .unwrap_or_else(|e| panic!("request {i} through {addr}: {e:#}"));
        assert_eq!(code, 200, "request {i}: {body}");
    }
}

#[test]
fn three_haproxy_processes_share_the_port() {
    let mut c = Cluster::start(ClusterOptions {
        servers: 1,
        haproxy_procs: 3,
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server and haproxy installed)");
    let pids = c.haproxy_pids();
    assert_eq!(pids.len(), 3);
    assert_eq!(c.haproxy_pid(), Some(pids[0]));
    assert!(pids.iter().all(|p| alive_haproxy(*p)), "{pids:?}");
    let stats = c.haproxy_stats_urls();
    assert_eq!(stats.len(), 3);
    assert_eq!(stats[0], c.stats_url());
    for k in 0..3 {
        let st = c.haproxy_status_of(k).unwrap();
        assert_eq!(st, [("app1".to_string(), "UP".to_string())], "process {k}");
        assert!(c
            .log_dir()
            .join(if k == 0 {
                "haproxy.cfg".to_string()
            } else {
                format!("haproxy{}.cfg", k + 1)
            })
            .is_file());
    }
    assert!(c.haproxy_status_of(3).is_err());
    let limit = sizing::fd_limit();
    assert_eq!(
        c.sizing().haproxy_maxconn,
        sizing::haproxy_maxconn_for(limit)
    );
    assert_eq!(c.sizing().haproxy_procs, 3);
    let cfg = std::fs::read_to_string(c.log_dir().join("haproxy2.cfg")).unwrap();
    assert!(
        cfg.contains(&format!("maxconn {}", c.sizing().haproxy_maxconn)),
        "{cfg}"
    );
    assert!(!cfg.contains("noreuseport"));

    thirty_requests(&c.addr());
    let per_proc: Vec<u64> = stats.iter().map(|u| frontend_sessions(u)).collect();
    assert_eq!(per_proc.iter().sum::<u64>(), 30, "{per_proc:?}");
    assert!(
        per_proc.iter().all(|n| *n > 0),
        "every process took connections: {per_proc:?}"
    );
    // Invariant: the admin endpoints are not served through the public
    // port, only on each instance.
    for path in ["/metrics", "/cluster", "/cluster?x=1", "/metrics/"] {
        let (code, _) = http::get(&c.addr(), path, T).unwrap();
        assert_eq!(code, 404, "{path} through HAProxy");
    }
    let (code, _) = http::get(&c.server_addr(0), "/metrics", T).unwrap();
    assert_eq!(code, 200, "/metrics on the instance");
    // Clean start: no HAProxy alert (e.g. about the file limit).
    for name in ["haproxy.log", "haproxy2.log", "haproxy3.log"] {
        let log = std::fs::read_to_string(c.log_dir().join(name)).unwrap();
        assert!(
            !log.contains("ALERT") && !log.contains("WARNING"),
            "{name}: {log}"
        );
    }

    c.shutdown();
    assert!(c.haproxy_pids().is_empty());
    assert!(pids.iter().all(|p| !alive_haproxy(*p)), "{pids:?}");
}

fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_exports_every_haproxy_pid() {
    let dir = temp_dir("haproxy-procs-exec").unwrap();
    let script = r#"
printf '%s' "$CLUSTER_HAPROXY_PID" > "$OUT/pid"
printf '%s' "$CHAT_URL" > "$OUT/url"
printf '%s' "$CLUSTER_HAPROXY_PIDS" > "$OUT/pids.tmp" && mv "$OUT/pids.tmp" "$OUT/pids"
sleep 3
"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args([
            "exec",
            "--servers",
            "1",
            "--haproxy-procs",
            "3",
            "--port",
            "0",
            "--stats-port",
            "0",
            "--server-base-port",
            "0",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("OUT", &dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pids: Vec<u32> = wait_file(&dir.join("pids"), Duration::from_secs(40))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let first: u32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first, pids[0]);
    assert!(pids.iter().all(|p| alive_haproxy(*p)), "{pids:?}");
    let url = std::fs::read_to_string(dir.join("url")).unwrap();
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.strip_suffix("/ws"))
        .unwrap()
        .to_string();
    thirty_requests(&addr);

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "cluster exec did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap();
    assert!(status.success(), "{status}\n{err}");
    assert!(err.contains("haproxy: 3 processes × maxconn "), "{err}");
    assert!(
        pids.iter().all(|p| !alive_haproxy(*p)),
        "stopped with the launcher: {pids:?}"
    );
}

/// Invariant: with a per-address cap, one client address cannot hold more
/// than N connections through HAProxy (the N+1st is refused at accept),
/// and a slot frees as soon as one of them closes.
#[test]
fn one_address_holds_at_most_the_cap() {
    let c = Cluster::start(ClusterOptions {
        servers: 1,
        haproxy_max_conn_per_ip: Some(3),
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server and haproxy installed)");
    let cfg = std::fs::read_to_string(c.log_dir().join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("sc0_conn_cur gt 3"), "{cfg}");
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(c.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = http::get(&c.addr(), "/healthz", T);
    assert!(
        !matches!(refused, Ok((200, _))),
        "a 4th connection from the same address is refused: {refused:?}"
    );
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let (code, body) = http::get(&c.addr(), "/healthz", T).unwrap();
    assert_eq!(code, 200, "{body}");
}
