//! The Sentinel topology: three Redis data nodes (`redis1` starts as the
//! master, `redis2` and `redis3` as its replicas) and three sentinels
//! (`sentinel1..3`, quorum 2), all on loopback. Debian's `redis-server`
//! package has no `redis-sentinel` binary, so sentinels run as
//! `redis-server <conf> --sentinel`.
//!
//! Each process gets its own directory and configuration file under the
//! cluster's log directory (`<log_dir>/redis1/redis.conf`,
//! `<log_dir>/sentinel1/sentinel.conf`; sentinels rewrite theirs) and its
//! log in `<log_dir>/<name>.log`. Data nodes persist nothing and accept
//! `DEBUG` from loopback, so tests can hang a master with `DEBUG SLEEP`.
//!
//! Which node is the master changes with every failover: ask the sentinels
//! ([`master_addr`]), never assume `redis1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs::{self, free_port, Child, Node};
use crate::resp::{self, Reply};

/// The name the sentinels monitor the master under, unless chosen.
pub const DEFAULT_MASTER_NAME: &str = "chat";
/// Sentinels that must agree the master is down before a failover.
pub const QUORUM: usize = 2;
/// Silence after which a sentinel considers a node down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Sentinel `failover-timeout`: also the pause before a failed failover
/// is retried, so keep it short for tests.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(5000);

const PROBE: Duration = Duration::from_millis(500);

/// A running master, two replicas and three sentinels. Dropping it kills
/// them all.
#[derive(Debug)]
pub struct Sentinels {
    master_name: String,
    log_dir: PathBuf,
    /// `redis1..3`; `redis1` is the first master.
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
}

impl Sentinels {
    /// Start the data nodes on `ports[0..3]` (`redis1` first) and the
    /// sentinels on `ports[3..6]` (a missing or 0 port picks a free one),
    /// wait until both replicas are in sync, then until each sentinel sees
    /// the master, both replicas and the two other sentinels.
    pub fn start(log_dir: &Path, master_name: &str, ports: &[u16]) -> Result<Self> {
        let ports = (0..6)
            .map(|i| match ports.get(i) {
                Some(&p) if p != 0 => Ok(p),
                _ => free_port(),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut s = Sentinels {
            master_name: master_name.to_string(),
            log_dir: log_dir.to_path_buf(),
            nodes: (0..3)
                .map(|i| Node {
                    name: format!("redis{}", i + 1),
                    port: ports[i],
                    child: None,
                })
                .collect(),
            sentinels: (0..3)
                .map(|i| Node {
                    name: format!("sentinel{}", i + 1),
                    port: ports[3 + i],
                    child: None,
                })
                .collect(),
        };
        let master = s.nodes[0].addr();
        for i in 0..3 {
            let replica_of = (i > 0).then(|| master.clone());
            s.spawn_node(i, replica_of.as_deref())?;
        }
        s.wait_replicas_synced(Duration::from_secs(15))?;
        for i in 0..3 {
            s.spawn_sentinel(i)?;
        }
        s.wait_sentinels_agree(Duration::from_secs(20))?;
        Ok(s)
    }

    fn node_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.log_dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn spawn_node(&mut self, i: usize, replica_of: Option<&str>) -> Result<()> {
        let name = self.nodes[i].name.clone();
        let port = self.nodes[i].port;
        let dir = self.node_dir(&name)?;
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode yes\ndir \"{}\"\n\
             save \"\"\nappendonly no\nenable-debug-command local\nmaxclients 10000\n\
             # Full syncs go straight over the socket, without the default 5 s wait.\n\
             repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n",
            dir.display()
        );
        if let Some(m) = replica_of {
            let (host, mport) = m.rsplit_once(':').context("master address")?;
            conf.push_str(&format!("replicaof {host} {mport}\n"));
        }
        let path = dir.join("redis.conf");
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let child = Child::spawn(
            &name,
            "redis-server".as_ref(),
            &[path.as_os_str()],
            &[],
            &self.log_dir,
        )?;
        let up = procs::wait_redis(port, Duration::from_secs(10));
        let tail = child.log_tail(20);
        self.nodes[i].child = Some(child);
        up.map_err(|e| anyhow!("{name}: {e}\n{tail}"))
    }

    fn spawn_sentinel(&mut self, i: usize) -> Result<()> {
        let name = self.sentinels[i].name.clone();
        let port = self.sentinels[i].port;
        let dir = self.node_dir(&name)?;
        let m = &self.master_name;
        let mport = self.nodes[0].port;
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir \"{}\"\n\
             sentinel monitor {m} 127.0.0.1 {mport} {QUORUM}\n\
             sentinel down-after-milliseconds {m} {}\n\
             sentinel failover-timeout {m} {}\n\
             sentinel parallel-syncs {m} 1\n",
            dir.display(),
            DOWN_AFTER.as_millis(),
            FAILOVER_TIMEOUT.as_millis(),
        );
        let path = dir.join("sentinel.conf");
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let child = Child::spawn(
            &name,
            "redis-server".as_ref(),
            &[path.as_os_str(), "--sentinel".as_ref()],
            &[],
            &self.log_dir,
        )?;
        let up = procs::wait_redis(port, Duration::from_secs(10));
        let tail = child.log_tail(20);
        self.sentinels[i].child = Some(child);
        up.map_err(|e| anyhow!("{name}: {e}\n{tail}"))
    }

    fn log_tail(&self, name: &str) -> String {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .filter(|n| n.name == name)
            .filter_map(|n| n.child.as_ref())
            .map(|c| c.log_tail(20))
            .collect()
    }

    fn wait_replicas_synced(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for n in &self.nodes[1..] {
            loop {
                let info = resp::command_ok(&n.addr(), &["INFO", "replication"], PROBE)
                    .map(|r| r.text().unwrap_or_default());
                if matches!(&info, Ok(t) if t.contains("master_link_status:up")) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} ({}) is not in sync with its master within {timeout:?}: {info:?}\n{}",
                        n.name,
                        n.addr(),
                        self.log_tail(&n.name)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// What sentinel `s` does not see yet, or `None` when it sees the
    /// master, both replicas and the two other sentinels, all healthy.
    fn sentinel_missing(&self, s: &Node) -> Option<String> {
        let m = self.master_name.as_str();
        let healthy = |flags: &str| !flags.contains("down") && !flags.contains("disconnected");
        let master = match resp::command_ok(&s.addr(), &["SENTINEL", "MASTER", m], PROBE) {
            Ok(r) => r.pairs(),
            Err(e) => return Some(format!("{e:#}")),
        };
        let flags = master.get("flags").cloned().unwrap_or_default();
        if flags != "master" {
            return Some(format!("master flags {flags:?}"));
        }
        let count = |what: &str| -> std::result::Result<usize, String> {
            let r = resp::command_ok(&s.addr(), &["SENTINEL", what, m], PROBE)
                .map_err(|e| format!("{e:#}"))?;
            Ok(r.items()
                .iter()
                .map(Reply::pairs)
                .filter(|p| healthy(p.get("flags").map_or("", String::as_str)))
                .count())
        };
        match (count("REPLICAS"), count("SENTINELS")) {
            (Ok(2), Ok(2)) => None,
            (r, o) => Some(format!(
                "healthy replicas {r:?} of 2, other sentinels {o:?} of 2"
            )),
        }
    }

    fn wait_sentinels_agree(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for s in &self.sentinels {
            while let Some(missing) = self.sentinel_missing(s) {
                if Instant::now() > deadline {
                    bail!(
                        "{} ({}) does not see master {:?} with 2 replicas and 2 other sentinels within {timeout:?}: {missing}\n{}",
                        s.name,
                        s.addr(),
                        self.master_name,
                        self.log_tail(&s.name)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' `host:port`s.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::addr).collect()
    }

    /// The data nodes' `host:port`s, `redis1` (the first master) first.
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// The data nodes' PIDs (`None` for a killed one), in
    /// [`Sentinels::node_addrs`] order.
    pub fn node_pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|n| n.child.as_ref().map(Child::pid))
            .collect()
    }

    /// The sentinels' PIDs, in [`Sentinels::sentinel_addrs`] order.
    pub fn sentinel_pids(&self) -> Vec<Option<u32>> {
        self.sentinels
            .iter()
            .map(|n| n.child.as_ref().map(Child::pid))
            .collect()
    }

    /// The current master as named by the first sentinel that answers.
    pub fn master_addr(&self) -> Result<String> {
        master_addr(&self.sentinel_addrs(), &self.master_name)
    }

    /// Kill the current master (as named by the sentinels) with SIGKILL and
    /// return its address. The sentinels elect a replica after
    /// [`DOWN_AFTER`] and an election.
    pub fn failover(&mut self) -> Result<String> {
        let master = settled_master(&self.sentinel_addrs(), &self.master_name)?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr() == master)
            .ok_or_else(|| anyhow!("the sentinels name {master}, not one of our nodes"))?;
        match node.child.take() {
            Some(mut c) => c.kill(),
            None => bail!("master {} ({master}) is already dead", node.name),
        }
        Ok(master)
    }

    /// Send `DEBUG SLEEP <duration>` to the current master without waiting
    /// for the answer, and return its address: it stops answering anyone
    /// for `duration` (longer than [`DOWN_AFTER`] triggers a failover).
    pub fn hang_master(&self, duration: Duration) -> Result<String> {
        let master = settled_master(&self.sentinel_addrs(), &self.master_name)?;
        let secs = format!("{:.3}", duration.as_secs_f64());
        resp::send_only(&master, &["DEBUG", "SLEEP", &secs], PROBE)?;
        Ok(master)
    }

    /// Start data node `i` (0-based) again after it was killed, as a
    /// replica of the current master unless the sentinels still name it
    /// master.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].child.is_some() {
            bail!("{} is running", self.nodes[i].name);
        }
        let master = self.master_addr()?;
        let replica_of = (master != self.nodes[i].addr()).then_some(master);
        self.spawn_node(i, replica_of.as_deref())
    }

    /// Kill every process (SIGKILL).
    pub fn kill_all(&mut self) {
        for n in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            if let Some(mut c) = n.child.take() {
                c.kill();
            }
        }
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The master `name` as the sentinel at `sentinel` names it
/// (`SENTINEL get-master-addr-by-name`).
pub fn master_addr_from(sentinel: &str, name: &str) -> Result<String> {
    let r = resp::command_ok(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", name],
        PROBE,
    )?;
    match r.items() {
        [ip, port] => Ok(format!(
            "{}:{}",
            ip.text().unwrap_or_default(),
            port.text().unwrap_or_default()
        )),
        _ => bail!("sentinel {sentinel} does not know master {name:?}: {r:?}"),
    }
}

/// The master `name` as named by the first of `sentinels` that answers.
/// Right after a failover the sentinels can disagree for a moment (the
/// leader names the new master first, the others learn it from its hello
/// messages): ask each with [`master_addr_from`] to see that.
pub fn master_addr(sentinels: &[String], name: &str) -> Result<String> {
    let mut errors = Vec::new();
    for s in sentinels {
        match master_addr_from(s, name) {
            Ok(a) => return Ok(a),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no sentinel names master {name:?}: {}", errors.join("; "))
}

/// The master `name` when every sentinel that answers names the same one
/// and it answers `ROLE` as master: the target of a fault. Refuses while a
/// failover is under way, so a second kill does not hit a dead master.
pub fn settled_master(sentinels: &[String], name: &str) -> Result<String> {
    let views: Vec<(String, Result<String>)> = sentinels
        .iter()
        .map(|s| (s.clone(), master_addr_from(s, name)))
        .collect();
    let named: Vec<&String> = views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
    let Some(&first) = named.first() else {
        return master_addr(sentinels, name);
    };
    if named.iter().any(|a| *a != first) {
        let views: Vec<String> = views
            .iter()
            .map(|(s, v)| match v {
                Ok(a) => format!("{s} names {a}"),
                Err(e) => format!("{s}: {e:#}"),
            })
            .collect();
        bail!(
            "the sentinels disagree on master {name:?} (a failover is under way?): {}",
            views.join("; ")
        );
    }
    let role = resp::command_ok(first, &["ROLE"], PROBE)
        .map(|r| r.items().first().and_then(Reply::text).unwrap_or_default());
    match role {
        Ok(r) if r == "master" => Ok(first.clone()),
        other => bail!(
            "the sentinels name {first} as master {name:?}, but it is not one now (a failover is under way?): {other:?}"
        ),
    }
}

/// Wait until a sentinel names a master other than `old`; return it and
/// how long that took.
pub fn wait_new_master(
    sentinels: &[String],
    name: &str,
    old: &str,
    timeout: Duration,
) -> Result<(String, Duration)> {
    let start = Instant::now();
    loop {
        for s in sentinels {
            if let Ok(a) = master_addr_from(s, name) {
                if a != old {
                    return Ok((a, start.elapsed()));
                }
            }
        }
        if start.elapsed() > timeout {
            bail!("no sentinel named a master other than {old} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
