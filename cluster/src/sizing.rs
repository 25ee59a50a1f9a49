//! How many connections the cluster is sized for, from the file limit.
//!
//! Every process of the cluster inherits the launcher's `RLIMIT_NOFILE`
//! and may raise its soft limit up to the hard one (the chat server does,
//! and HAProxy raises it to what its `maxconn` needs), so the hard limit
//! is what each process can use:
//!
//! - an HAProxy process spends two descriptors per proxied connection
//!   (client side and server side) plus a few for listeners, health checks
//!   and logs: `maxconn = (limit - FD_RESERVE) / 2` (9,900 at a limit of
//!   20,000). HAProxy computes its own need from `maxconn` (about
//!   `2 × maxconn + 20` here) and refuses to start when the hard limit is
//!   lower, so the generated configuration sets no `ulimit-n`;
//! - a server spends one descriptor per WebSocket plus a few for Redis
//!   and its listener: `--max-connections = limit - FD_RESERVE` (19,800).
//!
//! An explicit `haproxy_maxconn` or a server `--max-connections` (in the
//! server arguments, `--max-connections=N` or `--max-connections N`, or
//! `MAX_CONNECTIONS` in the environment the servers inherit) wins.
//! [`Sizing`] prints as one line, e.g. `haproxy: 6 processes × maxconn
//! 9900 = 59400; servers: 3 × max-connections 19800 = 59400`.

use std::fmt;

/// Descriptors kept aside in each process for listeners, health checks,
/// Redis links and logs.
pub const FD_RESERVE: u64 = 200;

/// The limit assumed when `RLIMIT_NOFILE` is unlimited (Linux's default
/// `fs.nr_open`).
const UNLIMITED: u64 = 1 << 20;

/// About how many descriptors HAProxy 2.6 needs beyond two per connection
/// with this configuration (listeners, checks, stats, log); it refuses to
/// start when `2 × maxconn + this` is above the hard limit.
pub const HAPROXY_EXTRA_FDS: u64 = 20;

/// The hard `RLIMIT_NOFILE` of this process (what its children may raise
/// their soft limit to); an unlimited one counts as 2^20.
pub fn fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit writes one `rlimit` into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return 1024;
    }
    if r.rlim_max == libc::RLIM_INFINITY {
        UNLIMITED
    } else {
        r.rlim_max.min(UNLIMITED)
    }
}

/// HAProxy `maxconn` a process with `limit` descriptors can hold.
pub fn haproxy_maxconn_for(limit: u64) -> u32 {
    (limit.saturating_sub(FD_RESERVE) / 2).clamp(1, u32::MAX as u64) as u32
}

/// Server `--max-connections` a process with `limit` descriptors can hold.
pub fn server_max_connections_for(limit: u64) -> usize {
    limit.saturating_sub(FD_RESERVE).max(1) as usize
}

/// The `--max-connections` value in a server argument list
/// (`--max-connections=N` or `--max-connections N`; the last one counts),
/// `Some(None)` when the flag is there with a value that is not a number.
pub fn max_connections_arg(args: &[String]) -> Option<Option<usize>> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--max-connections=") {
            found = Some(v.parse().ok());
        } else if a == "--max-connections" {
            found = Some(it.next().and_then(|v| v.parse().ok()));
        }
    }
    found
}

/// Where the servers' connection limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLimit {
    /// The launcher passes `--max-connections N`, sized from the file
    /// limit.
    Sized(usize),
    /// The user's `--max-connections` (`None`: not a number we can read).
    Arg(Option<usize>),
    /// `MAX_CONNECTIONS` in the environment the servers inherit.
    Env(Option<usize>),
}

impl ServerLimit {
    /// The value, when known.
    pub fn value(&self) -> Option<usize> {
        match *self {
            Self::Sized(n) => Some(n),
            Self::Arg(n) | Self::Env(n) => n,
        }
    }
}

/// The connection limits a cluster runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    /// The hard file limit every process inherits.
    pub fd_limit: u64,
    /// HAProxy processes sharing the client port.
    pub haproxy_procs: usize,
    /// `maxconn` of each HAProxy process.
    pub haproxy_maxconn: u32,
    /// Whether `haproxy_maxconn` was sized from the limit (not chosen).
    pub haproxy_maxconn_sized: bool,
    /// Chat servers.
    pub servers: usize,
    /// Each server's `--max-connections` and where it comes from.
    pub server_limit: ServerLimit,
}

impl Sizing {
    /// Size a cluster of `servers` servers and `haproxy_procs` HAProxy
    /// processes for `fd_limit` descriptors per process: `haproxy_maxconn`
    /// 0 sizes HAProxy, and servers are sized unless `server_args` or
    /// `env_max_connections` (`MAX_CONNECTIONS`) set their limit.
    pub fn compute(
        fd_limit: u64,
        haproxy_procs: usize,
        haproxy_maxconn: u32,
        servers: usize,
        server_args: &[String],
        env_max_connections: Option<&str>,
    ) -> Self {
        let server_limit = match (max_connections_arg(server_args), env_max_connections) {
            (Some(v), _) => ServerLimit::Arg(v),
            (None, Some(v)) => ServerLimit::Env(v.trim().parse().ok()),
            (None, None) => ServerLimit::Sized(server_max_connections_for(fd_limit)),
        };
        Sizing {
            fd_limit,
            haproxy_procs,
            haproxy_maxconn: if haproxy_maxconn == 0 {
                haproxy_maxconn_for(fd_limit)
            } else {
                haproxy_maxconn
            },
            haproxy_maxconn_sized: haproxy_maxconn == 0,
            servers,
            server_limit,
        }
    }

    /// Connections all HAProxy processes together accept.
    pub fn haproxy_capacity(&self) -> u64 {
        self.haproxy_procs as u64 * self.haproxy_maxconn as u64
    }

    /// Connections all servers together accept, when known.
    pub fn server_capacity(&self) -> Option<u64> {
        self.server_limit
            .value()
            .map(|n| n as u64 * self.servers as u64)
    }

    /// Clients the cluster holds through HAProxy: the smaller of the two.
    pub fn capacity(&self) -> u64 {
        match self.server_capacity() {
            Some(s) => s.min(self.haproxy_capacity()),
            None => self.haproxy_capacity(),
        }
    }

    /// The arguments the launcher adds to every server (before the
    /// user's): `--max-connections N` when sized.
    pub fn server_args(&self) -> Vec<String> {
        match self.server_limit {
            ServerLimit::Sized(n) => vec!["--max-connections".into(), n.to_string()],
            _ => Vec::new(),
        }
    }

    /// A warning when an explicit `maxconn` needs more descriptors than
    /// the limit allows (HAProxy then refuses to start).
    pub fn warning(&self) -> Option<String> {
        let need = 2 * self.haproxy_maxconn as u64 + HAPROXY_EXTRA_FDS;
        (need > self.fd_limit).then(|| {
            format!(
                "HAProxy maxconn {} needs about {need} descriptors, above the file limit {}: HAProxy will refuse to start (use at most {})",
                self.haproxy_maxconn,
                self.fd_limit,
                haproxy_maxconn_for(self.fd_limit)
            )
        })
    }
}

impl fmt::Display for Sizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let procs = if self.haproxy_procs == 1 {
            "process"
        } else {
            "processes"
        };
        write!(
            f,
            "haproxy: {} {procs} × maxconn {} = {}; ",
            self.haproxy_procs,
            self.haproxy_maxconn,
            self.haproxy_capacity()
        )?;
        let from = match self.server_limit {
            ServerLimit::Sized(_) => "",
            ServerLimit::Arg(_) => " (--server-arg)",
            ServerLimit::Env(_) => " (MAX_CONNECTIONS)",
        };
        match (self.server_limit.value(), self.server_capacity()) {
            (Some(n), Some(total)) => write!(
                f,
                "servers: {} × max-connections {n}{from} = {total}",
                self.servers
            )?,
            _ => write!(f, "servers: {} × max-connections ?{from}", self.servers)?,
        }
        let chosen = if self.haproxy_maxconn_sized {
            ""
        } else {
            ", maxconn chosen"
        };
        write!(
            f,
            " (file limit {}{chosen}; up to {} clients)",
            self.fd_limit,
            self.capacity()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_from_the_limit() {
        let s = Sizing::compute(20_000, 6, 0, 3, &[], None);
        assert_eq!(s.haproxy_maxconn, 9900);
        assert_eq!(s.server_limit, ServerLimit::Sized(19_800));
        assert_eq!(s.haproxy_capacity(), 59_400);
        assert_eq!(s.capacity(), 59_400);
        assert_eq!(s.server_args(), args(&["--max-connections", "19800"]));
        assert_eq!(s.warning(), None);
        assert_eq!(
            s.to_string(),
            "haproxy: 6 processes × maxconn 9900 = 59400; servers: 3 × max-connections 19800 = 59400 (file limit 20000; up to 59400 clients)"
        );
        let one = Sizing::compute(20_000, 1, 0, 3, &[], None);
        assert!(one.to_string().starts_with(
            "haproxy: 1 process × maxconn 9900 = 9900; servers: 3 × max-connections 19800 = 59400"
        ));
        assert_eq!(one.capacity(), 9900);
        assert_eq!(Sizing::compute(100, 1, 0, 1, &[], None).haproxy_maxconn, 1);
    }

    #[test]
    fn explicit_values_win() {
        let s = Sizing::compute(
            20_000,
            2,
            500,
            3,
            &args(&["--rate", "5", "--max-connections=100"]),
            Some("7"),
        );
        assert_eq!(s.haproxy_maxconn, 500);
        assert_eq!(s.server_limit, ServerLimit::Arg(Some(100)));
        assert!(s.server_args().is_empty());
        assert_eq!(s.capacity(), 300);
        assert!(s
            .to_string()
            .contains("max-connections 100 (--server-arg) = 300"));
        assert!(s.to_string().contains("maxconn chosen"));
        let s = Sizing::compute(20_000, 1, 0, 2, &args(&["--max-connections", "3"]), None);
        assert_eq!(s.server_limit, ServerLimit::Arg(Some(3)));
        let s = Sizing::compute(20_000, 1, 0, 2, &[], Some("40"));
        assert_eq!(s.server_limit, ServerLimit::Env(Some(40)));
        assert!(s.server_args().is_empty());
        let s = Sizing::compute(20_000, 1, 10_000, 2, &[], None);
        assert!(s.warning().unwrap().contains("refuse to start"));
    }

    #[test]
    fn finds_max_connections_in_args() {
        assert_eq!(max_connections_arg(&args(&["--rate", "1"])), None);
        assert_eq!(
            max_connections_arg(&args(&["--max-connections=5"])),
            Some(Some(5))
        );
        assert_eq!(
            max_connections_arg(&args(&["--max-connections", "6", "--rate", "1"])),
            Some(Some(6))
        );
        assert_eq!(
            max_connections_arg(&args(&["--max-connections=x"])),
            Some(None)
        );
        assert_eq!(
            max_connections_arg(&args(&["--max-connections"])),
            Some(None)
        );
    }

    #[test]
    fn reads_the_limit() {
        assert!(fd_limit() >= 64);
    }
}
