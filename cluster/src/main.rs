//! `cluster`: run a local chat cluster on loopback (redis-server, N chat
//! servers, HAProxy), the same topology as `docker-compose.yml`.
//!
//! - `cluster up`: start it, print the URLs, stop everything on Ctrl-C.
//! - `cluster demo`: the same, plus three bots that land on different
//!   instances and show a message crossing between them.
//! - `cluster exec [--fault SPEC]... -- CMD ARGS...`: start it, run CMD
//!   with `{url}` replaced by the WebSocket URL, stop, exit with CMD's
//!   code. Each `--fault` (`kill9:app2@5s`, `redis-stop@8s+5s`...; see
//!   `chat_cluster::faults`) is injected at its time from CMD's start, one
//!   stderr line each; the plan goes to CMD as `LOADGEN_FAULTS` (a JSON
//!   array) and CMD's start as `CLUSTER_EXEC_START_UNIX_MS`. CMD also gets
//!   `CHAT_URL`, `CLUSTER_SERVER_PIDS`, `CLUSTER_SERVER_ADDRS`,
//!   `CLUSTER_HAPROXY_PID` (process 1), `CLUSTER_HAPROXY_PIDS` (every
//!   HAProxy process, space-separated), `CLUSTER_REDIS_PID`, `CLUSTER_LOG_DIR`,
//!   `CLUSTER_STATE`, `CLUSTER_REDIS_TOPOLOGY` (`single`, `sentinel` or
//!   `cluster`), `CLUSTER_REDIS_NODES` (every Redis data node's
//!   `host:port`, comma-separated: in cluster mode the six nodes, the list
//!   the servers get as `--redis-cluster`), `CLUSTER_REDIS_NODE_PIDS` (in
//!   the same order), and in sentinel mode `CLUSTER_REDIS_SENTINELS` and
//!   `CLUSTER_REDIS_SENTINEL_MASTER`.
//! - `cluster haproxy-cfg`: print the compose `haproxy.cfg`.
//! - `cluster redis-failover --state FILE [--room NAME]`: kill -9 the Redis
//!   master of a running `cluster up --redis sentinel` (or, with `--redis
//!   cluster`, the master of the room's slot), found through the state file
//!   it wrote, `<log dir>/cluster.json`, and time the failover.
//!
//! `--haproxy-procs N` runs N HAProxy processes on the one client port
//! (`SO_REUSEPORT`: the kernel spreads connections over them), each with
//! its own stats port (process 1 on `--stats-port`). HAProxy's `maxconn`
//! (per process) and the servers' `--max-connections` are sized from the
//! file limit unless given (`--haproxy-maxconn`,
//! `--server-arg=--max-connections=N`); `up`, `demo` and `exec` print the
//! sizing, e.g. `haproxy: 6 processes × maxconn 9900 = 59400; servers: 3 ×
//! max-connections 19800 = 59400`.
//!
//! `--archive` also runs PostgreSQL on loopback (a temporary data
//! directory, removed at stop) and one `archiver` that copies every room's
//! history into its `messages` table; the servers get `--database-url`.
//! `up` prints the database URL and the archiver's metrics URL, the state
//! file records them, and `exec` passes `CLUSTER_DATABASE_URL`,
//! `CLUSTER_ARCHIVER_METRICS_URL`, `CLUSTER_ARCHIVER_PID` and
//! `CLUSTER_POSTGRES_PID`.
//!
//! `cluster down --state FILE` stops a running `cluster up` (SIGTERM to
//! it, as Ctrl-C) and waits until it has stopped everything.
//!
//! `--redis sentinel` runs a master, two replicas and three sentinels
//! instead of one Redis; the servers then get `--redis-sentinels` and
//! `--redis-sentinel-master`. `--redis cluster` runs a Redis Cluster of six
//! nodes (three masters, three replicas); the servers then get
//! `--redis-cluster` with the six nodes' addresses.

mod demo;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use chat_cluster::faults::{self, FaultSpec};
use chat_cluster::state::State;
use chat_cluster::{Cluster, ClusterOptions, RedisTopology};
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cluster",
    version,
    about = "Run a local chat cluster: redis-server + N chat servers + HAProxy on loopback"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the cluster and keep it up until Ctrl-C (the default).
    Up(Opts),
    /// Start the cluster, show a message crossing instances, keep it up.
    Demo(Opts),
    /// Start the cluster, run a command against it (with faults on a
    /// schedule), stop it.
    ///
    /// The command gets CHAT_URL, CLUSTER_SERVER_PIDS, CLUSTER_SERVER_ADDRS,
    /// (with --archive) CLUSTER_DATABASE_URL, CLUSTER_ARCHIVER_METRICS_URL,
    /// CLUSTER_ARCHIVER_PID, CLUSTER_POSTGRES_PID,
    /// CLUSTER_HAPROXY_PID (process 1), CLUSTER_HAPROXY_PIDS (all,
    /// space-separated), CLUSTER_REDIS_PID, CLUSTER_LOG_DIR, CLUSTER_STATE,
    /// CLUSTER_REDIS_TOPOLOGY, CLUSTER_REDIS_NODES, CLUSTER_REDIS_NODE_PIDS,
    /// CLUSTER_REDIS_SENTINELS, CLUSTER_REDIS_SENTINEL_MASTER,
    /// LOADGEN_FAULTS (the fault plan: a JSON array of {"name", "kind",
    /// "target", "at_unix_ms", "end_unix_ms"}) and
    /// CLUSTER_EXEC_START_UNIX_MS (when it started). The exit code is the
    /// command's.
    Exec {
        #[command(flatten)]
        opts: Opts,
        /// A fault to inject while the command runs, at T from its start
        /// (repeatable): KIND[:TARGET]@T[+D], T and D like 500ms, 5s, 1m.
        /// kill9:appN@T (SIGKILL), term:appN@T (SIGTERM), stop:appN@T+D
        /// (SIGSTOP, SIGCONT after D), restart:appN@T (start it again),
        /// redis-stop[:ROOM]@T+D (SIGSTOP Redis / the master / the master of
        /// ROOM's slot), redis-kill@T[+D] and redis-restart@T (single
        /// Redis), redis-failover[:ROOM]@T and redis-hang[:ROOM]@T+D
        /// (sentinel, cluster; ROOM: cluster only). A fault due after the
        /// command exited is skipped.
        #[arg(long = "fault", value_name = "SPEC", value_parser = parse_fault)]
        faults: Vec<FaultSpec>,
        /// The command; `{url}` in it becomes the cluster's WebSocket URL.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the HAProxy configuration used by docker-compose.yml.
    HaproxyCfg,
    /// Stop a running `cluster up` (or `demo`) as Ctrl-C does, and wait
    /// until it has stopped its processes (the archiver and PostgreSQL
    /// too) and removed its temporary directories.
    Down {
        /// The state file printed by `cluster up` (`<log dir>/cluster.json`).
        #[arg(long, env = "CLUSTER_STATE")]
        state: PathBuf,
        /// How long to wait for it to stop, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Kill -9 the Redis master of a running `cluster up --redis sentinel`
    /// and print how long the sentinels took to name a new one; with
    /// `--redis cluster`, kill -9 the master of a room's slot and print how
    /// long its replica took to take the slot over.
    ///
    /// `cluster up` writes the topology to `<log dir>/cluster.json` and
    /// prints that path ("state:"); pass it here. The master is asked of
    /// the sentinels (or of the cluster nodes), so this works again after a
    /// failover; it refuses while one is under way (the sentinels or nodes
    /// disagree, or their master is not one) and, in a Redis Cluster, when
    /// the master has no healthy replica to take over.
    RedisFailover {
        /// The state file printed by `cluster up` (`<log dir>/cluster.json`).
        #[arg(long, env = "CLUSTER_STATE")]
        state: PathBuf,
        /// How long to wait for a new master, in seconds.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
        /// Redis Cluster only: kill the master of this room's slot (the
        /// slot of `chat:{NAME}:msgs`) rather than of slot 0.
        #[arg(long, value_name = "NAME")]
        room: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
struct Opts {
    /// Number of chat servers (app1..appN).
    #[arg(long, env = "CLUSTER_SERVERS", default_value_t = 3)]
    servers: usize,
    /// HAProxy's client port (0: any free port); every HAProxy process binds it.
    #[arg(long, env = "CLUSTER_PORT", default_value_t = 8080)]
    port: u16,
    /// The stats page port of HAProxy process 1 (0: any free port; the
    /// other processes get free ports).
    #[arg(long, env = "CLUSTER_STATS_PORT", default_value_t = 8404)]
    stats_port: u16,
    /// HAProxy processes sharing the client port (SO_REUSEPORT), each with
    /// its own maxconn: one holds about 10,000 connections under a 20,000
    /// file limit.
    #[arg(long, env = "CLUSTER_HAPROXY_PROCS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    haproxy_procs: u16,
    /// Most connections one client address may hold through HAProxy (a
    /// stick table; more are refused at accept). Unset: no cap, since
    /// local load tests come from a few loopback addresses. The shipped
    /// `haproxy.cfg` caps at 200.
    #[arg(long, env = "CLUSTER_HAPROXY_MAX_CONN_PER_IP")]
    haproxy_max_conn_per_ip: Option<u32>,
    /// Port of app1; app2.. follow (0: any free ports).
    #[arg(long, env = "CLUSTER_SERVER_PORT", default_value_t = 9001)]
    server_base_port: u16,
    /// Redis port (0: any free port; the default avoids a system Redis on 6379).
    #[arg(long, env = "CLUSTER_REDIS_PORT", default_value_t = 0)]
    redis_port: u16,
    /// Redis topology: `single` (one redis-server), `sentinel` (a master,
    /// two replicas, three sentinels; the servers get `--redis-sentinels`)
    /// or `cluster` (a Redis Cluster of three masters and three replicas;
    /// the servers get `--redis-cluster` with the six nodes).
    #[arg(
        long,
        env = "CLUSTER_REDIS",
        default_value = "single",
        value_parser = clap::builder::PossibleValuesParser::new(["single", "sentinel", "cluster"])
            .map(|s| s.parse::<RedisTopology>().expect("a possible value")),
    )]
    redis: RedisTopology,
    /// The master name the sentinels monitor (with `--redis sentinel`).
    #[arg(long, default_value = chat_cluster::sentinel::DEFAULT_MASTER_NAME)]
    sentinel_master: String,
    /// The chat `server` binary (default: next to this one).
    #[arg(long, env = "CHAT_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// Where logs go (default: a fresh temporary directory).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// HAProxy maxconn per process (two files per connection). Default:
    /// sized from the file limit, (hard limit - 200) / 2.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    haproxy_maxconn: Option<u32>,
    /// Also run PostgreSQL (Debian's `postgresql` binaries, a temporary
    /// data directory) and one `archiver` copying every room's history
    /// into it; the servers get `--database-url`.
    #[arg(long, env = "CLUSTER_ARCHIVE")]
    archive: bool,
    /// PostgreSQL's port with --archive (0: any free port).
    #[arg(long, env = "CLUSTER_POSTGRES_PORT", default_value_t = 0)]
    postgres_port: u16,
    /// The archiver's /metrics and /healthz port with --archive (0: any
    /// free port).
    #[arg(long, env = "CLUSTER_ARCHIVER_METRICS_PORT", default_value_t = 0)]
    archiver_metrics_port: u16,
    /// The `archiver` binary (default: next to this one).
    #[arg(long, env = "CHAT_ARCHIVER_BIN")]
    archiver_bin: Option<PathBuf>,
    /// An extra argument for every server, e.g. `--server-arg=--max-rooms=4`
    /// (repeatable). Without `--max-connections` here (or MAX_CONNECTIONS in
    /// the environment), servers get `--max-connections` = hard file limit - 200.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

impl Opts {
    fn check_ports(&self) -> Result<()> {
        let mut fixed = vec![
            ("HAProxy (--port)", self.port),
            ("stats (--stats-port)", self.stats_port),
            ("redis (--redis-port)", self.redis_port),
        ];
        if self.archive {
            fixed.push(("PostgreSQL (--postgres-port)", self.postgres_port));
            fixed.push((
                "the archiver's metrics (--archiver-metrics-port)",
                self.archiver_metrics_port,
            ));
        }
        if self.server_base_port != 0 {
            for i in 0..self.servers {
                fixed.push((
                    "a server (--server-base-port)",
                    self.server_base_port + i as u16,
                ));
            }
        }
        for (what, port) in fixed.into_iter().filter(|(_, p)| *p != 0) {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("port {port} for {what} is in use: stop what holds it or choose another port (0 picks a free one)");
            }
        }
        Ok(())
    }

    fn start(&self) -> Result<Cluster> {
        self.check_ports()?;
        let cluster = Cluster::start(ClusterOptions {
            servers: self.servers,
            port: self.port,
            stats_port: self.stats_port,
            redis_port: self.redis_port,
            redis: self.redis,
            sentinel_master: self.sentinel_master.clone(),
            server_base_port: self.server_base_port,
            server_args: self.server_args.clone(),
            server_bin: self.server_bin.clone(),
            haproxy_maxconn: self.haproxy_maxconn.unwrap_or(0),
            haproxy_procs: self.haproxy_procs.into(),
            log_dir: self.log_dir.clone(),
            server_log: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            haproxy_max_conn_per_ip: self.haproxy_max_conn_per_ip,
            archive: self.archive,
            postgres_port: self.postgres_port,
            archiver_metrics_port: self.archiver_metrics_port,
            archiver_bin: self.archiver_bin.clone(),
        })?;
        Ok(cluster)
    }
}

fn print_cluster(c: &Cluster) -> Result<()> {
    let redis = match c.redis_topology() {
        RedisTopology::Single => "redis-server".to_string(),
        RedisTopology::Sentinel => "Redis master + 2 replicas + 3 sentinels".to_string(),
        RedisTopology::Cluster => "Redis Cluster (3 masters + 3 replicas)".to_string(),
    };
    let haproxy = match c.haproxy_pids().len() {
        1 => "HAProxy".to_string(),
        n => format!("{n} HAProxy processes on one port"),
    };
    let archive = match c.database_url() {
        Some(_) => ", PostgreSQL + archiver",
        None => "",
    };
    println!(
        "cluster up: {redis}, {} chat servers, {haproxy}{archive}",
        c.len()
    );
    println!("  chat:     {}   (through HAProxy)", c.ws_url());
    for i in 0..c.len() {
        println!("  {}:     {}", c.app_id(i), c.server_ws_url(i));
    }
    match c.sentinel_master_name() {
        Some(name) => {
            println!(
                "  redis:    master {:?} at {} (nodes {})",
                name,
                c.redis_master_addr()?,
                c.redis_node_addrs().join(" ")
            );
            println!("  sentinels: {}", c.sentinel_addrs().join(","));
        }
        None if c.redis_topology() == RedisTopology::Cluster => println!(
            "  redis:    cluster nodes {} (masters {})",
            c.cluster_node_addrs().join(" "),
            c.cluster_masters()?.join(" ")
        ),
        None => println!("  redis:    {}", c.redis_url()),
    }
    if let (Some(db), Some(metrics)) = (c.database_url(), c.archiver_metrics_url()) {
        let servers = match c.servers_have_database_url() {
            true => "the servers read it too",
            false => "the server binary has no --database-url yet",
        };
        println!("  postgres: {db}   ({servers})");
        println!("  archiver: {metrics}   (/healthz on the same port)");
    }
    println!("  stats:    {}", c.haproxy_stats_urls().join(" "));
    println!("  sizing:   {}", c.sizing());
    println!(
        "  health:   {}/healthz   cluster view: http://{}/cluster (on each instance, not through HAProxy)",
        c.http_url(),
        c.server_addr(0)
    );
    let removed = match c.owns_log_dir() {
        true => "   (removed at stop; --log-dir keeps them)",
        false => "",
    };
    println!("  logs:     {}{removed}", c.log_dir().display());
    println!(
        "  state:    {}   (for `cluster down --state`, `cluster redis-failover --state`)",
        chat_cluster::state::write(c)?.display()
    );
    Ok(())
}

/// SIGINT and SIGTERM, listened for from before the cluster starts: one
/// that arrives while it starts is kept (the process is not killed with
/// its children's temporary directories left behind) and ends the wait
/// at once.
struct Signals {
    rt: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (int, term) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        Ok(Self { rt, int, term })
    }

    /// Wait for Ctrl-C or SIGTERM.
    fn wait(mut self) {
        self.rt.block_on(async {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
        });
    }
}

fn run() -> Result<u8> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Up(cli.opts)) {
        Cmd::HaproxyCfg => {
            print!("{}", chat_cluster::haproxy::compose_config());
            Ok(0)
        }
        Cmd::Down { state, timeout } => {
            let st = State::read(&state)?;
            let pid = st.down(std::time::Duration::from_secs(timeout))?;
            println!("cluster (pid {pid}) stopped");
            Ok(0)
        }
        Cmd::RedisFailover {
            state,
            timeout,
            room,
        } => {
            let st = State::read(&state)?;
            let timeout = std::time::Duration::from_secs(timeout);
            if st.redis == RedisTopology::Cluster {
                let slot = room.as_deref().map_or(0, chat_cluster::room_slot);
                let (old, new, took) = st.redis_failover_slot(slot, timeout)?;
                let room = room.map(|r| format!(", room {r:?}")).unwrap_or_default();
                println!(
                    "killed master {old} of slot {slot}{room} (SIGKILL); {new} took the slot over after {} ms",
                    took.as_millis()
                );
                return Ok(0);
            }
            if room.is_some() {
                bail!(
                    "--room needs a Redis Cluster (`cluster up --redis cluster`); this cluster runs the {} Redis topology",
                    st.redis
                );
            }
            let (old, new, took) = st.redis_failover(timeout)?;
            println!(
                "killed master {old} (SIGKILL); the sentinels named {new} after {} ms",
                took.as_millis()
            );
            Ok(0)
        }
        Cmd::Up(opts) => {
            let signals = Signals::listen()?;
            let mut c = opts.start()?;
            print_cluster(&c)?;
            println!(
                "\nChat with: target/release/tui-client --url {}\nPress Ctrl-C to stop.",
                c.ws_url()
            );
            signals.wait();
            println!("stopping...");
            c.shutdown();
            Ok(0)
        }
        Cmd::Demo(opts) => {
            let signals = Signals::listen()?;
            let mut c = opts.start()?;
            print_cluster(&c)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let bots = rt.block_on(demo::run(&c.ws_url()))?;
            println!("\nThe cluster stays up. Chat with it:");
            println!(
                "  target/release/tui-client --url {} --nick you",
                c.ws_url()
            );
            println!(
                "  websocat '{}?room=lobby&nick=me'   (then type a line)",
                c.ws_url()
            );
            println!(
                "  target/release/loadgen --preset smoke --url {}",
                c.ws_url()
            );
            println!("Press Ctrl-C to stop.");
            signals.wait();
            println!("stopping...");
            drop(bots);
            drop(rt);
            c.shutdown();
            Ok(0)
        }
        Cmd::Exec {
            opts,
            faults,
            command,
        } => {
            faults::check_all(&faults, opts.servers, opts.redis)?;
            let c = opts.start()?;
            let state = chat_cluster::state::write(&c)?;
            let url = c.ws_url();
            let args: Vec<String> = command.iter().map(|a| a.replace("{url}", &url)).collect();
            eprintln!("cluster up at {url}; {}", c.sizing());
            eprintln!("running: {}", args.join(" "));
            let mut cmd = std::process::Command::new(&args[0]);
            cmd.args(&args[1..])
                .env("CHAT_URL", &url)
                .env(
                    "CLUSTER_SERVER_PIDS",
                    join((0..c.len()).filter_map(|i| c.server_pid(i))),
                )
                .env(
                    "CLUSTER_SERVER_ADDRS",
                    join((0..c.len()).map(|i| c.server_addr(i))),
                )
                .env("CLUSTER_HAPROXY_PID", join(c.haproxy_pid()))
                .env("CLUSTER_HAPROXY_PIDS", join(c.haproxy_pids()))
                .env("CLUSTER_REDIS_PID", join(c.redis_pid()))
                .env("CLUSTER_LOG_DIR", c.log_dir())
                .env("CLUSTER_STATE", &state)
                .env("CLUSTER_REDIS_TOPOLOGY", c.redis_topology().to_string())
                .env("CLUSTER_REDIS_NODES", c.redis_node_addrs().join(","))
                .env("CLUSTER_REDIS_SENTINELS", c.sentinel_addrs().join(","))
                .env(
                    "CLUSTER_REDIS_SENTINEL_MASTER",
                    c.sentinel_master_name().unwrap_or_default(),
                )
                .env(
                    "CLUSTER_REDIS_NODE_PIDS",
                    join(c.redis_node_pids().into_iter().flatten()),
                );
            if let (Some(db), Some(metrics)) = (c.database_url(), c.archiver_metrics_url()) {
                cmd.env("CLUSTER_DATABASE_URL", db)
                    .env("CLUSTER_ARCHIVER_METRICS_URL", metrics)
                    .env("CLUSTER_ARCHIVER_PID", join(c.archiver_pid()))
                    .env("CLUSTER_POSTGRES_PID", join(c.postgres_pid()));
            }
            let cluster = Arc::new(Mutex::new(c));
            // The schedule's zero: the command's start.
            let start = Instant::now();
            let start_unix_ms = faults::unix_ms(SystemTime::now());
            cmd.env(
                faults::PLAN_ENV,
                faults::plan(&faults, start_unix_ms).to_string(),
            )
            .env(faults::START_ENV, start_unix_ms.to_string());
            let mut child = cmd
                .spawn()
                .with_context(|| format!("running {}", args[0]))?;
            let schedule = match faults.is_empty() {
                true => None,
                false => Some(faults::run_schedule(cluster.clone(), faults, start)?),
            };
            let status = child.wait().context("waiting for the command");
            if let Some(s) = schedule {
                s.finish();
            }
            cluster.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
            Ok(status?.code().map_or(1, |c| c as u8))
        }
    }
}

fn parse_fault(s: &str) -> Result<FaultSpec, String> {
    faults::parse(s).map_err(|e| format!("{e:#}"))
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}
