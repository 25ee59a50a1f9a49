//! What the live view shows: once a second a [`Snapshot`] comes in and
//! [`View::update`] turns it into rates and rolling history, which the
//! ratatui dashboard ([`crate::tui`]) draws or [`View::line`] prints as one
//! progress line.

use std::collections::VecDeque;

use crate::stats::Snapshot;
use crate::units::fmt_us;

/// Seconds of history the dashboard keeps for its charts.
pub const HISTORY: usize = 120;

/// What the live view shows, updated once per snapshot.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub last: Snapshot,
    /// Sends and deliveries per second over the last interval.
    pub send_rate: f64,
    pub recv_rate: f64,
    pub send_hist: VecDeque<u64>,
    pub recv_hist: VecDeque<u64>,
    pub p99_hist: VecDeque<u64>,
    pub config_line: String,
}

impl View {
    pub fn new(config_line: String) -> Self {
        Self {
            config_line,
            ..Self::default()
        }
    }

    pub fn update(&mut self, s: Snapshot) {
        let dt = (s.elapsed_ms.saturating_sub(self.last.elapsed_ms) as f64 / 1000.0).max(1e-3);
        self.send_rate = s.sent.saturating_sub(self.last.sent) as f64 / dt;
        self.recv_rate = s.received.saturating_sub(self.last.received) as f64 / dt;
        push(&mut self.send_hist, self.send_rate as u64);
        push(&mut self.recv_hist, self.recv_rate as u64);
        push(&mut self.p99_hist, s.interval_p99);
        self.last = s;
    }

    /// One progress line, e.g. for CI logs.
    pub fn line(&self) -> String {
        let s = &self.last;
        let apps: Vec<String> = s.per_app.iter().map(|(a, n)| format!("{a}:{n}")).collect();
        format!(
            "[{:>6.1}s] {:<7} conn {}/{} fail {} drop {}{} [{}] | sent {} ({:.0}/s) recv {} ({:.0}/s) | p50 {} p99 {} | dup {} ooo {} err {} | fds {}/{}",
            s.elapsed_ms as f64 / 1000.0,
            s.phase,
            s.connected,
            s.clients,
            s.failed,
            s.dropped,
            if s.disconnects > 0 {
                format!(" lost {} back {} down {}", s.disconnects, s.reconnects, s.down)
            } else {
                String::new()
            },
            apps.join(" "),
            s.sent,
            self.send_rate,
            s.received,
            self.recv_rate,
            if s.interval_count > 0 { fmt_us(s.interval_p50) } else { "-".into() },
            if s.interval_count > 0 { fmt_us(s.interval_p99) } else { "-".into() },
            s.duplicated,
            s.out_of_order,
            s.errors,
            s.open_fds,
            s.fd_limit,
        )
    }
}

fn push(q: &mut VecDeque<u64>, v: u64) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_differences() {
        let mut v = View::new(String::new());
        v.update(Snapshot {
            elapsed_ms: 1000,
            sent: 10,
            received: 100,
            ..Snapshot::default()
        });
        v.update(Snapshot {
            elapsed_ms: 2000,
            sent: 30,
            received: 500,
            connected: 7,
            clients: 9,
            interval_count: 5,
            interval_p99: 2500,
            ..Snapshot::default()
        });
        assert_eq!((v.send_rate, v.recv_rate), (20.0, 400.0));
        let l = v.line();
        assert!(l.contains("conn 7/9"), "{l}");
        assert!(l.contains("p99 2.50ms"), "{l}");
        assert_eq!(v.recv_hist.len(), 2);
    }
}
