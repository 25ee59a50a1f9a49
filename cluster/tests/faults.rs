//! Faults on a schedule: specs parse (and bad ones fail with a clear
//! reason), the plan is the `LOADGEN_FAULTS` contract, and `cluster exec
//! --fault` injects them into real processes at their time while the
//! command runs (a server killed at 1 s answers again after its restart at
//! 2 s); the library's `run_schedule` stops and resumes a server.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chat_cluster::faults::{self, parse, EventKind, FaultKind, Target};
use chat_cluster::procs::temp_dir;
use chat_cluster::{http, sizing, Cluster, ClusterOptions, RedisTopology};
use serde_json::Value;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn good_specs_parse() {
    let f = parse("kill9:app2@5s").unwrap();
    assert_eq!(f.name, "kill9:app2@5s");
    assert_eq!(f.kind, FaultKind::Kill9);
    assert_eq!(f.target, Target::Server(1));
    assert_eq!(f.target_name(), "app2");
    assert_eq!((f.at, f.duration, f.end()), (ms(5000), None, None));

    let f = parse("stop:app1@1500ms+2s").unwrap();
    assert_eq!(f.kind, FaultKind::Stop);
    assert_eq!((f.at, f.duration), (ms(1500), Some(ms(2000))));
    assert_eq!(f.end(), Some(ms(3500)));

    let f = parse("redis-stop@8s+5s").unwrap();
    assert_eq!(f.kind, FaultKind::RedisStop);
    assert_eq!(f.target, Target::Redis { room: None });
    assert_eq!(f.target_name(), "redis");

    let f = parse("redis-hang:lobby@1m+500ms").unwrap();
    assert_eq!(
        f.target,
        Target::Redis {
            room: Some("lobby".into())
        }
    );
    assert_eq!(f.target_name(), "redis:lobby");
    assert_eq!((f.at, f.duration), (ms(60_000), Some(ms(500))));

    for (spec, kind) in [
        ("term:app1@12s", FaultKind::Term),
        ("restart:app3@1m30s", FaultKind::Restart),
        ("redis-kill@5s", FaultKind::RedisKill),
        ("redis-kill@5s+1s", FaultKind::RedisKill),
        ("redis-restart@0", FaultKind::RedisRestart),
        ("redis-failover@2s", FaultKind::RedisFailover),
        ("redis-failover:room-7@2.5s", FaultKind::RedisFailover),
        ("  kill9:app10@0.1s ", FaultKind::Kill9),
    ] {
        let f = parse(spec).unwrap_or_else(|e| panic!("{spec}: {e:#}"));
        assert_eq!(f.kind, kind, "{spec}");
        assert_eq!(f.name, spec.trim());
        assert_eq!(spec.trim().parse::<faults::FaultSpec>().unwrap(), f);
    }
    assert_eq!(parse("kill9:app10@0.1s").unwrap().target, Target::Server(9));
}

#[test]
fn bad_specs_say_why() {
    for (spec, why) in [
        ("", "empty fault spec"),
        ("kill9:app2", "no @TIME"),
        ("boom:app2@5s", "unknown fault kind \"boom\""),
        ("kill9:app2@5x", "unknown unit \"x\""),
        ("kill9:app2@5", "needs a unit"),
        ("kill9:app2@", "empty time"),
        ("kill9:app2@-1s", "expected a number"),
        ("kill9:app2@48h", "more than"),
        ("kill9@5s", "kill9 needs a server"),
        ("kill9:redis@5s", "expected appN"),
        ("kill9:app0@5s", "numbered from app1"),
        ("kill9:app+1@5s", "expected appN"),
        ("kill9:app2@5s+1s", "kill9 takes no +D"),
        ("restart:app2@5s+1s", "restart takes no +D"),
        ("stop:app1@5s", "stop needs a duration"),
        ("stop:app1@5s+0s", "more than 0"),
        ("redis-stop@5s", "redis-stop needs a duration"),
        ("redis-hang@5s", "redis-hang needs a duration"),
        ("redis-failover@5s+1s", "takes no +D"),
        ("redis-kill:lobby@5s", "takes no target"),
        ("redis-stop:@5s+1s", "empty room"),
        ("stop:app1@5s+1x", "bad duration after +"),
    ] {
        let err = format!("{:#}", parse(spec).expect_err(spec));
        assert!(err.contains(why), "{spec:?}: {err:?} lacks {why:?}");
    }
}

#[test]
fn specs_are_checked_against_the_cluster() {
    use RedisTopology::{Cluster as RCluster, Sentinel, Single};
    let check = |spec: &str, servers, topo| parse(spec).unwrap().check(servers, topo);
    assert!(check("kill9:app2@1s", 2, Single).is_ok());
    let err = format!("{:#}", check("kill9:app3@1s", 2, Single).unwrap_err());
    assert!(
        err.contains("app3 is out of range") && err.contains("app1..app2"),
        "{err}"
    );
    assert!(check("kill9:app1@1s", 0, Single).is_err());
    assert!(check("redis-stop@1s+1s", 0, Single).is_ok());
    assert!(check("redis-stop@1s+1s", 0, Sentinel).is_ok());
    assert!(check("redis-stop:lobby@1s+1s", 0, RCluster).is_ok());
    let err = format!(
        "{:#}",
        check("redis-stop:lobby@1s+1s", 0, Sentinel).unwrap_err()
    );
    assert!(err.contains("needs --redis cluster"), "{err}");
    assert!(check("redis-kill@1s", 0, Single).is_ok());
    assert!(check("redis-restart@1s", 0, Single).is_ok());
    for topo in [Sentinel, RCluster] {
        assert!(check("redis-kill@1s", 0, topo).is_err());
        assert!(check("redis-restart@1s", 0, topo).is_err());
        assert!(check("redis-failover@1s", 0, topo).is_ok());
        assert!(check("redis-hang@1s+1s", 0, topo).is_ok());
    }
    let err = format!("{:#}", check("redis-failover@1s", 0, Single).unwrap_err());
    assert!(
        err.contains("not supported with the single Redis topology"),
        "{err}"
    );
    assert!(check("redis-hang@1s+1s", 0, Single).is_err());
    assert!(check("redis-failover:r@1s", 0, RCluster).is_ok());
}

#[test]
fn the_plan_is_the_loadgen_contract() {
    let specs: Vec<_> = [
        "kill9:app2@5s",
        "redis-stop@8s+5s",
        "redis-hang:lobby@1s+250ms",
    ]
    .iter()
    .map(|s| parse(s).unwrap())
    .collect();
    let plan = faults::plan(&specs, 1_000_000);
    let expected: Value = serde_json::from_str(
        r#"[
        {"name": "kill9:app2@5s", "kind": "kill9", "target": "app2",
         "at_unix_ms": 1005000, "end_unix_ms": null},
        {"name": "redis-stop@8s+5s", "kind": "redis-stop", "target": "redis",
         "at_unix_ms": 1008000, "end_unix_ms": 1013000},
        {"name": "redis-hang:lobby@1s+250ms", "kind": "redis-hang", "target": "redis:lobby",
         "at_unix_ms": 1001000, "end_unix_ms": 1001250}
    ]"#,
    )
    .unwrap();
    assert_eq!(plan, expected);
    assert_eq!(faults::plan(&[], 5), Value::Array(Vec::new()));
    assert_eq!(faults::PLAN_ENV, "LOADGEN_FAULTS");
    assert_eq!(faults::START_ENV, "CLUSTER_EXEC_START_UNIX_MS");
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
        std::thread::sleep(ms(20));
    }
}

/// `+1.234s` in `line` after `word` → 1.234 s.
fn offset_after(line: &str, word: &str) -> Duration {
    let rest = line
        .split_once(word)
        .unwrap_or_else(|| panic!("{word:?} not in {line:?}"))
        .1;
    let num = rest
        .trim_start()
        .strip_prefix('+')
        .and_then(|r| r.split_once('s'))
        .unwrap_or_else(|| panic!("no +N.NNNs after {word:?} in {line:?}"))
        .0;
    Duration::from_secs_f64(num.parse().unwrap())
}

/// `cluster exec` with a kill at 1 s and a restart at 2 s: the command
/// sees the plan in `LOADGEN_FAULTS` with the planned times, app1 stops
/// answering and answers again, the launcher logs each injection within a
/// few milliseconds of its plan, and the servers got `--max-connections`
/// sized from the file limit.
#[test]
fn exec_injects_faults_while_the_command_runs() {
    let dir = temp_dir("faults-exec").unwrap();
    let script = r#"
printf '%s' "$LOADGEN_FAULTS" > "$OUT/plan.json"
printf '%s' "$CLUSTER_EXEC_START_UNIX_MS" > "$OUT/start"
printf '%s' "$CLUSTER_SERVER_PIDS" > "$OUT/pids"
printf '%s' "$CLUSTER_SERVER_ADDRS" > "$OUT/addrs.tmp" && mv "$OUT/addrs.tmp" "$OUT/addrs"
sleep 4
"#;
    let before = faults::unix_ms(SystemTime::now());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args([
            "exec",
            "--servers",
            "2",
            "--port",
            "0",
            "--stats-port",
            "0",
            "--server-base-port",
            "0",
            "--fault",
            "kill9:app1@1s",
            "--fault",
            "restart:app1@2s",
            "--fault",
            "term:app2@30s",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("OUT", &dir)
        .env("RUST_LOG", "warn")
        .env_remove("MAX_CONNECTIONS")
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

    // Watch app1 from the moment the command runs until it exits.
    let addrs = wait_file(&dir.join("addrs"), Duration::from_secs(40));
    let app1 = addrs.split_whitespace().next().unwrap().to_string();
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    let app2_pid = pids.split_whitespace().nth(1).unwrap().to_string();
    let cmdline = std::fs::read(format!("/proc/{app2_pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "cluster exec did not finish");
        let up = matches!(http::get(&app1, "/healthz", ms(300)), Ok((200, _)));
        if seen.last() != Some(&up) {
            seen.push(up);
        }
        std::thread::sleep(ms(50));
    };
    let err = reader.join().unwrap();
    assert!(status.success(), "{status}\n{err}");
    let seen_str = format!("{seen:?}");
    assert!(
        seen_str.contains("true, false, true"),
        "app1 up, down, up again: {seen:?}\n{err}"
    );

    // The launcher's lines: each fault on time, the term after the end
    // skipped.
    for (fault, planned) in [("kill9:app1@1s", 1000), ("restart:app1@2s", 2000)] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("cluster: fault {fault}: injected at")))
            .unwrap_or_else(|| panic!("no injection line for {fault}:\n{err}"));
        let at = offset_after(line, "injected at");
        let off = at.as_secs_f64() * 1000.0 - planned as f64;
        assert!((-1.0..50.0).contains(&off), "{fault} {off} ms off: {line}");
        println!("{line}");
    }
    assert!(
        err.contains("SIGKILL app1 (pid "),
        "the kill names its victim:\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("cluster: fault restart:app1@2s: done at")
                && l.contains("app1 healthy")),
        "{err}"
    );
    assert!(
        err.contains("cluster: fault term:app2@30s: skipped (planned +30.000s"),
        "{err}"
    );

    // The plan the command saw.
    let start: u64 = std::fs::read_to_string(dir.join("start"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        start >= before && start < before + 60_000,
        "{start} vs {before}"
    );
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    let plan = plan.as_array().unwrap();
    assert_eq!(plan.len(), 3);
    for (p, (name, kind, target, at)) in plan.iter().zip([
        ("kill9:app1@1s", "kill9", "app1", 1000),
        ("restart:app1@2s", "restart", "app1", 2000),
        ("term:app2@30s", "term", "app2", 30_000),
    ]) {
        assert_eq!(p["name"], name);
        assert_eq!(p["kind"], kind);
        assert_eq!(p["target"], target);
        assert_eq!(p["at_unix_ms"].as_u64(), Some(start + at));
        assert!(p["end_unix_ms"].is_null());
    }

    // Sizing: printed, and the servers got it.
    let limit = sizing::fd_limit();
    let expected = format!(
        "haproxy: 1 process × maxconn {} = {}; servers: 2 × max-connections {}",
        sizing::haproxy_maxconn_for(limit),
        sizing::haproxy_maxconn_for(limit),
        sizing::server_max_connections_for(limit)
    );
    assert!(err.contains(&expected), "{expected:?} not in\n{err}");
    let want = sizing::server_max_connections_for(limit).to_string();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--max-connections" && w[1] == want),
        "app2 args {args:?}"
    );
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The library: `run_schedule` SIGSTOPs a server and SIGCONTs it after
/// the `+D`; `finish` skips what is not due.
#[test]
fn run_schedule_stops_and_resumes_a_server() {
    let c = Cluster::start(ClusterOptions {
        servers: 1,
        server_log: "warn".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server and haproxy installed)");
    let pid = c.server_pid(0).unwrap();
    let specs = vec![
        parse("stop:app1@200ms+600ms").unwrap(),
        parse("kill9:app1@60s").unwrap(),
    ];
    faults::check_all(&specs, c.len(), c.redis_topology()).unwrap();
    let cluster = Arc::new(Mutex::new(c));
    let start = Instant::now();
    let schedule = faults::run_schedule(cluster.clone(), specs, start).unwrap();
    std::thread::sleep(ms(500));
    assert_eq!(state(pid), Some('T'), "stopped at 0.5 s");
    std::thread::sleep(ms(600));
    assert_ne!(state(pid), Some('T'), "running again at 1.1 s");
    let events = schedule.finish();
    let kinds: Vec<(&str, EventKind)> = events.iter().map(|e| (e.fault.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("stop:app1@200ms+600ms", EventKind::Injected),
            ("stop:app1@200ms+600ms", EventKind::Ended),
            ("kill9:app1@60s", EventKind::Skipped),
        ]
    );
    for (e, planned) in events.iter().zip([200, 800]) {
        assert_eq!(e.planned, Some(ms(planned)));
        let off = e.offset.as_secs_f64() * 1000.0 - planned as f64;
        assert!((-1.0..50.0).contains(&off), "{e}");
    }
    let c = cluster.lock().unwrap();
    assert_eq!(c.server_pid(0), Some(pid), "the kill was skipped");
    c.wait_all_up(Duration::from_secs(10)).unwrap();
}
