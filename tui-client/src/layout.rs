//! Screen geometry shared by the state and the view.
//!
//! The state needs to know how wide the message pane is (a page for PgUp,
//! how many rows a new line adds while scrolled up, which pane the mouse is
//! over) and the view needs the same numbers to draw; computing them in one
//! place keeps the two from drifting apart.

use std::ops::Range;

use ratatui::layout::Rect;

use crate::state::room::{Line, LineKind};
use crate::wrap;

/// Widths of the room list (left) and the member list (right) on a wide
/// terminal...
const WIDE_SIDEBARS: (u16, u16) = (18, 20);
/// ...and on a middling one.
const NARROW_SIDEBARS: (u16, u16) = (14, 14);
/// The fewest cells the text of a message keeps: the side lists collapse
/// (members first, then rooms) rather than squeeze it. At 80 columns both
/// go: 80 - 24 = 56 cells of text, where both lists left 28.
pub const MIN_TEXT_WIDTH: u16 = 50;
/// Cells for the nick column (right-aligned, cut with `…`).
pub const NICK_COL: usize = 12;
/// Cells for the `HH:MM:SS` column.
pub const TIME_COL: usize = 8;
/// Cells for the APP_ID column when it is shown.
pub const APP_COL: usize = 6;
/// The separator between the prefix and the text.
pub const SEPARATOR: &str = " │ ";
/// Cells [`SEPARATOR`] takes.
pub const SEPARATOR_WIDTH: usize = 3;

/// Where each pane goes for a terminal of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panes {
    pub rooms: Option<Rect>,
    pub messages: Rect,
    pub members: Option<Rect>,
    pub status: Rect,
    pub input: Rect,
}

/// Split the terminal: side panes, messages, then the status bar and the
/// input line at the bottom (always visible, whatever the size).
pub fn panes(area: Rect) -> Panes {
    let input_h = area.height.min(1);
    let status_h = area.height.saturating_sub(input_h).min(1);
    let body_h = area.height.saturating_sub(input_h + status_h);
    let input = Rect::new(area.x, area.y + body_h + status_h, area.width, input_h);
    let status = Rect::new(area.x, area.y + body_h, area.width, status_h);
    let body = Rect::new(area.x, area.y, area.width, body_h);
    let prefix = prefix_width(false) as u16;
    let fits = |(rooms_w, members_w): (u16, u16)| {
        area.width.saturating_sub(rooms_w + members_w) >= prefix + MIN_TEXT_WIDTH
    };
    // Widest lists first; the first choice that leaves the text its room.
    let choice = [WIDE_SIDEBARS, NARROW_SIDEBARS, (NARROW_SIDEBARS.0, 0)]
        .into_iter()
        .find(|c| fits(*c));
    let Some((rooms_w, members_w)) = choice else {
        return Panes {
            rooms: None,
            messages: body,
            members: None,
            status,
            input,
        };
    };
    let rooms = Rect::new(body.x, body.y, rooms_w, body.height);
    let members = Rect::new(
        body.x + body.width - members_w,
        body.y,
        members_w,
        body.height,
    );
    let messages = Rect::new(
        body.x + rooms_w,
        body.y,
        body.width - rooms_w - members_w,
        body.height,
    );
    Panes {
        rooms: Some(rooms),
        messages,
        members: (members_w > 0).then_some(members),
        status,
        input,
    }
}

/// Cells before the text of a line: time, APP_ID (when shown), nick, `│`.
pub fn prefix_width(show_app_ids: bool) -> usize {
    TIME_COL + 1 + if show_app_ids { APP_COL + 1 } else { 0 } + NICK_COL + SEPARATOR_WIDTH
}

/// The text of a line as it is drawn after the prefix: an action reads
/// `nick waves`.
pub fn body_text(line: &Line) -> std::borrow::Cow<'_, str> {
    match &line.kind {
        LineKind::Message { action: true, .. } | LineKind::Pending { action: true, .. } => {
            format!("{} {}", line.nick, line.text).into()
        }
        _ => line.text.as_str().into(),
    }
}

/// The rows of a line's text in a message pane `width` cells wide: byte
/// ranges into [`body_text`]. Later rows are indented to the text column
/// (like WeeChat), unless the pane is too narrow for that to leave room.
pub fn line_rows(body: &str, width: usize, show_app_ids: bool) -> Vec<Range<usize>> {
    let prefix = prefix_width(show_app_ids);
    let indent = if width >= prefix + 16 { prefix } else { 0 };
    wrap::wrap(
        body,
        width.saturating_sub(prefix),
        width.saturating_sub(indent),
    )
}

/// How many rows a line takes in a pane `width` cells wide.
pub fn line_height(line: &Line, width: usize, show_app_ids: bool) -> usize {
    line_rows(&body_text(line), width, show_app_ids).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_fill_the_terminal() {
        let p = panes(Rect::new(0, 0, 120, 40));
        assert_eq!(p.input, Rect::new(0, 39, 120, 1));
        assert_eq!(p.status, Rect::new(0, 38, 120, 1));
        assert_eq!(p.messages.height, 38);
        assert_eq!(
            p.rooms.unwrap().width + p.messages.width + p.members.unwrap().width,
            120
        );
    }

    #[test]
    fn the_text_keeps_fifty_cells_and_the_lists_collapse_first() {
        // At 80x24 both lists left 28 cells of text: now they go.
        let p = panes(Rect::new(0, 0, 80, 24));
        assert!(p.rooms.is_none() && p.members.is_none());
        assert_eq!(p.messages.width, 80);
        for w in 0..300u16 {
            let p = panes(Rect::new(0, 0, w, 24));
            let text = (p.messages.width as usize).saturating_sub(prefix_width(false));
            if p.rooms.is_some() || p.members.is_some() {
                assert!(text >= MIN_TEXT_WIDTH as usize, "width {w}: text {text}");
            }
            // The member list goes before the room list.
            assert!(p.members.is_none() || p.rooms.is_some(), "width {w}");
        }
        let p = panes(Rect::new(0, 0, 90, 24));
        assert!(p.rooms.is_some() && p.members.is_none());
        let p = panes(Rect::new(0, 0, 104, 24));
        assert!(p.rooms.is_some() && p.members.is_some());
    }

    #[test]
    fn narrow_terminals_drop_the_side_panes() {
        let p = panes(Rect::new(0, 0, 50, 10));
        assert!(p.rooms.is_none() && p.members.is_none());
        assert_eq!(p.messages, Rect::new(0, 0, 50, 8));
    }

    #[test]
    fn tiny_terminals_do_not_underflow() {
        for (w, h) in [(0, 0), (1, 1), (5, 2), (80, 1)] {
            let p = panes(Rect::new(0, 0, w, h));
            assert!(p.messages.height <= h);
        }
    }

    #[test]
    fn prefix_widths() {
        // "12:00:00 " + 12 nick cells + " │ "
        assert_eq!(prefix_width(false), 8 + 1 + 12 + 3);
        assert_eq!(prefix_width(true), 8 + 1 + 7 + 12 + 3);
    }
}
