//! CI thresholds: every limit that is set is checked and listed with pass
//! or fail; each failure makes the exit code non-zero. This module knows
//! nothing of the report: the report hands it the [`Measured`] figures.

use std::time::Duration;

use crate::units::fmt_us;

/// Limits a run must stay inside. `None` means "not checked".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// Fan-out p99 latency from the scheduled send time.
    pub max_p99: Option<Duration>,
    pub max_lost: Option<u64>,
    pub max_duplicated: Option<u64>,
    pub max_out_of_order: Option<u64>,
    pub max_failed_connections: Option<u64>,
    /// Distinct APP_IDs the clients must have landed on.
    pub min_instances: Option<usize>,
    pub min_cross_instance: Option<u64>,
}

/// What a run measured, as far as thresholds are concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub failed_connections: u64,
    /// Fan-out p99 from the scheduled send time, µs.
    pub p99_us: u64,
    /// Deliveries behind `p99_us` (0: p99 unknown).
    pub latency_count: u64,
    /// Distinct APP_IDs clients landed on.
    pub instances: usize,
    pub cross_instance: u64,
}

/// One checked threshold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub flag: &'static str,
    /// The limit, as given (`0`, `50ms`).
    pub limit: String,
    /// What the run measured, in the same unit.
    pub value: String,
    pub passed: bool,
    /// One line: what was compared (`lost deliveries: 24 > 0`).
    pub message: String,
}

/// One failed threshold (the JSON's `thresholds.failed[]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breach {
    pub flag: &'static str,
    pub message: String,
}

impl Thresholds {
    /// Whether nothing is checked.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Replace every limit that `other` sets.
    pub fn overlay(&mut self, other: &Thresholds) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            max_p99,
            max_lost,
            max_duplicated,
            max_out_of_order,
            max_failed_connections,
            min_instances,
            min_cross_instance
        );
    }

    /// Every limit that is set, checked, in a fixed order.
    pub fn check(&self, m: &Measured) -> Vec<Check> {
        let mut out = Vec::new();
        let mut max = |flag: &'static str, limit: Option<u64>, got: u64, what: &str| {
            if let Some(l) = limit {
                let passed = got <= l;
                out.push(Check {
                    flag,
                    limit: l.to_string(),
                    value: got.to_string(),
                    passed,
                    message: format!("{what}: {got} {} {l}", if passed { "≤" } else { ">" }),
                });
            }
        };
        max("--max-lost", self.max_lost, m.lost, "lost deliveries");
        max(
            "--max-duplicated",
            self.max_duplicated,
            m.duplicated,
            "duplicated deliveries",
        );
        max(
            "--max-out-of-order",
            self.max_out_of_order,
            m.out_of_order,
            "out-of-order deliveries",
        );
        max(
            "--max-failed-connections",
            self.max_failed_connections,
            m.failed_connections,
            "failed connections",
        );
        if let Some(l) = self.max_p99 {
            let limit_us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            let limit = humantime::format_duration(l).to_string();
            out.push(if m.latency_count == 0 {
                Check {
                    flag: "--max-p99",
                    limit,
                    value: "-".into(),
                    passed: false,
                    message: "no deliveries were measured, so p99 is unknown".into(),
                }
            } else {
                let passed = m.p99_us <= limit_us;
                Check {
                    flag: "--max-p99",
                    message: format!(
                        "fan-out p99 {} {} {limit}",
                        fmt_us(m.p99_us),
                        if passed { "≤" } else { ">" }
                    ),
                    limit,
                    value: fmt_us(m.p99_us),
                    passed,
                }
            });
        }
        if let Some(l) = self.min_instances {
            let passed = m.instances >= l;
            out.push(Check {
                flag: "--min-instances",
                limit: l.to_string(),
                value: m.instances.to_string(),
                passed,
                message: format!(
                    "clients landed on {} APP_IDs {} {l}",
                    m.instances,
                    if passed { "≥" } else { "<" }
                ),
            });
        }
        if let Some(l) = self.min_cross_instance {
            let passed = m.cross_instance >= l;
            out.push(Check {
                flag: "--min-cross-instance",
                limit: l.to_string(),
                value: m.cross_instance.to_string(),
                passed,
                message: format!(
                    "cross-instance deliveries: {} {} {l}",
                    m.cross_instance,
                    if passed { "≥" } else { "<" }
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_limit_is_listed_with_its_verdict() {
        let t = Thresholds {
            max_lost: Some(0),
            max_duplicated: Some(5),
            max_p99: Some(Duration::from_millis(20)),
            min_instances: Some(3),
            ..Thresholds::default()
        };
        let m = Measured {
            lost: 24,
            duplicated: 5,
            p99_us: 12_000,
            latency_count: 10,
            instances: 2,
            ..Measured::default()
        };
        let c = t.check(&m);
        let got: Vec<(&str, bool)> = c.iter().map(|c| (c.flag, c.passed)).collect();
        assert_eq!(
            got,
            vec![
                ("--max-lost", false),
                ("--max-duplicated", true),
                ("--max-p99", true),
                ("--min-instances", false)
            ]
        );
        assert_eq!(c[0].message, "lost deliveries: 24 > 0");
        assert_eq!(c[2].message, "fan-out p99 12.00ms ≤ 20ms");
        assert!(Thresholds::default().check(&m).is_empty());
    }
}
