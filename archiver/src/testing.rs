//! Real PostgreSQL and redis-server processes on ephemeral loopback ports,
//! for this crate's tests and the server's (feature `testing`). No mocks:
//! a missing binary is an error that names `scripts/install-deps.sh`.
//!
//! PostgreSQL refuses to run as root. Tests run as root here and in CI, so
//! as root `initdb` and `postgres` run as the `postgres` system user (made
//! by Debian's package) on a temporary directory handed to it.
//!
//! [`Postgres::kill9`] sends SIGKILL to the postmaster and every backend
//! at once, like a crash, and [`Postgres::restart`] brings it back on the
//! same data directory and port, through crash recovery.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;
use tokio::sync::oneshot;

use crate::{Config, Metrics};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The hint in every "not installed" error.
const INSTALL_HINT: &str =
    "run scripts/install-deps.sh (Debian packages postgresql and redis-server)";

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it
/// right after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The directory of PostgreSQL's server binaries: `$PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin` that has `initdb`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        bail!("PG_BIN={} has no initdb: {INSTALL_HINT}", dir.display());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).with_context(|| {
        format!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): {INSTALL_HINT}")
    })
}

/// The uid and gid to run PostgreSQL as: the `postgres` user when we are
/// root, else ourselves (`None`).
fn pg_owner() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self")
        .context("read /proc/self")?
        .uid();
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .with_context(|| format!("running as root, and there is no postgres user to run PostgreSQL as: {INSTALL_HINT}"))
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Send `signal` (e.g. `-KILL`) to a pid, or to a process group with a
/// negative pid, through kill(1) (the workspace forbids `unsafe`).
pub fn signal(pid: i64, signal: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .args([signal, "--", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !st.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

/// A PostgreSQL server on 127.0.0.1, in a temporary directory, killed and
/// removed on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// `initdb` a fresh cluster (user `postgres`, trust auth, loopback
    /// TCP only) and start it on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let owner = pg_owner()?;
        let dir = tempfile::Builder::new().prefix("archiver-pg-").tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("chown the data dir to postgres")?;
        }
        let log = File::create(dir.path().join("initdb.log"))?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-D",
                "data",
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log);
        as_owner(&mut initdb, owner);
        let st = initdb.status().context("run initdb")?;
        if !st.success() {
            bail!(
                "initdb failed ({st}):\n{}",
                tail(&dir.path().join("initdb.log"), 30)
            );
        }
        let mut pg = Self {
            dir,
            bin,
            port: 0,
            owner,
            child: None,
        };
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.spawn() {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.args(["-D", "data", "-p", &self.port.to_string()])
            // Loopback TCP only; no Unix socket to clash with a system one.
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            // A killed process loses nothing the kernel already has; fsync
            // only guards against a machine crash, which tests do not make.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=16MB",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        as_owner(&mut cmd, self.owner);
        let child = cmd.spawn().context("start postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("postgres exited ({st}):\n{}", self.log_tail(30));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    "1",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
        bail!(
            "postgres did not accept connections within {READY_TIMEOUT:?}:\n{}",
            self.log_tail(30)
        )
    }

    /// The URL of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path(), n)
    }

    /// SIGKILL the postmaster and every process it started (backends,
    /// checkpointer, WAL writer) at once, like a crash, and wait for the
    /// postmaster. Its children call `setsid()`, so its process group is
    /// not enough: the postmaster is stopped first (it cannot fork
    /// meanwhile), then its children are found in `/proc`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pm = c.id();
            let _ = signal(i64::from(pm), "-STOP");
            let mut pids: Vec<String> = children_of(pm).iter().map(u32::to_string).collect();
            pids.push(pm.to_string());
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data directory and port (after
    /// [`Postgres::kill9`]: through crash recovery).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The killed backends may take a moment to release the
                // port and shared memory.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "postgres restart: retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Create database `name` and return its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url()).await?;
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
            .execute(&mut c)
            .await?;
        c.close().await?;
        Ok(self.url_of(name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Run `cmd` as `owner` (uid, gid), dropping root's groups.
fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

/// An archiver running in this process (the same [`crate::run`] as the
/// binary), with its metrics at hand; stopped when [`Archiver::stop`] is
/// awaited or, abruptly, on drop.
#[derive(Debug)]
pub struct Archiver {
    pub metrics: std::sync::Arc<Metrics>,
    /// Where `/metrics` and `/healthz` answer.
    pub metrics_addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Archiver {
    /// Start one with `config` (see [`Config::for_test`]); metrics on a
    /// free loopback port whatever `--metrics-listen` says.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics_addr = listener.local_addr()?;
        let metrics = std::sync::Arc::new(Metrics::default());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(crate::run_with_metrics(
            config,
            listener,
            metrics.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Ok(Self {
            metrics,
            metrics_addr,
            stop: Some(tx),
            handle,
        })
    }

    /// Shut down as on SIGTERM (the batch in flight is finished) and wait
    /// at most `timeout` for it.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(timeout, &mut self.handle)
            .await
            .context("the archiver did not stop in time")??
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A `redis-server` on 127.0.0.1 without persistence, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers PING.
    pub fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("archiver-redis-")
                .tempdir()?;
            let port = free_port()?;
            let log = File::create(dir.path().join("redis.log"))?;
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("start redis-server: {INSTALL_HINT}"))?;
            let mut r = Self { child, port, dir };
            match r.wait_ready() {
                Ok(()) => return Ok(r),
                // The port was taken meanwhile: `r` is killed on drop.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!(
                    "redis-server exited ({st}):\n{}",
                    tail(&self.dir.path().join("redis.log"), 20)
                );
            }
            if ping(self.port).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server did not answer within {READY_TIMEOUT:?}")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf != b"+PONG\r\n" {
        bail!("unexpected PING answer");
    }
    Ok(())
}
