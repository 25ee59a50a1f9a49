//! Carrying out what the user typed: chat text and slash commands.

use chat_protocol::names;

use super::command::{self, Command};
use super::room::{Line, LineKind, Room};
use super::{dm_room, Action, App, ConnStatus};
use crate::net::Request;
use crate::wrap;

/// The server's limit on one message before the welcome says otherwise.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;
/// A paste longer than this many messages is refused rather than flooding
/// the room (and the outbox).
const MAX_PIECES: usize = 20;

impl App {
    /// Enter: run the input line.
    pub(super) fn submit(&mut self) -> Vec<Action> {
        let line = self.input.submit();
        if line.trim().is_empty() {
            return Vec::new();
        }
        self.room_mut().scroll_to_bottom();
        match command::parse(&line) {
            Ok(cmd) => self.run(cmd),
            Err(e) => {
                self.error(&e.0);
                Vec::new()
            }
        }
    }

    /// Carry out a command.
    pub fn run(&mut self, cmd: Command) -> Vec<Action> {
        match cmd {
            Command::Say(text) => self.say(&text, false),
            Command::Me(text) => self.say(&text, true),
            Command::Join(room) => self.join(&room),
            Command::Leave(room) => self.leave(room),
            Command::Nick(nick) => {
                if let Err(e) = names::validate_nick(&nick) {
                    self.error(&format!("cannot use nick {nick:?}: {e}"));
                    return Vec::new();
                }
                if self.conn != ConnStatus::Connected {
                    self.info(&format!("not connected: {nick} will be used on reconnect"));
                }
                vec![Action::Net(Request::Nick(nick))]
            }
            Command::Who(room) => {
                let name = room.unwrap_or_else(|| self.room().name.clone());
                let Some(i) = self.room_index(&name) else {
                    self.error(&format!("you are not in {name}"));
                    return Vec::new();
                };
                if self.conn != ConnStatus::Connected {
                    self.info("not connected: the members below are from before the disconnect");
                    self.print_members(i);
                    return Vec::new();
                }
                self.who_pending.push(name.clone());
                vec![Action::Net(Request::Who(Some(name)))]
            }
            Command::Switch(target) => {
                self.switch(&target);
                Vec::new()
            }
            Command::Help(topic) => {
                self.show_help(topic.as_deref());
                Vec::new()
            }
            Command::Quit => vec![Action::Quit],
            Command::AppIds => {
                self.toggle_app_ids();
                Vec::new()
            }
            Command::Reconnect => {
                self.info("reconnecting now");
                vec![Action::Net(Request::Reconnect)]
            }
            Command::Save(path) => {
                let room = self.room();
                // Not the current directory: the log directory, with the
                // time, so saving twice keeps both.
                let path = path.unwrap_or_else(|| {
                    let dir = self
                        .save_dir
                        .clone()
                        .unwrap_or_else(|| crate::config::state_dir().join("logs"));
                    let stamp = self
                        .clock
                        .date_time(self.clock.now_ms())
                        .replace([' ', ':'], "-");
                    dir.join(format!("{}-saved-{stamp}.txt", room.name))
                        .display()
                        .to_string()
                });
                let text = scrollback_text(room);
                vec![Action::Save { path, text }]
            }
            Command::Lastlog(text) => {
                self.lastlog(&text);
                Vec::new()
            }
            Command::Search(text) => {
                self.search_for(&text);
                if self.search.as_ref().is_some_and(|s| s.at.is_none()) {
                    self.info(&format!("no line here holds {text:?}"));
                }
                Vec::new()
            }
            Command::Mentions => {
                self.show_mentions();
                Vec::new()
            }
            Command::Msg { nick, text } => match self.dm_with(&nick, false) {
                Some((i, mut actions)) => {
                    actions.extend(self.say_in(i, &text, false));
                    actions
                }
                None => Vec::new(),
            },
            Command::Query(nick) => self
                .dm_with(&nick, true)
                .map(|(_, a)| a)
                .unwrap_or_default(),
            Command::Clear => {
                let r = self.room_mut();
                r.lines.clear();
                r.scroll_to_bottom();
                // What was cleared can be paged back in.
                r.older = super::older::Older::Idle;
                Vec::new()
            }
        }
    }

    /// Send text to the room shown.
    fn say(&mut self, text: &str, action: bool) -> Vec<Action> {
        self.say_in(self.current, text, action)
    }

    /// Send text to room `i`, split to fit the server's limit. Each piece
    /// shows at once as a pending line until the server echoes it.
    fn say_in(&mut self, i: usize, text: &str, action: bool) -> Vec<Action> {
        let max = self
            .limits
            .as_ref()
            .map_or(DEFAULT_MAX_MESSAGE_BYTES, |l| l.max_message_bytes as usize);
        let room = self.rooms[i].name.clone();
        let pieces = split_message(text, max);
        if pieces.len() > MAX_PIECES {
            self.error(&format!(
                "that text would go out as {} messages (the server takes {max} bytes per message); \
                 at most {MAX_PIECES} at once — shorten it or share it another way",
                pieces.len()
            ));
            return Vec::new();
        }
        let mut actions = Vec::new();
        for piece in pieces {
            let id = self.new_id();
            let now = self.clock.stamp(self.clock.now_ms());
            let pending = Line {
                time: now.time,
                day: now.day,
                kind: LineKind::Pending {
                    id: id.clone(),
                    action,
                    since: self.now,
                    confirmed: None,
                },
                nick: self.nick.clone(),
                text: wrap::sanitize(&piece),
                app_id: None,
                offset: None,
            };
            self.rooms[i].pending.push(pending);
            actions.push(Action::Net(Request::Send {
                room: room.clone(),
                text: piece,
                id,
                action,
            }));
        }
        actions
    }

    /// The direct-message room with `nick` (joined if need be; shown when
    /// `show`): `dm.<a>.<b>` of the two token subjects. `None` (with the
    /// reason said) without a token of our own.
    fn dm_with(&mut self, nick: &str, show: bool) -> Option<(usize, Vec<Action>)> {
        let Some(me) = self.my_sub.clone() else {
            self.error(
                "direct messages need a token (--token or --token-file): the server lets \
                 only the two token subjects into a dm room",
            );
            return None;
        };
        // Their subject, when a member list knows it; else the nick (a
        // token's nick defaults to its subject).
        let other = self
            .rooms
            .iter()
            .flat_map(|r| r.members.subject_of(nick))
            .next()
            .unwrap_or_else(|| nick.to_string());
        if other == me {
            self.error("that is you: a direct message needs someone else");
            return None;
        }
        let room = dm_room(&me, &other);
        if let Err(e) = names::validate_room(&room) {
            self.error(&format!("cannot message {nick:?}: {e}"));
            return None;
        }
        if let Some(i) = self.room_index(&room) {
            if show {
                self.switch_to(i);
            }
            return Some((i, Vec::new()));
        }
        let shown = self.current;
        let actions = self.join(&room);
        let i = self.room_index(&room)?;
        if !show {
            self.switch_to(shown);
        }
        Some((i, actions))
    }

    /// `/mentions`: every message that mentioned you, oldest first, as
    /// notices in the room shown.
    pub(super) fn show_mentions(&mut self) {
        let all: Vec<String> = self
            .mention_log
            .iter()
            .map(|m| format!("  {} {} <{}> {}", m.time, m.room, m.nick, m.text))
            .collect();
        self.info(&format!("mentions of you: {}", all.len()));
        for line in all {
            self.info(&line);
        }
    }

    fn join(&mut self, room: &str) -> Vec<Action> {
        let room = room.trim_start_matches('/');
        if let Some(i) = self.room_index(room) {
            self.switch_to(i);
            return Vec::new();
        }
        if let Err(e) = names::validate_room(room) {
            self.error(&format!("cannot join {room:?}: {e}"));
            return Vec::new();
        }
        if let Some(max) = self.limits.as_ref().map(|l| l.max_rooms as usize) {
            if self.rooms.len() >= max {
                self.error(&format!(
                    "the server allows {max} rooms per connection; /leave one first"
                ));
                return Vec::new();
            }
        }
        self.rooms.push(Room::new(room, self.scrollback));
        self.switch_to(self.rooms.len() - 1);
        self.info(&format!("joining {room}…"));
        vec![Action::Net(Request::Join(room.to_string()))]
    }

    fn leave(&mut self, room: Option<String>) -> Vec<Action> {
        let name = room.unwrap_or_else(|| self.room().name.clone());
        let Some(i) = self.room_index(&name) else {
            self.error(&format!("you are not in {name}"));
            return Vec::new();
        };
        if self.rooms.len() == 1 {
            self.error(&format!(
                "{name} is your only room: /join another one before leaving it, or /quit"
            ));
            return Vec::new();
        }
        self.remove_room(i);
        self.info(&format!("left {name}"));
        vec![Action::Net(Request::Leave(name))]
    }

    /// Drop room `i`, keeping a valid current room.
    pub(super) fn remove_room(&mut self, i: usize) {
        self.rooms.remove(i);
        if self.current > i || self.current >= self.rooms.len() {
            self.current = self.current.saturating_sub(1);
        }
        self.switch_to(self.current);
    }

    fn switch(&mut self, target: &str) {
        let by_number = target
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=self.rooms.len()).contains(n))
            .map(|n| n - 1);
        match by_number.or_else(|| self.room_index(target)) {
            Some(i) => self.switch_to(i),
            None => {
                let joined: Vec<String> = self
                    .rooms
                    .iter()
                    .enumerate()
                    .map(|(i, r)| format!("{} {}", i + 1, r.name))
                    .collect();
                self.error(&format!(
                    "no room {target:?} here; joined: {} (use /join to join a new one)",
                    joined.join(", ")
                ));
            }
        }
    }

    /// `/lastlog`: the newest matching lines of the room shown, oldest
    /// first, as notices (the scrollback itself is not filtered).
    fn lastlog(&mut self, text: &str) {
        const SHOWN: usize = 50;
        let needle = text.to_lowercase();
        let mut hits: Vec<String> = self
            .room()
            .lines
            .iter()
            .rev()
            .filter(|l| matches!(l.kind, LineKind::Message { .. }))
            .filter(|l| l.text.to_lowercase().contains(&needle))
            .take(SHOWN)
            .map(|l| format!("  {} <{}> {}", l.time, l.nick, l.text))
            .collect();
        hits.reverse();
        self.info(&format!(
            "lastlog {text:?}: {} line(s){}",
            hits.len(),
            if hits.len() == SHOWN {
                " (the newest 50)"
            } else {
                ""
            }
        ));
        for h in hits {
            self.info(&h);
        }
    }

    pub(super) fn show_help(&mut self, topic: Option<&str>) {
        for line in command::help(topic) {
            self.info(&line);
        }
    }

    pub(super) fn toggle_app_ids(&mut self) {
        self.show_app_ids = !self.show_app_ids;
        let state = if self.show_app_ids { "shown" } else { "hidden" };
        self.info(&format!(
            "APP_IDs {state}: each message shows the instance that accepted it (F2 toggles)"
        ));
    }

    /// Print the members of room `i` into the room shown.
    pub(super) fn print_members(&mut self, i: usize) {
        let r = &self.rooms[i];
        // One entry per person, with every instance they are connected
        // through (two for a while after a failover).
        let mut by_app: Vec<String> = r
            .members
            .iter()
            .map(|p| format!("{} ({})", p.nick, p.app_ids.join(", ")))
            .collect();
        let total = r.members.count();
        const SHOWN: usize = 200;
        by_app.truncate(SHOWN);
        let more = if total > by_app.len() {
            format!(" and {} more", total - by_app.len())
        } else {
            String::new()
        };
        let text = format!("{total} in {}: {}{more}", r.name, by_app.join(", "));
        self.info(&text);
    }
}

/// A room's scrollback as plain text, one line each; messages carry their
/// offset so a saved log shows exactly what arrived, and in which order.
pub(crate) fn scrollback_text(room: &Room) -> String {
    let mut out = String::new();
    for l in &room.lines {
        let line = match (&l.kind, l.offset) {
            (LineKind::Message { action: true, .. }, Some(o)) => {
                format!("{} #{o} * {} {}", l.time, l.nick, l.text)
            }
            (LineKind::Message { .. }, Some(o)) => {
                format!("{} #{o} <{}> {}", l.time, l.nick, l.text)
            }
            _ => format!("{} -- {}", l.time, l.text),
        };
        // Multi-line messages stay one line each in the file.
        out.push_str(&line.replace('\n', " ⏎ "));
        out.push('\n');
    }
    out
}

/// Cut `text` into pieces of at most `max` bytes, at white space where
/// possible and never inside a character.
pub(crate) fn split_message(text: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = rest[..cut].rfind(char::is_whitespace) {
            if space > max / 2 {
                cut = space + rest[space..].chars().next().map_or(1, char::len_utf8);
            }
        }
        pieces.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}
