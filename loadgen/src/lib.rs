//! `loadgen`: a load generator and cross-instance delivery checker for
//! WebSocket group chat.
//!
//! It opens many sockets (through HAProxy by default), lets a subset send
//! on an open-loop schedule, and checks at every receiver that every
//! message arrived exactly once and in order, with fan-out latency in
//! HdrHistograms (from the scheduled send time, so coordinated omission is
//! corrected, and from the actual send) and a sender-APP_ID ×
//! receiver-APP_ID matrix that proves messages cross instances.
//!
//! # Layout
//! - [`opts`]: the clap CLI; [`presets`]: built-in scenarios;
//!   [`config`]: the validated [`config::Config`] and client placement.
//! - [`sys`]: file and port limits, warnings, loopback source binding.
//! - [`probe`]: the probe id carried by every send; byte scans of deliveries.
//! - [`client`]: one simulated client (connect, join, read, send);
//!   [`kinds`]: failures as bounded report keys.
//! - [`checker`]: per-receiver verification (lost, duplicated, out of order).
//! - [`stats`]: live counters, sharded histograms, APP_ID table, snapshots.
//! - [`hist`]: HdrHistogram helpers, serde, `.hgrm` output.
//! - [`sched`]: the open-loop send schedule (one thread per process).
//! - [`run`]: the phases of one process's run (ramp, send, drain, close).
//! - [`worker`]: spreading a run over child processes; merging.
//! - [`tally`]: mergeable raw results; [`report`]: the JSON report;
//!   [`human`]: the text summary; [`thresholds`]: CI limits.
//! - [`view`]: the live view's state and progress line; [`tui`]: the
//!   ratatui dashboard; [`live`]: drives either once a second;
//!   [`timeline`]: the per-second record kept for the report.
//! - [`units`]: durations for people.
//! - [`jwt`]: HS256 tokens per client (`--jwt-secret`).
//! - [`registry`]: `--registry`: ask `GET /connect` which instance to
//!   connect to, then connect straight to it.
//!
//! Dependencies run one way: `opts` → `config` → `presets`, `thresholds`;
//! `report` → `config`, `tally`, `thresholds`, `timeline`; `human` →
//! `report`; `live` → `view`, `tui`, `timeline`; `tui` → `view`.
//! - [`relay`]: a deliberately faulty relay that tests (and people) use to
//!   prove the checker catches drops, duplicates and reordering.

pub mod checker;
pub mod client;
pub mod config;
pub mod faults;
pub mod frames;
pub mod hist;
pub mod human;
pub mod jwt;
pub mod kinds;
pub mod live;
pub mod opts;
pub mod presets;
pub mod probe;
pub mod registry;
pub mod relay;
pub mod report;
pub mod run;
pub mod sched;
pub mod stats;
pub mod sys;
pub mod tally;
pub mod thresholds;
pub mod timeline;
pub mod tui;
pub mod units;
pub mod view;
pub mod worker;
pub mod ws;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::live::Mode;
use crate::opts::Opts;
use crate::report::Report;
use crate::run::{Control, Part};
use crate::stats::Snapshot;
use crate::tally::Tally;
use crate::view::View;

/// Exit code when a threshold failed.
pub const EXIT_THRESHOLD: u8 = 1;
/// Exit code when the run could not be carried out (bad flags, I/O).
pub const EXIT_ERROR: u8 = 2;

/// The binary's entry point.
pub fn main_entry() -> ExitCode {
    let opts = <Opts as clap::Parser>::parse();
    match run_cli(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Run with parsed options: the run itself, the report, the exit code.
pub fn run_cli(opts: &Opts) -> Result<ExitCode> {
    let fd = sys::raise_fd_limit();
    let cfg = opts.resolve(fd.socket_budget())?;
    // One thread: the current-thread scheduler, which skips work stealing
    // and cross-thread wakeups (cheaper per delivery; workers use it).
    let mut builder = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some(spec) = &opts.worker_of {
        let code = rt.block_on(worker::child_main(cfg, spec, fd));
        // The stdin reader sits in a blocking read that only the parent can
        // end; do not wait for it.
        rt.shutdown_background();
        return code;
    }
    for w in sys::capacity_warnings(
        cfg.clients.div_ceil(cfg.workers),
        cfg.clients.div_ceil(cfg.urls.len()),
        cfg.source_ips.len(),
        fd,
        cfg.workers,
    ) {
        eprintln!("loadgen: warning: {w}");
    }
    if opts.source_ips.is_some()
        && !cfg
            .urls
            .iter()
            .all(|u| u.contains("127.") || u.contains("localhost"))
    {
        eprintln!(
            "loadgen: warning: --source-ips only applies to IPv4 loopback destinations; \
             connections to other hosts use the kernel's choice of source"
        );
    }
    let json_stdout = opts.json.as_deref() == Some("-");
    let mode = Mode::choose(opts.no_tui, opts.quiet, json_stdout);
    let cfg = Arc::new(cfg);
    let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tally = rt.block_on(async {
        if cfg.workers > 1 {
            worker::parent_main(cfg.clone(), mode, timeline.clone()).await
        } else {
            run_local(cfg.clone(), mode, fd, timeline.clone()).await
        }
    })?;
    drop(rt);
    let timeline = std::mem::take(&mut *timeline.lock().expect("timeline lock"));
    finish(opts, &cfg, &tally, timeline)
}

/// One process, every room, with a live view.
pub async fn run_local(
    cfg: Arc<Config>,
    mode: Mode,
    fd: sys::FdLimit,
    timeline: Arc<std::sync::Mutex<Vec<timeline::Point>>>,
) -> Result<Tally> {
    let interrupt = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let sig = live::spawn_signal_handler(interrupt.clone(), hard_stop.clone());
    let h = run::prepare(&cfg, Part::ALL, None);
    let (ramped_tx, ramped_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    // A standalone run starts sending as soon as it has ramped up.
    tokio::spawn(async move {
        if ramped_rx.await.is_ok() {
            let _ = go_tx.send(());
        }
    });
    let done = CancellationToken::new();
    let view = View::new(cfg.describe());
    let (stats, phase, clients) = (h.stats.clone(), h.phase.clone(), h.clients);
    let display = tokio::spawn(live::show(
        mode,
        view,
        timeline::recording(
            move || Snapshot::take(&stats, phase.name(), clients, fd.soft),
            timeline,
        ),
        done.clone(),
        interrupt.clone(),
        hard_stop.clone(),
    ));
    let control = Control {
        ramped: Some(ramped_tx),
        go: go_rx,
        interrupt,
        hard_stop,
        exchange: None,
    };
    let result = run::run(cfg, Part::ALL, h, control).await;
    done.cancel();
    let _ = display.await;
    sig.abort();
    result
}

/// Print the summary, write `--json` and `--hgrm`, and pick the exit code.
pub fn finish(
    opts: &Opts,
    cfg: &Config,
    tally: &Tally,
    timeline: Vec<timeline::Point>,
) -> Result<ExitCode> {
    let mut report = Report::new(cfg, tally);
    report.set_timeline(timeline, tally);
    let text = human::summary(&report);
    let json = serde_json::to_string_pretty(&report)?;
    match opts.json.as_deref() {
        Some("-") => {
            eprint!("{text}");
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")?;
            out.flush()?;
        }
        Some(path) => {
            print!("{text}");
            std::fs::write(path, json + "\n").with_context(|| format!("writing --json {path}"))?;
        }
        None => print!("{text}"),
    }
    if let Some(path) = &opts.hgrm {
        std::fs::write(path, tally.latency.hgrm())
            .with_context(|| format!("writing --hgrm {}", path.display()))?;
    }
    // A run that opened nothing measured nothing: say so, and do not let a
    // CI job without thresholds pass on it.
    if tally.attempted > 0 && tally.opened == 0 {
        let top = tally.errors.iter().max_by_key(|(_, n)| **n);
        // A server that refused the token is running: say what to check.
        let hint = match top {
            Some((k, _)) if k.starts_with("upgrade: http 401") => {
                if cfg.jwt_secret.is_some() {
                    "is --jwt-secret the server's?".to_string()
                } else {
                    "does the server want a token (--jwt-secret)?".to_string()
                }
            }
            Some((k, _)) if k.starts_with("upgrade: http 403") => {
                "the server refused this client (Origin?)".to_string()
            }
            _ => match &cfg.registry {
                Some(r) => format!("does {r} answer, and are the instances it names up?"),
                None => format!("is the server running at {}?", cfg.urls.join(" ")),
            },
        };
        eprintln!(
            "loadgen: error: no connection could be opened{}: {hint}",
            top.map(|(k, n)| format!(" ({n} × {k})"))
                .unwrap_or_default(),
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if tally.sent > 0 && tally.received == 0 {
        eprintln!(
            "loadgen: warning: {} messages were sent but no delivery was received",
            tally.sent
        );
    }
    Ok(if report.thresholds.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_THRESHOLD)
    })
}
