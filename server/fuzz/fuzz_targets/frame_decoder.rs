//! Client bytes into the frame decoder, whole, in random chunks and byte
//! by byte, under several size limits. It must never panic, every way of
//! chunking must give the same verdict, and what comes out must respect
//! the limit.
//!
//! Input layout: byte 0 picks the limit, byte 1 seeds the chunk sizes, the
//! rest is the stream.

#![no_main]

use chat_server::ws::{decode_all, Decoder, Msg, WsError};
use libfuzzer_sys::fuzz_target;

/// Limits around the edges: none, below and at the control-frame bound,
/// a 16-bit length, a 64-bit one.
const MAXES: [usize; 8] = [0, 1, 125, 126, 1000, 65_535, 65_536, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let [pick, seed, stream @ ..] = data else {
        return;
    };
    let max = MAXES[usize::from(*pick) % MAXES.len()];
    let whole = decode_all([stream], max);
    check(&whole, max);
    let chunked = decode_all(chunks(stream, *seed), max);
    same(&whole, &chunked);
    if stream.len() <= 4096 {
        let bytewise = decode_all(stream.chunks(1), max);
        same(&whole, &bytewise);
    }
    // Past an oversized frame, as a closing session reads on.
    let mut d = Decoder::default();
    for chunk in chunks(stream, seed.rotate_left(3)) {
        d.feed(chunk);
        loop {
            match d.next_msg(max) {
                Ok(Some(msg)) => check_msg(&msg, max),
                Ok(None) | Err(WsError::TooBig(..)) => break,
                Err(_) => return,
            }
        }
    }
});

/// Split `bytes` into chunks of 1 to 64 bytes from a tiny generator.
fn chunks(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 1;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 64 + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

fn check((msgs, err): &(Vec<Msg>, Option<WsError>), max: usize) {
    for m in msgs {
        check_msg(m, max);
    }
    if let Some(WsError::TooBig(n, limit)) = err {
        assert!(*n > *limit as u64 && *limit == max);
    }
    if let Some(Msg::Close(_)) = msgs.last() {
        assert!(err.is_none());
    }
}

fn check_msg(m: &Msg, max: usize) {
    match m {
        Msg::Text(t) => assert!(t.len() <= max),
        Msg::Binary(b) => assert!(b.len() <= max),
        Msg::Ping(p) => assert!(p.len() <= 125),
        Msg::Close(code) => assert!(
            matches!(code, 1000..=1003 | 1005 | 1007..=1014 | 3000..=4999),
            "{code}"
        ),
        Msg::Pong => {}
    }
}

fn same(a: &(Vec<Msg>, Option<WsError>), b: &(Vec<Msg>, Option<WsError>)) {
    assert_eq!(a.0, b.0);
    assert_eq!(
        a.1.as_ref().map(ToString::to_string),
        b.1.as_ref().map(ToString::to_string)
    );
}
