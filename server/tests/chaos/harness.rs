//! The shape every scenario shares: a cluster of three instances behind
//! HAProxy, six receivers and three senders spread over the instances in
//! two rooms, a run that sends at a steady pace around an injected fault,
//! then a drain and the checks. Plus small probes: raw Redis commands,
//! `/metrics`, `/healthz`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions, RedisTopology};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::{self, Report};
use super::client::{self, Phase};
use super::record::{self, Event, Peer, PeerSpec, Registry, SendSpec};

/// Sending before the fault.
pub const WARMUP: Duration = Duration::from_secs(3);
/// Sending after the fault (or its end).
pub const AFTER: Duration = Duration::from_secs(6);
/// The servers' probe settings (the defaults, spelled out: (f) and the
/// resume limits are written against them).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Start three instances behind HAProxy, with the test build of the
/// server. The rate limit is raised well above what the clients send
/// (their retries included): these tests are about faults, not flooding.
pub fn cluster() -> Cluster {
    cluster_on(RedisTopology::Single)
}

/// [`cluster`] on a given Redis topology.
pub fn cluster_on(redis: RedisTopology) -> Cluster {
    Cluster::start(ClusterOptions {
        redis,
        servers: 3,
        server_args: [
            "--rate",
            "200",
            "--burst",
            "400",
            "--probe-interval",
            "500ms",
            "--probe-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        server_bin: Some(env!("CARGO_BIN_EXE_server").into()),
        server_log: "info,chat_server=debug".into(),
        ..Default::default()
    })
    .expect("cluster starts (needs redis-server and haproxy installed)")
}

/// The clients: receivers `r0..r5` and senders `s0..s2`, spread over the
/// three instances so that instance 0 (`app1`, the one the instance faults
/// hit) holds receivers of both rooms and a sender.
///
/// | peer | instance | rooms | sends |
/// |---|---|---|---|
/// | r0, r3 | app1 | c1; c1+c2 | |
/// | r1, r4 | app2 | c2; c1 | |
/// | r2, r5 | app3 | c1+c2; c2 | |
/// | s0 | app1 | c1 | 8/s to c1, pipelined (window 128) |
/// | s1 | app2 | c2 | 6/s to c2, stop-and-wait |
/// | s2 | app3 | c1+c2 | 6/s alternating, stop-and-wait |
pub fn specs(c: &Cluster) -> Vec<PeerSpec> {
    let rooms = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let recv = |name: &str, i: usize, r: &[&str]| PeerSpec {
        name: name.into(),
        rooms: rooms(r),
        first_url: c.server_ws_url(i),
        reconnect_url: c.ws_url(),
        send: None,
    };
    let mut v = vec![
        recv("r0", 0, &["c1"]),
        recv("r1", 1, &["c2"]),
        recv("r2", 2, &["c1", "c2"]),
        recv("r3", 0, &["c1", "c2"]),
        recv("r4", 1, &["c1"]),
        recv("r5", 2, &["c2"]),
    ];
    let send = |name: &str, i: usize, r: &[&str], per_sec: u64, window: usize| PeerSpec {
        send: Some(SendSpec {
            rooms: rooms(r),
            every: Duration::from_millis(1000 / per_sec),
            window,
        }),
        ..recv(name, i, r)
    };
    v.push(send("s0", 0, &["c1"], 8, 128));
    v.push(send("s1", 1, &["c2"], 6, 1));
    v.push(send("s2", 2, &["c1", "c2"], 6, 1));
    v
}

/// A scenario in progress.
#[derive(Debug)]
pub struct Run {
    pub peers: Vec<Arc<Peer>>,
    pub reg: Registry,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<()>>,
}

impl Run {
    /// Connect every peer and wait until each has joined its rooms.
    pub async fn start(c: &Cluster) -> Run {
        let reg: Registry = Arc::new(Mutex::new(HashMap::new()));
        let (phase, rx) = watch::channel(Phase::Wait);
        let peers: Vec<Arc<Peer>> = specs(c).into_iter().map(Peer::new).collect();
        let tasks = peers
            .iter()
            .map(|p| tokio::spawn(client::run(p.clone(), reg.clone(), rx.clone())))
            .collect();
        let run = Run {
            peers,
            reg,
            phase,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !run.peers.iter().all(|p| p.ready.load(Relaxed)) {
            if Instant::now() > deadline {
                let late: Vec<String> = run
                    .peers
                    .iter()
                    .filter(|p| !p.ready.load(Relaxed))
                    .map(|p| format!("{}: {:?}", p.spec.name, p.snapshot()))
                    .collect();
                panic!(
                    "peers not joined within 15s (logs in {}):\n{}",
                    c.log_dir().display(),
                    late.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run
    }

    /// Senders start sending.
    pub fn go(&self) {
        self.phase.send_replace(Phase::Send);
    }

    /// A peer by name.
    pub fn peer(&self, name: &str) -> &Peer {
        self.peers
            .iter()
            .find(|p| p.spec.name == name)
            .expect("a peer of that name")
    }

    /// Stop new sends, wait for every message to be acknowledged (20 s at
    /// most) and delivered (10 s at most, or 2 s without any delivery),
    /// close every peer and check the record: print the summary, and fail
    /// with every broken invariant (leaving each peer's full record in the
    /// cluster's log directory). `t_ref` is the fault time (or its end)
    /// that delivery must resume within `max_resume` of.
    pub async fn finish(
        self,
        name: &str,
        t_ref: Instant,
        announced_loss_ok: bool,
        max_resume: Duration,
        c: &Cluster,
    ) -> Report {
        self.phase.send_replace(Phase::Finish);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self
                .reg
                .lock()
                .unwrap()
                .values()
                .any(|m| m.ack.is_none() && !m.gave_up)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_count = 0usize;
        let mut quiet_since = Instant::now();
        loop {
            let acked: Vec<(String, String)> = {
                let reg = self.reg.lock().unwrap();
                reg.iter()
                    .filter(|(_, m)| m.ack.is_some())
                    .map(|(id, m)| (id.clone(), m.room.clone()))
                    .collect()
            };
            let mut complete = true;
            let mut count = 0usize;
            for p in &self.peers {
                let ev = p.events.lock().unwrap();
                let got: std::collections::HashSet<&str> = ev
                    .iter()
                    .filter_map(|e| match e {
                        Event::Msg { id: Some(id), .. } => Some(id.as_str()),
                        _ => None,
                    })
                    .collect();
                count += ev.len();
                complete &= acked
                    .iter()
                    .all(|(id, room)| !p.spec.rooms.contains(room) || got.contains(id.as_str()));
            }
            if count != last_count {
                last_count = count;
                quiet_since = Instant::now();
            }
            if complete
                || quiet_since.elapsed() > Duration::from_secs(2)
                || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.phase.send_replace(Phase::Stop);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let reg = self.reg.lock().unwrap().clone();
        let report = check::analyze(name, &self.peers, &reg, t_ref, announced_loss_ok);
        println!("{}", report.summary());
        print!("{}", report.announced());
        println!(
            "chaos {name} servers (running ones): {}",
            server_figures(c).await
        );
        let v = report.violations(max_resume);
        if !v.is_empty() {
            record::dump(c.log_dir(), name, &self.peers, &reg, t_ref);
        }
        assert!(
            v.is_empty(),
            "chaos {name}: invariants broken (server logs and chaos-{name}-*.log with every peer's record in {}):\n{v}",
            c.log_dir().display()
        );
        report
    }
}

/// Server-side figures summed over the instances that still run: what
/// the servers did to recover (printed next to the clients' summary).
pub async fn server_figures(c: &Cluster) -> String {
    let names = [
        ("repaired", "chat_repaired_total"),
        ("replayed", "chat_history_replayed_total"),
        ("duplicate_sends", "chat_duplicate_sends_total"),
        ("liveness_failures", "chat_liveness_failures_total"),
        (
            "subscriber_connects",
            "chat_redis_subscriber_connects_total",
        ),
        ("epoch_resets", "chat_epoch_resets_total"),
        ("gaps", "chat_gaps_total"),
        ("repair_retries", "chat_repair_retries_total"),
    ];
    let mut out = Vec::new();
    for (short, name) in names {
        let mut n = 0;
        for i in (0..c.len()).filter(|i| c.server_pid(*i).is_some()) {
            n += metric(c.server_addr(i), name).await;
        }
        out.push(format!("{short}={n}"));
    }
    out.join(" ")
}

/// Whether peer `name` lost its connection after `t` for a reason
/// containing `why`.
pub fn lost_after(p: &Peer, t: Instant, why: &str) -> bool {
    p.snapshot()
        .iter()
        .any(|e| matches!(e, Event::Lost { at, reason } if *at >= t && reason.contains(why)))
}

/// Send one command to Redis over a fresh connection and return its reply
/// rendered as text (`:3`, `+OK`, `[save, ]`, `-ERR …`).
pub fn redis_cmd(addr: &str, args: &[&str]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((v, _)) = parse_resp(&buf) {
            return v;
        }
        let n = s.read(&mut chunk).expect("redis replies");
        assert!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One RESP2 value from the start of `b`, and its length.
fn parse_resp(b: &[u8]) -> Option<(String, usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..end]).ok()?;
    let rest = end + 2;
    match b.first()? {
        b'+' | b'-' | b':' => Some((format!("{}{line}", b[0] as char), rest)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(("nil".into(), rest));
            }
            let n = n as usize;
            let body = b.get(rest..rest + n)?;
            b.get(rest + n..rest + n + 2)?;
            Some((String::from_utf8_lossy(body).into_owned(), rest + n + 2))
        }
        b'*' => {
            let n: usize = line.parse().ok()?;
            let mut at = rest;
            let mut items = Vec::new();
            for _ in 0..n {
                let (v, len) = parse_resp(&b[at..])?;
                items.push(v);
                at += len;
            }
            Some((format!("[{}]", items.join(", ")), at))
        }
        _ => None,
    }
}

/// GET `path` from `addr` (status and body; status 0 if it failed).
pub async fn get(addr: String, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        chat_cluster::http::get(&addr, path, Duration::from_secs(3)).unwrap_or((0, String::new()))
    })
    .await
    .unwrap()
}

/// A counter from an instance's `/metrics`, summed over its labels.
pub async fn metric(addr: String, name: &str) -> u64 {
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "/metrics answers");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
