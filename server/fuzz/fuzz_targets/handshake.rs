//! Raw bytes as an HTTP request (parsed by httparse, as hyper does) into
//! the upgrade checks. They must never panic; a request they accept must
//! be a GET with one key that is base64 of 16 bytes. The input also goes
//! to the key check alone, held against a real base64 decoder.

#![no_main]

use base64::Engine as _;
use chat_server::ws::accept_key;
use chat_server::ws::handshake::{check_request, valid_key};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let decodes = engine.decode(s).is_ok_and(|v| v.len() == 16);
        assert_eq!(valid_key(s), decodes, "{s:?}");
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let Some(Ok(method)) = req.method.map(|m| Method::from_bytes(m.as_bytes())) else {
        return;
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        // hyper refuses requests with such headers before any handler.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        map.append(name, value);
    }
    match check_request(&method, &map) {
        Ok(key) => {
            assert_eq!(method, Method::GET);
            assert!(valid_key(&key));
            assert_eq!(map.get_all("sec-websocket-key").iter().count(), 1);
            assert_eq!(accept_key(key.as_bytes()).len(), 28);
        }
        Err(r) => {
            assert!(r.status.is_client_error());
            assert!(r.reason.ends_with('\n'));
        }
    }
});
