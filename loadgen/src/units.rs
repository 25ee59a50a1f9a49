//! Numbers for people: durations in µs, ms or s. A leaf module that every
//! view (report, summary, live lines, dashboard, thresholds) may use.

/// A duration in µs for people: `850µs`, `12.30ms`, `1.52s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A duration in ms for people (see [`fmt_us`]).
pub fn fmt_ms(ms: u64) -> String {
    fmt_us(ms.saturating_mul(1000))
}

/// Natural order for APP_IDs: `app2` before `app10`.
pub fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(s: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut num: Option<u64> = None;
        for ch in s.chars() {
            if let Some(d) = ch.to_digit(10) {
                num = Some(
                    num.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(u64::from(d)),
                );
            } else {
                if let Some(n) = num.take() {
                    out.push((std::mem::take(&mut text), n));
                }
                text.push(ch);
            }
        }
        out.push((text, num.unwrap_or(0)));
        out
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(12_300), "12.30ms");
        assert_eq!(fmt_us(1_520_000), "1.52s");
        assert_eq!(fmt_ms(3), "3.00ms");
        assert_eq!(fmt_ms(u64::MAX), fmt_us(u64::MAX));
        let mut v = vec!["app10", "app2", "app1", "b", "app2x"];
        v.sort_by(|a, b| natural(a, b));
        assert_eq!(v, vec!["app1", "app2", "app2x", "app10", "b"]);
    }
}
