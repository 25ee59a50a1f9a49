//! A connection's outbound queue: bounded, many producers (fan-out of every
//! room it is in), one consumer (its session task), and the slow-consumer
//! kick in the same place.
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

/// What the consumer gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// Frames were moved into the batch.
    Frames,
    /// The connection was kicked as a slow consumer.
    Kicked,
}

#[derive(Debug, Default)]
struct Inner {
    buf: VecDeque<Out>,
    waker: Option<Waker>,
    kicked: bool,
    closed: bool,
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
        if q.kicked {
            return Push::Full(false);
        }
        if q.buf.len() >= self.cap {
            q.kicked = true;
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

    /// Whether the consumer has been kicked.
    pub fn is_kicked(&self) -> bool {
        self.lock().kicked
    }

    /// Move up to `max` queued frames into `batch`; pending while empty.
    pub fn poll_recv(&self, cx: &mut Context<'_>, batch: &mut Vec<Out>, max: usize) -> Poll<Recv> {
        let mut q = self.lock();
        if q.kicked {
            return Poll::Ready(Recv::Kicked);
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

    /// Resolves when the consumer has been kicked.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = self.lock();
        if q.kicked {
            return Poll::Ready(());
        }
        register(&mut q.waker, cx);
        Poll::Pending
    }

    /// `poll_recv` as a future.
    pub async fn recv(&self, batch: &mut Vec<Out>, max: usize) -> Recv {
        std::future::poll_fn(|cx| self.poll_recv(cx, batch, max)).await
    }

    /// `poll_kicked` as a future.
    pub async fn kicked(&self) {
        std::future::poll_fn(|cx| self.poll_kicked(cx)).await
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
        Arc::new(Delivery {
            room: 1,
            offset,
            frame: "x".into(),
        })
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
        assert_eq!(batch.iter().map(|d| d.offset).collect::<Vec<_>>(), [1, 2, 3]);
        for i in 4..=6 {
            q.push(frame(i));
        }
        assert_eq!(q.push(frame(7)), Push::Full(true));
        assert_eq!(q.push(frame(8)), Push::Full(false));
        assert_eq!(q.recv(&mut batch, 10).await, Recv::Kicked);
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
