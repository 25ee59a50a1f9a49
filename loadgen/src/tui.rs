//! The ratatui dashboard, in the spirit of oha: ramp progress, connections
//! per APP_ID, rolling send/delivery rates and p50/p99, verification
//! counters, errors by kind, and open file descriptors against the limit.
//! [`render`] only draws a [`View`]; [`run`] owns the terminal.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;
use tokio_util::sync::CancellationToken;

use crate::stats::Snapshot;
use crate::units::fmt_us;
use crate::view::View;

/// Draw the whole dashboard.
pub fn render(v: &View, f: &mut Frame<'_>) {
    let s = &v.last;
    let [title, gauges, mid, charts, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(8),
        Constraint::Min(6),
        Constraint::Length(7),
    ])
    .areas(f.area());

    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                " loadgen ",
                Style::default().add_modifier(Modifier::REVERSED),
            ),
            Span::raw(format!(
                " {}  ·  {}  ·  {:.1}s  ·  q to stop",
                v.config_line,
                s.phase,
                s.elapsed_ms as f64 / 1000.0
            )),
        ])),
        title,
    );

    let [ramp_area, fd_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(gauges);
    let ramp = ratio(s.connected + s.failed + s.dropped, s.clients);
    f.render_widget(
        Gauge::default()
            .block(Block::default().borders(Borders::ALL).title(" ramp "))
            .gauge_style(Style::default().fg(if s.failed > 0 {
                Color::Yellow
            } else {
                Color::Green
            }))
            .ratio(ramp)
            .label(format!(
                "{} connected / {} clients, {} failed",
                s.connected, s.clients, s.failed
            )),
        ramp_area,
    );
    let fd = ratio(s.open_fds, s.fd_limit);
    f.render_widget(
        Gauge::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" open fds / limit "),
            )
            .gauge_style(Style::default().fg(if fd > 0.9 { Color::Red } else { Color::Cyan }))
            .ratio(fd)
            .label(format!("{} / {}", s.open_fds, s.fd_limit)),
        fd_area,
    );

    let [apps_area, stats_area] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(mid);
    let rows = s.per_app.iter().map(|(a, n)| {
        Row::new(vec![
            a.clone(),
            n.to_string(),
            format!("{:.1}%", *n as f64 * 100.0 / s.connected.max(1) as f64),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(14),
                Constraint::Length(9),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new(vec!["APP_ID", "conns", "share"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" connections per APP_ID "),
        ),
        apps_area,
    );
    let lat = |x: u64| {
        if s.interval_count > 0 {
            fmt_us(x)
        } else {
            "-".into()
        }
    };
    let in_flight = s
        .expected
        .saturating_sub(s.received.saturating_sub(s.duplicated));
    let text = vec![
        Line::from(format!(
            "sends      {:>10.0}/s   total {}",
            v.send_rate, s.sent
        )),
        Line::from(format!(
            "deliveries {:>10.0}/s   total {}",
            v.recv_rate, s.received
        )),
        Line::from(format!(
            "rolling    p50 {:>9}   p99 {:>9}",
            lat(s.interval_p50),
            lat(s.interval_p99)
        )),
        Line::from(format!(
            "in flight  {in_flight:>10}    dropped conns {}  reconnects {}/{}",
            s.dropped, s.reconnects, s.disconnects
        )),
        Line::from(vec![
            Span::raw(format!("duplicated {:>10}    ", s.duplicated)),
            Span::styled(
                format!("out of order {}", s.out_of_order),
                if s.out_of_order + s.duplicated > 0 {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                },
            ),
        ]),
        Line::from(format!("errors     {:>10}", s.errors)),
    ];
    f.render_widget(
        Paragraph::new(text).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" rolling (1s) "),
        ),
        stats_area,
    );

    let [c1, c2, c3] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(charts);
    spark(f, c1, " sends/s ", &v.send_hist, Color::Blue);
    spark(f, c2, " deliveries/s ", &v.recv_hist, Color::Green);
    spark(f, c3, " p99 (µs) ", &v.p99_hist, Color::Magenta);

    let errs: Vec<Line> = if s.error_kinds.is_empty() {
        vec![Line::from("none")]
    } else {
        let mut e: Vec<_> = s.error_kinds.iter().collect();
        e.sort_by(|a, b| b.1.cmp(a.1));
        e.into_iter()
            .map(|(k, n)| Line::from(format!("{n:>8}  {k}")))
            .collect()
    };
    f.render_widget(
        Paragraph::new(errs).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" errors and close codes "),
        ),
        bottom,
    );
}

fn spark(
    f: &mut Frame<'_>,
    area: Rect,
    title: &str,
    data: &std::collections::VecDeque<u64>,
    color: Color,
) {
    let w = area.width.saturating_sub(2) as usize;
    let tail: Vec<u64> = data.iter().rev().take(w).rev().copied().collect();
    let last = tail.last().copied().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("{title}{last} ")),
            )
            .style(Style::default().fg(color))
            .data(&tail),
        area,
    );
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        (a as f64 / b as f64).clamp(0.0, 1.0)
    }
}

/// Own the terminal until `done`: redraw every second and on resize; `q`,
/// Esc or Ctrl-C stop the run (twice: skip the drain). The terminal is
/// restored on every path, including errors.
pub async fn run<F: FnMut() -> Snapshot>(
    view: &mut View,
    mut snap: F,
    done: CancellationToken,
    interrupt: CancellationToken,
    hard_stop: CancellationToken,
) -> std::io::Result<()> {
    let mut term = ratatui::try_init()?;
    let result = async {
        let mut events = EventStream::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    view.update(snap());
                    term.draw(|f| render(view, f))?;
                }
                ev = events.next() => match ev {
                    Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                        let stop = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL));
                        if stop {
                            if interrupt.is_cancelled() { hard_stop.cancel(); } else { interrupt.cancel(); }
                        }
                    }
                    Some(Ok(Event::Resize(..))) => { term.draw(|f| render(view, f))?; }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => {}
                },
                _ = done.cancelled() => {
                    view.update(snap());
                    return Ok(());
                }
            }
        }
    }
    .await;
    ratatui::try_restore()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn dashboard_shows_everything_asked_for() {
        let mut v = View::new("chat · 3 clients".into());
        let mut s = Snapshot {
            elapsed_ms: 1000,
            phase: "send".into(),
            clients: 3,
            connected: 3,
            sent: 10,
            received: 30,
            expected: 30,
            open_fds: 40,
            fd_limit: 20000,
            interval_count: 30,
            interval_p50: 800,
            interval_p99: 2500,
            duplicated: 2,
            out_of_order: 1,
            errors: 1,
            ..Snapshot::default()
        };
        s.per_app.insert("app1".into(), 2);
        s.per_app.insert("app2".into(), 1);
        s.error_kinds
            .insert("close: 1012 service_restart".into(), 1);
        v.update(s);
        let mut t = Terminal::new(TestBackend::new(110, 32)).unwrap();
        t.draw(|f| render(&v, f)).unwrap();
        let text: String = t
            .backend()
            .buffer()
            .content()
            .chunks(110)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        for needle in [
            "ramp",
            "3 connected / 3 clients",
            "40 / 20000",
            "app1",
            "app2",
            "66.7%",
            "p50     800µs",
            "p99    2.50ms",
            "duplicated          2",
            "out of order 1",
            "1012 service_restart",
            "deliveries/s",
            "p99 (µs)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
