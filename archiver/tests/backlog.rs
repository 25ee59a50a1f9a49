//! A backlog archived from scratch: correctness under batching across
//! rooms, and the archive's throughput on this machine.

mod common;

use std::time::Instant;

use chat_archiver::Config;
use common::*;

const ROOMS: usize = 4;
const PER_ROOM: usize = 2500;

/// Invariant: a backlog left in Redis while no archiver ran (10,000
/// messages in 4 rooms) is archived exactly once when one starts, with
/// batches that span rooms; the time it takes is printed as the archive's
/// throughput (rows/s, debug build, loopback PostgreSQL with fsync off).
///
/// The server keeps only `--history 100` archived entries, but with
/// `--archive-backlog 100000` it keeps every entry no archiver stored yet:
/// the whole backlog waits in Redis (checked before the archiver starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_several_rooms_is_archived_once() {
    let env = Env::start("backlog").await;
    let server = Server::start_archived("app1", &env.redis.url(), 100, 100_000).await;
    let mut sent = Vec::new();
    for r in 0..ROOMS {
        let room = format!("b{r}");
        let mut p = Publisher::connect(&server.ws_url(&room, "eve"), "eve").await;
        for _ in 0..PER_ROOM / 250 {
            p.send_chunk(250).await;
        }
        sent.push((room, p.delivered));
    }
    let mut redis = env.redis().await;
    for (room, _) in &sent {
        assert_eq!(
            xlen(&mut redis, room).await,
            PER_ROOM as i64,
            "{room}: the unarchived backlog stays in Redis"
        );
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis)
        .await
        .unwrap();
    let start = Instant::now();
    let archiver = InProcess::start(Config::for_test(&env.redis.url(), &env.db_url)).await;
    let pool = env.pool().await;
    for (room, delivered) in &sent {
        let (n, distinct) = wait_rows(&pool, room, PER_ROOM as i64, T).await;
        assert_eq!(
            (n, distinct),
            (PER_ROOM as i64, PER_ROOM as i64),
            "room {room}"
        );
        assert_eq!(as_set(&rows(&pool, room).await), as_set(delivered));
    }
    let secs = start.elapsed().as_secs_f64();
    let total = ROOMS * PER_ROOM;
    eprintln!(
        "archived a backlog of {total} rows in {secs:.2}s: {:.0} rows/s (including start and migrations)",
        total as f64 / secs
    );
    assert_eq!(archiver.metrics.rows_inserted(), total as u64);
    // Redis time spent on the archiver's commands, per archived message.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    let usec: f64 = stats
        .lines()
        .filter(|l| {
            [
                "xreadgroup",
                "xack",
                "evalsha",
                "xautoclaim",
                "scan",
                "xgroup",
            ]
            .iter()
            .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    eprintln!(
        "redis time for the archiver: {:.2} µs per message",
        usec / total as f64
    );
    archiver.stop().await;
}
