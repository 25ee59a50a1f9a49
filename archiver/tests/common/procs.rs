//! Whole binaries as child processes, so `kill -9` is real: the
//! `archiver` of this crate and the chat `server` of `chat-server`. Each
//! logs JSON to a file in the test's directory; the address it bound is
//! read back from its log. Killed (SIGKILL) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Env, T};

/// A child process logging JSON lines to `log`.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let child = cmd
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, log }
    }

    /// An `archiver` process (the real binary) named `name` in the
    /// consumer groups: batches of 50, scans every 200 ms, another
    /// consumer's pending entries claimed after 2 s idle.
    pub fn archiver(dir: &Path, name: &str, env: &Env) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_archiver"));
        cmd.args(["--redis-url", &env.redis.url()])
            .args(["--database-url", &env.db_url])
            .args(["--consumer", name, "--batch", "50"])
            .args(["--scan-interval", "200ms", "--poll-interval", "20ms"])
            .args(["--claim-idle", "2s", "--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        Proc::spawn(cmd, dir.join(format!("{name}.log")))
    }

    /// The chat `server` binary (built by cargo if missing, see
    /// `chat_cluster::find_server_bin`) on an ephemeral loopback port,
    /// with `--history history --archive-backlog backlog` and no rate
    /// limit a test's bursts would hit.
    pub fn server(dir: &Path, redis_url: &str, history: u32, backlog: u32) -> Proc {
        let bin = chat_cluster::find_server_bin().expect("the chat server binary");
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--app-id", "a1"])
            .args(["--redis-url", redis_url])
            .args(["--history", &history.to_string()])
            .args(["--archive-backlog", &backlog.to_string()])
            .args(["--rate", "100000", "--burst", "100000"])
            .env("RUST_LOG", "info");
        Proc::spawn(cmd, dir.join("server.log"))
    }

    /// The `addr` field of the first log line whose message is `message`
    /// (the archiver's "metrics listening", the server's "chat server
    /// listening").
    pub async fn logged_addr(&self, message: &str) -> String {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            let text = self.log_text();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == message {
                    return v["fields"]["addr"].as_str().unwrap().to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {message:?} in {}", self.log.display());
    }

    /// The archiver's metrics address.
    pub async fn metrics_addr(&self) -> String {
        self.logged_addr("metrics listening").await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait (bounded by [`T`]) for it to exit; its status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        chat_archiver::testing::signal(i64::from(self.child.id()), "-TERM").unwrap();
        let deadline = Instant::now() + T;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "exits after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a series in a Prometheus text: `name` alone, or with
/// labels (the server's carry `app_id`); the first one listed.
pub fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
