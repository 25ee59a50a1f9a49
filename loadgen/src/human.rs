//! The human summary: plain-text tables that read well in a terminal and
//! in a CI log.

use std::fmt::Write as _;

use crate::hist::Percentiles;
use crate::report::Report;
use crate::units::{fmt_ms, fmt_us};

/// Render the summary.
pub fn summary(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.config;
    let _ = writeln!(
        o,
        "loadgen {} · {} clients in {} rooms · {} senders at {} msg/s · {} B · {} · {}{}",
        match c.protocol {
            crate::config::Protocol::Chat => "chat",
            crate::config::Protocol::Raw => "raw",
        },
        c.clients,
        c.rooms,
        c.senders,
        c.rate,
        c.size,
        humantime::format_duration(c.duration),
        c.urls.join(" "),
        if r.interrupted { " · INTERRUPTED" } else { "" }
    );
    let _ = writeln!(
        o,
        "phases: ramp {} · send {} · drain {}   processes {}",
        fmt_ms(r.phases_ms.ramp),
        fmt_ms(r.phases_ms.send),
        fmt_ms(r.phases_ms.drain),
        r.loadgen.processes
    );

    let k = &r.connections;
    let _ = writeln!(
        o,
        "\nConnections  attempted {}  opened {}  failed {}  dropped {}",
        k.attempted, k.opened, k.failed, k.dropped
    );
    if !k.per_app_id.is_empty() {
        let _ = writeln!(o, "  {:<16} {:>9} {:>7}", "APP_ID", "clients", "share");
        for (app, n) in &k.per_app_id {
            let share = *n as f64 * 100.0 / k.opened.max(1) as f64;
            let _ = writeln!(o, "  {app:<16} {n:>9} {share:>6.1}%");
        }
    }

    let d = &r.deliveries;
    let _ = writeln!(
        o,
        "\nSends        {} sent ({}/s), {} refused by the server, {} unconfirmed (sender gone)",
        r.sends.sent, r.sends.per_second, r.sends.rejected, r.sends.unconfirmed
    );
    let _ = writeln!(
        o,
        "Deliveries   expected {}  received {} ({}/s)  lost {}  duplicated {}  out-of-order {}",
        d.expected, d.received, d.per_second, d.lost, d.duplicated, d.out_of_order
    );
    let _ = writeln!(
        o,
        "             cross-instance {}  not expected {}  receivers with loss {}",
        d.cross_instance, d.unexpected, d.receivers_with_loss
    );

    let _ = writeln!(
        o,
        "\n{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "Latency", "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    );
    row(&mut o, "fan-out (from scheduled)", &r.latency_us);
    row(&mut o, "fan-out (from actual send)", &r.raw_latency_us);
    row(&mut o, "connect (to welcome)", &r.connect_us);

    if !r.matrix.is_empty() {
        let _ = writeln!(
            o,
            "\nSender APP_ID → receiver APP_ID (fan-out latency from scheduled)"
        );
        let _ = writeln!(
            o,
            "  {:<12} {:<12} {:>10} {:>10} {:>8} {:>9} {:>9}",
            "sender", "receiver", "delivered", "expected", "lost", "p50", "p99"
        );
        for m in &r.matrix {
            let _ = writeln!(
                o,
                "  {:<12} {:<12} {:>10} {:>10} {:>8} {:>9} {:>9}{}",
                m.sender,
                m.receiver,
                m.count,
                m.expected,
                m.lost,
                fmt_us(m.p50_us),
                fmt_us(m.p99_us),
                if m.sender != m.receiver {
                    "  cross"
                } else {
                    ""
                }
            );
        }
    }

    if !r.errors.is_empty() {
        let _ = writeln!(o, "\nErrors and close codes by kind");
        for (kind, n) in &r.errors {
            let _ = writeln!(o, "  {n:>8}  {kind}");
        }
    }
    let s = &r.loadgen;
    let _ = writeln!(
        o,
        "\nloadgen itself: {:.3} µs CPU per delivery ({:.3} µs user space) · RSS {:.1} MiB · ~{} B per socket",
        s.cpu_us_per_delivery,
        s.user_cpu_us_per_delivery,
        s.rss_bytes as f64 / (1 << 20) as f64,
        s.mem_per_socket_bytes
    );
    let lag = &s.event_loop_lag_us;
    if lag.count > 0 {
        let _ = writeln!(
            o,
            "loadgen event-loop lag: p50 {} p99 {} max {}{}",
            fmt_us(lag.p50),
            fmt_us(lag.p99),
            fmt_us(lag.max),
            if lag.p99 > 5_000 && lag.p99 * 4 > r.latency_us.p99 {
                "  <- loadgen itself adds latency here: use --workers or fewer clients"
            } else {
                ""
            }
        );
    }
    if r.thresholds.failed.is_empty() {
        if !r.config.thresholds.is_empty() {
            let _ = writeln!(o, "\nThresholds: all passed");
        }
    } else {
        let _ = writeln!(o, "\nTHRESHOLDS FAILED:");
        for b in &r.thresholds.failed {
            let _ = writeln!(o, "  {}  {}", b.flag, b.message);
        }
    }
    o
}

fn row(o: &mut String, name: &str, p: &Percentiles) {
    if p.count == 0 {
        let _ = writeln!(o, "{name:<28} {:>9}", "-");
        return;
    }
    let _ = writeln!(
        o,
        "{name:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max),
        fmt_us(p.mean as u64),
        p.count
    );
}
