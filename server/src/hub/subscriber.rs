//! The instance's one pub/sub connection: subscribe to every room with
//! local members, fan frames out, repair from history, and prove by a
//! liveness probe that the connection still delivers.
//!
//! - **Level-triggered reconcile.** A [`Notify`](tokio::sync::Notify) says
//!   "the set of rooms changed"; the task makes the subscribed set equal
//!   the wanted one, so no command queue can grow.
//! - **Baseline at confirmation.** A newly subscribed room's epoch and head
//!   are read *after* Redis confirms the subscription; anything published
//!   later arrives live or is repaired.
//! - **Full repair.** After every (re)subscription, every room is brought
//!   up to Redis's head from history. A history read that fails is not a
//!   gap: the connection is replaced and the repair runs again.
//! - **Liveness probe.** Every `--probe-interval` the instance publishes on
//!   its own channel; if the subscription hears nothing of it for
//!   `--probe-timeout` (half-open TCP, a hung Redis, a subscription that
//!   silently stopped), the connection is replaced and every room repaired,
//!   and `/healthz` answers 503 meanwhile.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::splice::{peek_epoch, peek_offset};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::conn::{Incoming, SubConn};
use super::{Hub, Step};
use crate::store::{self, Store, StoreResult};

/// Longest wait for a (un)subscribe confirmation.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Rooms whose baseline or repair runs at once after a reconnect.
const REPAIR_CONCURRENCY: usize = 16;

impl Hub {
    /// Own the pub/sub connection until `shutdown`: connect, subscribe to
    /// every room with local members, fan frames out, and on any failure
    /// reconnect with capped exponential backoff. `probe` names the
    /// liveness probe's channel (on a cluster, one per master is derived
    /// from it: [`Store::probe_channels`]).
    pub async fn run_subscriber(self, store: Store, probe: String, shutdown: CancellationToken) {
        let metrics = self.shared.metrics.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let connect = tokio::time::timeout(Duration::from_secs(3), async {
                // On a cluster: who serves which slot now, before anything
                // is subscribed.
                store.load_topology().await.map_err(|e| e.to_string())?;
                let probes = store.probe_channels(&probe);
                let conn = SubConn::connect(&store, &probes).await?;
                Ok::<_, String>((conn, probes))
            });
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = connect => r,
            };
            match conn {
                Ok(Ok((conn, probes))) => {
                    metrics.redis_subscriber_connects.fetch_add(1, Relaxed);
                    tracing::info!(?conn, probes = probes.len(), "redis pub/sub connected");
                    backoff = Duration::from_millis(100);
                    let reason = self.serve(conn, &store, &probes, &shutdown).await;
                    metrics.redis_subscriber_up.store(0, Relaxed);
                    self.shared.probe_heard_ms.store(0, Relaxed);
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
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Publish the liveness probe on `channel` (on a cluster: on one
    /// channel per master) until `shutdown`.
    pub async fn run_probe(
        self,
        store: Store,
        channel: String,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Ask the sentinels (or the cluster) about once a second (each
        // sentinel check also asks the node they name for its ROLE).
        let check_every =
            (Duration::from_secs(1).as_millis() / every.as_millis().max(1)).max(1) as u64;
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            ticks += 1;
            if ticks.is_multiple_of(check_every) {
                store.check_master().await;
            }
            let at = crate::now_ms().to_string();
            let probes = store.probe_channels(&channel);
            let sent =
                futures_util::future::join_all(probes.iter().map(|p| store.publish_to(p, &at)))
                    .await;
            for e in sent.into_iter().filter_map(Result::err) {
                tracing::debug!(error = %e, "liveness probe not published");
            }
        }
    }

    /// Serve one pub/sub connection; returns why it ended (`None`: shutdown).
    async fn serve(
        &self,
        mut conn: SubConn,
        store: &Store,
        probes: &[String],
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut active: HashSet<Arc<str>> = HashSet::new();
        // A new connection: subscribe everything, then repair every room
        // (none is confirmed after a reconnect, so reconcile repairs all).
        if let Err(e) = self.reconcile(&mut conn, &mut active, store).await {
            return Some(e);
        }
        let timeout = self.shared.probe_timeout;
        let mut watchdog = tokio::time::interval(timeout / 4);
        let moves = store.master_moves();
        let connected = crate::now_ms();
        // When each probe channel was last heard (0: not yet).
        let mut heard: Vec<u64> = vec![0; probes.len()];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                msg = conn.next() => {
                    let incoming = match msg {
                        None => return Some("connection closed".into()),
                        Some(m @ (Incoming::Msg(_) | Incoming::Message { .. })) => m,
                        Some(Incoming::Resubscribed(channel)) => {
                            // Subscribed again by redis-rs after a reconnect
                            // or a slot move: anything published meanwhile
                            // was missed.
                            let Some(room) = std::str::from_utf8(&channel).ok().and_then(store::room_of_channel) else {
                                continue;
                            };
                            tracing::info!(room, "room resubscribed on the cluster: repairing");
                            if let Err(e) = self.repair(store, room).await {
                                self.shared.metrics.repair_retries.fetch_add(1, Relaxed);
                                return Some(format!("repair of {room} failed: {e}"));
                            }
                            continue;
                        }
                        Some(Incoming::Dropped(channel)) => {
                            return Some(format!(
                                "redis dropped the subscription to {} (its slot moved)",
                                String::from_utf8_lossy(&channel)
                            ));
                        }
                        Some(Incoming::Disconnected) => {
                            tracing::warn!("a cluster node's pub/sub connection broke; redis-rs reconnects it");
                            continue;
                        }
                    };
                    let Some((channel, payload)) = incoming.channel_and_payload() else {
                        continue;
                    };
                    let Ok(channel) = std::str::from_utf8(channel) else {
                        continue;
                    };
                    if let Some(i) = probes.iter().position(|p| p == channel) {
                        heard[i] = crate::now_ms();
                        if heard.iter().all(|&h| h > 0) {
                            let oldest = heard.iter().copied().min().unwrap_or(0);
                            self.shared.probe_heard_ms.store(oldest, Relaxed);
                            self.shared.metrics.redis_subscriber_up.store(1, Relaxed);
                        }
                        continue;
                    }
                    self.shared.metrics.messages_from_redis.fetch_add(1, Relaxed);
                    let Some(room) = store::room_of_channel(channel) else {
                        continue;
                    };
                    let payload = Bytes::copy_from_slice(payload);
                    if std::str::from_utf8(&payload).is_err() {
                        tracing::warn!(room, "dropping a non-UTF-8 frame from redis");
                        continue;
                    }
                    if let Err(e) = self.on_frame(store, room, payload).await {
                        return Some(format!("repair of {room} failed: {e}"));
                    }
                }
                _ = self.shared.dirty.notified() => {
                    if let Err(e) = self.reconcile(&mut conn, &mut active, store).await {
                        return Some(e);
                    }
                }
                _ = watchdog.tick() => {
                    if store.master_moves() != moves {
                        return Some("the master moved (sentinels or cluster slot map)".into());
                    }
                    let now = crate::now_ms();
                    let silent = heard
                        .iter()
                        .map(|&h| now.saturating_sub(if h == 0 { connected } else { h }))
                        .max()
                        .unwrap_or(0);
                    let silent = Duration::from_millis(silent);
                    if silent > timeout {
                        self.shared.metrics.liveness_failures.fetch_add(1, Relaxed);
                        store.reconnect();
                        return Some(format!("liveness probe not heard for {silent:?}"));
                    }
                }
            }
        }
    }

    /// One frame from a room's channel.
    async fn on_frame(&self, store: &Store, room: &str, frame: Bytes) -> StoreResult<()> {
        let Some(offset) = peek_offset(&frame) else {
            self.deliver_plain(room, frame);
            return Ok(());
        };
        let bytes = frame.clone();
        let epoch = peek_epoch(&bytes).unwrap_or("");
        match self.deliver_if_next(room, offset, epoch, frame) {
            Step::Next | Step::Duplicate | Step::Gone => {}
            Step::Repair => {
                if let Err(e) = self.repair(store, room).await {
                    self.shared.metrics.repair_retries.fetch_add(1, Relaxed);
                    return Err(e);
                }
                // History holds the frame (the script appends before it
                // publishes), so the repair delivered it. What is still not
                // next is of an epoch Redis does not report: a stale copy
                // from a replaced Redis, never delivered.
                match self.deliver_if_next(room, offset, epoch, bytes.clone()) {
                    Step::Next | Step::Duplicate | Step::Gone => {}
                    Step::Repair => {
                        tracing::warn!(
                            room,
                            offset,
                            epoch,
                            "dropping a frame of an epoch redis does not report"
                        )
                    }
                }
            }
        }
        Ok(())
    }

    /// Bring `room` up to Redis's head from history: every entry after the
    /// last delivered one, in order, with `reset` at epoch changes and a
    /// `gap` for what history no longer holds. The first time (no epoch
    /// yet) it only takes the baseline.
    async fn repair(&self, store: &Store, room: &str) -> StoreResult<()> {
        let head = store.head(room).await?;
        let Some((epoch, last)) = self
            .rooms()
            .get(room)
            .map(|r| (r.epoch.clone(), r.last_offset))
        else {
            return Ok(());
        };
        if epoch.is_empty() {
            if let Some(r) = self.rooms().get_mut(room) {
                if r.epoch.is_empty() {
                    r.epoch = Arc::from(head.epoch.as_str());
                    r.last_offset = head.head;
                }
            }
            return Ok(());
        }
        let same = *epoch == *head.epoch;
        if same && head.head <= last {
            return Ok(());
        }
        // In a new epoch, offsets may have been handed out again below our
        // last one (Redis lost its tail): read from the epoch's start too.
        let mut after = if same { last } else { last.min(head.start) };
        loop {
            let hist = store.history_after(room, head.clone(), after).await?;
            let n = hist.entries.len();
            for (off, frame) in hist.entries {
                after = off;
                if std::str::from_utf8(&frame).is_err() {
                    continue;
                }
                let e = peek_epoch(&frame).unwrap_or("").to_string();
                if !same && *e == *epoch && off <= last {
                    continue; // ours, already delivered
                }
                if self.step(room, off, &e) == Step::Duplicate {
                    continue;
                }
                self.shared.metrics.repaired.fetch_add(1, Relaxed);
                self.deliver_chat(room, off, &e, frame);
            }
            if n == 0 || after >= head.head || n < store.history_len() as usize {
                break;
            }
        }
        // Whatever history did not hold up to the head is gone for good.
        let mut idle = Vec::new();
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get_mut(room) {
            if *r.epoch != *head.epoch {
                self.switch_epoch(room, r, &head.epoch, head.head, &mut idle);
            } else if r.last_offset < head.head {
                let from = r.last_offset.saturating_add(1);
                tracing::warn!(
                    room,
                    from,
                    to = head.head,
                    "messages lost to every local member: sending a gap notice"
                );
                self.shared.metrics.gaps.fetch_add(1, Relaxed);
                r.last_offset = head.head;
                super::push(
                    &self.shared.metrics,
                    r,
                    0,
                    super::gap_frame(room, from, head.head),
                    &mut idle,
                );
            }
        }
        drop(rooms);
        self.defer(idle);
        Ok(())
    }

    /// Make the subscribed set equal the set of rooms with local members,
    /// then take the baseline of each new room and let its joins through.
    async fn reconcile(
        &self,
        conn: &mut SubConn,
        active: &mut HashSet<Arc<str>>,
        store: &Store,
    ) -> Result<(), String> {
        let wanted: HashSet<Arc<str>> = self.rooms().keys().cloned().collect();
        let add: Vec<Arc<str>> = wanted.difference(active).cloned().collect();
        let remove: Vec<Arc<str>> = active.difference(&wanted).cloned().collect();
        if !remove.is_empty() {
            let chans: Vec<String> = remove.iter().map(|r| store::channel(r)).collect();
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, conn.unsubscribe(&chans)).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err("unsubscribe timed out".into()),
            }
            for r in &remove {
                active.remove(r);
            }
        }
        if !add.is_empty() {
            let chans: Vec<String> = add.iter().map(|r| store::channel(r)).collect();
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, conn.subscribe(&chans)).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err("subscribe timed out".into()),
            }
            active.extend(add.iter().cloned());
        }
        // Rooms whose subscription is confirmed but that have no baseline
        // yet (new ones; or re-created while still subscribed).
        let fresh: Vec<Arc<str>> = self
            .rooms()
            .iter()
            .filter(|(name, r)| active.contains(*name) && !r.subscribed)
            .map(|(name, _)| name.clone())
            .collect();
        let results: Vec<StoreResult<()>> = futures_util::stream::iter(fresh)
            .map(|room| async move { self.repair(store, &room).await })
            .buffer_unordered(REPAIR_CONCURRENCY)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            // Not a gap: the connection is replaced and the repair retried.
            self.shared.metrics.repair_retries.fetch_add(1, Relaxed);
            return Err(format!("repair from history failed: {e}"));
        }
        let mut rooms = self.rooms();
        for (name, r) in rooms.iter_mut() {
            if active.contains(name) && !r.subscribed && !r.epoch.is_empty() {
                r.subscribed = true;
                for w in r.waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
        Ok(())
    }

    /// The subscription is gone with the connection: joins must wait for
    /// the next one.
    fn unsubscribe_all(&self) {
        for r in self.rooms().values_mut() {
            r.subscribed = false;
        }
    }
}
