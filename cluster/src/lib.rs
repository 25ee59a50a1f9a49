//! A local chat cluster on loopback: `redis-server`, N chat servers and
//! HAProxy in front, the same topology as `docker-compose.yml`.
//!
//! The `cluster` binary (the README's demo), the integration tests of every
//! crate and the benchmarks all start clusters through [`Cluster::start`],
//! so they run the same code. Every port is ephemeral unless chosen, so
//! several clusters can run at once. Children die with the process that
//! started them (`PR_SET_PDEATHSIG`) and on [`Drop`].
//!
//! # HAProxy processes and sizing
//! [`ClusterOptions::haproxy_procs`] HAProxy processes (default 1) all
//! bind the same client port: HAProxy sets `SO_REUSEPORT` on its listeners
//! on Linux (the generated configuration never says `noreuseport`), so the
//! kernel spreads new connections over them. Each has its own
//! configuration file (`haproxy.cfg`, `haproxy2.cfg`...), log
//! (`haproxy.log`, `haproxy2.log`...) and stats port (process 1 on
//! [`ClusterOptions::stats_port`], the others on free ports; see
//! [`Cluster::haproxy_stats_urls`]). One process holds about 10,000
//! connections under a 20,000 file limit, hence several for more clients.
//! Their `maxconn` and the servers' `--max-connections` are sized from the
//! file limit unless chosen ([`sizing`], [`Cluster::sizing`]).
//!
//! # The archive
//! With [`ClusterOptions::archive`] (`cluster up --archive`) the cluster
//! also runs PostgreSQL on loopback (a temporary data directory) and one
//! `archiver` that copies the rooms' Redis Streams into its `messages`
//! table; the servers get `--database-url` (see [`archive`]).
//!
//! # Temporary files
//! A log directory the cluster made itself (no [`ClusterOptions::log_dir`])
//! is removed when the [`Cluster`] is dropped, unless the thread is
//! panicking (a failed test keeps its logs, and says where they are).
//!
//! # Faults
//! [`faults`] parses fault specs (`kill9:app2@5s`, `redis-stop@8s+5s`...)
//! and injects them on a schedule into a running cluster; `cluster exec
//! --fault` uses it.
//!
//! # Layout
//! - [`archive`]: PostgreSQL and the archiver, in archive mode.
//! - [`procs`]: one child process with its log file, readiness probes.
//! - [`haproxy`]: the HAProxy configuration generator.
//! - [`sizing`]: HAProxy's `maxconn` and the servers' `--max-connections`
//!   from the file limit.
//! - [`faults`]: fault specs, the `LOADGEN_FAULTS` plan, the injector.
//! - [`http`]: a tiny blocking HTTP/1.0 GET for probes and tests.
//! - `redis`: the [`Cluster`] methods for Redis, either topology.
//! - [`resp`]: a tiny blocking RESP2 client for probes and faults.
//! - [`sentinel`]: the Sentinel topology (master, two replicas, three
//!   sentinels) started with [`RedisTopology::Sentinel`].
//! - [`redis_cluster`]: the Redis Cluster topology (three masters, three
//!   replicas) started with [`RedisTopology::Cluster`], [`key_slot`] and
//!   [`room_slot`].
//! - [`state`]: the state file `cluster up` writes, so other commands
//!   (`cluster redis-failover`) find the running topology.

pub mod archive;
pub mod faults;
pub mod haproxy;
pub mod http;
pub mod procs;
mod redis;
pub mod redis_cluster;
pub mod resp;
pub mod sentinel;
pub mod sizing;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::archive::Postgres;
use crate::procs::{free_port, Child};
use crate::redis_cluster::RedisCluster;
use crate::sentinel::Sentinels;
use crate::sizing::Sizing;

pub use crate::redis::RedisTopology;
pub use crate::redis_cluster::{key_slot, room_slot};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many chat servers (`app1`..`appN`).
    pub servers: usize,
    /// HAProxy's client port; 0 picks a free one. Every HAProxy process
    /// binds it (`SO_REUSEPORT`).
    pub port: u16,
    /// The stats port of HAProxy process 1; 0 picks a free one (the other
    /// processes always get free ones).
    pub stats_port: u16,
    /// Redis port (in sentinel mode: `redis1`'s, the first master; in
    /// cluster mode: `rnode1`'s); 0 picks a free one.
    pub redis_port: u16,
    /// A single Redis (the default), a Sentinel topology or a Redis
    /// Cluster.
    pub redis: RedisTopology,
    /// The master name the sentinels monitor (sentinel mode only).
    pub sentinel_master: String,
    /// First server port (`app1`; the others follow); 0 picks free ones.
    pub server_base_port: u16,
    /// Extra arguments for every server (e.g. `--max-connections 100`).
    pub server_args: Vec<String>,
    /// The `server` binary; `None` finds it next to the running executable
    /// or through `CHAT_SERVER_BIN`.
    pub server_bin: Option<PathBuf>,
    /// HAProxy `maxconn` of each process (each proxied connection costs
    /// it two files); 0 (the default) sizes it from the file limit:
    /// `(limit - 200) / 2` (see [`sizing`]).
    pub haproxy_maxconn: u32,
    /// HAProxy processes sharing the client port (default 1; 0 is
    /// refused).
    pub haproxy_procs: usize,
    /// Where logs go; `None` makes a fresh temporary directory.
    pub log_dir: Option<PathBuf>,
    /// `RUST_LOG` for the servers.
    pub server_log: String,
    /// Most connections one client address may hold through HAProxy
    /// (`None`: no cap, the default for local load tests).
    pub haproxy_max_conn_per_ip: Option<u32>,
    /// Also run PostgreSQL and one `archiver` (see [`archive`]); the
    /// servers get `--database-url`.
    pub archive: bool,
    /// PostgreSQL's port in archive mode; 0 picks a free one.
    pub postgres_port: u16,
    /// The archiver's `/metrics` port in archive mode; 0 picks a free one.
    pub archiver_metrics_port: u16,
    /// The `archiver` binary; `None` finds it like the server's
    /// ([`find_archiver_bin`], `CHAT_ARCHIVER_BIN`).
    pub archiver_bin: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            servers: 3,
            port: 0,
            stats_port: 0,
            redis_port: 0,
            redis: RedisTopology::Single,
            sentinel_master: sentinel::DEFAULT_MASTER_NAME.into(),
            server_base_port: 0,
            server_args: Vec::new(),
            server_bin: None,
            haproxy_maxconn: 0,
            haproxy_procs: 1,
            log_dir: None,
            server_log: "info".into(),
            haproxy_max_conn_per_ip: None,
            archive: false,
            postgres_port: 0,
            archiver_metrics_port: 0,
            archiver_bin: None,
        }
    }
}

/// A running cluster. Dropping it stops every process.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    log_dir: PathBuf,
    server_bin: PathBuf,
    redis_port: u16,
    redis: Option<Child>,
    /// The Sentinel topology, in sentinel mode (then `redis` is `None`).
    sentinels: Option<Sentinels>,
    /// The Redis Cluster, in cluster mode (then `redis` is `None`).
    redis_cluster: Option<RedisCluster>,
    /// The ports of the other Redis processes, kept so a Redis restart
    /// keeps the addresses the servers know: in sentinel mode `redis2`,
    /// `redis3` and `sentinel1..3`, in cluster mode `rnode2..6`.
    extra_redis_ports: Vec<u16>,
    server_ports: Vec<u16>,
    servers: Vec<Option<Child>>,
    /// Per-server `--redis-url` overrides (see
    /// [`Cluster::set_server_redis_url`]); `None` uses the cluster's Redis.
    redis_overrides: Vec<Option<String>>,
    port: u16,
    /// One stats port per HAProxy process, process 1's first.
    stats_ports: Vec<u16>,
    /// The running HAProxy processes, process 1 first (empty once stopped).
    haproxy: Vec<Child>,
    sizing: Sizing,
    /// PostgreSQL, in archive mode (`None` otherwise and once stopped).
    postgres: Option<Postgres>,
    /// The archiver, in archive mode, while it runs.
    archiver: Option<Child>,
    /// The archiver's binary, in archive mode.
    archiver_bin: Option<PathBuf>,
    /// The archiver's `/metrics` port (0 outside archive mode).
    archiver_port: u16,
    /// `--database-url URL` for every server in archive mode, when the
    /// server binary takes the flag; else empty.
    server_db_args: Vec<String>,
    /// The log directory, when the cluster made it (removed on drop).
    own_log_dir: Option<PathBuf>,
}

impl Cluster {
    /// Start Redis, the servers and HAProxy, and wait until HAProxy sees
    /// every server healthy. With ephemeral ports a start is tried up to
    /// three times: another process can take a port between the moment it
    /// was found free and the moment a child binds it.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let ephemeral = opts.port == 0
            && opts.stats_port == 0
            && opts.redis_port == 0
            && opts.server_base_port == 0
            && opts.postgres_port == 0
            && opts.archiver_metrics_port == 0;
        let tries = if ephemeral { 3 } else { 1 };
        let mut last = None;
        for attempt in 1..=tries {
            match Self::start_once(opts.clone()) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    if attempt < tries {
                        eprintln!("chat-cluster: start attempt {attempt} failed, retrying: {e:#}");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn start_once(opts: ClusterOptions) -> Result<Self> {
        procs::require_tools()?;
        if opts.haproxy_procs == 0 {
            bail!("haproxy_procs is 0: the cluster needs at least one HAProxy process");
        }
        let (log_dir, own_log_dir) = match &opts.log_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = procs::temp_dir("chat-cluster")?;
                (d.clone(), Some(d))
            }
        };
        // Removes a directory made here if the start fails before the
        // cluster owns it.
        let guard = TempDirGuard(own_log_dir);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating log directory {}", log_dir.display()))?;
        let server_bin = match &opts.server_bin {
            Some(p) => p.clone(),
            // Without servers (Redis and HAProxy only), build nothing.
            None if opts.servers == 0 => PathBuf::new(),
            None => find_server_bin()?,
        };
        let archiver_bin = match (&opts.archiver_bin, opts.archive) {
            (_, false) => None,
            (Some(p), true) => Some(p.clone()),
            (None, true) => Some(find_archiver_bin()?),
        };
        let pick = |p: u16| if p == 0 { free_port() } else { Ok(p) };
        let redis_port = pick(opts.redis_port)?;
        let extra_redis_ports = match opts.redis {
            RedisTopology::Single => Vec::new(),
            RedisTopology::Sentinel => (0..5).map(|_| free_port()).collect::<Result<_>>()?,
            RedisTopology::Cluster => (1..redis_cluster::NODES)
                .map(|_| free_port())
                .collect::<Result<_>>()?,
        };
        let server_ports = (0..opts.servers)
            .map(|i| {
                if opts.server_base_port == 0 {
                    free_port()
                } else {
                    Ok(opts.server_base_port + i as u16)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let port = pick(opts.port)?;
        let stats_ports = std::iter::once(pick(opts.stats_port))
            .chain((1..opts.haproxy_procs).map(|_| free_port()))
            .collect::<Result<Vec<_>>>()?;
        let archiver_port = match opts.archive {
            true => pick(opts.archiver_metrics_port)?,
            false => 0,
        };
        let sizing = Sizing::compute(
            sizing::fd_limit(),
            opts.haproxy_procs,
            opts.haproxy_maxconn,
            opts.servers,
            &opts.server_args,
            std::env::var("MAX_CONNECTIONS").ok().as_deref(),
        );
        let mut cluster = Cluster {
            servers: (0..opts.servers).map(|_| None).collect(),
            redis_overrides: vec![None; opts.servers],
            opts,
            log_dir,
            server_bin,
            redis_port,
            redis: None,
            sentinels: None,
            redis_cluster: None,
            extra_redis_ports,
            server_ports,
            port,
            stats_ports,
            haproxy: Vec::new(),
            sizing,
            postgres: None,
            archiver: None,
            archiver_bin,
            archiver_port,
            server_db_args: Vec::new(),
            own_log_dir: guard.take(),
        };
        cluster.start_redis()?;
        if cluster.opts.archive {
            cluster.start_archive()?;
        }
        for i in 0..cluster.servers.len() {
            cluster.start_server(i)?;
        }
        cluster.start_haproxy()?;
        cluster.wait_all_up(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// `ws://127.0.0.1:PORT/ws` through HAProxy.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// `http://127.0.0.1:PORT` through HAProxy.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// HAProxy's client address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The stats page of HAProxy process 1.
    pub fn stats_url(&self) -> String {
        format!("http://127.0.0.1:{}/stats", self.stats_ports[0])
    }

    /// The stats page of every HAProxy process, process 1 first.
    pub fn haproxy_stats_urls(&self) -> Vec<String> {
        self.stats_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/stats"))
            .collect()
    }

    /// The connection limits the cluster runs with (HAProxy's `maxconn`,
    /// the servers' `--max-connections`), sized from the file limit
    /// unless chosen.
    pub fn sizing(&self) -> &Sizing {
        &self.sizing
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The APP_ID of server `i` (0-based): `app{i+1}`.
    pub fn app_id(&self, i: usize) -> String {
        format!("app{}", i + 1)
    }

    /// The address server `i` listens on.
    pub fn server_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.server_ports[i])
    }

    /// A WebSocket URL straight to server `i`, bypassing HAProxy.
    pub fn server_ws_url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.server_addr(i))
    }

    /// The PID of server `i`, if it runs.
    pub fn server_pid(&self, i: usize) -> Option<u32> {
        self.servers[i].as_ref().map(Child::pid)
    }

    /// The PID of HAProxy process 1, if it runs.
    pub fn haproxy_pid(&self) -> Option<u32> {
        self.haproxy.first().map(Child::pid)
    }

    /// The PIDs of every running HAProxy process, process 1 first.
    pub fn haproxy_pids(&self) -> Vec<u32> {
        self.haproxy.iter().map(Child::pid).collect()
    }

    /// `redis://127.0.0.1:PORT/` (in sentinel mode: `redis1`, the first
    /// master; see [`Cluster::redis_master_addr`]).
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    /// Redis's `host:port`, for raw commands (`CLIENT KILL`, `CONFIG GET`)
    /// and for proxies put in front of it.
    pub fn redis_addr(&self) -> String {
        format!("127.0.0.1:{}", self.redis_port)
    }

    /// The Redis URL server `i` is (or will be) started with: the override
    /// set by [`Cluster::set_server_redis_url`], else [`Cluster::redis_url`]
    /// (in the sentinel and cluster topologies a server without an override
    /// gets no URL; see [`Cluster::server_redis_args`]).
    pub fn server_redis_url(&self, i: usize) -> String {
        self.redis_overrides[i]
            .clone()
            .unwrap_or_else(|| self.redis_url())
    }

    /// Point server `i` at another Redis URL (e.g. a fault-injecting proxy
    /// in front of the cluster's Redis) from its next
    /// [`Cluster::start_server`] on; `None` goes back to the cluster's
    /// Redis. A running server is not touched: restart it to apply.
    pub fn set_server_redis_url(&mut self, i: usize, url: Option<String>) {
        self.redis_overrides[i] = url;
    }

    /// Where the logs are.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Whether the log directory is one the cluster made (and removes
    /// when dropped), not [`ClusterOptions::log_dir`].
    pub fn owns_log_dir(&self) -> bool {
        self.own_log_dir.is_some()
    }

    /// The Redis arguments server `i` is (or will be) started with:
    /// `--redis-url URL` with an override ([`Cluster::set_server_redis_url`])
    /// or a single Redis; `--redis-sentinels HOST:PORT,...
    /// --redis-sentinel-master NAME` in sentinel mode; `--redis-cluster
    /// HOST:PORT,...` (every node, `rnode1` first) in cluster mode.
    pub fn server_redis_args(&self, i: usize) -> Vec<String> {
        match (
            &self.redis_overrides[i],
            &self.sentinels,
            &self.redis_cluster,
        ) {
            (Some(url), _, _) => vec!["--redis-url".into(), url.clone()],
            (None, Some(s), _) => vec![
                "--redis-sentinels".into(),
                s.sentinel_addrs().join(","),
                "--redis-sentinel-master".into(),
                s.master_name().to_string(),
            ],
            (None, None, Some(c)) => vec!["--redis-cluster".into(), c.node_addrs().join(",")],
            (None, None, None) => vec!["--redis-url".into(), self.redis_url()],
        }
    }

    /// Start (or restart) server `i` on its port with its APP_ID, its
    /// Redis arguments ([`Cluster::server_redis_args`]), `--max-connections`
    /// when sized ([`Cluster::sizing`]) and the extra server arguments, and
    /// wait until its `/healthz` answers 200.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        let child = self.spawn_server(i)?;
        wait_healthy(&self.server_addr(i), Duration::from_secs(15))
            .map_err(|e| anyhow::anyhow!("{}: {e}\n{}", self.app_id(i), child.log_tail(20)))?;
        self.servers[i] = Some(child);
        Ok(())
    }

    /// Spawn server `i` without waiting for it (see [`Cluster::start_server`]).
    fn spawn_server(&self, i: usize) -> Result<Child> {
        let app_id = self.app_id(i);
        let mut args = vec![
            "--listen".to_string(),
            self.server_addr(i),
            "--app-id".into(),
            app_id.clone(),
        ];
        args.extend(self.server_redis_args(i));
        args.extend(self.sizing.server_args());
        args.extend(self.server_db_args.iter().cloned());
        args.extend(self.opts.server_args.iter().cloned());
        Child::spawn(
            &app_id,
            self.server_bin.as_os_str(),
            &args,
            &[("RUST_LOG", self.opts.server_log.as_str())],
            &self.log_dir,
        )
    }

    /// Spawn server `i` and count it as running at once, without waiting
    /// for its health (the fault injector waits without holding the
    /// cluster); fails if it runs.
    pub(crate) fn spawn_server_running(&mut self, i: usize) -> Result<u32> {
        if self.servers[i].is_some() {
            bail!("{} is running", self.app_id(i));
        }
        let child = self.spawn_server(i)?;
        let pid = child.pid();
        self.servers[i] = Some(child);
        Ok(pid)
    }

    /// Take server `i`'s process out of the cluster (it then counts as
    /// stopped), e.g. to wait for it elsewhere.
    pub(crate) fn take_server(&mut self, i: usize) -> Option<Child> {
        self.servers[i].take()
    }

    /// Kill server `i` with SIGKILL: no goodbye to its clients.
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            c.kill();
        }
    }

    /// Stop server `i` with SIGTERM (graceful drain) and wait for it.
    pub fn stop_server(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        match self.servers[i].take() {
            Some(mut c) => c.terminate(Duration::from_secs(15)),
            None => bail!("server {i} is not running"),
        }
    }

    /// The name of HAProxy process `k` (0-based): `haproxy`, `haproxy2`...
    /// (its log is `<name>.log`, its configuration `<name>.cfg`).
    fn haproxy_name(k: usize) -> String {
        if k == 0 {
            "haproxy".into()
        } else {
            format!("haproxy{}", k + 1)
        }
    }

    fn start_haproxy(&mut self) -> Result<()> {
        if let Some(w) = self.sizing.warning() {
            eprintln!("chat-cluster: warning: {w}");
        }
        for k in 0..self.stats_ports.len() {
            let settings = haproxy::HaproxySettings {
                bind: format!("127.0.0.1:{}", self.port),
                servers: (0..self.servers.len())
                    .map(|i| (self.app_id(i), self.server_addr(i)))
                    .collect(),
                stats_bind: format!("127.0.0.1:{}", self.stats_ports[k]),
                maxconn: self.sizing.haproxy_maxconn,
                docker_dns: false,
                max_conn_per_ip: self.opts.haproxy_max_conn_per_ip,
            };
            let name = Self::haproxy_name(k);
            let cfg = self.log_dir.join(format!("{name}.cfg"));
            std::fs::write(&cfg, haproxy::render(&settings))
                .with_context(|| format!("writing {}", cfg.display()))?;
            let cfg = cfg.to_string_lossy().into_owned();
            let child = Child::spawn(
                &name,
                procs::haproxy_path().as_ref(),
                &["-db", "-f", &cfg],
                &[],
                &self.log_dir,
            )?;
            self.haproxy.push(child);
        }
        Ok(())
    }

    /// The status HAProxy process 1 reports for each server, e.g.
    /// `("app1","UP")` (every process checks the servers on its own; see
    /// [`Cluster::haproxy_status_of`]).
    pub fn haproxy_status(&self) -> Result<Vec<(String, String)>> {
        self.haproxy_status_of(0)
    }

    /// The status HAProxy process `k` (0-based) reports for each server.
    pub fn haproxy_status_of(&self, k: usize) -> Result<Vec<(String, String)>> {
        let Some(port) = self.stats_ports.get(k) else {
            bail!(
                "there is no HAProxy process {} (the cluster runs {})",
                k + 1,
                self.stats_ports.len()
            );
        };
        let (code, body) = http::get(
            &format!("127.0.0.1:{port}"),
            "/stats;csv",
            Duration::from_secs(2),
        )?;
        if code != 200 {
            bail!("haproxy stats answered {code}");
        }
        Ok(body
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 17 && f[0] == "chat_servers" && f[1].starts_with("app"))
                    .then(|| (f[1].to_string(), f[17].to_string()))
            })
            .collect())
    }

    /// Wait until every HAProxy process sees every running server `UP` and
    /// every stopped one not `UP`.
    pub fn wait_all_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Processes already seen as expected; a later one is asked next.
        let mut done = 0;
        loop {
            while done < self.stats_ports.len() {
                let status = self.haproxy_status_of(done);
                let ok = status.as_ref().is_ok_and(|st| {
                    st.len() == self.servers.len()
                        && st.iter().all(|(name, s)| {
                            let i: usize = name[3..].parse::<usize>().unwrap_or(1) - 1;
                            let running = self.servers.get(i).is_some_and(Option::is_some);
                            running == s.starts_with("UP")
                        })
                });
                if !ok {
                    if Instant::now() > deadline {
                        let tail = self
                            .haproxy
                            .get(done)
                            .map(|h| h.log_tail(20))
                            .unwrap_or_default();
                        bail!(
                            "HAProxy process {} did not see the expected servers up within {timeout:?}: {status:?}\n{tail}",
                            done + 1
                        );
                    }
                    break;
                }
                done += 1;
            }
            if done == self.stats_ports.len() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop everything: servers first (SIGTERM, so they drain), then
    /// HAProxy, the archiver (SIGTERM: it finishes its batch), Redis and
    /// PostgreSQL (fast shutdown; its directory is removed). The log
    /// directory stays until the cluster is dropped.
    pub fn shutdown(&mut self) {
        for s in self.servers.iter_mut() {
            if let Some(mut c) = s.take() {
                let _ = c.terminate(Duration::from_secs(10));
            }
        }
        for mut h in self.haproxy.drain(..) {
            h.kill();
        }
        if let Some(mut a) = self.archiver.take() {
            let _ = a.terminate(Duration::from_secs(15));
        }
        self.kill_redis();
        self.stop_archive();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self.servers.iter_mut() {
            if let Some(mut c) = s.take() {
                c.kill();
            }
        }
        for mut h in self.haproxy.drain(..) {
            h.kill();
        }
        if let Some(mut a) = self.archiver.take() {
            a.kill();
        }
        self.kill_redis();
        self.stop_archive();
        let guard = TempDirGuard(self.own_log_dir.take());
        if std::thread::panicking() {
            if let Some(d) = guard.take() {
                eprintln!("chat-cluster: keeping the logs in {}", d.display());
            }
        }
    }
}

/// A temporary directory removed on drop unless [`TempDirGuard::take`]n.
struct TempDirGuard(Option<PathBuf>);

impl TempDirGuard {
    fn take(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                eprintln!("chat-cluster: cannot remove {}: {e}", d.display());
            }
        }
    }
}

/// Poll `addr`'s `/healthz` until it answers 200, for up to `timeout`.
pub(crate) fn wait_healthy(addr: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http::get(addr, "/healthz", Duration::from_millis(500)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server on {addr} did not become healthy within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Find the `server` binary: `CHAT_SERVER_BIN`, then next to the running
/// executable (or one directory up, for test binaries in `deps/`), building
/// it with cargo when running under cargo and it is missing.
pub fn find_server_bin() -> Result<PathBuf> {
    find_bin("server", "chat-server", "CHAT_SERVER_BIN")
}

/// Find the `archiver` binary like [`find_server_bin`]:
/// `CHAT_ARCHIVER_BIN`, then next to the running executable, building it
/// (`cargo build -p chat-archiver`) when running under cargo.
pub fn find_archiver_bin() -> Result<PathBuf> {
    find_bin("archiver", "chat-archiver", "CHAT_ARCHIVER_BIN")
}

/// Binary `name` of package `package`: `$env`, next to the running
/// executable (or one directory up), else built with cargo when running
/// under cargo.
fn find_bin(name: &str, package: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dirs = Vec::new();
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    let look = |dirs: &[PathBuf]| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    if let Some(p) = look(&dirs) {
        return Ok(p);
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = dirs.iter().any(|d| d.ends_with("release"));
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-q", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .with_context(|| format!("running cargo build -p {package}"))?;
        if status.success() {
            if let Some(p) = look(&dirs) {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find the chat `{name}` binary next to {} — build it with `cargo build -p {package}` or set {env}",
        exe.display()
    )
}
