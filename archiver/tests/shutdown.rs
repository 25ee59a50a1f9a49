//! SIGTERM while PostgreSQL is down: bounded, and nothing acknowledged.

mod common;

use std::time::{Duration, Instant};

use chat_archiver::Config;
use common::*;

/// Invariant: an archiver told to stop while PostgreSQL is down gives up
/// its uncommitted batch after `--drain-timeout` without acknowledging it
/// (the entries stay pending in Redis), and the next archiver, once
/// PostgreSQL is back, claims and archives them: nothing lost, nothing
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_postgres_is_down_leaves_the_batch_pending() {
    let mut env = Env::start("shutdown").await;
    let server = Server::start("app1", &env.redis.url(), 100_000).await;
    let mut p = Publisher::connect(&server.ws_url("halt", "gus"), "gus").await;
    let mut config = Config::for_test(&env.redis.url(), &env.db_url);
    config.drain_timeout = Duration::from_secs(1);
    config.claim_idle = Duration::from_millis(500);
    config.consumer = Some("first".into());
    let first = InProcess::start(config.clone()).await;
    p.send_chunk(50).await;
    let pool = env.pool().await;
    assert_eq!(wait_rows(&pool, "halt", 50, T).await.0, 50);
    pool.close().await;

    tokio::task::block_in_place(|| env.pg.kill9());
    p.send_chunk(50).await;
    let deadline = Instant::now() + T;
    while first.metrics.errors("postgres") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        first.metrics.errors("postgres") > 0,
        "the batch met the dead database"
    );
    let stopping = Instant::now();
    first.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stopped within the drain timeout: {took:?}"
    );

    let mut redis = env.redis().await;
    let (pending, _, _, _): (i64, Option<String>, Option<String>, redis::Value) =
        redis::cmd("XPENDING")
            .arg("chat:{halt}:log")
            .arg("archiver")
            .query_async(&mut redis)
            .await
            .unwrap();
    assert!(pending > 0, "the uncommitted batch was not acknowledged");

    tokio::task::block_in_place(|| env.pg.restart()).expect("PostgreSQL restarts");
    config.consumer = Some("second".into());
    let second = InProcess::start(config).await;
    let pool = env.pool().await;
    let (n, distinct) = wait_rows(&pool, "halt", 100, T).await;
    assert_eq!((n, distinct), (100, 100), "every message once");
    assert_eq!(as_set(&rows(&pool, "halt").await), as_set(&p.delivered));
    assert!(
        second.metrics.entries_claimed() > 0,
        "the second archiver claimed the first's batch"
    );
    second.stop().await;
}
