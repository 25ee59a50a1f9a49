//! Child processes of a cluster: spawned with their output in a log file,
//! killed with their parent, and probed for readiness.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running child process and the log file that holds its output.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Spawn `program` with `args`, stdout and stderr going to
    /// `<log_dir>/<name>.log` (appended, so restarts keep history).
    pub fn spawn(
        name: &str,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env.iter().copied());
        Self::spawn_command(name, cmd, log_dir)
    }

    /// Spawn a prepared `cmd` (its own user, working directory...), its
    /// stdin closed and its output going to `<log_dir>/<name>.log` like
    /// [`Child::spawn`].
    pub fn spawn_command(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        die_with_parent(&mut cmd);
        let program = cmd.get_program().to_owned();
        let child = spawn_on_keeper(cmd)
            .with_context(|| format!("starting {name} ({})", Path::new(&program).display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `grace` for the process to exit (after a signal):
    /// whether it did. It is left running otherwise.
    pub fn wait_exit(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return false,
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let _ = signal(self.pid(), libc::SIGTERM);
        self.wait_or_kill(grace)
    }

    /// Wait up to `grace` for the process to exit (after a signal), then
    /// SIGKILL it and fail.
    pub fn wait_or_kill(&mut self, grace: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {grace:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's name (`app1`, `haproxy2`, `redis`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

/// Spawn from one thread that lives as long as the process. The kernel's
/// parent-death signal fires when the *thread* that spawned a child exits,
/// and callers (e.g. `spawn_blocking` in async tests) use short-lived
/// threads.
fn spawn_on_keeper(cmd: Command) -> std::io::Result<std::process::Child> {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Reply = mpsc::Sender<std::io::Result<std::process::Child>>;
    static KEEPER: OnceLock<Mutex<mpsc::Sender<(Command, Reply)>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        std::thread::Builder::new()
            .name("chat-cluster-spawner".into())
            .spawn(move || {
                // Ends when the process does: the sender lives in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the process-keeper thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("process keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("process keeper thread is gone"))?
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it
    // only asks the kernel to SIGKILL the child when its parent thread dies,
    // so a crashed test never leaves servers holding ports.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Send signal `sig` (`libc::SIGSTOP`, `SIGCONT`, `SIGTERM`...) to
/// process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        bail!("bad pid {pid}");
    };
    if p <= 0 {
        bail!("bad pid {pid}");
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) touches no memory of ours; `p` is a single positive
    // pid, never 0 or -1 (which would signal a whole group).
    let rc = unsafe { libc::kill(p, sig) };
    if rc != 0 {
        bail!(
            "sending signal {sig} to pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let d = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        if std::fs::create_dir(&d).is_ok() {
            return Ok(d);
        }
    }
    bail!(
        "cannot create a temporary directory under {}",
        base.display()
    )
}

/// HAProxy lives in /usr/sbin on Debian, which is not on every PATH.
pub fn haproxy_path() -> PathBuf {
    which("haproxy").unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// `name` on `PATH`, if it is there.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Fail with what to install when `redis-server` or `haproxy` is missing.
/// Tests call this instead of skipping.
pub fn require_tools() -> Result<()> {
    let mut missing = Vec::new();
    if which("redis-server").is_none() {
        missing.push("redis-server");
    }
    if !haproxy_path().is_file() {
        missing.push("haproxy");
    }
    if !missing.is_empty() {
        bail!(
            "missing {}: install with `sudo apt-get install -y {}` (the tests need real processes and never skip)",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Wait until Redis on `port` answers PING.
pub fn wait_redis(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ping_redis(port).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING on port {port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn ping_redis(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf != b"+PONG\r\n" {
        bail!("unexpected reply {buf:?}");
    }
    Ok(())
}

/// One Redis process of a topology (a node or a sentinel) on loopback.
#[derive(Debug)]
pub(crate) struct Node {
    /// `redis1`, `sentinel2`, `rnode3`...: the log file and directory name.
    pub(crate) name: String,
    pub(crate) port: u16,
    /// `None` once killed.
    pub(crate) child: Option<Child>,
}

impl Node {
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
