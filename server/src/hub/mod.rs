//! The local side of fan-out: which local sockets are in which room, and the
//! one Redis pub/sub connection of this instance ([`subscriber`]).
//!
//! - The instance subscribes only to rooms with local members. Joining the
//!   first local member of a room waits until Redis confirms the
//!   subscription *and* the room's baseline (epoch and head) has been read,
//!   so nothing published after the join can be missed.
//! - Each frame from Redis is turned into one [`Delivery`] (one allocation
//!   per message per instance) and the same bytes go to every local member
//!   through its bounded [`Outbox`]: a full queue never blocks the room; the
//!   member is kicked as a slow consumer instead.
//! - The hub remembers each room's epoch and last offset. Within an epoch,
//!   a message at or below the last offset is a duplicate and is dropped;
//!   a jump is repaired from history first; what history no longer holds is
//!   announced with a `gap`. A new epoch is announced with a `reset` and
//!   never causes a drop. See DELIVERY.md for the whole invariant.

mod conn;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::ServerFrame;
use tokio::sync::{oneshot, Notify};

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Push};

/// The epoch of a room whose baseline is not read yet: one shared
/// allocation, not one per room and connection.
pub fn no_epoch() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// Identifies one incarnation of a room in this hub.
pub type RoomKey = u32;

/// One frame on its way to local sockets, shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    /// The room it belongs to (for per-session resume dedupe).
    pub room: RoomKey,
    /// The chat offset, or 0 for frames without one (presence, gap, reset).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: Arc<str>,
    /// The exact bytes every member receives.
    /// (Valid UTF-8: checked once when it arrives from Redis.)
    pub frame: Bytes,
}

/// What a socket's outbound queue holds: a pointer, so a queue slot is one
/// word and a delivery costs one reference-count increment. It is written
/// to the socket as it is (see [`crate::ws::WsStream::send_texts`]).
#[derive(Debug, Clone)]
pub struct Out(pub Arc<Delivery>);

impl std::ops::Deref for Out {
    type Target = Delivery;
    fn deref(&self) -> &Delivery {
        &self.0
    }
}

impl AsRef<[u8]> for Out {
    fn as_ref(&self) -> &[u8] {
        &self.0.frame
    }
}

/// A local socket as the hub sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The session's local id.
    pub id: u64,
    /// Its bounded outbound queue (and kick switch).
    pub outbox: Arc<Outbox>,
}

#[derive(Debug)]
struct Room {
    key: RoomKey,
    members: Vec<Member>,
    /// Redis confirmed the subscription on the current connection and the
    /// baseline below was read after that.
    subscribed: bool,
    /// Joins waiting for the subscription.
    waiters: Vec<oneshot::Sender<()>>,
    /// The epoch of `last_offset`; empty until the baseline is read.
    epoch: Arc<str>,
    /// The last chat offset delivered (or the baseline head).
    last_offset: u64,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("redis pub/sub is unavailable; try again")]
    Unavailable,
}

/// A cheap-to-clone handle on the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    rooms: Mutex<HashMap<Arc<str>, Room>>,
    next_key: AtomicU32,
    /// "The set of rooms changed: reconcile subscriptions."
    dirty: Notify,
    metrics: Arc<Metrics>,
    join_timeout: Duration,
    /// When the subscriber last heard its own liveness probe (ms since the
    /// epoch; 0: not since it connected).
    probe_heard_ms: AtomicU64,
    /// A probe older than this means the subscription is dead.
    probe_timeout: Duration,
    /// Idle outboxes a fan-out queued into, for the flusher to write.
    pending: Mutex<Vec<Arc<Outbox>>>,
    /// "Outboxes are pending."
    flush_wake: Notify,
    /// The flusher task runs (else every fan-out flushes itself).
    flusher: std::sync::atomic::AtomicBool,
}

/// What a chat frame did to a room's sequence.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The next offset of the current epoch: deliver.
    Next,
    /// Already delivered: drop.
    Duplicate,
    /// Offsets are missing before it, or it belongs to another epoch:
    /// repair from history first.
    Repair,
    /// The room has no local members (any more).
    Gone,
}

impl Hub {
    /// A hub; call [`Hub::run_subscriber`] to connect it to Redis.
    pub fn new(metrics: Arc<Metrics>, join_timeout: Duration, probe_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                rooms: Mutex::new(HashMap::new()),
                next_key: AtomicU32::new(1),
                dirty: Notify::new(),
                metrics,
                join_timeout,
                probe_heard_ms: AtomicU64::new(0),
                probe_timeout,
                pending: Mutex::new(Vec::new()),
                flush_wake: Notify::new(),
                flusher: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Room>> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.shared
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hand the idle outboxes of a fan-out to the flusher task, which
    /// writes to them while the subscriber goes on reading: under load one
    /// write then carries every frame that arrived meanwhile, and the
    /// subscriber never waits for a socket. Without a flusher (unit
    /// tests), write now.
    fn defer(&self, idle: Vec<Arc<Outbox>>) {
        if idle.is_empty() {
            return;
        }
        if !self.shared.flusher.load(Relaxed) {
            flush(&self.shared.metrics, idle);
            return;
        }
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let was_empty = pending.is_empty();
        pending.extend(idle);
        drop(pending);
        if was_empty {
            self.shared.flush_wake.notify_one();
        }
    }

    /// The flusher: write to the outboxes fan-outs left pending (see
    /// [`Hub::defer`]) until shutdown. With `delay` (`--write-delay`),
    /// each round of writes waits that long after the first delivery of
    /// the round, so that a busy room's frames share writes (less CPU per
    /// delivery, that much more latency).
    pub async fn run_flusher(self, shutdown: tokio_util::sync::CancellationToken, delay: Duration) {
        self.shared.flusher.store(true, Relaxed);
        loop {
            let batch = std::mem::take(
                &mut *self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if batch.is_empty() {
                tokio::select! {
                    _ = self.shared.flush_wake.notified() => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        continue;
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
            flush(&self.shared.metrics, batch);
        }
        // Whatever is left: write it here (the sessions are closing).
        self.shared.flusher.store(false, Relaxed);
        let rest = std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        flush(&self.shared.metrics, rest);
    }

    /// Whether the subscription is up and has heard its own probe lately.
    pub fn live(&self) -> bool {
        let heard = self.shared.probe_heard_ms.load(Relaxed);
        heard > 0
            && crate::now_ms().saturating_sub(heard) <= self.shared.probe_timeout.as_millis() as u64
    }

    /// Add a local member to a room, subscribing the instance if it is the
    /// room's first local member. Returns once deliveries are flowing.
    pub async fn join(&self, room: &str, member: Member) -> Result<RoomKey, HubError> {
        let id = member.id;
        let (key, wait) = {
            let mut rooms = self.rooms();
            let r = rooms.entry(Arc::from(room)).or_insert_with(|| {
                self.shared.metrics.rooms.fetch_add(1, Relaxed);
                Room {
                    key: self.shared.next_key.fetch_add(1, Relaxed),
                    members: Vec::new(),
                    subscribed: false,
                    waiters: Vec::new(),
                    epoch: no_epoch(),
                    last_offset: 0,
                }
            });
            r.members.push(member);
            if r.subscribed {
                return Ok(r.key);
            }
            let (tx, rx) = oneshot::channel();
            r.waiters.push(tx);
            (r.key, rx)
        };
        self.shared.dirty.notify_one();
        match tokio::time::timeout(self.shared.join_timeout, wait).await {
            Ok(Ok(())) => Ok(key),
            _ => {
                self.leave(room, id);
                Err(HubError::Unavailable)
            }
        }
    }

    /// Remove a local member from a room (a no-op if it is not there).
    pub fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get_mut(room) {
            r.members.retain(|m| m.id != id);
            if r.members.is_empty() {
                rooms.remove(room);
                self.shared.metrics.rooms.fetch_sub(1, Relaxed);
                self.shared.dirty.notify_one();
            }
        }
    }

    /// `epoch` as an `Arc`, shared with the room's own when they are the
    /// same (every session of a room then holds one allocation, not its
    /// own copy).
    pub fn epoch_arc(&self, room: &str, epoch: &str) -> Arc<str> {
        match self.rooms().get(room) {
            Some(r) if *r.epoch == *epoch => r.epoch.clone(),
            _ if epoch.is_empty() => no_epoch(),
            _ => Arc::from(epoch),
        }
    }

    /// The rooms that have local members.
    pub fn room_names(&self) -> Vec<Arc<str>> {
        self.rooms().keys().cloned().collect()
    }

    /// Where a chat frame at `offset` of `epoch` stands in `room`.
    fn step(&self, room: &str, offset: u64, epoch: &str) -> Step {
        self.rooms()
            .get(room)
            .map_or(Step::Gone, |r| step_of(r, offset, epoch))
    }

    /// Deliver a chat frame if it is the room's next one, under one lock
    /// (the common case of every message); otherwise say where it stands.
    fn deliver_if_next(&self, room: &str, offset: u64, epoch: &str, frame: Bytes) -> Step {
        let mut idle = Vec::new();
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return Step::Gone;
        };
        let step = step_of(r, offset, epoch);
        if step == Step::Next {
            r.last_offset = offset;
            push(&self.shared.metrics, r, offset, frame, &mut idle);
        }
        drop(rooms);
        self.defer(idle);
        step
    }

    /// Hand a chat frame to every local member, after a `reset` if it
    /// starts a new epoch or a `gap` if offsets before it are missing from
    /// history. Only called with frames that history vouches for (repair)
    /// (live frames go through [`Hub::deliver_if_next`]).
    fn deliver_chat(&self, room: &str, offset: u64, epoch: &str, frame: Bytes) {
        let mut idle = Vec::new();
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        if *r.epoch == *epoch {
            if offset <= r.last_offset {
                return;
            }
            let expected = r.last_offset.saturating_add(1);
            if offset > expected {
                let gap = gap_frame(room, expected, offset - 1);
                self.shared.metrics.gaps.fetch_add(1, Relaxed);
                tracing::warn!(
                    room,
                    from = expected,
                    to = offset - 1,
                    "messages lost to every local member: sending a gap notice"
                );
                push(&self.shared.metrics, r, 0, gap, &mut idle);
            }
        } else {
            self.switch_epoch(room, r, epoch, offset.saturating_sub(1), &mut idle);
        }
        r.last_offset = offset;
        push(&self.shared.metrics, r, offset, frame, &mut idle);
        drop(rooms);
        self.defer(idle);
    }

    /// Announce that `room` moved to `epoch`, whose offsets continue after
    /// `at`.
    fn switch_epoch(
        &self,
        room: &str,
        r: &mut Room,
        epoch: &str,
        at: u64,
        idle: &mut Vec<Arc<Outbox>>,
    ) {
        if !r.epoch.is_empty() {
            tracing::warn!(room, from = %r.epoch, to = epoch, last = r.last_offset, "room started a new epoch: announcing a reset");
            self.shared.metrics.epoch_resets.fetch_add(1, Relaxed);
            let reset = ServerFrame::Reset {
                room: room.to_string(),
                epoch: epoch.to_string(),
                previous: r.epoch.to_string(),
                last: r.last_offset,
            }
            .to_json();
            r.epoch = Arc::from(epoch);
            push(&self.shared.metrics, r, 0, Bytes::from(reset), idle);
        } else {
            r.epoch = Arc::from(epoch);
        }
        r.last_offset = at;
    }

    /// Hand a frame without an offset (presence) to every local member.
    fn deliver_plain(&self, room: &str, frame: Bytes) {
        let mut idle = Vec::new();
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get_mut(room) {
            push(&self.shared.metrics, r, 0, frame, &mut idle);
        }
        drop(rooms);
        self.defer(idle);
    }
}

fn step_of(r: &Room, offset: u64, epoch: &str) -> Step {
    if *r.epoch != *epoch {
        Step::Repair
    } else if offset <= r.last_offset {
        Step::Duplicate
    } else if offset == r.last_offset.saturating_add(1) {
        Step::Next
    } else {
        Step::Repair
    }
}

/// Write to the idle outboxes [`push`] left asleep: straight to their
/// sockets when the kernel takes it, else by waking their tasks.
fn flush(metrics: &Metrics, idle: Vec<Arc<Outbox>>) {
    let mut direct = 0u64;
    for o in idle {
        direct += u64::from(o.flush() > 0);
    }
    if direct > 0 {
        metrics.ws_flushes.fetch_add(direct, Relaxed);
        metrics.ws_direct_flushes.fetch_add(direct, Relaxed);
    }
}

fn gap_frame(room: &str, from: u64, to: u64) -> Bytes {
    Bytes::from(
        ServerFrame::Gap {
            room: room.to_string(),
            from,
            to,
        }
        .to_json(),
    )
}

/// Queue one frame for every member of `r`. Members whose outbox was idle
/// are not woken but added to `idle`: write to them with [`flush`] once
/// the hub's lock is released.
fn push(metrics: &Metrics, r: &Room, offset: u64, frame: Bytes, idle: &mut Vec<Arc<Outbox>>) {
    let d = Out(Arc::new(Delivery {
        room: r.key,
        offset,
        epoch: r.epoch.clone(),
        frame,
    }));
    let (mut sent, mut dropped, mut kicked) = (0u64, 0u64, 0u64);
    for m in &r.members {
        match m.outbox.push(d.clone()) {
            Push::Queued => sent += 1,
            Push::Idle => {
                sent += 1;
                idle.push(m.outbox.clone());
            }
            Push::Full(first) => {
                dropped += 1;
                kicked += u64::from(first);
            }
            Push::Closed => {}
        }
    }
    metrics.deliveries.fetch_add(sent, Relaxed);
    if dropped > 0 {
        metrics.fanout_drops.fetch_add(dropped, Relaxed);
        metrics.slow_consumers.fetch_add(kicked, Relaxed);
    }
}
