//! Reading the durable archive: the `messages` table that the `archiver`
//! fills in PostgreSQL from the rooms' Redis history (issue 13, seed 003).
//!
//! The server only reads it, for what Redis no longer holds: a resume from
//! further back than history (`join` with `since`, see
//! `commands/join.rs`), and `GET /history` paging back through a room.
//! The archiver owns the schema (its migrations run at its start); until
//! the table exists, reads fail and count as the archive being
//! unavailable, which is never worse than no archive: a `gap` names what
//! could not be sent.
//!
//! Rows become message frames byte for byte as they were sent live: the
//! archive keeps every field, and the frame is spliced like the publish
//! script does ([`chat_protocol::splice`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::splice::{encode_tail, splice, MessageTail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::metrics::Metrics;

/// Longest a read of the archive may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A pool of connections to the archive's database.
#[derive(Debug, Clone)]
pub struct Archive {
    pool: PgPool,
    metrics: Arc<Metrics>,
}

/// Why the archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("archive database: no answer within {0:?}")]
    Timeout(Duration),
    #[error("archive row: {0}")]
    Row(String),
}

/// One archived message: its epoch, offset and frame.
pub type Archived = (String, u64, Bytes);

const COLUMNS: &str = r#"room, epoch, "offset", nick, text, app_id, ts, msg_id, action"#;

impl Archive {
    /// A pool that connects lazily: the server starts (and serves from
    /// Redis) while the database is down, and reads fail until it is up.
    pub fn new(url: &str, metrics: Arc<Metrics>) -> Result<Self, ArchiveError> {
        let opts: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(2))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts.application_name("chat-server"));
        Ok(Archive { pool, metrics })
    }

    /// Messages of `room` with offsets strictly between `after` and
    /// `below`, oldest first, at most `limit`: of `epoch` only, or of any
    /// epoch (offsets only grow across a room's epochs, since a new epoch
    /// starts above everything before it, so this is their order too).
    pub async fn range(
        &self,
        room: &str,
        epoch: Option<&str>,
        after: u64,
        below: u64,
        limit: u32,
    ) -> Result<Vec<Archived>, ArchiveError> {
        let sql = format!(
            r#"SELECT {COLUMNS} FROM messages
               WHERE room = $1 AND ($2::text IS NULL OR epoch = $2)
                 AND "offset" > $3 AND "offset" < $4
               ORDER BY "offset" LIMIT $5"#
        );
        let q = sqlx::query(&sql)
            .bind(room)
            .bind(epoch)
            .bind(to_i64(after))
            .bind(to_i64(below))
            .bind(i64::from(limit));
        self.fetch(q).await
    }

    /// The latest `limit` messages of `room` below offset `before`, newest
    /// first.
    pub async fn before(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Archived>, ArchiveError> {
        let sql = format!(
            r#"SELECT {COLUMNS} FROM messages
               WHERE room = $1 AND "offset" < $2
               ORDER BY "offset" DESC LIMIT $3"#
        );
        let q = sqlx::query(&sql)
            .bind(room)
            .bind(to_i64(before))
            .bind(i64::from(limit));
        self.fetch(q).await
    }

    async fn fetch(
        &self,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<Archived>, ArchiveError> {
        let res: Result<Vec<Archived>, _> =
            match tokio::time::timeout(READ_TIMEOUT, q.fetch_all(&self.pool)).await {
                Ok(Ok(rows)) => rows.iter().map(frame_of).collect(),
                Ok(Err(e)) => Err(ArchiveError::Db(e)),
                Err(_) => Err(ArchiveError::Timeout(READ_TIMEOUT)),
            };
        match &res {
            Ok(rows) => {
                self.metrics.archive_reads.fetch_add(1, Relaxed);
                self.metrics
                    .archive_rows_read
                    .fetch_add(rows.len() as u64, Relaxed);
            }
            Err(_) => {
                self.metrics.archive_errors.fetch_add(1, Relaxed);
            }
        }
        res
    }
}

/// Offsets and limits are below 2^63 in practice (ms × 1000 since 1970);
/// anything above compares as the largest value PostgreSQL holds.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The frame of one row, as it was sent live.
fn frame_of(row: &sqlx::postgres::PgRow) -> Result<Archived, ArchiveError> {
    let bad = |e: sqlx::Error| ArchiveError::Row(e.to_string());
    let offset: i64 = row.try_get("offset").map_err(bad)?;
    let ts: i64 = row.try_get("ts").map_err(bad)?;
    let (Ok(offset), Ok(ts)) = (u64::try_from(offset), u64::try_from(ts)) else {
        return Err(ArchiveError::Row(format!(
            "negative offset {offset} or ts {ts}"
        )));
    };
    let epoch: String = row.try_get("epoch").map_err(bad)?;
    let room: String = row.try_get("room").map_err(bad)?;
    let nick: String = row.try_get("nick").map_err(bad)?;
    let text: String = row.try_get("text").map_err(bad)?;
    let app_id: String = row.try_get("app_id").map_err(bad)?;
    let id: Option<String> = row.try_get("msg_id").map_err(bad)?;
    let tail = encode_tail(&MessageTail {
        room: &room,
        nick: &nick,
        text: &text,
        app_id: &app_id,
        ts,
        id: id.as_deref(),
        action: row.try_get("action").map_err(bad)?,
    });
    let frame = splice(offset, &epoch, &tail);
    Ok((epoch, offset, Bytes::from(frame)))
}
