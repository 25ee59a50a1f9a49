//! Wall-clock time for timestamps and day separators.
//!
//! Messages carry the server's time; the client's own notices use the local
//! clock. Tests pin the clock and the time zone so snapshots do not depend
//! on when or where they run.

use chrono::{DateTime, Local, TimeZone, Utc};

/// How times are read and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Show UTC instead of the local time zone.
    pub utc: bool,
    /// A fixed "now" in ms since the epoch (tests); `None` reads the clock.
    pub fixed_ms: Option<u64>,
    /// The time column's `strftime` format (`timestamp_format` in the
    /// config, checked when read); `None` is `%H:%M:%S`.
    pub format: Option<&'static str>,
}

/// `Monday, 23 November 2026` for a day counted like [`Stamp::day`].
pub fn day_label(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day.saturating_mul(86_400), 0)
        .map(|d| d.format("%A, %-d %B %Y").to_string())
        .unwrap_or_default()
}

/// A moment as it is shown on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// `HH:MM:SS`.
    pub time: String,
    /// Days since the epoch in the display time zone: a change means a new
    /// day separator.
    pub day: i64,
}

impl Clock {
    /// A clock pinned at `ms`, in UTC.
    pub fn fixed(ms: u64) -> Self {
        Self {
            utc: true,
            fixed_ms: Some(ms),
            format: None,
        }
    }

    /// Now, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.fixed_ms
            .unwrap_or_else(|| Utc::now().timestamp_millis().max(0) as u64)
    }

    /// How `ms` is shown.
    pub fn stamp(&self, ms: u64) -> Stamp {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default();
        let format = self.format.unwrap_or("%H:%M:%S");
        if self.utc {
            stamp_in(&utc, format)
        } else {
            stamp_in(&Local.from_utc_datetime(&utc.naive_utc()), format)
        }
    }

    /// `2026-12-01 20:42:12` for a room log line.
    pub fn date_time(&self, ms: u64) -> String {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default();
        let naive = if self.utc {
            utc.naive_utc()
        } else {
            Local.from_utc_datetime(&utc.naive_utc()).naive_local()
        };
        naive.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

fn stamp_in<Tz: TimeZone>(t: &DateTime<Tz>, format: &str) -> Stamp
where
    Tz::Offset: std::fmt::Display,
{
    use std::fmt::Write;
    let naive = t.naive_local();
    let mut time = String::new();
    // A format checked when the config was read cannot fail here; should
    // one fail anyway, the time shows as `?` rather than panicking.
    if write!(time, "{}", naive.format(format)).is_err() {
        time = "?".into();
    }
    Stamp {
        time,
        day: naive.and_utc().timestamp().div_euclid(86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        let c = Clock::fixed(0);
        // 2023-11-14 22:13:20 UTC
        let s = c.stamp(1_700_000_000_000);
        assert_eq!(s.time, "22:13:20");
        assert_eq!(s.day, 19_675);
        assert_eq!(day_label(s.day), "Tuesday, 14 November 2023");
        assert_eq!(c.stamp(1_700_000_000_000 + 7_000_000).day, 19_676);
        assert_eq!(c.date_time(1_700_000_000_000), "2023-11-14 22:13:20");
        let hm = Clock {
            format: Some("%H:%M"),
            ..c
        };
        assert_eq!(hm.stamp(1_700_000_000_000).time, "22:13");
    }
}
