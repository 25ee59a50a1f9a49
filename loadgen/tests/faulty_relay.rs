//! The checker against a relay that misbehaves on purpose: every drop,
//! duplicate and reordering the relay commits must show up in loadgen's
//! report, and the thresholds must fail. A clean relay must give a clean
//! report. Everything runs on loopback with ephemeral ports.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use clap::Parser;
use loadgen::live::Mode;
use loadgen::opts::Opts;
use loadgen::relay::{self, Relay, RelayConfig};
use loadgen::report::Report;
use tokio_util::sync::CancellationToken;

async fn start_relay(cfg: RelayConfig) -> (Relay, CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    (relay::spawn(l, cfg, stop.clone()).unwrap(), stop)
}

async fn run(args: &[&str]) -> Report {
    let mut v = vec!["loadgen", "--quiet"];
    v.extend_from_slice(args);
    let opts = Opts::try_parse_from(v).unwrap();
    let fd = loadgen::sys::raise_fd_limit();
    let cfg = Arc::new(opts.resolve(fd.socket_budget()).unwrap());
    let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tally = loadgen::run_local(cfg.clone(), Mode::Quiet, fd, timeline)
        .await
        .unwrap();
    Report::new(&cfg, &tally)
}

fn apps3() -> Vec<String> {
    vec!["app1".into(), "app2".into(), "app3".into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_chat_relay_gives_a_clean_report() {
    // Four "instances" for three rooms, so rooms mix instances (with three,
    // round-robin would put each room on one instance).
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: vec!["app1".into(), "app2".into(), "app3".into(), "app4".into()],
        ..RelayConfig::default()
    })
    .await;
    let url = r.ws_url();
    let rep = run(&[
        "--url",
        &url,
        "--clients",
        "30",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "120",
        "--duration",
        "1s",
        "--grace",
        "2s",
        "--max-lost",
        "0",
        "--max-duplicated",
        "0",
        "--max-out-of-order",
        "0",
        "--min-instances",
        "4",
        "--min-cross-instance",
        "1",
        "--max-p99",
        "1s",
    ])
    .await;
    stop.cancel();
    let d = &rep.deliveries;
    assert_eq!(rep.connections.opened, 30);
    assert_eq!(rep.connections.per_app_id.values().sum::<u64>(), 30);
    assert_eq!(rep.connections.per_app_id.len(), 4);
    assert_eq!(rep.sends.sent, 120);
    // Each room has 10 members, each message reaches all of them.
    assert_eq!(d.expected, 1200);
    assert_eq!(
        (
            d.received,
            d.delivered,
            d.lost,
            d.duplicated,
            d.out_of_order
        ),
        (1200, 1200, 0, 0, 0)
    );
    assert_eq!(r.counters.deliveries.load(Relaxed), 1200);
    assert!(d.cross_instance > 0);
    assert_eq!(rep.matrix.iter().map(|c| c.count).sum::<u64>(), 1200);
    assert_eq!(rep.matrix.iter().map(|c| c.expected).sum::<u64>(), 1200);
    assert_eq!(rep.latency_us.count, 1200);
    assert!(rep.latency_us.p50 > 0 && rep.latency_us.p50 <= rep.latency_us.p99);
    assert!(rep.raw_latency_us.count == 1200);
    assert_eq!(rep.connect_us.count, 30);
    assert!(rep.thresholds.passed, "{:?}", rep.thresholds.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_faults_are_each_reported_and_fail_thresholds() {
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: apps3(),
        drop_every: 97,
        dup_every: 89,
        reorder_every: 83,
        ..RelayConfig::default()
    })
    .await;
    let url = r.ws_url();
    let rep = run(&[
        "--url",
        &url,
        "--clients",
        "30",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "120",
        "--duration",
        "1s",
        "--grace",
        "1s",
        "--max-lost",
        "0",
        "--max-duplicated",
        "0",
        "--max-out-of-order",
        "0",
    ])
    .await;
    stop.cancel();
    let c = &r.counters;
    let (dropped, dup, reordered) = (
        c.dropped.load(Relaxed),
        c.duplicated.load(Relaxed),
        c.reordered.load(Relaxed),
    );
    assert!(
        dropped >= 12 && dup >= 13 && reordered >= 14,
        "{dropped} {dup} {reordered}"
    );
    let d = &rep.deliveries;
    assert_eq!(d.expected, 1200);
    assert_eq!(d.lost, dropped, "every dropped delivery is reported lost");
    assert_eq!(d.duplicated, dup, "every duplicate is reported");
    // A held frame that had no successor within 50 ms went out late but not
    // out of order; every real swap breaks the room's offset order.
    assert!(
        d.out_of_order > 0 && d.out_of_order <= reordered,
        "{} vs {reordered}",
        d.out_of_order
    );
    assert_eq!(d.received, 1200 - dropped + dup);
    assert!(d.receivers_with_loss > 0);
    assert_eq!(rep.matrix.iter().map(|c| c.lost).sum::<u64>(), dropped);
    let failed: Vec<&str> = rep.thresholds.failed.iter().map(|b| b.flag).collect();
    assert_eq!(
        failed,
        vec!["--max-lost", "--max-duplicated", "--max-out-of-order"]
    );
    assert!(!rep.thresholds.passed);
}

/// The chat run both shuffled-relay tests use: 30 clients in 3 rooms, 120
/// messages, 1200 deliveries owed.
async fn shuffled_run(url: &str) -> Report {
    run(&[
        "--url",
        url,
        "--clients",
        "30",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "120",
        "--duration",
        "1s",
        "--grace",
        "2s",
        "--max-lost",
        "0",
        "--max-duplicated",
        "0",
        "--max-out-of-order",
        "0",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_field_order_is_read_and_clean() {
    // The same fields in another order (valid JSON, no faults): every
    // message misses the fast path and must still be read.
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: apps3(),
        shuffle: true,
        ..RelayConfig::default()
    })
    .await;
    let rep = shuffled_run(&r.ws_url()).await;
    stop.cancel();
    let d = &rep.deliveries;
    assert_eq!(rep.connections.opened, 30, "{:?}", rep.errors);
    assert_eq!(d.expected, 1200);
    assert_eq!(
        (
            d.received,
            d.delivered,
            d.lost,
            d.duplicated,
            d.out_of_order
        ),
        (1200, 1200, 0, 0, 0)
    );
    assert_eq!(rep.frames.fallback_parsed, 1200);
    assert_eq!(rep.frames.unrecognized, 0, "{:?}", rep.frames.samples);
    assert!(rep.thresholds.passed, "{:?}", rep.thresholds.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_field_order_with_faults_fails_with_them_counted() {
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: apps3(),
        shuffle: true,
        drop_every: 97,
        dup_every: 89,
        ..RelayConfig::default()
    })
    .await;
    let rep = shuffled_run(&r.ws_url()).await;
    stop.cancel();
    let c = &r.counters;
    let (dropped, dup) = (c.dropped.load(Relaxed), c.duplicated.load(Relaxed));
    assert!(dropped >= 12 && dup >= 13, "{dropped} {dup}");
    let d = &rep.deliveries;
    assert_eq!(d.expected, 1200);
    assert_eq!(d.lost, dropped, "every dropped delivery is reported lost");
    assert_eq!(d.duplicated, dup, "every duplicate is reported");
    assert_eq!(d.out_of_order, 0);
    assert_eq!(d.received, 1200 - dropped + dup);
    assert_eq!(rep.frames.unrecognized, 0);
    let failed: Vec<&str> = rep.thresholds.failed.iter().map(|b| b.flag).collect();
    assert_eq!(failed, vec!["--max-lost", "--max-duplicated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_and_retries_with_the_same_id() {
    // Every 40th send is published to everyone but its sender, whose
    // connection is then cut: the sender must resume (getting its own
    // message from the replay) and retry with the same id, which the relay
    // answers `sent {duplicate: true}`. Nothing may be lost or doubled.
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: apps3(),
        cut_sender_every: 40,
        ..RelayConfig::default()
    })
    .await;
    let rep = run(&[
        "--url",
        &r.ws_url(),
        "--clients",
        "30",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "120",
        "--duration",
        "2s",
        "--grace",
        "2s",
        "--reconnect",
        "--max-lost",
        "0",
        "--max-duplicated",
        "0",
        "--max-out-of-order",
        "0",
    ])
    .await;
    stop.cancel();
    let c = &r.counters;
    let cut = c.cut.load(Relaxed);
    assert!(cut >= 5, "{cut}");
    let k = &rep.connections;
    assert_eq!(
        (k.disconnects, k.reconnects, k.dropped),
        (cut, cut, 0),
        "{:?}",
        rep.errors
    );
    assert_eq!(c.resumes.load(Relaxed), cut);
    let d = &rep.deliveries;
    assert_eq!(d.expected, 2400, "{:?}", rep.errors);
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0));
    assert_eq!(rep.sends.unconfirmed, 0);
    // Each cut send went out unanswered and came back in the replay; a
    // retry of it found the original. (An answer can be lost when the
    // sender is cut again before it went out; the replay confirmed it.)
    assert!(rep.sends.retried >= cut, "{:?}", rep.sends);
    let answered = c.duplicates_answered.load(Relaxed);
    assert!(
        rep.sends.confirmed_duplicate > 0 && rep.sends.confirmed_duplicate <= answered,
        "{} of {answered}",
        rep.sends.confirmed_duplicate
    );
    // One recovery per loss, unless a sender was cut again before its
    // first delivery after resuming (then the first loss counts).
    assert!(
        rep.recovery_us.count > 0 && rep.recovery_us.count <= cut,
        "{:?}",
        rep.recovery_us
    );
    assert!(rep.thresholds.passed, "{:?}", rep.thresholds.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_cut_sender_is_dropped_not_blamed() {
    let (r, stop) = start_relay(RelayConfig {
        chat: true,
        app_ids: apps3(),
        cut_sender_every: 100,
        ..RelayConfig::default()
    })
    .await;
    let rep = run(&[
        "--url",
        &r.ws_url(),
        "--clients",
        "30",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "120",
        "--duration",
        "1s",
        "--grace",
        "1s",
    ])
    .await;
    stop.cancel();
    let cut = r.counters.cut.load(Relaxed);
    assert!(cut >= 1);
    assert_eq!(rep.connections.dropped, cut);
    assert_eq!(rep.connections.reconnects, 0);
    assert_eq!(rep.deliveries.lost, 0, "{:?}", rep.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_reads_the_greeting_and_catches_faults() {
    // One sender, so that every swap is a per-sender order violation (raw
    // relays have no offsets).
    let (r, stop) = start_relay(RelayConfig {
        chat: false,
        app_ids: vec!["node-a".into(), "node-b".into()],
        drop_every: 40,
        dup_every: 45,
        reorder_every: 0,
        ..RelayConfig::default()
    })
    .await;
    let url = r.ws_url();
    let rep = run(&[
        "--protocol",
        "raw",
        "--url",
        &url,
        "--clients",
        "10",
        "--senders",
        "1",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--size",
        "200",
        "--grace",
        "1s",
        "--max-lost",
        "0",
    ])
    .await;
    stop.cancel();
    let c = &r.counters;
    assert_eq!(rep.connections.per_app_id.get("node-a"), Some(&5));
    assert_eq!(rep.connections.per_app_id.get("node-b"), Some(&5));
    let d = &rep.deliveries;
    assert_eq!(d.expected, 1000);
    assert_eq!(d.lost, c.dropped.load(Relaxed));
    assert_eq!(d.duplicated, c.duplicated.load(Relaxed));
    assert!(d.lost > 0 && d.duplicated > 0);
    assert!(d.cross_instance > 0);
    assert_eq!(rep.thresholds.failed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_reordering_is_caught() {
    let (r, stop) = start_relay(RelayConfig {
        reorder_every: 7,
        ..RelayConfig::default()
    })
    .await;
    let url = r.ws_url();
    let rep = run(&[
        "--protocol",
        "raw",
        "--url",
        &url,
        "--clients",
        "5",
        "--senders",
        "1",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--grace",
        "1s",
        "--max-out-of-order",
        "0",
    ])
    .await;
    stop.cancel();
    let reordered = r.counters.reordered.load(Relaxed);
    let d = &rep.deliveries;
    assert_eq!((d.lost, d.duplicated), (0, 0));
    assert!(
        d.out_of_order > reordered / 2 && d.out_of_order <= reordered,
        "{} of {reordered}",
        d.out_of_order
    );
    assert_eq!(rep.thresholds.failed[0].flag, "--max-out-of-order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_by_kind() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let rep = run(&[
        "--url",
        &url,
        "--clients",
        "5",
        "--duration",
        "100ms",
        "--grace",
        "0s",
        "--max-failed-connections",
        "0",
    ])
    .await;
    assert_eq!(rep.connections.failed, 5);
    assert_eq!(rep.connections.opened, 0);
    assert_eq!(rep.errors.get("connect: connection refused"), Some(&5));
    assert_eq!(rep.thresholds.failed[0].flag, "--max-failed-connections");
}
