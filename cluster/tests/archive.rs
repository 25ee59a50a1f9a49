//! Archive mode with real processes: a cluster started with
//! `ClusterOptions::archive` runs PostgreSQL and an archiver; messages
//! sent through the servers end up in PostgreSQL's `messages` table, one
//! row each; stopping the cluster leaves no process and no temporary
//! directory behind. `cluster up --archive` prints the URLs, records them
//! in the state file, and `cluster down --state` stops it all.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_cluster::state::State;
use chat_cluster::{http, Cluster, ClusterOptions, RedisTopology};
use chat_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Whether `pid` runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        let state = st[st.rfind(')').unwrap() + 1..].split_whitespace().next();
        !matches!(state, Some("Z" | "X"))
    })
}

/// Wait up to 10 s for every pid in `pids` to be gone.
fn assert_all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the cluster stopped: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send `n` messages to `room` as `nick` straight to `ws_url` (one server)
/// and wait for their echoes: then they are in the room's Redis Stream.
async fn send_messages(ws_url: &str, room: &str, nick: &str, n: usize) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}?room={room}&nick={nick}"))
        .await
        .unwrap();
    for i in 0..n {
        let frame = serde_json::json!({"type": "send", "text": format!("{nick} {i}"), "id": format!("{nick}-{i}")});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    let mut echoed = 0;
    while echoed < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection stays open")
            .unwrap();
        if let Message::Text(t) = msg {
            if let Ok(ServerFrame::Message(m)) = serde_json::from_str::<ServerFrame>(&t) {
                if m.nick == nick {
                    echoed += 1;
                }
            }
        }
    }
    ws.close(None).await.unwrap();
}

/// Poll `SELECT room, count(*) FROM messages` until it reads `expected`
/// (`room|count` lines, sorted), for up to 30 s.
fn wait_for_rows(c: &Cluster, expected: &str) {
    let pg = c.postgres().expect("archive mode");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = pg
            .psql("SELECT room, count(*) FROM messages GROUP BY room ORDER BY room")
            .unwrap();
        if got.trim() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "messages in PostgreSQL: {got:?}, want {expected:?} (logs in {})",
            c.log_dir().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn archive_mode_stores_every_message_and_cleans_up() {
    let c = Cluster::start(ClusterOptions {
        servers: 2,
        archive: true,
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server, haproxy and postgresql installed)");

    let db = c.database_url().expect("a database URL");
    let port = c.postgres().unwrap().port();
    assert_eq!(db, format!("postgres://postgres@127.0.0.1:{port}/chat"));
    let metrics = c.archiver_metrics_url().expect("the archiver's metrics");
    assert!(metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"));
    let metrics_addr = metrics
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .unwrap()
        .to_string();
    assert_eq!(
        http::get(&metrics_addr, "/healthz", Duration::from_secs(2))
            .unwrap()
            .0,
        200
    );
    let archiver_pid = c.archiver_pid().expect("the archiver runs");
    let postmaster = c.postgres_pid().expect("PostgreSQL runs");
    let pg_dir = c.postgres().unwrap().dir().to_path_buf();
    let log_dir = c.log_dir().to_path_buf();
    assert!(pg_dir.join("data").is_dir());
    assert!(c.owns_log_dir());
    for log in ["postgres.log", "archiver.log", "app1.log"] {
        assert!(log_dir.join(log).is_file(), "{log}");
    }
    // The servers get the database when their binary takes the flag.
    let help = Command::new(chat_cluster::find_server_bin().unwrap())
        .arg("--help")
        .output()
        .unwrap();
    let takes_flag = String::from_utf8_lossy(&help.stdout).contains("--database-url");
    assert_eq!(c.servers_have_database_url(), takes_flag);
    for i in 0..c.len() {
        let pid = c.server_pid(i).unwrap();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&str> = cmdline.split('\0').collect();
        let given = args
            .windows(2)
            .any(|w| w[0] == "--database-url" && w[1] == db);
        assert_eq!(given, takes_flag, "app{}: {args:?}", i + 1);
    }
    if !takes_flag {
        eprintln!("note: the server binary has no --database-url: not passed");
    }

    // The state file records the archive.
    let state_path = chat_cluster::state::write(&c).unwrap();
    let st = State::read(&state_path).unwrap();
    assert_eq!(st.database_url.as_deref(), Some(db.as_str()));
    assert_eq!(st.archiver_metrics_url.as_deref(), Some(metrics.as_str()));
    assert_eq!(st.pid, Some(std::process::id()));

    // Messages through both servers, in two rooms.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app1, app2) = (c.server_ws_url(0), c.server_ws_url(1));
    rt.block_on(async {
        tokio::join!(
            send_messages(&app1, "alpha", "ann", 5),
            send_messages(&app2, "alpha", "bob", 4),
            send_messages(&app2, "beta", "cid", 3),
        );
    });
    wait_for_rows(&c, "alpha|9\nbeta|3");
    let senders = c
        .postgres()
        .unwrap()
        .psql("SELECT nick, count(*), count(DISTINCT \"offset\") FROM messages GROUP BY nick ORDER BY nick")
        .unwrap();
    assert_eq!(senders.trim(), "ann|5|5\nbob|4|4\ncid|3|3");
    let (code, body) = http::get(&metrics_addr, "/metrics", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("archiver_rows_inserted_total 12"), "{body}");

    // Everything the cluster started, PostgreSQL's own processes too.
    let mut pids: Vec<u32> = (0..c.len()).filter_map(|i| c.server_pid(i)).collect();
    pids.extend(c.haproxy_pids());
    pids.extend(c.redis_pid());
    pids.extend([archiver_pid, postmaster]);
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    // Some of them (a backend, an autovacuum worker) may come and go.
    let backends = chat_cluster::archive::children_of(postmaster);
    assert!(!backends.is_empty(), "PostgreSQL's background processes");
    pids.extend(backends);

    let mut c = c;
    c.shutdown();
    assert!(
        !pg_dir.exists(),
        "PostgreSQL's directory is removed at stop"
    );
    drop(c);
    assert_all_gone(&pids);
    assert!(!log_dir.exists(), "the log directory is removed on drop");
}

/// Without `archive`, nothing of it runs, and a log directory the caller
/// chose stays.
#[test]
fn without_archive_there_is_no_database_and_a_chosen_log_dir_stays() {
    let dir = chat_cluster::procs::temp_dir("archive-test-logs").unwrap();
    let c = Cluster::start(ClusterOptions {
        servers: 1,
        log_dir: Some(dir.clone()),
        server_log: "warn".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.database_url(), None);
    assert_eq!(c.archiver_metrics_url(), None);
    assert_eq!(c.archiver_pid(), None);
    assert!(!c.owns_log_dir());
    drop(c);
    assert!(dir.join("app1.log").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads `cluster up`'s stdout (on, in a thread, so it never writes to
/// a closed pipe) until the `state:` line; returns the lines read and the
/// state file's path.
fn read_until_state(out: impl std::io::Read + Send + 'static) -> (Vec<String>, PathBuf) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("no state line from `cluster up` ({e}): {lines:?}"));
        lines.push(line.clone());
        if let Some(rest) = line.trim_start().strip_prefix("state:") {
            let path = rest.split_whitespace().next().unwrap();
            return (lines, PathBuf::from(path));
        }
    }
}

#[test]
fn cluster_up_archive_prints_the_urls_and_cluster_down_stops_it() {
    let mut up = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["up", "--archive", "--servers", "1"])
        .args([
            "--port",
            "0",
            "--stats-port",
            "0",
            "--server-base-port",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines, state) = read_until_state(up.stdout.take().unwrap());
    let text = lines.join("\n");
    let st = State::read(&state).unwrap();
    let db = st
        .database_url
        .clone()
        .expect("the state names the database");
    let metrics = st.archiver_metrics_url.clone().expect("and the metrics");
    assert!(text.contains(&format!("postgres: {db}")), "{text}");
    assert!(text.contains(&format!("archiver: {metrics}")), "{text}");
    assert!(text.contains("PostgreSQL + archiver"), "{text}");
    assert_eq!(st.pid, Some(up.id()));
    let log_dir: &Path = state.parent().unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let archiver_pid = doc["archiver_pid"].as_u64().unwrap() as u32;
    let postmaster = doc["postgres_pid"].as_u64().unwrap() as u32;
    assert!(alive(archiver_pid) && alive(postmaster));

    let down = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["down", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "cluster down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let status = up.wait().unwrap();
    assert!(status.success(), "cluster up exits cleanly: {status}");
    assert_all_gone(&[archiver_pid, postmaster]);
    assert!(!log_dir.exists(), "{} is removed", log_dir.display());
    // Down again: it is not running any more.
    let again = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["down", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// The archiver is given the topology's Redis flags (the servers' own)
/// and archives rooms on every master.
fn archive_on(redis: RedisTopology, flag: &str) {
    let c = Cluster::start(ClusterOptions {
        servers: 1,
        redis,
        archive: true,
        server_log: "warn".into(),
        ..Default::default()
    })
    .unwrap();
    let pid = c.archiver_pid().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    assert!(args.contains(&flag), "{args:?}");
    assert!(!args.contains(&"--redis-url"), "{args:?}");
    let server_args = c.server_redis_args(0);
    for a in &server_args {
        assert!(args.contains(&a.as_str()), "{a} in {args:?}");
    }
    assert_eq!(c.archiver_redis_args(), server_args);
    if redis == RedisTopology::Cluster {
        let mut masters: Vec<String> = ["alpha", "beta", "gamma"]
            .iter()
            .map(|r| {
                c.cluster_master_for_slot(chat_cluster::room_slot(r))
                    .unwrap()
            })
            .collect();
        masters.sort();
        masters.dedup();
        assert!(
            masters.len() > 1,
            "the rooms are on several masters: {masters:?}"
        );
    }
    let url = c.server_ws_url(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::join!(
            send_messages(&url, "alpha", "ann", 3),
            send_messages(&url, "beta", "bob", 2),
            send_messages(&url, "gamma", "cid", 1),
        );
    });
    wait_for_rows(&c, "alpha|3\nbeta|2\ngamma|1");
}

#[test]
fn archive_on_sentinel() {
    archive_on(RedisTopology::Sentinel, "--redis-sentinels");
}

#[test]
fn archive_on_redis_cluster() {
    archive_on(RedisTopology::Cluster, "--redis-cluster");
}

/// `cluster exec --archive` hands the command the database and the
/// archiver, and leaves nothing behind.
#[test]
fn exec_archive_exports_the_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["exec", "--archive", "--servers", "1"])
        .args(["--port", "0", "--stats-port", "0", "--server-base-port", "0"])
        .args(["--", "sh", "-c"])
        .arg("echo \"db=$CLUSTER_DATABASE_URL metrics=$CLUSTER_ARCHIVER_METRICS_URL archiver=$CLUSTER_ARCHIVER_PID postgres=$CLUSTER_POSTGRES_PID logs=$CLUSTER_LOG_DIR\"")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .to_string()
    };
    assert!(
        field("db").starts_with("postgres://postgres@127.0.0.1:"),
        "{text}"
    );
    assert!(field("db").ends_with("/chat"), "{text}");
    assert!(field("metrics").ends_with("/metrics"), "{text}");
    let pids: Vec<u32> = ["archiver", "postgres"]
        .iter()
        .map(|k| field(k).parse().unwrap())
        .collect();
    assert_all_gone(&pids);
    assert!(!Path::new(&field("logs")).exists(), "{text}");
}
