//! Failures as short, bounded report keys (`connect: connection refused`,
//! `close: 1012 service_restart`), with the fix when one is known: the
//! report counts errors by kind, so a kind must never embed an address, a
//! port or any other unbounded detail.

/// The `type` of a frame that starts `{"type":"…"` (as every server frame
/// does), without parsing it.
pub(crate) fn frame_type(t: &[u8]) -> Option<&[u8]> {
    let rest = t.strip_prefix(b"{\"type\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
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
