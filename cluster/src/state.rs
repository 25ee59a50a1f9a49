//! The state file of a running cluster: `cluster up` writes
//! `<log_dir>/cluster.json` (and prints its path) so that another process,
//! `cluster redis-failover --state <file>`, can find the Redis topology and
//! act on it. The file is a snapshot taken at start: PIDs are those of the
//! first processes, and the current master is always asked of the
//! sentinels (or, in a Redis Cluster, of the nodes), never read from the
//! file. It also names the process that wrote it (`pid`, `exe`), which
//! `cluster down --state <file>` stops ([`State::down`]), and in archive
//! mode the database URL and the archiver's metrics URL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{redis_cluster, sentinel, Cluster, RedisTopology};

/// The file name under the log directory.
pub const FILE_NAME: &str = "cluster.json";

/// What another process needs to know about a running cluster's Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `single`, `sentinel` or `cluster`.
    pub redis: RedisTopology,
    /// The master name the sentinels monitor (sentinel mode).
    pub sentinel_master: Option<String>,
    /// The sentinels' `host:port`s (sentinel mode).
    pub sentinels: Vec<String>,
    /// Every data node's `host:port` and PID at start (in cluster mode the
    /// six cluster nodes).
    pub redis_nodes: Vec<(String, Option<u32>)>,
    /// The launcher process that wrote the file (`cluster up`).
    pub pid: Option<u32>,
    /// Its executable, to make sure `pid` is still it.
    pub exe: Option<PathBuf>,
    /// PostgreSQL's URL, in archive mode.
    pub database_url: Option<String>,
    /// The archiver's `/metrics` URL, in archive mode.
    pub archiver_metrics_url: Option<String>,
}

/// Write `c`'s state to `<log_dir>/cluster.json` and return the path.
pub fn write(c: &Cluster) -> Result<PathBuf> {
    let path = c.log_dir().join(FILE_NAME);
    let nodes: Vec<Value> = c
        .redis_node_addrs()
        .into_iter()
        .zip(c.redis_node_pids())
        .map(|(addr, pid)| json!({ "addr": addr, "pid": pid }))
        .collect();
    let doc = json!({
        "ws_url": c.ws_url(),
        "log_dir": c.log_dir(),
        "redis": c.redis_topology().to_string(),
        "sentinel_master": c.sentinel_master_name(),
        "sentinels": c.sentinel_addrs(),
        "redis_nodes": nodes,
        "server_pids": (0..c.len()).map(|i| c.server_pid(i)).collect::<Vec<_>>(),
        "haproxy_pid": c.haproxy_pid(),
        "haproxy_pids": c.haproxy_pids(),
        "haproxy_stats": c.haproxy_stats_urls(),
        "pid": std::process::id(),
        "exe": std::env::current_exe().ok(),
        "database_url": c.database_url(),
        "archiver_metrics_url": c.archiver_metrics_url(),
        "archiver_pid": c.archiver_pid(),
        "postgres_pid": c.postgres_pid(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl State {
    /// Read a state file written by [`write()`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cluster state file {}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(State {
            redis: v["redis"].as_str().unwrap_or("single").parse()?,
            sentinel_master: v["sentinel_master"].as_str().map(String::from),
            sentinels: strings("sentinels"),
            redis_nodes: v["redis_nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| {
                            let addr = n["addr"].as_str()?.to_string();
                            Some((addr, n["pid"].as_u64().map(|p| p as u32)))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            pid: v["pid"].as_u64().map(|p| p as u32),
            exe: v["exe"].as_str().map(PathBuf::from),
            database_url: v["database_url"].as_str().map(String::from),
            archiver_metrics_url: v["archiver_metrics_url"].as_str().map(String::from),
        })
    }

    /// Stop the `cluster up` that wrote the file as Ctrl-C does (SIGTERM:
    /// it stops its processes and removes its temporary directories) and
    /// wait up to `timeout` for it to exit; returns its PID. Fails when it
    /// no longer runs (its PID now names another program).
    pub fn down(&self, timeout: Duration) -> Result<u32> {
        let Some(pid) = self.pid else {
            bail!("the state file names no launcher process (written by an older `cluster`)");
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe.is_none() || exe != self.exe || !running(pid) {
            bail!("the cluster (pid {pid}) is not running");
        }
        crate::procs::signal(pid, libc::SIGTERM)?;
        let deadline = std::time::Instant::now() + timeout;
        while running(pid) {
            if std::time::Instant::now() > deadline {
                bail!("the cluster (pid {pid}) did not stop within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// Kill the current master (as the sentinels name it) with SIGKILL,
    /// wait up to `timeout` for the sentinels to name another, and return
    /// `(old master, new master, time from the kill to the new name)`. In
    /// cluster mode, the master of slot 0 ([`State::redis_failover_slot`]).
    pub fn redis_failover(&self, timeout: Duration) -> Result<(String, String, Duration)> {
        if self.redis == RedisTopology::Cluster {
            return self.redis_failover_slot(0, timeout);
        }
        let Some(name) = self
            .sentinel_master
            .as_deref()
            .filter(|_| self.redis == RedisTopology::Sentinel)
        else {
            bail!(
                "this cluster runs the {} Redis topology: start it with `cluster up --redis sentinel` (or `--redis cluster`)",
                self.redis
            );
        };
        let old = sentinel::settled_master(&self.sentinels, name)?;
        let Some(pid) = self.node_pid(&old) else {
            bail!("the sentinels name {old}, whose PID the state file does not have (restarted?)");
        };
        kill_master(pid, &old)?;
        let (new, took) = sentinel::wait_new_master(&self.sentinels, name, &old, timeout)?;
        Ok((old, new, took))
    }

    /// Kill the Redis Cluster master that serves `slot` (as every node
    /// that answers agrees; see [`crate::room_slot`] for a room's slot)
    /// with SIGKILL, wait up to `timeout` until another node, its replica,
    /// serves the slot, and return `(old master, new master, time from the
    /// kill to the takeover)`. Refuses while the nodes disagree (a failover
    /// is under way). Cluster mode only.
    pub fn redis_failover_slot(
        &self,
        slot: u16,
        timeout: Duration,
    ) -> Result<(String, String, Duration)> {
        if self.redis != RedisTopology::Cluster {
            bail!(
                "this cluster runs the {} Redis topology, not a Redis Cluster: start it with `cluster up --redis cluster`",
                self.redis
            );
        }
        let addrs: Vec<String> = self.redis_nodes.iter().map(|(a, _)| a.clone()).collect();
        let old = redis_cluster::settled_master_for_slot(&addrs, slot)?;
        if redis_cluster::live_replicas_of(&redis_cluster::nodes_view(&addrs)?, &old).is_empty() {
            bail!("{old}, the master of slot {slot}, has no healthy replica to take over: killing it would leave the slot unserved");
        }
        let Some(pid) = self.node_pid(&old) else {
            bail!("slot {slot} is served by {old}, whose PID the state file does not have");
        };
        kill_master(pid, &old)?;
        let (new, took) = redis_cluster::wait_new_master(&addrs, slot, &old, timeout)?;
        Ok((old, new, took))
    }

    fn node_pid(&self, addr: &str) -> Option<u32> {
        self.redis_nodes
            .iter()
            .find(|(a, _)| a == addr)
            .and_then(|(_, pid)| *pid)
    }
}

/// Whether `pid` runs (and is not a zombie waiting for its parent).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rfind(')')
            .and_then(|i| st[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn kill_master(pid: u32, addr: &str) -> Result<()> {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -KILL {pid} (master {addr}) failed: {st}");
    }
    Ok(())
}
