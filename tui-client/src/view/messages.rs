//! The message pane: only the rows on screen are wrapped and drawn, walking
//! up from the newest line, so a room with ten thousand lines costs the
//! same per frame as one with twenty.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};

use super::colors::nick_color;
use crate::config::Theme;
use crate::layout::{self, APP_COL, NICK_COL, SEPARATOR, TIME_COL};
use crate::state::room::{Line, LineKind};
use crate::state::{App, Search};
use crate::wrap;

/// How a row is drawn besides its line.
struct Look<'a> {
    theme: &'a Theme,
    show_app_ids: bool,
    /// The search whose matches are highlighted.
    search: Option<&'a Search>,
    /// This line is the match the search is on.
    current: bool,
}

/// Draw the shown room's messages into `area`, newest at the bottom.
pub(super) fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let width = area.width as usize;
    let height = area.height as usize;
    if width == 0 || height == 0 {
        return;
    }
    let room = app.room();
    let show_app_ids = app.show_app_ids;
    let search = app
        .search
        .as_ref()
        .filter(|s| s.room == app.current && !s.typing);
    let current = app.search_current(app.current);
    let total = room.lines.len() + room.pending.len();
    let mut skip = room.scroll;
    let mut y = area.bottom();
    'lines: for (n, line) in room.lines_rev().enumerate() {
        let index = total - 1 - n;
        let look = Look {
            theme: &app.theme,
            show_app_ids,
            search: search.filter(|s| s.matches(&line.text)),
            current: current == Some(index),
        };
        let body = layout::body_text(line);
        let rows = layout::line_rows(&body, width, show_app_ids);
        for (k, range) in rows.iter().enumerate().rev() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if y == area.top() {
                break 'lines;
            }
            y -= 1;
            let row = render_row(line, &body[range.clone()], k, width, &look);
            buf.set_line(area.x, y, &row, area.width);
        }
    }
}

/// `text` cut into spans with the search's matches highlighted.
fn highlighted(text: &str, style: Style, look: &Look) -> Vec<Span<'static>> {
    let cell = |t: &str| wrap::for_cells(t).into_owned();
    let Some(search) = look.search else {
        return vec![Span::styled(cell(text), style)];
    };
    let hit = if look.current {
        Style::new().fg(Color::Black).bg(Color::LightYellow).bold()
    } else {
        Style::new().fg(Color::Black).bg(Color::Yellow)
    };
    let lower = text.to_lowercase();
    let needle = search.needle.to_lowercase();
    // Lower-casing can change byte lengths (rarely): then no inline
    // highlight, the whole row is marked instead.
    if lower.len() != text.len() || needle.is_empty() {
        return vec![Span::styled(cell(text), hit)];
    }
    let mut spans = Vec::new();
    let mut at = 0;
    for (i, _) in lower.match_indices(&needle) {
        if i < at || !text.is_char_boundary(i) || !text.is_char_boundary(i + needle.len()) {
            continue;
        }
        spans.push(Span::styled(cell(&text[at..i]), style));
        spans.push(Span::styled(cell(&text[i..i + needle.len()]), hit));
        at = i + needle.len();
    }
    spans.push(Span::styled(cell(&text[at..]), style));
    spans
}

/// The style of a line's text.
fn body_style(line: &Line, theme: &Theme) -> Style {
    match &line.kind {
        LineKind::Message { mention: true, .. } => Style::new().fg(theme.mention).bold(),
        LineKind::Message { action: true, .. } => Style::new().fg(nick_color(&line.nick)).italic(),
        LineKind::Message { .. } => Style::new(),
        LineKind::Pending { .. } => Style::new().fg(Color::DarkGray).italic(),
        LineKind::Join => Style::new().fg(Color::Green),
        LineKind::Leave => Style::new().fg(Color::Red),
        LineKind::NickChange | LineKind::Info => Style::new().fg(Color::Cyan),
        LineKind::Error => Style::new().fg(Color::LightRed).bold(),
        LineKind::Gap => Style::new().fg(Color::Yellow).bold(),
        LineKind::Marker => Style::new().fg(Color::LightRed),
        LineKind::Day => Style::new()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    }
}

/// What goes in the nick column, and its style.
fn nick_cell(line: &Line, theme: &Theme) -> (String, Style) {
    let dim = Style::new().fg(Color::DarkGray);
    match &line.kind {
        LineKind::Message { action: true, .. } | LineKind::Pending { action: true, .. } => {
            ("*".into(), Style::new().fg(nick_color(&line.nick)).bold())
        }
        LineKind::Message { own, mention, .. } => {
            let mut style = Style::new().fg(nick_color(&line.nick));
            if *own {
                style = style.bold();
                if let Some(c) = theme.own {
                    style = style.fg(c);
                }
            }
            if *mention {
                style = Style::new().fg(Color::Black).bg(theme.mention).bold();
            }
            (line.nick.clone(), style)
        }
        LineKind::Pending { .. } => (line.nick.clone(), dim),
        LineKind::Join => ("-->".into(), Style::new().fg(Color::Green)),
        LineKind::Leave => ("<--".into(), Style::new().fg(Color::Red)),
        LineKind::NickChange | LineKind::Info | LineKind::Day => ("--".into(), dim),
        LineKind::Marker => ("──".into(), Style::new().fg(Color::LightRed)),
        LineKind::Error | LineKind::Gap => ("!!".into(), Style::new().fg(Color::LightRed).bold()),
    }
}

fn pad_left(s: &str, width: usize) -> String {
    let s = wrap::truncate(s, width);
    format!(
        "{}{}",
        " ".repeat(width.saturating_sub(wrap::str_width(&s))),
        wrap::for_cells(&s)
    )
}

fn pad_right(s: &str, width: usize) -> String {
    let s = wrap::truncate(s, width);
    format!(
        "{}{}",
        wrap::for_cells(&s),
        " ".repeat(width.saturating_sub(wrap::str_width(&s)))
    )
}

/// Row `k` of a line: the first row carries the prefix, later rows are
/// indented to the text column.
fn render_row(line: &Line, text: &str, k: usize, width: usize, look: &Look) -> TextLine<'static> {
    let show_app_ids = look.show_app_ids;
    let style = body_style(line, look.theme);
    if k > 0 {
        let prefix = layout::prefix_width(show_app_ids);
        let indent = if width >= prefix + 16 { prefix } else { 0 };
        let mut spans = vec![Span::raw(" ".repeat(indent))];
        spans.extend(highlighted(text, style, look));
        return TextLine::from(spans);
    }
    let dim = Style::new().fg(Color::DarkGray);
    let time_style = if look.current {
        Style::new().fg(Color::Black).bg(Color::LightYellow)
    } else {
        Style::new().fg(look.theme.timestamp)
    };
    let time = if matches!(
        line.kind,
        LineKind::Pending {
            confirmed: Some(_),
            ..
        }
    ) {
        // The server has it; its delivery is on the way.
        pad_right("sent", TIME_COL)
    } else if matches!(line.kind, LineKind::Pending { .. }) {
        pad_right("sending", TIME_COL)
    } else {
        pad_right(&line.time, TIME_COL)
    };
    let mut spans = vec![Span::styled(time, time_style), Span::raw(" ")];
    if show_app_ids {
        let app = line.app_id.as_deref().unwrap_or("");
        let app_style = if app.is_empty() {
            dim
        } else {
            Style::new().fg(nick_color(app))
        };
        spans.push(Span::styled(pad_right(app, APP_COL), app_style));
        spans.push(Span::raw(" "));
    }
    let (nick, nick_style) = nick_cell(line, look.theme);
    spans.push(Span::styled(pad_left(&nick, NICK_COL), nick_style));
    spans.push(Span::styled(SEPARATOR, dim));
    spans.extend(highlighted(text, style, look));
    TextLine::from(spans)
}
