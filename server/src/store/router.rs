//! Redis Cluster routing for the command side: which master serves a key,
//! and one [`Linker`] per master.
//!
//! Not redis-rs's `ClusterConnection` for commands: it routes (and
//! retries, and redirects) behind our back, so the publish script could
//! not know *which* Redis process it runs on, and epochs need that (see
//! [`super::lua`]). Each master gets its own [`Linker`], whose links carry
//! that master's `run_id`; a failover puts another process (a promoted
//! replica, another `run_id`) behind the slot, so its rooms start new
//! epochs. The pub/sub side does use redis-rs's `ClusterConnection`
//! (sharded pub/sub, see `crate::hub`).
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of the masters known
//! and then of the seed nodes. It is reloaded when a command meets
//! `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN`, when a master cannot be
//! reached, and about once a second by the liveness probe task
//! ([`super::Store::check_master`]), which is how a failover, a slot
//! migration or a master that came back as a replica is noticed even
//! while nothing fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

use super::link::{tcp_settings, Linker, Target};
use super::{StoreError, StoreResult};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis computes it: CRC16/XMODEM of the first
/// non-empty `{...}` hash tag, or of the whole key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    let b = key.as_bytes();
    let hashed = b
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &b[open + 1..];
            let len = rest.iter().position(|&c| c == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(b);
    XMODEM.checksum(hashed) % SLOTS
}

/// Which master serves each slot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Master addresses (`host:port`), sorted.
    masters: Vec<String>,
    /// Per slot, an index into `masters` (`u16::MAX`: no master).
    owner: Vec<u16>,
}

impl SlotMap {
    /// Parse a `CLUSTER SLOTS` reply; `asked` replaces an empty host.
    pub fn parse(v: Value, asked: &str) -> StoreResult<Self> {
        let bad = |what: &str| StoreError::Reply(format!("CLUSTER SLOTS: {what}"));
        let Value::Array(ranges) = v else {
            return Err(bad("not an array"));
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let mut spans = Vec::with_capacity(ranges.len());
        for r in ranges {
            let Value::Array(r) = r else {
                return Err(bad("range not an array"));
            };
            let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(node))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return Err(bad("range"));
            };
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err(bad("host")),
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return Err(bad("port"));
            };
            let (a, b) = (
                u16::try_from(*a).map_err(|_| bad("slot"))?,
                u16::try_from(*b).map_err(|_| bad("slot"))?,
            );
            if a > b || b >= SLOTS {
                return Err(bad("slot range"));
            }
            spans.push((a, b, format!("{host}:{port}")));
        }
        let mut masters: Vec<String> = spans.iter().map(|s| s.2.clone()).collect();
        masters.sort();
        masters.dedup();
        let mut owner = vec![u16::MAX; usize::from(SLOTS)];
        for (a, b, addr) in spans {
            let i = masters.binary_search(&addr).expect("listed") as u16;
            for s in a..=b {
                owner[usize::from(s)] = i;
            }
        }
        Ok(Self { masters, owner })
    }

    /// The master serving `slot`.
    pub fn master(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i)).map(String::as_str)
    }

    /// Every master, sorted.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// Slots no master serves.
    pub fn uncovered(&self) -> usize {
        self.owner.iter().filter(|&&o| o == u16::MAX).count()
    }
}

/// Routes commands to the master of their slot.
#[derive(Debug)]
pub(crate) struct Router {
    seeds: Vec<String>,
    /// User, password and settings of every node (from `--redis-url`).
    base: ConnectionInfo,
    response_timeout: Duration,
    scripts: Vec<String>,
    map: RwLock<Arc<SlotMap>>,
    linkers: Mutex<HashMap<String, Arc<Linker>>>,
    /// Held while reloading; holds when the map was last reloaded.
    reloading: tokio::sync::Mutex<Option<Instant>>,
    /// Times the map changed after the first load.
    changes: AtomicU64,
}

/// A reload closer to the last one than this is skipped (unless forced).
const RELOAD_EVERY: Duration = Duration::from_millis(200);

impl Router {
    pub(crate) fn new(
        url: &str,
        seeds: &[String],
        response_timeout: Duration,
        scripts: Vec<String>,
    ) -> StoreResult<Self> {
        let seeds: Vec<String> = seeds
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(StoreError::Reply(
                "--redis-cluster needs a HOST:PORT".into(),
            ));
        }
        for s in &seeds {
            parse_addr(s)?;
        }
        Ok(Self {
            seeds,
            base: url.into_connection_info()?.set_tcp_settings(tcp_settings()),
            response_timeout,
            scripts,
            map: RwLock::new(Arc::new(SlotMap::default())),
            linkers: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(None),
            changes: AtomicU64::new(0),
        })
    }

    /// The seed nodes (`host:port`).
    pub(crate) fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Connection settings for the node at `addr`.
    pub(crate) fn info_for(&self, addr: &str) -> StoreResult<ConnectionInfo> {
        let (host, port) = parse_addr(addr)?;
        Ok(self.base.clone().set_addr(ConnectionAddr::Tcp(host, port)))
    }

    /// The slot map as last loaded.
    pub(crate) fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many times the map changed after it was first loaded.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Relaxed)
    }

    /// The linker of the master serving `slot`, loading the map first if
    /// there is none yet.
    pub(crate) async fn linker(&self, slot: u16) -> StoreResult<Arc<Linker>> {
        let mut map = self.map();
        if map.masters().is_empty() {
            self.reload(false).await?;
            map = self.map();
        }
        let addr = map.master(slot).ok_or_else(|| {
            StoreError::Unavailable(format!("no master serves slot {slot} (cluster down?)"))
        })?;
        let mut linkers = self.linkers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = linkers.get(addr) {
            return Ok(l.clone());
        }
        let client = redis::Client::open(self.info_for(addr)?)?;
        let l = Arc::new(Linker::new(
            Target::Single(client),
            self.response_timeout,
            self.scripts.clone(),
        ));
        linkers.insert(addr.to_string(), l.clone());
        Ok(l)
    }

    /// How many times the Redis process behind any master's link changed
    /// (a restart in place), plus how many times the map changed.
    pub(crate) fn replacements(&self) -> u64 {
        let linkers = self.linkers.lock().unwrap_or_else(|p| p.into_inner());
        linkers.values().map(|l| l.replacements()).sum::<u64>() + self.changes()
    }

    /// Drop every command connection.
    pub(crate) fn drop_all(&self) {
        let linkers = self.linkers.lock().unwrap_or_else(|p| p.into_inner());
        for l in linkers.values() {
            l.drop_current();
        }
    }

    /// Load the slot map again (at most every [`RELOAD_EVERY`] unless
    /// `force`). Returns whether it changed.
    pub(crate) async fn reload(&self, force: bool) -> StoreResult<bool> {
        let mut last = self.reloading.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let old = self.map();
        // The masters we know first (they are the most likely to be up to
        // date), then the seeds.
        let mut ask: Vec<String> = old.masters().to_vec();
        for s in &self.seeds {
            if !ask.contains(s) {
                ask.push(s.clone());
            }
        }
        let mut errors = Vec::new();
        for addr in &ask {
            match self.ask_slots(addr).await {
                Ok(map) => {
                    let changed = map != *old;
                    if changed {
                        if !old.masters().is_empty() {
                            self.changes.fetch_add(1, Relaxed);
                            tracing::warn!(
                                from = ?old.masters(),
                                to = ?map.masters(),
                                asked = addr,
                                "redis cluster slot map changed"
                            );
                        }
                        let mut linkers = self.linkers.lock().unwrap_or_else(|p| p.into_inner());
                        linkers.retain(|a, _| map.masters().contains(a));
                        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
                    }
                    return Ok(changed);
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(StoreError::Unavailable(format!(
            "no cluster node gave a slot map ({})",
            errors.join("; ")
        )))
    }

    async fn ask_slots(&self, addr: &str) -> StoreResult<SlotMap> {
        let client = redis::Client::open(self.info_for(addr)?)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        let ask = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn)
                .await
        };
        let v = tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .map_err(|_| StoreError::Timeout(Duration::from_secs(1)))??;
        SlotMap::parse(v, addr)
    }
}

/// `host:port`.
fn parse_addr(s: &str) -> StoreResult<(String, u16)> {
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| StoreError::Reply(format!("bad node address {s:?}: want HOST:PORT")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(key_slot("{}foo"), key_slot("foo"));
    }

    #[test]
    fn slot_map_parses() {
        let node = |p: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7001),
                node(7004),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7002)]),
        ]);
        let m = SlotMap::parse(v, "127.0.0.1:7001").unwrap();
        assert_eq!(m.master(0), Some("127.0.0.1:7001"));
        assert_eq!(m.master(5461), Some("127.0.0.1:7002"));
        assert_eq!(m.uncovered(), 0);
        assert_eq!(m.masters().len(), 2);
    }
}
