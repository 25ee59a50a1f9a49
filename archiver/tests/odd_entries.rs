//! Entries that cannot become rows: counted and acknowledged, never
//! silent, never blocking the watermark.

mod common;

use std::time::{Duration, Instant};

use chat_archiver::Config;
use common::*;
use redis::Value;

const LOG: &str = "chat:{odd}:log";

fn frame(offset: u64) -> String {
    format!(
        r#"{{"type":"message","offset":{offset},"epoch":"e1","room":"odd","nick":"n","text":"t{offset}","app_id":"a","ts":1700000000000}}"#
    )
}

/// Invariant: an entry that is not a message frame is acknowledged and
/// counted (`archiver_entries_undecodable_total`), and a pending entry of
/// a dead consumer that left the stream before it was archived is counted
/// as lost (`archiver_entries_lost_total`); neither stops the rows around
/// them from being archived nor the watermark from passing them.
///
/// The entries are written directly (a server never writes such frames),
/// in the server's layout: ids `<offset>-0`, field `f`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_entries_are_counted_and_passed() {
    let env = Env::start("odd").await;
    let mut r = env.redis().await;
    let _: () = redis::cmd("HSET")
        .arg("chat:{odd}:epoch")
        .arg("epoch")
        .arg("e1")
        .query_async(&mut r)
        .await
        .unwrap();
    for (offset, f) in [
        (1, frame(1)),
        (2, "not json".to_string()),
        (3, frame(3)),
        (4, frame(4)),
        (5, frame(5)),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(LOG)
            .arg(format!("{offset}-0"))
            .arg("f")
            .arg(f)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    // A consumer that read 1..4 and died; entry 4 is then deleted.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(LOG)
        .arg("archiver")
        .arg("0")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("archiver")
        .arg("dead")
        .arg("COUNT")
        .arg(4)
        .arg("STREAMS")
        .arg(LOG)
        .arg(">")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: i64 = redis::cmd("XDEL")
        .arg(LOG)
        .arg("4-0")
        .query_async(&mut r)
        .await
        .unwrap();

    let mut config = Config::for_test(&env.redis.url(), &env.db_url);
    config.claim_idle = Duration::from_millis(100);
    let archiver = InProcess::start(config).await;
    let pool = env.pool().await;
    let (n, _) = wait_rows(&pool, "odd", 3, T).await;
    assert_eq!(n, 3, "offsets 1, 3 and 5");
    let texts: Vec<String> = rows(&pool, "odd")
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["t1", "t3", "t5"]);
    assert_eq!(wait_watermark(&mut r, "odd", 5, T).await, Some(5));
    let deadline = Instant::now() + T;
    let text = loop {
        let text = http_get(&archiver.metrics_addr, "/metrics").await;
        if text.contains("archiver_entries_lost_total 1\n") || Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("archiver_entries_undecodable_total 1\n"),
        "{text}"
    );
    assert!(text.contains("archiver_entries_lost_total 1\n"), "{text}");
    assert!(
        text.contains("archiver_errors_total{kind=\"decode\"} 1\n"),
        "{text}"
    );
    let pending: (i64, Value, Value, Value) = redis::cmd("XPENDING")
        .arg(LOG)
        .arg("archiver")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "nothing left pending");
    archiver.stop().await;
}
