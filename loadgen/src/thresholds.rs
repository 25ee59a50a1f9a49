//! CI thresholds: each breach is reported by name and makes the exit code
//! non-zero.

use std::time::Duration;

use crate::report::Report;

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

    /// Every breached limit, as `(flag, what happened)`.
    pub fn check(&self, r: &Report) -> Vec<Breach> {
        let mut out = Vec::new();
        let mut max = |flag: &'static str, limit: Option<u64>, got: u64, what: &str| {
            if let Some(l) = limit {
                if got > l {
                    out.push(Breach {
                        flag,
                        message: format!("{what}: {got} > {l}"),
                    });
                }
            }
        };
        let d = &r.deliveries;
        max("--max-lost", self.max_lost, d.lost, "lost deliveries");
        max(
            "--max-duplicated",
            self.max_duplicated,
            d.duplicated,
            "duplicated deliveries",
        );
        max(
            "--max-out-of-order",
            self.max_out_of_order,
            d.out_of_order,
            "out-of-order deliveries",
        );
        max(
            "--max-failed-connections",
            self.max_failed_connections,
            r.connections.failed,
            "failed connections",
        );
        if let Some(l) = self.max_p99 {
            let p99 = r.latency_us.p99;
            let limit_us = l.as_micros() as u64;
            if r.latency_us.count == 0 {
                out.push(Breach {
                    flag: "--max-p99",
                    message: "no deliveries were measured, so p99 is unknown".into(),
                });
            } else if p99 > limit_us {
                out.push(Breach {
                    flag: "--max-p99",
                    message: format!(
                        "fan-out p99 {} > {}",
                        crate::report::fmt_us(p99),
                        humantime::format_duration(l)
                    ),
                });
            }
        }
        if let Some(l) = self.min_instances {
            let got = r.connections.per_app_id.len();
            if got < l {
                out.push(Breach {
                    flag: "--min-instances",
                    message: format!("clients landed on {got} APP_IDs < {l}"),
                });
            }
        }
        if let Some(l) = self.min_cross_instance {
            if d.cross_instance < l {
                out.push(Breach {
                    flag: "--min-cross-instance",
                    message: format!("cross-instance deliveries: {} < {l}", d.cross_instance),
                });
            }
        }
        out
    }
}

/// One failed threshold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breach {
    pub flag: &'static str,
    pub message: String,
}
