//! The live view's state and its plain form: once a second a
//! [`Snapshot`] comes in, [`View::update`] turns it into rates and rolling
//! history, and either the ratatui dashboard ([`crate::tui`]) draws it or
//! [`View::line`] prints one progress line (no terminal, `--no-tui`).

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::fmt_us;
use crate::stats::Snapshot;

/// Seconds of history the dashboard keeps for its charts.
pub const HISTORY: usize = 120;

/// What the live view shows, updated once per snapshot.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub last: Snapshot,
    /// Sends and deliveries per second over the last interval.
    pub send_rate: f64,
    pub recv_rate: f64,
    pub send_hist: VecDeque<u64>,
    pub recv_hist: VecDeque<u64>,
    pub p99_hist: VecDeque<u64>,
    pub config_line: String,
}

impl View {
    pub fn new(config_line: String) -> Self {
        Self {
            config_line,
            ..Self::default()
        }
    }

    pub fn update(&mut self, s: Snapshot) {
        let dt = (s.elapsed_ms.saturating_sub(self.last.elapsed_ms) as f64 / 1000.0).max(1e-3);
        self.send_rate = s.sent.saturating_sub(self.last.sent) as f64 / dt;
        self.recv_rate = s.received.saturating_sub(self.last.received) as f64 / dt;
        push(&mut self.send_hist, self.send_rate as u64);
        push(&mut self.recv_hist, self.recv_rate as u64);
        push(&mut self.p99_hist, s.interval_p99);
        self.last = s;
    }

    /// One progress line, e.g. for CI logs.
    pub fn line(&self) -> String {
        let s = &self.last;
        let apps: Vec<String> = s.per_app.iter().map(|(a, n)| format!("{a}:{n}")).collect();
        format!(
            "[{:>6.1}s] {:<7} conn {}/{} fail {} drop {} [{}] | sent {} ({:.0}/s) recv {} ({:.0}/s) | p50 {} p99 {} | dup {} ooo {} err {} | fds {}/{}",
            s.elapsed_ms as f64 / 1000.0,
            s.phase,
            s.connected,
            s.clients,
            s.failed,
            s.dropped,
            apps.join(" "),
            s.sent,
            self.send_rate,
            s.received,
            self.recv_rate,
            if s.interval_count > 0 { fmt_us(s.interval_p50) } else { "-".into() },
            if s.interval_count > 0 { fmt_us(s.interval_p99) } else { "-".into() },
            s.duplicated,
            s.out_of_order,
            s.errors,
            s.open_fds,
            s.fd_limit,
        )
    }
}

fn push(q: &mut VecDeque<u64>, v: u64) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tui,
    Lines,
    Quiet,
}

impl Mode {
    /// The dashboard only when both stdin and stdout are terminals (and
    /// not asked otherwise); else a line per second on stderr.
    pub fn choose(no_tui: bool, quiet: bool, json_to_stdout: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if !no_tui
            && !json_to_stdout
            && std::io::stdout().is_terminal()
            && std::io::stdin().is_terminal()
        {
            Mode::Tui
        } else {
            Mode::Lines
        }
    }
}

/// One second of the run, for the report's `timeline`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t_s: f64,
    pub phase: String,
    pub connected: u64,
    pub failed: u64,
    pub sends_per_s: f64,
    pub deliveries_per_s: f64,
    /// Fan-out latency over this second only (0 without deliveries).
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

/// Most points kept: a day at one per second. Longer runs keep the first
/// day, so the timeline cannot grow without limit.
const MAX_POINTS: usize = 86_400;

/// Wrap a snapshot source so that every snapshot also lands in `timeline`.
pub fn recording<F: FnMut() -> Snapshot>(
    mut snap: F,
    timeline: std::sync::Arc<std::sync::Mutex<Vec<Point>>>,
) -> impl FnMut() -> Snapshot {
    let mut last = Snapshot::default();
    move || {
        let s = snap();
        let dt = (s.elapsed_ms.saturating_sub(last.elapsed_ms) as f64 / 1000.0).max(1e-3);
        let p = Point {
            t_s: s.elapsed_ms as f64 / 1000.0,
            phase: s.phase.clone(),
            connected: s.connected,
            failed: s.failed,
            sends_per_s: (s.sent.saturating_sub(last.sent) as f64 / dt).round(),
            deliveries_per_s: (s.received.saturating_sub(last.received) as f64 / dt).round(),
            p50_us: s.interval_p50,
            p99_us: s.interval_p99,
            errors: s.errors,
        };
        let mut t = timeline.lock().expect("timeline lock");
        if t.len() < MAX_POINTS {
            t.push(p);
        }
        last = s.clone();
        s
    }
}

/// Show progress until `done` is cancelled. `snap` is called once a second
/// in every mode (quietly in `Quiet`), so the timeline is always recorded.
/// In TUI mode, `q`/Esc/Ctrl-C cancel `interrupt` (a second time:
/// `hard_stop`), since the terminal's raw mode turns Ctrl-C into a key.
pub async fn show<F>(
    mode: Mode,
    mut view: View,
    mut snap: F,
    done: CancellationToken,
    interrupt: CancellationToken,
    hard_stop: CancellationToken,
) where
    F: FnMut() -> Snapshot + Send,
{
    match mode {
        Mode::Quiet => ticks(&mut view, snap, done, false).await,
        Mode::Lines => ticks(&mut view, snap, done, true).await,
        Mode::Tui => {
            if let Err(e) =
                crate::tui::run(&mut view, &mut snap, done.clone(), interrupt, hard_stop).await
            {
                eprintln!("loadgen: dashboard failed ({e}); falling back to progress lines");
                ticks(&mut view, snap, done, true).await;
            }
        }
    }
}

async fn ticks<F: FnMut() -> Snapshot>(
    view: &mut View,
    mut snap: F,
    done: CancellationToken,
    print: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                view.update(snap());
                if print {
                    eprintln!("{}", view.line());
                }
            }
            _ = done.cancelled() => {
                // A last point, so the timeline covers the end of the run.
                view.update(snap());
                return;
            }
        }
    }
}

/// Turn SIGINT/SIGTERM into the two-stage stop: first drain, then stop now.
pub fn spawn_signal_handler(
    interrupt: CancellationToken,
    hard_stop: CancellationToken,
) -> Arc<tokio::task::JoinHandle<()>> {
    Arc::new(tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for stage in 0..2 {
            let term_fut = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term_fut => {}
            }
            if stage == 0 {
                eprintln!("\nloadgen: stopping: draining in-flight messages, then the report (Ctrl-C again to skip the drain)");
                interrupt.cancel();
            } else {
                hard_stop.cancel();
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_differences() {
        let mut v = View::new(String::new());
        v.update(Snapshot {
            elapsed_ms: 1000,
            sent: 10,
            received: 100,
            ..Snapshot::default()
        });
        v.update(Snapshot {
            elapsed_ms: 2000,
            sent: 30,
            received: 500,
            connected: 7,
            clients: 9,
            interval_count: 5,
            interval_p99: 2500,
            ..Snapshot::default()
        });
        assert_eq!((v.send_rate, v.recv_rate), (20.0, 400.0));
        let l = v.line();
        assert!(l.contains("conn 7/9"), "{l}");
        assert!(l.contains("p99 2.50ms"), "{l}");
        assert_eq!(v.recv_hist.len(), 2);
    }
}
