//! A deliberately faulty WebSocket relay on loopback, kept so that anyone
//! can prove the checker catches faults (a checker that has never seen a
//! fault proves nothing). It drops, duplicates and reorders deliveries on a
//! deterministic schedule (every Nth), so tests can predict the counts.
//!
//! Two modes:
//! - `raw`: the published Node.js design's behaviour: greet with
//!   `Connected successfully to server <APP_ID>`, relay every text frame to
//!   every socket, the sender included.
//! - `chat`: a minimal in-memory speaker of this project's protocol
//!   (welcome, `joined`, `send` → `message` with a per-room offset, the
//!   accepting "instance"'s app_id and the echoed id), so chat mode and the
//!   APP_ID matrix can be tested without Redis or the real server.
//!
//! With `shuffle`, every chat frame goes out with its fields in another
//! order (valid JSON, the same fields: PROTOCOL.md does not fix the order),
//! which a reader that relies on the server's layout would miss.
//!
//! Connections are given APP_IDs round-robin from `app_ids`, like HAProxy
//! spreading sockets over instances.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What the relay does and which faults it injects.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Speak this project's chat protocol instead of raw relaying.
    pub chat: bool,
    /// APP_IDs handed out round-robin (default: `relay1`).
    pub app_ids: Vec<String>,
    /// Drop every Nth delivery (0: never).
    pub drop_every: u64,
    /// Deliver every Nth delivery twice (0: never).
    pub dup_every: u64,
    /// Hold back every Nth delivery and send it after the next one to the
    /// same socket (0: never).
    pub reorder_every: u64,
    /// Chat mode: send every frame's fields in a shuffled order (never
    /// `type` first).
    pub shuffle: bool,
    /// Chat mode: publish every Nth send to everyone but its sender, then
    /// cut the sender's connection (no close frame), as an instance that
    /// dies after publishing would (0: never). The sender must resume and
    /// retry with the same id, which is answered `sent {duplicate: true}`.
    pub cut_sender_every: u64,
}

/// The same JSON object with its fields in another order, picked by
/// `seed`; never `type` first. Anything that is not an object is returned
/// as it is.
pub fn shuffle_fields(frame: &str, seed: u64) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(frame)
    else {
        return frame.to_string();
    };
    let mut fields: Vec<(String, serde_json::Value)> = map.into_iter().collect();
    let n = fields.len();
    if n > 1 {
        // A rotation and, every other seed, a reversal.
        fields.rotate_left((seed % n as u64) as usize);
        if seed % 2 == 1 {
            fields.reverse();
        }
        if fields[0].0 == "type" {
            fields.rotate_left(1);
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                serde_json::Value::String(k.clone()),
                serde_json::to_string(v).unwrap_or_else(|_| "null".into())
            )
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// What the relay did, for tests to compare with what loadgen reports.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub deliveries: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    /// Sends received (chat: new ones, not retries answered `sent`).
    pub sends: AtomicU64,
    /// Connections cut (`cut_sender_every`).
    pub cut: AtomicU64,
    /// Retried sends answered `sent {duplicate: true}`.
    pub duplicates_answered: AtomicU64,
    /// Resumes (joins with `since`).
    pub resumes: AtomicU64,
}

enum Out {
    Frame(String),
    /// Send after the next frame.
    Hold(String),
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Out>,
}

/// Chat mode: most messages a room keeps for resumes.
const HISTORY: usize = 100_000;

#[derive(Default)]
struct Room {
    /// The last offset given out.
    seq: u64,
    members: Vec<Member>,
    /// Chat mode: `(offset, frame)` for resumes with `since`.
    history: std::collections::VecDeque<(u64, String)>,
    /// Chat mode: `<nick> <id>` → offset, so a retried send is answered
    /// `sent {duplicate: true}` instead of being published again.
    ids: HashMap<String, u64>,
}

#[derive(Default)]
struct Hub {
    rooms: HashMap<String, Room>,
}

/// A running relay.
#[derive(Debug, Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    pub counters: Arc<RelayCounters>,
}

impl Relay {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Serve on `listener` until `shutdown`.
pub fn spawn(
    listener: TcpListener,
    cfg: RelayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<Relay> {
    let addr = listener.local_addr()?;
    let counters = Arc::new(RelayCounters::default());
    let cfg = Arc::new(cfg);
    let hub = Arc::new(Mutex::new(Hub::default()));
    let c2 = counters.clone();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = shutdown.cancelled() => return,
            };
            next_id += 1;
            let (cfg, hub, counters, stop) =
                (cfg.clone(), hub.clone(), c2.clone(), shutdown.clone());
            tokio::spawn(session(stream, next_id, cfg, hub, counters, stop));
        }
    });
    Ok(Relay { addr, counters })
}

async fn session(
    stream: TcpStream,
    id: u64,
    cfg: Arc<RelayConfig>,
    hub: Arc<Mutex<Hub>>,
    counters: Arc<RelayCounters>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let cb = |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or("").to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
        return;
    };
    let param = |k: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(a, _)| *a == k)
            .map(|(_, v)| v.to_string())
    };
    let room = if cfg.chat {
        param("room").unwrap_or_else(|| "lobby".into())
    } else {
        String::new()
    };
    let nick = param("nick").unwrap_or_else(|| format!("guest{id}"));
    let apps = if cfg.app_ids.is_empty() {
        vec!["relay1".to_string()]
    } else {
        cfg.app_ids.clone()
    };
    let app_id = apps[(id as usize - 1) % apps.len()].clone();
    let (mut sink, mut stream) = ws.split();
    // Bounded: a member that cannot keep up is dropped from the room, like
    // the real server's slow-consumer policy.
    let (tx, mut rx) = mpsc::channel::<Out>(4096);
    let writer = tokio::spawn(async move {
        let mut held: Option<String> = None;
        loop {
            // A held frame goes out after the next one, or after 50 ms if
            // nothing follows (then it is late, never lost).
            let o = tokio::select! {
                o = rx.recv() => match o { Some(o) => o, None => break },
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)), if held.is_some() => {
                    let h = held.take().expect("held");
                    if sink.send(Message::text(h)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match o {
                Out::Hold(f) => {
                    if let Some(h) = held.replace(f) {
                        if sink.send(Message::text(h)).await.is_err() {
                            return;
                        }
                    }
                }
                Out::Frame(f) => {
                    if sink.send(Message::text(f)).await.is_err() {
                        return;
                    }
                    if let Some(h) = held.take() {
                        if sink.send(Message::text(h)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    let since: Option<u64> = if cfg.chat {
        param("since").and_then(|s| s.parse().ok())
    } else {
        None
    };
    // Greet, join and replay under the hub lock, so no message slips in
    // between.
    {
        let mut h = hub.lock().expect("hub lock");
        let entry = h.rooms.entry(room.clone()).or_default();
        let greet = if cfg.chat {
            let welcome = chat_protocol::ServerFrame::Welcome {
                app_id: app_id.clone(),
                conn_id: format!("{app_id}-{id}"),
                nick: nick.clone(),
                room: room.clone(),
                protocol: chat_protocol::PROTOCOL_VERSION,
                limits: chat_protocol::Limits {
                    max_message_bytes: 1 << 20,
                    max_frame_bytes: 2 << 20,
                    rate_per_sec: 1000,
                    burst: 1000,
                    max_rooms: 1,
                    history_len: 0,
                    idle_timeout_ms: 600_000,
                    ..chat_protocol::Limits::DEFAULT
                },
            };
            let joined = chat_protocol::ServerFrame::Joined {
                room: room.clone(),
                head: entry.seq,
                epoch: "relay".into(),
                recovered: since.map(|_| true),
            };
            let (w, j) = (welcome.to_json(), joined.to_json());
            let mut g = if cfg.shuffle {
                vec![shuffle_fields(&w, id), shuffle_fields(&j, id + 1)]
            } else {
                vec![w, j]
            };
            if let Some(since) = since {
                counters.resumes.fetch_add(1, Relaxed);
                g.extend(
                    entry
                        .history
                        .iter()
                        .filter(|(o, _)| *o > since)
                        .map(|(_, f)| f.clone()),
                );
            }
            g
        } else {
            vec![format!("Connected successfully to server {app_id}")]
        };
        for g in greet {
            let _ = tx.try_send(Out::Frame(g));
        }
        entry.members.push(Member { id, tx: tx.clone() });
    }
    let mut cut = false;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.cancelled() => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let mut h = hub.lock().expect("hub lock");
        let Some(entry) = h.rooms.get_mut(&room) else {
            break;
        };
        let frame = if cfg.chat {
            let (text, cid) = match serde_json::from_str::<chat_protocol::ClientFrame>(&text) {
                Ok(chat_protocol::ClientFrame::Send { text, id, .. }) => (text, id),
                _ => continue,
            };
            let key = cid.as_ref().map(|c| format!("{nick} {c}"));
            if let Some(offset) = key.as_ref().and_then(|k| entry.ids.get(k)) {
                counters.duplicates_answered.fetch_add(1, Relaxed);
                let sent = chat_protocol::ServerFrame::Sent {
                    room: room.clone(),
                    id: cid.clone().unwrap_or_default(),
                    offset: *offset,
                    epoch: "relay".into(),
                    duplicate: true,
                };
                let _ = tx.try_send(Out::Frame(sent.to_json()));
                continue;
            }
            entry.seq += 1;
            if let Some(k) = key {
                entry.ids.insert(k, entry.seq);
            }
            let tail = chat_protocol::splice::encode_tail(&chat_protocol::splice::MessageTail {
                room: &room,
                nick: &nick,
                text: &text,
                app_id: &app_id,
                ts: 0,
                id: cid.as_deref(),
                action: false,
            });
            let f = chat_protocol::splice::splice(entry.seq, "relay", &tail);
            let f = if cfg.shuffle {
                shuffle_fields(&f, entry.seq)
            } else {
                f
            };
            if entry.history.len() == HISTORY {
                entry.history.pop_front();
            }
            entry.history.push_back((entry.seq, f.clone()));
            f
        } else {
            text
        };
        let n = counters.sends.fetch_add(1, Relaxed) + 1;
        if cfg.chat && cfg.cut_sender_every > 0 && n.is_multiple_of(cfg.cut_sender_every) {
            // Published, but the sender never hears of it: its connection
            // is cut right after.
            entry
                .members
                .retain(|m| m.id == id || deliver(&cfg, &counters, m, &frame));
            counters.cut.fetch_add(1, Relaxed);
            cut = true;
            break;
        }
        entry
            .members
            .retain(|m| deliver(&cfg, &counters, m, &frame));
    }
    {
        let mut h = hub.lock().expect("hub lock");
        if let Some(entry) = h.rooms.get_mut(&room) {
            entry.members.retain(|m| m.id != id);
        }
    }
    drop(tx);
    if cut {
        // No close frame: the TCP connection just ends.
        writer.abort();
        drop(stream);
    } else {
        let _ = writer.await;
    }
}

/// Deliver one frame to one member with the configured faults; false if
/// the member is gone or full (it leaves the room).
fn deliver(cfg: &RelayConfig, c: &RelayCounters, m: &Member, frame: &str) -> bool {
    let n = c.deliveries.fetch_add(1, Relaxed) + 1;
    let every = |k: u64| k > 0 && n.is_multiple_of(k);
    if every(cfg.drop_every) {
        c.dropped.fetch_add(1, Relaxed);
        return true;
    }
    let out = if every(cfg.reorder_every) {
        c.reordered.fetch_add(1, Relaxed);
        Out::Hold(frame.to_string())
    } else {
        Out::Frame(frame.to_string())
    };
    if m.tx.try_send(out).is_err() {
        return false;
    }
    if every(cfg.dup_every) {
        c.duplicated.fetch_add(1, Relaxed);
        return m.tx.try_send(Out::Frame(frame.to_string())).is_ok();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_frames_keep_their_fields_but_not_their_order() {
        let f = chat_protocol::splice::splice(
            7,
            "relay",
            &chat_protocol::splice::encode_tail(&chat_protocol::splice::MessageTail {
                room: "r",
                nick: "n",
                text: "a \"quoted\" text",
                app_id: "app1",
                ts: 0,
                id: Some("1.2.3.4"),
                action: false,
            }),
        );
        let a: serde_json::Value = serde_json::from_str(&f).unwrap();
        for seed in 0..20 {
            let s = shuffle_fields(&f, seed);
            assert!(!s.starts_with("{\"type\""), "{s}");
            let b: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(a, b);
        }
        assert_eq!(shuffle_fields("not json", 1), "not json");
    }
}
