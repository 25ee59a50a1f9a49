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
//!
//! - [`handshake`]: the checks on an upgrade request and the accept key.
//! - `reader`: the frame decoder, which never panics whatever the bytes.
//!   `server/tests/ws_differential.rs` holds it against tungstenite and
//!   `server/fuzz` fuzzes it, through [`Decoder`] and [`decode_all`].

pub mod handshake;
mod reader;

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

pub use handshake::accept_key;
use reader::{Reader, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// Valid UTF-8.
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame: its code (1005 when it gave none). Codes
    /// one may not send never get here: they are protocol errors.
    Close(u16),
}

/// Why reading failed; each maps to a close code.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooBig(u64, usize),
    #[error("text frame or close reason is not valid UTF-8")]
    Utf8,
    #[error("connection closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// The frame decoder on its own, for the differential test and the fuzzer
/// (sessions use [`WsStream`]): feed bytes, take messages. After
/// [`WsError::TooBig`] it may go on, as a closing session does.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Decoder(Reader);

impl Decoder {
    /// Append bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.0.buf.extend_from_slice(bytes);
    }

    /// The next message, or `None` until more bytes arrive.
    pub fn next_msg(&mut self, max: usize) -> Result<Option<Msg>, WsError> {
        self.0.parse(max)
    }
}

/// Decode client bytes, fed in the given chunks, until the client's Close,
/// the first error or the end of the input, as a session would read them.
#[doc(hidden)]
pub fn decode_all<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> (Vec<Msg>, Option<WsError>) {
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next_msg(max) {
                Ok(Some(msg)) => {
                    let close = matches!(msg, Msg::Close(_));
                    out.push(msg);
                    if close {
                        return (out, None);
                    }
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
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

/// The header of a server text frame of `len` bytes, and its length.
pub(crate) fn text_header(len: usize) -> ([u8; 10], usize) {
    header(OP_TEXT, len)
}

/// One WebSocket connection over a TCP stream.
#[derive(Debug)]
pub struct WsStream {
    /// Shared with the connection's outbox, whose fan-out writes to it
    /// directly (`crate::outbox`); every write is serialized there.
    tcp: Arc<TcpStream>,
    reader: Reader,
    /// Largest frame or message accepted.
    max: usize,
}

/// Most frames in one `writev` (each takes two slices; IOV_MAX is 1024).
pub const MAX_BATCH: usize = 256;

/// After a protocol error the input cannot be parsed, so the client's
/// Close cannot be seen: discard input this long at most (or until EOF).
const DRAIN_AFTER_ERROR: Duration = Duration::from_millis(300);

impl WsStream {
    /// Wrap an upgraded stream; `pre` holds bytes read past the request.
    pub fn new(tcp: TcpStream, pre: Bytes, max: usize) -> Self {
        let _ = tcp.set_nodelay(std::env::var_os("WS_NAGLE").is_none());
        Self {
            tcp: Arc::new(tcp),
            reader: Reader::new(pre.to_vec()),
            max,
        }
    }

    /// The socket, for the outbox's direct writes.
    pub fn socket(&self) -> Arc<TcpStream> {
        self.tcp.clone()
    }

    /// Make dropping the socket reset the connection and discard unsent
    /// bytes (SO_LINGER 0): a client that stopped reading would otherwise
    /// leave an orphan socket holding its full send buffer.
    pub fn abort_on_drop(&self) {
        if let Err(e) =
            socket2::SockRef::from(&*self.tcp).set_linger(Some(std::time::Duration::ZERO))
        {
            tracing::debug!(error = %e, "cannot set SO_LINGER 0");
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
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Msg, WsError>> {
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
    /// straight from the shared bytes; the first `skip` bytes of the
    /// encoding are already written (a direct write the kernel cut short).
    pub async fn send_texts<F: AsRef<[u8]>>(
        &mut self,
        frames: &[F],
        skip: usize,
    ) -> io::Result<()> {
        let mut skip = skip;
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
            let mut view = &mut slices[..];
            IoSlice::advance_slices(&mut view, std::mem::take(&mut skip));
            self.write_all_vectored(view).await?;
        }
        Ok(())
    }

    /// Write as much of the text frames as the socket takes now, without
    /// waiting (one `writev`, at most [`MAX_BATCH`] frames), the first
    /// `skip` bytes of their encoding being written already. Returns where
    /// the rest starts: the index of the first frame not written whole and
    /// the bytes of it that are (`frames.len()` when all went out).
    pub fn try_send_texts<F: AsRef<[u8]>>(
        &self,
        frames: &[F],
        skip: usize,
    ) -> io::Result<(usize, usize)> {
        let chunk = &frames[..frames.len().min(MAX_BATCH)];
        let wrote = match chunk {
            [] => return Ok((0, skip)),
            [one] => {
                // The common case: no allocation.
                let (h, n) = header(OP_TEXT, one.as_ref().len());
                let mut pair = [IoSlice::new(&h[..n]), IoSlice::new(one.as_ref())];
                let mut view = &mut pair[..];
                IoSlice::advance_slices(&mut view, skip);
                self.tcp.try_write_vectored(view)
            }
            _ => {
                let heads: Vec<([u8; 10], usize)> = chunk
                    .iter()
                    .map(|f| header(OP_TEXT, f.as_ref().len()))
                    .collect();
                let mut slices: Vec<IoSlice<'_>> = heads
                    .iter()
                    .zip(chunk)
                    .flat_map(|((h, n), f)| [IoSlice::new(&h[..*n]), IoSlice::new(f.as_ref())])
                    .collect();
                let mut view = &mut slices[..];
                IoSlice::advance_slices(&mut view, skip);
                self.tcp.try_write_vectored(view)
            }
        };
        let wrote = match wrote {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        let mut left = wrote.saturating_add(skip);
        for (i, f) in chunk.iter().enumerate() {
            let len = f.as_ref().len();
            let whole = header(OP_TEXT, len).1.saturating_add(len);
            if left < whole {
                return Ok((i, left));
            }
            left -= whole;
        }
        Ok((chunk.len(), 0))
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
    /// stream or an error, then shut down at once. Closing with unread
    /// input would make the kernel reset the connection and the client
    /// would lose the close frame. Bounded only after a protocol error (by
    /// [`DRAIN_AFTER_ERROR`]); the caller bounds the wait for a silent
    /// client.
    pub async fn finish_close(&mut self) {
        loop {
            match self.recv().await {
                Ok(Msg::Close(_)) | Err(WsError::Eof | WsError::Io(_)) => break,
                // The reader stays in step after these: keep looking.
                Ok(_) | Err(WsError::TooBig(..) | WsError::Utf8) => {}
                Err(WsError::Protocol(_)) => {
                    let _ = tokio::time::timeout(DRAIN_AFTER_ERROR, self.discard_input()).await;
                    break;
                }
            }
        }
        self.shutdown().await;
    }

    /// Read and drop raw input until EOF or an error.
    async fn discard_input(&mut self) {
        self.reader = Reader::default();
        // On the heap: a stack array would sit in every connection's
        // future, used or not.
        let mut sink = vec![0u8; 4096];
        loop {
            if self.tcp.readable().await.is_err() {
                return;
            }
            match self.tcp.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Close our side of the TCP connection now. After echoing the
    /// client's Close the server should be the first to close TCP (RFC
    /// 6455 section 7.1.1), so it holds TIME_WAIT, not the client.
    pub async fn shutdown(&mut self) {
        let _ = socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(header(OP_TEXT, 5), ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(&header(OP_TEXT, 300).0[..4], &[0x81, 126, 1, 44]);
        assert_eq!(header(OP_TEXT, 70_000).1, 10);
    }
}
