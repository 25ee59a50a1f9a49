//! The cluster's Redis: one `redis-server` ([`RedisTopology::Single`], the
//! default) or a Sentinel topology ([`RedisTopology::Sentinel`], see
//! [`crate::sentinel`]), and the [`Cluster`] methods that reach it, find it
//! and break it.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{self, Child};
use crate::sentinel::Sentinels;
use crate::Cluster;

/// How Redis is deployed under the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisTopology {
    /// One `redis-server`; servers get `--redis-url`.
    #[default]
    Single,
    /// A master, two replicas and three sentinels ([`sentinel`]); servers
    /// get `--redis-sentinels` and `--redis-sentinel-master`.
    Sentinel,
}

impl std::str::FromStr for RedisTopology {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Self::Single),
            "sentinel" => Ok(Self::Sentinel),
            _ => bail!("unknown Redis topology {s:?} (single or sentinel)"),
        }
    }
}

impl std::fmt::Display for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::Sentinel => "sentinel",
        })
    }
}

impl Cluster {
    /// The PID of Redis, if it runs (in sentinel mode: `redis1`'s, the
    /// first master; see [`Cluster::redis_node_pids`]).
    pub fn redis_pid(&self) -> Option<u32> {
        match &self.sentinels {
            Some(s) => s.node_pids()[0],
            None => self.redis.as_ref().map(Child::pid),
        }
    }

    /// The Redis topology the cluster runs.
    pub fn redis_topology(&self) -> RedisTopology {
        self.opts.redis
    }

    /// The Sentinel topology, in sentinel mode.
    pub fn sentinels(&self) -> Option<&Sentinels> {
        self.sentinels.as_ref()
    }

    fn sentinels_or_bail(&self) -> Result<&Sentinels> {
        self.sentinels
            .as_ref()
            .context("the cluster runs a single Redis, not the sentinel topology")
    }

    /// The sentinels' `host:port`s (empty with a single Redis).
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .as_ref()
            .map(Sentinels::sentinel_addrs)
            .unwrap_or_default()
    }

    /// The master name the sentinels monitor, in sentinel mode.
    pub fn sentinel_master_name(&self) -> Option<&str> {
        self.sentinels.as_ref().map(Sentinels::master_name)
    }

    /// The current master's `host:port`: asked of the sentinels in sentinel
    /// mode (`SENTINEL get-master-addr-by-name`), else [`Cluster::redis_addr`].
    pub fn redis_master_addr(&self) -> Result<String> {
        match &self.sentinels {
            Some(s) => s.master_addr(),
            None => Ok(self.redis_addr()),
        }
    }

    /// Every Redis data node's `host:port` (`redis1` first).
    pub fn redis_node_addrs(&self) -> Vec<String> {
        match &self.sentinels {
            Some(s) => s.node_addrs(),
            None => vec![self.redis_addr()],
        }
    }

    /// Every Redis data node's PID, in [`Cluster::redis_node_addrs`] order
    /// (`None` for a stopped one).
    pub fn redis_node_pids(&self) -> Vec<Option<u32>> {
        match &self.sentinels {
            Some(s) => s.node_pids(),
            None => vec![self.redis_pid()],
        }
    }

    /// The sentinels' PIDs (empty with a single Redis).
    pub fn sentinel_pids(&self) -> Vec<Option<u32>> {
        self.sentinels
            .as_ref()
            .map(Sentinels::sentinel_pids)
            .unwrap_or_default()
    }

    /// Kill the current master, as the sentinels name it, with SIGKILL and
    /// return its address (sentinel mode only). See
    /// [`sentinel::wait_new_master`] to wait for its successor.
    pub fn redis_failover(&mut self) -> Result<String> {
        self.sentinels_or_bail()?;
        self.sentinels.as_mut().expect("checked").failover()
    }

    /// Make the current master sleep for `duration` (`DEBUG SLEEP`, sent
    /// without waiting for the answer) and return its address (sentinel
    /// mode only: the single Redis does not accept `DEBUG`).
    pub fn redis_hang_master(&self, duration: Duration) -> Result<String> {
        self.sentinels_or_bail()?.hang_master(duration)
    }

    /// Start Redis data node `i` (0-based) again after a failover killed
    /// it, as a replica of the current master (sentinel mode only).
    pub fn start_redis_node(&mut self, i: usize) -> Result<()> {
        self.sentinels_or_bail()?;
        self.sentinels.as_mut().expect("checked").start_node(i)
    }

    /// Stop Redis (SIGKILL): in sentinel mode every node and sentinel.
    pub fn kill_redis(&mut self) {
        if let Some(mut r) = self.redis.take() {
            r.kill();
        }
        self.sentinels = None;
    }

    /// Start Redis on its port (after [`Cluster::kill_redis`]); in sentinel
    /// mode the whole topology, `redis1` on that port and master again.
    pub fn start_redis(&mut self) -> Result<()> {
        if self.opts.redis == RedisTopology::Sentinel {
            let mut ports = vec![self.redis_port];
            ports.extend(&self.sentinel_ports);
            self.sentinels = Some(Sentinels::start(
                &self.log_dir,
                &self.opts.sentinel_master,
                &ports,
            )?);
            return Ok(());
        }
        let port = self.redis_port.to_string();
        let child = Child::spawn(
            "redis",
            "redis-server".as_ref(),
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--maxclients",
                "10000",
            ],
            &[],
            &self.log_dir,
        )?;
        procs::wait_redis(self.redis_port, Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", child.log_tail(20)))?;
        self.redis = Some(child);
        Ok(())
    }

    /// Kill Redis and start it again on the same port (empty: nothing is
    /// persisted, like a Redis that lost its data).
    pub fn restart_redis(&mut self) -> Result<()> {
        self.kill_redis();
        self.start_redis()
    }
}
