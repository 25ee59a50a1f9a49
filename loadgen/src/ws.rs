//! The client side of one WebSocket (RFC 6455), small on purpose: open (TCP
//! from a chosen source, HTTP upgrade), receive one message at a time,
//! send text, close. The rest of loadgen sees only [`Conn`].
//!
//! Why not a general WebSocket client: memory. Most of loadgen's sockets are
//! idle, and a general client keeps a read buffer per socket that grows to
//! the largest frame it ever received and never shrinks (a `members` list
//! of 200 names is ~20 KB, sent to every joiner). Here an idle socket holds
//! no buffer at all: bytes are read only once the socket is readable, into
//! a stack chunk, and kept per socket only while a frame is incomplete or
//! being handed out; the buffer is freed as soon as it is empty.
//!
//! Everything read from the network is checked: reserved bits, opcodes,
//! masking (a server must not mask), control frame rules, fragmentation,
//! UTF-8 of text, and lengths (64-bit lengths with checked arithmetic,
//! against `max_message`). A violation ends the connection with a short
//! report kind (`read: protocol: …`), never a panic.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::kinds::io_kind;

/// Bytes read per `read` call (on the stack, not per socket).
const READ_CHUNK: usize = 8192;
/// Largest HTTP upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// A buffer with no pending bytes keeps at most this much capacity.
const KEEP_CAPACITY: usize = 0;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What [`Conn::recv`] got.
#[derive(Debug)]
pub enum Recv<'a> {
    Text(&'a [u8]),
    /// A binary message of this many bytes (the protocol has none).
    Binary(usize),
    /// The server closed: `kind` is `<code> <name>`, e.g. `1012
    /// service_restart` (`1005 no_status` without a code).
    Closed {
        kind: String,
        code: Option<u16>,
    },
    /// Only control frames or fragments so far ([`MAX_QUIET_FRAMES`] of
    /// them): nothing to hand out yet; call again.
    Control,
}

/// Frames `recv` handles by itself (pings, pongs, fragments) before it
/// returns [`Recv::Control`], so that a flood of them cannot hold it.
pub const MAX_QUIET_FRAMES: usize = 64;

/// One open WebSocket.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    /// Bytes read and not yet consumed; empty (and unallocated) when idle.
    buf: Vec<u8>,
    /// How much of `buf` the last [`Conn::recv`] handed out: dropped at the
    /// next call.
    consumed: usize,
    /// A fragmented message being assembled: its opcode and payload.
    frag: Option<(u8, Vec<u8>)>,
    /// An assembled fragmented message, handed out by `recv`.
    assembled: Vec<u8>,
    /// Control frames (pongs) the socket did not take at once: written
    /// before anything else. `recv` never awaits a write, so dropping it
    /// in a `select!` cannot cut a frame in half.
    out: Vec<u8>,
    max_message: usize,
    /// xorshift state for masking keys.
    mask_state: u32,
}

/// A frame header, once the whole frame is in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    fin: bool,
    opcode: u8,
    /// Payload `start..end` within the buffer; `end` is the frame's length.
    start: usize,
    end: usize,
}

/// Parse the frame at the start of `b`: `Ok(None)` until it is complete.
fn parse_head(b: &[u8], max: usize) -> Result<Option<Head>, String> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("read: protocol: reserved bits set".into());
    }
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err("read: protocol: unknown opcode".into());
    }
    if b1 & 0x80 != 0 {
        return Err("read: protocol: masked frame from the server".into());
    }
    let fin = b0 & 0x80 != 0;
    let (len, start): (u64, usize) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(l);
                let n = u64::from_be_bytes(a);
                if n >> 63 != 0 {
                    return Err("read: protocol: invalid frame length".into());
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err("read: protocol: invalid control frame".into());
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| format!("read: frame larger than {max} bytes"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| "read: protocol: invalid frame length".to_string())?;
    if b.len() < end {
        return Ok(None);
    }
    Ok(Some(Head {
        fin,
        opcode,
        start,
        end,
    }))
}

/// The frame parser, for tests (`tests/ws_differential.rs`): the frame at
/// the start of `b` as `(fin, opcode, payload range, frame length)`,
/// `Ok(None)` until it is complete, `Err` with the report kind [`Conn::recv`]
/// would end with.
#[doc(hidden)]
pub fn parse_frame(
    b: &[u8],
    max: usize,
) -> Result<Option<(bool, u8, std::ops::Range<usize>)>, String> {
    Ok(parse_head(b, max)?.map(|h| (h.fin, h.opcode, h.start..h.end)))
}

/// The client frame encoder, for tests: a final frame, masked with `mask`.
#[doc(hidden)]
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame(opcode, payload, mask)
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(len.saturating_add(14));
    f.push(0x80 | opcode);
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        f.push(0x80 | 126);
        f.extend_from_slice(&l.to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// A close frame's payload as a report kind: `1012 service_restart`.
pub fn close_kind(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("{c} {}", chat_protocol::close::name(c)),
        None => "1005 no_status".into(),
    }
}

/// Most bytes of a refused upgrade's body read for its reason.
const MAX_REFUSAL_BODY: usize = 512;
/// How long a refused upgrade's body is waited for.
const REFUSAL_BODY_WAIT: Duration = Duration::from_secs(2);
/// Longest reason kept from a refusal's body (report kinds stay short).
const MAX_REFUSAL_REASON: usize = 80;

/// The first non-empty line of a refusal's body, printable and short.
fn refusal_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REFUSAL_REASON)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// `host[:port]` and `/path?query` of a `ws://` URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|e| format!("upgrade: bad url: {e}"))?;
    let host = uri.host().ok_or("upgrade: url without host")?;
    let host = match uri.port_u16() {
        Some(p) if p != 80 => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((host, path))
}

impl Conn {
    /// TCP connect (from `src` when given) and upgrade at `url`. Errors are
    /// short report kinds (`connect: connection refused`, `upgrade: http
    /// 503`, `upgrade: http 401 token expired`).
    pub async fn open(
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        url: &str,
        max_message: usize,
    ) -> Result<Conn, String> {
        Self::open_with_token(addr, src, url, max_message, None).await
    }

    /// [`Conn::open`], with `Authorization: Bearer <token>` on the upgrade
    /// when a token is given (it stays out of the URL, so out of logs).
    pub async fn open_with_token(
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        url: &str,
        max_message: usize,
        token: Option<&str>,
    ) -> Result<Conn, String> {
        let (host, path) = split_url(url)?;
        let sock = crate::sys::bound_socket(src, &addr)
            .map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Conn {
            tcp,
            buf: Vec::new(),
            consumed: 0,
            frag: None,
            assembled: Vec::new(),
            out: Vec::new(),
            max_message,
            mask_state: rand::random::<u32>() | 1,
        };
        c.upgrade(&host, &path, token).await?;
        Ok(c)
    }

    async fn upgrade(&mut self, host: &str, path: &str, token: Option<&str>) -> Result<(), String> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let auth = match token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {key}\r\n{auth}\r\n"
        );
        self.tcp
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("upgrade: {}", io_kind(&e)))?;
        // Read until the end of the response head; what follows it is the
        // first frames (the welcome), kept in `buf`.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return Err("upgrade: response head too large".into());
            }
            match self.read_some().await {
                Ok(0) => return Err("upgrade: closed before the response".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("upgrade: {}", io_kind(&e))),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or("upgrade: not an HTTP response")?;
        if code == 401 || code == 403 {
            // The reason (`token expired`, `bad signature`, `bad origin`)
            // is the kind: a refusal by token is not one by overload.
            let why = self.refusal_reason(&head).await;
            return Err(if why.is_empty() {
                format!("upgrade: http {code}")
            } else {
                format!("upgrade: http {code} {why}")
            });
        }
        if code != 101 {
            return Err(format!("upgrade: http {code}"));
        }
        let mut upgrade = false;
        let mut accept = None;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("websocket") {
                upgrade = true;
            } else if k.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(v.to_string());
            }
        }
        let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if !upgrade || accept.as_deref() != Some(want.as_str()) {
            return Err("upgrade: protocol: bad upgrade response".into());
        }
        Ok(())
    }

    /// The first line of a refusal's body (after the response `head`), for
    /// the report: read until the body's `Content-Length`, its first line
    /// or the end of the stream, at most [`MAX_REFUSAL_BODY`] bytes and
    /// [`REFUSAL_BODY_WAIT`]. Empty when there is none.
    async fn refusal_reason(&mut self, head: &str) -> String {
        let mut length = None;
        let mut chunked = false;
        for l in head.split("\r\n").skip(1) {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            }
        }
        let want = length.unwrap_or(MAX_REFUSAL_BODY).min(MAX_REFUSAL_BODY);
        let _ = tokio::time::timeout(REFUSAL_BODY_WAIT, async {
            loop {
                let body = if chunked {
                    // After the first chunk's size line.
                    match memchr::memmem::find(&self.buf, b"\r\n") {
                        Some(i) => &self.buf[i + 2..],
                        None => &[][..],
                    }
                } else {
                    &self.buf[..]
                };
                if body.len() >= want || body.contains(&b'\n') {
                    break;
                }
                match self.read_some().await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let mut body = &self.buf[..self.buf.len().min(want + 16)];
        if chunked {
            body = match memchr::memmem::find(body, b"\r\n") {
                Some(i) => &body[i + 2..],
                None => &[],
            };
        }
        let body = &body[..body.len().min(want)];
        let line = refusal_line(body);
        // The chat server starts the body with the status (`401 token
        // expired`): once in the kind is enough.
        let code = head.split(' ').nth(1).unwrap_or("");
        match line.strip_prefix(code) {
            Some(rest) if !code.is_empty() && (rest.is_empty() || rest.starts_with([' ', ':'])) => {
                rest.trim_start_matches([' ', ':']).to_string()
            }
            _ => line,
        }
    }

    /// Wait until the socket is readable and append what it has to `buf`:
    /// `Ok(0)` at the end of the stream. Cancel-safe.
    async fn read_some(&mut self) -> io::Result<usize> {
        loop {
            self.tcp.readable().await?;
            match self.fill() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// One non-blocking read into a stack chunk, appended to `buf`.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.tcp.try_read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    /// Queue a control frame: written now if the socket takes it, else
    /// kept in `out` for the next write. Never awaits.
    fn queue_control(&mut self, frame: &[u8]) {
        if self.out.is_empty() {
            match self.tcp.try_write(frame) {
                Ok(n) if n == frame.len() => {}
                Ok(n) => self.out.extend_from_slice(&frame[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.out.extend_from_slice(frame)
                }
                // The connection is failing: the next read says so.
                Err(_) => {}
            }
        } else {
            self.out.extend_from_slice(frame);
        }
    }

    /// Write what `out` holds, as far as the socket takes it now.
    fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        match self.tcp.try_write(&self.out) {
            Ok(n) => {
                self.out.drain(..n);
                if self.out.is_empty() {
                    self.out = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.out = Vec::new(),
        }
    }

    /// Drop what the last `recv` handed out; free an empty buffer.
    fn release(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed.min(self.buf.len()));
            self.consumed = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        if !self.assembled.is_empty() {
            self.assembled = Vec::new();
        }
    }

    /// The next message. Cancel-safe (a `select!` branch may drop it).
    /// `Err` is a report kind (`read: connection reset`); the connection
    /// is then unusable.
    pub async fn recv(&mut self) -> Result<Recv<'_>, String> {
        self.release();
        self.flush_out();
        // Which message to hand out: a range of `buf`, or `assembled`.
        let mut quiet = 0usize;
        let (opcode, range) = loop {
            if quiet >= MAX_QUIET_FRAMES {
                return Ok(Recv::Control);
            }
            let head = match parse_head(&self.buf, self.max_message)? {
                Some(h) => h,
                None => {
                    match self.read_some().await {
                        Ok(0) => return Err("read: closed without a close frame".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {}", io_kind(&e))),
                    }
                    continue;
                }
            };
            let Head {
                fin,
                opcode,
                start,
                end,
            } = head;
            quiet += 1;
            match opcode {
                OP_PING => {
                    let mask = self.next_mask();
                    let pong = client_frame(OP_PONG, &self.buf[start..end], mask);
                    self.buf.drain(..end);
                    self.queue_control(&pong);
                }
                OP_PONG => {
                    self.buf.drain(..end);
                }
                OP_CLOSE => {
                    let p = &self.buf[start..end];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    self.buf.drain(..end);
                    // Answer it, best effort (the server closes anyway).
                    let mask = self.next_mask();
                    let reply = client_frame(OP_CLOSE, &code.unwrap_or(1000).to_be_bytes(), mask);
                    self.queue_control(&reply);
                    return Ok(Recv::Closed {
                        kind: close_kind(code),
                        code,
                    });
                }
                OP_TEXT | OP_BINARY if fin => {
                    if self.frag.is_some() {
                        return Err("read: protocol: new message inside a fragmented one".into());
                    }
                    self.consumed = end;
                    break (opcode, Some(start..end));
                }
                OP_TEXT | OP_BINARY => {
                    if self.frag.is_some() {
                        return Err("read: protocol: new message inside a fragmented one".into());
                    }
                    self.frag = Some((opcode, self.buf[start..end].to_vec()));
                    self.buf.drain(..end);
                }
                _ => {
                    // OP_CONT
                    let Some((op, mut data)) = self.frag.take() else {
                        return Err("read: protocol: continuation without a message".into());
                    };
                    let total = data
                        .len()
                        .checked_add(end - start)
                        .filter(|&t| t <= self.max_message)
                        .ok_or_else(|| {
                            format!("read: message larger than {} bytes", self.max_message)
                        })?;
                    data.reserve_exact(total - data.len());
                    data.extend_from_slice(&self.buf[start..end]);
                    self.buf.drain(..end);
                    if fin {
                        self.assembled = data;
                        break (op, None);
                    }
                    self.frag = Some((op, data));
                }
            }
        };
        let payload: &[u8] = match range {
            Some(r) => &self.buf[r],
            None => &self.assembled,
        };
        if opcode == OP_BINARY {
            return Ok(Recv::Binary(payload.len()));
        }
        if std::str::from_utf8(payload).is_err() {
            return Err("read: invalid utf-8".into());
        }
        Ok(Recv::Text(payload))
    }

    /// Send one text message.
    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.tcp
                .write_all(&out)
                .await
                .map_err(|e| format!("send: {}", io_kind(&e)))?;
        }
        let mask = self.next_mask();
        let f = client_frame(OP_TEXT, text.as_bytes(), mask);
        self.tcp
            .write_all(&f)
            .await
            .map_err(|e| format!("send: {}", io_kind(&e)))
    }

    /// Send a normal close and wait briefly for the server's answer.
    pub async fn close(&mut self) {
        let mask = self.next_mask();
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"loadgen done");
        let f = client_frame(OP_CLOSE, &payload, mask);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.tcp.write_all(&f).await.is_err() {
                return;
            }
            // Until the server's close (or the end of the stream).
            for _ in 0..10_000 {
                match self.recv().await {
                    Ok(Recv::Closed { .. }) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(len as u8);
        } else if len <= 0xffff {
            f.push(126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_parse_only_when_complete() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let f = server_frame(true, OP_TEXT, &vec![b'a'; len]);
            for cut in [0, 1, 2, f.len() / 2, f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(parse_head(&f[..cut], 1 << 20), Ok(None), "{len} {cut}");
                }
            }
            let h = parse_head(&f, 1 << 20).unwrap().unwrap();
            assert_eq!(
                (h.fin, h.opcode, h.end - h.start, h.end),
                (true, OP_TEXT, len, f.len())
            );
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x81 | 0x40, 0],                       // reserved bit
            vec![0x83, 0],                              // unknown opcode
            vec![0x81, 0x80 | 1, 0, 0, 0, 0, b'a'],     // masked by the server
            vec![0x09, 0],                              // fragmented ping
            server_frame(true, OP_PING, &[0; 126]),     // control frame too long
            vec![0x81, 127, 0xff, 0, 0, 0, 0, 0, 0, 0], // 64-bit length with the top bit
            vec![0x81, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            server_frame(true, OP_TEXT, &[b'a'; 2000]), // over the limit below
        ];
        for c in cases {
            assert!(parse_head(&c, 1024).is_err(), "{c:?}");
        }
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        for len in [0usize, 10, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [1, 2, 3, 4];
            let f = client_frame(OP_TEXT, &payload, mask);
            assert_eq!(f[0], 0x81);
            assert!(f[1] & 0x80 != 0);
            // Unmask like a server would.
            let mut g = f.clone();
            g[1] &= 0x7f;
            let hl = match g[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let body: Vec<u8> = g[hl + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            g.truncate(hl);
            g.extend_from_slice(&body);
            let h = parse_head(&g, 1 << 20).unwrap().unwrap();
            assert_eq!(&g[h.start..h.end], &payload[..]);
        }
        assert_eq!(close_kind(Some(1012)), "1012 service_restart");
        assert_eq!(close_kind(None), "1005 no_status");
        assert_eq!(
            split_url("ws://127.0.0.1:8080/ws?room=a&nick=b").unwrap(),
            (
                "127.0.0.1:8080".to_string(),
                "/ws?room=a&nick=b".to_string()
            )
        );
    }

    /// Against a real WebSocket server (tokio-tungstenite): fragmented and
    /// large messages, pings, binary, close.
    #[tokio::test]
    async fn talks_to_a_real_server() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            ws.send(Message::text("hello")).await.unwrap();
            ws.send(Message::Ping(vec![7u8; 3].into())).await.unwrap();
            ws.send(Message::text("x".repeat(50_000))).await.unwrap();
            // A message in three fragments.
            for (i, part) in ["ab", "cd", "ef"].iter().enumerate() {
                use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
                let h = FrameHeader {
                    is_final: i == 2,
                    opcode: OpCode::Data(if i == 0 { Data::Text } else { Data::Continue }),
                    ..FrameHeader::default()
                };
                ws.send(Message::Frame(Frame::from_payload(
                    h,
                    part.as_bytes().to_vec().into(),
                )))
                .await
                .unwrap();
            }
            ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
            // What the client sent, then a pong for our ping.
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Text(t) => got.push(t.to_string()),
                    Message::Pong(p) => got.push(format!("pong {}", p.len())),
                    _ => {}
                }
                if got.len() == 2 {
                    break;
                }
            }
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Restart,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
            got
        });
        let mut c = Conn::open(addr, None, &format!("ws://{addr}/ws?x=1"), 1 << 20)
            .await
            .unwrap();
        let mut texts = Vec::new();
        loop {
            match c.recv().await.unwrap() {
                Recv::Text(t) => {
                    let t = String::from_utf8(t.to_vec()).unwrap();
                    if t == "hello" {
                        c.send_text("hi there".into()).await.unwrap();
                    }
                    texts.push(t);
                }
                Recv::Binary(n) => texts.push(format!("binary {n}")),
                Recv::Control => {}
                Recv::Closed { kind, code } => {
                    assert_eq!((kind.as_str(), code), ("1012 service_restart", Some(1012)));
                    break;
                }
            }
        }
        assert_eq!(texts.len(), 4);
        assert_eq!(texts[0], "hello");
        assert_eq!(texts[1].len(), 50_000);
        assert_eq!(texts[2], "abcdef");
        assert_eq!(texts[3], "binary 3");
        // Idle: no buffer kept.
        c.release();
        assert_eq!(c.buf.capacity(), 0);
        let got = server.await.unwrap();
        assert!(got.contains(&"hi there".to_string()), "{got:?}");
        assert!(got.contains(&"pong 3".to_string()), "{got:?}");
    }

    /// A one-shot HTTP server: answers the first request with `response`
    /// and hands back the request head it read.
    async fn refuse_with(response: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while memchr::memmem::find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&chunk[..n]);
            }
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_refusal_by_token_is_reported_with_the_reason_of_its_body() {
        for (response, want) in [
            (
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: 14\r\n\r\ntoken expired\n",
                "upgrade: http 401 token expired",
            ),
            // As the chat server says it: the status again in the body.
            (
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: 18\r\n\r\n401 token expired\n",
                "upgrade: http 401 token expired",
            ),
            (
                "HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\nd\r\nbad signature\r\n0\r\n\r\n",
                "upgrade: http 401 bad signature",
            ),
            // No length: up to the end of the stream; only the first line.
            (
                "HTTP/1.1 403 Forbidden\r\nconnection: close\r\n\r\nbad origin\nmore detail\n",
                "upgrade: http 403 bad origin",
            ),
            ("HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n", "upgrade: http 401"),
            // Other refusals stay by status only.
            (
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
                "upgrade: http 503",
            ),
        ] {
            let (addr, server) = refuse_with(response).await;
            let err = Conn::open(addr, None, &format!("ws://{addr}/ws"), 1 << 20)
                .await
                .unwrap_err();
            assert_eq!(err, want);
            let req = server.await.unwrap();
            assert!(!req.to_ascii_lowercase().contains("authorization"), "{req}");
        }
    }

    #[tokio::test]
    async fn a_token_goes_in_the_authorization_header() {
        let (addr, server) =
            refuse_with("HTTP/1.1 401 Unauthorized\r\ncontent-length: 14\r\n\r\ntoken required")
                .await;
        let err = Conn::open_with_token(
            addr,
            None,
            &format!("ws://{addr}/ws?room=r"),
            1 << 20,
            Some("a.b.c"),
        )
        .await
        .unwrap_err();
        assert_eq!(err, "upgrade: http 401 token required");
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /ws?room=r HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nAuthorization: Bearer a.b.c\r\n"), "{req}");
    }

    #[test]
    fn refusal_lines_are_short_and_printable() {
        assert_eq!(refusal_line(b"\n\n  token expired  \r\nx"), "token expired");
        assert_eq!(refusal_line(b"a\tb"), "a b");
        assert_eq!(refusal_line(&[b'x'; 500]).len(), MAX_REFUSAL_REASON);
        assert_eq!(refusal_line(b""), "");
    }
}
