//! The subscriber's connection: classic pub/sub on one Redis (`SUBSCRIBE`
//! on redis-rs's `PubSub`), or sharded pub/sub on a Redis Cluster
//! (`SSUBSCRIBE` on redis-rs's `ClusterConnection`, RESP3).
//!
//! On a cluster, redis-rs keeps one connection per master and sends each
//! shard channel's `SSUBSCRIBE` to the master of its slot, so an instance
//! holds one subscriber connection per master, not per room. When a
//! node's connection breaks or the slot map changes, redis-rs subscribes
//! again by itself; those confirmations reach us as pushes
//! ([`Incoming::Resubscribed`]), and the hub repairs the room from history,
//! since anything published meanwhile was missed.

use std::collections::HashMap;

use futures_util::StreamExt;
use redis::{PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::store::{router::key_slot, Store};

/// What the connection heard.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A message on a channel (classic pub/sub: as redis-rs parsed it, so
    /// nothing is copied before the hub copies the payload once).
    Msg(redis::Msg),
    /// A message on a shard channel (a RESP3 push).
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The library subscribed `channel` again (after a reconnect or a
    /// slot move) without our asking: whatever was published meanwhile
    /// was missed.
    Resubscribed(Vec<u8>),
    /// The server dropped `channel` without our asking (its slot moved).
    Dropped(Vec<u8>),
    /// One node's connection broke (the library reconnects it).
    Disconnected,
}

impl Incoming {
    /// The channel and payload of a message (`None` for other events).
    pub(super) fn channel_and_payload(&self) -> Option<(&[u8], &[u8])> {
        match self {
            Self::Msg(m) => Some((m.get_channel_name().as_bytes(), m.get_payload_bytes())),
            Self::Message { channel, payload } => Some((channel, payload)),
            _ => None,
        }
    }
}

/// Subscriptions in flight whose confirmations come back as pushes too
/// (RESP3), so they are not taken for the library's own.
#[derive(Debug, Default)]
pub(super) struct Expected(HashMap<Vec<u8>, u32>);

impl Expected {
    fn add(&mut self, chans: &[String]) {
        for c in chans {
            *self.0.entry(c.as_bytes().to_vec()).or_default() += 1;
        }
    }

    /// Whether a confirmation of `chan` was expected (and consume it).
    fn take(&mut self, chan: &[u8]) -> bool {
        match self.0.get_mut(chan) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(chan);
                true
            }
            None => false,
        }
    }
}

pub(super) enum SubConn {
    Classic {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    Sharded {
        conn: redis::cluster_async::ClusterConnection,
        pushes: UnboundedReceiver<redis::PushInfo>,
        subscribing: Expected,
        unsubscribing: Expected,
    },
}

impl std::fmt::Debug for SubConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Classic { .. } => "SubConn::Classic",
            Self::Sharded { .. } => "SubConn::Sharded",
        })
    }
}

/// Shard channels subscribed per command: `SSUBSCRIBE` takes channels of
/// one slot only, so commands go per slot, this many at once.
const SHARD_CONCURRENCY: usize = 32;

impl SubConn {
    /// Connect to the current master (or the cluster) and subscribe to
    /// the liveness probe channels.
    pub(super) async fn connect(store: &Store, probes: &[String]) -> Result<Self, String> {
        let mut conn = if store.is_cluster() {
            let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
            let client = store.cluster_client(tx).map_err(|e| e.to_string())?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            Self::Sharded {
                conn,
                pushes,
                subscribing: Expected::default(),
                unsubscribing: Expected::default(),
            }
        } else {
            let client = store.client().await.map_err(|e| e.to_string())?;
            let (sink, stream) = client
                .get_async_pubsub()
                .await
                .map_err(|e| e.to_string())?
                .split();
            Self::Classic { sink, stream }
        };
        conn.subscribe(probes).await.map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Subscribe to `chans`; returns once Redis confirmed every one.
    pub(super) async fn subscribe(&mut self, chans: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Classic { sink, .. } => sink.subscribe(chans).await,
            Self::Sharded {
                conn, subscribing, ..
            } => {
                subscribing.add(chans);
                per_slot(conn, chans, true).await
            }
        }
    }

    /// Unsubscribe from `chans`.
    pub(super) async fn unsubscribe(&mut self, chans: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Classic { sink, .. } => sink.unsubscribe(chans).await,
            Self::Sharded {
                conn,
                unsubscribing,
                ..
            } => {
                unsubscribing.add(chans);
                per_slot(conn, chans, false).await
            }
        }
    }

    /// The next thing heard; `None` when the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        match self {
            Self::Classic { stream, .. } => stream.next().await.map(Incoming::Msg),
            Self::Sharded {
                pushes,
                subscribing,
                unsubscribing,
                ..
            } => loop {
                let push = pushes.recv().await?;
                let mut data = push.data.into_iter();
                let mut channel = || match data.next() {
                    Some(Value::BulkString(b)) => Some(b),
                    Some(Value::SimpleString(s)) => Some(s.into_bytes()),
                    _ => None,
                };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let (Some(channel), Some(payload)) = (channel(), channel()) else {
                            continue;
                        };
                        return Some(Incoming::Message { channel, payload });
                    }
                    PushKind::SSubscribe => {
                        if let Some(c) = channel() {
                            if !subscribing.take(&c) {
                                return Some(Incoming::Resubscribed(c));
                            }
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(c) = channel() {
                            if !unsubscribing.take(&c) {
                                return Some(Incoming::Dropped(c));
                            }
                        }
                    }
                    PushKind::Disconnection => return Some(Incoming::Disconnected),
                    _ => {}
                }
            },
        }
    }
}

/// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) `chans`, one command per slot.
async fn per_slot(
    conn: &redis::cluster_async::ClusterConnection,
    chans: &[String],
    subscribe: bool,
) -> redis::RedisResult<()> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for c in chans {
        by_slot.entry(key_slot(c)).or_default().push(c.clone());
    }
    let groups: Vec<(redis::cluster_async::ClusterConnection, Vec<String>)> =
        by_slot.into_values().map(|g| (conn.clone(), g)).collect();
    let results: Vec<redis::RedisResult<()>> = futures_util::stream::iter(groups)
        .map(|(mut conn, group)| async move {
            if subscribe {
                conn.ssubscribe(group).await
            } else {
                conn.sunsubscribe(group).await
            }
        })
        .buffer_unordered(SHARD_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}
