//! The archiver under Redis Sentinel, across a failover.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_archiver::testing::Postgres;
use chat_archiver::Config;
use chat_cluster::sentinel::{self, Sentinels};
use common::*;

const ROOM: &str = "sent";

/// Invariant: with `--redis-sentinels`, the archiver follows the master
/// the sentinels name: after the master is killed with SIGKILL and a
/// replica promoted, every message the server accepted (before and after
/// the failover) is in `messages` exactly once. (Messages the old master
/// took but never replicated may be archived too: the archiver read them
/// before the failover; none is stored twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_follows_a_sentinel_failover() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().to_path_buf();
    let (mut sentinels, pg) = tokio::task::spawn_blocking(move || {
        let s = Sentinels::start(&log_dir, "chat", &[]).expect("sentinels start");
        (s, Postgres::start().expect("PostgreSQL starts"))
    })
    .await
    .unwrap();
    let db_url = pg.create_database("sentinel").await.unwrap();
    let addrs = sentinels.sentinel_addrs();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut sc = chat_server::Config::for_test("app1", "redis://127.0.0.1:6379/");
    sc.redis_sentinels = addrs.clone();
    sc.redis_sentinel_master = Some("chat".into());
    sc.history_len = 100_000;
    sc.rate_per_sec = 100_000;
    sc.burst = 100_000;
    let (stop_server, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(chat_server::run(listener, sc, async {
        let _ = rx.await;
    }));

    let mut config = Config::for_test("redis://127.0.0.1:6379/", &db_url);
    config.redis_sentinels = addrs.clone();
    config.redis_sentinel_master = Some("chat".into());
    let archiver = InProcess::start(config).await;
    let url = format!("ws://{addr}/ws?room={ROOM}&nick=fay");
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();

    let mut delivered = Vec::new();
    let before = send_tolerant(&url, "fay", 0, 200).await.expect("connect");
    assert_eq!(before.len(), 200, "all accepted before the failover");
    delivered.extend(before);
    let (n, _) = wait_rows(&pool, ROOM, 200, T).await;
    assert_eq!(n, 200);

    let old = tokio::task::block_in_place(|| sentinels.failover()).expect("kill the master");
    let (new, took) = tokio::task::block_in_place(|| {
        sentinel::wait_new_master(&addrs, "chat", &old, Duration::from_secs(30))
    })
    .expect("a replica is promoted");
    eprintln!("failover {old} -> {new} in {took:?}");

    // Send until 200 more went through the new master (bounded attempts).
    let mut after = 0;
    for attempt in 0..40 {
        if after >= 200 {
            break;
        }
        if let Some(got) = send_tolerant(&url, "fay", 1000 + attempt * 100, 50).await {
            after += got.len();
            delivered.extend(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        after >= 200,
        "the server accepts messages after the failover ({after})"
    );

    let want: BTreeSet<Delivered> = as_set(&delivered);
    let deadline = tokio::time::Instant::now() + T;
    let stored = loop {
        let stored: BTreeSet<Delivered> = rows(&pool, ROOM).await.into_iter().collect();
        if want.is_subset(&stored) || tokio::time::Instant::now() >= deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let missing: Vec<&Delivered> = want.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "every accepted message archived; missing {missing:?}"
    );
    let (n, distinct) = counts(&pool, ROOM).await;
    assert_eq!(n, distinct, "none twice");
    let text = http_get(&archiver.metrics_addr, "/metrics").await;
    assert!(text.contains("archiver_redis_masters 1\n"), "{text}");
    archiver.stop().await;
    let _ = stop_server.send(());
}
