//! Which Redis masters hold room streams: one fixed Redis, the master the
//! sentinels name, or every master of a Redis Cluster (from `CLUSTER
//! SLOTS`). Asked again at every scan, so failovers and slot moves are
//! followed within `--scan-interval`.

use std::time::Duration;

use anyhow::{bail, Context};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value,
};

use crate::config::Config;

/// The timeout of every Redis command and connect.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the masters are found.
pub enum Topology {
    Single(ConnectionInfo),
    Sentinel {
        /// redis-rs's sentinel client (it caches sentinel connections).
        client: Box<tokio::sync::Mutex<SentinelClient>>,
        master: String,
    },
    Cluster {
        seeds: Vec<String>,
        base: ConnectionInfo,
    },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(i) => write!(f, "Single({})", i.addr()),
            Self::Sentinel { master, .. } => write!(f, "Sentinel({master})"),
            Self::Cluster { seeds, .. } => write!(f, "Cluster({seeds:?})"),
        }
    }
}

/// Split `HOST:PORT`.
fn parse_addr(s: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .trim()
        .rsplit_once(':')
        .with_context(|| format!("bad address {s:?}: want HOST:PORT"))?;
    Ok((
        h.trim_matches(['[', ']']).to_string(),
        p.parse().with_context(|| format!("bad port in {s:?}"))?,
    ))
}

/// The async connection settings of every Redis connection.
pub fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(REDIS_TIMEOUT))
}

impl Topology {
    pub fn from_config(c: &Config) -> anyhow::Result<Self> {
        let base = c
            .redis_url
            .as_str()
            .into_connection_info()
            .context("--redis-url")?;
        if !c.redis_cluster.is_empty() {
            for s in &c.redis_cluster {
                parse_addr(s)?;
            }
            return Ok(Self::Cluster {
                seeds: c.redis_cluster.clone(),
                base,
            });
        }
        if !c.redis_sentinels.is_empty() {
            let master = c
                .redis_sentinel_master
                .clone()
                .context("--redis-sentinels needs --redis-sentinel-master")?;
            let addrs = c
                .redis_sentinels
                .iter()
                .map(|s| parse_addr(s).map(|(h, p)| ConnectionAddr::Tcp(h, p)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let redis = base.redis_settings();
            let mut b =
                SentinelClientBuilder::new(addrs, master.clone(), SentinelServerType::Master)?
                    .set_client_to_redis_db(redis.db());
            if let Some(user) = redis.username() {
                b = b.set_client_to_redis_username(user);
            }
            if let Some(pass) = redis.password() {
                b = b.set_client_to_redis_password(pass);
            }
            return Ok(Self::Sentinel {
                client: Box::new(tokio::sync::Mutex::new(b.build()?)),
                master,
            });
        }
        Ok(Self::Single(base))
    }

    /// The masters now, as `(HOST:PORT, client)`.
    pub async fn masters(&self) -> anyhow::Result<Vec<(String, Client)>> {
        match self {
            Self::Single(info) => Ok(vec![(info.addr().to_string(), Client::open(info.clone())?)]),
            Self::Sentinel { client, master, .. } => {
                let ask = async { client.lock().await.async_get_client().await };
                let c = tokio::time::timeout(REDIS_TIMEOUT, ask)
                    .await
                    .with_context(|| {
                        format!("the sentinels did not name master {master:?} in time")
                    })?
                    .with_context(|| format!("no reachable master {master:?}"))?;
                Ok(vec![(c.get_connection_info().addr().to_string(), c)])
            }
            Self::Cluster { seeds, base } => {
                let mut last = None;
                for seed in seeds {
                    match cluster_masters(seed, base).await {
                        Ok(m) if !m.is_empty() => {
                            return m
                                .into_iter()
                                .map(|(h, p)| {
                                    let info =
                                        base.clone().set_addr(ConnectionAddr::Tcp(h.clone(), p));
                                    Ok((format!("{h}:{p}"), Client::open(info)?))
                                })
                                .collect();
                        }
                        Ok(_) => last = Some(anyhow::anyhow!("{seed}: no slots assigned")),
                        Err(e) => last = Some(e.context(seed.clone())),
                    }
                }
                Err(last.unwrap_or_else(|| anyhow::anyhow!("no seed nodes")))
            }
        }
    }
}

/// The masters in `seed`'s `CLUSTER SLOTS`, without repeats.
async fn cluster_masters(seed: &str, base: &ConnectionInfo) -> anyhow::Result<Vec<(String, u16)>> {
    let (h, p) = parse_addr(seed)?;
    let client = Client::open(base.clone().set_addr(ConnectionAddr::Tcp(h.clone(), p)))?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&connection_config())
        .await?;
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    parse_cluster_slots(&v, &h)
}

/// Parse a `CLUSTER SLOTS` reply: each range's first node is its master;
/// an empty host means the node we asked.
pub fn parse_cluster_slots(v: &Value, asked: &str) -> anyhow::Result<Vec<(String, u16)>> {
    let Value::Array(ranges) = v else {
        bail!("CLUSTER SLOTS: not an array");
    };
    let mut out: Vec<(String, u16)> = Vec::new();
    for r in ranges {
        let Value::Array(parts) = r else {
            bail!("CLUSTER SLOTS: a range is not an array");
        };
        let Some(Value::Array(node)) = parts.get(2) else {
            bail!("CLUSTER SLOTS: a range without a master");
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => bail!("CLUSTER SLOTS: bad host"),
        };
        let host = if host.is_empty() || host == "?" {
            asked.to_string()
        } else {
            host
        };
        let Some(Value::Int(port)) = node.get(1) else {
            bail!("CLUSTER SLOTS: bad port");
        };
        let m = (host, u16::try_from(*port)?);
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_give_each_master_once() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.into()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5000),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7003),
            ]),
            Value::Array(vec![Value::Int(5001), Value::Int(10000), node("", 7001)]),
            Value::Array(vec![
                Value::Int(10001),
                Value::Int(16383),
                node("10.0.0.1", 7000),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(&v, "127.0.0.1").unwrap(),
            [
                ("10.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001)
            ]
        );
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_addr("127.0.0.1:6379").unwrap(),
            ("127.0.0.1".into(), 6379)
        );
        assert!(parse_addr("nohost").is_err());
    }
}
