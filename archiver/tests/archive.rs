//! The archive beyond Redis's window: a room whose server keeps only 100
//! messages of history still ends with every message in PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use chat_archiver::Config;
use common::*;

const ROOM: &str = "busy";
const TOTAL: usize = 3000;
/// Sent once the archive caught up, so the server trims again.
const FINAL: usize = 10;
const CHUNK: usize = 500;
const HISTORY: u32 = 100;

/// Invariant: every message the server accepted is in `messages` exactly
/// once, with the offset, epoch and text its sender saw, although Redis
/// keeps only the last 100 once they are archived; and the room's
/// `archived` watermark ends at the last offset, with no lag.
///
/// The sender does not wait for the archiver: the server runs with
/// `--history 100 --archive-backlog 5000`, so entries above the watermark
/// stay until they are archived, whatever the archiver's pace. Nothing is
/// faked: a real server trims a real stream, and the test checks that it
/// did (once archived, the next publishes leave the stream at exactly
/// 100 entries) and that it never had to trim an unarchived entry
/// (`overflow` absent from the epoch hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_messages_beyond_a_history_of_100_are_archived_once() {
    let env = Env::start("archive").await;
    let server = Server::start_archived("app1", &env.redis.url(), HISTORY, 5000).await;
    let mut config = Config::for_test(&env.redis.url(), &env.db_url);
    config.batch = 500;
    let archiver = InProcess::start(config).await;
    let mut redis = env.redis().await;
    let pool = env.pool().await;

    let mut p = Publisher::connect(&server.ws_url(ROOM, "alice"), "alice").await;
    let start = Instant::now();
    while p.delivered.len() < TOTAL - FINAL {
        p.send_chunk(CHUNK.min(TOTAL - FINAL - p.delivered.len()))
            .await;
    }
    let sent_secs = start.elapsed().as_secs_f64();
    let longest = xlen(&mut redis, ROOM).await;
    let (n, _) = wait_rows(&pool, ROOM, (TOTAL - FINAL) as i64, T).await;
    assert_eq!(n, (TOTAL - FINAL) as i64, "the archive caught up");
    let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(wait_watermark(&mut redis, ROOM, last, T).await, Some(last));
    let elapsed = start.elapsed();
    // Archived: the next publishes trim the stream to --history.
    p.send_chunk(FINAL).await;
    assert_eq!(
        xlen(&mut redis, ROOM).await,
        i64::from(HISTORY),
        "the server trimmed its history once archived: the archive is the only full copy"
    );

    let (n, distinct) = wait_rows(&pool, ROOM, TOTAL as i64, T).await;
    assert_eq!(
        (n, distinct),
        (TOTAL as i64, TOTAL as i64),
        "every message once"
    );
    let stored = rows(&pool, ROOM).await;
    assert_eq!(
        as_set(&stored),
        as_set(&p.delivered),
        "the rows are what was delivered"
    );

    let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(wait_watermark(&mut redis, ROOM, last, T).await, Some(last));
    let overflow: Option<i64> = redis::cmd("HGET")
        .arg("chat:{busy}:epoch")
        .arg("overflow")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(overflow, None, "nothing was trimmed before it was archived");

    // The lag metrics come down to zero (refreshed at every scan).
    let deadline = Instant::now() + Duration::from_secs(10);
    while archiver
        .metrics
        .room_lag(ROOM)
        .is_none_or(|l| l.messages > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lag = archiver
        .metrics
        .room_lag(ROOM)
        .expect("the room is measured");
    assert_eq!((lag.messages, lag.archived), (0, last as u64));
    assert_eq!(archiver.metrics.rows_inserted(), TOTAL as u64);
    let text = http_get(&archiver.metrics_addr, "/metrics").await;
    assert!(text.contains("archiver_lag_messages 0\n"), "{text}");
    assert!(
        text.contains(&format!(
            "archiver_room_archived_offset{{room=\"busy\"}} {last}"
        )),
        "{text}"
    );
    eprintln!(
        "sent {} unpaced messages in {sent_secs:.2}s (the stream held up to {longest}), \
         all archived after {:.2}s ({:.0} msg/s end to end)",
        TOTAL - FINAL,
        elapsed.as_secs_f64(),
        (TOTAL - FINAL) as f64 / elapsed.as_secs_f64()
    );
    archiver.stop().await;
}
