//! The opening handshake (RFC 6455 section 4.2): which requests may become
//! WebSockets, and the `Sec-WebSocket-Accept` answer.
//!
//! [`check_request`] is a pure function of the method and the headers, so
//! `server/fuzz` can fuzz it and [`crate::http`] only turns its verdict
//! into a response.

use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// A header the answer must carry (what to send instead).
    pub header: Option<(HeaderName, &'static str)>,
    /// The body: a sentence for the person at the other end.
    pub reason: &'static str,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Refusal {
            status,
            header: None,
            reason,
        }
    }

    fn with(mut self, name: HeaderName, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }
}

/// Check that a request is a WebSocket upgrade (RFC 6455 section 4.2.1);
/// returns its `Sec-WebSocket-Key`.
pub fn check_request(method: &Method, h: &HeaderMap) -> Result<String, Refusal> {
    // Item 1: the method must be GET. axum routes HEAD to GET handlers,
    // and a HEAD answer has no body to carry a connection.
    if method != Method::GET {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET can open a WebSocket\n",
        )
        .with(header::ALLOW, "GET"));
    }
    let has_token = |name: HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an upgrade request (Connection: upgrade, Upgrade: websocket)\n",
        )
        .with(header::UPGRADE, "websocket"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        != Some("13")
    {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: only 13 (RFC 6455)\n",
        )
        .with(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "send exactly one Sec-WebSocket-Key\n",
        ));
    };
    match key.to_str().map(str::trim) {
        Ok(k) if valid_key(k) => Ok(k.to_string()),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be base64 of 16 bytes (24 characters ending in ==)\n",
        )),
    }
}

/// Item 5 of section 4.2.1: base64 that decodes to 16 bytes. That is 22
/// base64 digits and `==`; like Node's ws, the unused low bits of the last
/// digit are not checked.
pub fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_good_request_passes() {
        assert_eq!(
            check_request(&Method::GET, &request(&GOOD)).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn only_get_upgrades() {
        for m in [Method::HEAD, Method::POST, Method::PUT] {
            let r = check_request(&m, &request(&GOOD)).unwrap_err();
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
            assert_eq!(r.header, Some((header::ALLOW, "GET")));
        }
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",      // short padding
            "dGhlIHNhbXBsZSBub25jZQ===",    // 25 characters
            "dGhlIHNhbXBsZSBub25jZ!==",     // not base64
            "dGhlIHNhbXBsZSBub25jZXM=",     // 17 bytes
            "dGhlIHNhbXBsZSBub25jZXMxMg==", // 20 bytes
            "ZGhlIHNhbXBsZSBub25j-Q==",     // url-safe alphabet
        ] {
            assert!(!valid_key(bad), "{bad:?}");
            let mut h = request(&GOOD[..3]);
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(bad).unwrap(),
            );
            let r = check_request(&Method::GET, &h).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(valid_key("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(valid_key("/+9zAAAAAAAAAAAAAAAAAw=="));
        let r = check_request(&Method::GET, &request(&GOOD[..3])).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "missing key");
        let mut two = request(&GOOD);
        two.append(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="),
        );
        assert_eq!(
            check_request(&Method::GET, &two).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn valid_keys_are_exactly_the_16_byte_base64_ones() {
        // Agrees with a real decoder (that also ignores unused bits).
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        for k in [
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "dGhlIHNhbXBsZSBub25jZQ=A",
            "dGhlIHNhbXBsZSBub25jZXM=",
        ] {
            let decoded = engine.decode(k).map(|v| v.len() == 16).unwrap_or(false);
            assert_eq!(valid_key(k), decoded, "{k}");
        }
    }

    #[test]
    fn missing_upgrade_headers_or_version() {
        let r = check_request(&Method::GET, &request(&GOOD[1..])).unwrap_err();
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        let mut h = request(&GOOD);
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let r = check_request(&Method::GET, &h).unwrap_err();
        assert_eq!(r.header, Some((header::SEC_WEBSOCKET_VERSION, "13")));
    }
}
