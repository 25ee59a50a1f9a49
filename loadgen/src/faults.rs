//! Faults injected by the launcher while loadgen runs, and what they did.
//!
//! `cluster exec --fault kill9:app2@5s --fault redis-stop@8s+5s -- loadgen
//! … --reconnect` passes its plan in `LOADGEN_FAULTS` (or `--faults`): a
//! JSON array, one object per fault,
//! `{"name": "kill9:app2@5s", "kind": "kill9", "target": "app2",
//! "at_unix_ms": 1796150000000, "end_unix_ms": null}`. loadgen places each
//! fault on its timeline (the second it falls in) and reports the recovery
//! after it: how long until deliveries per second were back to 90% of the
//! average before the fault, and how long the sockets lost around it took
//! to get their first delivery after resuming.

use serde::{Deserialize, Serialize};

use crate::timeline::Point;

/// One fault of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub target: Option<String>,
    pub at_unix_ms: u64,
    #[serde(default)]
    pub end_unix_ms: Option<u64>,
}

/// Parse a plan; the error says what is wrong and where it came from.
pub fn parse(json: &str) -> Result<Vec<Fault>, String> {
    let json = json.trim();
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let faults: Vec<Fault> = serde_json::from_str(json).map_err(|e| {
        format!(
            "--faults / LOADGEN_FAULTS is not a JSON array of faults \
             ({{\"name\", \"kind\", \"target\", \"at_unix_ms\", \"end_unix_ms\"}}): {e}"
        )
    })?;
    for f in &faults {
        if f.name.is_empty() {
            return Err("--faults / LOADGEN_FAULTS: a fault without a name".into());
        }
        if f.end_unix_ms.is_some_and(|e| e < f.at_unix_ms) {
            return Err(format!(
                "--faults / LOADGEN_FAULTS: fault {:?} ends before it starts",
                f.name
            ));
        }
    }
    Ok(faults)
}

/// Deliveries per second count as recovered at this share of the average
/// before the fault.
pub const RECOVERED_SHARE: f64 = 0.9;
/// Sockets lost from this long before a fault (clock skew, detection)
/// until this long after it (or after its end) are put down to it.
pub const LOSS_BEFORE_MS: u64 = 500;
pub const LOSS_AFTER_MS: u64 = 5000;

/// What one fault did, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub kind: String,
    pub target: Option<String>,
    /// When it was injected, seconds from the run's start (negative:
    /// before loadgen started).
    pub at_s: f64,
    /// When it ended (`+D` faults), seconds from the run's start.
    pub end_s: Option<f64>,
    /// The timeline second it falls in (`t_s` of that point), if any.
    pub timeline_t_s: Option<f64>,
    /// Average deliveries per second over the send-phase seconds before it.
    pub before_per_s: Option<f64>,
    /// The fewest deliveries in one second from it until recovered.
    pub min_per_s: Option<f64>,
    /// From the fault to the end of the first whole second after it
    /// (and after its end, for `+D` faults) whose deliveries per second
    /// were back to 90% of `before_per_s`; `None`: never, within the send
    /// phase.
    pub back_to_90pct_ms: Option<u64>,
    /// Connections lost from 0.5 s before it to 5 s after it (or after its
    /// end), and how many of them had a delivery again after resuming.
    pub sockets_lost: u64,
    pub sockets_recovered: u64,
    /// Their recovery times (loss to first delivery after the resume).
    pub max_recovery_us: Option<u64>,
    pub p50_recovery_us: Option<u64>,
}

/// Mark each fault on the timeline and work out its recovery.
/// `epoch_unix_us`: the run's start; `recovery`: `(lost at µs, recovery
/// µs)` per recovered loss, µs since the run's start.
pub fn analyse(
    faults: &[Fault],
    epoch_unix_us: u64,
    timeline: &mut [Point],
    recovery: &[(u64, u64)],
) -> Vec<FaultReport> {
    let mut out = Vec::with_capacity(faults.len());
    for f in faults {
        let rel = |ms: u64| (ms as f64 * 1000.0 - epoch_unix_us as f64) / 1e6;
        let at_s = rel(f.at_unix_ms);
        let end_s = f.end_unix_ms.map(rel);
        // The point covering (previous t_s, t_s] holds it.
        let idx = timeline
            .iter()
            .enumerate()
            .find(|(i, p)| {
                let from = if *i == 0 {
                    (p.t_s - 1.0).min(0.0) - 1e-9
                } else {
                    timeline[i - 1].t_s
                };
                at_s > from && at_s <= p.t_s
            })
            .map(|(i, _)| i);
        if let Some(i) = idx {
            timeline[i].faults.push(f.name.clone());
        }
        let before: Vec<f64> = timeline
            .iter()
            .filter(|p| p.phase == "send" && p.t_s <= at_s)
            .map(|p| p.deliveries_per_s)
            .collect();
        let before_per_s = (!before.is_empty())
            .then(|| (before.iter().sum::<f64>() / before.len() as f64 * 10.0).round() / 10.0);
        let settled_from = end_s.unwrap_or(at_s).max(at_s);
        let mut min_per_s: Option<f64> = None;
        let mut back = None;
        if let Some(avg) = before_per_s.filter(|a| *a > 0.0) {
            for p in timeline.iter().filter(|p| p.t_s > at_s) {
                if p.phase != "send" {
                    break;
                }
                min_per_s =
                    Some(min_per_s.map_or(p.deliveries_per_s, |m| m.min(p.deliveries_per_s)));
                // A whole second after the fault (and after its end).
                if p.t_s - 1.0 >= settled_from - 1e-9 && p.deliveries_per_s >= RECOVERED_SHARE * avg
                {
                    back = Some(((p.t_s - at_s) * 1000.0).round().max(0.0) as u64);
                    break;
                }
            }
        }
        let from_us = (at_s * 1e6 - LOSS_BEFORE_MS as f64 * 1000.0).max(0.0) as u64;
        let to_us = (settled_from * 1e6 + LOSS_AFTER_MS as f64 * 1000.0).max(0.0) as u64;
        let mut rec: Vec<u64> = recovery
            .iter()
            .filter(|(lost, _)| (from_us..to_us).contains(lost))
            .map(|(_, r)| *r)
            .collect();
        rec.sort_unstable();
        let sockets_lost = timeline
            .iter()
            .filter(|p| {
                let t_us = p.t_s * 1e6;
                // A point counts the losses of the second before its t_s.
                t_us > from_us as f64 && t_us - 1e6 < to_us as f64
            })
            .map(|p| p.disconnects)
            .sum::<u64>()
            .max(rec.len() as u64);
        out.push(FaultReport {
            name: f.name.clone(),
            kind: f.kind.clone(),
            target: f.target.clone(),
            at_s: (at_s * 1000.0).round() / 1000.0,
            end_s: end_s.map(|e| (e * 1000.0).round() / 1000.0),
            timeline_t_s: idx.map(|i| timeline[i].t_s),
            before_per_s,
            min_per_s,
            back_to_90pct_ms: back,
            sockets_lost,
            sockets_recovered: rec.len() as u64,
            max_recovery_us: rec.last().copied(),
            p50_recovery_us: rec.get(rec.len() / 2).copied(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, phase: &str, per_s: f64, disconnects: u64) -> Point {
        Point {
            t_s,
            phase: phase.into(),
            deliveries_per_s: per_s,
            disconnects,
            ..Point::default()
        }
    }

    #[test]
    fn parses_the_launchers_plan_and_refuses_nonsense() {
        let f = parse(
            r#"[{"name":"kill9:app2@5s","kind":"kill9","target":"app2","at_unix_ms":1796150000000,"end_unix_ms":null},
                {"name":"redis-stop@8s+5s","kind":"redis-stop","target":"redis","at_unix_ms":1796150003000,"end_unix_ms":1796150008000}]"#,
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].target.as_deref(), Some("app2"));
        assert_eq!(f[1].end_unix_ms, Some(1_796_150_008_000));
        assert_eq!(parse("  ").unwrap(), vec![]);
        for bad in [
            "kill9:app2@5s",
            "{}",
            r#"[{"name":"x"}]"#,
            r#"[{"name":"","at_unix_ms":1}]"#,
            r#"[{"name":"x","at_unix_ms":5,"end_unix_ms":4}]"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("LOADGEN_FAULTS"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_dip_and_its_recovery() {
        // Run start at unix 1000 s; fault at +3.4 s.
        let epoch_us = 1_000_000_000;
        let mut tl = vec![
            point(1.0, "ramp", 0.0, 0),
            point(2.0, "send", 1000.0, 0),
            point(3.0, "send", 1000.0, 0),
            point(4.0, "send", 700.0, 30),
            point(5.0, "send", 850.0, 0),
            point(6.0, "send", 1200.0, 0),
            point(7.0, "drain", 0.0, 0),
        ];
        let faults = vec![Fault {
            name: "kill9:app2@3s".into(),
            kind: "kill9".into(),
            target: Some("app2".into()),
            at_unix_ms: 1_003_400,
            end_unix_ms: None,
        }];
        let recovery = [(3_450_000, 400_000), (3_460_000, 900_000), (9_000_000, 5)];
        let r = analyse(&faults, epoch_us, &mut tl, &recovery);
        assert_eq!(tl[3].faults, vec!["kill9:app2@3s".to_string()]);
        let r = &r[0];
        assert_eq!(r.at_s, 3.4);
        assert_eq!(r.timeline_t_s, Some(4.0));
        assert_eq!(r.before_per_s, Some(1000.0));
        assert_eq!(r.min_per_s, Some(700.0));
        // 5.0 is the first whole second after the fault, but at 850/s;
        // 6.0 is back above 900/s: 2.6 s after the fault.
        assert_eq!(r.back_to_90pct_ms, Some(2600));
        assert_eq!((r.sockets_lost, r.sockets_recovered), (30, 2));
        assert_eq!(r.max_recovery_us, Some(900_000));
        assert_eq!(r.p50_recovery_us, Some(900_000));
    }

    #[test]
    fn a_fault_with_no_recovery_in_the_send_phase() {
        let mut tl = vec![
            point(1.0, "send", 100.0, 0),
            point(2.0, "send", 10.0, 5),
            point(3.0, "drain", 0.0, 0),
        ];
        let faults = vec![Fault {
            name: "redis-stop@1s+5s".into(),
            kind: "redis-stop".into(),
            target: Some("redis".into()),
            at_unix_ms: 1_100,
            end_unix_ms: Some(6_100),
        }];
        let r = analyse(&faults, 0, &mut tl, &[]);
        assert_eq!(r[0].end_s, Some(6.1));
        assert_eq!(r[0].back_to_90pct_ms, None);
        assert_eq!(r[0].min_per_s, Some(10.0));
        assert_eq!(r[0].max_recovery_us, None);
        // Before the run: no point holds it, nothing before it.
        let early = Fault {
            at_unix_ms: 0,
            ..faults[0].clone()
        };
        let r = analyse(&[early], 5_000_000, &mut tl, &[]);
        assert_eq!(r[0].at_s, -5.0);
        assert_eq!((r[0].timeline_t_s, r[0].before_per_s), (None, None));
    }
}
