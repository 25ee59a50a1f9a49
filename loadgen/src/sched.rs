//! The open-loop send schedule, kept by one OS thread per process.
//!
//! Message `k` of the run is due at `start + k / rate` and belongs to
//! sender `k mod senders` (its sequence number is `k div senders`), so the
//! aggregate is exactly `--rate`, evenly spaced, whatever the senders do.
//! The thread sleeps with `std::thread::sleep` (tens of µs of overshoot,
//! against tokio timers' 1 ms granularity, which would otherwise show up as
//! up to a millisecond of latency that the tool, not the server, caused)
//! and hands each due [`Tick`] to its sender's bounded queue. A sender that
//! cannot keep up gets its ticks late: the latency from the scheduled time
//! shows it (coordinated omission corrected). If a sender's queue fills,
//! the tick is counted as an error, never silently dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// Ticks a sender may have queued before the scheduler reports it stuck.
pub const QUEUE: usize = 4096;

/// One scheduled send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub seq: u32,
    pub sched: Instant,
}

/// The due time of message `k`.
pub fn due(start: Instant, rate: f64, k: u64) -> Instant {
    start + Duration::from_secs_f64(k as f64 / rate)
}

/// Run the schedule from `start` until `end` or `stop`. `queues[j]` is
/// global sender `j`'s queue if it lives in this process.
pub fn spawn(
    queues: Vec<Option<mpsc::Sender<Tick>>>,
    rate: f64,
    start: Instant,
    end: Instant,
    stop: CancellationToken,
    stats: Arc<Stats>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("loadgen-sched".into())
        .spawn(move || run(&queues, rate, start, end, &stop, &stats))
        .expect("spawning the scheduler thread")
}

fn run(
    queues: &[Option<mpsc::Sender<Tick>>],
    rate: f64,
    start: Instant,
    end: Instant,
    stop: &CancellationToken,
    stats: &Stats,
) {
    let senders = queues.len() as u64;
    if senders == 0 || rate <= 0.0 {
        return;
    }
    let mut k = 0u64;
    loop {
        let t = due(start, rate, k);
        if t >= end || stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        if t > now {
            // Sleep in slices so that a stop is noticed within 50 ms.
            std::thread::sleep((t - now).min(Duration::from_millis(50)));
            continue;
        }
        let j = (k % senders) as usize;
        if let Some(q) = &queues[j] {
            let tick = Tick {
                seq: (k / senders) as u32,
                sched: t,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = q.try_send(tick) {
                stats.error("send: sender queue full (a sender fell more than 4096 sends behind)");
            }
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_evenly_spaced_and_round_robin() {
        let stats = Arc::new(Stats::new(1));
        let (tx0, mut rx0) = mpsc::channel(QUEUE);
        let (tx2, mut rx2) = mpsc::channel(QUEUE);
        let start = Instant::now();
        // 3 senders, only 0 and 2 local; 300/s for 100 ms → 30 ticks.
        let h = spawn(
            vec![Some(tx0), None, Some(tx2)],
            300.0,
            start,
            start + Duration::from_millis(100),
            CancellationToken::new(),
            stats,
        );
        h.join().unwrap();
        let mut a = Vec::new();
        while let Ok(t) = rx0.try_recv() {
            a.push(t);
        }
        let mut b = Vec::new();
        while let Ok(t) = rx2.try_recv() {
            b.push(t);
        }
        assert_eq!(a.len(), 10);
        assert_eq!(b.len(), 10);
        assert_eq!(
            a.iter().map(|t| t.seq).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // Sender 2's message k is global message 3k+2, due at (3k+2)/300 s.
        assert_eq!(b[4].sched, due(start, 300.0, 14));
        assert_eq!(
            a[1].sched - a[0].sched,
            Duration::from_secs_f64(3.0 / 300.0)
        );
    }

    #[test]
    fn stops_when_told() {
        let stats = Arc::new(Stats::new(1));
        let (tx, _rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let start = Instant::now();
        let h = spawn(
            vec![Some(tx)],
            1.0,
            start,
            start + Duration::from_secs(3600),
            stop.clone(),
            stats,
        );
        stop.cancel();
        let t = Instant::now();
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
