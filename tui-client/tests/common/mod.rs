//! Driving the real binary in a tmux server of the test's own.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own (`-L`), so the test never touches the user's
/// sessions; killed on drop.
pub(crate) struct Tmux {
    socket: String,
    /// The client's log, shown (its tail) when a wait times out.
    pub(crate) log: Option<PathBuf>,
    /// Where the shell leaves the exit status and the terminal settings.
    dir: PathBuf,
}

impl Tmux {
    /// Start `program` (a command line without single quotes) in a 120x40
    /// session; `name` tells test runs apart. It runs under `sh`, which
    /// afterwards writes its exit status to `dir/exit-status` and the
    /// terminal settings (`stty -a`) to `dir/stty.txt`, then lingers 20 s
    /// so the pane's modes can be checked. Nothing outlives a killed test
    /// run for long: the program is limited to 5 minutes, and the tmux
    /// server exits with its last session. (`--foreground` keeps the
    /// program in the terminal's foreground process group: without it,
    /// switching to raw mode would stop it with SIGTTOU.)
    pub(crate) fn start(name: &str, program: &str, dir: &Path) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "tmux is required for this end-to-end test but was not found: \
                 install it (Debian/Ubuntu: apt-get install tmux; .ci/run does)"
            ),
        }
        std::fs::create_dir_all(dir).expect("creating the test directory");
        let t = Tmux {
            socket: format!("tui-{name}-{}", std::process::id()),
            log: None,
            dir: dir.to_path_buf(),
        };
        let command = format!(
            "sh -c 'timeout --foreground 300 {program}; echo $? >{d}/exit-status; stty -a >{d}/stty.txt; sleep 20'",
            d = dir.display()
        );
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
                &command,
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
        // kill-server leaves the socket file behind; remove it too.
        let socket = self.display("#{socket_path}");
        let _ = self.cmd(&["kill-server"]);
        if !socket.is_empty() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Tmux {
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

    /// Wait until the program ends; its exit status.
    pub(crate) fn wait_exit(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let path = self.dir.join("exit-status");
        while Instant::now() < deadline {
            if let Ok(status) = std::fs::read_to_string(&path) {
                if status.ends_with('\n') {
                    return Some(status.trim().to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The terminal settings the shell saw once the program had ended.
    pub(crate) fn stty_after(&self) -> String {
        // The shell writes it right after the exit status.
        let path = self.dir.join("stty.txt");
        for _ in 0..50 {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if !s.is_empty() {
                    return s;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no stty output in {}", path.display())
    }
}
