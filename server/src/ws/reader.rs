//! The frame decoder: bytes from the client in, whole messages out.
//!
//! It must never panic, whatever the bytes: every length that comes from
//! the network is checked before it is used in arithmetic or as an index
//! (`server/fuzz` hammers this). Errors are decided in the order a reader
//! learns them from the header: protocol errors (RFC 6455 section 5.2 and
//! 5.4) before the size limit, the size limit before reading the payload,
//! UTF-8 (section 8.1) once the payload is here. Control frames may
//! interleave with a fragmented message (section 5.4) and do not count
//! toward its size: they are bounded by their own 125 bytes.

use bytes::Bytes;

use super::{Msg, WsError};

pub(super) const OP_CONT: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Incremental parser of client frames. Holds no memory while idle.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub(super) buf: Vec<u8>,
    /// Bytes still to discard (the payload of a refused oversized frame).
    skip: u64,
    /// A fragmented message in progress: its opcode and payload so far.
    /// A text prefix here is valid UTF-8 but for a possibly cut last
    /// character. Boxed: rare, and every idle connection holds the field.
    frag: Option<Box<(u8, Vec<u8>)>>,
}

impl Reader {
    pub(super) fn new(buf: Vec<u8>) -> Self {
        Reader {
            buf,
            ..Default::default()
        }
    }

    /// The next complete message in the buffer, if any.
    pub(super) fn parse(&mut self, max: usize) -> Result<Option<Msg>, WsError> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let b = &self.buf;
            if b.len() < 2 {
                return Ok(None);
            }
            let (fin, rsv, op) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
            if rsv != 0 {
                return Err(WsError::Protocol(
                    "reserved bits set (no extension was negotiated)",
                ));
            }
            if b[1] & 0x80 == 0 {
                return Err(WsError::Protocol("client frames must be masked"));
            }
            let control = op & 0x8 != 0;
            match op {
                OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(WsError::Protocol("reserved opcode")),
            }
            if control && !fin {
                return Err(WsError::Protocol("control frames must not be fragmented"));
            }
            if op == OP_CONT && self.frag.is_none() {
                return Err(WsError::Protocol(
                    "continuation without a message to continue",
                ));
            }
            if (op == OP_TEXT || op == OP_BINARY) && self.frag.is_some() {
                return Err(WsError::Protocol("new message inside a fragmented one"));
            }
            // A length that is not in its shortest form is accepted, as
            // tungstenite and Node's ws do (section 5.2 asks senders for
            // the minimal form but gives receivers no duty to check).
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return Ok(None),
                n => (u64::from(n), 2),
            };
            if len >> 63 != 0 {
                return Err(WsError::Protocol(
                    "64-bit length with the most significant bit set",
                ));
            }
            if control && len > 125 {
                return Err(WsError::Protocol("control frame longer than 125 bytes"));
            }
            let start = at + 4;
            if b.len() < start {
                return Ok(None);
            }
            if !control {
                let so_far = self.frag.as_ref().map_or(0, |f| f.1.len() as u64);
                let total = len.saturating_add(so_far);
                if total > max as u64 {
                    // Drop this frame, what is buffered now and the rest as
                    // it arrives, so the close handshake can still be read.
                    let avail = (b.len() - start) as u64;
                    if avail >= len {
                        // `len <= avail`, so it fits a usize.
                        self.buf.drain(..start + len as usize);
                    } else {
                        self.buf.clear();
                        self.skip = len - avail;
                    }
                    self.frag = None;
                    return Err(WsError::TooBig(total, max));
                }
            }
            // Now `len <= max` (data) or `<= 125` (control): a usize, and
            // only `start + len` can still overflow (when `max` is huge).
            let Some(end) = start.checked_add(len as usize) else {
                return Err(WsError::TooBig(len, max));
            };
            if self.buf.len() < end {
                // Room for the whole frame at once; if the allocator says
                // no, the buffer simply grows as bytes arrive.
                let _ = self.buf.try_reserve(end - self.buf.len());
                return Ok(None);
            }
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            let mut payload: Vec<u8> = self.buf[start..end].to_vec();
            self.buf.drain(..end);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
            match op {
                OP_PING => return Ok(Some(Msg::Ping(payload.into()))),
                OP_PONG => return Ok(Some(Msg::Pong)),
                OP_CLOSE => return close(&payload).map(Some),
                OP_TEXT | OP_BINARY if fin => return finish(op, payload).map(Some),
                OP_TEXT | OP_BINARY => {
                    if op == OP_TEXT && !utf8_prefix(&payload, 0) {
                        return Err(WsError::Utf8);
                    }
                    self.frag = Some(Box::new((op, payload)));
                }
                _ => {
                    // OP_CONT; the checks above guarantee a message to
                    // continue, but a parser that must not panic says so
                    // with an error rather than an `expect`.
                    let Some(frag) = self.frag.take() else {
                        return Err(WsError::Protocol(
                            "continuation without a message to continue",
                        ));
                    };
                    let mut frag = frag;
                    let from = frag.1.len();
                    frag.1.extend_from_slice(&payload);
                    if fin {
                        let (first, whole) = *frag;
                        return finish(first, whole).map(Some);
                    }
                    // Fail fast on bad UTF-8 (section 8.1), as tungstenite
                    // and Node's ws do, not only once the message is whole.
                    if frag.0 == OP_TEXT && !utf8_prefix(&frag.1, from) {
                        return Err(WsError::Utf8);
                    }
                    self.frag = Some(frag);
                }
            }
        }
    }
}

/// A whole data message.
fn finish(op: u8, payload: Vec<u8>) -> Result<Msg, WsError> {
    if op == OP_TEXT {
        String::from_utf8(payload)
            .map(Msg::Text)
            .map_err(|_| WsError::Utf8)
    } else {
        Ok(Msg::Binary(Bytes::from(payload)))
    }
}

/// A close frame (section 5.5.1): no body, or a code one may send and a
/// UTF-8 reason. The reason is checked first, as tungstenite does.
fn close(payload: &[u8]) -> Result<Msg, WsError> {
    match payload {
        [] => Ok(Msg::Close(1005)),
        [_] => Err(WsError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Utf8);
            }
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("close code one may not send"));
            }
            Ok(Msg::Close(code))
        }
    }
}

/// Close codes a peer may send (sections 7.4.1 and 7.4.2, and the IANA
/// registry): 1004-1006 and 1015 are reserved or only for reporting, and
/// 1016-2999 are for future RFCs. 1014 ("bad gateway") is registered, so
/// it is accepted, as Node's ws does; tungstenite 0.29 refuses it.
pub(crate) fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Whether `bytes` is valid UTF-8 but perhaps for a cut last character,
/// given that `bytes[..from]` was. Checks only from the last character
/// start at or before `from`, so a long fragmented message costs one pass.
fn utf8_prefix(bytes: &[u8], from: usize) -> bool {
    let from = from.min(bytes.len());
    // At most three continuation bytes end the valid prefix; the byte
    // before them starts a character.
    let mut start = from;
    while start > 0 && from - start < 3 && bytes[start - 1] & 0xC0 == 0x80 {
        start -= 1;
    }
    start = start.saturating_sub(1);
    match std::str::from_utf8(&bytes[start..]) {
        Ok(_) => true,
        // `None`: the input ends inside a character that may yet complete.
        Err(e) => e.error_len().is_none(),
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
