//! Failures as short, bounded report keys (`connect: connection refused`,
//! `close: 1012 service_restart`), with the fix when one is known: the
//! report counts errors by kind, so a kind must never embed an address, a
//! port or any other unbounded detail.

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;

/// The `type` of a frame that starts `{"type":"…"` (as every server frame
/// does), without parsing it.
pub(crate) fn frame_type(t: &[u8]) -> Option<&[u8]> {
    let rest = t.strip_prefix(b"{\"type\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// A close frame as a report key, e.g. `1012 service_restart`.
pub fn close_kind(f: Option<&CloseFrame>) -> String {
    match f {
        Some(f) => {
            let code = u16::from(f.code);
            format!("{code} {}", chat_protocol::close::name(code))
        }
        None => "1005 no_status".into(),
    }
}

/// An I/O error as a short, bounded report key with the fix when known.
pub fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            return "too many open files (raise the limit or use --workers)".into()
        }
        Some(libc::EADDRNOTAVAIL) => {
            return "address not available (ephemeral ports exhausted: use --source-ips)".into()
        }
        Some(libc::EADDRINUSE) => {
            return "address in use (ephemeral ports exhausted: use --source-ips)".into()
        }
        _ => {}
    }
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "timed out".into(),
        K::BrokenPipe => "broken pipe".into(),
        K::UnexpectedEof => "unexpected eof".into(),
        k => format!("{k:?}").to_lowercase(),
    }
}

/// A WebSocket error as a short report key.
pub fn ws_kind(e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_kind(io),
        WsError::Http(r) => format!("http {}", r.status().as_u16()),
        WsError::Protocol(p) => format!("protocol: {p}"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Capacity(c) => format!("capacity: {c}"),
        WsError::Utf8(_) => "invalid utf-8".into(),
        WsError::Url(u) => format!("url: {u}"),
        other => other.to_string(),
    }
}
