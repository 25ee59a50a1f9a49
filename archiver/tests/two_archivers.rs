//! Two archivers on the same streams, one killed with `kill -9` in the
//! middle of a batch: nothing lost, nothing doubled.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROOM: &str = "pair";
const CHUNK: usize = 50;

/// An `archiver` process (the real binary), logging JSON to a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, env: &Env) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_archiver"))
            .args(["--redis-url", &env.redis.url()])
            .args(["--database-url", &env.db_url])
            .args(["--consumer", name, "--batch", "50"])
            .args(["--scan-interval", "200ms", "--poll-interval", "20ms"])
            .args(["--claim-idle", "2s", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the archiver binary");
        Proc { child, log }
    }

    /// The metrics address it logged.
    async fn metrics_addr(&self) -> String {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == "metrics listening" {
                    return v["fields"]["addr"].as_str().unwrap().to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no metrics address in {}", self.log.display());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// XPENDING's summary: total, lowest id, highest id, per consumer.
type PendingSummary = (
    i64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Entries pending in `consumer`.
async fn pending_of(redis: &mut redis::aio::MultiplexedConnection, consumer: &str) -> i64 {
    let (_, _, _, consumers): PendingSummary = redis::cmd("XPENDING")
        .arg("chat:{pair}:log")
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

/// The value of an unlabelled series in a Prometheus text.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Invariant: with two archivers on one room, one killed with SIGKILL
/// while its batch is read but not committed (its insert is blocked on a
/// table lock the test holds), every message the server accepted ends in
/// `messages` exactly once: the survivor claims the dead one's pending
/// entries after `--claim-idle` and archives them, and nothing is left
/// pending. The survivor then stops cleanly on SIGTERM.
///
/// The server's history is large enough for every message of the test
/// (it does not yet keep unarchived entries past `--history`: the
/// server-side contract is to read `archived` in `chat:{room}:epoch`
/// before trimming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_killed_mid_batch_is_taken_over_by_the_other() {
    let env = Env::start("pair").await;
    let server = Server::start("app1", &env.redis.url(), 100_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Proc::start(dir.path(), "a", &env);
    let b = Proc::start(dir.path(), "b", &env);
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
    while pending_of(&mut redis, "a").await == 0 && Instant::now() < deadline {
        p.send_chunk(CHUNK).await;
        chunks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_pending = pending_of(&mut redis, "a").await;
    assert!(
        a_pending > 0,
        "a holds a batch in flight:\n{}",
        a.log_text()
    );

    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    assert_eq!(
        pending_of(&mut redis, "a").await,
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
    while pending_of(&mut redis, "a").await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pending_of(&mut redis, "a").await,
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
    chat_archiver::testing::signal(i64::from(b.child.id()), "-TERM").unwrap();
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "b exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "b exited cleanly: {status}\n{}",
        b.log_text()
    );
}
