//! The command connection to Redis, and which Redis process it reaches.
//!
//! Not redis-rs's `ConnectionManager`: that reconnects behind our back, and
//! the publish script must know *which* Redis process (its `run_id`) it runs
//! on, so that a restarted, failed-over or restored Redis starts a new epoch
//! (see [`super::lua`]). A [`Link`] is one multiplexed connection together
//! with the `run_id` read on it; a link is replaced, never repaired, so the
//! two always belong together.
//!
//! - A link that fails with an I/O error or a timeout is dropped; the next
//!   call connects afresh (one at a time: the others wait and share it).
//! - While connecting fails, calls fail fast for [`RETRY_AFTER`] instead of
//!   each waiting out a connect timeout: a request is answered
//!   `unavailable` (definitely not applied) at once.
//! - TCP keepalive, `TCP_USER_TIMEOUT` and no Nagle on every connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo};

use super::{StoreError, StoreResult};

/// How long calls fail fast after a failed connect.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Where the master is: one fixed address, or whatever the sentinels
/// name now.
pub(crate) enum Target {
    Single(Client),
    Sentinel {
        /// redis-rs's sentinel client: asks the sentinels (`SENTINEL
        /// MASTERS`) and checks with `ROLE` that the node it names really is
        /// the master. It caches its sentinel connections, hence the lock.
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(c) => write!(f, "Single({:?})", c.get_connection_info().addr()),
            Self::Sentinel { master, .. } => write!(f, "Sentinel({master})"),
        }
    }
}

impl Target {
    /// A target asking `sentinels` (`HOST:PORT`) for `master`; `url` gives
    /// the database, user and password of the master.
    pub(crate) fn sentinel(url: &str, sentinels: &[String], master: &str) -> StoreResult<Self> {
        let info = url.into_connection_info()?;
        let redis = info.redis_settings();
        let addrs = sentinels
            .iter()
            .map(|s| {
                let (host, port) = s
                    .trim()
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| {
                        StoreError::Reply(format!("bad sentinel address {s:?}: want HOST:PORT"))
                    })?;
                Ok(ConnectionAddr::Tcp(host, port))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
            .set_client_to_redis_db(redis.db())
            .set_client_to_redis_tcp_settings(tcp_settings())
            .set_client_to_sentinel_tcp_settings(tcp_settings());
        if let Some(user) = redis.username() {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(pass) = redis.password() {
            b = b.set_client_to_redis_password(pass);
        }
        Ok(Self::Sentinel {
            client: tokio::sync::Mutex::new(b.build()?),
            master: master.to_string(),
        })
    }

    /// A client for the current master.
    pub(crate) async fn client(&self) -> StoreResult<Client> {
        match self {
            Self::Single(c) => Ok(c.clone()),
            Self::Sentinel { client, master } => {
                let ask = async { client.lock().await.async_get_client().await };
                match tokio::time::timeout(Duration::from_secs(2), ask).await {
                    Ok(r) => r.map_err(|e| {
                        StoreError::Unavailable(format!(
                            "no reachable master {master:?} (from the sentinels, or the node they name: a failover may be under way): {e}"
                        ))
                    }),
                    Err(_) => Err(StoreError::Unavailable(format!(
                        "the sentinels did not name master {master:?} in time"
                    ))),
                }
            }
        }
    }
}

/// One connection and the Redis process behind it.
#[derive(Debug)]
pub(crate) struct Link {
    /// The master's address when the link was made.
    pub(crate) addr: String,
    pub(crate) conn: MultiplexedConnection,
    /// `INFO server` `run_id`: changes when Redis restarts or another
    /// process (a promoted replica) takes over.
    pub(crate) run_id: Arc<str>,
}

/// Connects and keeps the current [`Link`].
#[derive(Debug)]
pub(crate) struct Linker {
    target: Target,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// Loaded on every new connection, so `EVALSHA` never meets
    /// `NOSCRIPT` (whose retry could reorder a sender's pipelined sends).
    scripts: Vec<String>,
    current: Mutex<Option<Arc<Link>>>,
    /// Held while connecting; holds the time of the last failed attempt.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    /// The `run_id` of the last link, and how often it changed.
    last_run_id: Mutex<(Option<Arc<str>>, u64)>,
}

/// TCP settings for every Redis connection: no Nagle (a publish is one
/// small write that must go now), keepalive and a user timeout so that a
/// peer that vanished (half-open TCP) is noticed by the kernel too.
pub(crate) fn tcp_settings() -> TcpSettings {
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(5))
                .with_interval(Duration::from_secs(1))
                .with_retries(3),
        )
        .set_user_timeout(Duration::from_secs(10))
}

/// A client for `url` with [`tcp_settings`].
pub(crate) fn client(url: &str) -> StoreResult<Client> {
    let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    Ok(Client::open(info)?)
}

impl Linker {
    pub(crate) fn new(target: Target, response_timeout: Duration, scripts: Vec<String>) -> Self {
        let connect_timeout = Duration::from_secs(1);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Self {
            target,
            config,
            connect_timeout,
            scripts,
            last_run_id: Mutex::new((None, 0)),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    /// A client for the current master (for the pub/sub connection).
    pub(crate) async fn client(&self) -> StoreResult<Client> {
        self.target.client().await
    }

    /// Whether the master is found through sentinels.
    pub(crate) fn follows_sentinels(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// The current link's master address, if there is a link.
    pub(crate) fn current_addr(&self) -> Option<String> {
        self.slot().as_ref().map(|l| l.addr.clone())
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Link>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current link, connecting if there is none. An error here means
    /// nothing was sent.
    pub(crate) async fn get(&self) -> StoreResult<Arc<Link>> {
        if let Some(l) = self.slot().clone() {
            return Ok(l);
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(l) = self.slot().clone() {
            return Ok(l);
        }
        if last_failure.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return Err(StoreError::Unavailable("redis is unreachable".into()));
        }
        match tokio::time::timeout(self.connect_timeout * 2, self.connect()).await {
            Ok(Ok(link)) => {
                *last_failure = None;
                {
                    let mut last = self.last_run_id.lock().unwrap_or_else(|p| p.into_inner());
                    if last.0.as_ref().is_some_and(|r| *r != link.run_id) {
                        last.1 += 1;
                    }
                    last.0 = Some(link.run_id.clone());
                }
                let link = Arc::new(link);
                *self.slot() = Some(link.clone());
                Ok(link)
            }
            Ok(Err(e)) => {
                *last_failure = Some(Instant::now());
                Err(StoreError::Unavailable(format!("cannot connect: {e}")))
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                Err(StoreError::Unavailable("connect timed out".into()))
            }
        }
    }

    async fn connect(&self) -> StoreResult<Link> {
        let client = self.target.client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let run_id = parse_run_id(&info)
            .ok_or_else(|| StoreError::Reply("INFO server has no run_id".into()))?;
        for src in &self.scripts {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async::<String>(&mut conn)
                .await?;
        }
        tracing::info!(run_id, addr, "redis command connection up");
        Ok(Link {
            addr,
            conn,
            run_id: Arc::from(run_id),
        })
    }

    /// How many times the Redis process behind the link changed.
    pub(crate) fn replacements(&self) -> u64 {
        self.last_run_id.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Forget the current link, whatever it is.
    pub(crate) fn drop_current(&self) {
        *self.slot() = None;
    }

    /// Forget `link` after a failure that may have broken it, unless it was
    /// replaced already.
    pub(crate) fn failed(&self, link: &Arc<Link>) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *slot = None;
        }
    }
}

/// The `run_id` line of `INFO server`.
pub(crate) fn parse_run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f2a\r\ntcp_port:6379\r\n";
        assert_eq!(parse_run_id(info), Some("4f2a"));
        assert_eq!(parse_run_id("# Server\r\n"), None);
    }
}
