//! The watermark script against a real redis-server, step by step.

use std::time::Duration;

use chat_archiver::testing::RedisServer;
use chat_archiver::watermark::{load_watermark_script, parse_watermark, watermark_cmd};
use redis::aio::MultiplexedConnection;
use redis::Value;

const LOG: &str = "chat:{w}:log";
const EPOCH: &str = "chat:{w}:epoch";
const KEEP: Duration = Duration::from_secs(3600);

async fn run(c: &mut MultiplexedConnection, forget: Duration) -> Value {
    watermark_cmd("w", forget).query_async(c).await.unwrap()
}

async fn archived(c: &mut MultiplexedConnection) -> Option<u64> {
    redis::cmd("HGET")
        .arg(EPOCH)
        .arg("archived")
        .query_async(c)
        .await
        .unwrap()
}

async fn read(c: &mut MultiplexedConnection, consumer: &str, n: usize) {
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("archiver")
        .arg(consumer)
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(LOG)
        .arg(">")
        .query_async(c)
        .await
        .unwrap();
}

async fn ack(c: &mut MultiplexedConnection, ids: &[&str]) {
    let _: i64 = redis::cmd("XACK")
        .arg(LOG)
        .arg("archiver")
        .arg(ids)
        .query_async(c)
        .await
        .unwrap();
}

/// Invariant: the watermark is the highest offset at or below which every
/// entry is acknowledged (just below the lowest pending entry of any
/// consumer, else the last delivered one); it only ever rises; it is never
/// written to a missing epoch hash (which would outlive the room's TTL);
/// idle consumers with nothing pending are forgotten, busy ones never.
#[tokio::test]
async fn the_watermark_stops_below_the_lowest_pending_entry_and_only_rises() {
    let redis = tokio::task::spawn_blocking(|| RedisServer::start().expect("redis-server"))
        .await
        .unwrap();
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    load_watermark_script(&mut c).await.unwrap();
    let ts = 1_700_000_000_000u64;
    for offset in 10..15 {
        let frame = format!(
            r#"{{"type":"message","offset":{offset},"epoch":"e","room":"w","nick":"n","text":"t","app_id":"a","ts":{ts}}}"#
        );
        let _: String = redis::cmd("XADD")
            .arg(LOG)
            .arg(format!("{offset}-0"))
            .arg("f")
            .arg(frame)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(EPOCH)
        .arg("epoch")
        .arg("e")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        parse_watermark(&run(&mut c, KEEP).await, 0),
        Some(Err(-1)),
        "no group yet"
    );
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(LOG)
        .arg("archiver")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();

    read(&mut c, "c1", 3).await; // 10, 11, 12
    read(&mut c, "c2", 2).await; // 13, 14
    let (lag, _) = parse_watermark(&run(&mut c, KEEP).await, ts + 5000)
        .unwrap()
        .unwrap();
    assert_eq!(
        (lag.messages, lag.archived, lag.age_ms),
        (5, 9, 5000),
        "nothing acknowledged: all 5 lag"
    );

    ack(&mut c, &["10-0", "11-0", "13-0"]).await;
    run(&mut c, KEEP).await;
    assert_eq!(
        archived(&mut c).await,
        Some(11),
        "12 is still pending in c1"
    );
    ack(&mut c, &["12-0"]).await;
    run(&mut c, KEEP).await;
    assert_eq!(
        archived(&mut c).await,
        Some(13),
        "14 is still pending in c2"
    );
    ack(&mut c, &["14-0"]).await;
    let (lag, raised) = parse_watermark(&run(&mut c, KEEP).await, ts)
        .unwrap()
        .unwrap();
    assert_eq!(
        archived(&mut c).await,
        Some(14),
        "all delivered entries acknowledged"
    );
    assert_eq!((lag.messages, lag.age_ms, raised), (0, 0, true));

    // Only raised: a higher value (another archiver's) stays.
    let _: () = redis::cmd("HSET")
        .arg(EPOCH)
        .arg("archived")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    let (lag, raised) = parse_watermark(&run(&mut c, KEEP).await, ts)
        .unwrap()
        .unwrap();
    assert_eq!(
        (archived(&mut c).await, lag.archived, raised),
        (Some(100), 100, false)
    );

    // A missing epoch hash is not re-created.
    let _: () = redis::cmd("DEL")
        .arg(EPOCH)
        .query_async(&mut c)
        .await
        .unwrap();
    run(&mut c, KEEP).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(EPOCH)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // Idle consumers with nothing pending go; one with pending stays.
    let _: String = redis::cmd("XADD")
        .arg(LOG)
        .arg("15-0")
        .arg("f")
        .arg("{}")
        .query_async(&mut c)
        .await
        .unwrap();
    read(&mut c, "c3", 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    run(&mut c, Duration::from_millis(5)).await;
    let consumers: Vec<Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(LOG)
        .arg("archiver")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        consumers.len(),
        1,
        "only c3, which has an entry pending, is left: {consumers:?}"
    );
    // No stream: status -2.
    let _: () = redis::cmd("DEL")
        .arg(LOG)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(parse_watermark(&run(&mut c, KEEP).await, 0), Some(Err(-2)));
}
