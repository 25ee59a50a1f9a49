//! The live view's driver: once a second it takes a [`Snapshot`], records
//! it on the timeline, and shows it as the ratatui dashboard
//! ([`crate::tui`]) or as one progress line ([`View::line`]) when there is
//! no terminal (`--no-tui`); plus the two-stage Ctrl-C.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stats::Snapshot;
use crate::view::View;

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
