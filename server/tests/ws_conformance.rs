//! RFC 6455 conformance against the real server, Autobahn style: hostile
//! frames over a raw TCP stream, each answered with the right close code,
//! and TCP closed promptly by the server. Afterwards the server still
//! serves a normal client, its connection gauge is back where it was, and
//! nothing panicked.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The frame and message limit the server runs with here.
const MAX: usize = 16 * 1024;

/// How long the server may take to close TCP after the close handshake
/// (Autobahn's client waits 1 s).
const PROMPT: Duration = Duration::from_millis(900);

/// A masked client frame; `len` overrides the length written in it.
fn frame(b0: u8, payload: &[u8], len: Option<u64>) -> Vec<u8> {
    let mut f = vec![b0];
    let n = len.unwrap_or(payload.len() as u64);
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&n.to_be_bytes());
    }
    let mask = [0xA1, 0x5C, 0x03, 0x7E];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

fn fin(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | op, payload, None)
}

fn close(code: u16, reason: &[u8]) -> Vec<u8> {
    fin(0x8, &[&code.to_be_bytes()[..], reason].concat())
}

/// A raw connection past the opening handshake.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A server frame: opcode and payload.
type Frame = (u8, Vec<u8>);

impl Raw {
    async fn open(addr: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws?room=conf&nick=raw HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await > 0, "eof during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(T, self.tcp.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame, or `None` at EOF.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            let b = &self.buf;
            if b.len() >= 2 {
                assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match b[1] & 0x7F {
                    126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && b.len() >= at + len {
                    let f = (b[0] & 0x0F, b[at..at + len].to_vec());
                    self.buf.drain(..at + len);
                    return Some(f);
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Skip text frames (welcome, joined, ...) until a control frame.
    async fn control(&mut self) -> Option<Frame> {
        loop {
            match self.frame().await? {
                (0x1, _) => continue,
                f => return Some(f),
            }
        }
    }

    /// Read to the server's close frame: its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.control().await {
                Some((0x8, p)) => return u16::from_be_bytes([p[0], p[1]]),
                Some((0x9, _)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// How long until the server closes TCP (nothing but EOF may come).
    async fn eof_within(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        let r = tokio::time::timeout(limit, async {
            while let Some(f) = self.frame().await {
                assert_eq!(f.0, 0x9, "only a ping may still come: {f:?}");
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "the server did not close TCP within {limit:?} after the close handshake"
        );
        start.elapsed()
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: a failed write is fine.
        let _ = self.tcp.write_all(bytes).await;
    }
}

/// Send `bytes`; the server must close with `want`, and after our answering
/// Close (as Autobahn sends), close TCP promptly.
async fn expect_close(addr: &str, what: &str, bytes: &[u8], want: u16) {
    let mut raw = Raw::open(addr).await;
    raw.send(bytes).await;
    let code = raw.close_code().await;
    assert_eq!(code, want, "{what}");
    raw.send(&close(code, b"")).await;
    raw.eof_within(PROMPT).await;
}

/// Send a valid Close first: the server echoes `want` and closes TCP at
/// once (RFC 6455 7.1.1), without waiting for us.
async fn expect_echo(addr: &str, code: u16, want: u16) {
    let mut raw = Raw::open(addr).await;
    raw.send(&close(code, b"bye")).await;
    assert_eq!(raw.close_code().await, want, "echo of {code}");
    let took = raw.eof_within(PROMPT).await;
    assert!(
        took < Duration::from_millis(300),
        "echo then close: {took:?}"
    );
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_the_rfc_close_codes_and_a_prompt_close() {
    let c = cluster_async(1, &["--max-frame-bytes", "16384"]).await;
    let addr = c.server_addr(0);
    let (_, m) = get(addr.clone(), "/metrics").await;
    let baseline = gauge(&m, "chat_connections");

    // Close codes one may not send: 1002 (Autobahn 7.9.x).
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        expect_close(
            &addr,
            &format!("close code {code}"),
            &close(code, b""),
            1002,
        )
        .await;
    }
    // Codes one may send are echoed (7.7.x), 1005 (no code) as 1000.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999,
    ] {
        expect_echo(&addr, code, code).await;
    }
    {
        let mut raw = Raw::open(&addr).await;
        raw.send(&fin(0x8, b"")).await;
        assert_eq!(raw.close_code().await, 1000);
        raw.eof_within(PROMPT).await;
    }
    // A close reason that is not UTF-8 (7.5.1), a one-byte close body.
    let bad_reason = close(
        1000,
        &[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xED, 0xA0, 0x80, 0x65],
    );
    expect_close(&addr, "close reason not UTF-8", &bad_reason, 1007).await;
    expect_close(&addr, "one-byte close", &fin(0x8, &[3]), 1002).await;

    // Reserved opcodes (4.1.x, 4.2.x) and an orphan continuation, declared
    // larger than the limit: protocol errors, not 1009.
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        let bytes = frame(0x80 | op, b"", Some(MAX as u64 + 1));
        expect_close(&addr, &format!("opcode {op:#x}"), &bytes, 1002).await;
        expect_close(&addr, &format!("opcode {op:#x}"), &fin(op, b"x"), 1002).await;
    }
    let orphan = frame(0x80, b"", Some(MAX as u64 + 1));
    expect_close(&addr, "orphan continuation", &orphan, 1002).await;
    // Reserved bits, unmasked, fragmented and long control frames.
    expect_close(&addr, "rsv1", &frame(0xC1, b"x", None), 1002).await;
    expect_close(&addr, "unmasked", &[0x81, 0x01, b'x'], 1002).await;
    expect_close(&addr, "fragmented ping", &frame(0x09, b"x", None), 1002).await;
    expect_close(&addr, "ping of 126", &fin(0x9, &[0; 126]), 1002).await;
    // A 64-bit length with its top bit set (5.2).
    let msb = frame(0x82, b"", Some(1 << 63));
    expect_close(&addr, "length top bit", &msb, 1002).await;
    // The reviewer's two crash frames.
    for len in [u64::MAX, u64::MAX - 99] {
        let mut bytes = frame(0x01, b"a", None);
        bytes.extend(frame(0x80, b"", Some(len)));
        expect_close(&addr, &format!("crash length {len}"), &bytes, 1002).await;
    }
    // Invalid UTF-8 in a text message, fragmented: 1007 (6.x).
    let mut bad_text = frame(0x01, b"ok", None);
    bad_text.extend(frame(0x00, &[0xF4, 0x90, 0x80, 0x80], None));
    expect_close(&addr, "bad UTF-8 fragment", &bad_text, 1007).await;
    // Too big is still 1009.
    expect_close(&addr, "too big", &fin(0x2, &vec![0; MAX + 1]), 1009).await;

    // A ping inside a fragmented message of exactly the limit: answered,
    // and the message is not too big (5.4, 5.5.2).
    {
        let mut raw = Raw::open(&addr).await;
        let half = vec![b'x'; MAX / 2];
        let mut bytes = frame(0x01, &half, None);
        bytes.extend(fin(0x9, b"mid"));
        bytes.extend(frame(0x80, &half, None));
        raw.send(&bytes).await;
        assert_eq!(raw.control().await, Some((0xA, b"mid".to_vec())));
        raw.send(&close(1000, b"")).await;
        assert_eq!(raw.close_code().await, 1000, "no 1009 for the message");
        raw.eof_within(PROMPT).await;
    }

    // The opening handshake: HEAD and bad keys are refused.
    refused(&addr, "HEAD", "dGhlIHNhbXBsZSBub25jZQ==", "405").await;
    for key in [
        "abc",
        "dGhlIHNhbXBsZSBub25jZXM=",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        refused(&addr, "GET", key, "400").await;
    }

    // The server carries on.
    let mut ok = Client::joined(&format!("{}?room=after&nick=fine", c.server_ws_url(0))).await;
    ok.say("still here", "s1").await;
    assert_eq!(ok.messages(1).await[0]["text"], "still here");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = get(addr.clone(), "/metrics").await;
        if gauge(&m, "chat_connections") == baseline + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections not back to baseline:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(c.log_dir().join("app1.log")).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// An upgrade request that must be refused with `status`, in plain HTTP.
async fn refused(addr: &str, method: &str, key: &str, status: &str) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with(&format!("HTTP/1.1 {status}")),
        "{method} with key {key:?}: {resp}"
    );
}
