//! What must survive a reconnect: the nick, the joined rooms with the last
//! offset seen in each, and the messages not yet confirmed by the server.
//!
//! The session is plain data driven by the network actor, so resume and
//! deduplication are tested without sockets. The rules:
//! - every room resumes with `since` = the last offset seen, so the server
//!   replays exactly what was missed;
//! - a message at or below that offset is a duplicate and is dropped;
//! - a message sent but not echoed when the socket dropped is sent again
//!   only once its room has caught up to the `head` the server announced on
//!   re-join: if the server had accepted it, the replay holds it (with our
//!   id) and it is not sent twice.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chat_protocol::{ClientFrame, ErrorCode, ServerFrame};

/// Most unconfirmed sends kept while disconnected.
pub const OUTBOX_MAX: usize = 256;

/// How long to wait for replay to reach the announced head before sending
/// anyway: if the server lost its history, the head never arrives, and a
/// possible duplicate is better than a line that never leaves.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(3);

/// One joined room as the network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedRoom {
    pub name: String,
    /// The last offset seen, or the point replay starts from. `None` until
    /// the first `joined`: then there is nothing to resume from.
    pub last: Option<u64>,
    /// The room's head announced by `joined` on the current connection;
    /// `None` until then.
    pub head: Option<u64>,
    /// When `joined` arrived on the current connection.
    pub joined_at: Option<Instant>,
}

impl TrackedRoom {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            last: None,
            head: None,
            joined_at: None,
        }
    }

    /// Replay on this connection has reached the head announced at join
    /// (or has had [`CATCH_UP_LIMIT`] to do so).
    pub fn caught_up(&self, now: Instant) -> bool {
        matches!((self.head, self.last), (Some(h), Some(l)) if l >= h)
            || self.joined_at.is_some_and(|t| now >= t + CATCH_UP_LIMIT)
    }
}

/// How often a send refused with `unavailable` (the server's backend is
/// down, "may be retried") is tried again before the user is told.
pub const UNAVAILABLE_RETRIES: u32 = 10;
/// The wait between those tries.
pub const UNAVAILABLE_DELAY: Duration = Duration::from_secs(2);

/// A chat line waiting for the server's echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: String,
    pub room: String,
    pub text: String,
    pub action: bool,
    /// Written to the current connection.
    pub sent: bool,
    /// Tries refused with `unavailable` so far.
    pub retries: u32,
    /// Not to be written before this (after an `unavailable`).
    pub not_before: Option<Instant>,
}

impl Outgoing {
    pub fn new(id: &str, room: &str, text: &str, action: bool) -> Self {
        Self {
            id: id.to_string(),
            room: room.to_string(),
            text: text.to_string(),
            action,
            sent: false,
            retries: 0,
            not_before: None,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        !self.sent && self.not_before.is_none_or(|t| t <= now)
    }
}

/// The resumable state of the connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub nick: String,
    /// Joined rooms in join order. The first is the room in the connect URL.
    pub rooms: Vec<TrackedRoom>,
    pub outbox: VecDeque<Outgoing>,
    /// Messages replayed when joining a room for the first time.
    pub history: u32,
}

impl Session {
    pub fn new(nick: &str, room: &str, history: u32) -> Self {
        Self {
            nick: nick.to_string(),
            rooms: vec![TrackedRoom::new(room)],
            outbox: VecDeque::new(),
            history,
        }
    }

    pub fn room(&self, name: &str) -> Option<&TrackedRoom> {
        self.rooms.iter().find(|r| r.name == name)
    }

    fn room_mut(&mut self, name: &str) -> Option<&mut TrackedRoom> {
        self.rooms.iter_mut().find(|r| r.name == name)
    }

    fn join_params(&self, room: &TrackedRoom) -> (Option<u64>, Option<u32>) {
        match room.last {
            Some(since) => (Some(since), None),
            None => (None, Some(self.history).filter(|h| *h > 0)),
        }
    }

    /// The query parameters for the connect URL: the first room (resumed
    /// when possible) and the nick. A connection always starts in a room.
    pub fn connect_params(&self) -> Vec<(&'static str, String)> {
        // Without a nick the server picks one (and the welcome tells us).
        let mut q = Vec::new();
        if !self.nick.is_empty() {
            q.push(("nick", self.nick.clone()));
        }
        if let Some(first) = self.rooms.first() {
            q.push(("room", first.name.clone()));
            match self.join_params(first) {
                (Some(since), _) => q.push(("since", since.to_string())),
                (None, Some(h)) => q.push(("history", h.to_string())),
                (None, None) => {}
            }
        }
        q
    }

    /// A new connection is up (welcome received): nothing is joined or sent
    /// on it yet. Returns the joins for every room after the first.
    pub fn on_connected(&mut self) -> Vec<ClientFrame> {
        for r in &mut self.rooms {
            r.head = None;
            r.joined_at = None;
        }
        for o in &mut self.outbox {
            o.sent = false;
        }
        self.rooms
            .iter()
            .skip(1)
            .map(|r| {
                let (since, history) = self.join_params(r);
                ClientFrame::Join {
                    room: r.name.clone(),
                    since,
                    history,
                }
            })
            .collect()
    }

    /// The user joins a room: returns the frame to send when connected
    /// (nothing if it is already joined).
    pub fn join(&mut self, room: &str) -> Option<ClientFrame> {
        if self.room(room).is_some() {
            return None;
        }
        let tracked = TrackedRoom::new(room);
        let (since, history) = self.join_params(&tracked);
        self.rooms.push(tracked);
        Some(ClientFrame::Join {
            room: room.to_string(),
            since,
            history,
        })
    }

    /// The user leaves a room: unconfirmed sends to it are dropped.
    pub fn leave(&mut self, room: &str) -> ClientFrame {
        self.rooms.retain(|r| r.name != room);
        self.outbox.retain(|o| o.room != room);
        ClientFrame::Leave {
            room: room.to_string(),
        }
    }

    /// Queue a chat line. Fails when too many are already waiting.
    pub fn enqueue(&mut self, out: Outgoing) -> Result<(), String> {
        if self.outbox.len() >= OUTBOX_MAX {
            return Err(format!(
                "{OUTBOX_MAX} messages are already waiting to be sent"
            ));
        }
        self.outbox.push_back(out);
        Ok(())
    }

    /// The next queued line that may be written now: not yet written on
    /// this connection, and its room has caught up (see the module doc).
    /// It is marked as written.
    pub fn next_sendable(&mut self, now: Instant) -> Option<ClientFrame> {
        let rooms = &self.rooms;
        let o = self
            .outbox
            .iter_mut()
            .find(|o| !o.sent && rooms.iter().any(|r| r.name == o.room && r.caught_up(now)))?;
        o.sent = true;
        Some(ClientFrame::Send {
            room: Some(o.room.clone()),
            text: o.text.clone(),
            id: Some(o.id.clone()),
            action: o.action,
        })
    }

    /// Whether something waits for [`Session::next_sendable`].
    pub fn has_sendable(&self, now: Instant) -> bool {
        self.outbox
            .iter()
            .any(|o| o.ready(now) && self.room(&o.room).is_some_and(|r| r.caught_up(now)))
    }

    /// The next moment after `now` when a send held back after
    /// `unavailable` may go (only future moments: a timer for a past one
    /// would fire again at once).
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.outbox
            .iter()
            .filter(|o| !o.sent)
            .filter_map(|o| o.not_before)
            .filter(|t| *t > now)
            .min()
    }

    /// Learn from a server frame. Returns false for a frame that must not
    /// be shown: a duplicate message, or an `unavailable` error for a send
    /// that will be retried.
    pub fn observe(&mut self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::Welcome { nick, .. } => self.nick.clone_from(nick),
            ServerFrame::Joined { room, head } => {
                let history = self.history;
                if let Some(r) = self.room_mut(room) {
                    r.head = Some(*head);
                    r.joined_at = Some(Instant::now());
                    if r.last.is_some_and(|last| *head < last) {
                        // The room's offsets went backwards: the server
                        // lost its history (say, Redis restarted empty).
                        // Keeping our old offset would drop every new
                        // message as a duplicate.
                        r.last = Some(*head);
                    }
                    if r.last.is_none() {
                        // A fresh join. Without replay, live messages
                        // follow the head. With replay, everything that
                        // comes is new to us: offsets are increasing but
                        // need not be dense, so `head - history` would not
                        // say where replay starts.
                        r.last = Some(if history == 0 { *head } else { 0 });
                    }
                }
            }
            ServerFrame::Message(m) => {
                if let Some(id) = &m.id {
                    self.outbox.retain(|o| &o.id != id);
                }
                if let Some(r) = self.room_mut(&m.room) {
                    if r.last.is_some_and(|last| m.offset <= last) {
                        return false;
                    }
                    r.last = Some(m.offset);
                }
            }
            ServerFrame::Gap { room, to, .. } => {
                if let Some(r) = self.room_mut(room) {
                    r.last = Some(r.last.map_or(*to, |l| l.max(*to)));
                }
            }
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                id: Some(id),
                ..
            } => {
                if let Some(o) = self.outbox.iter_mut().find(|o| &o.id == id) {
                    if o.retries < UNAVAILABLE_RETRIES {
                        // Keep it and try again shortly; the user sees the
                        // line as still sending, not as an error.
                        o.retries += 1;
                        o.sent = false;
                        o.not_before = Some(Instant::now() + UNAVAILABLE_DELAY);
                        return false;
                    }
                    self.outbox.retain(|o| &o.id != id);
                }
            }
            ServerFrame::Error { id: Some(id), .. } => {
                self.outbox.retain(|o| &o.id != id);
            }
            ServerFrame::Nick { nick, .. } => self.nick.clone_from(nick),
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests;
