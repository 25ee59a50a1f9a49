//! Two archivers on the same streams, one killed with `kill -9` in the
//! middle of a batch: nothing lost, nothing doubled, and the server's
//! history trimming (`--archive-backlog`) never takes an entry neither of
//! them stored.

mod common;

use std::time::{Duration, Instant};

use common::procs::{series, Proc};
use common::*;

const ROOM: &str = "pair";
const CHUNK: usize = 50;
/// The server's `--history`: what Redis keeps of a room once archived.
const HISTORY: u32 = 100;
/// The server's `--archive-backlog`: unarchived entries kept beyond
/// `HISTORY`; more than any test here leaves unarchived.
const BACKLOG: u32 = 5000;

/// XPENDING's summary: total, lowest id, highest id, per consumer.
type PendingSummary = (
    i64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Entries of `room` pending in `consumer`.
async fn pending_of(
    redis: &mut redis::aio::MultiplexedConnection,
    room: &str,
    consumer: &str,
) -> i64 {
    let (_, _, _, consumers): PendingSummary = redis::cmd("XPENDING")
        .arg(format!("chat:{{{room}}}:log"))
        .arg("archiver")
        .query_async(redis)
        .await
        .unwrap();
    consumers
        .unwrap_or_default()
        .into_iter()
        .find(|(c, _)| c == consumer)
        .map_or(0, |(_, n)| n.parse().unwrap())
}

/// Entries of all `rooms` pending in `consumer`.
async fn pending_in(
    redis: &mut redis::aio::MultiplexedConnection,
    rooms: &[&str],
    consumer: &str,
) -> i64 {
    let mut n = 0;
    for room in rooms {
        n += pending_of(redis, room, consumer).await;
    }
    n
}

/// Invariant: with two archivers on one room, one killed with SIGKILL
/// while its batch is read but not committed (its insert is blocked on a
/// table lock the test holds), every message the server accepted ends in
/// `messages` exactly once: the survivor claims the dead one's pending
/// entries after `--claim-idle` and archives them, and nothing is left
/// pending. The survivor then stops cleanly on SIGTERM.
///
/// The server keeps only `--history 100` archived entries; the unarchived
/// ones (all those sent while the table is locked) stay because of
/// `--archive-backlog`, so the test needs no history large enough for
/// every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_killed_mid_batch_is_taken_over_by_the_other() {
    let env = Env::start("pair").await;
    let server = Server::start_archived("app1", &env.redis.url(), HISTORY, BACKLOG).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Proc::archiver(dir.path(), "a", &env);
    let b = Proc::archiver(dir.path(), "b", &env);
    let b_metrics = b.metrics_addr().await;
    let mut redis = env.redis().await;
    let pool = env.pool().await;
    let mut p = Publisher::connect(&server.ws_url(ROOM, "carol"), "carol").await;

    // Both archive normally first (and the table exists).
    for _ in 0..4 {
        p.send_chunk(CHUNK).await;
    }
    let (n, _) = wait_rows(&pool, ROOM, 4 * CHUNK as i64, T).await;
    assert_eq!(
        n,
        4 * CHUNK as i64,
        "archived before the kill:\n{}",
        a.log_text()
    );

    // Block every insert: both archivers read a batch and wait in INSERT.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    let mut chunks = 4;
    while pending_of(&mut redis, ROOM, "a").await == 0 && Instant::now() < deadline {
        p.send_chunk(CHUNK).await;
        chunks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_pending = pending_of(&mut redis, ROOM, "a").await;
    assert!(
        a_pending > 0,
        "a holds a batch in flight:\n{}",
        a.log_text()
    );

    a.kill9();
    assert_eq!(
        pending_of(&mut redis, ROOM, "a").await,
        a_pending,
        "the dead one's batch stays pending"
    );
    lock.rollback().await.unwrap();

    // Load goes on while b takes over.
    for _ in 0..4 {
        p.send_chunk(CHUNK).await;
        chunks += 1;
    }
    let total = (chunks * CHUNK) as i64;
    let (n, distinct) = wait_rows(&pool, ROOM, total, T).await;
    assert_eq!(
        (n, distinct),
        (total, total),
        "every message once:\n{}",
        b.log_text()
    );
    assert_eq!(as_set(&rows(&pool, ROOM).await), as_set(&p.delivered));

    // Nothing is left pending anywhere: b claimed and acknowledged a's.
    let deadline = Instant::now() + T;
    while pending_of(&mut redis, ROOM, "a").await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pending_of(&mut redis, ROOM, "a").await,
        0,
        "a's entries were taken over"
    );
    let metrics = http_get(&b_metrics, "/metrics").await;
    assert!(
        series(&metrics, "archiver_entries_claimed_total") >= a_pending as u64,
        "b claimed a's {a_pending} entries:\n{metrics}"
    );
    let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(wait_watermark(&mut redis, ROOM, last, T).await, Some(last));

    // SIGTERM: b finishes and exits 0.
    let mut b = b;
    let status = b.terminate().await;
    assert!(
        status.success(),
        "b exited cleanly: {status}\n{}",
        b.log_text()
    );
}

const ROOMS: [&str; 3] = ["t0", "t1", "t2"];
/// Messages per room, of which `FINAL` are sent once the archive caught up.
const PER_ROOM: usize = 1000;
const FINAL: usize = 10;

/// What the trim sampler saw: samples, the largest `XLEN`, and every
/// sample where the oldest entry left lay above the watermark + 1 (an
/// unarchived entry trimmed).
#[derive(Debug, Default)]
struct TrimSamples {
    samples: u64,
    max_len: i64,
    violations: Vec<String>,
}

/// Sample every room every 20 ms until `stop`: the oldest entry left must
/// never lie above the watermark + 1 (or the room's first offset, before
/// there is a watermark). The oldest entry is read before the
/// watermark: both only rise, so a trim that was correct when it happened
/// is never reported.
async fn sample_trims(
    mut redis: redis::aio::MultiplexedConnection,
    stop: tokio::sync::watch::Receiver<bool>,
) -> TrimSamples {
    let mut s = TrimSamples::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !*stop.borrow() && Instant::now() < deadline {
        for room in ROOMS {
            let len = xlen(&mut redis, room).await;
            let first = first_offset(&mut redis, room).await;
            // The room's offsets start after `start`; nothing at or
            // below the watermark (or `start`, before there is one) needs
            // to stay.
            let (archived, start): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                .arg(format!("chat:{{{room}}}:epoch"))
                .arg("archived")
                .arg("start")
                .query_async(&mut redis)
                .await
                .unwrap();
            let w = archived.max(start).unwrap_or(0);
            s.samples += 1;
            s.max_len = s.max_len.max(len);
            if let Some(first) = first.filter(|f| *f > w + 1) {
                s.violations
                    .push(format!("{room}: oldest entry {first}, watermark {w}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

/// Invariant: with the real `server` binary trimming history (`--history
/// 100 --archive-backlog 5000`) and two `archiver` processes, one killed
/// with `kill -9` while its batch is read but not committed, and 3,000
/// messages in 3 rooms published as fast as the server takes them (no
/// pacing against the archive):
///
/// - every published offset is in `messages` exactly once (`count` ==
///   `count(DISTINCT)` == messages published, and the rows are what the
///   senders saw delivered);
/// - history is trimmed only below the archive: at every sample the
///   oldest entry left in a room's stream is at most its `archived`
///   watermark + 1, the streams grew past `--history` while the archive
///   was held back, and once it caught up a publish trims each stream back
///   to exactly `--history`;
/// - the server never had to trim an unarchived entry
///   (`chat_archive_overflow_total` 0, no `overflow` in the epoch hashes),
///   and the survivor lost none (`archiver_entries_lost_total` 0).
///
/// The kill lands mid-batch deterministically: the test locks `messages`,
/// so both archivers block in their INSERT with a batch read, and kills
/// `a` once it holds entries pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_killed_mid_batch_while_the_server_trims_loses_nothing() {
    let env = Env::start("trim").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::server(dir.path(), &env.redis.url(), HISTORY, BACKLOG);
    let server_addr = server.logged_addr("chat server listening").await;
    let mut a = Proc::archiver(dir.path(), "a", &env);
    let mut b = Proc::archiver(dir.path(), "b", &env);
    let b_metrics = b.metrics_addr().await;
    let mut redis = env.redis().await;
    let pool = env.pool().await;
    let (stop_sampler, stop) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_trims(env.redis().await, stop));

    let mut pubs = Vec::new();
    for room in ROOMS {
        let nick = format!("p{room}");
        let url = format!("ws://{server_addr}/ws?room={room}&nick={nick}");
        pubs.push(Publisher::connect(&url, &nick).await);
    }
    let sent = |pubs: &[Publisher]| pubs.iter().map(|p| p.delivered.len()).sum::<usize>();

    // Both archive normally first (and the table exists).
    for p in &mut pubs {
        p.send_chunk(2 * CHUNK).await;
    }
    for room in ROOMS {
        let (n, _) = wait_rows(&pool, room, 2 * CHUNK as i64, T).await;
        assert_eq!(n, 2 * CHUNK as i64, "{room} archived before the kill");
    }

    // Hold the archive back: both archivers read a batch and block in
    // INSERT. Publishing goes on, well past --history.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    while pending_in(&mut redis, &ROOMS, "a").await == 0 && Instant::now() < deadline {
        for p in &mut pubs {
            p.send_chunk(CHUNK).await;
        }
    }
    let a_pending = pending_in(&mut redis, &ROOMS, "a").await;
    assert!(
        a_pending > 0,
        "a holds a batch in flight:\n{}",
        a.log_text()
    );
    while pubs[0].delivered.len() < 400 {
        for p in &mut pubs {
            p.send_chunk(CHUNK).await;
        }
    }
    for room in ROOMS {
        let len = xlen(&mut redis, room).await;
        assert!(
            len > i64::from(HISTORY) + 100,
            "{room}: the server kept the unarchived entries ({len})"
        );
    }

    a.kill9();
    assert_eq!(
        pending_in(&mut redis, &ROOMS, "a").await,
        a_pending,
        "the dead one's batch stays pending"
    );
    lock.rollback().await.unwrap();

    // The rest as fast as the server takes it, while b archives, trims
    // follow and a's batch waits out --claim-idle.
    let (started, sent_before) = (Instant::now(), sent(&pubs));
    while pubs.iter().any(|p| p.delivered.len() < PER_ROOM - FINAL) {
        for p in &mut pubs {
            let n = (PER_ROOM - FINAL - p.delivered.len()).min(CHUNK);
            if n > 0 {
                p.send_chunk(n).await;
            }
        }
    }
    let publish_rate = (sent(&pubs) - sent_before) as f64 / started.elapsed().as_secs_f64();
    for (room, p) in ROOMS.iter().zip(&pubs) {
        let n = p.delivered.len() as i64;
        let (rows_n, _) = wait_rows(&pool, room, n, T).await;
        assert_eq!(rows_n, n, "{room} caught up:\n{}", b.log_text());
        let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
        let w = wait_watermark(&mut redis, room, last, T).await;
        assert_eq!(w, Some(last), "{room}: the watermark caught up");
    }

    // Archive caught up: the next publish trims each room to --history.
    for p in &mut pubs {
        p.send_chunk(FINAL).await;
    }
    for room in ROOMS {
        assert_eq!(
            xlen(&mut redis, room).await,
            i64::from(HISTORY),
            "{room}: trimmed to --history once archived"
        );
    }
    assert_eq!(sent(&pubs), ROOMS.len() * PER_ROOM);

    for (room, p) in ROOMS.iter().zip(&pubs) {
        let n = p.delivered.len() as i64;
        let (count, distinct) = wait_rows(&pool, room, n, T).await;
        assert_eq!((count, distinct), (n, n), "{room}: every message once");
        assert_eq!(as_set(&rows(&pool, room).await), as_set(&p.delivered));
        let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
        assert_eq!(wait_watermark(&mut redis, room, last, T).await, Some(last));
        let overflow: Option<i64> = redis::cmd("HGET")
            .arg(format!("chat:{{{room}}}:epoch"))
            .arg("overflow")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(overflow, None, "{room}: nothing trimmed unarchived");
    }
    let (all, all_distinct): (i64, i64) =
        sqlx::query_as(r#"SELECT count(*), count(DISTINCT (room, epoch, "offset")) FROM messages"#)
            .fetch_one(&pool)
            .await
            .unwrap();
    let published = (ROOMS.len() * PER_ROOM) as i64;
    assert_eq!((all, all_distinct), (published, published));

    let server_metrics = http_get(&server_addr, "/metrics").await;
    assert_eq!(
        series(&server_metrics, "chat_archive_overflow_total"),
        0,
        "{server_metrics}"
    );
    let metrics = http_get(&b_metrics, "/metrics").await;
    assert_eq!(series(&metrics, "archiver_entries_lost_total"), 0);
    assert!(
        series(&metrics, "archiver_entries_claimed_total") >= a_pending as u64,
        "b claimed a's {a_pending} entries:\n{metrics}"
    );
    assert_eq!(pending_in(&mut redis, &ROOMS, "a").await, 0);

    stop_sampler.send(true).unwrap();
    let samples = sampler.await.unwrap();
    assert!(
        samples.violations.is_empty(),
        "unarchived entries trimmed: {:?}",
        samples.violations
    );
    assert!(samples.max_len > i64::from(HISTORY), "{samples:?}");
    eprintln!(
        "published {published} in 3 rooms ({:.0} msg/s after the kill), {} trim samples, \
         longest stream {} entries, {} entries of a's batch claimed by b",
        publish_rate, samples.samples, samples.max_len, a_pending
    );

    let status = b.terminate().await;
    assert!(
        status.success(),
        "b exited cleanly: {status}\n{}",
        b.log_text()
    );
}
