//! Direct connect: before every (re)connect, ask the registry
//! (`GET --registry URL`, plain HTTP/1.1) which instance to use; it answers
//! `{"url":"ws://127.0.0.1:PORT/ws","app_id":"app2","connections":N}` and
//! the client connects straight to that instance, so no proxy relays its
//! frames. `--url` stays the fallback.
//!
//! The client never loops on a dead instance: when the registry names the
//! very URL that just failed, the client backs off and asks again, and
//! after [`SAME_ANSWERS_MAX`] such answers in a row it connects through
//! `--url` instead.

use std::time::Duration;

use super::http;

/// Answers naming the URL that just failed before falling back to `--url`.
pub const SAME_ANSWERS_MAX: u32 = 3;
/// Most bytes read from the registry.
const MAX_RESPONSE: usize = 64 * 1024;

/// What the registry said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub url: String,
    pub app_id: Option<String>,
}

/// Where the next attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Straight to this instance.
    Direct(String),
    /// Through `--url`.
    Fallback(String),
    /// The registry named the URL that just failed: wait a backoff, then
    /// ask again.
    AskAgain,
}

/// The choice between the registry's answer and `--url`.
#[derive(Debug, Clone, Default)]
pub struct Chooser {
    /// The direct URL whose connect failed last.
    failed: Option<String>,
    /// Answers in a row naming `failed`.
    same: u32,
}

impl Chooser {
    /// Decide from the registry's answer (or why there was none).
    pub fn decide(&mut self, answer: Result<Answer, String>, fallback: &str) -> Decision {
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "registry: no answer; connecting through --url");
                return Decision::Fallback(fallback.to_string());
            }
        };
        if self.failed.as_deref() == Some(answer.url.as_str()) {
            self.same += 1;
            if self.same >= SAME_ANSWERS_MAX {
                tracing::warn!(url = %answer.url, "registry keeps naming a dead instance; connecting through --url");
                self.failed = None;
                self.same = 0;
                return Decision::Fallback(fallback.to_string());
            }
            return Decision::AskAgain;
        }
        self.same = 0;
        Decision::Direct(answer.url)
    }

    /// The connect to a direct URL failed.
    pub fn failed(&mut self, url: &str) {
        self.failed = Some(url.to_string());
    }

    /// A connection is up: start afresh.
    pub fn connected(&mut self) {
        self.failed = None;
        self.same = 0;
    }
}

/// `GET url` (`http://host:port/path`) and read the answer's JSON.
pub async fn ask(url: &str, limit: Duration) -> Result<Answer, String> {
    let resp = http::get(url, &[], MAX_RESPONSE, limit).await?;
    answer(&resp)
}

/// Read an HTTP/1.1 response (plain or chunked body) and its JSON.
pub fn parse_response(buf: &[u8]) -> Result<Answer, String> {
    answer(&http::parse(buf)?)
}

fn answer(resp: &http::Response) -> Result<Answer, String> {
    if resp.status != 200 {
        return Err(resp.reason());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("the registry's JSON: {e}"))?;
    let url = v
        .get("url")
        .and_then(|u| u.as_str())
        .ok_or("the registry's answer has no url")?;
    if !url.starts_with("ws://") {
        return Err(format!("the registry named {url:?}, not a ws:// URL"));
    }
    Ok(Answer {
        url: url.to_string(),
        app_id: v.get("app_id").and_then(|a| a.as_str()).map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(url: &str) -> Result<Answer, String> {
        Ok(Answer {
            url: url.into(),
            app_id: None,
        })
    }

    #[test]
    fn never_loops_on_a_dead_instance() {
        let mut c = Chooser::default();
        assert_eq!(
            c.decide(a("ws://a/ws"), "ws://lb/ws"),
            Decision::Direct("ws://a/ws".into())
        );
        c.failed("ws://a/ws");
        // The same dead URL again: wait and ask again, three times, then
        // the fallback.
        assert_eq!(c.decide(a("ws://a/ws"), "ws://lb/ws"), Decision::AskAgain);
        assert_eq!(c.decide(a("ws://a/ws"), "ws://lb/ws"), Decision::AskAgain);
        assert_eq!(
            c.decide(a("ws://a/ws"), "ws://lb/ws"),
            Decision::Fallback("ws://lb/ws".into())
        );
        // Another instance is tried at once.
        c.failed("ws://a/ws");
        assert_eq!(
            c.decide(a("ws://b/ws"), "ws://lb/ws"),
            Decision::Direct("ws://b/ws".into())
        );
        // No registry: the fallback.
        assert_eq!(
            c.decide(Err("refused".into()), "ws://lb/ws"),
            Decision::Fallback("ws://lb/ws".into())
        );
    }

    #[test]
    fn reads_plain_and_chunked_answers_and_refuses_bad_ones() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 58\r\n\r\n{\"url\":\"ws://127.0.0.1:9/ws\",\"app_id\":\"app2\",\"connections\":3}";
        let got = parse_response(plain).unwrap();
        assert_eq!(got.url, "ws://127.0.0.1:9/ws");
        assert_eq!(got.app_id.as_deref(), Some("app2"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"url\":\"ws://h/w\r\n3\r\ns\"}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().url, "ws://h/ws");
        let e = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno instance up\n")
            .unwrap_err();
        assert!(e.contains("503") && e.contains("no instance up"), "{e}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n{\"url\":\"http://x\"}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
