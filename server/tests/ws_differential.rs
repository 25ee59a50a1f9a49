//! Our frame decoder against tungstenite's, on random and mutated client
//! byte streams: both must reach the same verdict (the same messages, then
//! the same kind of error or none).
//!
//! The streams are built from frames (valid ones, fragmented messages with
//! control frames between the fragments, bad opcodes, reserved bits,
//! unmasked frames, odd length encodings, bad close codes and reasons,
//! invalid UTF-8), then sometimes mutated byte by byte, and fed to our
//! decoder in random chunks.
//!
//! Intended differences, each allowed below and nowhere else:
//! - Order of checks. We judge a frame's header before its size: a frame
//!   that breaks a rule of sections 5.2/5.4/5.5 (reserved opcode or bits,
//!   missing mask, control frame over 125 bytes, a continuation with no
//!   message, a 64-bit length with its top bit set) is a protocol error
//!   (1002) even when it is also too big; tungstenite checks the size
//!   first and reports 1009. The RFC does not order the checks; Autobahn
//!   expects 1002.
//! - Fail fast. We refuse a bad header at once, and a fragment that makes
//!   the message too big as soon as its header says so; tungstenite reads
//!   the whole payload first, so on a truncated stream it sees only the
//!   end of input. Allowed only for mutated streams (built ones are whole).
//! - Close code 1014 ("bad gateway", registered with IANA under section
//!   11.7) is one a peer may send for us and Node's ws; tungstenite 0.29
//!   answers it as a protocol violation.

use chat_server::ws::{decode_all, Msg, WsError};
use proptest::prelude::*;
use std::io::{self, Read, Write};
use tungstenite::protocol::{frame::coding::CloseCode, Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// What a decoder made of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(u16),
}

/// How reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client's Close, or the end of the input.
    Clean,
    Protocol,
    Utf8,
    TooBig,
    /// tungstenite's answer to close code 1014 (see the module doc).
    Refused1014,
}

fn ours(chunks: &[&[u8]], max: usize) -> (Vec<Ev>, End) {
    let (msgs, err) = decode_all(chunks.iter().copied(), max);
    let evs = msgs
        .into_iter()
        .map(|m| match m {
            Msg::Text(t) => Ev::Text(t),
            Msg::Binary(b) => Ev::Binary(b.to_vec()),
            Msg::Ping(p) => Ev::Ping(p.to_vec()),
            Msg::Pong => Ev::Pong,
            Msg::Close(c) => Ev::Close(c),
        })
        .collect();
    let end = match err {
        None => End::Clean,
        Some(WsError::Protocol(_)) => End::Protocol,
        Some(WsError::Utf8) => End::Utf8,
        Some(WsError::TooBig(..)) => End::TooBig,
        Some(e @ (WsError::Eof | WsError::Io(_))) => panic!("decoder cannot see {e}"),
    };
    (evs, end)
}

/// The client's bytes to read; what the server writes goes nowhere.
struct Input<'a>(&'a [u8]);

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
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
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws = WebSocket::from_raw_socket(Input(bytes), Role::Server, Some(config));
    let mut evs = Vec::new();
    loop {
        use tungstenite::error::{Error, ProtocolError};
        let end = match ws.read() {
            Ok(Message::Text(t)) => {
                evs.push(Ev::Text(t.to_string()));
                continue;
            }
            Ok(Message::Binary(b)) => {
                evs.push(Ev::Binary(b.to_vec()));
                continue;
            }
            Ok(Message::Ping(p)) => {
                evs.push(Ev::Ping(p.to_vec()));
                continue;
            }
            Ok(Message::Pong(_)) => {
                evs.push(Ev::Pong);
                continue;
            }
            Ok(Message::Close(None)) => {
                evs.push(Ev::Close(1005));
                End::Clean
            }
            // Its way to say "bad close code": answer 1002.
            Ok(Message::Close(Some(f)))
                if f.code == CloseCode::Protocol && f.reason == "Protocol violation" =>
            {
                End::Refused1014
            }
            Ok(Message::Close(Some(f))) => {
                evs.push(Ev::Close(f.code.into()));
                End::Clean
            }
            Ok(Message::Frame(_)) => unreachable!("not returned by read"),
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::Clean,
            Err(Error::Protocol(_)) => End::Protocol,
            Err(Error::Utf8(_)) => End::Utf8,
            Err(Error::Capacity(_)) => End::TooBig,
            Err(e) => panic!("unexpected tungstenite error: {e}"),
        };
        return (evs, end);
    }
}

/// Compare, allowing only the differences the module doc lists.
fn agree(bytes: &[u8], chunks: &[&[u8]], max: usize, mutated: bool) -> Result<(), TestCaseError> {
    let (our_evs, our_end) = ours(chunks, max);
    let (their_evs, their_end) = theirs(bytes, max);
    let same = our_evs == their_evs;
    let ok = match (our_end, their_end) {
        (a, b) if a == b => same,
        (End::Protocol, End::TooBig) => same,
        (End::Protocol | End::TooBig, End::Clean) => mutated && same,
        // We got 1014 where tungstenite refused the close code, or we
        // refused a code tungstenite also refused.
        (End::Clean, End::Refused1014) => {
            our_evs.split_last() == Some((&Ev::Close(1014), &their_evs[..]))
        }
        (End::Protocol, End::Refused1014) => same,
        _ => false,
    };
    prop_assert!(
        ok,
        "max {}: ours {:?} {:?}, tungstenite {:?} {:?}",
        max,
        our_evs,
        our_end,
        their_evs,
        their_end
    );
    Ok(())
}

/// One frame as the generator sees it.
#[derive(Debug, Clone)]
struct Spec {
    fin: bool,
    rsv: u8,
    op: u8,
    mask: Option<[u8; 4]>,
    /// 0: shortest form, 1: 16-bit, 2: 64-bit (when the length fits).
    form: u8,
    /// A length that is not the payload's (a lie or an overflow).
    claimed: Option<u64>,
    payload: Vec<u8>,
}

impl Spec {
    fn data(op: u8, fin: bool, payload: Vec<u8>) -> Spec {
        Spec {
            fin,
            rsv: 0,
            op,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            form: 0,
            claimed: None,
            payload,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | self.op & 0xF);
        let len = self.claimed.unwrap_or(self.payload.len() as u64);
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        match self.form {
            _ if len > 0xFFFF => self.long(out, m, len),
            0 if len < 126 => out.push(m | len as u8),
            0 | 1 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => self.long(out, m, len),
        }
        match self.mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ k[i & 3]));
            }
            None => out.extend_from_slice(&self.payload),
        }
    }

    fn long(&self, out: &mut Vec<u8>, m: u8, len: u64) {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => any::<String>().prop_map(String::into_bytes),
        1 => "[a-z€𝄞ü]{0,300}".prop_map(String::into_bytes),
        // Sometimes not UTF-8 at all.
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(1000u16),
        Just(1001),
        Just(1002),
        Just(1003),
        Just(1007),
        Just(1011),
        Just(1014),
        Just(3000),
        Just(4999),
        Just(0),
        Just(999),
        Just(1004),
        Just(1005),
        Just(1006),
        Just(1015),
        Just(1016),
        Just(2999),
        Just(5000),
        any::<u16>(),
    ];
    let reason = prop_oneof![
        3 => "[a-zé ]{0,20}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        6 => (code, reason).prop_map(|(c, r)| [c.to_be_bytes().to_vec(), r].concat()),
        1 => Just(Vec::new()),
        1 => Just(vec![3]),
    ]
}

fn control() -> impl Strategy<Value = Spec> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|p| Spec::data(0x9, true, p)),
        proptest::collection::vec(any::<u8>(), 0..=20).prop_map(|p| Spec::data(0xA, true, p)),
    ]
}

/// A whole message: one frame, or fragments with control frames between.
fn message() -> impl Strategy<Value = Vec<Spec>> {
    let body = prop_oneof![
        text().prop_map(|t| (0x1u8, t)),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(|b| (0x2u8, b)),
    ];
    (
        body,
        proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        proptest::collection::vec(proptest::option::weighted(0.3, control()), 4),
    )
        .prop_map(|((op, payload), cuts, between)| {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
            at.sort_unstable();
            at.push(payload.len());
            let mut frames = Vec::new();
            let mut from = 0;
            for (i, to) in at.iter().enumerate() {
                let last = i + 1 == at.len();
                let op = if i == 0 { op } else { 0x0 };
                frames.push(Spec::data(op, last, payload[from..*to].to_vec()));
                if let Some(Some(c)) = between.get(i).filter(|_| !last) {
                    frames.push(c.clone());
                }
                from = *to;
            }
            frames
        })
}

/// A frame that breaks a rule, or sits on an edge.
fn odd() -> impl Strategy<Value = Vec<Spec>> {
    let small = proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        (3u8..=7, small.clone()).prop_map(|(op, p)| vec![Spec::data(op, true, p)]),
        (0xBu8..=0xF, small.clone()).prop_map(|(op, p)| vec![Spec::data(op, true, p)]),
        (1u8..8, small.clone()).prop_map(|(r, p)| vec![Spec {
            rsv: r,
            ..Spec::data(1, true, p)
        }]),
        small.clone().prop_map(|p| vec![Spec {
            mask: None,
            ..Spec::data(2, true, p)
        }]),
        small.clone().prop_map(|p| vec![Spec::data(0x0, true, p)]),
        proptest::collection::vec(any::<u8>(), 126..200)
            .prop_map(|p| vec![Spec::data(0x9, true, p)]),
        small.clone().prop_map(|p| vec![Spec::data(0x9, false, p)]),
        (any::<bool>(), small.clone()).prop_map(|(b, p)| vec![
            Spec::data(1, false, b"a".to_vec()),
            Spec::data(if b { 1 } else { 2 }, true, p),
        ]),
        (1u8..=2, text()).prop_map(|(f, p)| vec![Spec {
            form: f,
            ..Spec::data(1, true, p)
        }]),
        close_payload().prop_map(|p| vec![Spec::data(0x8, true, p)]),
        // The reviewer's crash and its neighbours: lengths near 2^63, 2^64.
        (
            prop_oneof![
                Just(u64::MAX),
                Just(u64::MAX - 99),
                Just(1u64 << 63),
                Just((1u64 << 63) - 1),
                65_536u64..1 << 40
            ],
            any::<bool>(),
        )
            .prop_map(|(len, frag)| {
                let mut v = Vec::new();
                if frag {
                    v.push(Spec::data(1, false, b"a".to_vec()));
                }
                v.push(Spec {
                    form: 2,
                    claimed: Some(len),
                    ..Spec::data(if frag { 0 } else { 2 }, true, b"abc".to_vec())
                });
                v
            }),
    ]
}

/// A stream: messages, odd frames, perhaps a Close.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let item = prop_oneof![
        6 => message(),
        2 => control().prop_map(|c| vec![c]),
        2 => odd(),
        1 => close_payload().prop_map(|p| vec![Spec::data(0x8, true, p)]),
    ];
    proptest::collection::vec(item, 1..6).prop_map(|items| {
        let mut out = Vec::new();
        for spec in items.iter().flatten() {
            spec.encode(&mut out);
        }
        out
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Xor(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutate(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = bytes.len();
        match m {
            Mutation::Set(i, b) if n > 0 => bytes[i.index(n)] = *b,
            Mutation::Xor(i, b) if n > 0 => bytes[i.index(n)] ^= *b,
            Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
            Mutation::Remove(i) if n > 0 => {
                bytes.remove(i.index(n));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
            _ => {}
        }
    }
    bytes
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Xor(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

/// Limits at and above the control-frame bound (below it, tungstenite
/// would also hold control frames to the limit; we bound them by 125).
fn max() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(125usize),
        Just(126),
        Just(300),
        Just(1000),
        Just(65_536)
    ]
}

/// Cut `bytes` at the given points.
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for to in at.into_iter().chain([bytes.len()]) {
        out.push(&bytes[from..to]);
        from = to;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn built_streams_get_the_same_verdict(
        bytes in stream(),
        max in max(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        agree(&bytes, &split(&bytes, &cuts), max, false)?;
    }

    #[test]
    fn mutated_streams_get_the_same_verdict(
        bytes in stream(),
        muts in proptest::collection::vec(mutation(), 1..5),
        max in max(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let bytes = mutate(bytes, &muts);
        agree(&bytes, &split(&bytes, &cuts), max, true)?;
    }

    #[test]
    fn random_bytes_get_the_same_verdict(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        max in max(),
    ) {
        agree(&bytes, &[&bytes], max, true)?;
    }
}

/// The two frames that crashed the old decoder, and the verdict
/// tungstenite agrees with.
#[test]
fn the_reviewers_crash_frames() {
    for len in [u64::MAX, u64::MAX - 99] {
        let mut bytes = Vec::new();
        Spec::data(1, false, b"a".to_vec()).encode(&mut bytes);
        Spec {
            form: 2,
            claimed: Some(len),
            ..Spec::data(0, true, Vec::new())
        }
        .encode(&mut bytes);
        let (evs, end) = ours(&[&bytes], 65_536);
        assert_eq!((evs, end), (vec![], End::Protocol), "top bit set: 1002");
        agree(&bytes, &[&bytes], 65_536, false).unwrap();
    }
}
