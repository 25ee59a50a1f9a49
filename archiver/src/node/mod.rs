//! One Redis master: find its room streams, then archive them batch by
//! batch.
//!
//! A cycle reads up to `--batch` entries across the master's streams
//! (starting after the stream the previous cycle stopped at, so a busy
//! room cannot starve the others), commits them to PostgreSQL, then
//! acknowledges them (`XACK`) and raises each room's watermark. Per
//! stream, entries come from, in order:
//! 1. this consumer's own pending entries (`XREADGROUP ... 0`), once after
//!    start (a restart under the same `--consumer` name);
//! 2. entries pending in any consumer for `--claim-idle` (`XAUTOCLAIM`),
//!    one pass per scan: a dead archiver's batch;
//! 3. new entries (`XREADGROUP ... >`).
//!
//! Nothing is acknowledged before its batch is committed, so a crash at
//! any point leaves the entries pending for a claim; a second insert of a
//! row is a no-op (see [`crate::db`]).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, ErrorKind, RedisError, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::entries::{self, log_key, Body, Entry, Row};
use crate::metrics::Metrics;
use crate::topology::{connection_config, REDIS_TIMEOUT};
use crate::watermark::{load_watermark_script, parse_watermark, watermark_cmd};

mod read;

/// The consumer group every archiver joins.
pub const GROUP: &str = "archiver";

/// The `SCAN` pattern of room logs (room names never hold `{` or `}`).
const LOG_PATTERN: &str = "chat:{*}:log";

/// Most `SCAN` pages per scan (1,000 keys asked for per page).
const MAX_SCAN_PAGES: usize = 100_000;

/// A stream missing from this many complete scans in a row is dropped
/// (`SCAN` may miss a key created or deleted during the iteration).
const FORGET_AFTER_SCANS: u64 = 3;

/// Every room's watermark and lag are refreshed once in this many scans.
const FULL_REFRESH_EVERY: u32 = 5;

/// Rooms per pipelined round of watermark scripts.
const WATERMARK_CHUNK: usize = 100;

/// Consumers (other archivers' names) with nothing pending that were idle
/// this long are deleted from the groups.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);

/// The longest wait between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(3);

/// What every node task shares.
#[derive(Debug)]
pub struct Shared {
    pub consumer: String,
    pub batch: usize,
    pub scan_interval: Duration,
    pub poll_interval: Duration,
    pub claim_idle: Duration,
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins (before `shutdown` is cancelled): the
    /// batch in flight may be retried until then.
    pub drain_deadline: Arc<OnceLock<Instant>>,
    /// Cancelled when the whole archiver shuts down.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Resolves when shutdown began and its drain deadline passed.
    async fn drained(&self) {
        self.shutdown.cancelled().await;
        if let Some(d) = self.drain_deadline.get() {
            tokio::time::sleep_until(*d).await;
        }
    }
}

/// A stream this node archives.
#[derive(Debug)]
struct Stream {
    /// The group exists (as far as we know).
    group: bool,
    /// This consumer may still have pending entries of its own to re-read.
    own_pending: bool,
    /// A claim pass under way: the `XAUTOCLAIM` cursor.
    claim_cursor: Option<String>,
    /// The scan that last saw the stream.
    seen: u64,
}

/// One batch: entries by room, in read order.
#[derive(Debug, Default)]
struct Batch {
    rooms: BTreeMap<String, Vec<Entry>>,
    ids: HashSet<(String, String)>,
    len: usize,
}

impl Batch {
    fn add(&mut self, room: &str, entries: Vec<Entry>) {
        for e in entries {
            // Our own idle entries can come back from XAUTOCLAIM too.
            if self.ids.insert((room.to_string(), e.id.clone())) {
                self.rooms.entry(room.to_string()).or_default().push(e);
                self.len += 1;
            }
        }
    }
}

/// The task of one master.
struct Node {
    addr: String,
    client: Client,
    conn: Option<MultiplexedConnection>,
    shared: Arc<Shared>,
    streams: BTreeMap<String, Stream>,
    /// The room the last cycle stopped after.
    resume_after: Option<String>,
    scans: u64,
    next_scan: Instant,
    /// When every room's watermark and lag are next refreshed.
    next_full_refresh: Instant,
    /// Whether the last connect failed (logged once per change).
    down: bool,
}

/// Archive the streams of the master at `addr` until `stop`; the batch in
/// flight is finished first.
pub async fn run(addr: String, client: Client, shared: Arc<Shared>, stop: CancellationToken) {
    let mut node = Node {
        addr,
        client,
        conn: None,
        shared,
        streams: BTreeMap::new(),
        resume_after: None,
        scans: 0,
        next_scan: Instant::now(),
        next_full_refresh: Instant::now(),
        down: false,
    };
    tracing::info!(node = %node.addr, "archiving the streams of this Redis master");
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        if node.conn.is_none() {
            if let Err(e) = node.connect().await {
                node.shared.metrics.error("redis");
                if !node.down {
                    tracing::warn!(node = %node.addr, error = %e, "cannot reach Redis: retrying");
                    node.down = true;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
            if node.down {
                tracing::info!(node = %node.addr, "Redis is reachable again");
                node.down = false;
            }
            backoff = Duration::from_millis(100);
        }
        if Instant::now() >= node.next_scan {
            node.next_scan = Instant::now() + node.shared.scan_interval;
            node.scan().await;
            // Rooms read from are refreshed after each commit; the others
            // (idle, or waiting behind a backlog) only every few scans,
            // which bounds the scripts' cost on Redis with many rooms.
            if Instant::now() >= node.next_full_refresh {
                node.next_full_refresh =
                    Instant::now() + node.shared.scan_interval * FULL_REFRESH_EVERY;
                let rooms: Vec<String> = node.streams.keys().cloned().collect();
                node.refresh(&rooms).await;
            }
        }
        let batch = node.collect().await;
        if batch.len == 0 {
            let wake = node
                .next_scan
                .min(Instant::now() + node.shared.poll_interval);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            continue;
        }
        if !node.archive(batch).await {
            tracing::warn!(node = %node.addr, "shutdown deadline passed with a batch uncommitted: its entries stay pending in Redis for the next archiver");
            break;
        }
    }
    for room in node.streams.keys() {
        node.shared.metrics.forget_room(room);
    }
    tracing::info!(node = %node.addr, "stopped archiving this master");
}

impl Node {
    async fn connect(&mut self) -> Result<(), RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&connection_config())
            .await?;
        let mut conn = conn;
        load_watermark_script(&mut conn).await?;
        self.conn = Some(conn);
        Ok(())
    }

    fn conn(&mut self) -> Result<MultiplexedConnection, RedisError> {
        self.conn
            .clone()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "not connected")))
    }

    /// Count a Redis error; one that may have broken the connection drops
    /// it, so the next cycle reconnects.
    fn failed(&mut self, what: &str, e: &RedisError) {
        self.shared.metrics.error("redis");
        tracing::warn!(node = %self.addr, error = %e, "redis {what} failed");
        if !matches!(e.kind(), ErrorKind::Server(_)) {
            self.conn = None;
        }
    }

    /// `SCAN` the master for room logs.
    async fn scan(&mut self) {
        let Ok(mut conn) = self.conn() else { return };
        let scan = self.scans + 1;
        let mut cursor: u64 = 0;
        for _ in 0..MAX_SCAN_PAGES {
            let page: Result<(u64, Vec<String>), RedisError> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(LOG_PATTERN)
                .arg("TYPE")
                .arg("stream")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let (next, keys) = match page {
                Ok(p) => p,
                Err(e) => return self.failed("SCAN", &e),
            };
            for key in keys {
                let Some(room) = entries::room_of_log_key(&key) else {
                    continue;
                };
                let s = self.streams.entry(room.to_string()).or_insert_with(|| {
                    tracing::debug!(room, "found a room stream");
                    Stream {
                        group: false,
                        own_pending: true,
                        claim_cursor: None,
                        seen: scan,
                    }
                });
                s.seen = scan;
                s.claim_cursor.get_or_insert_with(|| "0-0".into());
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if cursor != 0 {
            tracing::warn!(node = %self.addr, "scan stopped after {MAX_SCAN_PAGES} pages");
            return;
        }
        self.scans = scan;
        let metrics = self.shared.metrics.clone();
        self.streams.retain(|room, s| {
            let keep = scan - s.seen < FORGET_AFTER_SCANS;
            if !keep {
                tracing::debug!(room, "the room stream is gone");
                metrics.forget_room(room);
            }
            keep
        });
    }

    /// Read one batch across the streams.
    async fn collect(&mut self) -> Batch {
        let mut batch = Batch::default();
        let after: Vec<String> = match &self.resume_after {
            Some(r) => self
                .streams
                .range::<String, _>((Bound::Excluded(r), Bound::Unbounded))
                .chain(
                    self.streams
                        .range::<String, _>((Bound::Unbounded, Bound::Included(r))),
                )
                .map(|(k, _)| k.clone())
                .collect(),
            None => self.streams.keys().cloned().collect(),
        };
        for room in after {
            if batch.len >= self.shared.batch || self.conn.is_none() {
                break;
            }
            match self.read_stream(&room, self.shared.batch - batch.len).await {
                Ok(entries) => batch.add(&room, entries),
                Err(e) => {
                    if e.code() == Some("MOVED") {
                        // The slot moved to another master, whose scan finds it.
                        self.streams.remove(&room);
                        self.shared.metrics.forget_room(&room);
                    } else {
                        self.failed("read", &e);
                    }
                }
            }
            self.resume_after = Some(room);
        }
        batch
    }

    /// Commit `batch`, then acknowledge it and raise the watermarks; false
    /// when the shutdown deadline came before the commit.
    async fn archive(&mut self, batch: Batch) -> bool {
        let m = self.shared.metrics.clone();
        let mut rows: Vec<Row> = Vec::with_capacity(batch.len);
        for (room, entries) in &batch.rooms {
            let (mut gone, mut bad) = (0u64, 0u64);
            for e in entries {
                match &e.body {
                    Body::Row(r) => rows.push((**r).clone()),
                    Body::Gone => gone += 1,
                    Body::Undecodable(why) => {
                        bad += 1;
                        tracing::warn!(room, id = %e.id, why, "an entry is not a message frame: acknowledged without a row");
                    }
                }
            }
            if gone > 0 {
                m.lost(gone);
                tracing::warn!(
                    room,
                    entries = gone,
                    "pending entries left the stream before they were archived: lost"
                );
            }
            if bad > 0 {
                m.undecodable(bad);
                m.error("decode");
            }
        }
        if !rows.is_empty() {
            let mut backoff = crate::db::Backoff::default();
            let c = loop {
                // An attempt may hang (a dead server, a lock): the drain
                // deadline cuts it short. An insert cut short is not
                // acknowledged: if it did commit, the rows are skipped as
                // duplicates next time.
                let shared = self.shared.clone();
                tokio::select! {
                    r = self.shared.db.try_insert(&rows) => if let Some(c) = r {
                        break c;
                    },
                    () = shared.drained() => return false,
                }
                let wake = Instant::now() + backoff.next_wait();
                if self.shared.drain_deadline.get().is_some_and(|d| *d <= wake) {
                    return false;
                }
                // Keep the lag metrics and watermarks of the other rooms
                // fresh while PostgreSQL is down.
                if Instant::now() >= self.next_scan {
                    self.next_scan = Instant::now() + self.shared.scan_interval;
                    let all: Vec<String> = self.streams.keys().cloned().collect();
                    self.refresh(&all).await;
                }
                tokio::time::sleep_until(wake).await;
            };
            m.batch(c.inserted, c.duplicates);
            tracing::debug!(
                rows = rows.len(),
                inserted = c.inserted,
                duplicates = c.duplicates,
                "batch committed"
            );
        }
        // Acknowledge only now. A failed XACK leaves the entries pending:
        // they are read again (own pending) and skipped as duplicates.
        let mut pipe = redis::pipe();
        for (room, entries) in &batch.rooms {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(log_key(room)).arg(GROUP);
            for e in entries {
                cmd.arg(&e.id);
            }
            pipe.add_command(cmd).ignore();
        }
        let acked: Result<(), RedisError> = match self.conn() {
            Ok(mut conn) => pipe.query_async(&mut conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = acked {
            self.failed("XACK", &e);
            for room in batch.rooms.keys() {
                if let Some(s) = self.streams.get_mut(room) {
                    s.own_pending = true;
                }
            }
            return true;
        }
        let rooms: Vec<String> = batch.rooms.into_keys().collect();
        self.refresh(&rooms).await;
        true
    }

    /// Raise the watermarks of `rooms` and measure their lag.
    async fn refresh(&mut self, rooms: &[String]) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for chunk in rooms.chunks(WATERMARK_CHUNK) {
            let Ok(mut conn) = self.conn() else { return };
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.add_command(watermark_cmd(room, FORGET_CONSUMERS_AFTER));
            }
            let replies: Vec<Value> =
                match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut conn)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) if e.code() == Some("NOSCRIPT") => {
                        if let Err(e) = load_watermark_script(&mut conn).await {
                            self.failed("SCRIPT LOAD", &e);
                        }
                        return;
                    }
                    Ok(Err(e)) => return self.failed("watermark", &e),
                    Err(_) => {
                        self.shared.metrics.error("redis");
                        self.conn = None;
                        return;
                    }
                };
            for (room, v) in chunk.iter().zip(replies) {
                match parse_watermark(&v, now_ms) {
                    Some(Ok((lag, raised))) => {
                        if raised {
                            self.shared.metrics.watermark_raised();
                        }
                        self.shared.metrics.room(room, lag);
                    }
                    Some(Err(status)) => {
                        if status == -1 {
                            // The group is gone (the key expired and came back).
                            if let Some(s) = self.streams.get_mut(room) {
                                s.group = false;
                            }
                        }
                        self.shared.metrics.forget_room(room);
                    }
                    None => {
                        self.shared.metrics.error("redis");
                        tracing::warn!(room, reply = ?v, "unexpected watermark reply");
                    }
                }
            }
        }
    }
}
