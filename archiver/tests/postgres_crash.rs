//! PostgreSQL crashing under load: nothing lost, nothing doubled.

mod common;

use std::time::{Duration, Instant};

use chat_archiver::Config;
use common::*;

const ROOM: &str = "crash";
const CHUNK: usize = 50;
/// Chunks before the crash, while PostgreSQL is down, and after it is back.
const BEFORE: usize = 10;
const DURING: usize = 12;
const AFTER: usize = 10;

/// Invariant: when PostgreSQL dies with `kill -9` (postmaster and every
/// backend at once) while messages keep coming, and comes back on the
/// same data directory and port, every message the server accepted ends
/// in `messages` exactly once: the batch in flight is retried, never
/// acknowledged before its commit, never dropped; entries wait in Redis
/// meanwhile.
///
/// The server runs with a history large enough to hold every message of
/// the test: it does not yet keep unarchived entries past `--history`
/// (the server-side contract: read `archived` in `chat:{room}:epoch`
/// before trimming), so with a small history, entries published while
/// PostgreSQL is down could be trimmed before they are archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_load_and_restarted_loses_and_doubles_nothing() {
    let mut env = Env::start("crash").await;
    let server = Server::start("app1", &env.redis.url(), 100_000).await;
    let mut config = Config::for_test(&env.redis.url(), &env.db_url);
    config.batch = 100;
    let archiver = InProcess::start(config).await;
    let mut p = Publisher::connect(&server.ws_url(ROOM, "bob"), "bob").await;

    for _ in 0..BEFORE {
        p.send_chunk(CHUNK).await;
    }
    {
        let pool = env.pool().await;
        let (n, _) = wait_rows(&pool, ROOM, 1, T).await;
        assert!(n > 0, "archiving started before the crash");
        pool.close().await;
    }
    let pid = env.pg.pid().expect("postgres runs");
    env.pg.kill9();
    eprintln!("killed postgres (pid {pid}) with SIGKILL");
    for _ in 0..DURING {
        p.send_chunk(CHUNK).await;
    }
    // Let the archiver meet the dead database for a while.
    let deadline = Instant::now() + T;
    while archiver.metrics.errors("postgres") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        archiver.metrics.errors("postgres") > 0,
        "the archiver saw PostgreSQL down"
    );
    // The lag metrics stay fresh while PostgreSQL is down: they show the
    // entries waiting in Redis.
    let deadline = Instant::now() + T;
    while archiver.metrics.total_lag() < CHUNK as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag_while_down = archiver.metrics.total_lag();
    assert!(
        lag_while_down >= CHUNK as u64,
        "lag shown while down: {lag_while_down}"
    );
    assert!(
        !archiver.metrics.postgres_up(),
        "postgres_up is 0 while it is down"
    );
    tokio::task::block_in_place(|| env.pg.restart())
        .expect("PostgreSQL restarts on the same data dir and port");
    for _ in 0..AFTER {
        p.send_chunk(CHUNK).await;
    }
    let total = ((BEFORE + DURING + AFTER) * CHUNK) as i64;
    let pool = env.pool().await;
    let (n, distinct) = wait_rows(&pool, ROOM, total, T).await;
    assert_eq!((n, distinct), (total, total), "every message once");
    assert_eq!(as_set(&rows(&pool, ROOM).await), as_set(&p.delivered));
    assert!(archiver.metrics.postgres_up(), "postgres_up is 1 again");
    let mut redis = env.redis().await;
    let last = p.delivered.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(wait_watermark(&mut redis, ROOM, last, T).await, Some(last));
    eprintln!("lag while PostgreSQL was down: {lag_while_down} entries");
    archiver.stop().await;
}
