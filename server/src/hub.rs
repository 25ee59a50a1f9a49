//! The local side of fan-out: which local sockets are in which room, and the
//! one Redis pub/sub connection of this instance.
//!
//! - The instance subscribes only to rooms with local members. Joining the
//!   first local member of a room waits until Redis confirms the
//!   subscription, so that nothing published after the join can be missed.
//! - The subscriber task owns the pub/sub connection. It reconciles the
//!   subscribed set with the rooms that have members (level-triggered: a
//!   [`Notify`] says "look again", so no command queue can grow), and on
//!   losing Redis it reconnects with backoff and resubscribes by itself.
//! - Each frame from Redis is turned into one [`Delivery`] (one allocation
//!   per message per instance) and the same bytes go to every local member
//!   through its bounded [`Outbox`]: a full queue never blocks the room; the
//!   member is kicked as a slow consumer instead.
//! - The hub remembers each room's last offset. A jump (the subscriber
//!   missed messages, e.g. while Redis restarted) is repaired from history
//!   before the new message goes out; what history no longer holds is
//!   announced with a `gap` frame. Never a silent hole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::splice::peek_offset;
use chat_protocol::ServerFrame;
use futures_util::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Push};
use crate::store::{self, Store};

/// Identifies one incarnation of a room in this hub.
pub type RoomKey = u32;

/// One frame on its way to local sockets, shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    /// The room it belongs to (for per-session resume dedupe).
    pub room: RoomKey,
    /// The chat offset, or 0 for frames without one (presence, gap).
    pub offset: u64,
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
    /// Redis has confirmed the subscription on the current connection.
    subscribed: bool,
    /// Joins waiting for the subscription.
    waiters: Vec<oneshot::Sender<()>>,
    /// The last chat offset delivered, 0 if none yet.
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
}

impl Hub {
    /// A hub; call [`Hub::run_subscriber`] to connect it to Redis.
    pub fn new(metrics: Arc<Metrics>, join_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                rooms: Mutex::new(HashMap::new()),
                next_key: AtomicU32::new(1),
                dirty: Notify::new(),
                metrics,
                join_timeout,
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

    /// The rooms that have local members.
    pub fn room_names(&self) -> Vec<Arc<str>> {
        self.rooms().keys().cloned().collect()
    }

    /// Hand `frame` to every local member of `room`. Chat frames (offset >
    /// 0) at or below the room's last offset were already delivered and are
    /// dropped, so a repair and a late live copy never duplicate.
    fn deliver(&self, room: &str, offset: u64, frame: Bytes) {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        if offset > 0 {
            if offset <= r.last_offset {
                return;
            }
            r.last_offset = offset;
        }
        let d = Out(Arc::new(Delivery {
            room: r.key,
            offset,
            frame,
        }));
        let (mut sent, mut dropped, mut kicked) = (0u64, 0u64, 0u64);
        for m in &r.members {
            match m.outbox.push(d.clone()) {
                Push::Queued => sent += 1,
                Push::Full(first) => {
                    dropped += 1;
                    kicked += u64::from(first);
                }
                Push::Closed => {}
            }
        }
        drop(rooms);
        let m = &self.shared.metrics;
        m.deliveries.fetch_add(sent, Relaxed);
        if dropped > 0 {
            m.fanout_drops.fetch_add(dropped, Relaxed);
            m.slow_consumers.fetch_add(kicked, Relaxed);
        }
    }

    fn last_offset(&self, room: &str) -> Option<u64> {
        self.rooms().get(room).map(|r| r.last_offset)
    }

    /// Deliver a chat frame from Redis, first repairing any offsets the
    /// subscriber missed since the room's last one.
    async fn deliver_chat(&self, store: &Store, room: &str, offset: u64, frame: Bytes) {
        if let Some(last) = self.last_offset(room) {
            if last > 0 && offset > last + 1 {
                self.repair(store, room, last, offset - 1).await;
            }
        }
        self.deliver(room, offset, frame);
    }

    /// Deliver offsets `last+1..=to` from history, and a gap frame for any
    /// part history no longer holds.
    async fn repair(&self, store: &Store, room: &str, last: u64, to: u64) {
        let from = last + 1;
        let entries = match store.range(room, from, to).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(room, from, to, error = %e, "cannot repair missed messages from history");
                Vec::new()
            }
        };
        let mut expect = from;
        for (off, frame) in entries {
            if off > expect {
                self.gap(room, expect, off - 1);
            }
            if std::str::from_utf8(&frame).is_ok() {
                self.shared.metrics.repaired.fetch_add(1, Relaxed);
                self.deliver(room, off, frame);
            }
            expect = off + 1;
        }
        if expect <= to {
            self.gap(room, expect, to);
            // Later offsets of the hole must not be repaired again.
            if let Some(r) = self.rooms().get_mut(room) {
                r.last_offset = r.last_offset.max(to);
            }
        }
    }

    fn gap(&self, room: &str, from: u64, to: u64) {
        tracing::warn!(
            room,
            from,
            to,
            "messages lost to every local member: sending a gap notice"
        );
        self.shared.metrics.gaps.fetch_add(1, Relaxed);
        let frame = ServerFrame::Gap {
            room: room.to_string(),
            from,
            to,
        }
        .to_json();
        self.deliver(room, 0, Bytes::from(frame));
    }

    /// Own the pub/sub connection until `shutdown`: connect, subscribe to
    /// every room with local members, fan frames out, and on any failure
    /// reconnect with capped exponential backoff.
    pub async fn run_subscriber(self, store: Store, shutdown: CancellationToken) {
        let metrics = self.shared.metrics.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let connect =
                tokio::time::timeout(Duration::from_secs(2), store.client().get_async_pubsub());
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = connect => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    metrics.redis_subscriber_connects.fetch_add(1, Relaxed);
                    metrics.redis_subscriber_up.store(1, Relaxed);
                    tracing::info!("redis pub/sub connected");
                    backoff = Duration::from_millis(100);
                    let reason = self.serve(pubsub, &store, &shutdown).await;
                    metrics.redis_subscriber_up.store(0, Relaxed);
                    self.unsubscribe_all();
                    match reason {
                        None => return,
                        Some(e) => tracing::warn!(error = %e, "redis pub/sub lost; reconnecting"),
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connect failed")
                }
                Err(_) => tracing::warn!(retry_in = ?backoff, "redis pub/sub connect timed out"),
            }
            let jitter = Duration::from_millis(u64::from(crate::now_nanos() % 100));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Serve one pub/sub connection; returns why it ended (`None`: shutdown).
    async fn serve(
        &self,
        pubsub: redis::aio::PubSub,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let (mut sink, mut stream) = pubsub.split();
        let mut active: HashSet<Arc<str>> = HashSet::new();
        let mut fresh = true;
        loop {
            if fresh {
                // A new connection: subscribe everything, then fetch what
                // was published while we were away.
                if let Err(e) = self.reconcile(&mut sink, &mut active).await {
                    return Some(e);
                }
                self.catch_up(store).await;
                fresh = false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Some("connection closed".into());
                    };
                    self.shared.metrics.messages_from_redis.fetch_add(1, Relaxed);
                    let Some(room) = store::room_of_channel(msg.get_channel_name()) else {
                        continue;
                    };
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    let offset = peek_offset(&payload).unwrap_or(0);
                    if std::str::from_utf8(&payload).is_err() {
                        tracing::warn!(room, "dropping a non-UTF-8 frame from redis");
                        continue;
                    }
                    let frame = payload;
                    if offset > 0 {
                        self.deliver_chat(store, room, offset, frame).await;
                    } else {
                        self.deliver(room, 0, frame);
                    }
                }
                _ = self.shared.dirty.notified() => {
                    if let Err(e) = self.reconcile(&mut sink, &mut active).await {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// Make the subscribed set equal the set of rooms with local members.
    async fn reconcile(
        &self,
        sink: &mut redis::aio::PubSubSink,
        active: &mut HashSet<Arc<str>>,
    ) -> Result<(), String> {
        let wanted: HashSet<Arc<str>> = self.rooms().keys().cloned().collect();
        let add: Vec<Arc<str>> = wanted.difference(active).cloned().collect();
        let remove: Vec<Arc<str>> = active.difference(&wanted).cloned().collect();
        if !remove.is_empty() {
            let chans: Vec<String> = remove.iter().map(|r| store::channel(r)).collect();
            sink.unsubscribe(&chans).await.map_err(|e| e.to_string())?;
            for r in &remove {
                active.remove(r);
            }
        }
        if !add.is_empty() {
            let chans: Vec<String> = add.iter().map(|r| store::channel(r)).collect();
            sink.subscribe(&chans).await.map_err(|e| e.to_string())?;
            active.extend(add.iter().cloned());
        }
        // Confirm every room that is subscribed now, including rooms
        // re-created while their subscription was still active.
        let mut rooms = self.rooms();
        for (name, r) in rooms.iter_mut() {
            if active.contains(name) && !r.subscribed {
                r.subscribed = true;
                for w in r.waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
        Ok(())
    }

    /// After a reconnect: deliver what each room got while the subscriber
    /// was away (from history), so members see no hole.
    async fn catch_up(&self, store: &Store) {
        let rooms: Vec<(Arc<str>, u64)> = self
            .rooms()
            .iter()
            .filter(|(_, r)| r.last_offset > 0)
            .map(|(n, r)| (n.clone(), r.last_offset))
            .collect();
        for (room, last) in rooms {
            match store.head(&room).await {
                Ok(head) if head > last => self.repair(store, &room, last, head).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "cannot check for missed messages")
                }
            }
        }
    }

    /// The subscription is gone with the connection: joins must wait for
    /// the next one.
    fn unsubscribe_all(&self) {
        for r in self.rooms().values_mut() {
            r.subscribed = false;
        }
    }
}
