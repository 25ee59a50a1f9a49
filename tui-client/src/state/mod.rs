//! Everything the client knows, and nothing about drawing it.
//!
//! [`App::update`] takes one [`Event`] (a key, the mouse, a paste, a
//! resize, a tick or a network event), changes the state and returns the
//! [`Action`]s for the run loop to carry out (requests to the network
//! worker, quitting). The view reads the state and never changes it.
//!
//! - [`room`] — a room's scrollback, unread counts, scrolling.
//! - [`members`] — a room's members, by connection and by person.
//! - [`input`] — the line editor and its history.
//! - [`command`] — slash-command parsing and help.
//! - [`clock`] — timestamps.
//! - [`older`] — paging back through the server's history.
//! - `keys`: keyboard and mouse bindings.
//! - `net_events`: what each network event does to the state.
//! - `presence`: joins, leaves (held back briefly) and nick changes.
//! - `commands`: carrying out commands and sending text.

pub mod clock;
pub mod command;
mod commands;
pub mod input;
mod keys;
pub mod members;
mod net_events;
pub mod older;
mod presence;
pub mod room;
mod search;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_protocol::Limits;
use crossterm::event::{KeyEvent, MouseEvent};
use ratatui::layout::Rect;

use crate::config::{KeyMap, Theme};
use crate::layout;
use crate::net::{NetEvent, Request};
use crate::wrap;
use clock::Clock;
use input::Input;
use room::{Geometry, Line, LineKind, Room};
pub use search::Search;

/// Lines of scrollback kept per room unless configured otherwise.
pub const DEFAULT_SCROLLBACK: usize = 10_000;

/// Where the connection stands, as the status bar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnStatus {
    /// An attempt is under way; `attempt` 0 is the first connect.
    Connecting {
        attempt: u32,
    },
    Connected,
    /// Waiting to retry at `at`.
    Reconnecting {
        attempt: u32,
        at: Instant,
        reason: String,
    },
    /// Not retrying until the user says so (`/reconnect`).
    Offline {
        reason: String,
    },
}

/// Something that happened, for [`App::update`].
#[derive(Debug, Clone)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Paste(String),
    /// The terminal's new size (columns, rows).
    Resize(u16, u16),
    Net(NetEvent),
    /// Time passes (for countdowns).
    Tick(Instant),
    /// The terminal gained (true) or lost the focus.
    Focus(bool),
}

/// A line for a room's log file (written by the run loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub room: String,
    /// `2026-12-01 20:42:12 <nick> text`, one line.
    pub text: String,
}

/// A notification to deliver (a command, or the terminal's OSC 777/9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub title: String,
    pub body: String,
}

/// A message that mentioned you, for `/mentions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub room: String,
    pub time: String,
    pub nick: String,
    pub text: String,
}

/// Most mentions kept for `/mentions`.
pub const MENTIONS_MAX: usize = 500;
/// Most log lines or notifications waiting for the run loop (it drains
/// them after every update; the cap only matters if it stops doing so).
const OUTBOX_MAX: usize = 10_000;
/// Own message ids remembered per process: a second delivery of one (a
/// send applied twice by a server without idempotency keys) is dropped.
const DELIVERED_IDS_MAX: usize = 4096;

/// Whether a room is a direct-message room (`dm.<a>.<b>`).
pub fn is_dm(room: &str) -> bool {
    dm_parties(room).is_some()
}

/// The two subjects of a `dm.<a>.<b>` room.
pub fn dm_parties(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix("dm.")?;
    let (a, b) = rest.split_once('.')?;
    (!a.is_empty() && !b.is_empty() && !b.contains('.')).then_some((a, b))
}

/// The direct-message room of two subjects: `dm.<a>.<b>` with `a < b` in
/// byte order, as the server wants it.
pub fn dm_room(me: &str, other: &str) -> String {
    if me.as_bytes() <= other.as_bytes() {
        format!("dm.{me}.{other}")
    } else {
        format!("dm.{other}.{me}")
    }
}

/// What the run loop must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Net(Request),
    /// Redraw the whole screen (Ctrl+L).
    Redraw,
    /// Write `text` to the file at `path` (`/save`).
    Save {
        path: String,
        text: String,
    },
    Quit,
}

/// How the client was started.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub nick: String,
    pub room: String,
    /// More rooms joined at start, after `room`.
    pub more_rooms: Vec<String>,
    /// Lines kept per room.
    pub scrollback: usize,
    pub clock: Clock,
    /// Prefix of this client's message ids, unique per process (see
    /// [`new_id_prefix`]).
    pub id_prefix: String,
}

/// The whole client state.
#[derive(Debug)]
pub struct App {
    pub url: String,
    /// This client's nick as the server last confirmed it (or as asked for,
    /// before the first welcome).
    pub nick: String,
    /// Joined rooms in the order of the room list (Alt+1 is the first).
    pub rooms: Vec<Room>,
    /// Index of the room shown.
    pub current: usize,
    pub conn: ConnStatus,
    /// Why the last connection or attempt failed, until the next welcome:
    /// the status bar shows it next to the attempts.
    pub last_failure: Option<String>,
    /// The instance the connection landed on.
    pub app_id: Option<String>,
    /// The instance before the last reconnect, when it was another one.
    pub prev_app_id: Option<String>,
    pub conn_id: Option<String>,
    /// Every connection id this client has had: when an instance dies, the
    /// cluster later announces the old connection's leave, which is not
    /// news to anyone here.
    pub own_conn_ids: Vec<String>,
    pub rtt: Option<Duration>,
    pub input: Input,
    /// Show the APP_ID each message came through.
    pub show_app_ids: bool,
    /// The terminal area.
    pub area: Rect,
    pub limits: Option<Limits>,
    /// The latest tick, for countdowns.
    pub now: Instant,
    pub clock: Clock,
    pub quit: bool,
    /// A message mentioned this client's nick since the run loop last
    /// looked (it rings the terminal bell with `--bell`).
    pub mentioned: bool,
    /// Colours from the config file.
    pub theme: Theme,
    /// Key bindings from the config file.
    pub keys: KeyMap,
    /// Words that count as mentions besides the nick.
    pub highlights: Vec<String>,
    /// Connected straight to an instance the registry named.
    pub direct: bool,
    /// A search of the room shown (`/search`, Ctrl+R).
    pub search: Option<Search>,
    /// Whether the terminal has the focus (notifications go out only
    /// without it).
    pub focused: bool,
    /// Lines for the room logs, taken by the run loop.
    pub log_out: Vec<LogEntry>,
    /// Notifications, taken by the run loop.
    pub notify_out: Vec<Notification>,
    /// Every mention of you across rooms, oldest first (`/mentions`).
    pub mention_log: VecDeque<Mention>,
    /// This client's token subject (for `dm.<a>.<b>` rooms).
    pub my_sub: Option<String>,
    /// Where `/save` writes by default.
    pub save_dir: Option<PathBuf>,
    /// Own message ids already shown (see [`DELIVERED_IDS_MAX`]).
    delivered_ids: VecDeque<String>,
    scrollback: usize,
    id_prefix: String,
    next_id: u64,
    /// Rooms whose `/who` answer should be printed when it arrives.
    who_pending: Vec<String>,
    /// Whether the client has ever been connected (the first welcome is
    /// "connected", later ones are "reconnected").
    was_connected: bool,
}

impl App {
    pub fn new(settings: Settings, area: Rect, now: Instant) -> Self {
        let mut app = Self {
            url: settings.url,
            nick: settings.nick,
            rooms: std::iter::once(&settings.room)
                .chain(&settings.more_rooms)
                .map(|r| Room::new(r, settings.scrollback))
                .collect(),
            current: 0,
            conn: ConnStatus::Connecting { attempt: 0 },
            last_failure: None,
            app_id: None,
            prev_app_id: None,
            conn_id: None,
            own_conn_ids: Vec::new(),
            rtt: None,
            input: Input::default(),
            show_app_ids: false,
            area,
            limits: None,
            now,
            clock: settings.clock,
            quit: false,
            mentioned: false,
            theme: Theme::default(),
            keys: KeyMap::default(),
            highlights: Vec::new(),
            direct: false,
            search: None,
            focused: true,
            log_out: Vec::new(),
            notify_out: Vec::new(),
            mention_log: VecDeque::new(),
            my_sub: None,
            save_dir: None,
            delivered_ids: VecDeque::new(),
            scrollback: settings.scrollback,
            id_prefix: settings.id_prefix,
            next_id: 0,
            who_pending: Vec::new(),
            was_connected: false,
        };
        let url = app.url.clone();
        let who = if app.nick.is_empty() {
            "a nick the server picks".to_string()
        } else {
            app.nick.clone()
        };
        app.info(&format!(
            "connecting to {url} as {who} — /help for commands, F1 for keys"
        ));
        app
    }

    /// Carry out one event.
    pub fn update(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Key(k) => self.on_key(k),
            Event::Mouse(m) => self.on_mouse(m),
            Event::Paste(s) => {
                if let Some(search) = self.search.as_mut().filter(|s| s.typing) {
                    search.needle.push_str(&s.replace(['\r', '\n'], " "));
                } else {
                    self.input.insert_str(&s);
                }
                Vec::new()
            }
            Event::Focus(f) => {
                self.focused = f;
                Vec::new()
            }
            Event::Resize(w, h) => {
                self.area = Rect::new(0, 0, w, h);
                Vec::new()
            }
            Event::Net(ev) => {
                self.on_net(ev);
                Vec::new()
            }
            Event::Tick(now) => {
                self.now = now;
                self.check_unconfirmed();
                self.release_leaves();
                Vec::new()
            }
        }
    }

    /// The room shown.
    pub fn room(&self) -> &Room {
        &self.rooms[self.current]
    }

    fn room_mut(&mut self) -> &mut Room {
        &mut self.rooms[self.current]
    }

    pub fn room_index(&self, name: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r.name == name)
    }

    /// How room `i` is called on screen: a direct-message room by the
    /// other party (`@bob`).
    pub fn room_label(&self, i: usize) -> String {
        let Some(r) = self.rooms.get(i) else {
            return String::new();
        };
        match dm_parties(&r.name) {
            Some((a, b)) => {
                let other = match self.my_sub.as_deref() {
                    Some(me) if me == a => b,
                    Some(me) if me == b => a,
                    _ => return format!("@{a}/{b}"),
                };
                format!("@{other}")
            }
            None => r.name.clone(),
        }
    }

    /// The rows of the room list below its title: the rooms (by index),
    /// then, after a `None` for the "Direct" heading, the direct-message
    /// rooms.
    pub fn sidebar_entries(&self) -> Vec<Option<usize>> {
        let (dms, rooms): (Vec<usize>, Vec<usize>) =
            (0..self.rooms.len()).partition(|&i| is_dm(&self.rooms[i].name));
        let mut out: Vec<Option<usize>> = rooms.into_iter().map(Some).collect();
        if !dms.is_empty() {
            out.push(None);
            out.extend(dms.into_iter().map(Some));
        }
        out
    }

    /// Whether `text` mentions this client: its nick or a highlight word.
    pub fn is_mention(&self, text: &str) -> bool {
        mentions(text, &self.nick) || self.highlights.iter().any(|w| mentions(text, w))
    }

    /// Queue a line for room `room`'s log.
    fn log(&mut self, room: &str, ts: u64, text: String) {
        if self.log_out.len() < OUTBOX_MAX {
            let when = self.clock.date_time(ts);
            self.log_out.push(LogEntry {
                room: room.to_string(),
                text: format!("{when} {}", text.replace('\n', " ⏎ ")),
            });
        }
    }

    /// Queue a notification (only while the terminal is unfocused: a user
    /// looking at the screen needs no pop-up).
    fn notify(&mut self, title: String, body: String) {
        if !self.focused && self.notify_out.len() < OUTBOX_MAX {
            self.notify_out.push(Notification { title, body });
        }
    }

    /// Remember that an own message id was shown; false if it already was.
    fn first_delivery(&mut self, id: &str) -> bool {
        if self.delivered_ids.iter().any(|d| d == id) {
            return false;
        }
        if self.delivered_ids.len() >= DELIVERED_IDS_MAX {
            self.delivered_ids.pop_front();
        }
        self.delivered_ids.push_back(id.to_string());
        true
    }

    /// Show the leaves held back past [`room::LEAVE_GRACE`].
    fn release_leaves(&mut self) {
        let now = self.now;
        for i in 0..self.rooms.len() {
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rooms[i].held_leaves)
                .into_iter()
                .partition(|h| h.until <= now);
            self.rooms[i].held_leaves = keep;
            for h in due {
                let room = self.rooms[i].name.clone();
                self.log(&room, h.ts, format!("<-- {}", h.line.text));
                let geo = self.geometry();
                self.rooms[i].push_held(h, geo);
            }
        }
    }

    /// The message pane's geometry, for scroll arithmetic.
    pub fn geometry(&self) -> Geometry {
        let pane = layout::panes(self.area).messages;
        Geometry {
            width: pane.width as usize,
            height: pane.height as usize,
            show_app_ids: self.show_app_ids,
        }
    }

    /// Show room `i` (its unread counts clear).
    pub fn switch_to(&mut self, i: usize) {
        if i < self.rooms.len() {
            self.current = i;
            self.rooms[i].mark_read();
        }
    }

    /// A line stamped now, from the client itself.
    fn local_line(&self, kind: LineKind, text: &str) -> Line {
        let stamp = self.clock.stamp(self.clock.now_ms());
        Line {
            time: stamp.time,
            day: stamp.day,
            kind,
            nick: String::new(),
            text: wrap::sanitize(text),
            app_id: None,
            offset: None,
        }
    }

    /// Append a line to room `i`.
    fn push_line(&mut self, i: usize, line: Line) {
        let geo = self.geometry();
        // Date separators only for server-stamped lines; client notices are
        // stamped "now" and would add one for every reconnect at midnight.
        let separators = matches!(line.kind, LineKind::Message { .. });
        self.rooms[i].push(line, geo, separators);
    }

    /// A notice in the room shown.
    pub fn info(&mut self, text: &str) {
        let line = self.local_line(LineKind::Info, text);
        self.push_line(self.current, line);
    }

    /// An error notice in the room shown.
    pub fn error(&mut self, text: &str) {
        let line = self.local_line(LineKind::Error, text);
        self.push_line(self.current, line);
    }

    /// A notice in every room (reconnects concern them all).
    fn info_everywhere(&mut self, text: &str) {
        for i in 0..self.rooms.len() {
            let line = self.local_line(LineKind::Info, text);
            self.push_line(i, line);
        }
    }

    /// Lines sent on a live connection that the server has not echoed
    /// within [`room::CONFIRM_LIMIT`] become warnings: the user should not
    /// believe a line went out when nothing says so. (The network worker
    /// still has it: should the echo come later, the line shows then.)
    fn check_unconfirmed(&mut self) {
        if self.conn != ConnStatus::Connected {
            return;
        }
        let now = self.now;
        for i in 0..self.rooms.len() {
            let late: Vec<Line> = {
                let r = &mut self.rooms[i];
                let (late, keep) = r.pending.drain(..).partition(|l| {
                    matches!(l.kind, LineKind::Pending { since, confirmed: None, .. }
                        if now.saturating_duration_since(since) >= room::CONFIRM_LIMIT)
                });
                r.pending = keep;
                late
            };
            for l in late {
                let line = self.local_line(
                    LineKind::Error,
                    &format!(
                        "no confirmation from the server after {}s (it may still arrive): {}",
                        room::CONFIRM_LIMIT.as_secs(),
                        l.text
                    ),
                );
                self.push_line(i, line);
            }
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.id_prefix, self.next_id)
    }

    /// Nicks to complete with Tab: the members of the room shown.
    fn completion_names(&self) -> Vec<String> {
        self.room()
            .members
            .iter()
            .map(|p| p.nick.to_string())
            .collect()
    }
}

/// A prefix for this process's message ids: 8 random hex digits, to which
/// a counter is added (`1f3a9c04-17`, far inside
/// [`chat_protocol::names::MAX_ID_LEN`]). The server keeps ids as
/// idempotency keys per nick and room for minutes, so they must not repeat
/// across runs: with a counter alone, a client restarted under the same
/// nick would have its new first line swallowed as a retry of the old one.
pub fn new_id_prefix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Whether `text` mentions `nick` as a whole word (any case).
pub fn mentions(text: &str, nick: &str) -> bool {
    if nick.is_empty() {
        return false;
    }
    let text = text.to_lowercase();
    let nick = nick.to_lowercase();
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(&nick).any(|(i, _)| {
        !is_word(text[..i].chars().next_back()) && !is_word(text[i + nick.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests;
