//! The cluster's Redis: one `redis-server` ([`RedisTopology::Single`], the
//! default), a Sentinel topology ([`RedisTopology::Sentinel`], see
//! [`crate::sentinel`]) or a Redis Cluster ([`RedisTopology::Cluster`], see
//! [`crate::redis_cluster`]), and the [`Cluster`] methods that reach it,
//! find it and break it.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{self, Child};
use crate::redis_cluster::RedisCluster;
use crate::sentinel::Sentinels;
use crate::Cluster;

/// How Redis is deployed under the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisTopology {
    /// One `redis-server`; servers get `--redis-url`.
    #[default]
    Single,
    /// A master, two replicas and three sentinels ([`crate::sentinel`]); servers
    /// get `--redis-sentinels` and `--redis-sentinel-master`.
    Sentinel,
    /// Six nodes, three masters and three replicas, in a Redis Cluster
    /// ([`crate::redis_cluster`]); servers get `--redis-cluster` with every
    /// node's address.
    Cluster,
}

impl std::str::FromStr for RedisTopology {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Self::Single),
            "sentinel" => Ok(Self::Sentinel),
            "cluster" => Ok(Self::Cluster),
            _ => bail!("unknown Redis topology {s:?} (single, sentinel or cluster)"),
        }
    }
}

impl std::fmt::Display for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
        })
    }
}

impl Cluster {
    /// The PID of Redis, if it runs (in sentinel mode: `redis1`'s, the
    /// first master; in cluster mode `rnode1`'s; see
    /// [`Cluster::redis_node_pids`]).
    pub fn redis_pid(&self) -> Option<u32> {
        if let Some(c) = &self.redis_cluster {
            return c.node_pids()[0];
        }
        match &self.sentinels {
            Some(s) => s.node_pids()[0],
            None => self.redis.as_ref().map(Child::pid),
        }
    }

    /// The Redis Cluster, in cluster mode.
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        self.redis_cluster.as_ref()
    }

    fn redis_cluster_or_bail(&self) -> Result<&RedisCluster> {
        self.redis_cluster.as_ref().with_context(|| {
            format!(
                "the cluster runs the {} Redis topology, not a Redis Cluster",
                self.opts.redis
            )
        })
    }

    /// Every Redis Cluster node's `host:port`, `rnode1` first (empty in
    /// the other topologies).
    pub fn cluster_node_addrs(&self) -> Vec<String> {
        self.redis_cluster
            .as_ref()
            .map(RedisCluster::node_addrs)
            .unwrap_or_default()
    }

    /// The Redis Cluster's healthy masters that serve slots, sorted, from
    /// `CLUSTER NODES` (cluster mode only).
    pub fn cluster_masters(&self) -> Result<Vec<String>> {
        self.redis_cluster_or_bail()?.masters()
    }

    /// The Redis Cluster master that serves `slot` now (cluster mode only;
    /// see [`crate::key_slot`]).
    pub fn cluster_master_for_slot(&self, slot: u16) -> Result<String> {
        self.redis_cluster_or_bail()?.master_for_slot(slot)
    }

    /// Kill the Redis Cluster master that serves `slot` with SIGKILL and
    /// return its address (cluster mode only); its replica takes over.
    pub fn redis_failover_slot(&mut self, slot: u16) -> Result<String> {
        self.redis_cluster_or_bail()?;
        self.redis_cluster
            .as_mut()
            .expect("checked")
            .failover_slot(slot)
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
        self.sentinels.as_ref().with_context(|| {
            format!(
                "the cluster runs the {} Redis topology, not the sentinel one",
                self.opts.redis
            )
        })
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
    /// mode (`SENTINEL get-master-addr-by-name`), the master of slot 0 in
    /// cluster mode, else [`Cluster::redis_addr`].
    pub fn redis_master_addr(&self) -> Result<String> {
        if let Some(c) = &self.redis_cluster {
            return c.master_for_slot(0);
        }
        match &self.sentinels {
            Some(s) => s.master_addr(),
            None => Ok(self.redis_addr()),
        }
    }

    /// Every Redis data node's `host:port` (`redis1`/`rnode1` first).
    pub fn redis_node_addrs(&self) -> Vec<String> {
        if let Some(c) = &self.redis_cluster {
            return c.node_addrs();
        }
        match &self.sentinels {
            Some(s) => s.node_addrs(),
            None => vec![self.redis_addr()],
        }
    }

    /// Every Redis data node's PID, in [`Cluster::redis_node_addrs`] order
    /// (`None` for a stopped one).
    pub fn redis_node_pids(&self) -> Vec<Option<u32>> {
        if let Some(c) = &self.redis_cluster {
            return c.node_pids();
        }
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
    /// return its address (sentinel mode; in cluster mode the master of
    /// slot 0, see [`Cluster::redis_failover_slot`]). See
    /// [`crate::sentinel::wait_new_master`] to wait for its successor.
    pub fn redis_failover(&mut self) -> Result<String> {
        if self.redis_cluster.is_some() {
            return self.redis_failover_slot(0);
        }
        self.sentinels_or_bail()?;
        self.sentinels.as_mut().expect("checked").failover()
    }

    /// Make the current master sleep for `duration` (`DEBUG SLEEP`, sent
    /// without waiting for the answer) and return its address (sentinel
    /// mode only: the single Redis does not accept `DEBUG`).
    pub fn redis_hang_master(&self, duration: Duration) -> Result<String> {
        self.sentinels_or_bail()?.hang_master(duration)
    }

    /// In cluster mode: move `slot` (keys and all) to another master, as
    /// a live reshard does; returns `(from, to)`.
    pub fn redis_migrate_slot(&self, slot: u16) -> Result<(String, String)> {
        self.redis_cluster_or_bail()?.migrate_slot(slot)
    }

    /// In cluster mode: make the master of `slot` sleep for `duration`
    /// (`DEBUG SLEEP`, sent without waiting for the answer: its
    /// connections stay open and nothing answers, so the other nodes fail
    /// it over) and return its address.
    pub fn redis_hang_slot_master(&self, slot: u16, duration: Duration) -> Result<String> {
        let master = self.redis_cluster_or_bail()?.master_for_slot(slot)?;
        let secs = format!("{:.3}", duration.as_secs_f64());
        crate::resp::send_only(
            &master,
            &["DEBUG", "SLEEP", &secs],
            Duration::from_millis(500),
        )?;
        Ok(master)
    }

    /// Start Redis data node `i` (0-based) again after a failover killed
    /// it, as a replica of the current master (sentinel mode only).
    pub fn start_redis_node(&mut self, i: usize) -> Result<()> {
        self.sentinels_or_bail()?;
        self.sentinels.as_mut().expect("checked").start_node(i)
    }

    /// Stop Redis (SIGKILL): in sentinel mode every node and sentinel, in
    /// cluster mode every node.
    pub fn kill_redis(&mut self) {
        if let Some(mut r) = self.redis.take() {
            r.kill();
        }
        self.sentinels = None;
        self.redis_cluster = None;
    }

    /// Start Redis on its port (after [`Cluster::kill_redis`]); in sentinel
    /// mode the whole topology, `redis1` on that port and master again; in
    /// cluster mode a new, empty Redis Cluster on the same ports.
    pub fn start_redis(&mut self) -> Result<()> {
        if self.opts.redis == RedisTopology::Cluster {
            let mut ports = vec![self.redis_port];
            ports.extend(&self.extra_redis_ports);
            // Old nodes.conf files would make the nodes refuse to join anew.
            for i in 1..=crate::redis_cluster::NODES {
                let _ = std::fs::remove_file(self.log_dir.join(format!("rnode{i}/nodes.conf")));
            }
            self.redis_cluster = Some(RedisCluster::start(&self.log_dir, &ports)?);
            return Ok(());
        }
        if self.opts.redis == RedisTopology::Sentinel {
            let mut ports = vec![self.redis_port];
            ports.extend(&self.extra_redis_ports);
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
