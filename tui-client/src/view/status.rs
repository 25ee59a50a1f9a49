//! The status bar: where the connection landed and how it is doing, who
//! and where you are, and which rooms have news.

use std::time::Duration;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use crate::state::{App, ConnStatus};

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Longest failure reason shown in the status bar (the whole of it is in
/// the room's lines and the log).
const MAX_REASON: usize = 60;

/// Why the connection is down (shortened), while it is: the status bar
/// shows it last, so that it never hides the rest.
pub fn conn_reason(app: &App) -> Option<String> {
    let r = match &app.conn {
        ConnStatus::Connected | ConnStatus::Connecting { attempt: 0 } => return None,
        ConnStatus::Reconnecting { reason, .. } | ConnStatus::Offline { reason } => reason,
        ConnStatus::Connecting { .. } => app.last_failure.as_ref()?,
    };
    if r.is_empty() {
        return None;
    }
    let mut short: String = r.chars().take(MAX_REASON).collect();
    if r.chars().count() > MAX_REASON {
        short.push('…');
    }
    Some(short)
}

/// The connection state in words, with its colour.
pub fn conn_text(app: &App) -> (String, Color) {
    match &app.conn {
        ConnStatus::Connected => ("● connected".into(), Color::LightGreen),
        ConnStatus::Connecting { attempt: 0 } => ("◌ connecting…".into(), Color::Yellow),
        ConnStatus::Connecting { attempt } => (
            format!(
                "◌ {} (attempt {attempt}, trying now)",
                if app.app_id.is_some() {
                    "reconnecting"
                } else {
                    "connecting"
                }
            ),
            Color::Yellow,
        ),
        ConnStatus::Reconnecting { attempt, at, .. } => {
            let left = at.saturating_duration_since(app.now);
            // Never connected yet: "connecting", not "reconnecting".
            let verb = if app.app_id.is_some() {
                "reconnecting"
            } else {
                "connecting"
            };
            (
                format!("◌ {verb} (attempt {attempt}, in {})", secs(left)),
                Color::Yellow,
            )
        }
        ConnStatus::Offline { .. } => ("○ offline (/reconnect)".into(), Color::LightRed),
    }
}

/// Draw the status bar. The items go in order of importance, since a
/// narrow terminal cuts the end: where the connection is and how it is
/// doing (with why, when it is down), a search in progress, whether the
/// view is scrolled up, the rooms with news, lines waiting to go, then who
/// and where you are and the round trip.
pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let bar = Style::new()
        .bg(Color::Indexed(app.theme.status_bg))
        .fg(Color::White);
    buf.set_style(area, bar);
    let sep = || Span::styled(" │ ", Style::new().fg(Color::Gray));
    let mut spans = vec![Span::raw(" ")];
    let connected = app.conn == ConnStatus::Connected;
    match &app.app_id {
        Some(id) if connected => {
            spans.push(Span::styled(
                format!("on {id}"),
                Style::new().fg(Color::LightCyan).bold(),
            ));
            if let Some(prev) = &app.prev_app_id {
                spans.push(Span::styled(
                    format!(" (was {prev})"),
                    Style::new().fg(Color::Gray),
                ));
            }
            if app.direct {
                spans.push(Span::styled(" direct", Style::new().fg(Color::LightGreen)));
            }
        }
        // Not connected: the last instance, clearly in the past.
        Some(id) => spans.push(Span::styled(
            format!("was on {id}"),
            Style::new().fg(Color::Gray),
        )),
        None => spans.push(Span::styled("on –", Style::new().fg(Color::Gray))),
    }
    spans.push(sep());
    let (conn, color) = conn_text(app);
    spans.push(Span::styled(conn, Style::new().fg(color).bold()));
    if let Some(reason) = conn_reason(app) {
        spans.push(Span::styled(": ", Style::new().fg(Color::Gray)));
        spans.push(Span::styled(reason, Style::new().fg(Color::LightRed)));
    }
    if let Some(search) = app.search_status() {
        spans.push(sep());
        spans.push(Span::styled(
            search,
            Style::new().fg(Color::Black).bg(Color::LightYellow),
        ));
    }
    let room = app.room();
    if room.scroll > 0 {
        spans.push(sep());
        spans.push(Span::styled(
            format!("⇣ {} new below (Esc)", room.new_below),
            Style::new().fg(Color::LightYellow).bold(),
        ));
    }
    // irssi's "Act": the numbers of the other rooms with unread messages.
    let act: Vec<Span> = app
        .rooms
        .iter()
        .enumerate()
        .filter(|(i, r)| *i != app.current && r.unread > 0)
        .map(|(i, r)| {
            let style = if r.mentions > 0 {
                Style::new().fg(Color::LightMagenta).bold()
            } else {
                Style::new().fg(Color::Yellow)
            };
            Span::styled(format!(" {}", i + 1), style)
        })
        .collect();
    if !act.is_empty() {
        spans.push(sep());
        spans.push(Span::raw("act:"));
        spans.extend(act);
    }
    // Lines the server already confirmed are not waiting to be sent.
    let waiting: usize = app
        .rooms
        .iter()
        .flat_map(|r| &r.pending)
        .filter(|l| {
            matches!(
                l.kind,
                crate::state::room::LineKind::Pending {
                    confirmed: None,
                    ..
                }
            )
        })
        .count();
    if waiting > 0 && !connected {
        spans.push(sep());
        spans.push(Span::styled(
            format!("{waiting} waiting to send"),
            Style::new().fg(Color::LightYellow),
        ));
    }
    spans.push(sep());
    let nick = if app.nick.is_empty() { "?" } else { &app.nick };
    spans.push(Span::styled(nick.to_string(), Style::new().bold()));
    spans.push(Span::raw(" in "));
    spans.push(Span::styled(
        app.room_label(app.current),
        Style::new().fg(Color::LightYellow).bold(),
    ));
    spans.push(sep());
    spans.push(Span::raw(match app.rtt {
        Some(rtt) if rtt < Duration::from_millis(10) => {
            format!("rtt {:.1}ms", rtt.as_secs_f64() * 1000.0)
        }
        Some(rtt) => format!("rtt {}ms", rtt.as_millis()),
        None => "rtt –".into(),
    }));
    if app.show_app_ids {
        spans.push(sep());
        spans.push(Span::raw("APP_IDs shown"));
    }
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
}
