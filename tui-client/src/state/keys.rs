//! Keyboard and mouse bindings (documented in `--help` and `/help`; see
//! [`crate::opts::KEYS`]).

use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Position;

use super::{Action, App};
use crate::config::KeyAction;
use crate::layout;

/// Rows one mouse-wheel step scrolls.
const WHEEL_ROWS: usize = 3;

impl App {
    pub(super) fn on_key(&mut self, key: KeyEvent) -> Vec<Action> {
        // Some terminals report releases too; act once per press.
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if let Some(actions) = self.search_key(key.code, ctrl || alt) {
            return actions;
        }
        if let Some(action) = self.keys.action(key.code, key.modifiers) {
            return self.key_action(action);
        }
        let page = self.geometry().height.saturating_sub(2).max(1);
        match key.code {
            KeyCode::Enter if alt => self.input.insert('\n'),
            KeyCode::Enter => return self.submit(),
            KeyCode::Char('c') if ctrl => return vec![Action::Quit],
            KeyCode::Char('d') if ctrl && self.input.is_empty() => return vec![Action::Quit],
            KeyCode::Char('d') if ctrl => self.input.delete(),
            KeyCode::Char('l') if ctrl => return vec![Action::Redraw],
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char('b') if ctrl => self.input.left(),
            KeyCode::Char('f') if ctrl => self.input.right(),
            KeyCode::Char('w') if ctrl => self.input.delete_word_back(),
            KeyCode::Char('u') if ctrl => self.input.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.input.kill_to_end(),
            KeyCode::Char('n') if ctrl => self.cycle_room(1),
            KeyCode::Char('p') if ctrl => self.cycle_room(-1),
            KeyCode::Char(c) if alt && c.is_ascii_digit() => {
                let n = c.to_digit(10).unwrap_or(0) as usize;
                let i = if n == 0 { 9 } else { n - 1 };
                if i < self.rooms.len() {
                    self.switch_to(i);
                }
            }
            KeyCode::Char('a') if alt => self.next_active_room(),
            KeyCode::Char('b') if alt => self.input.word_left(),
            KeyCode::Char('f') if alt => self.input.word_right(),
            KeyCode::Char(_) if ctrl || alt => {}
            KeyCode::Char(c) => self.input.insert(c),
            KeyCode::Backspace if ctrl || alt => self.input.delete_word_back(),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left if alt => self.cycle_room(-1),
            KeyCode::Right if alt => self.cycle_room(1),
            KeyCode::Left if ctrl => self.input.word_left(),
            KeyCode::Right if ctrl => self.input.word_right(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home if ctrl => {
                let geo = self.geometry();
                let top = self.room().at_top(geo);
                self.room_mut().scroll_up(usize::MAX / 4, geo);
                return self.load_older(top);
            }
            KeyCode::End if ctrl => self.room_mut().scroll_to_bottom(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::Up => self.input.history_prev(),
            KeyCode::Down => self.input.history_next(),
            KeyCode::PageUp => {
                // At the top already: the page before comes from the
                // server's history.
                let geo = self.geometry();
                let top = self.room().at_top(geo);
                self.room_mut().scroll_up(page, geo);
                return self.load_older(top);
            }
            KeyCode::PageDown => self.room_mut().scroll_down(page),
            KeyCode::Esc => self.room_mut().scroll_to_bottom(),
            KeyCode::Tab => self.complete(),
            KeyCode::F(1) => self.show_help(None),
            KeyCode::F(2) => self.toggle_app_ids(),
            _ => {}
        }
        Vec::new()
    }

    /// Keys while a search is on: typing the word after Ctrl+R; then `n`
    /// and `N` (on an empty input line) step through the matches and Esc
    /// ends it. `None`: the key does what it always does.
    fn search_key(&mut self, code: KeyCode, modified: bool) -> Option<Vec<Action>> {
        let search = self.search.as_mut()?;
        if search.typing {
            match code {
                KeyCode::Esc => self.search = None,
                KeyCode::Enter => {
                    let needle = search.needle.trim().to_string();
                    if needle.is_empty() {
                        self.search = None;
                    } else {
                        self.search_for(&needle);
                    }
                }
                KeyCode::Backspace => {
                    search.needle.pop();
                }
                KeyCode::Char(c) if !modified => search.needle.push(c),
                // Ctrl+C still quits.
                KeyCode::Char('c') => return None,
                _ => {}
            }
            return Some(Vec::new());
        }
        match code {
            KeyCode::Char('n') if !modified && self.input.is_empty() => self.search_step(true),
            KeyCode::Char('N') if !modified && self.input.is_empty() => self.search_step(false),
            KeyCode::Esc => self.end_search(),
            _ => return None,
        }
        Some(Vec::new())
    }

    /// A key bound in the config's `[keys]` (or by default).
    fn key_action(&mut self, action: KeyAction) -> Vec<Action> {
        match action {
            KeyAction::Search => self.start_search(),
            KeyAction::Mentions => self.show_mentions(),
            KeyAction::NextRoom => self.cycle_room(1),
            KeyAction::PrevRoom => self.cycle_room(-1),
            KeyAction::NextActive => self.next_active_room(),
            KeyAction::Help => self.show_help(None),
            KeyAction::AppIds => self.toggle_app_ids(),
            KeyAction::Redraw => return vec![Action::Redraw],
        }
        Vec::new()
    }

    /// Tab: a command name after a leading `/`, a joined room after the
    /// commands that take one, otherwise a member's nick.
    fn complete(&mut self) {
        let text = self.input.text();
        let room_arg = ["/switch ", "/leave ", "/part ", "/who ", "/s "]
            .iter()
            .any(|c| text.starts_with(c) && text[c.len()..].find(' ').is_none());
        let nick_arg = ["/msg ", "/query "]
            .iter()
            .any(|c| text.starts_with(c) && text[c.len()..].find(' ').is_none());
        let names: Vec<String> = if text.starts_with('/') && !text.contains(' ') {
            super::command::COMMANDS
                .iter()
                .map(|(n, _, _)| format!("/{n}"))
                .collect()
        } else if room_arg {
            self.rooms.iter().map(|r| r.name.clone()).collect()
        } else if nick_arg {
            let mut all: Vec<String> = self
                .rooms
                .iter()
                .flat_map(|r| r.members.iter().map(|p| p.nick.to_string()))
                .collect();
            all.sort();
            all.dedup();
            all
        } else {
            self.completion_names()
        };
        self.input.complete(names.iter().map(String::as_str));
    }

    /// Alt+A (as in irssi): the next room that mentions you, else the next
    /// with unread messages, searching onwards from the room shown.
    pub(super) fn next_active_room(&mut self) {
        let n = self.rooms.len();
        let order = (1..n).map(|k| (self.current + k) % n);
        let pick = order
            .clone()
            .find(|&i| self.rooms[i].mentions > 0)
            .or_else(|| order.clone().find(|&i| self.rooms[i].unread > 0));
        if let Some(i) = pick {
            self.switch_to(i);
        }
    }

    /// Ctrl+N / Ctrl+P: the next or previous room, wrapping around.
    pub(super) fn cycle_room(&mut self, step: isize) {
        let n = self.rooms.len() as isize;
        let i = (self.current as isize + step).rem_euclid(n);
        self.switch_to(i as usize);
    }

    pub(super) fn on_mouse(&mut self, m: MouseEvent) -> Vec<Action> {
        let panes = layout::panes(self.area);
        let at = Position::new(m.column, m.row);
        match m.kind {
            MouseEventKind::ScrollUp if panes.messages.contains(at) => {
                let geo = self.geometry();
                let top = self.room().at_top(geo);
                self.room_mut().scroll_up(WHEEL_ROWS, geo);
                return self.load_older(top);
            }
            MouseEventKind::ScrollDown if panes.messages.contains(at) => {
                self.room_mut().scroll_down(WHEEL_ROWS);
            }
            MouseEventKind::Down(MouseButton::Left) => {
                // A click on a room in the room list (its first row is the
                // title) shows that room.
                if let Some(rooms) = panes.rooms.filter(|r| r.contains(at)) {
                    let row = (m.row - rooms.y) as usize;
                    let entries = self.sidebar_entries();
                    if let Some(Some(i)) = row.checked_sub(1).and_then(|r| entries.get(r)) {
                        self.switch_to(*i);
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }
}
