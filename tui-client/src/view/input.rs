//! The input line, scrolled sideways so the cursor is always visible.
//! Positions are counted in characters in the state and in cells here.

use ratatui::buffer::Buffer;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use crate::state::App;
use crate::wrap::{self, char_width};

/// How a character of the input is shown: a newline (from Alt+Enter or a
/// paste) as `↵`.
fn shown(c: char) -> char {
    if c == '\n' {
        '↵'
    } else {
        c
    }
}

/// Draw the input line; returns where the cursor goes.
pub(super) fn render(app: &App, area: Rect, buf: &mut Buffer) -> Option<Position> {
    if area.width == 0 || area.height == 0 {
        return None;
    }
    let prompt = format!("[{}] ", wrap::truncate(&app.room().name, 20));
    let prompt_w = wrap::str_width(&prompt).min(area.width as usize / 2);
    let avail = (area.width as usize).saturating_sub(prompt_w).max(1);
    let chars = app.input.chars();
    let cursor = app.input.cursor();
    let widths: Vec<usize> = chars.iter().map(|c| char_width(shown(*c))).collect();
    // The first character shown: far enough right that the cursor (and the
    // character under it) fits.
    let mut start = 0;
    let mut used: usize = widths[..cursor].iter().sum::<usize>() + 1;
    while used > avail && start < cursor {
        used -= widths[start];
        start += 1;
    }
    let mut text = String::new();
    let mut w = 0;
    for (c, cw) in chars[start..].iter().zip(&widths[start..]) {
        if w + cw > avail {
            break;
        }
        w += cw;
        text.push(shown(*c));
    }
    let line = Line::from(vec![
        Span::styled(
            wrap::truncate(&prompt, prompt_w),
            Style::new().fg(Color::LightYellow),
        ),
        Span::raw(text),
    ]);
    buf.set_line(area.x, area.y, &line, area.width);
    let x: usize = prompt_w + widths[start..cursor].iter().sum::<usize>();
    Some(Position::new(
        area.x + (x as u16).min(area.width - 1),
        area.y,
    ))
}
