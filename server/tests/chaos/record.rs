//! What the peers record: their specs, every event they saw, and every
//! message the senders made, plus the renderings of it that failure
//! messages and the dump files show.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_protocol::ErrorCode;
use tokio::time::Instant;

/// How a sender sends.
#[derive(Debug, Clone)]
pub struct SendSpec {
    /// Rooms to send to, round robin (each must be one of the peer's rooms).
    pub rooms: Vec<String>,
    /// One new message this often.
    pub every: Duration,
    /// Unacknowledged messages at most: 1 is stop-and-wait, more pipelines.
    pub window: usize,
}

/// One client of a scenario.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Also its nick: the idempotency key is scoped to it, so it never
    /// changes across reconnects.
    pub name: String,
    pub rooms: Vec<String>,
    /// The first connection (straight to one instance).
    pub first_url: String,
    /// Every later one (through HAProxy).
    pub reconnect_url: String,
    pub send: Option<SendSpec>,
}

/// Something a peer saw or did.
#[derive(Debug, Clone)]
pub enum Event {
    Connected {
        at: Instant,
        app_id: String,
    },
    /// The connection ended (or never got going) for this reason.
    Lost {
        at: Instant,
        reason: String,
    },
    Joined {
        at: Instant,
        room: String,
        epoch: String,
        head: u64,
        recovered: Option<bool>,
        /// The resume point the join asked for.
        since: Option<(String, u64)>,
    },
    Msg {
        at: Instant,
        room: String,
        epoch: String,
        offset: u64,
        id: Option<String>,
    },
    /// `epoch` is the epoch the peer was in for that room when it came.
    Gap {
        at: Instant,
        room: String,
        epoch: String,
        from: u64,
        to: u64,
    },
    Reset {
        at: Instant,
        room: String,
        epoch: String,
        previous: String,
        last: u64,
    },
    SendError {
        at: Instant,
        id: String,
        code: ErrorCode,
    },
    /// The peer stopped trying (too many failed connections, a bad frame).
    Failed {
        at: Instant,
        reason: String,
    },
}

/// One peer: its spec, what it saw, and whether it joined everything once.
#[derive(Debug)]
pub struct Peer {
    pub spec: PeerSpec,
    pub events: Mutex<Vec<Event>>,
    pub ready: AtomicBool,
    /// Extra messages to send at once, off the pace (see [`Peer::burst`]).
    pub burst: AtomicUsize,
}

impl Peer {
    pub fn new(spec: PeerSpec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            events: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            burst: AtomicUsize::new(0),
        })
    }

    /// Have a sender write `n` messages at once (within its window), so
    /// that a fault injected right after finds sends in flight; returns
    /// once they are written (or after a second).
    pub async fn burst(&self, n: usize) {
        self.burst.store(n, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.burst.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn log(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    /// A copy of everything seen so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// How a message was acknowledged.
#[derive(Debug, Clone)]
pub struct Ack {
    pub offset: u64,
    pub epoch: String,
    /// By `sent` with `duplicate: true` rather than by its delivery.
    pub duplicate: bool,
}

/// Every message any sender made.
#[derive(Debug, Clone)]
pub struct SentMsg {
    pub sender: String,
    pub room: String,
    /// The sender's counter: its send order.
    pub seq: u64,
    pub first_send: Instant,
    pub attempts: u32,
    /// Attempts that got no answer at all within the sender's answer timeout.
    pub unanswered: u32,
    /// The sender's window was more than one.
    pub pipelined: bool,
    pub ack: Option<Ack>,
    pub gave_up: bool,
}

/// Message id → what happened to it.
pub type Registry = Arc<Mutex<HashMap<String, SentMsg>>>;

impl Event {
    /// When it happened.
    pub fn at(&self) -> Instant {
        match self {
            Event::Connected { at, .. }
            | Event::Lost { at, .. }
            | Event::Joined { at, .. }
            | Event::Msg { at, .. }
            | Event::Gap { at, .. }
            | Event::Reset { at, .. }
            | Event::SendError { at, .. }
            | Event::Failed { at, .. } => *at,
        }
    }
}

/// One line for a timeline (deliveries are left out), with the time
/// relative to the fault.
pub fn describe(e: &Event, t_ref: Instant) -> Option<String> {
    let ms = |at: &Instant| {
        if *at >= t_ref {
            format!("+{}ms", at.duration_since(t_ref).as_millis())
        } else {
            format!("-{}ms", t_ref.duration_since(*at).as_millis())
        }
    };
    Some(match e {
        Event::Msg { .. } => return None,
        Event::Connected { at, app_id } => format!("{} connected to {app_id}", ms(at)),
        Event::Lost { at, reason } => format!("{} lost: {reason}", ms(at)),
        Event::Joined {
            at,
            room,
            epoch,
            head,
            recovered,
            since,
        } => {
            format!("{} joined {room} epoch={epoch} head={head} recovered={recovered:?} since={since:?}", ms(at))
        }
        Event::Gap {
            at,
            room,
            epoch,
            from,
            to,
        } => format!("{} gap {room} {epoch}:{from}..={to}", ms(at)),
        Event::Reset {
            at,
            room,
            epoch,
            previous,
            last,
        } => {
            format!("{} reset {room} {previous}:{last} -> {epoch}", ms(at))
        }
        Event::SendError { at, id, code } => format!("{} error {} for {id}", ms(at), code.as_str()),
        Event::Failed { at, reason } => format!("{} FAILED: {reason}", ms(at)),
    })
}

/// Write each peer's whole record, and every sent message, to
/// `chaos-<scenario>-<peer>.log` files in `dir`, times relative to `t_ref`.
pub fn dump(
    dir: &std::path::Path,
    scenario: &str,
    peers: &[std::sync::Arc<Peer>],
    reg: &HashMap<String, SentMsg>,
    t_ref: Instant,
) {
    let rel = |at: Instant| {
        if at >= t_ref {
            format!("+{}ms", at.duration_since(t_ref).as_millis())
        } else {
            format!("-{}ms", t_ref.duration_since(at).as_millis())
        }
    };
    for p in peers {
        let mut s = String::new();
        for e in p.snapshot() {
            let line = match &e {
                Event::Msg {
                    at,
                    room,
                    epoch,
                    offset,
                    id,
                } => format!(
                    "{} msg {room} {epoch}:{offset} {}",
                    rel(*at),
                    id.as_deref().unwrap_or("-")
                ),
                other => describe(other, t_ref).unwrap_or_default(),
            };
            let _ = writeln!(s, "{line}");
        }
        let _ = std::fs::write(dir.join(format!("chaos-{scenario}-{}.log", p.spec.name)), s);
    }
    let mut sent: Vec<(&String, &SentMsg)> = reg.iter().collect();
    sent.sort_by_key(|(_, m)| (m.sender.clone(), m.seq));
    let mut s = String::new();
    for (id, m) in sent {
        let _ = writeln!(
            s,
            "{id} {} first_send={} attempts={} unanswered={} ack={:?} gave_up={}",
            m.room,
            rel(m.first_send),
            m.attempts,
            m.unanswered,
            m.ack,
            m.gave_up
        );
    }
    let _ = std::fs::write(dir.join(format!("chaos-{scenario}-sent.log")), s);
}
