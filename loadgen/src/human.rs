//! The human summary: plain-text tables that read well in a terminal and
//! in a CI log, each line at most 80 columns (a long URL or error kind is
//! the only thing that may run past, and only on its own line).

use std::fmt::Write as _;

use crate::config::Protocol;
use crate::hist::Percentiles;
use crate::report::Report;
use crate::timeline::Point;
use crate::units::natural;

/// Columns the summary fits in.
pub const WIDTH: usize = 80;
/// Most timeline rows printed; longer runs are shown in coarser steps.
const TIMELINE_ROWS: usize = 40;
/// The event-loop-lag hint appears when loadgen's lag, beyond tokio's 1 ms
/// timer granularity, is at least this share of the fan-out p99.
const LAG_SHARE: f64 = 0.25;

/// Render the summary.
pub fn summary(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.config;
    let _ = writeln!(
        o,
        "loadgen {} · {} clients in {} rooms · {} senders at {} msg/s · {} B · {}{}",
        match c.protocol {
            Protocol::Chat => "chat",
            Protocol::Raw => "raw",
        },
        c.clients,
        c.rooms,
        c.senders,
        c.rate,
        c.size,
        humantime::format_duration(c.duration),
        if r.interrupted { " · INTERRUPTED" } else { "" }
    );
    if let Some(reg) = &c.registry {
        let _ = writeln!(o, "  registry {reg} (direct connections)");
        if c.url_fallback {
            for u in &c.urls {
                let _ = writeln!(o, "  url {u} (fallback after 3 failed asks in a row)");
            }
        }
    } else {
        for u in &c.urls {
            let _ = writeln!(o, "  url {u}");
        }
    }
    let dr = &r.drain;
    let mut drain = format!("drain {}", short_us(dr.waited_us));
    if dr.last_delivery_after_send_us > 0 {
        let _ = write!(
            drain,
            " (last delivery {} after the last send)",
            short_us(dr.last_delivery_after_send_us)
        );
    }
    wrap(
        &mut o,
        "phases",
        &[
            format!("ramp {}", short_us(r.phases_ms.ramp.saturating_mul(1000))),
            format!("send {}", short_us(r.phases_ms.send.saturating_mul(1000))),
            drain,
            format!("processes {}", r.loadgen.processes),
        ],
    );

    connections(&mut o, r);
    deliveries(&mut o, r);

    let _ = writeln!(
        o,
        "\n{:<19}{:>7}{:>7}{:>7}{:>7}{:>7}{:>7}{:>10}",
        "Latency", "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    );
    row(&mut o, "fan-out (scheduled)", &r.latency_us);
    row(&mut o, "fan-out (sent)", &r.raw_latency_us);
    row(&mut o, "connect (welcome)", &r.connect_us);
    if r.recovery_us.count > 0 || c.reconnect {
        row(&mut o, "recovery (resume)", &r.recovery_us);
    }

    matrix(&mut o, r);
    faults(&mut o, r);
    if !r.faults.is_empty() || r.connections.disconnects > 0 || c.reconnect {
        timeline(&mut o, &r.timeline);
    }

    if r.frames.fallback_parsed > 0 || r.frames.unrecognized > 0 {
        let _ = writeln!(o);
        wrap(
            &mut o,
            "Frames",
            &[
                format!(
                    "{} messages read by the JSON fallback (other field order)",
                    r.frames.fallback_parsed
                ),
                format!("{} unrecognized frames", r.frames.unrecognized),
            ],
        );
        for s in &r.frames.samples {
            let _ = writeln!(o, "  e.g. {}", clip(s, WIDTH - 7));
        }
    }

    if !r.errors.is_empty() {
        let _ = writeln!(o, "\nErrors and close codes by kind");
        for (kind, n) in &r.errors {
            wrap_words(&mut o, &format!("  {n:>8}  "), &" ".repeat(12), kind);
        }
    }

    let s = &r.loadgen;
    let _ = writeln!(o);
    let mut cost = vec![
        format!(
            "{:.3} µs CPU per delivery ({:.3} µs user space)",
            s.cpu_us_per_delivery, s.user_cpu_us_per_delivery
        ),
        format!("RSS {:.1} MiB", s.rss_bytes as f64 / (1 << 20) as f64),
        format!("~{} B per socket", s.mem_per_socket_bytes),
    ];
    let lag = &s.event_loop_lag_us;
    if lag.count > 0 {
        cost.push(format!(
            "event-loop lag p50 {} p99 {} max {}",
            short_us(lag.p50),
            short_us(lag.p99),
            short_us(lag.max)
        ));
    }
    wrap(&mut o, "loadgen", &cost);
    if let Some(share) = lag_share(lag, &r.latency_us) {
        wrap_words(
            &mut o,
            "             ",
            "             ",
            &format!(
                "<- loadgen itself adds latency: its event-loop lag (beyond \
                 the 1 ms timer tick) is {:.0}% of the fan-out p99; use \
                 --workers or fewer clients",
                share * 100.0
            ),
        );
    }

    thresholds(&mut o, r);
    o
}

fn connections(o: &mut String, r: &Report) {
    let k = &r.connections;
    let _ = writeln!(o);
    let mut items = vec![
        format!("attempted {}", k.attempted),
        format!("opened {}", k.opened),
        format!("failed {}", k.failed),
        format!("dropped {}", k.dropped),
    ];
    if k.disconnects > 0 || r.config.reconnect {
        items.push(format!("lost {}", k.disconnects));
        items.push(format!("reconnects {}", k.reconnects));
        if k.reconnect_failures > 0 {
            items.push(format!(
                "failed reconnect attempts {}",
                k.reconnect_failures
            ));
        }
        items.push(format!("APP_ID changes {}", k.app_id_changes));
        for (t, n) in &k.app_id_transitions {
            items.push(format!("{t} {n}"));
        }
    }
    wrap(o, "Connections", &items);
    if let Some(g) = &r.registry {
        let mut items = vec![
            format!("asks {}", g.asks),
            format!("answered {}", g.answers),
        ];
        for (kind, n) in &g.failures {
            items.push(format!("failed {kind} {n}"));
        }
        items.push(format!(
            "named the instance that just failed {}",
            g.named_failed_instance
        ));
        items.push(format!("direct connects failed {}", g.direct_failures));
        items.push(format!("fell back to --url {}", g.url_fallbacks));
        if g.app_id_mismatches > 0 {
            items.push(format!("APP_ID not the named one {}", g.app_id_mismatches));
        }
        items.push(format!(
            "connects direct {}, via --url {}",
            g.connects_direct, g.connects_via_url
        ));
        if g.ask_us.count > 0 {
            items.push(format!(
                "ask p50 {} p99 {}",
                short_us(g.ask_us.p50),
                short_us(g.ask_us.p99)
            ));
        }
        wrap(o, "Registry", &items);
    }
    if !k.per_app_id.is_empty() {
        let mut apps: Vec<(&String, &u64)> = k.per_app_id.iter().collect();
        apps.sort_by(|a, b| natural(a.0, b.0));
        match &r.registry {
            None => {
                let _ = writeln!(o, "  {:<16} {:>9} {:>7}", "APP_ID", "clients", "share");
                for (app, n) in apps {
                    let share = *n as f64 * 100.0 / k.opened.max(1) as f64;
                    let _ = writeln!(o, "  {app:<16} {n:>9} {share:>6.1}%");
                }
            }
            Some(g) => {
                // Where each client first landed, and how: straight to
                // the instance the registry named, or through --url.
                let _ = writeln!(
                    o,
                    "  {:<16} {:>9} {:>7} {:>9} {:>9}",
                    "APP_ID", "clients", "share", "direct", "proxied"
                );
                for (app, n) in apps {
                    let share = *n as f64 * 100.0 / k.opened.max(1) as f64;
                    let d = g.direct_per_app_id.get(app).copied().unwrap_or(0).min(*n);
                    let _ = writeln!(o, "  {app:<16} {n:>9} {share:>6.1}% {d:>9} {:>9}", n - d);
                }
                let _ = writeln!(
                    o,
                    "  (direct: to the instance --registry named; proxied: through --url)"
                );
            }
        }
    }
}

fn deliveries(o: &mut String, r: &Report) {
    let s = &r.sends;
    let _ = writeln!(o);
    let mut items = vec![
        format!("{} sent ({}/s)", s.sent, s.per_second),
        format!("{} refused by the server", s.rejected),
        format!("{} unconfirmed (expected nowhere)", s.unconfirmed),
    ];
    if s.retried > 0 || r.config.reconnect {
        items.push(format!("{} retries with the same id", s.retried));
        items.push(format!(
            "{} confirmed as already published",
            s.confirmed_duplicate
        ));
    }
    wrap(o, "Sends", &items);
    let d = &r.deliveries;
    let _ = writeln!(
        o,
        "Deliveries   expected {}  received {} ({}/s)",
        d.expected, d.received, d.per_second
    );
    let mut items = vec![
        format!("lost {}", d.lost),
        format!("duplicated {}", d.duplicated),
        format!("out of order {}", d.out_of_order),
        format!("cross-instance {}", d.cross_instance),
        format!("receivers with loss {}", d.receivers_with_loss),
        format!("not expected {}", d.unexpected),
    ];
    let a = &r.announced;
    if a.gap_frames + a.resets + a.unrecovered_resumes + d.announced_lost > 0 || r.config.reconnect
    {
        items.push(format!("announced lost {}", d.announced_lost));
    }
    wrap(o, "", &items);
    let _ = writeln!(
        o,
        "             (not expected: sent before the receiver joined or as it left)"
    );
    if a.gap_frames + a.resets + a.unrecovered_resumes > 0 || r.config.reconnect {
        wrap(
            o,
            "Announced",
            &[
                format!("{} gap frames ({} offsets)", a.gap_frames, a.gap_offsets),
                format!("{} resets", a.resets),
                format!("{} resumes answered recovered:false", a.unrecovered_resumes),
                format!("{} expected deliveries covered (not in lost)", a.lost),
            ],
        );
    }
}

fn matrix(o: &mut String, r: &Report) {
    if r.matrix.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nSender APP_ID → receiver APP_ID (fan-out latency from scheduled)"
    );
    let _ = writeln!(
        o,
        "  {:<10} {:<10} {:>9} {:>9} {:>7} {:>6} {:>6}",
        "sender", "receiver", "delivered", "expected", "lost", "p50", "p99"
    );
    for m in &r.matrix {
        let _ = writeln!(
            o,
            "  {:<10} {:<10} {:>9} {:>9} {:>7} {:>6} {:>6}{}",
            m.sender,
            m.receiver,
            m.count,
            m.expected,
            m.lost,
            short_us(m.p50_us),
            short_us(m.p99_us),
            if m.sender != m.receiver {
                "  cross"
            } else {
                ""
            }
        );
    }
}

fn faults(o: &mut String, r: &Report) {
    if r.faults.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nFaults (s from the start; back = deliveries/s at 90% of before)"
    );
    for f in &r.faults {
        let mut items = vec![match f.end_s {
            Some(e) => format!("at {:.2}s to {e:.2}s", f.at_s),
            None => format!("at {:.2}s", f.at_s),
        }];
        if let (Some(b), Some(m)) = (f.before_per_s, f.min_per_s) {
            items.push(format!("{b:.0}/s before, {m:.0}/s at worst"));
        }
        items.push(match f.back_to_90pct_ms {
            Some(ms) => format!("back after {}", short_us(ms.saturating_mul(1000))),
            None => "not back while sending".into(),
        });
        items.push(format!(
            "{} sockets lost, {} resumed",
            f.sockets_lost, f.sockets_recovered
        ));
        if let (Some(p50), Some(max)) = (f.p50_recovery_us, f.max_recovery_us) {
            items.push(format!(
                "recovery p50 {} max {}",
                short_us(p50),
                short_us(max)
            ));
        }
        let _ = writeln!(o, "  {}", clip(&f.name, WIDTH - 2));
        wrap(o, "", &items);
    }
}

fn timeline(o: &mut String, points: &[Point]) {
    if points.is_empty() {
        return;
    }
    let step = points.len().div_ceil(TIMELINE_ROWS).max(1);
    let _ = writeln!(
        o,
        "\nTimeline ({}s steps; lost/back: connections lost/resumed; ▼ fault)",
        step
    );
    let _ = writeln!(
        o,
        "  {:>6} {:<7} {:>6} {:>5} {:>5} {:>5} {:>8} {:>6} {:>6}",
        "t", "phase", "conn", "down", "lost", "back", "deliv/s", "p99", "errors"
    );
    for chunk in points.chunks(step) {
        let last = &chunk[chunk.len() - 1];
        let n = chunk.len() as f64;
        let per_s = chunk.iter().map(|p| p.deliveries_per_s).sum::<f64>() / n;
        let lost: u64 = chunk.iter().map(|p| p.disconnects).sum();
        let back: u64 = chunk.iter().map(|p| p.reconnects).sum();
        let p99 = chunk.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let faults: Vec<&str> = chunk
            .iter()
            .flat_map(|p| p.faults.iter().map(String::as_str))
            .collect();
        let mut line = format!(
            "  {:>6.1} {:<7} {:>6} {:>5} {:>5} {:>5} {:>8.0} {:>6} {:>6}",
            last.t_s,
            last.phase,
            last.connected,
            last.down,
            lost,
            back,
            per_s,
            if p99 > 0 { short_us(p99) } else { "-".into() },
            last.errors
        );
        if !faults.is_empty() {
            line.push_str(" ▼ ");
            line.push_str(&faults.join(" "));
        }
        let _ = writeln!(o, "{}", clip(&line, WIDTH));
    }
}

fn thresholds(o: &mut String, r: &Report) {
    let t = &r.thresholds;
    if t.checked.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nThresholds ({} checked, {} failed)",
        t.checked.len(),
        t.failed.len()
    );
    for c in &t.checked {
        wrap_words(
            o,
            &format!("  {}  {}  ", if c.passed { "pass" } else { "FAIL" }, c.flag),
            "        ",
            &c.message,
        );
    }
    if t.failed.is_empty() {
        let _ = writeln!(o, "Thresholds: all passed");
    } else {
        let flags: Vec<&str> = t.failed.iter().map(|b| b.flag).collect();
        wrap_words(o, "THRESHOLDS FAILED: ", "  ", &flags.join(" "));
    }
}

/// Whether loadgen's own event-loop lag is a real share of the fan-out
/// p99: beyond the 1 ms timer tick, at least 1 ms, and at least
/// [`LAG_SHARE`] of it. `Some(share)` then.
fn lag_share(lag: &Percentiles, fanout: &Percentiles) -> Option<f64> {
    if lag.count == 0 || fanout.count == 0 || fanout.p99 == 0 {
        return None;
    }
    let excess = lag.p99.saturating_sub(1000);
    let share = excess as f64 / fanout.p99 as f64;
    (excess >= 1000 && share >= LAG_SHARE).then_some(share)
}

fn row(o: &mut String, name: &str, p: &Percentiles) {
    if p.count == 0 {
        let _ = writeln!(o, "{name:<19}{:>7}", "-");
        return;
    }
    let _ = writeln!(
        o,
        "{name:<19}{:>7}{:>7}{:>7}{:>7}{:>7}{:>7}{:>10}",
        short_us(p.p50),
        short_us(p.p90),
        short_us(p.p99),
        short_us(p.p999),
        short_us(p.max),
        short_us(p.mean as u64),
        p.count
    );
}

/// A duration in µs in at most 6 columns, 3 significant digits: `850µs`,
/// `1.99ms`, `12.5ms`, `105ms`, `1.52s`, `15.2s`, `152s`.
pub fn short_us(us: u64) -> String {
    let f = us as f64;
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=9_994 => format!("{:.2}ms", f / 1e3),
        9_995..=99_949 => format!("{:.1}ms", f / 1e3),
        99_950..=999_499 => format!("{:.0}ms", f / 1e3),
        999_500..=9_994_999 => format!("{:.2}s", f / 1e6),
        9_995_000..=99_949_999 => format!("{:.1}s", f / 1e6),
        99_950_000..=999_499_999 => format!("{:.0}s", f / 1e6),
        999_500_000..=5_999_999_999 => format!("{:.0}m", f / 6e7),
        _ => ">100m".into(),
    }
}

/// `items` joined with ` · `, after a 13-column label, wrapped at
/// [`WIDTH`] (continuation lines indented like the first).
fn wrap(o: &mut String, label: &str, items: &[String]) {
    let indent = " ".repeat(13);
    let mut line = format!("{label:<12} ");
    let mut empty = true;
    for it in items {
        let sep = if empty { "" } else { " · " };
        if !empty && line.chars().count() + sep.len() + it.chars().count() > WIDTH {
            let _ = writeln!(o, "{}", line.trim_end());
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push_str(" · ");
        }
        line.push_str(it);
        empty = false;
    }
    let _ = writeln!(o, "{}", line.trim_end());
}

/// `text` after `first`, wrapped at [`WIDTH`] on spaces, continuation
/// lines after `cont`. A single word longer than a line stays whole.
fn wrap_words(o: &mut String, first: &str, cont: &str, text: &str) {
    let mut line = first.to_string();
    let mut fresh = true;
    for w in text.split(' ') {
        if !fresh && line.chars().count() + 1 + w.chars().count() > WIDTH {
            let _ = writeln!(o, "{}", line.trim_end());
            line = cont.to_string();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(w);
        fresh = false;
    }
    let _ = writeln!(o, "{}", line.trim_end());
}

/// At most `max` characters, `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Fault;
    use crate::hist::Hist;
    use crate::tally::{Cell, Tally};

    fn report() -> Report {
        let opts = <crate::opts::Opts as clap::Parser>::try_parse_from([
            "loadgen",
            "--clients",
            "90",
            "--rooms",
            "4",
            "--reconnect",
            "--max-lost",
            "0",
            "--max-p99",
            "1ms",
        ])
        .unwrap();
        let mut cfg = opts.resolve(19_000).unwrap();
        cfg.faults = vec![Fault {
            name: "kill9:app2@3s".into(),
            kind: "kill9".into(),
            target: Some("app2".into()),
            at_unix_ms: 3_400,
            end_unix_ms: None,
        }];
        let mut h = Hist::default();
        for v in [900, 2_000, 12_500, 104_770, 1_520_000] {
            h.record(v);
        }
        let cell = |s: &str, r: &str| Cell {
            sender: s.into(),
            receiver: r.into(),
            count: 1_234_567,
            expected: 1_234_567,
            lost: 0,
            hist: h.clone(),
        };
        let mut t = Tally {
            attempted: 90,
            opened: 90,
            sent: 640,
            expected: 14_400,
            received: 14_400,
            delivered: 14_400,
            disconnects: 30,
            reconnects: 30,
            latency: h.clone(),
            raw_latency: h.clone(),
            connect: h.clone(),
            recovery: h.clone(),
            lag: h.clone(),
            matrix: vec![
                cell("app10", "app2"),
                cell("app2", "app10"),
                cell("app1", "app2"),
            ],
            recovery_events: vec![(3_500_000, 400_000)],
            frames_fallback: 3,
            frames_unrecognized: 1,
            frame_samples: vec![format!("not JSON: {}", "x".repeat(200))],
            ..Tally::default()
        };
        t.app_id_changes.insert("app2→app1".into(), 15);
        t.app_id_changes.insert("app2→app3".into(), 15);
        t.errors.insert(
            "config: 12.5 msg/s per sender exceeds the server's rate_per_sec 10: raise --senders and more words"
                .into(),
            1,
        );
        t.timing.drain_us = 1_234;
        t.timing.last_delivery_after_send_us = 900;
        let mut r = Report::new(&cfg, &t);
        let points = (1..=120)
            .map(|i| Point {
                t_s: f64::from(i),
                phase: "send".into(),
                connected: 90,
                deliveries_per_s: 1800.0,
                disconnects: u64::from(i == 4) * 30,
                ..Point::default()
            })
            .collect();
        r.set_timeline(points, &t);
        r
    }

    #[test]
    fn every_line_fits_80_columns() {
        let text = summary(&report());
        if std::env::var_os("SHOW_SUMMARY").is_some() {
            println!("{text}");
        }
        for l in text.lines() {
            assert!(
                l.chars().count() <= WIDTH || l.starts_with("  url "),
                "{} columns: {l}\n{text}",
                l.chars().count()
            );
        }
        for needle in [
            "drain 1.23ms (last delivery 900µs after the last send)",
            "reconnects 30",
            "app2→app1 15",
            "recovery (resume)",
            "not expected",
            "Faults (",
            "kill9:app2@3s",
            "▼ kill9:app2@3s",
            "pass  --max-lost  lost deliveries: 0 ≤ 0",
            "FAIL  --max-p99  fan-out p99",
            "THRESHOLDS FAILED: --max-p99",
            "3 messages read by the JSON fallback",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Matrix rows in natural order.
        let a = text.find("  app1       app2").unwrap();
        let b = text.find("  app2       app10").unwrap();
        let c = text.find("  app10      app2").unwrap();
        assert!(a < b && b < c, "{text}");
    }

    #[test]
    fn lag_hint_only_when_it_is_a_real_share_of_p99() {
        let p = |p99: u64| Percentiles {
            count: 10,
            p99,
            ..Percentiles::default()
        };
        // The 1 ms timer tick alone is never a hint.
        assert_eq!(lag_share(&p(1_900), &p(2_000)), None);
        // 4 ms beyond the tick against a 100 ms p99: not a real share.
        assert_eq!(lag_share(&p(5_000), &p(100_000)), None);
        assert!(lag_share(&p(6_000), &p(12_000)).is_some());
        assert_eq!(lag_share(&p(6_000), &Percentiles::default()), None);
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_us(850), "850µs");
        assert_eq!(short_us(1_990), "1.99ms");
        assert_eq!(short_us(12_549), "12.5ms");
        assert_eq!(short_us(104_770), "105ms");
        assert_eq!(short_us(1_520_000), "1.52s");
        assert_eq!(short_us(15_200_000), "15.2s");
        assert_eq!(short_us(152_000_000), "152s");
        for us in [
            0,
            999,
            9_994,
            9_995,
            99_949,
            99_950,
            999_499,
            999_500,
            u64::MAX,
        ] {
            assert!(short_us(us).chars().count() <= 6, "{us}: {}", short_us(us));
        }
        assert_eq!(short_us(3_600_000_000), "60m");
    }
}
