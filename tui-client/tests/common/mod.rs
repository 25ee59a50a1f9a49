//! Driving the real binary in a tmux server of the test's own.

#![allow(dead_code)] // each test binary uses a different part

use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own (`-L`), so the test never touches the user's
/// sessions; killed on drop.
pub(crate) struct Tmux {
    socket: String,
    /// The client's log, shown (its tail) when a wait times out.
    pub(crate) log: Option<std::path::PathBuf>,
}

impl Tmux {
    /// Start `command` in a 120x40 session; `name` tells test runs apart.
    pub(crate) fn start(name: &str, command: &str) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "tmux is required for this end-to-end test but was not found: \
                 install it (Debian/Ubuntu: apt-get install tmux; .ci/run does)"
            ),
        }
        let t = Tmux {
            socket: format!("tui-{name}-{}", std::process::id()),
            log: None,
        };
        // remain-on-exit keeps the pane (and its modes) after the program
        // ends, so a test can look at what the program left behind.
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "40",
                "-s",
                "main",
                command,
                ";",
                "set-option",
                "-w",
                "-t",
                "main",
                "remain-on-exit",
                "on",
            ])
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux")
    }

    pub(crate) fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "main"]).stdout)
            .into_owned()
    }

    /// Type a line and press Enter (`-l`: literally, no key names).
    pub(crate) fn type_line(&self, text: &str) {
        self.cmd(&["send-keys", "-t", "main", "-l", text]);
        self.cmd(&["send-keys", "-t", "main", "Enter"]);
    }

    pub(crate) fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", "main"]).status.success()
    }

    /// Wait until the screen satisfies `pred`; panics with the screen.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let log = self
                    .log
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; the screen:\n{s}\n\
                     client log (newest first):\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

impl Tmux {
    /// Whether the program in the pane has ended (with remain-on-exit the
    /// pane stays, marked dead).
    pub(crate) fn pane_dead(&self) -> bool {
        self.display("#{pane_dead}") == "1"
    }

    /// A tmux format for the pane, e.g. `#{alternate_on}`.
    pub(crate) fn display(&self, format: &str) -> String {
        String::from_utf8_lossy(
            &self
                .cmd(&["display-message", "-p", "-t", "main", format])
                .stdout,
        )
        .trim()
        .to_string()
    }

    /// Wait until the program in the pane ends.
    pub(crate) fn wait_dead(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.pane_dead() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}
