//! loadgen's client WebSocket transport (`loadgen::ws`) against tungstenite
//! 0.29, the library it replaced: the proof the project asks of a
//! hand-written codec (the server's is proven the same way, in
//! `server/tests/ws_differential.rs`).
//!
//! - `server_messages_arrive_intact`: a tokio-tungstenite server sends
//!   random texts (any UTF-8, lengths around 125/126/65535/65536),
//!   fragmented texts (split anywhere, even inside a character), pings
//!   between them and between fragments, then a close. Our client must
//!   yield the same texts in order, answer every ping with its payload,
//!   and report the close code.
//! - `client_texts_arrive_intact`: our client sends random texts; the
//!   tungstenite server must read exactly those (masking, lengths).
//! - `stream_verdicts_agree`: random server byte streams (valid and bad
//!   frames, sometimes mutated) written to our client over TCP in random
//!   chunks, and decoded by tungstenite (client role) from memory: both
//!   must yield the same messages, then the same kind of end.
//! - `parser_never_panics_and_ignores_splits`, `parser_reads_tungstenite_frames`:
//!   the frame parser on arbitrary bytes and on tungstenite's encoder output;
//!   `tungstenite_reads_our_frames`: our encoder read by tungstenite.
//! - `hostile_frames_end_with_a_kind`: each rule a server may break ends
//!   the connection with its report kind.
//!
//! Intended differences, allowed below and nowhere else:
//! - Close payload. We report the code a server sent and do not judge it
//!   (nor the reason's UTF-8): loadgen reports what the server did.
//!   tungstenite refuses bad codes, 1-byte payloads and invalid reasons.
//! - Order of checks and fail fast (as the server's codec): a header that
//!   breaks a rule is a protocol error even when also too big (tungstenite:
//!   too big), and is refused before its payload arrives (tungstenite waits,
//!   so on a cut stream it sees only the end of input).
//! - UTF-8 of fragmented text: tungstenite checks each fragment as it
//!   arrives, we check the whole message; a later bad frame is reported
//!   first by us.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loadgen::ws::{encode_client_frame, parse_frame, Conn, Recv};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite as tt;
use tt::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tt::protocol::frame::{Frame, FrameHeader};
use tt::protocol::{CloseFrame, Message};

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- strategies

/// A text of exactly `target` bytes (when `target` > 0): `seed` repeated,
/// then ASCII padding.
fn sized(seed: &[char], target: usize) -> String {
    let mut s = String::with_capacity(target);
    'fill: loop {
        for &c in seed {
            if s.len() + c.len_utf8() > target {
                break 'fill;
            }
            s.push(c);
        }
    }
    while s.len() < target {
        s.push('a');
    }
    s
}

/// Any UTF-8: short random ones, and sizes at the length encodings' edges.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        1 => (
            proptest::collection::vec(any::<char>(), 1..4),
            prop::sample::select(vec![124usize, 125, 126, 127, 65_535, 65_536, 65_537, 70_000]),
        )
            .prop_map(|(seed, n)| sized(&seed, n)),
    ]
}

/// Byte cut points of a text (sorted, within it).
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.sort_unstable();
    c
}

fn split_at_cuts(b: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut prev = 0;
    for &c in cuts {
        parts.push(b[prev..c].to_vec());
        prev = c;
    }
    parts.push(b[prev..].to_vec());
    parts
}

// ------------------------------------------------------ server -> our client

#[derive(Debug, Clone)]
enum Item {
    Text(String),
    /// A text in fragments cut at these byte offsets, pings between them
    /// when `ping` is set.
    Frag(String, Vec<usize>, bool),
    Ping(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => text().prop_map(Item::Text),
        2 => (text(), proptest::collection::vec(any::<usize>(), 0..4), any::<bool>())
            .prop_map(|(t, c, p)| Item::Frag(t, c, p)),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
    ]
}

fn close_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![1000u16, 1001, 1003, 1007, 1008, 1011, 1012, 1013]),
        3000u16..5000,
    ]
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn server_messages_arrive_intact(
        items in proptest::collection::vec(item(), 0..8),
        code in close_code(),
        reason in "[a-zA-Z0-9 é€]{0,30}",
    ) {
        let (texts, pongs, got_code) = rt().block_on(async {
            let (l, addr) = listener().await;
            let to_send = items.clone();
            let reason2 = reason.clone();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                for it in to_send {
                    match it {
                        Item::Text(t) => ws.send(Message::text(t)).await.unwrap(),
                        Item::Ping(p) => ws.send(Message::Ping(p.into())).await.unwrap(),
                        Item::Frag(t, c, ping) => {
                            let parts = split_at_cuts(t.as_bytes(), &cuts(t.len(), &c));
                            let n = parts.len();
                            for (i, part) in parts.into_iter().enumerate() {
                                let op = if i == 0 { Data::Text } else { Data::Continue };
                                let f = Frame::message(part, OpCode::Data(op), i + 1 == n);
                                ws.send(Message::Frame(f)).await.unwrap();
                                if ping && i + 1 < n {
                                    ws.send(Message::Ping(vec![i as u8].into())).await.unwrap();
                                }
                            }
                        }
                    }
                }
                ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason2.into(),
                })))
                .await
                .unwrap();
                // The pongs, until the client's close answer and the end.
                let mut pongs = Vec::new();
                while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
                    if let Message::Pong(p) = m {
                        pongs.push(p.to_vec());
                    }
                }
                pongs
            });
            let mut c = Conn::open(addr, None, &format!("ws://{addr}/ws"), 1 << 20)
                .await
                .unwrap();
            let mut texts = Vec::new();
            let got_code = loop {
                match tokio::time::timeout(T, c.recv()).await.expect("recv timed out") {
                    Ok(Recv::Text(t)) => texts.push(String::from_utf8(t.to_vec()).unwrap()),
                    Ok(Recv::Control) => {}
                    Ok(Recv::Binary(n)) => panic!("binary {n}"),
                    Ok(Recv::Closed { code, .. }) => break code,
                    Err(e) => panic!("{e}"),
                }
            };
            drop(c);
            (texts, server.await.unwrap(), got_code)
        });
        let want_texts: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                Item::Text(t) | Item::Frag(t, ..) => Some(t.clone()),
                Item::Ping(_) => None,
            })
            .collect();
        let want_pongs: Vec<Vec<u8>> = items
            .iter()
            .flat_map(|i| match i {
                Item::Ping(p) => vec![p.clone()],
                Item::Frag(t, c, true) => (0..cuts(t.len(), c).len()).map(|i| vec![i as u8]).collect(),
                _ => vec![],
            })
            .collect();
        prop_assert_eq!(texts, want_texts);
        prop_assert_eq!(pongs, want_pongs);
        prop_assert_eq!(got_code, Some(code));
    }

    #[test]
    fn client_texts_arrive_intact(texts in proptest::collection::vec(text(), 0..8)) {
        let got = rt().block_on(async {
            let (l, addr) = listener().await;
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                let mut got = Vec::new();
                let mut close = None;
                while let Ok(Some(m)) = tokio::time::timeout(T, ws.next()).await {
                    match m.expect("tungstenite refused a client frame") {
                        Message::Text(t) => got.push(t.to_string()),
                        Message::Close(f) => close = f.map(|f| (u16::from(f.code), f.reason.to_string())),
                        m => panic!("unexpected {m:?}"),
                    }
                }
                (got, close)
            });
            let mut c = Conn::open(addr, None, &format!("ws://{addr}/"), 1 << 20)
                .await
                .unwrap();
            for t in &texts {
                c.send_text(t.clone()).await.unwrap();
            }
            c.close().await;
            drop(c);
            server.await.unwrap()
        });
        prop_assert_eq!(got.0, texts);
        prop_assert_eq!(got.1, Some((1000, "loadgen done".to_string())));
    }
}

// ------------------------------------------- byte streams: verdicts agree

/// What a decoder made of a server's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(usize),
    Close(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// After a close frame.
    Closed,
    /// The stream ended without a close frame.
    Eof,
    Protocol,
    Utf8,
    TooBig,
    /// tungstenite answered a close code it does not allow.
    Refused,
}

fn kind_of(e: &str) -> End {
    if e == "read: closed without a close frame" {
        End::Eof
    } else if e == "read: invalid utf-8" {
        End::Utf8
    } else if e.contains("larger than") {
        End::TooBig
    } else if e.starts_with("read: protocol: ") {
        End::Protocol
    } else {
        panic!("unexpected error kind {e:?}")
    }
}

/// Serve `chunks` raw after the upgrade; return the listening address.
async fn raw_server(chunks: Vec<Vec<u8>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (l, addr) = listener().await;
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let mut tcp = ws.into_inner();
        for c in chunks {
            if tcp.write_all(&c).await.is_err() || tcp.flush().await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = tcp.shutdown().await;
        // Until the client goes (so that nothing unread resets it).
        let mut sink = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(T, tcp.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    });
    (addr, h)
}

/// Our client on `chunks` sent over TCP.
async fn ours(chunks: Vec<Vec<u8>>, max: usize) -> (Vec<Ev>, End) {
    let (addr, server) = raw_server(chunks).await;
    let mut c = Conn::open(addr, None, &format!("ws://{addr}/"), max)
        .await
        .unwrap();
    let mut evs = Vec::new();
    let end = loop {
        match tokio::time::timeout(T, c.recv())
            .await
            .expect("recv timed out")
        {
            Ok(Recv::Text(t)) => evs.push(Ev::Text(String::from_utf8_lossy(t).into_owned())),
            Ok(Recv::Binary(n)) => evs.push(Ev::Binary(n)),
            Ok(Recv::Control) => {}
            Ok(Recv::Closed { code, .. }) => {
                evs.push(Ev::Close(code));
                break End::Closed;
            }
            Err(e) => break kind_of(&e),
        }
    };
    drop(c);
    let _ = server.await;
    (evs, end)
}

/// The server's bytes to read; what the client writes goes nowhere.
struct Input<'a>(&'a [u8]);

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut self.0, buf)
    }
}

impl Write for Input<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn theirs(bytes: &[u8], max: usize) -> (Vec<Ev>, End) {
    use tungstenite::error::{Error, ProtocolError};
    use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws = WebSocket::from_raw_socket(Input(bytes), Role::Client, Some(config));
    let mut evs = Vec::new();
    loop {
        let end = match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                evs.push(Ev::Text(t.to_string()));
                continue;
            }
            Ok(tungstenite::Message::Binary(b)) => {
                evs.push(Ev::Binary(b.len()));
                continue;
            }
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Ok(tungstenite::Message::Close(None)) => {
                evs.push(Ev::Close(None));
                End::Closed
            }
            Ok(tungstenite::Message::Close(Some(f)))
                if f.code == tungstenite::protocol::frame::coding::CloseCode::Protocol
                    && f.reason == "Protocol violation" =>
            {
                End::Refused
            }
            Ok(tungstenite::Message::Close(Some(f))) => {
                evs.push(Ev::Close(Some(f.code.into())));
                End::Closed
            }
            Ok(tungstenite::Message::Frame(_)) => unreachable!("not returned by read"),
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::Eof,
            Err(Error::Protocol(_)) => End::Protocol,
            Err(Error::Utf8(_)) => End::Utf8,
            Err(Error::Capacity(_)) => End::TooBig,
            Err(e) => panic!("unexpected tungstenite error: {e}"),
        };
        return (evs, end);
    }
}

/// Compare, allowing only the differences the module doc lists.
fn agree(ours: &(Vec<Ev>, End), theirs: &(Vec<Ev>, End), mutated: bool) -> bool {
    let ((oe, oend), (te, tend)) = (ours, theirs);
    let same = oe == te;
    match (*oend, *tend) {
        (a, b) if a == b => same,
        // A close payload tungstenite refuses: we report it.
        (End::Closed, End::Refused | End::Protocol | End::Utf8) => {
            matches!(oe.split_last(), Some((Ev::Close(_), rest)) if rest == &te[..])
        }
        (End::Protocol, End::TooBig | End::Refused) => same,
        (End::Protocol | End::TooBig, End::Eof) => mutated && same,
        (End::Protocol | End::TooBig | End::Eof, End::Utf8) => {
            // tungstenite refused a fragment's UTF-8 before what we saw.
            te.len() <= oe.len() && oe[..te.len()] == te[..]
        }
        _ => false,
    }
}

/// One server frame, encoded by hand (any header, any length form).
#[derive(Debug, Clone)]
struct Spec {
    fin: bool,
    rsv: u8,
    op: u8,
    mask: Option<[u8; 4]>,
    /// 0: shortest length form, 1: 16-bit, 2: 64-bit (when it fits).
    form: u8,
    /// A length that is not the payload's.
    claimed: Option<u64>,
    payload: Vec<u8>,
}

impl Spec {
    fn new(op: u8, fin: bool, payload: Vec<u8>) -> Spec {
        Spec {
            fin,
            rsv: 0,
            op,
            mask: None,
            form: 0,
            claimed: None,
            payload,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | (self.rsv << 4) | self.op);
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.claimed.unwrap_or(self.payload.len() as u64);
        if len < 126 && self.form == 0 {
            out.push(m | len as u8);
        } else if len <= 0xffff && self.form <= 1 {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        match self.mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(
                    self.payload
                        .iter()
                        .zip(k.iter().cycle())
                        .map(|(b, k)| b ^ k),
                );
            }
            None => out.extend_from_slice(&self.payload),
        }
    }
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// A frame sequence: valid messages, fragments with control frames
/// between them, and frames breaking one rule each.
fn specs() -> impl Strategy<Value = Vec<Spec>> {
    let one = prop_oneof![
        6 => text().prop_map(|t| vec![Spec::new(1, true, t.into_bytes())]),
        2 => payload(300).prop_map(|p| vec![Spec::new(2, true, p)]),
        2 => payload(125).prop_map(|p| vec![Spec::new(9, true, p)]),
        1 => payload(125).prop_map(|p| vec![Spec::new(10, true, p)]),
        3 => (text(), proptest::collection::vec(any::<usize>(), 1..4), payload(20)).prop_map(|(t, c, p)| {
            let parts = split_at_cuts(t.as_bytes(), &cuts(t.len(), &c));
            let n = parts.len();
            let mut v = Vec::new();
            for (i, part) in parts.into_iter().enumerate() {
                v.push(Spec::new(if i == 0 { 1 } else { 0 }, i + 1 == n, part));
                if i + 1 < n {
                    v.push(Spec::new(9, true, p.clone()));
                }
            }
            v
        }),
        1 => (prop::sample::select(vec![0u8, 1, 2]), payload(200)).prop_map(|(form, p)| {
            let mut s = Spec::new(2, true, p);
            s.form = form;
            vec![s]
        }),
        // One broken rule each.
        1 => (1u8..8).prop_map(|rsv| { let mut s = Spec::new(1, true, b"x".to_vec()); s.rsv = rsv; vec![s] }),
        1 => prop::sample::select(vec![3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15])
            .prop_map(|op| vec![Spec::new(op, true, vec![])]),
        1 => any::<[u8; 4]>().prop_map(|k| { let mut s = Spec::new(1, true, b"hi".to_vec()); s.mask = Some(k); vec![s] }),
        1 => prop::sample::select(vec![8u8, 9, 10]).prop_map(|op| vec![Spec::new(op, false, vec![])]),
        1 => Just(vec![Spec::new(9, true, vec![0; 126])]),
        1 => prop::sample::select(vec![vec![0xffu8], vec![0xc3, 0x28], vec![0xed, 0xa0, 0x80], vec![0xf4, 0x90, 0x80, 0x80]])
            .prop_map(|p| vec![Spec::new(1, true, p)]),
        1 => prop::sample::select(vec![1u64 << 63, u64::MAX, 1 << 40, 100_000]).prop_map(|l| {
            let mut s = Spec::new(2, true, vec![]);
            s.claimed = Some(l);
            s.form = 2;
            vec![s]
        }),
        1 => Just(vec![Spec::new(0, true, b"lost".to_vec())]),
        1 => Just(vec![Spec::new(1, false, b"a".to_vec()), Spec::new(1, true, b"b".to_vec())]),
        1 => (any::<u16>(), "[a-z]{0,10}").prop_map(|(c, r)| {
            let mut p = c.to_be_bytes().to_vec();
            p.extend_from_slice(r.as_bytes());
            vec![Spec::new(8, true, p)]
        }),
        1 => Just(vec![Spec::new(8, true, vec![])]),
        1 => Just(vec![Spec::new(8, true, vec![3])]),
    ];
    proptest::collection::vec(one, 0..6).prop_map(|v| v.into_iter().flatten().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn stream_verdicts_agree(
        specs in specs(),
        close in proptest::option::of(close_code()),
        max in prop::sample::select(vec![100usize, 70_000, 1 << 20]),
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = Vec::new();
        for s in &specs {
            s.encode(&mut bytes);
        }
        if let Some(c) = close {
            Spec::new(8, true, c.to_be_bytes().to_vec()).encode(&mut bytes);
        }
        let mutated = !mutations.is_empty() && !bytes.is_empty();
        if mutated {
            for (at, x) in &mutations {
                let n = bytes.len();
                bytes[at % n] ^= x | 1;
            }
        }
        let chunks = split_at_cuts(&bytes, &cuts(bytes.len(), &splits));
        let o = rt().block_on(ours(chunks, max));
        let t = theirs(&bytes, max);
        prop_assert!(agree(&o, &t, mutated), "max {}: ours {:?}, tungstenite {:?}", max, o, t);
    }
}

// ------------------------------------------------------------ frame parser

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: no panic; a verdict never changes as more bytes
    /// arrive (so where reads split a stream does not matter); a frame's
    /// range lies within the bytes and within `max`.
    #[test]
    fn parser_never_panics_and_ignores_splits(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        max in prop::sample::select(vec![0usize, 1, 125, 126, 300, 65_536, usize::MAX]),
        splits in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let full = parse_frame(&bytes, max);
        if let Ok(Some((_, op, r))) = &full {
            prop_assert!([2, 4, 10].contains(&r.start) && r.start <= r.end && r.end <= bytes.len());
            prop_assert!(r.len() <= max);
            prop_assert!(*op < 3 || (8..=10).contains(op));
        }
        for cut in 0..bytes.len() {
            let p = parse_frame(&bytes[..cut], max);
            prop_assert!(
                p == Ok(None) || p == full,
                "prefix {} gives {:?}, whole {:?}",
                cut,
                p,
                full
            );
        }
        // A stream fed in chunks yields what it yields whole.
        let frames = |chunks: Vec<Vec<u8>>| {
            let mut buf = Vec::new();
            let mut out = Vec::new();
            for c in chunks {
                buf.extend_from_slice(&c);
                loop {
                    match parse_frame(&buf, max) {
                        Ok(Some((fin, op, r))) => {
                            out.push((fin, op, buf[r.clone()].to_vec()));
                            buf.drain(..r.end);
                        }
                        Ok(None) => break,
                        Err(e) => return (out, Some(e)),
                    }
                }
            }
            (out, None)
        };
        let whole = frames(vec![bytes.clone()]);
        let split = frames(split_at_cuts(&bytes, &cuts(bytes.len(), &splits)));
        prop_assert_eq!(whole, split);
    }

    /// Frames from tungstenite's encoder: the same fin, opcode and payload.
    #[test]
    fn parser_reads_tungstenite_frames(
        fin in any::<bool>(),
        op in 0usize..6,
        small in payload(300),
        big in prop::sample::select(vec![0usize, 125, 126, 65_535, 65_536, 65_537]),
    ) {
        let (opcode, code, control) = [
            (OpCode::Data(Data::Continue), 0u8, false),
            (OpCode::Data(Data::Text), 1, false),
            (OpCode::Data(Data::Binary), 2, false),
            (OpCode::Control(Control::Close), 8, true),
            (OpCode::Control(Control::Ping), 9, true),
            (OpCode::Control(Control::Pong), 10, true),
        ][op];
        let payload: Vec<u8> = if control {
            small.into_iter().take(125).collect()
        } else if big > 0 {
            vec![0x5a; big]
        } else {
            small
        };
        let fin = fin || control;
        let mut out = Vec::new();
        let h = FrameHeader { is_final: fin, opcode, ..FrameHeader::default() };
        Frame::from_payload(h, payload.clone().into()).format(&mut out).unwrap();
        let (f, o, r) = parse_frame(&out, 1 << 20).unwrap().expect("a whole frame");
        prop_assert_eq!((f, o, r.end), (fin, code, out.len()));
        prop_assert_eq!(&out[r], &payload[..]);
        // One byte short: incomplete, not an error.
        prop_assert_eq!(parse_frame(&out[..out.len() - 1], 1 << 20), Ok(None));
        // Over the limit: an error before the payload.
        if payload.len() > 1 {
            let e = parse_frame(&out[..out.len().min(10)], payload.len() - 1);
            prop_assert!(control || e.is_err(), "{:?}", e);
        }
    }

    /// Our encoder, read by tungstenite (server role): the same text.
    #[test]
    fn tungstenite_reads_our_frames(t in text(), mask in any::<[u8; 4]>()) {
        use tungstenite::protocol::{Role, WebSocket};
        let f = encode_client_frame(1, t.as_bytes(), mask);
        let mut ws = WebSocket::from_raw_socket(Input(&f), Role::Server, None);
        match ws.read() {
            Ok(tungstenite::Message::Text(got)) => prop_assert_eq!(got.as_str(), t.as_str()),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

// ---------------------------------------------------------- hostile frames

/// Each broken rule, after a good message, written by a real server over
/// TCP: the good message arrives, then the connection ends with the kind.
#[test]
fn hostile_frames_end_with_a_kind() {
    let max = 1000;
    let tung = |h: FrameHeader, p: Vec<u8>| {
        let mut out = Vec::new();
        Frame::from_payload(h, p.into()).format(&mut out).unwrap();
        out
    };
    let hdr = |opcode: OpCode| FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let text = OpCode::Data(Data::Text);
    let ping = OpCode::Control(Control::Ping);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "masked",
            tung(
                FrameHeader {
                    mask: Some([1, 2, 3, 4]),
                    ..hdr(text)
                },
                b"hi".to_vec(),
            ),
            "read: protocol: masked frame from the server",
        ),
        (
            "rsv1",
            tung(
                FrameHeader {
                    rsv1: true,
                    ..hdr(text)
                },
                b"hi".to_vec(),
            ),
            "read: protocol: reserved bits set",
        ),
        (
            "rsv3",
            tung(
                FrameHeader {
                    rsv3: true,
                    ..hdr(text)
                },
                b"hi".to_vec(),
            ),
            "read: protocol: reserved bits set",
        ),
        (
            "data opcode 3",
            tung(hdr(OpCode::Data(Data::Reserved(3))), vec![]),
            "read: protocol: unknown opcode",
        ),
        (
            "control opcode 11",
            tung(hdr(OpCode::Control(Control::Reserved(11))), vec![]),
            "read: protocol: unknown opcode",
        ),
        (
            "fragmented ping",
            tung(
                FrameHeader {
                    is_final: false,
                    ..hdr(ping)
                },
                vec![1],
            ),
            "read: protocol: invalid control frame",
        ),
        (
            "ping of 126",
            tung(hdr(ping), vec![0; 126]),
            "read: protocol: invalid control frame",
        ),
        (
            "invalid utf-8",
            tung(hdr(text), vec![b'a', 0xc3, 0x28]),
            "read: invalid utf-8",
        ),
        (
            "invalid utf-8 across fragments",
            [
                tung(
                    FrameHeader {
                        is_final: false,
                        ..hdr(text)
                    },
                    vec![0xe2, 0x82],
                ),
                tung(hdr(OpCode::Data(Data::Continue)), vec![b'x']),
            ]
            .concat(),
            "read: invalid utf-8",
        ),
        (
            "64-bit length, top bit",
            vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1],
            "read: protocol: invalid frame length",
        ),
        (
            "64-bit length, all ones",
            vec![0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "read: protocol: invalid frame length",
        ),
        (
            "frame over max",
            tung(hdr(text), vec![b'a'; max + 1]),
            "read: frame larger than 1000 bytes",
        ),
        (
            "length over max, no payload",
            vec![0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0],
            "read: frame larger than 1000 bytes",
        ),
        (
            "message over max in fragments",
            [
                tung(
                    FrameHeader {
                        is_final: false,
                        ..hdr(text)
                    },
                    vec![b'a'; 600],
                ),
                tung(hdr(OpCode::Data(Data::Continue)), vec![b'a'; 600]),
            ]
            .concat(),
            "read: message larger than 1000 bytes",
        ),
        (
            "continuation without a message",
            tung(hdr(OpCode::Data(Data::Continue)), b"x".to_vec()),
            "read: protocol: continuation without a message",
        ),
        (
            "text inside a fragmented one",
            [
                tung(
                    FrameHeader {
                        is_final: false,
                        ..hdr(text)
                    },
                    b"a".to_vec(),
                ),
                tung(hdr(text), b"b".to_vec()),
            ]
            .concat(),
            "read: protocol: new message inside a fragmented one",
        ),
        (
            "cut in a frame",
            tung(hdr(text), b"hello".to_vec())[..4].to_vec(),
            "read: closed without a close frame",
        ),
    ];
    let rt = rt();
    for (name, bad, want) in cases {
        let good = tung(hdr(text), b"first".to_vec());
        // Bytes one at a time too: the verdict must not depend on reads.
        for chunks in [
            vec![[good.clone(), bad.clone()].concat()],
            [good.clone(), bad.clone()]
                .concat()
                .chunks(1)
                .map(<[u8]>::to_vec)
                .collect(),
        ] {
            let n = chunks.len();
            let got = rt.block_on(async {
                let (addr, server) = raw_server(chunks).await;
                let mut c = Conn::open(addr, None, &format!("ws://{addr}/"), max)
                    .await
                    .unwrap();
                let mut texts = Vec::new();
                let r = loop {
                    match tokio::time::timeout(T, c.recv()).await.expect("timed out") {
                        Ok(Recv::Text(t)) => texts.push(t.to_vec()),
                        Ok(Recv::Control) => {}
                        Ok(r) => break Ok(format!("{r:?}")),
                        Err(e) => break Err(e),
                    }
                };
                drop(c);
                let _ = server.await;
                (texts, r)
            });
            assert_eq!(got.0, vec![b"first".to_vec()], "{name} ({n} chunks)");
            assert_eq!(got.1, Err(want.to_string()), "{name} ({n} chunks)");
        }
    }
}
