//! The archiver on a Redis Cluster: every master scanned, no cross-slot
//! command.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_archiver::testing::Postgres;
use chat_archiver::Config;
use chat_cluster::redis_cluster::RedisCluster;
use common::*;

const PER_ROOM: usize = 100;

/// Invariant: on a Redis Cluster (three masters), rooms whose keys live on
/// different masters are all found (`SCAN` on each master from `CLUSTER
/// SLOTS`) and archived once each, and each room's watermark is written
/// on its own master. Messages come from a real server running with
/// `--redis-cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_every_master_of_a_redis_cluster_are_archived_once() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().to_path_buf();
    let (rc, pg) = tokio::task::spawn_blocking(move || {
        let rc = RedisCluster::start(&log_dir, &[])
            .expect("a Redis Cluster starts (redis-server and redis-cli)");
        (rc, Postgres::start().expect("PostgreSQL starts"))
    })
    .await
    .unwrap();
    let db_url = pg.create_database("cluster").await.unwrap();
    let nodes = rc.node_addrs();

    // One room per master.
    let mut rooms: Vec<(String, String)> = Vec::new();
    for i in 0..1000 {
        let room = format!("c{i}");
        let master = rc.master_for_slot(chat_cluster::room_slot(&room)).unwrap();
        if rooms.iter().all(|(_, m)| *m != master) {
            rooms.push((room, master));
        }
        if rooms.len() == 3 {
            break;
        }
    }
    assert_eq!(rooms.len(), 3, "three masters");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut sc = chat_server::Config::for_test("app1", "redis://127.0.0.1:6379/");
    sc.redis_cluster = nodes.clone();
    sc.history_len = 10_000;
    sc.rate_per_sec = 100_000;
    sc.burst = 100_000;
    let (stop_server, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(chat_server::run(listener, sc, async {
        let _ = rx.await;
    }));

    let mut config = Config::for_test("redis://127.0.0.1:6379/", &db_url);
    config.redis_cluster = nodes.clone();
    let archiver = InProcess::start(config).await;

    let mut delivered = Vec::new();
    for (room, _) in &rooms {
        let url = format!("ws://{addr}/ws?room={room}&nick=dan");
        let mut p = Publisher::connect(&url, "dan").await;
        for _ in 0..PER_ROOM / 50 {
            p.send_chunk(50).await;
        }
        delivered.push(p.delivered);
    }

    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    for ((room, master), sent) in rooms.iter().zip(&delivered) {
        let (n, distinct) = wait_rows(&pool, room, PER_ROOM as i64, T).await;
        assert_eq!(
            (n, distinct),
            (PER_ROOM as i64, PER_ROOM as i64),
            "room {room} on {master}"
        );
        assert_eq!(as_set(&rows(&pool, room).await), as_set(sent));
        let mut conn = redis::Client::open(format!("redis://{master}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let last = sent.iter().map(|d| d.offset).max().unwrap();
        assert_eq!(
            wait_watermark(&mut conn, room, last, T).await,
            Some(last),
            "room {room}"
        );
    }
    let text = http_get(&archiver.metrics_addr, "/metrics").await;
    assert!(text.contains("archiver_redis_masters 3\n"), "{text}");
    let masters: BTreeSet<&String> = rooms.iter().map(|(_, m)| m).collect();
    assert_eq!(masters.len(), 3);
    archiver.stop().await;
    let _ = stop_server.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(rc);
}
