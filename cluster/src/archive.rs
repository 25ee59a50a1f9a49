//! The archive of a cluster started with [`ClusterOptions::archive`]
//! (`cluster up --archive`): a PostgreSQL server on loopback in a
//! temporary directory, database [`DATABASE`], and one `archiver` process
//! that copies the rooms' Redis Streams into its `messages` table. Every
//! server gets `--database-url` when its binary takes the flag.
//!
//! PostgreSQL is Debian's `postgresql` package (`initdb` and `postgres`
//! from `/usr/lib/postgresql/*/bin`, or `$PG_BIN`), started the way
//! `chat_archiver::testing::Postgres` starts it for the archiver's tests:
//! `initdb` with trust authentication, TCP on 127.0.0.1 only, no Unix
//! socket, and, since PostgreSQL refuses to run as root, as the `postgres`
//! system user when we are root. The logic is copied rather than shared:
//! chat-archiver's tests depend on this crate, and its harness is
//! async, uses `tempfile` and does not tie PostgreSQL's life to ours
//! (`PR_SET_PDEATHSIG`, see [`procs`]).
//!
//! [`ClusterOptions::archive`]: crate::ClusterOptions::archive

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{self, Child};
use crate::Cluster;

/// The database the archiver writes and the servers read.
pub const DATABASE: &str = "chat";

/// What every "not installed" error says to do.
const INSTALL_HINT: &str = "run scripts/install-deps.sh (Debian package postgresql) or set PG_BIN";

/// How long PostgreSQL may take to accept connections, and the archiver
/// to create its table.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory of PostgreSQL's server binaries: `$PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin` that has `initdb`.
pub fn pg_bin_dir() -> Result<PathBuf> {
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
fn pg_owner() -> Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .with_context(|| {
            format!("running as root, and there is no postgres user to run PostgreSQL as: {INSTALL_HINT}")
        })
}

/// Run `cmd` as `owner` (uid, gid; root's groups are dropped by std).
fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

/// The pids whose parent is `parent`, from `/proc`.
pub fn children_of(parent: u32) -> Vec<u32> {
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

/// A PostgreSQL server on 127.0.0.1 whose data lives in a temporary
/// directory; stopped (fast shutdown) and the directory removed on drop.
#[derive(Debug)]
pub struct Postgres {
    /// The temporary directory (`data/` is the cluster), owned by the
    /// user PostgreSQL runs as.
    dir: PathBuf,
    /// `initdb`, `postgres`, `pg_isready`, `createdb`, `psql`.
    bin: PathBuf,
    port: u16,
    /// The postmaster (`postgres.log` in the cluster's log directory);
    /// `None` once stopped.
    child: Option<Child>,
}

impl Postgres {
    /// `initdb` a fresh cluster (user `postgres`, trust authentication),
    /// start it on `port` (0: a free one) with its log in
    /// `<log_dir>/postgres.log`, wait until it accepts connections and
    /// create database [`DATABASE`].
    pub fn start(log_dir: &Path, port: u16) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let owner = pg_owner()?;
        let port = if port == 0 { procs::free_port()? } else { port };
        let mut pg = Self {
            dir: procs::temp_dir("chat-cluster-pg")?,
            bin,
            port,
            child: None,
        };
        // From here on a failure drops `pg`, which removes the directory.
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pg.dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", pg.dir.display()))?;
        }
        let mut initdb = Command::new(pg.bin.join("initdb"));
        initdb
            .args(["-D", "data", "-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .current_dir(&pg.dir);
        as_owner(&mut initdb, owner);
        let out = initdb.output().context("running initdb")?;
        let initdb_log = log_dir.join("postgres-initdb.log");
        std::fs::write(&initdb_log, [&out.stdout[..], &out.stderr[..]].concat())
            .with_context(|| format!("writing {}", initdb_log.display()))?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut cmd = Command::new(pg.bin.join("postgres"));
        cmd.args(["-D", "data", "-p", &port.to_string()])
            // Loopback TCP only; no Unix socket to clash with a system
            // PostgreSQL's.
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            // The data dies with the cluster: fsync guards only against a
            // machine crash.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .current_dir(&pg.dir);
        as_owner(&mut cmd, owner);
        pg.child = Some(Child::spawn_command("postgres", cmd, log_dir)?);
        pg.wait_ready()?;
        let out = Command::new(pg.bin.join("createdb"))
            .args(pg.conn_args())
            .arg(DATABASE)
            .output()
            .context("running createdb")?;
        if !out.status.success() {
            bail!(
                "createdb {DATABASE} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(pg)
    }

    /// `-h 127.0.0.1 -p PORT -U postgres` for the client tools.
    fn conn_args(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]
        .map(String::from)
        .to_vec()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let conn_args = self.conn_args();
        loop {
            let child = self.child.as_mut().context("postgres is not running")?;
            if let Some(st) = child.exited() {
                let tail = child.log_tail(20);
                self.child = None;
                bail!("postgres exited ({st}):\n{tail}");
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-t", "1"])
                .args(&conn_args)
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections on port {} within {READY_TIMEOUT:?}\n{}",
                    self.port,
                    child.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/chat`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// The temporary directory that holds the data (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run `sql` in database [`DATABASE`] with `psql` and return its
    /// unaligned, tuples-only output (`|` between columns, a row a line).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(self.conn_args())
            .args(["-d", DATABASE, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stop it: fast shutdown (SIGINT: clients are disconnected, the
    /// postmaster waits for every backend), and after 10 s SIGKILL to the
    /// postmaster and every process it started.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pm = child.pid();
        if procs::signal(pm, libc::SIGINT).is_ok() && child.wait_exit(Duration::from_secs(10)) {
            return;
        }
        // Its children call setsid(), so its process group is not enough:
        // freeze it (it cannot fork meanwhile), then kill them and it.
        let _ = procs::signal(pm, libc::SIGSTOP);
        for pid in children_of(pm) {
            let _ = procs::signal(pid, libc::SIGKILL);
        }
        child.kill();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "chat-cluster: cannot remove PostgreSQL's directory {}: {e}",
                self.dir.display()
            );
        }
    }
}

impl Cluster {
    /// Start PostgreSQL and the archiver (archive mode), the archiver once
    /// it has created its table; then decide whether the servers get
    /// `--database-url`.
    pub(crate) fn start_archive(&mut self) -> Result<()> {
        let pg = Postgres::start(&self.log_dir, self.opts.postgres_port)?;
        let url = pg.url();
        self.postgres = Some(pg);
        self.start_archiver()?;
        self.server_db_args = if server_takes_database_url(&self.server_bin) {
            vec!["--database-url".into(), url]
        } else {
            if self.opts.servers > 0 {
                eprintln!(
                    "chat-cluster: warning: {} has no --database-url flag: the servers run without the archive",
                    self.server_bin.display()
                );
            }
            Vec::new()
        };
        Ok(())
    }

    /// The archiver's Redis arguments: those of a server without an
    /// override ([`Cluster::server_redis_args`]), which the archiver's
    /// flags share.
    pub fn archiver_redis_args(&self) -> Vec<String> {
        match (&self.sentinels, &self.redis_cluster) {
            (Some(s), _) => vec![
                "--redis-sentinels".into(),
                s.sentinel_addrs().join(","),
                "--redis-sentinel-master".into(),
                s.master_name().to_string(),
            ],
            (None, Some(c)) => vec!["--redis-cluster".into(), c.node_addrs().join(",")],
            (None, None) => vec!["--redis-url".into(), self.redis_url()],
        }
    }

    /// Start (or restart) the archiver against the cluster's Redis and
    /// PostgreSQL, its metrics on its port, and wait until its `messages`
    /// table exists (it runs its migrations at start).
    pub fn start_archiver(&mut self) -> Result<()> {
        let (Some(pg), Some(bin)) = (&self.postgres, &self.archiver_bin) else {
            bail!("the cluster runs without the archive (ClusterOptions::archive)");
        };
        if self.archiver.is_some() {
            bail!("the archiver is running");
        }
        let mut args = self.archiver_redis_args();
        args.extend([
            "--database-url".into(),
            pg.url(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.archiver_port),
            "--consumer".into(),
            "cluster-archiver".into(),
        ]);
        let mut child = Child::spawn(
            "archiver",
            bin.as_os_str(),
            &args,
            &[("RUST_LOG", self.opts.server_log.as_str())],
            &self.log_dir,
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = child.exited() {
                bail!("the archiver exited ({st}):\n{}", child.log_tail(20));
            }
            let table = pg.psql("SELECT to_regclass('messages') IS NOT NULL")?;
            let healthy = crate::http::get(
                &format!("127.0.0.1:{}", self.archiver_port),
                "/healthz",
                Duration::from_millis(500),
            )
            .is_ok_and(|(code, _)| code == 200);
            if table.trim() == "t" && healthy {
                break;
            }
            if Instant::now() > deadline {
                child.kill();
                bail!(
                    "the archiver did not create its table and answer /healthz within {READY_TIMEOUT:?}\n{}",
                    child.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.archiver = Some(child);
        Ok(())
    }

    /// Stop the archiver as on SIGTERM (it finishes its batch) and wait
    /// for it.
    pub fn stop_archiver(&mut self) -> Result<std::process::ExitStatus> {
        match self.archiver.take() {
            Some(mut c) => c.terminate(Duration::from_secs(15)),
            None => bail!("the archiver is not running"),
        }
    }

    /// Stop PostgreSQL (fast shutdown) and remove its directory; the
    /// archiver is stopped before (it needs Redis to finish its batch).
    pub(crate) fn stop_archive(&mut self) {
        if let Some(mut a) = self.archiver.take() {
            a.kill();
        }
        // Drop stops it and removes its directory.
        self.postgres = None;
    }

    /// The PostgreSQL server, in archive mode.
    pub fn postgres(&self) -> Option<&Postgres> {
        self.postgres.as_ref()
    }

    /// `postgres://postgres@127.0.0.1:PORT/chat`, in archive mode: what
    /// the archiver and the servers are given.
    pub fn database_url(&self) -> Option<String> {
        self.postgres.as_ref().map(Postgres::url)
    }

    /// `http://127.0.0.1:PORT/metrics`, the archiver's metrics, in archive
    /// mode (`/healthz` on the same port).
    pub fn archiver_metrics_url(&self) -> Option<String> {
        self.postgres
            .as_ref()
            .map(|_| format!("http://127.0.0.1:{}/metrics", self.archiver_port))
    }

    /// The archiver's PID, while it runs.
    pub fn archiver_pid(&self) -> Option<u32> {
        self.archiver.as_ref().map(Child::pid)
    }

    /// The PostgreSQL postmaster's PID, while it runs.
    pub fn postgres_pid(&self) -> Option<u32> {
        self.postgres.as_ref().and_then(Postgres::pid)
    }

    /// Whether the servers are given `--database-url` (archive mode and a
    /// server binary that takes it).
    pub fn servers_have_database_url(&self) -> bool {
        !self.server_db_args.is_empty()
    }
}

/// Whether the `server` binary at `bin` takes `--database-url` (its
/// `--help` lists it): the flag is newer than the launcher's support for
/// the archive.
fn server_takes_database_url(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--database-url"))
}
