//! Paging back through a room's history: PageUp (or Ctrl+Home, or the
//! mouse wheel) at the top of what is loaded asks the server's `/history`
//! for the page before the oldest message shown, and the page goes in
//! above it.
//!
//! - Each offset shows once and in order: a page's messages already in
//!   the scrollback are skipped, and so are ones not older than the
//!   oldest shown, or newer than the last live message (the WebSocket
//!   delivers those in order).
//! - The view stays put: the scroll position counts rows up from the
//!   bottom, and the page goes in above what is shown (the reader sees
//!   its newest lines come in at the top and pages on up).
//! - A page is old news, like the replay of a fresh join: no unread
//!   count, no bell, no notification, no `/mentions` entry, and nothing
//!   in the room's log file (which records live lines only).
//! - While a page is on its way a "loading" line stands where it will go;
//!   a failure takes its place (PageUp tries again), and when the server
//!   says there is nothing older, a "beginning of history" line closes
//!   the top and no more requests are made for that room.

use std::collections::HashSet;

use chat_protocol::ChatMessage;

use super::room::{Geometry, Line, LineKind, Room};
use super::{Action, App};
use crate::layout;
use crate::net::history::Page;
use crate::net::Request;
use crate::wrap;

/// Where paging back through a room's history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Older {
    /// Nothing asked: PageUp at the top asks for the page before the
    /// oldest message shown.
    #[default]
    Idle,
    /// A page is on its way (a "loading" line shows where it goes).
    Loading,
    /// The server said there is nothing older: no more requests.
    Done,
}

/// Messages asked for per page.
pub const PAGE: u32 = 100;
/// The line that stands where a page will go.
pub const LOADING: &str = "loading older messages…";
/// The line above the oldest message once the server has nothing older.
pub const BEGINNING: &str = "— beginning of history —";
/// How a failed page starts (the line goes when the next one is asked).
pub const FAILED: &str = "could not load older messages";

impl Room {
    /// Whether the view shows the oldest line (the top of the scrollback).
    pub fn at_top(&self, geo: Geometry) -> bool {
        let want = self.scroll + geo.height;
        let mut total = 0;
        for line in self.lines_rev() {
            total += layout::line_height(line, geo.width, geo.show_app_ids);
            if total > want {
                return false;
            }
        }
        true
    }

    /// The offset of the oldest message shown.
    pub fn oldest_offset(&self) -> Option<u64> {
        self.lines.iter().filter_map(|l| l.offset).min()
    }

    /// Where older messages go: before the first message (below the notices
    /// and the "history" separator above it), else at the very top.
    fn older_at(&self) -> usize {
        self.lines
            .iter()
            .position(|l| l.offset.is_some())
            .unwrap_or(0)
    }

    /// Whether a line is the loading line or a failed page's line.
    fn is_older_note(l: &Line) -> bool {
        l.offset.is_none()
            && match l.kind {
                LineKind::Info => l.text == LOADING,
                LineKind::Error => l.text.starts_with(FAILED),
                _ => false,
            }
    }

    /// Take the loading or failure line away. Returns where it stood.
    fn remove_older_note(&mut self) -> Option<usize> {
        let at = self.lines.iter().position(Self::is_older_note)?;
        self.remove_at(at);
        Some(at)
    }

    /// Put `lines` in at `at`, as many as the capacity allows (the newest
    /// of them: they join what is below). The view does not move: the
    /// scroll position counts rows from the bottom. Returns how many went
    /// in.
    fn insert_at(&mut self, at: usize, mut lines: Vec<Line>) -> usize {
        let room = self.capacity().saturating_sub(self.lines.len());
        if lines.len() > room {
            lines.drain(..lines.len() - room);
        }
        let n = lines.len();
        for (k, l) in lines.into_iter().enumerate() {
            self.lines.insert(at + k, l);
        }
        if let Some(r) = self.replay_at.as_mut().filter(|r| **r >= at) {
            *r += n;
        }
        n
    }

    fn remove_at(&mut self, at: usize) {
        self.lines.remove(at);
        if let Some(r) = self.replay_at.as_mut().filter(|r| **r > at) {
            *r -= 1;
        }
    }
}

impl App {
    /// A scroll-up key was pressed in the room shown while its view was
    /// `at_top` (before the key moved it): ask for the page before the
    /// oldest message, unless one is on its way or there is none.
    pub(super) fn load_older(&mut self, at_top: bool) -> Vec<Action> {
        if !at_top || self.room().older != Older::Idle {
            return Vec::new();
        }
        let i = self.current;
        if self.rooms[i].lines.len() >= self.rooms[i].capacity() {
            let cap = self.rooms[i].capacity();
            self.error(&format!(
                "the scrollback is full ({cap} lines, --scrollback): older messages are not loaded"
            ));
            return Vec::new();
        }
        let before = self.rooms[i].oldest_offset();
        let mut loading = self.local_line(LineKind::Info, LOADING);
        loading.time.clear();
        let geo = self.geometry();
        let r = &mut self.rooms[i];
        r.remove_older_note();
        let at = r.older_at();
        r.insert_at(at, vec![loading]);
        r.older = Older::Loading;
        // The reader is at the top: the loading line shows there.
        r.scroll_up(usize::MAX / 4, geo);
        self.shift_search(i, at, 1);
        vec![Action::Net(Request::History {
            room: self.rooms[i].name.clone(),
            before,
            limit: PAGE,
        })]
    }

    /// A page (or why there is none) for room `room`.
    pub(super) fn on_history(
        &mut self,
        room: &str,
        before: Option<u64>,
        result: Result<Page, String>,
    ) {
        let Some(i) = self.room_index(room) else {
            // Left meanwhile.
            return;
        };
        let geo = self.geometry();
        let was_top = self.rooms[i].at_top(geo);
        if let Some(at) = self.rooms[i].remove_older_note() {
            self.shift_search_removed(i, at);
        }
        let page = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(room, ?before, error = %e, "no history page");
                let mut line =
                    self.local_line(LineKind::Error, &format!("{FAILED}: {e} (PageUp to retry)"));
                line.time.clear();
                let r = &mut self.rooms[i];
                r.older = Older::Idle;
                let at = r.older_at();
                let n = r.insert_at(at, vec![line]);
                if was_top {
                    r.scroll_up(usize::MAX / 4, geo);
                }
                self.shift_search(i, at, n);
                return;
            }
        };
        let lines = self.page_lines(i, room, page.messages);
        let r = &mut self.rooms[i];
        let at = r.older_at();
        let mut add = Vec::with_capacity(lines.len() + 3);
        // The first page below notices (the join, with no replay) gets the
        // separator a replay has.
        let after_notice = at
            .checked_sub(1)
            .and_then(|p| r.lines.get(p))
            .is_some_and(|l| l.kind != LineKind::Day && l.offset.is_none());
        if after_notice && !lines.is_empty() {
            add.push(Line {
                time: String::new(),
                day: lines[0].day,
                kind: LineKind::Day,
                nick: String::new(),
                text: "─── history ───".into(),
                app_id: None,
                offset: None,
            });
        }
        if !page.more {
            let mut end = self.local_line(LineKind::Day, BEGINNING);
            end.time.clear();
            add.push(end);
        }
        // A date separator where the day changes, within the page and
        // where it meets what was there.
        let next = self.rooms[i].lines.get(at).filter(|l| l.offset.is_some());
        let mut prev_day: Option<i64> = None;
        for l in lines {
            if prev_day.is_some_and(|d| d != l.day) {
                add.push(day_line(&l));
            }
            prev_day = Some(l.day);
            add.push(l);
        }
        if let (Some(d), Some(next)) = (prev_day, next) {
            if next.day != d {
                add.push(day_line(next));
            }
        }
        let r = &mut self.rooms[i];
        let n = r.insert_at(at, add);
        r.older = if page.more { Older::Idle } else { Older::Done };
        self.shift_search(i, at, n);
    }

    /// The line of a chat message, as live delivery and history pages
    /// draw it.
    pub(super) fn message_line(&self, m: &ChatMessage, own: bool, mention: bool) -> Line {
        let stamp = self.clock.stamp(m.ts);
        Line {
            time: stamp.time,
            day: stamp.day,
            kind: LineKind::Message {
                own,
                action: m.action,
                mention,
            },
            nick: wrap::sanitize(&m.nick),
            text: wrap::sanitize(&m.text),
            app_id: Some(wrap::sanitize(&m.app_id)),
            offset: Some(m.offset),
        }
    }

    /// The lines of a page's messages that are not shown yet, oldest
    /// first, drawn as the replay of a join is: mentions highlighted, but
    /// nothing counted, rung or logged.
    fn page_lines(&mut self, i: usize, room: &str, messages: Vec<ChatMessage>) -> Vec<Line> {
        let r = &self.rooms[i];
        let shown: HashSet<u64> = r.lines.iter().filter_map(|l| l.offset).collect();
        let oldest = r.oldest_offset();
        let last = r.last_offset;
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            // Newer than the last live message: the WebSocket brings it.
            let live_ahead = last.is_some_and(|l| m.offset > l);
            // The page goes above the oldest message shown: anything at or
            // past it (a server that did not cut at `before`) is either
            // shown already or would land out of order.
            let not_older = oldest.is_some_and(|o| m.offset >= o);
            if m.room != room || shown.contains(&m.offset) || live_ahead || not_older {
                continue;
            }
            self.rooms[i].note_talker(&m.nick);
            let own = m.nick == self.nick;
            let mention = !own && self.is_mention(&m.text);
            out.push(self.message_line(&m, own, mention));
        }
        out
    }

    /// `n` lines went in at `at` of room `i`: a search match below moves.
    fn shift_search(&mut self, i: usize, at: usize, n: usize) {
        if let Some(s) = self.search.as_mut().filter(|s| s.room == i) {
            if let Some(hit) = s.at.as_mut().filter(|h| **h >= at) {
                *hit += n;
            }
        }
    }

    /// The line at `at` of room `i` went.
    fn shift_search_removed(&mut self, i: usize, at: usize) {
        if let Some(s) = self.search.as_mut().filter(|s| s.room == i) {
            if let Some(hit) = s.at.as_mut().filter(|h| **h > at) {
                *hit -= 1;
            }
        }
    }
}

/// A date separator for the day of `l`.
fn day_line(l: &Line) -> Line {
    Line {
        time: l.time.clone(),
        day: l.day,
        kind: LineKind::Day,
        nick: String::new(),
        text: super::clock::day_label(l.day),
        app_id: None,
        offset: None,
    }
}
