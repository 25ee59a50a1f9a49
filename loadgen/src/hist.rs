//! Latency histograms: HdrHistogram in microseconds, with percentile
//! summaries, serde through the compact V2 encoding (for worker reports),
//! and the standard `.hgrm` percentile-distribution text.

use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest recordable value: one hour in µs. Anything slower saturates.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    /// Record one value in µs; 0 is recorded as 1 (the lowest bucket), and
    /// values past the top saturate rather than being dropped.
    #[inline]
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Add every count of `other`.
    pub fn add(&mut self, other: &Hist) {
        // Same bounds everywhere, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Value at quantile `q` (0..=1), 0 when empty.
    pub fn q(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// The summary that reports print.
    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        Percentiles {
            count: h.len(),
            min: if h.is_empty() { 0 } else { h.min() },
            mean: if h.is_empty() {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
            p50: self.q(0.5),
            p90: self.q(0.9),
            p99: self.q(0.99),
            p999: self.q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
        }
    }

    /// The `.hgrm` percentile distribution, values in milliseconds, as
    /// HdrHistogram's `outputPercentileDistribution` writes it (5 ticks
    /// per half distance, scaling ratio 1000), which HdrHistogram plotters
    /// read.
    pub fn hgrm(&self) -> String {
        let h = &self.0;
        let mut out = String::new();
        let _ = write!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let scale = 1000.0;
        let mut total = 0u64;
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                total += v.count_since_last_iteration();
                let value = v.value_iterated_to() as f64 / scale;
                let q = v.quantile_iterated_to();
                if q < 1.0 {
                    let _ = writeln!(
                        out,
                        "{value:12.3} {q:2.12} {total:10} {:14.2}",
                        1.0 / (1.0 - q)
                    );
                } else {
                    let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
                }
            }
        }
        let (mean, sd, max) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
        };
        let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
        let _ = writeln!(
            out,
            "#[Max     = {max:12.3}, Total count    = {:12}]",
            h.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            h.buckets(),
            sub_buckets(h.sigfig())
        );
        out
    }

    fn to_base64(&self) -> String {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .expect("serialising to a Vec cannot fail");
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| e.to_string())?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{e:?}"))?;
        let mut out = Hist::default();
        out.0.add(&h).map_err(|e| format!("{e:?}"))?;
        Ok(out)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hist::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// HdrHistogram's sub-bucket count: the power of two that holds
/// `2 * 10^sigfig` distinct values.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_round_trip() {
        let mut h = Hist::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        h.record(0);
        h.record(u64::MAX);
        let s = h.summary();
        assert_eq!(s.count, 10_002);
        assert!((4990..=5010).contains(&s.p50), "{s:?}");
        assert!((9890..=9910).contains(&s.p99), "{s:?}");
        let json = serde_json::to_string(&h).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary(), s);
        let mut sum = back.clone();
        sum.add(&h);
        assert_eq!(sum.count(), 2 * s.count);
    }

    #[test]
    fn hgrm_has_the_standard_shape() {
        let mut h = Hist::default();
        for v in [1000, 2000, 3000, 4000] {
            h.record(v);
        }
        let t = h.hgrm();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"));
        assert!(lines[0].ends_with("1/(1-Percentile)"));
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        // Values print as the bucket's highest equivalent value, as Java's
        // HdrHistogram does.
        assert!(
            (1.0..=1.001).contains(&first[0].parse::<f64>().unwrap()),
            "{}",
            lines[2]
        );
        assert_eq!(first[1], "0.000000000000");
        let last_data = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        let f: Vec<&str> = last_data.split_whitespace().collect();
        assert!(
            (4.0..=4.002).contains(&f[0].parse::<f64>().unwrap()),
            "{last_data}"
        );
        assert_eq!((f[1], f[2]), ("1.000000000000", "4"));
        assert!(t.contains("Total count    =            4]"), "{t}");
        assert!(t.contains("#[Buckets =           "), "{t}");
        // Data lines are numeric in every column, as plotters expect.
        for l in &lines[2..lines.len() - 3] {
            for f in l.split_whitespace() {
                assert!(f.parse::<f64>().is_ok(), "{l}");
            }
        }
    }
}
