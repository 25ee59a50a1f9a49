//! The Redis Cluster topology ([`crate::RedisTopology::Cluster`]): six
//! `redis-server` nodes on loopback (`rnode1..6`) joined by
//! `redis-cli --cluster create ... --cluster-replicas 1`, so three masters
//! share the 16384 slots and each has one replica.
//!
//! Each node gets its own directory under the cluster's log directory
//! (`<log_dir>/rnode1/`, which holds its `nodes.conf`) and its log in
//! `<log_dir>/rnode1.log`; `redis-cli`'s output goes to
//! `<log_dir>/redis-cli-create.log`. Nodes persist nothing and accept
//! `DEBUG` from loopback.
//!
//! Which node masters which slots changes with every failover: ask the
//! nodes (`CLUSTER NODES`, [`RedisCluster::master_for_slot`]), never assume
//! the layout `redis-cli` chose.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs::{self, free_port, Child, Node};
use crate::resp;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Nodes started: three masters and three replicas.
pub const NODES: usize = 6;
/// `cluster-node-timeout`: silence after which a node is considered
/// failing, so a failover takes about this plus an election.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

const PROBE: Duration = Duration::from_millis(500);

/// The hash slot of `key`, as Redis computes it: CRC16/XMODEM of the key
/// (or of the first non-empty `{...}` hash tag in it) modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            // `{}` is not a tag: the whole key is hashed.
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16/XMODEM (poly 0x1021, init 0, no reflection), the CRC Redis
/// Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    XMODEM.checksum(data)
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node ID.
    pub id: String,
    /// `host:port` (without the `@cport` bus port).
    pub addr: String,
    /// `myself`, `master`, `slave`, `fail?`, `fail`...
    pub flags: Vec<String>,
    /// The master's node ID, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served, inclusive (importing/migrating entries skipped).
    pub slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// A master not flagged `fail` or `fail?`.
    pub fn is_live_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail") && !self.has_flag("fail?")
    }

    /// A replica (`slave` flag).
    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    /// Whether this node serves `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Parse the text of `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeEntry>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                bail!("short CLUSTER NODES line {line:?}");
            }
            let addr = f[1]
                .split(['@', ','])
                .next()
                .unwrap_or_default()
                .to_string();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Ok((a.parse()?, b.parse()?))
                })
                .collect::<Result<_, std::num::ParseIntError>>()
                .with_context(|| format!("slots in {line:?}"))?;
            Ok(NodeEntry {
                id: f[0].to_string(),
                addr,
                flags: f[2].split(',').map(String::from).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// `CLUSTER NODES` as the node at `addr` sees it.
pub fn cluster_nodes(addr: &str) -> Result<Vec<NodeEntry>> {
    let r = resp::command_ok(addr, &["CLUSTER", "NODES"], PROBE)?;
    parse_nodes(&r.text().unwrap_or_default())
}

/// The slot of room `room`'s keys: the server keeps a room under
/// `chat:{<room>}:...` (its channel is `chat:{<room>}:msgs`), so the hash
/// tag puts all of a room on one slot.
pub fn room_slot(room: &str) -> u16 {
    key_slot(&format!("chat:{{{room}}}:msgs"))
}

fn check_slot(slot: u16) -> Result<()> {
    if slot >= SLOTS {
        bail!("slot {slot} is out of range (0..{SLOTS})");
    }
    Ok(())
}

/// `CLUSTER NODES` as the first of `addrs` that answers sees it.
pub fn nodes_view(addrs: &[String]) -> Result<Vec<NodeEntry>> {
    let mut errors = Vec::new();
    for a in addrs {
        match cluster_nodes(a) {
            Ok(v) => return Ok(v),
            Err(e) => errors.push(format!("{a}: {e:#}")),
        }
    }
    bail!(
        "no cluster node answers CLUSTER NODES: {}",
        errors.join("; ")
    )
}

/// The healthy master that serves `slot` in one node's `view`.
fn master_for_slot_in(view: &[NodeEntry], slot: u16) -> Result<String> {
    view.iter()
        .find(|e| e.is_live_master() && e.owns(slot))
        .map(|e| e.addr.clone())
        .ok_or_else(|| anyhow!("no healthy master serves slot {slot} now"))
}

/// The healthy master of `slot` that every node of `addrs` that answers
/// agrees on; an error while they disagree or none serves it (a failover
/// is under way), or when no node answers.
pub fn settled_master_for_slot(addrs: &[String], slot: u16) -> Result<String> {
    check_slot(slot)?;
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    for a in addrs {
        match cluster_nodes(a) {
            Ok(view) => answers.push((a, master_for_slot_in(&view, slot))),
            Err(e) => errors.push(format!("{a}: {e:#}")),
        }
    }
    if answers.is_empty() {
        bail!(
            "no cluster node answers CLUSTER NODES: {}",
            errors.join("; ")
        );
    }
    let masters: Vec<&String> = answers
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok())
        .collect();
    if masters.len() == answers.len() && masters.iter().all(|m| *m == masters[0]) {
        return Ok(masters[0].clone());
    }
    let views: Vec<String> = answers
        .iter()
        .map(|(a, m)| match m {
            Ok(m) => format!("{a} names {m}"),
            Err(e) => format!("{a}: {e:#}"),
        })
        .collect();
    bail!(
        "the cluster nodes do not agree on a healthy master of slot {slot} (a failover is under way?): {}",
        views.join("; ")
    )
}

/// The healthy replicas of the master at `master` in one node's `view`.
pub fn live_replicas_of(view: &[NodeEntry], master: &str) -> Vec<String> {
    let Some(id) = view.iter().find(|e| e.addr == master).map(|e| &e.id) else {
        return Vec::new();
    };
    view.iter()
        .filter(|e| {
            e.is_replica()
                && e.master_id.as_ref() == Some(id)
                && !e.has_flag("fail")
                && !e.has_flag("fail?")
        })
        .map(|e| e.addr.clone())
        .collect()
}

/// Wait until a node of `addrs` other than `old` serves `slot` as a
/// healthy master by its own account (`myself,master` in its `CLUSTER
/// NODES`: a promoted replica says so as soon as it wins the election),
/// and return it with the time waited.
pub fn wait_new_master(
    addrs: &[String],
    slot: u16,
    old: &str,
    timeout: Duration,
) -> Result<(String, Duration)> {
    check_slot(slot)?;
    let start = Instant::now();
    loop {
        for a in addrs.iter().filter(|a| *a != old) {
            let Ok(view) = cluster_nodes(a) else { continue };
            if view
                .iter()
                .any(|e| e.has_flag("myself") && e.is_live_master() && e.owns(slot))
            {
                return Ok((a.clone(), start.elapsed()));
            }
        }
        if start.elapsed() > timeout {
            let views: Vec<String> = addrs
                .iter()
                .filter(|a| *a != old)
                .map(
                    |a| match cluster_nodes(a).and_then(|v| master_for_slot_in(&v, slot)) {
                        Ok(m) => format!("{a} names {m}"),
                        Err(e) => format!("{a}: {e:#}"),
                    },
                )
                .collect();
            bail!(
                "no node other than {old} took slot {slot} over within {timeout:?}: {}",
                views.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Six running cluster nodes. Dropping it kills them all.
#[derive(Debug)]
pub struct RedisCluster {
    log_dir: PathBuf,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Start six nodes on `ports` (a missing or 0 port picks a free one),
    /// create the cluster with `redis-cli --cluster create`, and wait until
    /// every node reports `cluster_state:ok` with all slots served and
    /// every replica is in sync.
    pub fn start(log_dir: &Path, ports: &[u16]) -> Result<Self> {
        let redis_cli = procs::which("redis-cli").context(
            "missing redis-cli: install with `sudo apt-get install -y redis-tools` \
             (the Redis Cluster topology is created with `redis-cli --cluster create`)",
        )?;
        let mut c = RedisCluster {
            log_dir: log_dir.to_path_buf(),
            nodes: (0..NODES)
                .map(|i| {
                    Ok(Node {
                        name: format!("rnode{}", i + 1),
                        port: match ports.get(i) {
                            Some(&p) if p != 0 => p,
                            _ => free_port()?,
                        },
                        child: None,
                    })
                })
                .collect::<Result<_>>()?,
        };
        for i in 0..NODES {
            c.spawn_node(i)?;
        }
        c.create(&redis_cli, Duration::from_secs(30))?;
        c.wait_ok(Duration::from_secs(20))?;
        Ok(c)
    }

    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let name = self.nodes[i].name.clone();
        let port = self.nodes[i].port;
        let dir = self.log_dir.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("nodes.conf");
        let args: Vec<std::ffi::OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--maxclients",
            "10000",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
        ]
        .iter()
        .map(Into::into)
        .chain([conf.into_os_string()])
        .chain(
            [
                "--cluster-node-timeout",
                &NODE_TIMEOUT.as_millis().to_string(),
                // A shard whose master is down (until its replica takes
                // over) must not stop the other shards' rooms.
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
                "--dir",
            ]
            .iter()
            .map(Into::into),
        )
        .chain([dir.into_os_string()])
        .collect();
        let child = Child::spawn(&name, "redis-server".as_ref(), &args, &[], &self.log_dir)?;
        let up = procs::wait_redis(port, Duration::from_secs(10));
        let tail = child.log_tail(20);
        self.nodes[i].child = Some(child);
        up.map_err(|e| anyhow!("{name}: {e}\n{tail}"))
    }

    /// Run `redis-cli --cluster create`, bounded by `timeout`.
    fn create(&self, redis_cli: &Path, timeout: Duration) -> Result<()> {
        let log = self.log_dir.join("redis-cli-create.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(redis_cli);
        cmd.args(["--cluster", "create"])
            .args(self.node_addrs())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut child = cmd.spawn().context("running redis-cli --cluster create")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-cli --cluster create did not finish within {timeout:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!(
                "redis-cli --cluster create failed ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// What node `n` does not report yet, or `None` when it says
    /// `cluster_state:ok` with every slot served by a healthy master, and,
    /// if it is a replica, its link to its master is up.
    fn node_missing(n: &Node) -> Option<String> {
        let addr = n.addr();
        let info = match resp::command_ok(&addr, &["CLUSTER", "INFO"], PROBE) {
            Ok(r) => r.text().unwrap_or_default(),
            Err(e) => return Some(format!("{e:#}")),
        };
        let all = format!("{SLOTS}");
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let (state, ok, known) = (
            field("cluster_state"),
            field("cluster_slots_ok"),
            field("cluster_known_nodes"),
        );
        if state != "ok" || ok != all || known != NODES.to_string() {
            return Some(format!(
                "cluster_state:{state} cluster_slots_ok:{ok} cluster_known_nodes:{known}"
            ));
        }
        let repl = match resp::command_ok(&addr, &["INFO", "replication"], PROBE) {
            Ok(r) => r.text().unwrap_or_default(),
            Err(e) => return Some(format!("{e:#}")),
        };
        (repl.contains("role:slave") && !repl.contains("master_link_status:up"))
            .then(|| "replica not in sync with its master".into())
    }

    /// Wait until every running node reports the cluster healthy and three
    /// masters and three replicas.
    fn wait_ok(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            while let Some(missing) = Self::node_missing(n) {
                if Instant::now() > deadline {
                    bail!(
                        "{} ({}) does not report a healthy cluster with all {SLOTS} slots within {timeout:?}: {missing}\n{}",
                        n.name,
                        n.addr(),
                        n.child.as_ref().map(|c| c.log_tail(20)).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Every node's `host:port`, `rnode1` first.
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// Every node's PID (`None` for a killed one), in
    /// [`RedisCluster::node_addrs`] order.
    pub fn node_pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|n| n.child.as_ref().map(Child::pid))
            .collect()
    }

    fn running_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(Node::addr)
            .collect()
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    pub fn nodes_view(&self) -> Result<Vec<NodeEntry>> {
        nodes_view(&self.running_addrs())
    }

    /// The healthy masters that serve slots, sorted by address.
    pub fn masters(&self) -> Result<Vec<String>> {
        let mut m: Vec<String> = self
            .nodes_view()?
            .into_iter()
            .filter(|e| e.is_live_master() && !e.slots.is_empty())
            .map(|e| e.addr)
            .collect();
        m.sort();
        Ok(m)
    }

    /// The healthy master that serves `slot`, as the first running node
    /// that answers sees it (for a moment after a failover the nodes can
    /// disagree; see [`settled_master_for_slot`]).
    pub fn master_for_slot(&self, slot: u16) -> Result<String> {
        check_slot(slot)?;
        master_for_slot_in(&self.nodes_view()?, slot)
    }

    /// Kill the master of `slot` with SIGKILL and return its address. Its
    /// replica takes over after [`NODE_TIMEOUT`] and an election.
    pub fn failover_slot(&mut self, slot: u16) -> Result<String> {
        let master = self.master_for_slot(slot)?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr() == master)
            .ok_or_else(|| anyhow!("slot {slot} is served by {master}, not one of our nodes"))?;
        match node.child.take() {
            Some(mut c) => c.kill(),
            None => bail!("master {} ({master}) is already dead", node.name),
        }
        Ok(master)
    }

    /// Move `slot` to another master, the way `redis-cli --cluster
    /// reshard` does: the target `IMPORTING`, the owner `MIGRATING`, every
    /// key `MIGRATE`d in batches, then `SETSLOT NODE` on both and on every
    /// other master. Returns `(from, to)` addresses.
    pub fn migrate_slot(&self, slot: u16) -> Result<(String, String)> {
        let view = self.nodes_view()?;
        let from = view
            .iter()
            .find(|n| n.is_live_master() && n.owns(slot))
            .ok_or_else(|| anyhow!("no live master serves slot {slot}"))?
            .clone();
        let to = view
            .iter()
            .find(|n| n.is_live_master() && n.id != from.id)
            .ok_or_else(|| anyhow!("no other live master"))?
            .clone();
        let s = slot.to_string();
        let t = Duration::from_secs(5);
        resp::command_ok(
            &to.addr,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id],
            t,
        )?;
        resp::command_ok(
            &from.addr,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id],
            t,
        )?;
        let (host, port) = to
            .addr
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("bad address {}", to.addr))?;
        for _ in 0..10_000 {
            let keys = resp::command_ok(&from.addr, &["CLUSTER", "GETKEYSINSLOT", &s, "100"], t)?;
            let keys: Vec<String> = keys.items().iter().filter_map(|k| k.text()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            resp::command_ok(&from.addr, &args, t)?;
        }
        // The new owner first, then the old one, then everyone else (what
        // redis-cli does), so no node points back at the old owner.
        for n in [&to, &from] {
            resp::command_ok(&n.addr, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id], t)?;
        }
        for n in view
            .iter()
            .filter(|n| n.is_live_master() && n.id != to.id && n.id != from.id)
        {
            resp::command_ok(&n.addr, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id], t)?;
        }
        Ok((from.addr, to.addr))
    }

    /// Kill every node (SIGKILL).
    pub fn kill_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                c.kill();
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot(""), 0);
        assert_eq!(
            key_slot("{user1000}.following"),
            key_slot("{user1000}.followers")
        );
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // Only the first `{...}` counts; an empty one means no tag.
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        assert_eq!(key_slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("{foo"), crc16_xmodem(b"{foo") % SLOTS);
        // A room lives on the slot of its name.
        assert_eq!(room_slot("lobby"), key_slot("lobby"));
        assert_eq!(room_slot("lobby"), key_slot("chat:{lobby}:seq"));
        assert_eq!(room_slot(""), key_slot("chat:{}:msgs"));
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [5461->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master,fail - 0 1426238317741 6 disconnected 10923 10924-16383
";
        let n = parse_nodes(text).unwrap();
        assert_eq!(n.len(), 5);
        assert_eq!(n[0].addr, "127.0.0.1:30004");
        assert_eq!(n[0].master_id.as_deref(), Some(n[1].id.as_str()));
        assert_eq!(n[1].slots, vec![(0, 5460)]);
        assert!(n[1].is_live_master() && n[1].owns(5460) && !n[1].owns(5461));
        assert_eq!(n[2].slots, vec![(5461, 10922)]);
        assert!(n[3].is_replica());
        assert_eq!(n[3].master_id.as_deref(), Some(n[2].id.as_str()));
        assert!(!n[4].is_live_master() && n[4].owns(10923) && n[4].owns(16383));
    }
}
