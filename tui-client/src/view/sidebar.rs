//! The room list (left) and the member list (right).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use super::colors::nick_color;
use crate::state::App;
use crate::wrap;

const EDGE: &str = "│";

/// The room list: number (for Alt+number), name, unread count; mentions in
/// magenta. The room shown is reversed.
pub(super) fn rooms(app: &App, area: Rect, buf: &mut Buffer) {
    if area.width < 2 || area.height == 0 {
        return;
    }
    let inner = Rect::new(area.x, area.y, area.width - 1, area.height);
    edge(area.right() - 1, area, buf);
    buf.set_line(
        inner.x,
        inner.y,
        &Line::styled(" Rooms", Style::new().bold()),
        inner.width,
    );
    // Rooms, then the direct-message rooms under their own heading.
    for (row, entry) in app.sidebar_entries().into_iter().enumerate() {
        let y = inner.y + 1 + row as u16;
        if y >= inner.bottom() {
            break;
        }
        let Some(i) = entry else {
            buf.set_line(
                inner.x,
                y,
                &Line::styled(" Direct", Style::new().bold()),
                inner.width,
            );
            continue;
        };
        let room = &app.rooms[i];
        let number = if i < 10 {
            format!("{}", (i + 1) % 10)
        } else {
            " ".into()
        };
        let count = match (room.unread, room.mentions) {
            (0, _) => String::new(),
            (n, 0) => format!(" {n}"),
            (n, m) => format!(" {n}!{m}"),
        };
        let name_w = (inner.width as usize).saturating_sub(3 + count.len());
        let name = wrap::truncate(&app.room_label(i), name_w);
        let pad = " ".repeat(name_w.saturating_sub(wrap::str_width(&name)));
        let mut name_style = Style::new();
        if !room.joined && app.conn == crate::state::ConnStatus::Connected {
            name_style = name_style.fg(Color::DarkGray);
        }
        let count_style = if room.mentions > 0 {
            Style::new().fg(Color::LightMagenta).bold()
        } else {
            Style::new().fg(Color::Yellow).bold()
        };
        let mut line = Line::from(vec![
            Span::styled(format!(" {number} "), Style::new().fg(Color::DarkGray)),
            Span::styled(format!("{}{pad}", wrap::for_cells(&name)), name_style),
            Span::styled(count, count_style),
        ]);
        if i == app.current {
            line = line.style(Style::new().reversed());
        }
        buf.set_line(inner.x, y, &line, inner.width);
    }
}

/// The member list of the room shown, in nick order, each nick once
/// however many connections it has; only what fits is drawn, so
/// thousands of members cost nothing.
pub(super) fn members(app: &App, area: Rect, buf: &mut Buffer) {
    if area.width < 2 || area.height == 0 {
        return;
    }
    edge(area.x, area, buf);
    let inner = Rect::new(area.x + 1, area.y, area.width - 1, area.height);
    let room = app.room();
    buf.set_line(
        inner.x,
        inner.y,
        &Line::styled(
            format!(" Members ({})", room.members.count()),
            Style::new().bold(),
        ),
        inner.width,
    );
    let rows = inner.height.saturating_sub(1) as usize;
    let total = room.members.count();
    // When they do not all fit, the last row says how many are left out.
    let shown = if total > rows {
        rows.saturating_sub(1)
    } else {
        total
    };
    // A big room's list names only the first members the server sent.
    let shown = shown.min(room.members.len());
    for (i, m) in room.members.iter().take(shown).enumerate() {
        let y = inner.y + 1 + i as u16;
        let mut spans = vec![Span::raw(" ")];
        let mut nick_style = Style::new().fg(nick_color(m.nick));
        if m.nick == app.nick {
            nick_style = nick_style.bold();
        }
        if app.show_app_ids {
            let apps = m.app_ids.join(",");
            let w = (inner.width as usize).saturating_sub(2 + apps.len() + 1);
            spans.push(Span::styled(
                wrap::for_cells(&wrap::truncate(m.nick, w)).into_owned(),
                nick_style,
            ));
            spans.push(Span::styled(
                format!(" {apps}"),
                Style::new().fg(Color::DarkGray),
            ));
        } else {
            let w = (inner.width as usize).saturating_sub(1);
            spans.push(Span::styled(
                wrap::for_cells(&wrap::truncate(m.nick, w)).into_owned(),
                nick_style,
            ));
        }
        buf.set_line(inner.x, y, &Line::from(spans), inner.width);
    }
    if shown < total && rows > 0 {
        let y = inner.y + rows as u16;
        buf.set_line(
            inner.x,
            y,
            &Line::styled(
                format!(" … {} more", total - shown),
                Style::new().fg(Color::DarkGray),
            ),
            inner.width,
        );
    }
}

fn edge(x: u16, area: Rect, buf: &mut Buffer) {
    for y in area.top()..area.bottom() {
        buf.set_string(x, y, EDGE, Style::new().fg(Color::DarkGray));
    }
}
