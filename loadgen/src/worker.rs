//! Spreading one run over worker processes, each with its own
//! file-descriptor limit: the parent re-executes itself once per worker
//! with `--worker-of I/N/EPOCH`, and worker `I` holds the clients `c` with
//! `c % N == I`, so rooms (even one huge room, or raw mode's single
//! broadcast domain) spread over every worker. `EPOCH` (the parent's start,
//! µs since the Unix epoch) aligns every worker's clock, so probe times and
//! membership windows compare across processes.
//!
//! The pipe protocol is one line per message. Worker → parent on stdout:
//! [`ToParent`] as JSON. Parent → worker on stdin: `go` (start sending:
//! every worker has ramped), `stop` (Ctrl-C: stop sending and drain),
//! `hard` (stop now), and `senders <JSON>`: every worker's sender logs,
//! sent once every worker has closed, since judging a receiver needs the
//! send times of every sender in its room, wherever it lives. A closed
//! stdin means the parent is gone: stop now.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Protocol};
use crate::live::{self, Mode};
use crate::run::{self, Control, Exchange, Part, WireSender};
use crate::stats::unix_us;
use crate::stats::Snapshot;
use crate::sys::FdLimit;
use crate::tally::Tally;
use crate::timeline;
use crate::view::View;

/// A line from a worker to its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToParent {
    Progress(Box<Snapshot>),
    Ramped,
    /// This worker's sender logs, after closing.
    Senders(Vec<WireSender>),
    Done(Box<Tally>),
    Failed(String),
}

/// The arguments that make a child compute exactly this configuration
/// (including the random room prefix and the source addresses) for its
/// part.
pub fn child_args(cfg: &Config, index: usize, epoch_unix_us: u64) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    fn kv(a: &mut Vec<String>, k: &str, v: String) {
        a.push(format!("--{k}"));
        a.push(v);
    }
    // With --registry and no --url, the child must not see a --url
    // either (it would take it for a fallback).
    if cfg.registry.is_none() || cfg.url_fallback {
        for u in &cfg.urls {
            kv(&mut a, "url", u.clone());
        }
    }
    if let Some(r) = &cfg.registry {
        kv(&mut a, "registry", r.clone());
    }
    kv(&mut a, "clients", cfg.clients.to_string());
    kv(&mut a, "rooms", cfg.rooms.to_string());
    kv(&mut a, "senders", cfg.senders.to_string());
    kv(&mut a, "rate", cfg.rate.to_string());
    kv(&mut a, "size", cfg.size.to_string());
    kv(
        &mut a,
        "duration",
        format!("{}us", cfg.duration.as_micros()),
    );
    kv(&mut a, "ramp", cfg.ramp.to_string());
    kv(
        &mut a,
        "protocol",
        match cfg.protocol {
            Protocol::Chat => "chat".into(),
            Protocol::Raw => "raw".into(),
        },
    );
    kv(&mut a, "app-id-regex", cfg.app_id_regex.clone());
    kv(&mut a, "grace", format!("{}us", cfg.grace.as_micros()));
    kv(
        &mut a,
        "connect-timeout",
        format!("{}us", cfg.connect_timeout.as_micros()),
    );
    kv(
        &mut a,
        "connect-concurrency",
        cfg.connect_concurrency.div_ceil(cfg.workers).to_string(),
    );
    kv(&mut a, "room-prefix", cfg.room_prefix.clone());
    kv(
        &mut a,
        "threads",
        (cfg.threads / cfg.workers).max(1).to_string(),
    );
    kv(&mut a, "workers", cfg.workers.to_string());
    if cfg.reconnect {
        a.push("--reconnect".into());
        kv(
            &mut a,
            "reconnect-attempts",
            cfg.reconnect_attempts.to_string(),
        );
        kv(
            &mut a,
            "reconnect-timeout",
            format!("{}us", cfg.reconnect_timeout.as_micros()),
        );
    }
    if cfg.jwt_rooms {
        a.push("--jwt-rooms".into());
    }
    // The secret itself goes in the environment (see `parent_main`), not
    // on a command line that `ps` shows.
    if !cfg.source_ips.is_empty() {
        let ips: Vec<String> = cfg.source_ips.iter().map(|i| i.to_string()).collect();
        kv(&mut a, "source-ips", ips.join(","));
    }
    kv(
        &mut a,
        "worker-of",
        format!("{index}/{}/{epoch_unix_us}", cfg.workers),
    );
    a.push("--quiet".into());
    a
}

/// The parent: start the workers, drive their phases, show merged
/// progress, and merge their tallies.
pub async fn parent_main(
    cfg: Arc<Config>,
    mode: Mode,
    timeline: Arc<Mutex<Vec<timeline::Point>>>,
) -> Result<Tally> {
    let exe = std::env::current_exe().context("finding my own executable to start workers")?;
    let epoch_unix_us = unix_us();
    let interrupt = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let sig = live::spawn_signal_handler(interrupt.clone(), hard_stop.clone());
    let n = cfg.workers;
    let snaps = Arc::new(Mutex::new(vec![Snapshot::default(); n]));
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<(usize, ToParent)>(n * 4);
    let mut stdins = Vec::new();
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(child_args(&cfg, i, epoch_unix_us));
        if let Some(secret) = &cfg.jwt_secret {
            cmd.env("LOADGEN_JWT_SECRET", &secret.0);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {i} ({})", exe.display()))?;
        stdins.push(child.stdin.take().expect("piped stdin"));
        let out = child.stdout.take().expect("piped stdout");
        let tx = ev_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<ToParent>(&l) {
                    Ok(m) => {
                        if tx.send((i, m)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send((i, ToParent::Failed(format!("bad line from worker: {e}"))))
                            .await;
                    }
                }
            }
            let _ = tx
                .send((i, ToParent::Failed("exited without a report".into())))
                .await;
        });
        children.push(child);
    }
    drop(ev_tx);

    let done = CancellationToken::new();
    let snaps2 = snaps.clone();
    let display = tokio::spawn(live::show(
        mode,
        View::new(cfg.describe()),
        timeline::recording(
            move || Snapshot::merge(&snaps2.lock().expect("snaps lock")),
            timeline,
        ),
        done.clone(),
        interrupt.clone(),
        hard_stop.clone(),
    ));

    let mut ramped = vec![false; n];
    let mut wire: Vec<Option<Vec<WireSender>>> = vec![None; n];
    let mut failed = vec![false; n];
    let mut sent_senders = false;
    let mut tallies: Vec<Option<Tally>> = vec![None; n];
    let mut failures = Vec::new();
    let mut sent_go = false;
    let (mut sent_stop, mut sent_hard) = (false, false);
    let mut open = n;
    while open > 0 {
        let ev = tokio::select! {
            ev = ev_rx.recv() => ev,
            _ = interrupt.cancelled(), if !sent_stop => {
                sent_stop = true;
                broadcast(&mut stdins, "stop").await;
                continue;
            }
            _ = hard_stop.cancelled(), if !sent_hard => {
                sent_hard = true;
                broadcast(&mut stdins, "hard").await;
                continue;
            }
        };
        let Some((i, m)) = ev else { break };
        match m {
            ToParent::Progress(s) => snaps.lock().expect("snaps lock")[i] = *s,
            ToParent::Ramped => ramped[i] = true,
            ToParent::Senders(w) => wire[i] = Some(w),
            ToParent::Done(t) => {
                tallies[i] = Some(*t);
                open -= 1;
            }
            ToParent::Failed(e) => {
                if tallies[i].is_none() {
                    failed[i] = true;
                    failures.push(format!("worker {i}: {e}"));
                    tallies[i] = Some(Tally::default());
                    ramped[i] = true;
                    open -= 1;
                }
            }
        }
        // Judging needs every sender's log: hand the union to everyone once
        // every worker has sent its own (or died).
        if !sent_senders && (0..n).all(|i| wire[i].is_some() || failed[i]) {
            sent_senders = true;
            let all: Vec<&WireSender> = wire.iter().flatten().flatten().collect();
            let line = format!("senders {}", serde_json::to_string(&all)?);
            broadcast(&mut stdins, &line).await;
        }
        // Everyone sends at once: only when every worker has ramped.
        if !sent_go && ramped.iter().all(|&r| r) {
            sent_go = true;
            broadcast(&mut stdins, "go").await;
        }
    }
    done.cancel();
    let _ = display.await;
    sig.abort();
    // Closing their stdin tells any worker still running to stop now.
    drop(stdins);
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let mut it = tallies.into_iter().flatten();
    let mut total = it.next().context("no worker reported")?;
    for t in it {
        total.merge(&t);
    }
    Ok(total)
}

async fn broadcast(stdins: &mut [tokio::process::ChildStdin], cmd: &str) {
    for s in stdins.iter_mut() {
        let _ = s.write_all(format!("{cmd}\n").as_bytes()).await;
        let _ = s.flush().await;
    }
}

fn emit(m: &ToParent) {
    use std::io::Write as _;
    let line = serde_json::to_string(m).expect("worker messages serialise");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A worker: run part `I/N` and report to the parent over stdout.
pub async fn child_main(cfg: Config, spec: &str, fd: FdLimit) -> Result<std::process::ExitCode> {
    let parts: Vec<u64> = spec.split('/').filter_map(|x| x.parse().ok()).collect();
    let [i, n, epoch_unix_us] = parts[..] else {
        bail!("--worker-of wants INDEX/COUNT/EPOCH_US, got {spec:?}");
    };
    let (i, n) = (i as usize, n as usize);
    if i >= n {
        bail!("--worker-of {spec}: index out of range");
    }
    // The parent's epoch as an Instant of this process: the same wall-clock
    // moment (both processes share the machine's clock).
    let since = Duration::from_micros(unix_us().saturating_sub(epoch_unix_us));
    let epoch = std::time::Instant::now()
        .checked_sub(since)
        .unwrap_or_else(std::time::Instant::now);
    // The terminal's Ctrl-C reaches the whole process group; the parent
    // decides what it means, so the worker must not die of it.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::spawn(async move { while sigint.recv().await.is_some() {} });

    let cfg = Arc::new(cfg);
    let part = Part { index: i, count: n };
    let h = run::prepare(&cfg, part, Some((epoch, epoch_unix_us)));
    let interrupt = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let (ramped_tx, ramped_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let (int2, hard2) = (interrupt.clone(), hard_stop.clone());
    let (out_tx, out_rx) = oneshot::channel::<Vec<WireSender>>();
    let (back_tx, back_rx) = oneshot::channel::<Vec<WireSender>>();
    tokio::spawn(async move {
        if let Ok(w) = out_rx.await {
            emit(&ToParent::Senders(w));
        }
    });
    tokio::spawn(async move {
        let mut go_tx = Some(go_tx);
        let mut back_tx = Some(back_tx);
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => match l.trim() {
                    "go" => {
                        if let Some(tx) = go_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    "stop" => int2.cancel(),
                    "hard" => {
                        int2.cancel();
                        hard2.cancel();
                    }
                    other => {
                        if let Some(json) = other.strip_prefix("senders ") {
                            if let (Some(tx), Ok(all)) =
                                (back_tx.take(), serde_json::from_str(json))
                            {
                                let _ = tx.send(all);
                            }
                        }
                    }
                },
                _ => {
                    // The parent is gone.
                    int2.cancel();
                    hard2.cancel();
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        if ramped_rx.await.is_ok() {
            emit(&ToParent::Ramped);
        }
    });
    let (stats, phase, clients) = (h.stats.clone(), h.phase.clone(), h.clients);
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            emit(&ToParent::Progress(Box::new(Snapshot::take(
                &stats,
                phase.name(),
                clients,
                fd.soft,
            ))));
        }
    });
    let control = Control {
        ramped: Some(ramped_tx),
        go: go_rx,
        interrupt,
        hard_stop,
        exchange: Some(Exchange {
            out: out_tx,
            back: back_rx,
        }),
    };
    let r = run::run(cfg, part, h, control).await;
    progress.abort();
    match r {
        Ok(t) => emit(&ToParent::Done(Box::new(t))),
        Err(e) => emit(&ToParent::Failed(format!("{e:#}"))),
    }
    Ok(std::process::ExitCode::SUCCESS)
}
