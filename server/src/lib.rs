//! The chat server: WebSockets on `/ws`, fan-out through Redis pub/sub, so
//! every member of a room gets every message whichever instance it is on.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so `main`
//! and the tests run the same code.
//!
//! # Layout
//! - [`config`]: clap flags with env fallbacks.
//! - [`auth`]: tokens, the Origin allow-list, private and DM rooms.
//! - [`http`]: routes (`/ws`, `/healthz`, `/metrics`, `/cluster`).
//! - [`session`]: one connection's task: read, batched writes, ping, close.
//! - [`ws`]: RFC 6455 framing on the raw socket (no buffers while idle).
//! - [`commands`]: what a session does with each request (join, send, ...).
//! - [`hub`]: local rooms, the pub/sub connection, fan-out to sockets.
//! - [`per_ip`]: connections per client address, trusted proxies.
//! - [`outbox`]: a connection's bounded outbound queue and kick switch.
//! - [`store`]: Redis commands: publish script, history, presence, registry.
//! - [`registry`]: the instance heartbeat and dead-instance cleanup.
//! - [`metrics`]: counters for `/metrics`.

pub mod archive;
pub mod auth;
pub mod commands;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod per_ip;
pub mod registry;
pub mod session;
pub mod store;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chat_protocol::Member;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Store, StoreResult};

/// The room a connection starts in when it names none.
pub const DEFAULT_ROOM: &str = "lobby";

/// Files kept free for Redis connections, logs and the listener.
const FD_RESERVE: u64 = 64;

/// Shared state: a cheap-to-clone handle.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// What every part of the server shares.
#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    /// Token checks, allowed origins, room access.
    pub auth: auth::Auth,
    pub app_id: String,
    /// Distinguishes this run of `app_id` from earlier ones, so presence
    /// entries of a killed predecessor count as stale.
    pub boot: String,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The PostgreSQL archive (`--database-url`), if any.
    pub archive: Option<archive::Archive>,
    pub hub: Hub,
    /// One permit per connection.
    pub conn_limit: Arc<Semaphore>,
    pub max_connections: usize,
    /// Live connections per client address.
    pub per_ip: Arc<per_ip::PerIp>,
    /// Cancelled on SIGTERM: sessions close with 1012.
    pub shutdown: CancellationToken,
    /// Every session, so shutdown can wait for them to close.
    pub tracker: TaskTracker,
    /// Every session's outbox, so shutdown can tell each to close.
    pub sessions: outbox::Sessions,
    pub started_ms: u64,
    next_session: AtomicU64,
    /// Boot ids of live instances (from the registry); empty until known.
    live: RwLock<Arc<HashSet<String>>>,
    /// Clients `/connect` sent to each instance since that instance's
    /// registry entry last changed: app_id -> (its heartbeat_ms, count).
    pub assigned: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// A fresh local session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Relaxed)
    }

    /// Replace the live set; returns the previous one.
    pub fn set_live(&self, live: Arc<HashSet<String>>) -> Arc<HashSet<String>> {
        let mut g = self.live.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *g, live)
    }

    /// Whether the instance with this boot id is alive: this one, one that
    /// heartbeats, or (not in the live set yet) one the registry lists.
    pub async fn boot_alive(&self, boot: &str) -> bool {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        if live.is_empty() || boot == self.boot || live.contains(boot) {
            return true;
        }
        match self.store.instances().await {
            Ok(list) => list.iter().any(|i| i.boot == boot),
            // Cannot tell: count it alive (refuse rather than double a nick).
            Err(_) => true,
        }
    }

    /// The members of a room across the cluster, without entries of dead
    /// instances, sorted by nick.
    pub async fn members(&self, room: &str) -> StoreResult<Vec<Member>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        let entries = self.store.members(room).await?;
        let known = |boot: &str| live.is_empty() || boot == self.boot || live.contains(boot);
        // An instance that started since the last heartbeat is not in the
        // live set yet: ask the registry now rather than hide its members.
        let fresh: HashSet<String> = if entries.iter().all(|(_, e)| known(&e.boot)) {
            HashSet::new()
        } else {
            self.store
                .instances()
                .await
                .map(|l| l.into_iter().map(|i| i.boot).collect())
                .unwrap_or_default()
        };
        let mut members: Vec<Member> = entries
            .into_iter()
            .filter(|(_, e)| known(&e.boot) || fresh.contains(&e.boot))
            .map(|(conn_id, e)| Member {
                conn_id,
                nick: e.nick,
                app_id: e.app_id,
                sub: e.sub,
            })
            .collect();
        members.sort_by(|a, b| a.nick.cmp(&b.nick).then(a.conn_id.cmp(&b.conn_id)));
        Ok(members)
    }
}

/// At most this many `HSCAN` steps for one page of members: a room full
/// of stale entries (a dead instance not swept yet) costs a bounded amount.
const MEMBER_SCAN_STEPS: usize = 16;

impl AppState {
    /// At most `max` live members of a room, sorted by nick, and the
    /// room's member count, at a cost of O(`max`) rather than O(members):
    /// `HSCAN` steps of `COUNT max` (at most [`MEMBER_SCAN_STEPS`]) until
    /// `max` live entries are found, and `HLEN` for the count. The count
    /// is exact when the scan saw the whole hash; otherwise it is `HLEN`
    /// less the stale entries seen. Which members fill the page of a room
    /// larger than `max` is Redis's scan order.
    pub async fn members_page(&self, room: &str, max: usize) -> StoreResult<(Vec<Member>, u64)> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        let known = |boot: &str| live.is_empty() || boot == self.boot || live.contains(boot);
        // An instance that started since the last heartbeat is not in the
        // live set yet: ask the registry (once) rather than hide its members.
        let mut fresh: Option<HashSet<String>> = None;
        let mut seen: HashSet<String> = HashSet::new();
        let mut members: Vec<Member> = Vec::new();
        let mut stale = 0u64;
        let mut cursor = 0u64;
        let count = max.clamp(10, 1000);
        let mut complete = false;
        for _ in 0..MEMBER_SCAN_STEPS {
            let (next, entries) = self.store.scan_members(room, cursor, count).await?;
            for (conn_id, e) in entries {
                // HSCAN may return an entry twice.
                if !seen.insert(conn_id.clone()) {
                    continue;
                }
                let alive = known(&e.boot) || {
                    if fresh.is_none() {
                        fresh = Some(
                            self.store
                                .instances()
                                .await
                                .map(|l| l.into_iter().map(|i| i.boot).collect())
                                .unwrap_or_default(),
                        );
                    }
                    fresh.as_ref().is_some_and(|f| f.contains(&e.boot))
                };
                if !alive {
                    stale += 1;
                    continue;
                }
                members.push(Member {
                    conn_id,
                    nick: e.nick,
                    app_id: e.app_id,
                    sub: e.sub,
                });
            }
            cursor = next;
            if cursor == 0 {
                complete = true;
                break;
            }
            if members.len() >= max {
                break;
            }
        }
        let total = if complete {
            members.len() as u64
        } else {
            self.store
                .member_count(room)
                .await?
                .saturating_sub(stale)
                .max(members.len() as u64)
        };
        members.sort_by(|a, b| a.nick.cmp(&b.nick).then(a.conn_id.cmp(&b.conn_id)));
        members.truncate(max);
        Ok((members, total))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Nanoseconds of the current second: a cheap jitter source.
pub fn now_nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Raise the soft file limit to the hard one; returns the soft limit now
/// in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
    }
}

/// Serve on `listener` until `shutdown` resolves, then drain: sessions
/// close with 1012 and the server waits up to `drain_timeout` for them.
pub async fn run(
    listener: TcpListener,
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.public_url.is_none() {
        // The bound address: `--listen` may have asked for port 0.
        config.public_url = Some(format!("ws://{}/ws", listener.local_addr()?));
    }
    let fd_limit = raise_fd_limit();
    let max_connections = config
        .max_connections
        .min(fd_limit.saturating_sub(FD_RESERVE) as usize);
    if max_connections < config.max_connections {
        tracing::warn!(
            configured = config.max_connections,
            fd_limit,
            max_connections,
            "the file limit caps connections; raise `ulimit -n` (nofile) to allow more"
        );
    }
    let auth = auth::Auth::from_config(&config)?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --admin-listen {addr}"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let store = match config.redis_sentinel_master.as_deref() {
        _ if !config.redis_cluster.is_empty() => Store::with_cluster(
            &config.redis_url,
            &config.redis_cluster,
            metrics.clone(),
            config.history_len,
            config.idempotency_ttl,
        ),
        Some(master) if !config.redis_sentinels.is_empty() => Store::with_sentinels(
            &config.redis_url,
            &config.redis_sentinels,
            master,
            metrics.clone(),
            config.history_len,
            config.idempotency_ttl,
        ),
        _ => Store::new(
            &config.redis_url,
            metrics.clone(),
            config.history_len,
            config.idempotency_ttl,
        ),
    }
    .with_context(|| format!("bad redis settings (url {})", config.redis_url))?
    .with_wait(config.redis_wait_replicas, config.redis_wait_timeout)
    .with_room_ttl(config.room_ttl)
    .with_history_bytes(config.history_bytes as u64)
    .with_archive_backlog(config.archive_backlog());
    let hub = Hub::new(
        metrics.clone(),
        Duration::from_secs(3),
        config.probe_timeout,
    );
    let boot = format!(
        "{:06x}",
        (now_nanos() ^ std::process::id().rotate_left(16)) & 0xff_ffff
    );
    let archive = config
        .database_url
        .as_deref()
        .map(|url| archive::Archive::new(url, metrics.clone()))
        .transpose()
        .context("bad --database-url")?;
    let state = AppState(Arc::new(Inner {
        app_id: config.app_id.clone(),
        boot,
        metrics,
        store: store.clone(),
        archive,
        hub: hub.clone(),
        conn_limit: Arc::new(Semaphore::new(max_connections)),
        per_ip: per_ip::PerIp::new(config.max_connections_per_ip.unwrap_or(max_connections / 2)),
        max_connections,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        sessions: outbox::Sessions::default(),
        started_ms: now_ms(),
        next_session: AtomicU64::new(1),
        live: RwLock::new(Arc::new(HashSet::new())),
        assigned: Default::default(),
        auth,
        config,
    }));
    tracing::info!(
        addr = %listener.local_addr()?,
        app_id = %state.app_id,
        boot = %state.boot,
        max_connections,
        "chat server listening"
    );
    // The liveness probe's channel: this instance's own, so the
    // subscription hears only its own heartbeat.
    let probe = format!("chat:probe:{}:{}", state.app_id, state.boot);
    let subscriber = tokio::spawn(hub.clone().run_subscriber(
        store.clone(),
        probe.clone(),
        state.shutdown.clone(),
    ));
    let flusher = tokio::spawn(
        hub.clone()
            .run_flusher(state.shutdown.clone(), state.config.write_delay),
    );
    let prober = tokio::spawn(hub.run_probe(
        store,
        probe,
        state.config.probe_interval,
        state.shutdown.clone(),
    ));
    let registry = tokio::spawn(registry::run(state.clone()));
    let clock = tokio::spawn(session::run_clock(state.clone()));
    let app = http::router(state.clone(), admin.is_none());
    let admin = admin.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "admin listener (/metrics, /cluster)");
        tokio::spawn(serve_admin(
            listener,
            http::admin_router(state.clone()),
            state.shutdown.clone(),
        ))
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => serve_http(tcp, peer, app.clone()),
                Err(e) => {
                    // Usually EMFILE: out of file descriptors. Back off
                    // instead of spinning; sessions ending free some.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("shutting down: closing sockets with 1012 (service restart)");
    state.shutdown.cancel();
    state.sessions.stop_all(outbox::Stop::Restart);
    drop(listener);
    state.tracker.close();
    let drain = state.config.drain_timeout;
    if tokio::time::timeout(drain, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tracker.len(),
            "drain timeout: dropping remaining sockets"
        );
    }
    let _ = registry.await;
    subscriber.abort();
    prober.abort();
    flusher.abort();
    clock.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    tracing::info!("shut down");
    Ok(())
}

/// Serve HTTP/1.1 on one accepted socket. Plain hyper rather than
/// `axum::serve`, so that an upgraded connection's IO is the bare
/// `TcpStream` (see [`ws`]). Plain requests (health checks, metrics) are not
/// tracked: they end with the process.
fn serve_http(tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, app: axum::Router) {
    use hyper::service::Service as _;
    let inner = hyper_util::service::TowerToHyperService::new(app);
    // Every request carries the TCP peer, for the per-address cap.
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        inner.call(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "http connection ended with an error");
        }
    });
}

/// Serve the admin routes on their own listener until shutdown.
async fn serve_admin(listener: TcpListener, app: axum::Router, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => serve_http(tcp, peer, app.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
