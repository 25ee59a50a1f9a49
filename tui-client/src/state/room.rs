//! One room: its bounded scrollback, pending local echoes, members, unread
//! counts and scroll position. No drawing here.
//!
//! The scroll position is counted in screen rows up from the bottom, 0 being
//! "follow new messages". When a line arrives while the view is scrolled up,
//! the offset grows by the rows that line takes, so what the reader is
//! looking at stays put.

use std::collections::{HashSet, VecDeque};

use super::members::Members;
pub use super::older::Older;
use crate::layout;

/// What a line is, which decides how it is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// A chat message from the server.
    Message {
        /// Sent by this client's nick.
        own: bool,
        /// A `/me` line.
        action: bool,
        /// Mentions this client's nick.
        mention: bool,
    },
    /// A line this client sent that the server has not echoed yet.
    Pending {
        id: String,
        action: bool,
        /// When it was written on a live connection (reset by every
        /// reconnect): past [`CONFIRM_LIMIT`] the user is told.
        since: std::time::Instant,
        /// The offset the server says it got (a `sent` for a retry it had
        /// already applied) while its delivery has not arrived yet. The
        /// line stays here until that delivery comes, so that it shows
        /// once and in order; should the room move past the offset without
        /// it, the line goes into the scrollback as it is.
        confirmed: Option<u64>,
    },
    Join,
    Leave,
    NickChange,
    /// A notice from the client itself (help, reconnects, `/who`).
    Info,
    Error,
    /// Messages history could no longer deliver.
    Gap,
    /// A date separator.
    Day,
    /// Where the reader left off: the lines after it arrived while the
    /// room was not shown.
    Marker,
}

/// One line of scrollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `HH:MM:SS`, formatted once on arrival rather than on every frame.
    pub time: String,
    /// The day of `time`, to insert date separators.
    pub day: i64,
    pub kind: LineKind,
    /// The sender, for messages; empty otherwise.
    pub nick: String,
    /// Terminal-safe text (see [`crate::wrap::sanitize`]).
    pub text: String,
    /// The instance that accepted the message, or where a member is.
    pub app_id: Option<String>,
    /// The room offset of a message.
    pub offset: Option<u64>,
}

/// Most nicks remembered as having spoken in a room; past it the set
/// starts over (the filter then shows a few joins it could have hidden).
pub const TALKERS_MAX: usize = 10_000;

/// How long a sent line may wait, on a live connection, for the server's
/// echo before the user is told that it is unconfirmed.
pub const CONFIRM_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The message pane geometry the room needs for scroll arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    pub show_app_ids: bool,
}

/// One joined room.
#[derive(Debug, Clone)]
pub struct Room {
    pub name: String,
    /// Scrollback, oldest first, at most `capacity` lines.
    pub lines: VecDeque<Line>,
    /// Local echoes, drawn after `lines` until the server echoes them.
    pub pending: Vec<Line>,
    pub members: Members,
    /// Nicks that have spoken here (for the smart filter of joins and
    /// leaves in big rooms); bounded by [`TALKERS_MAX`].
    pub talkers: HashSet<String>,
    /// Messages that arrived while another room was shown.
    pub unread: usize,
    /// Of those, how many mention this client's nick.
    pub mentions: usize,
    /// Rows scrolled up from the bottom; 0 follows new lines.
    pub scroll: usize,
    /// Lines that arrived below the view while scrolled up.
    pub new_below: usize,
    /// The server confirmed the join on the current connection.
    pub joined: bool,
    /// The server confirmed a join at least once (later joins are resumes).
    pub ever_joined: bool,
    /// The last message offset shown: a safety net against duplicates (the
    /// network session already drops them). `None` again when the room
    /// moves to a new epoch: offsets compare only within one.
    pub last_offset: Option<u64>,
    /// The epoch of `last_offset` (empty: a server without epochs).
    pub epoch: String,
    /// Offsets up to this one are history replay of a fresh join, which is
    /// not "unread".
    pub quiet_until: u64,
    /// While the replay of a fresh join is arriving: where its lines go,
    /// which is just above the "you joined" line (they are older).
    pub replay_at: Option<usize>,
    /// Leaves held back for [`LEAVE_GRACE`]: a member whose connection
    /// left and who is back within it (reconnected elsewhere after a
    /// failover, or re-announced by their instance) did not leave.
    pub held_leaves: Vec<HeldLeave>,
    /// Lines ever appended: a held leave goes back to where it arrived.
    pub appended: u64,
    /// Paging back through the server's history (PageUp at the top).
    pub older: Older,
    capacity: usize,
}

/// A leave line waiting out [`LEAVE_GRACE`].
#[derive(Debug, Clone)]
pub struct HeldLeave {
    pub nick: String,
    pub conn_id: String,
    pub until: std::time::Instant,
    /// [`Room::appended`] when it arrived.
    pub after: u64,
    /// The server's time of the leave, for the room log.
    pub ts: u64,
    pub line: Line,
}

/// How long a leave is held back before it is shown.
pub const LEAVE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Room {
    pub fn new(name: &str, capacity: usize) -> Self {
        Self {
            name: name.to_string(),
            lines: VecDeque::new(),
            pending: Vec::new(),
            members: Members::default(),
            talkers: HashSet::new(),
            unread: 0,
            mentions: 0,
            scroll: 0,
            new_below: 0,
            joined: false,
            ever_joined: false,
            last_offset: None,
            epoch: String::new(),
            quiet_until: 0,
            replay_at: None,
            held_leaves: Vec::new(),
            appended: 0,
            older: Older::Idle,
            capacity: capacity.max(1),
        }
    }

    /// Append a line (with a date separator first when the day changed and
    /// `separators` is on),
    /// drop the oldest beyond the capacity, and keep a scrolled-up view
    /// where it is.
    pub fn push(&mut self, line: Line, geo: Geometry, separators: bool) {
        if let (true, Some(last)) = (separators, self.lines.back()) {
            if last.day != line.day {
                let sep = Line {
                    time: line.time.clone(),
                    day: line.day,
                    kind: LineKind::Day,
                    nick: String::new(),
                    // The day of the line that follows, not today: replayed
                    // history can be from any day.
                    text: super::clock::day_label(line.day),
                    app_id: None,
                    offset: None,
                };
                self.push_raw(sep, geo);
            }
        }
        self.push_raw(line, geo);
    }

    fn push_raw(&mut self, line: Line, geo: Geometry) {
        if self.scroll > 0 {
            self.scroll += layout::line_height(&line, geo.width, geo.show_app_ids);
            self.new_below += 1;
        }
        self.lines.push_back(line);
        self.appended += 1;
        self.trim();
    }

    /// Show a held leave where it arrived: before the lines appended
    /// since (or at the top, when those are all that is left).
    pub fn push_held(&mut self, held: HeldLeave, geo: Geometry) {
        let since = self.appended.saturating_sub(held.after);
        let at = self
            .lines
            .len()
            .saturating_sub(usize::try_from(since).unwrap_or(usize::MAX));
        if self.scroll > 0 && at == self.lines.len() {
            self.new_below += 1;
        }
        if self.scroll > 0 {
            self.scroll += layout::line_height(&held.line, geo.width, geo.show_app_ids);
        }
        if let Some(r) = self.replay_at.as_mut().filter(|r| **r >= at) {
            *r += 1;
        }
        self.lines.insert(at, held.line);
        self.trim();
    }

    /// Lines kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn trim(&mut self) {
        while self.lines.len() > self.capacity {
            let gone = self.lines.pop_front();
            if self.older == Older::Done
                && gone
                    .is_some_and(|l| l.kind == LineKind::Day && l.text == super::older::BEGINNING)
            {
                // The beginning scrolled out: it can be paged back in.
                self.older = Older::Idle;
            }
            self.replay_at = match self.replay_at {
                Some(0) | None => None,
                Some(i) => Some(i - 1),
            };
        }
    }

    /// Put a line of a fresh join's history replay in its place: above the
    /// "you joined" line, under a "history" separator (and a date
    /// separator when the day changes).
    pub fn push_replay(&mut self, line: Line, geo: Geometry) {
        let Some(mut at) = self.replay_at.filter(|i| *i <= self.lines.len()) else {
            self.push(line, geo, true);
            return;
        };
        let prev = at.checked_sub(1).and_then(|i| self.lines.get(i));
        let first = !prev.is_some_and(|l| l.kind == LineKind::Day || l.offset.is_some());
        let mut add = Vec::new();
        if first {
            add.push(Line {
                time: String::new(),
                day: line.day,
                kind: LineKind::Day,
                nick: String::new(),
                text: "─── history ───".into(),
                app_id: None,
                offset: None,
            });
        } else if prev.is_some_and(|l| l.offset.is_some() && l.day != line.day) {
            add.push(Line {
                time: line.time.clone(),
                day: line.day,
                kind: LineKind::Day,
                nick: String::new(),
                text: super::clock::day_label(line.day),
                app_id: None,
                offset: None,
            });
        }
        add.push(line);
        for l in add {
            if self.scroll > 0 {
                self.scroll += layout::line_height(&l, geo.width, geo.show_app_ids);
            }
            self.lines.insert(at, l);
            at += 1;
        }
        self.replay_at = Some(at);
        self.trim();
    }

    /// Remove the local echo with this id (the server echoed it, or it
    /// failed); returns it.
    pub fn take_pending(&mut self, id: &str) -> Option<Line> {
        let i = self
            .pending
            .iter()
            .position(|l| matches!(&l.kind, LineKind::Pending { id: p, .. } if p == id))?;
        Some(self.pending.remove(i))
    }

    /// Take the local echoes the server confirmed at an offset at or below
    /// `upto` (all of them for `None`): their delivery will not come in
    /// order any more.
    pub fn take_confirmed(&mut self, upto: Option<u64>) -> Vec<Line> {
        let passed = |l: &Line| {
            matches!(l.kind, LineKind::Pending { confirmed: Some(o), .. }
                if upto.is_none_or(|u| o <= u))
        };
        let (taken, keep) = self.pending.drain(..).partition(passed);
        self.pending = keep;
        taken
    }

    /// Every line from the newest (pending echoes first) to the oldest.
    pub fn lines_rev(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter().chain(self.pending.iter()).rev()
    }

    /// Scroll up by `rows`, no further than the top of the scrollback.
    pub fn scroll_up(&mut self, rows: usize, geo: Geometry) {
        let want = self.scroll + rows;
        // Only walk as far back as needed: with thousands of lines the
        // total height is never computed in full unless the reader goes
        // all the way up.
        let mut total = 0;
        let mut reached = false;
        for line in self.lines_rev() {
            total += layout::line_height(line, geo.width, geo.show_app_ids);
            if total >= want + geo.height {
                reached = true;
                break;
            }
        }
        self.scroll = if reached {
            want
        } else {
            total.saturating_sub(geo.height)
        };
    }

    /// Scroll down by `rows`; reaching the bottom follows new lines again.
    pub fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
        if self.scroll == 0 {
            self.new_below = 0;
        }
    }

    pub fn scroll_to_bottom(&mut self) {
        self.scroll = 0;
        self.new_below = 0;
    }

    /// Put the "new messages" marker at the end, removing the old one: the
    /// first unread line since the room was last shown is about to arrive.
    pub fn set_marker(&mut self, line: Line, geo: Geometry) {
        if self.lines.iter().any(|l| l.kind == LineKind::Marker) {
            self.lines.retain(|l| l.kind != LineKind::Marker);
        }
        // A marker right at the top of the room says nothing.
        if !self.lines.is_empty() {
            self.push_raw(line, geo);
        }
    }

    /// Remember that `nick` spoke here.
    pub fn note_talker(&mut self, nick: &str) {
        if self.talkers.len() >= TALKERS_MAX {
            self.talkers.clear();
        }
        if !self.talkers.contains(nick) {
            self.talkers.insert(nick.to_string());
        }
    }

    /// The room is being shown: nothing in it is unread any more.
    pub fn mark_read(&mut self) {
        self.unread = 0;
        self.mentions = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, day: i64) -> Line {
        Line {
            time: "12:00:00".into(),
            day,
            kind: LineKind::Info,
            nick: String::new(),
            text: text.into(),
            app_id: None,
            offset: None,
        }
    }

    const GEO: Geometry = Geometry {
        width: 60,
        height: 5,
        show_app_ids: false,
    };

    #[test]
    fn scrollback_is_bounded() {
        let mut r = Room::new("r", 100);
        for i in 0..250 {
            r.push(line(&i.to_string(), 0), GEO, false);
        }
        assert_eq!(r.lines.len(), 100);
        assert_eq!(r.lines.front().unwrap().text, "150");
    }

    #[test]
    fn scrolled_view_stays_put_when_lines_arrive() {
        let mut r = Room::new("r", 100);
        for i in 0..20 {
            r.push(line(&i.to_string(), 0), GEO, false);
        }
        r.scroll_up(3, GEO);
        assert_eq!(r.scroll, 3);
        // A line that wraps to two rows (60 - 24 = 36 cells of text).
        r.push(line(&"x".repeat(50), 0), GEO, false);
        assert_eq!(r.scroll, 5);
        assert_eq!(r.new_below, 1);
        r.scroll_down(100);
        assert_eq!((r.scroll, r.new_below), (0, 0));
        // At the bottom, new lines do not move the offset: the view follows.
        r.push(line("y", 0), GEO, false);
        assert_eq!(r.scroll, 0);
    }

    #[test]
    fn scroll_up_stops_at_the_top() {
        let mut r = Room::new("r", 100);
        for i in 0..8 {
            r.push(line(&i.to_string(), 0), GEO, false);
        }
        r.scroll_up(100, GEO);
        assert_eq!(r.scroll, 3, "8 rows in a 5-row pane scroll by 3 at most");
        let mut empty = Room::new("e", 10);
        empty.scroll_up(10, GEO);
        assert_eq!(empty.scroll, 0);
    }

    #[test]
    fn replay_goes_above_the_join_line_under_a_history_separator() {
        let mut r = Room::new("r", 100);
        r.push(line("before", 0), GEO, false);
        r.push(line("you joined r", 0), GEO, false);
        r.replay_at = Some(1);
        let mut m = line("old 1", 0);
        m.offset = Some(1);
        r.push_replay(m.clone(), GEO);
        m.text = "old 2".into();
        m.offset = Some(2);
        r.push_replay(m, GEO);
        let texts: Vec<&str> = r.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "before",
                "─── history ───",
                "old 1",
                "old 2",
                "you joined r"
            ]
        );
        // Trimming the oldest lines keeps the insertion point right.
        let mut small = Room::new("s", 3);
        small.push(line("you joined s", 0), GEO, false);
        small.replay_at = Some(0);
        for i in 0..5 {
            let mut m = line(&format!("h{i}"), 0);
            m.offset = Some(i);
            small.push_replay(m, GEO);
        }
        let texts: Vec<&str> = small.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["h3", "h4", "you joined s"]);
    }

    #[test]
    fn day_separators() {
        let mut r = Room::new("r", 100);
        r.push(line("a", 1), GEO, true);
        r.push(line("b", 1), GEO, true);
        r.push(line("c", 19_675), GEO, true);
        let kinds: Vec<_> = r.lines.iter().map(|l| l.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                LineKind::Info,
                LineKind::Info,
                LineKind::Day,
                LineKind::Info
            ]
        );
    }
}
