//! Chaos: exactly-once delivery under faults, on real processes.
//!
//! Every scenario runs three instances behind HAProxy with a real
//! `redis-server`, six receivers and three senders (see
//! [`harness::specs`]) in two rooms, sending 20 messages a second with
//! unique ids, and injects one fault mid-run: kill -9 or SIGTERM of an
//! instance, Redis frozen by SIGSTOP, Redis killing every pub/sub
//! connection, Redis restarted empty, or the TCP path between one instance
//! and Redis hung. Clients reconnect and resume with `since` and `epoch`;
//! senders retry with the same id until acknowledged (see [`client`]).
//!
//! Checked per peer ([`check`]): nothing acknowledged is lost (with an
//! empty Redis: nothing is lost without an announcement; otherwise nothing
//! is announced lost either), nothing is delivered twice, offsets increase
//! within an epoch, each sender's messages keep their send order, and
//! delivery resumes within a bound of the fault. Send order holds in full
//! for the stop-and-wait senders; the pipelined sender's retried messages
//! may land after later ones (see [`check::analyze`] for why), so for it
//! only first-attempt messages must keep their order and the others are
//! counted (`reordered_retries`). Each scenario prints a one-line summary
//! with its figures, and one with the servers' recovery counters.
//!
//! The scenarios take a lock, so they run one at a time even without
//! `--test-threads=1` (the machines running them have two cores):
//! `cargo test -p chat-server --test chaos -- --test-threads=1 --nocapture`.

// The support modules' items are shared between them, not exported.
#![allow(unreachable_pub)]

#[path = "chaos/check.rs"]
mod check;
#[path = "chaos/client.rs"]
mod client;
#[path = "chaos/harness.rs"]
mod harness;
#[path = "chaos/proxy.rs"]
mod proxy;
#[path = "chaos/record.rs"]
mod record;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{cluster, get, lost_after, metric, redis_cmd, Run, AFTER, WARMUP};
use tokio::task::block_in_place;
use tokio::time::{sleep, Instant};

/// One scenario at a time: each runs five processes and nine clients.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Delivery must resume this soon after the fault (or its end).
const RESUME: Duration = Duration::from_secs(5);

/// Messages the pipelined sender writes at once right before some faults,
/// so that the fault finds sends in flight.
const BURST: usize = 12;

/// (a) Invariant: when an instance dies without a word (kill -9), its
/// clients' TCP connections just drop; they reconnect through HAProxy to a
/// surviving instance and resume, and nothing acknowledged is lost,
/// duplicated or reordered, for them or anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance() {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(cluster);
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    // Sends in flight on app1 when it dies: their fate is unknown to s0,
    // which sends them again (same ids) after reconnecting (any that app1
    // had applied would come back `sent` duplicate from another instance).
    run.peer("s0").burst(BURST).await;
    let t_fault = Instant::now();
    block_in_place(|| c.kill_server(0));
    sleep(AFTER).await;
    for name in ["r0", "r3", "s0"] {
        assert!(
            lost_after(run.peer(name), t_fault, "dropped"),
            "{name} (on app1) saw its connection drop"
        );
    }
    run.finish("kill_9", t_fault, false, RESUME, &c).await;
}

/// (b) Invariant: a graceful stop (SIGTERM) closes every socket with 1012;
/// the clients reconnect elsewhere and resume, and sends that were in
/// flight at the close are applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_an_instance() {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(cluster);
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    run.peer("s0").burst(BURST).await;
    let t_fault = Instant::now();
    let status = block_in_place(|| c.stop_server(0)).expect("app1 stops");
    assert!(status.success(), "app1 exits cleanly on SIGTERM: {status}");
    let rest = AFTER.saturating_sub(t_fault.elapsed());
    sleep(rest).await;
    for name in ["r0", "r3", "s0"] {
        assert!(
            lost_after(run.peer(name), t_fault, "closed 1012"),
            "{name} (on app1) was closed with 1012"
        );
    }
    run.finish("sigterm", t_fault, false, RESUME, &c).await;
}

/// Sends SIGCONT to Redis when dropped, so a failing test never leaves it
/// stopped.
struct Cont(u32);

impl Drop for Cont {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// (c) Invariant: a Redis that hangs for 8 s (SIGSTOP) makes sends fail
/// with `timeout` or `unavailable`, never silently; retries with the same
/// id are applied exactly once (requests that sat in Redis's socket
/// buffers are applied when it wakes up, and their retries then come back
/// `sent` duplicate); every instance gets its subscription back and
/// repairs from history, so nothing acknowledged is lost or duplicated,
/// and delivery resumes within 5 s of Redis waking up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigstop_for_8s() {
    let _serial = SERIAL.lock().await;
    let c = block_in_place(cluster);
    let pid = c.redis_pid().expect("redis runs");
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let kill = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid}");
    };
    kill("-STOP");
    let cont = Cont(pid);
    sleep(Duration::from_secs(8)).await;
    drop(cont);
    let t_cont = Instant::now();
    sleep(AFTER).await;
    let report = run.finish("redis_sigstop", t_cont, false, RESUME, &c).await;
    assert!(
        report.retried > 0,
        "some sends failed and were retried while Redis was stopped"
    );
}

/// (d) Invariant: when Redis drops every pub/sub connection (`CLIENT KILL
/// TYPE pubsub`), each instance resubscribes and repairs from history:
/// what was published meanwhile is delivered once, in order, and nothing
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kills_pubsub_connections() {
    let _serial = SERIAL.lock().await;
    let c = block_in_place(cluster);
    let before: u64 = {
        let mut n = 0;
        for i in 0..3 {
            n += metric(c.server_addr(i), "chat_redis_subscriber_connects_total").await;
        }
        n
    };
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let t_fault = Instant::now();
    let addr = c.redis_addr();
    let reply = block_in_place(|| redis_cmd(&addr, &["CLIENT", "KILL", "TYPE", "pubsub"]));
    let killed: u64 = reply.trim_start_matches(':').parse().unwrap_or(0);
    assert!(
        killed >= 3,
        "one pub/sub connection per instance killed: {reply}"
    );
    sleep(AFTER).await;
    let mut after = 0;
    for i in 0..3 {
        after += metric(c.server_addr(i), "chat_redis_subscriber_connects_total").await;
    }
    assert!(
        after >= before + 3,
        "every instance resubscribed ({before} → {after})"
    );
    run.finish("pubsub_kill", t_fault, false, RESUME, &c).await;
}

/// (e) Invariant: a Redis restarted without persistence has lost history,
/// offsets and idempotency keys. Loss is allowed here, but never silent:
/// every acknowledged message a peer missed must be covered by a `gap`, a
/// `reset` or a `joined` with `recovered: false` that the peer received.
/// Nothing is delivered twice within an epoch. Exactly once cannot hold
/// across the restart itself: a send whose fate its sender never learned
/// (applied by the old Redis, whose delivery to the sender's instance died
/// with it) is sent again, and with its idempotency key gone it is
/// published again in the new epoch; a peer that had it may see it twice,
/// but only across a reset it was told about (counted as `redelivered`).
/// Offsets increase within each epoch, and delivery resumes within 5 s of
/// the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence() {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(cluster);
    // The data must really be gone after the restart.
    let addr = c.redis_addr();
    let (save, aof) = block_in_place(|| {
        (
            redis_cmd(&addr, &["CONFIG", "GET", "save"]),
            redis_cmd(&addr, &["CONFIG", "GET", "appendonly"]),
        )
    });
    assert_eq!(
        (save.as_str(), aof.as_str()),
        ("[save, ]", "[appendonly, no]")
    );
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    run.peer("s0").burst(BURST).await;
    let t_fault = Instant::now();
    block_in_place(|| c.restart_redis()).expect("redis restarts");
    sleep(AFTER).await;
    let report = run.finish("redis_restart", t_fault, true, RESUME, &c).await;
    for p in &report.peers {
        assert!(
            p.resets + p.unrecovered > 0,
            "{} was told about the new epoch (reset or recovered:false)",
            p.name
        );
    }
}

/// Every `/healthz` answer of an instance, with when it came.
type Answers = Arc<Mutex<Vec<(Instant, u16)>>>;

/// Polls `/healthz` of one instance and records every answer.
fn watch_health(addr: String) -> (tokio::task::JoinHandle<()>, Answers) {
    let seen: Answers = Default::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let (code, _) = get(addr.clone(), "/healthz").await;
            s.lock().unwrap().push((Instant::now(), code));
            sleep(Duration::from_millis(100)).await;
        }
    });
    (task, seen)
}

/// (f) Invariant: a pub/sub connection whose TCP path hangs (no error, no
/// FIN: a proxy that stops forwarding) is found dead by the liveness
/// probe within about `--probe-timeout`; the instance reconnects and
/// repairs every room, so its members lose nothing and get nothing twice,
/// and delivery resumes within 3 s of the detection. Meanwhile `/healthz`
/// answers 503, and 200 again afterwards; `chat_liveness_failures_total`
/// counts the detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_connection_of_one_instance() {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(cluster);
    let proxy = proxy::FreezeProxy::start(c.redis_addr())
        .await
        .expect("proxy starts");
    c.set_server_redis_url(0, Some(format!("redis://{}/", proxy.addr())));
    block_in_place(|| {
        c.stop_server(0).expect("app1 stops");
        c.start_server(0).expect("app1 starts behind the proxy");
        c.wait_all_up(Duration::from_secs(10))
            .expect("all up again");
    });
    let app1 = c.server_addr(0);
    let failures_before = metric(app1.clone(), "chat_liveness_failures_total").await;
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let (health, seen) = watch_health(app1.clone());
    let t_freeze = Instant::now();
    let frozen = proxy.freeze();
    assert!(
        frozen >= 2,
        "app1's pub/sub and command connections frozen ({frozen})"
    );
    let t_detect = loop {
        if metric(app1.clone(), "chat_liveness_failures_total").await > failures_before {
            break Instant::now();
        }
        assert!(
            t_freeze.elapsed() < Duration::from_secs(10),
            "the liveness probe noticed the hung connection within 10s (logs in {})",
            c.log_dir().display()
        );
        sleep(Duration::from_millis(50)).await;
    };
    let detect = t_detect.duration_since(t_freeze);
    println!(
        "chaos hung_connection: detected after {} ms",
        detect.as_millis()
    );
    assert!(
        detect <= harness::PROBE_TIMEOUT + Duration::from_millis(1500),
        "detected within probe timeout + 1.5s: {detect:?}"
    );
    sleep(AFTER).await;
    // Healthy again: wait (bounded) for the last answers to say so.
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen
        .lock()
        .unwrap()
        .last()
        .is_none_or(|(_, code)| *code != 200)
    {
        assert!(Instant::now() < deadline, "app1 healthy again");
        sleep(Duration::from_millis(100)).await;
    }
    health.abort();
    let answers = seen.lock().unwrap().clone();
    let during = answers
        .iter()
        .filter(|(at, code)| {
            *at >= t_freeze && *at <= t_detect + Duration::from_secs(3) && *code == 503
        })
        .count();
    let first_503 = answers.iter().position(|(_, code)| *code == 503);
    let back = first_503.and_then(|i| answers[i..].iter().find(|(_, code)| *code == 200));
    println!(
        "chaos hung_connection: /healthz {}",
        answers
            .iter()
            .map(|(at, code)| format!("{}ms:{code}", at.duration_since(t_freeze).as_millis()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(during > 0, "/healthz answered 503 during the freeze");
    assert!(back.is_some(), "/healthz answered 200 after the 503s");
    run.finish(
        "hung_connection",
        t_detect,
        false,
        Duration::from_secs(3),
        &c,
    )
    .await;
    drop(proxy);
}

/// Delivery must resume this soon after a Redis failover (issue 8).
const FAILOVER_RESUME: Duration = Duration::from_secs(10);

/// (g) Invariant: with Sentinel, kill -9 of the master while clients chat
/// through HAProxy: the servers ask the sentinels again (they name the
/// dead master for a while), move their command and pub/sub connections to
/// the promoted replica, and resume delivery within 10 s. The new master is
/// another Redis process, so every room starts a new epoch: a tail the
/// replica had not received is announced (`reset`), never skipped; nothing
/// is delivered twice except across such an announcement, and offsets
/// increase within each epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed() {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(|| harness::cluster_on(chat_cluster::RedisTopology::Sentinel));
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let t_fault = Instant::now();
    let old = block_in_place(|| c.redis_failover()).expect("master killed");
    sleep(AFTER + Duration::from_secs(4)).await;
    let now = block_in_place(|| c.redis_master_addr()).expect("a master");
    assert_ne!(now, old, "the sentinels promoted a replica");
    run.finish("sentinel_kill", t_fault, true, FAILOVER_RESUME, &c)
        .await;
}

/// (h) Invariant: with Sentinel, a master that hangs (`DEBUG SLEEP`: its
/// connections stay open, nothing answers) is left by the servers once the
/// liveness probe goes quiet and the sentinels name a new master; delivery
/// resumes within 10 s of the hang, with the same guarantees as (g). When
/// the old master wakes up it is a replica and must not take anyone back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_hangs() {
    let _serial = SERIAL.lock().await;
    let c = block_in_place(|| harness::cluster_on(chat_cluster::RedisTopology::Sentinel));
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let t_fault = Instant::now();
    let old = block_in_place(|| c.redis_hang_master(Duration::from_secs(8))).expect("master hung");
    sleep(AFTER + Duration::from_secs(6)).await;
    let now = block_in_place(|| c.redis_master_addr()).expect("a master");
    assert_ne!(now, old, "the sentinels promoted a replica");
    run.finish("sentinel_hang", t_fault, true, FAILOVER_RESUME, &c)
        .await;
}

/// A Redis Cluster scenario: `fault` hits the master of `c1`'s slot after
/// the warm-up and returns that master's address; clients go on sending
/// for `settle`; then another master must serve the slot, and the run is
/// checked like the Sentinel failovers (announced losses allowed).
async fn cluster_fault(
    name: &str,
    settle: Duration,
    fault: impl FnOnce(&mut chat_cluster::Cluster, u16) -> String,
) -> check::Report {
    let _serial = SERIAL.lock().await;
    let mut c = block_in_place(|| harness::cluster_on(chat_cluster::RedisTopology::Cluster));
    let slot = chat_server::store::room_slot("c1");
    let other = chat_server::store::room_slot("c2");
    assert_ne!(
        block_in_place(|| c.cluster_master_for_slot(slot)).unwrap(),
        block_in_place(|| c.cluster_master_for_slot(other)).unwrap(),
        "the two rooms live on two masters"
    );
    let run = Run::start(&c).await;
    run.go();
    sleep(WARMUP).await;
    let t_fault = Instant::now();
    let old = block_in_place(|| fault(&mut c, slot));
    sleep(settle).await;
    let now = block_in_place(|| c.cluster_master_for_slot(slot)).expect("a master");
    assert_ne!(now, old, "another master serves c1's slot");
    run.finish(name, t_fault, true, FAILOVER_RESUME, &c).await
}

/// (i) Invariant: on a Redis Cluster (three masters, three replicas;
/// rooms `c1` and `c2` live on two different masters), kill -9 of the
/// master of `c1`'s slot while clients chat through HAProxy: the servers'
/// sharded subscriptions and command links follow the slot to the
/// promoted replica (slot map reload, resubscription, repair from
/// history) and delivery resumes within 10 s. The promoted replica is
/// another Redis process, so `c1` starts a new epoch: a tail it had not
/// received is announced (`reset`), never skipped; `c2`, on a master that
/// did not fail, keeps its epoch. Nothing is delivered twice except across
/// such an announcement, and offsets increase within each epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed() {
    cluster_fault("cluster_kill", AFTER + Duration::from_secs(4), |c, slot| {
        c.redis_failover_slot(slot).expect("master killed")
    })
    .await;
}

/// (j) Invariant: on a Redis Cluster, the master of `c1`'s slot hangs
/// (`DEBUG SLEEP` 8 s: its connections stay open, nothing answers). The
/// other nodes fail it over; the servers notice through the liveness probe
/// of that shard (and the slot map), move to the promoted replica and
/// repair, and delivery resumes within 10 s of the hang, with the same
/// guarantees as (i). When the old master wakes up it is a replica and
/// must not take anyone back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_hangs() {
    cluster_fault("cluster_hang", AFTER + Duration::from_secs(6), |c, slot| {
        c.redis_hang_slot_master(slot, Duration::from_secs(8))
            .expect("master hung")
    })
    .await;
}

/// (k) Invariant: on a Redis Cluster, `c1`'s slot moves to another master
/// while clients chat (a live reshard: `MIGRATING`/`IMPORTING`, `MIGRATE`
/// of its keys, `SETSLOT NODE`). Sends that meet `ASK`/`TRYAGAIN` mid-move
/// are refused (`unavailable`, nothing applied) and retried; after the move
/// `MOVED` reloads the slot map, the room's subscription moves to the new
/// owner and the room is repaired. The new owner is another Redis process,
/// so `c1` starts a new epoch, announced with `reset` (pessimistic: the
/// server cannot tell a moved slot from a failover that lost a tail); since
/// its keys were moved rather than lost, nothing is missing at all, not
/// even announced, and nothing is delivered twice or out of order.
/// Delivery resumes within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migrates() {
    let report = cluster_fault("cluster_migrate", AFTER, |c, slot| {
        c.redis_migrate_slot(slot).expect("slot migrated").0
    })
    .await;
    // Keys moved with the slot: nothing may be missing, announced or not.
    for p in &report.peers {
        assert!(
            p.announced.is_empty(),
            "{}: announced lost {:?}",
            p.name,
            p.announced
        );
    }
}
