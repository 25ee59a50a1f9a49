//! What must survive a reconnect: the nick, the joined rooms with the epoch
//! and last offset seen in each, and the messages not yet confirmed by the
//! server.
//!
//! The session is plain data driven by the network actor, so resume and
//! deduplication are tested without sockets. The rules:
//! - every room resumes with `since` = the last offset seen and `epoch` =
//!   the room's epoch, so the server replays exactly what was missed (or
//!   says `recovered: false` when the epoch changed meanwhile);
//! - offsets are compared only within one epoch: a message of the tracked
//!   epoch at or below the last offset is a duplicate and is dropped; a
//!   message of another epoch is never a duplicate, and its epoch is
//!   adopted (as on a `reset`);
//! - a message sent but not echoed when the socket dropped is sent again
//!   only once its room has caught up to the `head` the server announced on
//!   re-join: if the server had accepted it, the replay holds it (with our
//!   id) and it is not sent twice. Should it go twice anyway, the id is an
//!   idempotency key: the server answers `sent` with `duplicate: true`
//!   instead of publishing it again;
//! - a send refused with `unavailable` (not applied) or `timeout` (maybe
//!   applied) is retried with the same id after a growing delay.

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
    /// the first `joined`: then there is nothing to resume from. It is the
    /// resume point even when `last_in_epoch` is false: history replays
    /// in stream order across epochs, so "after `last`" is still right.
    pub last: Option<u64>,
    /// The epoch of the room's offsets, from `joined`, `reset` or the
    /// latest message. Empty for a server without epochs (or before the
    /// first `joined`).
    pub epoch: String,
    /// Whether `last` is an offset of `epoch`. False after a `reset` (or a
    /// `joined` with another epoch) until the first message of the new
    /// epoch: offsets of different epochs are not comparable, so that
    /// message is new whatever its offset.
    pub last_in_epoch: bool,
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
            epoch: String::new(),
            last_in_epoch: true,
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

    /// Whether a message of this room was already seen. Offsets compare
    /// only within one epoch; an empty epoch (a server without epochs)
    /// matches any.
    fn seen(&self, epoch: &str, offset: u64) -> bool {
        let same_epoch = epoch.is_empty() || self.epoch.is_empty() || epoch == self.epoch;
        same_epoch && self.last_in_epoch && self.last.is_some_and(|last| offset <= last)
    }

    /// A message of this room is new: it is now the last one seen.
    fn advance(&mut self, epoch: &str, offset: u64) {
        if !epoch.is_empty() && epoch != self.epoch {
            // A new epoch without a `reset` before it (say, replay that
            // crosses one): adopt it, never drop it as a duplicate.
            self.epoch = epoch.to_string();
        }
        self.last = Some(offset);
        self.last_in_epoch = true;
    }

    /// The room moved to `epoch` (a `reset`, or a `joined` that says so).
    /// Returns whether that is news.
    fn adopt(&mut self, epoch: &str) -> bool {
        if epoch.is_empty() || epoch == self.epoch {
            return false;
        }
        self.epoch = epoch.to_string();
        self.last_in_epoch = false;
        true
    }
}

/// How often a send refused with `unavailable` (the server's backend is
/// down: not applied) or `timeout` (maybe applied) is tried again, with the
/// same id, before the user is told.
pub const SEND_RETRIES: u32 = 8;
/// The wait before the first retry; it doubles up to [`SEND_RETRY_CAP`].
/// Together the tries take about 27 s, inside the 30 s after which the UI
/// calls a line unconfirmed.
pub const SEND_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
pub const SEND_RETRY_CAP: Duration = Duration::from_secs(4);

/// The wait before retry number `n` (1-based).
pub fn send_retry_delay(n: u32) -> Duration {
    SEND_RETRY_DELAY
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(SEND_RETRY_CAP)
}

/// A chat line waiting for the server's echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: String,
    pub room: String,
    pub text: String,
    pub action: bool,
    /// Written to the current connection.
    pub sent: bool,
    /// Tries refused with `unavailable` or `timeout` so far.
    pub retries: u32,
    /// Not to be written before this (after such a refusal).
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

/// The resume fields of a `join` (or of the connect URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinParams {
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub history: Option<u32>,
}

impl JoinParams {
    fn frame(self, room: &str) -> ClientFrame {
        ClientFrame::Join {
            room: room.to_string(),
            since: self.since,
            epoch: self.epoch,
            history: self.history,
        }
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

    /// How to (re-)join a room: resume after the last offset seen, in the
    /// room's epoch, or ask for history on a first join.
    ///
    /// After a `reset` with nothing of the new epoch seen yet, `since` is
    /// still the last offset of the old epoch but `epoch` the new one: the
    /// user was told about that reset already, and history replays in
    /// stream order, so what follows `since` is exactly what is missing.
    /// Should the epoch change again meanwhile, the server says so.
    pub fn join_params(&self, room: &TrackedRoom) -> JoinParams {
        match room.last {
            Some(since) => JoinParams {
                since: Some(since),
                epoch: Some(room.epoch.clone()).filter(|e| !e.is_empty()),
                history: None,
            },
            None => JoinParams {
                since: None,
                epoch: None,
                history: Some(self.history).filter(|h| *h > 0),
            },
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
            let p = self.join_params(first);
            if let Some(since) = p.since {
                q.push(("since", since.to_string()));
                if let Some(epoch) = p.epoch {
                    q.push(("epoch", epoch));
                }
            } else if let Some(h) = p.history {
                q.push(("history", h.to_string()));
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
            .map(|r| self.join_params(r).frame(&r.name))
            .collect()
    }

    /// The user joins a room: returns the frame to send when connected
    /// (nothing if it is already joined).
    pub fn join(&mut self, room: &str) -> Option<ClientFrame> {
        if self.room(room).is_some() {
            return None;
        }
        let tracked = TrackedRoom::new(room);
        let frame = self.join_params(&tracked).frame(room);
        self.rooms.push(tracked);
        Some(frame)
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
    /// this connection, not waiting for a retry, and its room has caught
    /// up (see the module doc).
    /// It is marked as written.
    pub fn next_sendable(&mut self, now: Instant) -> Option<ClientFrame> {
        let rooms = &self.rooms;
        let o = self
            .outbox
            .iter_mut()
            .find(|o| o.ready(now) && rooms.iter().any(|r| r.name == o.room && r.caught_up(now)))?;
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

    /// The next moment after `now` when a send held back for a retry may go (only future moments: a timer for a past one
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
    /// be shown: a duplicate message, or a refusal of a send that will be
    /// retried.
    pub fn observe(&mut self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::Welcome { nick, .. } => self.nick.clone_from(nick),
            ServerFrame::Joined {
                room,
                head,
                epoch,
                recovered,
            } => {
                let history = self.history;
                if let Some(r) = self.room_mut(room) {
                    r.head = Some(*head);
                    r.joined_at = Some(Instant::now());
                    match r.last {
                        None => {
                            // A fresh join. Without replay, live messages
                            // follow the head. With replay, everything that
                            // comes is new to us: offsets are increasing but
                            // need not be dense, so `head - history` would
                            // not say where replay starts.
                            r.last = Some(if history == 0 { *head } else { 0 });
                            r.epoch.clone_from(epoch);
                            r.last_in_epoch = true;
                        }
                        Some(_) if *recovered == Some(false) || !r.epoch.is_empty() => {
                            // A resume. Another epoch (said by the server,
                            // or only seen here, from a server that does not
                            // read our epoch) makes our offset incomparable
                            // with the new ones.
                            r.adopt(epoch);
                        }
                        Some(last) => {
                            if epoch.is_empty() && *head < last {
                                // A server without epochs whose offsets
                                // went backwards: it lost its history (say,
                                // Redis restarted empty). Keeping our old
                                // offset would drop every new message as a
                                // duplicate.
                                r.last = Some(*head);
                            }
                            // A server that starts naming epochs: take it.
                            r.epoch.clone_from(epoch);
                        }
                    }
                }
            }
            ServerFrame::Reset { room, epoch, .. } => {
                if let Some(r) = self.room_mut(room) {
                    r.adopt(epoch);
                }
            }
            ServerFrame::Message(m) => {
                if let Some(id) = &m.id {
                    self.outbox.retain(|o| &o.id != id);
                }
                if let Some(r) = self.room_mut(&m.room) {
                    if r.seen(&m.epoch, m.offset) {
                        return false;
                    }
                    r.advance(&m.epoch, m.offset);
                }
            }
            ServerFrame::Gap { room, to, .. } => {
                if let Some(r) = self.room_mut(room) {
                    let to = match r.last {
                        Some(l) if r.last_in_epoch => l.max(*to),
                        _ => *to,
                    };
                    r.last = Some(to);
                    r.last_in_epoch = true;
                }
            }
            // A retry of a send that was already applied: it is delivered
            // (its message came, or comes with the resume); never again.
            ServerFrame::Sent { id, .. } => self.outbox.retain(|o| &o.id != id),
            ServerFrame::Error {
                code: ErrorCode::Unavailable | ErrorCode::Timeout,
                id: Some(id),
                ..
            } => {
                if let Some(o) = self.outbox.iter_mut().find(|o| &o.id == id) {
                    if o.retries < SEND_RETRIES {
                        // Keep it and try again shortly, with the same id:
                        // after a `timeout` the server may have applied it,
                        // and the id makes sure it is not published twice.
                        // The user sees the line as still sending.
                        o.retries += 1;
                        o.sent = false;
                        o.not_before = Some(Instant::now() + send_retry_delay(o.retries));
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
