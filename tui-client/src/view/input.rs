//! The input line, scrolled sideways so the cursor is always visible.
//! Positions are counted in characters in the state and in cells here.

use ratatui::buffer::Buffer;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use crate::state::App;
use crate::wrap;

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
    if let Some(search) = app.search.as_ref().filter(|s| s.typing) {
        // Ctrl+R: the line is the search word until Enter or Esc.
        let prompt = "(search) ";
        let shown: String = search
            .needle
            .chars()
            .rev()
            .take(area.width as usize / 2)
            .collect();
        let shown: String = shown.chars().rev().collect();
        let line = Line::from(vec![
            Span::styled(prompt, Style::new().fg(Color::Black).bg(Color::LightYellow)),
            Span::raw(wrap::for_cells(&shown).into_owned()),
        ]);
        buf.set_line(area.x, area.y, &line, area.width);
        let x = wrap::str_width(prompt) + wrap::str_width(&shown);
        return Some(Position::new(
            area.x + (x as u16).min(area.width - 1),
            area.y,
        ));
    }
    let prompt = format!("[{}] ", wrap::truncate(&app.room_label(app.current), 20));
    let prompt_w = wrap::str_width(&prompt).min(area.width as usize / 2);
    let avail = (area.width as usize).saturating_sub(prompt_w).max(1);
    let chars = app.input.chars();
    // Measured by grapheme cluster, like the message pane: a flag is one
    // two-cell glyph, not two one-cell halves.
    let starts = app.input.boundaries();
    let clusters: Vec<String> = starts
        .windows(2)
        .map(|w| chars[w[0]..w[1]].iter().map(|c| shown(*c)).collect())
        .collect();
    let widths: Vec<usize> = clusters.iter().map(|g| wrap::str_width(g)).collect();
    // The cluster the cursor is at (should it sit inside one after an odd
    // edit, it is drawn after that cluster).
    let cursor = starts
        .iter()
        .take(clusters.len())
        .filter(|&&b| b < app.input.cursor())
        .count();
    // The first cluster shown: far enough right that the cursor (and the
    // cluster under it) fits.
    let mut start = 0;
    let mut used: usize = widths[..cursor].iter().sum::<usize>() + 1;
    while used > avail && start < cursor {
        used -= widths[start];
        start += 1;
    }
    let mut text = String::new();
    let mut w = 0;
    for (g, cw) in clusters[start..].iter().zip(&widths[start..]) {
        if w + cw > avail {
            break;
        }
        w += cw;
        text.push_str(g);
    }
    let line = Line::from(vec![
        Span::styled(
            wrap::truncate(&prompt, prompt_w),
            Style::new().fg(Color::LightYellow),
        ),
        Span::raw(wrap::for_cells(&text).into_owned()),
    ]);
    buf.set_line(area.x, area.y, &line, area.width);
    let x: usize = prompt_w + widths[start..cursor].iter().sum::<usize>();
    Some(Position::new(
        area.x + (x as u16).min(area.width - 1),
        area.y,
    ))
}
