//! A connection's outbound queue: bounded, many producers (fan-out of every
//! room it is in), one consumer (its session task), and the reason to stop
//! (slow consumer, shutdown) in the same place: the session polls one lock,
//! not a shared cancellation token that every socket would contend on.
//!
//! Not a tokio mpsc: that allocates about a kilobyte per channel up front
//! (cache-padded fields and a first block of slots), which would dominate
//! the memory of an idle connection. This is one small allocation, no
//! buffer until something is queued, and one lock per push.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::hub::Out;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue was full: the frame was dropped and the connection kicked.
    /// `true` the first time (count it once).
    Full(bool),
    /// The connection is gone; nothing was queued.
    Closed,
}

/// Why the connection must end, as told through its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its queue filled: a slow consumer.
    SlowConsumer,
    /// The server is shutting down.
    Restart,
}

/// What the consumer gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// Frames were moved into the batch.
    Frames,
    /// Redis was replaced and may have lost presence: record it again.
    Refresh,
    /// The connection must end.
    Stop(Stop),
}

#[derive(Debug, Default)]
struct Inner {
    buf: VecDeque<Out>,
    waker: Option<Waker>,
    stop: Option<Stop>,
    closed: bool,
    /// Asked to record presence again (see [`Recv::Refresh`]).
    refresh: bool,
}

/// The queue; share it as `Arc<Outbox>`.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    cap: usize,
}

impl Outbox {
    /// A queue of at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a frame, or kick the consumer if the queue is full.
    pub fn push(&self, frame: Out) -> Push {
        let mut q = self.lock();
        if q.closed {
            return Push::Closed;
        }
        if q.stop.is_some() {
            return Push::Full(false);
        }
        if q.buf.len() >= self.cap {
            q.stop = Some(Stop::SlowConsumer);
            let w = q.waker.take();
            drop(q);
            if let Some(w) = w {
                w.wake();
            }
            return Push::Full(true);
        }
        q.buf.push_back(frame);
        // Wake only on the first frame after the consumer went to sleep:
        // later frames ride along in the same batch.
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
        Push::Queued
    }

    /// Mark the connection gone: later pushes are refused.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.buf = VecDeque::new();
    }

    /// Tell the consumer to stop (shutdown); wakes it. A stop already
    /// given stands.
    pub fn stop(&self, why: Stop) {
        let mut q = self.lock();
        if q.stop.is_none() {
            q.stop = Some(why);
        }
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Ask the consumer to record its presence again; wakes it.
    pub fn refresh(&self) {
        let mut q = self.lock();
        q.refresh = true;
        let w = q.waker.take();
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Move up to `max` queued frames into `batch`; pending while empty.
    pub fn poll_recv(&self, cx: &mut Context<'_>, batch: &mut Vec<Out>, max: usize) -> Poll<Recv> {
        let mut q = self.lock();
        if let Some(why) = q.stop {
            return Poll::Ready(Recv::Stop(why));
        }
        if std::mem::take(&mut q.refresh) {
            return Poll::Ready(Recv::Refresh);
        }
        if q.buf.is_empty() {
            register(&mut q.waker, cx);
            return Poll::Pending;
        }
        let n = q.buf.len().min(max);
        batch.extend(q.buf.drain(..n));
        if q.buf.is_empty() && q.buf.capacity() > 64 {
            // A burst grew it; an idle connection goes back to no buffer.
            q.buf = VecDeque::new();
        }
        Poll::Ready(Recv::Frames)
    }

    /// Resolves when the consumer must stop.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<Stop> {
        let mut q = self.lock();
        if let Some(why) = q.stop {
            return Poll::Ready(why);
        }
        register(&mut q.waker, cx);
        Poll::Pending
    }

    /// `poll_recv` as a future.
    pub async fn recv(&self, batch: &mut Vec<Out>, max: usize) -> Recv {
        std::future::poll_fn(|cx| self.poll_recv(cx, batch, max)).await
    }

    /// `poll_stopped` as a future.
    pub async fn stopped(&self) -> Stop {
        std::future::poll_fn(|cx| self.poll_stopped(cx)).await
    }
}

/// Every live session's outbox, so shutdown can tell each one to close.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<std::collections::HashMap<u64, Arc<Outbox>>>,
}

/// Removes a session from [`Sessions`] when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    sessions: &'a Sessions,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<u64, Arc<Outbox>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a session until the returned guard drops.
    pub fn register(&self, id: u64, outbox: Arc<Outbox>) -> Registration<'_> {
        self.lock().insert(id, outbox);
        Registration { sessions: self, id }
    }

    /// Ask every session to record its presence again.
    pub fn refresh_all(&self) {
        let all: Vec<Arc<Outbox>> = self.lock().values().cloned().collect();
        for o in all {
            o.refresh();
        }
    }

    /// Tell every session to stop.
    pub fn stop_all(&self, why: Stop) {
        let all: Vec<Arc<Outbox>> = self.lock().values().cloned().collect();
        for o in all {
            o.stop(why);
        }
    }
}

fn register(slot: &mut Option<Waker>, cx: &mut Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Delivery;

    fn frame(offset: u64) -> Out {
        Out(Arc::new(Delivery {
            room: 1,
            offset,
            epoch: Arc::from("e"),
            frame: "x".into(),
        }))
    }

    #[tokio::test]
    async fn batches_kicks_and_closes() {
        let q = Outbox::new(3);
        for i in 1..=3 {
            assert_eq!(q.push(frame(i)), Push::Queued);
        }
        let mut batch = Vec::new();
        assert_eq!(q.recv(&mut batch, 2).await, Recv::Frames);
        assert_eq!(batch.len(), 2);
        assert_eq!(q.recv(&mut batch, 10).await, Recv::Frames);
        assert_eq!(
            batch.iter().map(|d| d.offset).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for i in 4..=6 {
            q.push(frame(i));
        }
        assert_eq!(q.push(frame(7)), Push::Full(true));
        assert_eq!(q.push(frame(8)), Push::Full(false));
        assert_eq!(q.recv(&mut batch, 10).await, Recv::Stop(Stop::SlowConsumer));
        q.stop(Stop::Restart);
        assert_eq!(
            q.stopped().await,
            Stop::SlowConsumer,
            "the first stop stands"
        );
        q.close();
        assert_eq!(q.push(frame(9)), Push::Closed);
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_consumer() {
        let q = Outbox::new(8);
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let mut batch = Vec::new();
            q2.recv(&mut batch, 8).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        q.push(frame(1));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
