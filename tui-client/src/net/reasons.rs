//! Why a connection ended or could not start, in words for the status
//! bar, and what the client does next (retry, or wait for the user).

use chat_protocol::close;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;

/// How a connection (or an attempt) ended.
pub(super) enum Exit {
    /// Lost: retry after a backoff.
    Retry(String),
    /// Refused for good: wait for the user.
    Offline(String),
    /// The user asked to reconnect now.
    Now,
    /// Stop the worker (the UI is gone or asked to quit).
    Shutdown(Option<oneshot::Sender<()>>),
}

/// The `code` of an error frame, as sent.
pub(super) fn raw_error_code(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let code = v.get("code")?.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit());
    plain.then(|| code.to_string())
}

/// The close code the server sends when the connection's token expires.
pub(crate) const TOKEN_EXPIRED: u16 = 4003;

/// What the user reads when the token expired: retrying with the same
/// token cannot work, so the client waits for a new one.
pub(crate) const TOKEN_EXPIRED_REASON: &str = "token expired: give a new token";

/// What a close frame means, `has_token_file` deciding a `4003`.
pub(super) fn close_exit(cf: Option<CloseFrame>, has_token_file: bool) -> Exit {
    let Some(cf) = cf else {
        return Exit::Retry("the server closed the connection".into());
    };
    let code = u16::from(cf.code);
    if code == TOKEN_EXPIRED {
        if has_token_file {
            return Exit::Retry(format!(
                "token expired ({code} {}): reading the token file again",
                cf.reason
            ));
        }
        return Exit::Offline(format!(
            "{TOKEN_EXPIRED_REASON} (closed with {code} {}; restart with a new --token)",
            cf.reason
        ));
    }
    let name = close::name(code);
    // Not `1012 service_restart: service restart: reconnect`: a reason
    // that starts with the code's name in words says it once.
    let spoken = name.replace('_', " ");
    let detail = cf.reason.trim();
    let detail = detail
        .strip_prefix(&spoken)
        .or_else(|| detail.strip_prefix(name))
        .map(|d| d.trim_start_matches([':', ' ']))
        .unwrap_or(detail);
    let reason = if detail.is_empty() {
        format!("closed by the server ({code} {spoken})")
    } else {
        format!("closed by the server ({code} {spoken}: {detail})")
    };
    if close::should_reconnect(code) {
        Exit::Retry(reason)
    } else {
        Exit::Offline(reason)
    }
}

/// What a failed connection attempt means: a `400` (bad nick or room) will
/// not get better by retrying; anything else might.
pub(super) fn connect_error(e: WsError) -> Exit {
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            let status = resp.status();
            // The first line only: the status bar has one.
            let body = body.lines().next().unwrap_or("").trim();
            // The chat server starts the body with the status (`401 token
            // expired`): once is enough.
            let code = status.as_str();
            let body = match body.strip_prefix(code) {
                Some(rest) if rest.is_empty() || rest.starts_with([' ', ':']) => {
                    rest.trim_start_matches([' ', ':'])
                }
                _ => body,
            };
            let reason = match status.as_u16() {
                401 if body.is_empty() => {
                    "not authorized (401): the server wants a valid token (--token)".to_string()
                }
                401 => format!("not authorized (401): {body}"),
                403 if body.is_empty() => "forbidden (403)".to_string(),
                403 => format!("forbidden (403): {body}"),
                _ if body.is_empty() => format!("HTTP {status}"),
                _ => format!("HTTP {status}: {body}"),
            };
            if status.is_client_error() && status.as_u16() != 429 {
                Exit::Offline(reason)
            } else {
                Exit::Retry(reason)
            }
        }
        other => Exit::Retry(connect_failure(&other)),
    }
}

/// Why a connection could not be made, in a few words for the status bar:
/// refused, DNS, TLS, timed out.
fn connect_failure(e: &WsError) -> String {
    use std::io::ErrorKind;
    match e {
        WsError::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".into(),
            ErrorKind::TimedOut => "timed out".into(),
            ErrorKind::ConnectionReset => "connection reset".into(),
            _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => {
                format!("DNS: {io}")
            }
            _ => format!("cannot connect: {io}"),
        },
        WsError::Tls(t) => format!("TLS: {t}"),
        WsError::Url(u) => format!("bad URL: {u}"),
        other => format!("cannot connect: {other}"),
    }
}

/// A lost connection in words a user understands.
pub(super) fn lost(e: &WsError) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "the connection dropped without a goodbye (the instance may have died)".into()
        }
        WsError::Io(io) => format!("connection lost: {io}"),
        other => format!("connection lost: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn exit_text(e: Exit) -> (bool, String) {
        match e {
            Exit::Retry(r) => (true, r),
            Exit::Offline(r) => (false, r),
            Exit::Now | Exit::Shutdown(_) => panic!("not a disconnect"),
        }
    }

    #[test]
    fn an_expired_token_stops_the_retries_and_says_why() {
        let cf = CloseFrame {
            code: CloseCode::from(TOKEN_EXPIRED),
            reason: "token_expired".into(),
        };
        let (retry, reason) = exit_text(close_exit(Some(cf.clone()), false));
        assert!(!retry, "same expired token: no retry");
        assert!(
            reason.starts_with("token expired: give a new token"),
            "{reason}"
        );
        assert!(reason.contains("4003 token_expired"), "{reason}");
        // With a token file, the file is read again and the client
        // reconnects.
        let (retry, reason) = exit_text(close_exit(Some(cf), true));
        assert!(retry, "{reason}");
        // A restart still reconnects by itself.
        let cf = CloseFrame {
            code: CloseCode::Restart,
            reason: "restart".into(),
        };
        assert!(exit_text(close_exit(Some(cf), false)).0);
    }

    #[test]
    fn a_close_reason_does_not_repeat_the_code_name() {
        let cf = CloseFrame {
            code: CloseCode::Restart,
            reason: "service restart: reconnect".into(),
        };
        let (retry, reason) = exit_text(close_exit(Some(cf), false));
        assert!(retry);
        assert_eq!(
            reason,
            "closed by the server (1012 service restart: reconnect)"
        );
        let cf = CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        };
        assert_eq!(
            exit_text(close_exit(Some(cf), false)).1,
            "closed by the server (1001 going away)"
        );
    }

    #[test]
    fn connect_failures_read_short() {
        let io = |k| WsError::Io(std::io::Error::new(k, "x"));
        assert_eq!(
            connect_failure(&io(std::io::ErrorKind::ConnectionRefused)),
            "connection refused"
        );
        assert_eq!(
            connect_failure(&io(std::io::ErrorKind::TimedOut)),
            "timed out"
        );
        let dns = WsError::Io(std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert!(connect_failure(&dns).starts_with("DNS: "));
    }

    fn refused(status: u16, body: &str) -> (bool, String) {
        let resp = http::Response::builder()
            .status(status)
            .body(Some(body.as_bytes().to_vec()))
            .unwrap();
        exit_text(connect_error(WsError::Http(Box::new(resp))))
    }

    #[test]
    fn refusals_by_token_or_origin_say_why_and_wait_for_the_user() {
        assert_eq!(
            refused(401, "token expired\n"),
            (false, "not authorized (401): token expired".to_string())
        );
        assert_eq!(
            refused(401, ""),
            (
                false,
                "not authorized (401): the server wants a valid token (--token)".to_string()
            )
        );
        assert_eq!(
            refused(401, "401 token signature invalid\n"),
            (
                false,
                "not authorized (401): token signature invalid".to_string()
            )
        );
        assert_eq!(
            refused(403, "bad origin"),
            (false, "forbidden (403): bad origin".to_string())
        );
        let (retry, reason) = refused(503, "busy");
        assert!(retry, "{reason}");
        assert_eq!(reason, "HTTP 503 Service Unavailable: busy");
    }

    #[test]
    fn new_error_codes_keep_their_name() {
        assert_eq!(
            raw_error_code(r#"{"type":"error","code":"nick_taken","message":"x"}"#).as_deref(),
            Some("nick_taken")
        );
        assert_eq!(raw_error_code(r#"{"type":"error","code":"<b>"}"#), None);
        assert_eq!(raw_error_code("nope"), None);
    }
}
