//! The archive beyond Redis's window: a room whose server keeps only 100
//! messages of history still ends with every message in PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use chat_archiver::Config;
use common::*;

const ROOM: &str = "busy";
const TOTAL: usize = 3000;
/// Sent at once, then the test waits for the watermark: below the
/// server's `--history 100`, so no entry is trimmed before it is read.
const CHUNK: usize = 50;

/// Invariant: every message the server accepted is in `messages` exactly
/// once, with the offset, epoch and text its sender saw, although Redis
/// keeps only the last 100; and the room's `archived` watermark ends at
/// the last offset, with no lag.
///
/// The server trims to `--history 100` whatever the watermark says (the
/// server-side contract, `HSET chat:{room}:epoch archived <offset>` read
/// before trimming, is not in the server yet). So the archiver runs while
/// the messages are sent, and the sender paces itself: 50 at a time, the
/// next 50 only once the watermark covers the previous ones. Nothing is
/// faked: a real server trims a real stream, and the test checks that it
/// did (the stream holds at most 100 entries at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_messages_beyond_a_history_of_100_are_archived_once() {
    let env = Env::start("archive").await;
    let server = Server::start("app1", &env.redis.url(), 100).await;
    let mut config = Config::for_test(&env.redis.url(), &env.db_url);
    config.batch = 500;
    let archiver = InProcess::start(config).await;
    let mut redis = env.redis().await;
    let pool = env.pool().await;

    let mut p = Publisher::connect(&server.ws_url(ROOM, "alice"), "alice").await;
    let start = Instant::now();
    for _ in 0..TOTAL / CHUNK {
        let got = p.send_chunk(CHUNK).await;
        let last = got.iter().map(|d| d.offset).max().unwrap();
        let w = wait_watermark(&mut redis, ROOM, last, T).await;
        assert!(
            w >= Some(last),
            "the archiver keeps up: watermark {w:?} < {last}"
        );
    }
    let elapsed = start.elapsed();

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

    let len: i64 = redis::cmd("XLEN")
        .arg("chat:{busy}:log")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        len <= 100,
        "the server trimmed its history ({len} entries): the archive is the only full copy"
    );
    let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(watermark(&mut redis, ROOM).await, Some(last));

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
        "archived {TOTAL} paced messages in {:.2}s ({:.0} msg/s end to end)",
        elapsed.as_secs_f64(),
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    archiver.stop().await;
}
