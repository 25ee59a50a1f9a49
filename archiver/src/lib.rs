//! The archiver: copies every chat message from the rooms' Redis Streams
//! (`chat:{room}:log`, written by the server's publish script) into
//! PostgreSQL, once, through the consumer group `archiver`. Several
//! archivers may run at once; a dead one's pending entries are claimed by
//! the others. After each commit it raises each room's watermark,
//! `archived` in `chat:{room}:epoch`, which the server reads before
//! trimming history.
//!
//! [`run`] takes an already-bound metrics listener and a shutdown future,
//! so `main` and the tests run the same code.
//!
//! # Layout
//! - [`config`]: clap flags with env fallbacks.
//! - [`topology`]: which Redis masters to scan (single, Sentinel, Cluster).
//! - [`node`]: one master's task: scan, read, commit, acknowledge,
//!   watermark.
//! - [`watermark`]: the `archived` watermark script and the room's lag.
//! - [`entries`]: stream replies and message frames into rows.
//! - [`db`]: PostgreSQL: migrations, batched idempotent inserts, retries.
//! - [`metrics`]: counters and the `/metrics` and `/healthz` listener.
//! - `testing` (feature `testing`): real PostgreSQL and redis-server
//!   processes for tests.

pub mod config;
pub mod db;
pub mod entries;
pub mod metrics;
pub mod node;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topology;
pub mod watermark;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use metrics::Metrics;

/// PostgreSQL connections in the pool besides one per Redis master.
const SPARE_DB_CONNECTIONS: u32 = 2;

/// Run the archiver until `shutdown` resolves; the batches in flight are
/// finished (within `--drain-timeout`) before it returns.
pub async fn run(
    config: Config,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_metrics(
        config,
        metrics_listener,
        Arc::new(Metrics::default()),
        shutdown,
    )
    .await
}

/// [`run`] with the caller's metrics (tests read them directly).
pub async fn run_with_metrics(
    config: Config,
    metrics_listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topology = topology::Topology::from_config(&config)?;
    let consumer = config.consumer_name();
    let stop = CancellationToken::new();
    let drain_deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    {
        let (stop, deadline, drain) = (stop.clone(), drain_deadline.clone(), config.drain_timeout);
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {
                    tracing::info!("shutting down: finishing the batches in flight");
                    let _ = deadline.set(Instant::now() + drain);
                    stop.cancel();
                }
                () = stop.cancelled() => {}
            }
        });
    }
    let http_stop = CancellationToken::new();
    tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
    let http = tokio::spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        http_stop.clone(),
    ));

    let db = db::Db::new(
        &config.database_url,
        8 + SPARE_DB_CONNECTIONS,
        metrics.clone(),
    )?;
    if db.migrate(&stop).await.is_none() {
        http_stop.cancel();
        let _ = http.await;
        return Ok(());
    }
    tracing::info!(consumer, ?topology, "migrations applied: archiving");

    let shared = Arc::new(node::Shared {
        consumer,
        batch: config.batch as usize,
        scan_interval: config.scan_interval,
        poll_interval: config.poll_interval,
        claim_idle: config.claim_idle,
        db,
        metrics: metrics.clone(),
        drain_deadline,
        shutdown: stop.clone(),
    });
    let tracker = TaskTracker::new();
    let mut nodes: HashMap<String, CancellationToken> = HashMap::new();
    let mut topology_down = false;
    loop {
        match topology.masters().await {
            Ok(masters) => {
                if topology_down {
                    tracing::info!("the Redis masters are known again");
                    topology_down = false;
                }
                let now: Vec<&String> = masters.iter().map(|(a, _)| a).collect();
                nodes.retain(|addr, token| {
                    let keep = now.contains(&addr);
                    if !keep {
                        tracing::info!(node = %addr, "no longer a master: its task finishes its batch and stops");
                        token.cancel();
                    }
                    keep
                });
                for (addr, client) in masters {
                    if nodes.contains_key(&addr) {
                        continue;
                    }
                    let token = stop.child_token();
                    nodes.insert(addr.clone(), token.clone());
                    tracker.spawn(node::run(addr, client, shared.clone(), token));
                }
                metrics.set_masters(nodes.len());
            }
            Err(e) => {
                metrics.error("redis");
                if !topology_down {
                    tracing::warn!(error = %format!("{e:#}"), "cannot find the Redis masters: retrying");
                    topology_down = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(config.scan_interval) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
    http_stop.cancel();
    let _ = http.await;
    tracing::info!("archiver stopped");
    Ok(())
}
