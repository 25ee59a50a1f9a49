//! PostgreSQL: migrations at start, and batches of rows inserted once.
//!
//! A batch is one transaction of multi-row `INSERT ... ON CONFLICT DO
//! NOTHING`: the primary key (room, epoch, offset) makes a second insert
//! of a row (another archiver's, a retry after a commit whose answer was
//! lost) a no-op that is counted as a duplicate.
//!
//! While PostgreSQL is down or hangs, the caller retries the same batch
//! with [`Backoff`] (capped at 3 s); its entries stay pending
//! (unacknowledged) in Redis meanwhile. State changes (down, back up) are
//! logged once each, whichever task saw them.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::entries::Row;
use crate::metrics::Metrics;

/// Rows in one `INSERT` statement: 11 parameters each, far below
/// PostgreSQL's 65,535 per statement.
const ROWS_PER_STATEMENT: usize = 1000;

/// The longest one insert transaction may take before PostgreSQL counts as
/// down (a hung server, a lock held elsewhere).
const STATEMENT_DEADLINE: Duration = Duration::from_secs(30);

/// The schema (`migrations/`), embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The first and the longest wait between retries.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// A cheap-to-clone handle on the pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    metrics: Arc<Metrics>,
    /// Whether the last attempt reached PostgreSQL; a change is logged once.
    up: Arc<AtomicBool>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub inserted: u64,
    pub duplicates: u64,
}

impl Db {
    /// A pool that connects lazily: the archiver starts while PostgreSQL is
    /// down and waits for it in [`Db::migrate`].
    pub fn new(url: &str, max_connections: u32, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
        let opts = opts.application_name("chat-archiver");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(opts);
        Ok(Self {
            pool,
            metrics,
            up: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Run the embedded migrations, retrying while PostgreSQL is
    /// unreachable; `None` if `give_up` came first. Two archivers starting
    /// at once are serialised by sqlx's advisory lock.
    pub async fn migrate(&self, give_up: &tokio_util::sync::CancellationToken) -> Option<()> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => {
                    self.mark(true, None);
                    return Some(());
                }
                Err(e) => {
                    self.metrics.error("postgres");
                    self.mark(false, Some(&e.to_string()));
                }
            }
            tokio::select! {
                () = give_up.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Run the embedded migrations once (for tools and tests that need the
    /// table without an archiver running).
    pub async fn migrate_now(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Log and count a change of PostgreSQL's state (once per change).
    fn mark(&self, up: bool, error: Option<&str>) {
        self.metrics.set_postgres_up(up);
        if self.up.swap(up, Relaxed) != up {
            if up {
                tracing::info!("PostgreSQL is reachable again: archiving resumes");
            } else {
                tracing::warn!(
                    error = error.unwrap_or(""),
                    "PostgreSQL is unreachable: entries stay pending in Redis (not acknowledged), retrying with backoff"
                );
            }
        }
    }

    /// Insert `rows` in one transaction.
    pub async fn insert(&self, rows: &[Row]) -> Result<Committed, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new(
                "INSERT INTO messages (room, epoch, \"offset\", nick, text, app_id, ts, sender, sub, msg_id, action) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&r.room)
                    .push_bind(&r.epoch)
                    .push_bind(r.offset)
                    .push_bind(&r.nick)
                    .push_bind(&r.text)
                    .push_bind(&r.app_id)
                    .push_bind(r.ts)
                    .push_bind(&r.sender)
                    .push_bind(&r.sub)
                    .push_bind(&r.msg_id)
                    .push_bind(r.action);
            });
            q.push(" ON CONFLICT DO NOTHING");
            inserted += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(Committed {
            inserted,
            duplicates: rows.len() as u64 - inserted,
        })
    }

    /// Insert `rows` once, within 30 s; `None` when it
    /// failed (counted, and logged if PostgreSQL's state changed). The
    /// caller retries after [`Backoff`].
    pub async fn try_insert(&self, rows: &[Row]) -> Option<Committed> {
        let res = match tokio::time::timeout(STATEMENT_DEADLINE, self.insert(rows)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no commit within {STATEMENT_DEADLINE:?}")),
        };
        match res {
            Ok(c) => {
                self.mark(true, None);
                Some(c)
            }
            Err(e) => {
                self.metrics.error("postgres");
                tracing::debug!(error = %e, rows = rows.len(), "insert failed");
                self.mark(false, Some(&e));
                None
            }
        }
    }
}

/// Capped exponential backoff between retries.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(BACKOFF_MIN)
    }
}

impl Backoff {
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}
