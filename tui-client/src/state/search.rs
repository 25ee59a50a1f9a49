//! Searching the room shown: `/search WORD` or Ctrl+R (type, Enter) finds
//! the newest earlier line holding the word (any case), scrolls it into
//! view and highlights it; `n` goes to the next older match, `N` to the
//! next newer one, Esc ends the search back at the bottom. `/lastlog`
//! stays as a filter view (matching lines listed as notices).

use super::room::LineKind;
use super::App;
use crate::layout;

/// A search in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// What is searched for, as typed.
    pub needle: String,
    /// Still typing the needle (after Ctrl+R, before Enter).
    pub typing: bool,
    /// The room searched (the one shown when the search started).
    pub room: usize,
    /// The index in the room's scrollback of the match shown.
    pub at: Option<usize>,
}

impl Search {
    /// Whether a line's text matches (case does not matter).
    pub fn matches(&self, text: &str) -> bool {
        !self.needle.is_empty() && text.to_lowercase().contains(&self.needle.to_lowercase())
    }
}

impl App {
    /// Ctrl+R: start typing a search.
    pub(super) fn start_search(&mut self) {
        self.search = Some(Search {
            needle: String::new(),
            typing: true,
            room: self.current,
            at: None,
        });
    }

    /// `/search WORD`, or Enter after Ctrl+R: jump to the newest match.
    pub(super) fn search_for(&mut self, needle: &str) {
        self.search = Some(Search {
            needle: needle.to_string(),
            typing: false,
            room: self.current,
            at: None,
        });
        self.search_step(true);
    }

    /// The indices of the matching lines of the room searched, oldest first.
    fn search_hits(&self) -> Vec<usize> {
        let Some(s) = &self.search else {
            return Vec::new();
        };
        let Some(room) = self.rooms.get(s.room) else {
            return Vec::new();
        };
        room.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| !matches!(l.kind, LineKind::Day | LineKind::Marker))
            .filter(|(_, l)| s.matches(&l.text) || s.matches(&l.nick))
            .map(|(i, _)| i)
            .collect()
    }

    /// Go to the next match: older (`n`) or newer (`N`).
    pub(super) fn search_step(&mut self, older: bool) {
        let hits = self.search_hits();
        let Some(s) = self.search.as_mut() else {
            return;
        };
        let next = match (s.at, older) {
            (None, _) => hits.last().copied(),
            (Some(at), true) => hits.iter().rev().find(|&&i| i < at).copied(),
            (Some(at), false) => hits.iter().find(|&&i| i > at).copied(),
        };
        let Some(i) = next else {
            // Nothing further: stay on the match shown.
            return;
        };
        s.at = Some(i);
        let room = s.room;
        self.scroll_to_line(room, i);
    }

    /// Scroll room `r` so that line `i` sits in the middle of the pane.
    fn scroll_to_line(&mut self, r: usize, i: usize) {
        if r != self.current {
            self.switch_to(r);
        }
        let geo = self.geometry();
        let room = &mut self.rooms[r];
        let below: usize = room
            .lines
            .iter()
            .skip(i + 1)
            .chain(room.pending.iter())
            .map(|l| layout::line_height(l, geo.width, geo.show_app_ids))
            .sum();
        let target = below.saturating_sub(geo.height / 2);
        room.scroll = 0;
        room.scroll_up(target, geo);
    }

    /// Esc: end the search, back at the bottom.
    pub(super) fn end_search(&mut self) {
        if let Some(s) = self.search.take() {
            if let Some(r) = self.rooms.get_mut(s.room) {
                r.scroll_to_bottom();
            }
        }
    }

    /// The search in words for the status bar.
    pub fn search_status(&self) -> Option<String> {
        let s = self.search.as_ref()?;
        if s.typing {
            return Some(format!("search: {}▏ (Enter, Esc)", s.needle));
        }
        let hits = self.search_hits();
        Some(
            match s.at.and_then(|at| hits.iter().position(|&i| i == at)) {
                Some(k) => format!(
                    "search {:?}: {} of {} (n older, N newer, Esc)",
                    s.needle,
                    k + 1,
                    hits.len()
                ),
                None => format!("search {:?}: no match (Esc)", s.needle),
            },
        )
    }

    /// The line index of the match shown in room `r`, for highlighting.
    pub fn search_current(&self, r: usize) -> Option<usize> {
        self.search
            .as_ref()
            .filter(|s| s.room == r && !s.typing)
            .and_then(|s| s.at)
    }
}
