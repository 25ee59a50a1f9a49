//! RFC 6455 server side, on the raw `TcpStream` of an upgraded request.
//!
//! Our own framing rather than tungstenite, for two reasons that decide the
//! server's figures: an idle connection holds no buffer at all (tungstenite
//! keeps a read buffer and a write buffer that never shrinks, so one big
//! frame or one big batch stays resident per socket for good), and queued
//! deliveries go out with one `writev` straight from the shared bytes, no
//! copy. What a server needs of the protocol is small: masked client frames,
//! fragmentation, ping/pong, the close handshake, size limits, UTF-8 checks.
//! No extensions are negotiated, so reserved bits are errors.

use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// Valid UTF-8.
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame: its code (1005 when it gave none).
    Close(u16),
}

/// Why reading failed; each maps to a close code.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooBig(u64, usize),
    #[error("text frame is not valid UTF-8")]
    Utf8,
    #[error("connection closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Incremental parser of client frames. Holds no memory while idle.
#[derive(Debug, Default)]
struct Reader {
    buf: Vec<u8>,
    /// Bytes still to discard (the payload of a refused oversized frame).
    skip: u64,
    /// A fragmented message in progress: its opcode and payload so far.
    frag: Option<(u8, Vec<u8>)>,
}

impl Reader {
    /// The next complete message in the buffer, if any.
    fn parse(&mut self, max: usize) -> Result<Option<Msg>, WsError> {
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(self.buf.len());
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
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                    10,
                ),
                126 | 127 => return Ok(None),
                n => (u64::from(n), 2),
            };
            if b.len() < at + 4 {
                return Ok(None);
            }
            let control = op & 0x8 != 0;
            if control && (len > 125 || !fin) {
                return Err(WsError::Protocol(
                    "control frames must be final and at most 125 bytes",
                ));
            }
            let so_far = self.frag.as_ref().map_or(0, |(_, p)| p.len() as u64);
            if len + so_far > max as u64 {
                // Drop this frame, what is buffered now and the rest as it
                // arrives, so the close handshake can still be read.
                let avail = (self.buf.len() - (at + 4)) as u64;
                if avail >= len {
                    self.buf.drain(..at + 4 + len as usize);
                } else {
                    self.buf.clear();
                    self.skip = len - avail;
                }
                self.frag = None;
                return Err(WsError::TooBig(len + so_far, max));
            }
            let total = at + 4 + len as usize;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            let mask: [u8; 4] = self.buf[at..at + 4].try_into().expect("4 bytes");
            let mut payload: Vec<u8> = self.buf[at + 4..total].to_vec();
            self.buf.drain(..total);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
            match op {
                OP_PING => return Ok(Some(Msg::Ping(payload.into()))),
                OP_PONG => return Ok(Some(Msg::Pong)),
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Msg::Close(1005))),
                        1 => Err(WsError::Protocol("close frame with a one-byte payload")),
                        _ => Ok(Some(Msg::Close(u16::from_be_bytes([
                            payload[0], payload[1],
                        ])))),
                    };
                }
                OP_TEXT | OP_BINARY if self.frag.is_some() => {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY if !fin => self.frag = Some((op, payload)),
                OP_TEXT | OP_BINARY => return finish(op, payload).map(Some),
                OP_CONT => {
                    let Some((first, mut whole)) = self.frag.take() else {
                        return Err(WsError::Protocol(
                            "continuation without a message to continue",
                        ));
                    };
                    whole.extend_from_slice(&payload);
                    if fin {
                        return finish(first, whole).map(Some);
                    }
                    self.frag = Some((first, whole));
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
    }
}

fn finish(op: u8, payload: Vec<u8>) -> Result<Msg, WsError> {
    if op == OP_TEXT {
        String::from_utf8(payload)
            .map(Msg::Text)
            .map_err(|_| WsError::Utf8)
    } else {
        Ok(Msg::Binary(payload.into()))
    }
}

/// Encode a server frame header (servers never mask).
fn header(op: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | op;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// One WebSocket connection over a TCP stream.
#[derive(Debug)]
pub struct WsStream {
    tcp: TcpStream,
    reader: Reader,
    /// Largest frame or message accepted.
    max: usize,
}

/// Most frames in one `writev` (each takes two slices; IOV_MAX is 1024).
pub const MAX_BATCH: usize = 256;

impl WsStream {
    /// Wrap an upgraded stream; `pre` holds bytes read past the request.
    pub fn new(tcp: TcpStream, pre: Bytes, max: usize) -> Self {
        let _ = tcp.set_nodelay(std::env::var_os("WS_NAGLE").is_none());
        Self {
            tcp,
            reader: Reader {
                buf: pre.to_vec(),
                ..Default::default()
            },
            max,
        }
    }

    /// The next message. Cancel-safe: all state lives in `self`.
    pub async fn recv(&mut self) -> Result<Msg, WsError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// `recv` as a poll. Waits with `poll_read_ready`, which keeps one
    /// waker in the socket's slot: a `readable()` future would join and
    /// leave the socket's waiter list (a lock each way) on every turn of
    /// the session loop, that is on every delivery.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Msg, WsError>> {
        loop {
            if let Some(msg) = self.reader.parse(self.max)? {
                self.release();
                return Poll::Ready(Ok(msg));
            }
            ready!(self.tcp.poll_read_ready(cx))?;
            let buf = &mut self.reader.buf;
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match self.tcp.try_read_buf(buf) {
                Ok(0) => return Poll::Ready(Err(WsError::Eof)),
                Ok(_) => {}
                // Readiness was stale: give the buffer back while we wait.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.release(),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Idle connections keep no read buffer.
    fn release(&mut self) {
        if self.reader.buf.is_empty() && self.reader.buf.capacity() > 0 {
            self.reader.buf = Vec::new();
        }
    }

    /// Write text frames with as few `writev` calls as the socket allows,
    /// straight from the shared bytes.
    pub async fn send_texts<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> io::Result<()> {
        for chunk in frames.chunks(MAX_BATCH) {
            let heads: Vec<([u8; 10], usize)> = chunk
                .iter()
                .map(|f| header(OP_TEXT, f.as_ref().len()))
                .collect();
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
            for ((h, n), f) in heads.iter().zip(chunk) {
                slices.push(IoSlice::new(&h[..*n]));
                slices.push(IoSlice::new(f.as_ref()));
            }
            self.write_all_vectored(&mut slices).await?;
        }
        Ok(())
    }

    /// Write one control frame.
    async fn send_control(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        let (h, n) = header(op, payload.len());
        let mut slices = [IoSlice::new(&h[..n]), IoSlice::new(payload)];
        self.write_all_vectored(&mut slices).await
    }

    /// A ping.
    pub async fn ping(&mut self) -> io::Result<()> {
        self.send_control(OP_PING, &[]).await
    }

    /// A pong answering a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_control(OP_PONG, payload).await
    }

    /// A close frame with a code and a reason (cut to fit 125 bytes).
    pub async fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut p = code.to_be_bytes().to_vec();
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        p.extend_from_slice(&reason.as_bytes()[..cut]);
        self.send_control(OP_CLOSE, &p).await
    }

    async fn write_all_vectored(&mut self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        while !slices.is_empty() {
            match self.tcp.try_write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After our close frame: read until the client's close, the end of the
    /// stream or an error, then shut down. Closing with unread input would
    /// make the kernel reset the connection and the client would lose the
    /// close frame.
    pub async fn finish_close(&mut self) {
        loop {
            match self.recv().await {
                Ok(Msg::Close(_)) | Err(WsError::Eof | WsError::Io(_)) => break,
                Ok(_) | Err(WsError::TooBig(..)) => {}
                Err(WsError::Protocol(_) | WsError::Utf8) => {
                    // Cannot parse further: drop raw input instead.
                    self.reader = Reader::default();
                    // On the heap: a stack array would sit in every
                    // connection's future, used or not.
                    let mut sink = vec![0u8; 4096];
                    loop {
                        if self.tcp.readable().await.is_err() {
                            break;
                        }
                        match self.tcp.try_read(&mut sink) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                    break;
                }
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn reader(bytes: &[u8]) -> Reader {
        Reader {
            buf: bytes.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_byte_by_byte_and_fragmented() {
        let mut all = masked(OP_TEXT, false, "héllo ".as_bytes());
        all.extend(masked(OP_PING, true, b"p"));
        all.extend(masked(OP_CONT, true, "wörld".as_bytes()));
        all.extend(masked(OP_BINARY, true, &[0u8; 300]));
        all.extend(masked(OP_TEXT, true, &vec![b'a'; 70_000]));
        all.extend(masked(OP_CLOSE, true, &1000u16.to_be_bytes()));
        let mut r = Reader::default();
        let mut got = Vec::new();
        for b in all {
            r.buf.push(b);
            while let Some(m) = r.parse(100_000).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Msg::Ping(Bytes::from_static(b"p")));
        assert_eq!(got[1], Msg::Text("héllo wörld".into()));
        assert!(matches!(&got[2], Msg::Binary(b) if b.len() == 300));
        assert!(matches!(&got[3], Msg::Text(t) if t.len() == 70_000));
        assert_eq!(got[4], Msg::Close(1000));
    }

    #[test]
    fn protocol_errors() {
        let mut unmasked = masked(OP_TEXT, true, b"x");
        unmasked[1] &= 0x7F;
        assert!(matches!(
            reader(&unmasked).parse(100),
            Err(WsError::Protocol(_))
        ));
        let mut rsv = masked(OP_TEXT, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(reader(&rsv).parse(100), Err(WsError::Protocol(_))));
        assert!(matches!(
            reader(&masked(OP_CONT, true, b"x")).parse(100),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            reader(&masked(OP_PING, false, b"x")).parse(100),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            reader(&masked(0x3, true, b"x")).parse(100),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            reader(&masked(OP_TEXT, true, &[0xff, 0xfe])).parse(100),
            Err(WsError::Utf8)
        ));
        let mut two = masked(OP_TEXT, false, b"a");
        two.extend(masked(OP_TEXT, true, b"b"));
        assert!(matches!(reader(&two).parse(100), Err(WsError::Protocol(_))));
    }

    #[test]
    fn oversized_frames_are_skipped_so_the_next_frame_still_parses() {
        let mut bytes = masked(OP_TEXT, true, &[b'z'; 500]);
        bytes.extend(masked(OP_CLOSE, true, &1000u16.to_be_bytes()));
        let mut r = Reader::default();
        r.buf.extend_from_slice(&bytes[..100]);
        assert!(matches!(r.parse(200), Err(WsError::TooBig(500, 200))));
        r.buf.extend_from_slice(&bytes[100..]);
        assert_eq!(r.parse(200).unwrap(), Some(Msg::Close(1000)));
    }

    #[test]
    fn headers() {
        assert_eq!(header(OP_TEXT, 5), ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(&header(OP_TEXT, 300).0[..4], &[0x81, 126, 1, 44]);
        assert_eq!(header(OP_TEXT, 70_000).1, 10);
    }
}
