//! A chat client that behaves the way PROTOCOL.md asks a client to behave
//! under faults, and records everything it saw for the checks.
//!
//! - It reconnects on any close or drop (bounded attempts, short backoff),
//!   the first time straight to its instance, later through HAProxy, and
//!   resumes each room with `since` and `epoch`.
//! - A join the server could not serve (no pub/sub, history unavailable:
//!   `joined` without an epoch) is retried on a fresh connection from the
//!   same resume point, so no hole is ever accepted silently.
//! - A sender gives every message a unique id and sends it again, with the
//!   same id, on `timeout`, `unavailable`, any other error, a lost
//!   connection, a `reset` of its room while it is unanswered, or no answer
//!   at all, until it is acknowledged: by its own delivery, or by `sent`
//!   with `duplicate: true`. Attempts are bounded.
//!
//! Every peer is also a receiver: what it was delivered is checked too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::record::{Ack, Event, Peer, Registry, SendSpec, SentMsg};

/// No answer (delivery, `sent` or error) for this long: send again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per message before the sender gives up on it.
const MAX_ATTEMPTS: u32 = 60;
/// Connections in a row that never got as far as joining every room.
const MAX_CONNECT_FAILURES: u32 = 40;
/// Longest wait for the welcome and every join on a new connection.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a sender writes per second at most (new sends and retries); the
/// scenarios give the servers a rate limit well above it.
const SEND_RATE: f64 = 100.0;

/// What the scenario wants the peers to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected and joined; senders wait.
    Wait,
    /// Senders send new messages at their pace.
    Send,
    /// No new messages; senders still retry until everything is acknowledged.
    Finish,
    /// Close and return.
    Stop,
}

/// A message waiting for its acknowledgement.
#[derive(Debug)]
struct Pending {
    id: String,
    room: String,
    text: String,
    attempts: u32,
    /// An attempt is out and has not been answered.
    in_flight: bool,
    last_attempt: Instant,
    /// When to send it again (if not in flight).
    retry_at: Option<Instant>,
}

/// How one connection ended.
enum ConnEnd {
    Stop,
    Lost(String),
}

/// Per-peer state that outlives connections.
struct State {
    peer: Arc<Peer>,
    reg: Registry,
    /// Room → (epoch, last offset): where to resume.
    resume: HashMap<String, (String, u64)>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    next_new: Instant,
    tokens: f64,
    tokens_at: Instant,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Run a peer until the phase says stop (or it gives up).
pub async fn run(peer: Arc<Peer>, reg: Registry, mut phase: watch::Receiver<Phase>) {
    let mut st = State {
        peer: peer.clone(),
        reg,
        resume: HashMap::new(),
        pending: BTreeMap::new(),
        next_seq: 0,
        next_new: Instant::now(),
        tokens: 10.0,
        tokens_at: Instant::now(),
    };
    let mut failures = 0u32;
    loop {
        if *phase.borrow() == Phase::Stop {
            return;
        }
        let base = if peer.ready.load(Relaxed) {
            &peer.spec.reconnect_url
        } else {
            &peer.spec.first_url
        };
        let url = st.url(base);
        let connect = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        );
        let end = match connect.await {
            Ok(Ok((ws, _))) => {
                let (end, joined) = st.serve(ws, &mut phase).await;
                if joined {
                    failures = 0;
                }
                end
            }
            Ok(Err(e)) => ConnEnd::Lost(format!("connect: {e}")),
            Err(_) => ConnEnd::Lost("connect timed out".into()),
        };
        let at = Instant::now();
        match end {
            ConnEnd::Stop => return,
            ConnEnd::Lost(reason) => peer.log(Event::Lost { at, reason }),
        }
        failures += 1;
        if failures > MAX_CONNECT_FAILURES {
            let reason = format!("gave up after {MAX_CONNECT_FAILURES} failed connections");
            peer.log(Event::Failed { at, reason });
            return;
        }
        // Short backoff: 50 ms, doubling to 1 s, plus jitter.
        let ms = (50u64 << failures.min(5)).min(1000) + u64::from(at.elapsed().subsec_nanos() % 50);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return,
        }
    }
}

impl State {
    fn url(&self, base: &str) -> String {
        let spec = &self.peer.spec;
        let room = &spec.rooms[0];
        // The nick key gets the nick back while the old connection (on a
        // killed instance) still holds it.
        let mut url = format!(
            "{base}?room={room}&nick={}&nick_key=chaoskey-{}",
            spec.name, spec.name
        );
        if let Some((epoch, since)) = self.resume.get(room) {
            url.push_str(&format!("&since={since}&epoch={epoch}"));
        }
        url
    }

    fn join_frame(&self, room: &str) -> String {
        match self.resume.get(room) {
            Some((epoch, since)) => {
                json!({"type":"join","room":room,"since":since,"epoch":epoch}).to_string()
            }
            None => json!({"type":"join","room":room}).to_string(),
        }
    }

    /// Serve one connection; also says whether it joined every room.
    async fn serve(&mut self, mut ws: Ws, phase: &mut watch::Receiver<Phase>) -> (ConnEnd, bool) {
        let peer = self.peer.clone();
        let rooms = peer.spec.rooms.clone();
        // Joining rooms[joining]; `got_joined`: its `joined` came, the
        // `members` (or the error instead of it) has not yet.
        let mut joining = 0usize;
        let mut got_joined = false;
        let mut since_asked = self.resume.get(&rooms[0]).cloned();
        let mut ready = false;
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut welcomed = false;
        loop {
            let step = tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Stop {
                        let close = ws.close(None);
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                        return (ConnEnd::Stop, ready);
                    }
                    Ok(())
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let frame: ServerFrame = match serde_json::from_str(t.as_str()) {
                            Ok(f) => f,
                            Err(e) => {
                                let reason = format!("unparsable frame {t}: {e}");
                                peer.log(Event::Failed { at: Instant::now(), reason: reason.clone() });
                                return (ConnEnd::Stop, ready);
                            }
                        };
                        let at = Instant::now();
                        match frame {
                            ServerFrame::Welcome { app_id, .. } => {
                                welcomed = true;
                                peer.log(Event::Connected { at, app_id });
                                Ok(())
                            }
                            ServerFrame::Joined { room, head, epoch, recovered } => {
                                if ready || room != rooms[joining] || got_joined {
                                    Err(format!("unexpected joined for {room}"))
                                } else if epoch.is_empty() {
                                    Err(format!("joined {room} but history was unavailable"))
                                } else {
                                    peer.log(Event::Joined {
                                        at,
                                        room: room.clone(),
                                        epoch: epoch.clone(),
                                        head,
                                        recovered,
                                        since: since_asked.take(),
                                    });
                                    if recovered != Some(true) {
                                        // A fresh join, or a new epoch:
                                        // live delivery takes over after
                                        // `head` (replayed entries of the
                                        // new epoch sit at or below it).
                                        self.resume.insert(room, (epoch, head));
                                    }
                                    got_joined = true;
                                    Ok(())
                                }
                            }
                            ServerFrame::Members { room, .. } if !ready && got_joined && room == rooms[joining] => {
                                self.joined_one(&mut ws, &rooms, &mut joining, &mut got_joined, &mut since_asked, &mut ready).await
                            }
                            ServerFrame::Error { code, message, id: None } => {
                                if ready {
                                    Ok(())
                                } else if got_joined {
                                    // The member list failed; the join stands.
                                    self.joined_one(&mut ws, &rooms, &mut joining, &mut got_joined, &mut since_asked, &mut ready).await
                                } else {
                                    Err(format!("join {} failed: {} {message}", rooms[joining], code.as_str()))
                                }
                            }
                            ServerFrame::Error { code, id: Some(id), .. } => {
                                peer.log(Event::SendError { at, id: id.clone(), code });
                                if let Some(p) = self.pending.values_mut().find(|p| p.id == id) {
                                    if p.in_flight {
                                        p.in_flight = false;
                                        p.retry_at = Some(at + backoff(p.attempts));
                                    }
                                }
                                Ok(())
                            }
                            ServerFrame::Message(m) => {
                                match self.resume.get_mut(&m.room) {
                                    Some((e, last)) if *e == m.epoch => *last = (*last).max(m.offset),
                                    _ => {
                                        self.resume.insert(m.room.clone(), (m.epoch.clone(), m.offset));
                                    }
                                }
                                if m.nick == peer.spec.name {
                                    if let Some(id) = &m.id {
                                        self.acked(id, m.offset, &m.epoch, false);
                                    }
                                }
                                peer.log(Event::Msg {
                                    at,
                                    room: m.room,
                                    epoch: m.epoch,
                                    offset: m.offset,
                                    id: m.id,
                                });
                                Ok(())
                            }
                            ServerFrame::Sent { id, offset, epoch, .. } => {
                                self.acked(&id, offset, &epoch, true);
                                Ok(())
                            }
                            ServerFrame::Gap { room, from, to } => {
                                let epoch = match self.resume.get_mut(&room) {
                                    Some((e, last)) => {
                                        *last = (*last).max(to);
                                        e.clone()
                                    }
                                    None => String::new(),
                                };
                                peer.log(Event::Gap { at, room, epoch, from, to });
                                Ok(())
                            }
                            ServerFrame::Reset { room, epoch, previous, last } => {
                                // Redis lost data: an unanswered send to
                                // this room may be among it. Send it again
                                // now (same id) rather than wait for the
                                // answer timeout.
                                for p in self.pending.values_mut().filter(|p| p.room == room && p.in_flight) {
                                    p.in_flight = false;
                                    p.retry_at = Some(at);
                                }
                                // A reset can follow a resume that already
                                // moved to the new epoch: keep that point.
                                if self.resume.get(&room).is_none_or(|(e, _)| *e != epoch) {
                                    self.resume.insert(room.clone(), (epoch.clone(), 0));
                                }
                                peer.log(Event::Reset { at, room, epoch, previous, last });
                                Ok(())
                            }
                            _ => Ok(()),
                        }
                    }
                    Some(Ok(Message::Close(f))) => Err(match f {
                        Some(f) => format!("closed {} {}", u16::from(f.code), f.reason),
                        None => "closed without a code".into(),
                    }),
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(format!("dropped: {e}")),
                    None => Err("dropped: end of stream".into()),
                },
                _ = tick.tick() => {
                    if !ready {
                        if Instant::now() > deadline {
                            Err(format!("not joined within {JOIN_TIMEOUT:?} (welcome: {welcomed})"))
                        } else {
                            Ok(())
                        }
                    } else {
                        let now = *phase.borrow();
                        self.send_tick(&mut ws, now).await
                    }
                }
            };
            if let Err(reason) = step {
                return (ConnEnd::Lost(reason), ready);
            }
        }
    }

    /// The room being joined is joined: join the next, or start sending.
    async fn joined_one(
        &mut self,
        ws: &mut Ws,
        rooms: &[String],
        joining: &mut usize,
        got_joined: &mut bool,
        since_asked: &mut Option<(String, u64)>,
        ready: &mut bool,
    ) -> Result<(), String> {
        *got_joined = false;
        *joining += 1;
        if let Some(room) = rooms.get(*joining) {
            *since_asked = self.resume.get(room).cloned();
            let frame = self.join_frame(room);
            return write(ws, frame).await;
        }
        *ready = true;
        self.peer.ready.store(true, Relaxed);
        // Whatever was unanswered on the old connection goes again.
        let now = Instant::now();
        for p in self.pending.values_mut() {
            p.in_flight = false;
            p.retry_at = Some(now);
        }
        self.next_new = self.next_new.max(now);
        Ok(())
    }

    fn acked(&mut self, id: &str, offset: u64, epoch: &str, duplicate: bool) {
        let Some(seq) = self
            .pending
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(s, _)| *s)
        else {
            return;
        };
        self.pending.remove(&seq);
        if let Some(m) = self.reg.lock().unwrap().get_mut(id) {
            m.ack.get_or_insert(Ack {
                offset,
                epoch: epoch.to_string(),
                duplicate,
            });
        }
    }

    /// New messages at the sender's pace, retries when due, both under the
    /// sender's own rate limit.
    async fn send_tick(&mut self, ws: &mut Ws, phase: Phase) -> Result<(), String> {
        let Some(spec) = self.peer.spec.send.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * SEND_RATE).min(10.0);
        self.tokens_at = now;
        if phase == Phase::Send {
            let burst = self.peer.burst.load(Relaxed);
            for _ in 0..burst.min(spec.window.saturating_sub(self.pending.len())) {
                let frame = self.new_message(&spec, now);
                write(ws, frame).await?;
            }
            if burst > 0 {
                self.peer.burst.store(0, Relaxed);
            }
            if now >= self.next_new && self.pending.len() < spec.window && self.tokens >= 1.0 {
                self.tokens -= 1.0;
                // A stall (window full, reconnecting) delays the pace; it
                // does not bunch the late messages up afterwards.
                self.next_new = (self.next_new + spec.every).max(now);
                let frame = self.new_message(&spec, now);
                write(ws, frame).await?;
            }
        }
        let mut frames = Vec::new();
        let mut dropped = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if p.in_flight && now.duration_since(p.last_attempt) > ACK_TIMEOUT {
                // No answer at all (e.g. the delivery went with a lost
                // epoch): the same id again is safe.
                p.in_flight = false;
                p.retry_at = Some(now);
                if let Some(m) = self.reg.lock().unwrap().get_mut(&p.id) {
                    m.unanswered += 1;
                }
            }
            if p.in_flight || p.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            if p.attempts >= MAX_ATTEMPTS {
                dropped.push((*seq, p.id.clone()));
                continue;
            }
            if self.tokens < 1.0 {
                break;
            }
            self.tokens -= 1.0;
            p.attempts += 1;
            p.in_flight = true;
            p.last_attempt = now;
            p.retry_at = None;
            frames.push((p.id.clone(), send_frame(p)));
        }
        for (seq, id) in dropped {
            self.pending.remove(&seq);
            if let Some(m) = self.reg.lock().unwrap().get_mut(&id) {
                m.gave_up = true;
            }
        }
        for (id, frame) in frames {
            if let Some(m) = self.reg.lock().unwrap().get_mut(&id) {
                m.attempts += 1;
            }
            write(ws, frame).await?;
        }
        Ok(())
    }
}

impl State {
    /// Make the next message, record it, and return its frame.
    fn new_message(&mut self, spec: &SendSpec, now: Instant) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = &self.peer.spec.name;
        let id = format!("{name}-{seq}");
        let room = spec.rooms[seq as usize % spec.rooms.len()].clone();
        self.reg.lock().unwrap().insert(
            id.clone(),
            SentMsg {
                sender: name.clone(),
                room: room.clone(),
                seq,
                first_send: now,
                attempts: 1,
                unanswered: 0,
                pipelined: spec.window > 1,
                ack: None,
                gave_up: false,
            },
        );
        let p = Pending {
            text: format!("{name} #{seq}"),
            id,
            room,
            attempts: 1,
            in_flight: true,
            last_attempt: now,
            retry_at: None,
        };
        let frame = send_frame(&p);
        self.pending.insert(seq, p);
        frame
    }
}

fn send_frame(p: &Pending) -> String {
    json!({"type":"send","room":p.room,"text":p.text,"id":p.id}).to_string()
}

/// 200 ms doubling to 1 s.
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((100u64 << attempts.min(4)).min(1000))
}

async fn write(ws: &mut Ws, frame: String) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Text(frame.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write blocked for 5s".into()),
    }
}
