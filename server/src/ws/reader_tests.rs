//! Unit tests of the frame decoder: one per rule, and a regression test
//! for every input that ever crashed it.

use super::*;
use crate::ws::decode_all;

/// A masked client frame with the length in its shortest form.
fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
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
    with_payload(f, payload)
}

/// A frame header with a 64-bit length, and then `payload`.
fn long_header(op: u8, fin: bool, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | op, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    with_payload(f, payload)
}

fn with_payload(mut f: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    masked(OP_CLOSE, true, &p)
}

/// The verdict on `bytes`, fed byte by byte (so every split point is tried).
fn verdict(bytes: &[u8], max: usize) -> (Vec<Msg>, Option<WsError>) {
    let whole = decode_all([bytes], max);
    let split = decode_all(bytes.chunks(1), max);
    assert_eq!(whole.0, split.0, "chunking changes nothing");
    assert_eq!(
        whole.1.as_ref().map(ToString::to_string),
        split.1.as_ref().map(ToString::to_string)
    );
    whole
}

fn is_protocol(bytes: &[u8], max: usize) -> bool {
    matches!(verdict(bytes, max).1, Some(WsError::Protocol(_)))
}

#[test]
fn frames_byte_by_byte_and_fragmented() {
    let mut all = masked(OP_TEXT, false, "héllo ".as_bytes());
    all.extend(masked(OP_PING, true, b"p"));
    all.extend(masked(OP_CONT, true, "wörld".as_bytes()));
    all.extend(masked(OP_BINARY, true, &[0u8; 300]));
    all.extend(masked(OP_TEXT, true, &vec![b'a'; 70_000]));
    all.extend(masked(OP_PONG, true, b""));
    all.extend(close_frame(1000, b"bye"));
    let mut r = Reader::default();
    let mut got = Vec::new();
    for b in all {
        r.buf.push(b);
        while let Some(m) = r.parse(100_000).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got.len(), 6);
    assert_eq!(got[0], Msg::Ping(Bytes::from_static(b"p")));
    assert_eq!(got[1], Msg::Text("héllo wörld".into()));
    assert!(matches!(&got[2], Msg::Binary(b) if b.len() == 300));
    assert!(matches!(&got[3], Msg::Text(t) if t.len() == 70_000));
    assert_eq!(got[4], Msg::Pong);
    assert_eq!(got[5], Msg::Close(1000));
}

#[test]
fn protocol_errors() {
    let mut unmasked = masked(OP_TEXT, true, b"x");
    unmasked[1] &= 0x7F;
    assert!(is_protocol(&unmasked, 100));
    for bit in [0x40, 0x20, 0x10] {
        let mut rsv = masked(OP_TEXT, true, b"x");
        rsv[0] |= bit;
        assert!(is_protocol(&rsv, 100));
    }
    assert!(is_protocol(&masked(OP_PING, false, b"x"), 100));
    assert!(is_protocol(&masked(OP_PING, true, &[0; 126]), 1000));
    let mut two = masked(OP_TEXT, false, b"a");
    two.extend(masked(OP_BINARY, true, b"b"));
    assert!(is_protocol(&two, 100));
}

#[test]
fn reserved_opcodes_are_protocol_errors_even_when_too_big() {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        assert!(is_protocol(&masked(op, true, b"x"), 100), "{op:#x}");
        // Declares more than the limit: still 1002, not 1009.
        assert!(is_protocol(&masked(op, true, &[0; 300]), 100), "{op:#x}");
    }
}

#[test]
fn orphan_continuations_are_protocol_errors_even_when_too_big() {
    assert!(is_protocol(&masked(OP_CONT, true, b"x"), 100));
    assert!(is_protocol(&masked(OP_CONT, false, b"x"), 100));
    assert!(is_protocol(&masked(OP_CONT, true, &[0; 300]), 100));
    // Also after a complete message.
    let mut after = masked(OP_TEXT, true, b"done");
    after.extend(masked(OP_CONT, true, &[0; 300]));
    let (msgs, err) = verdict(&after, 100);
    assert_eq!(msgs, [Msg::Text("done".into())]);
    assert!(matches!(err, Some(WsError::Protocol(_))));
}

#[test]
fn control_frames_in_a_fragmented_message_do_not_count_toward_its_size() {
    // 16 KB in two fragments, a ping and a pong between: under a 16 KB
    // limit the message is whole and the pings are answered.
    let half = vec![b'x'; 8 * 1024];
    let mut bytes = masked(OP_TEXT, false, &half);
    bytes.extend(masked(OP_PING, true, &[7; 125]));
    bytes.extend(masked(OP_PONG, true, b"pong"));
    bytes.extend(masked(OP_CONT, true, &half));
    let (msgs, err) = verdict(&bytes, 16 * 1024);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0], Msg::Ping(Bytes::from(vec![7; 125])));
    assert!(matches!(&msgs[2], Msg::Text(t) if t.len() == 16 * 1024));
    // One byte more is too big.
    let mut over = masked(OP_TEXT, false, &half);
    over.extend(masked(OP_PING, true, b""));
    over.extend(masked(OP_CONT, true, &[b'x'; 8 * 1024 + 1]));
    assert!(matches!(
        verdict(&over, 16 * 1024).1,
        Some(WsError::TooBig(16385, 16384))
    ));
}

#[test]
fn the_64_bit_length_must_not_have_its_top_bit_set() {
    for len in [1u64 << 63, u64::MAX, (1 << 63) + 5] {
        assert!(is_protocol(&long_header(OP_BINARY, true, len, b""), 100));
    }
    // The largest legal length is merely too big.
    assert!(matches!(
        verdict(&long_header(OP_BINARY, true, (1 << 63) - 1, b""), 100).1,
        Some(WsError::TooBig(..))
    ));
}

#[test]
fn lengths_not_in_shortest_form_are_accepted() {
    // As tungstenite and Node's ws do: RFC 6455 5.2 binds the sender.
    let mut f = vec![0x81, 0x80 | 126, 0, 2];
    f = with_payload(f, b"hi");
    assert_eq!(verdict(&f, 100).0, [Msg::Text("hi".into())]);
    let f = long_header(OP_TEXT, true, 2, b"hi");
    assert_eq!(verdict(&f, 100).0, [Msg::Text("hi".into())]);
}

#[test]
fn close_codes_one_may_not_send_are_protocol_errors() {
    for code in [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert!(is_protocol(&close_frame(code, b""), 100), "{code}");
        assert!(!valid_close_code(code), "{code}");
    }
    for code in [
        1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 3999, 4000, 4999,
    ] {
        assert_eq!(
            verdict(&close_frame(code, b"ok"), 100).0,
            [Msg::Close(code)]
        );
    }
    assert_eq!(
        verdict(&masked(OP_CLOSE, true, b""), 100).0,
        [Msg::Close(1005)]
    );
    assert!(is_protocol(&masked(OP_CLOSE, true, &[3]), 100));
}

#[test]
fn close_reasons_must_be_utf8() {
    let bad = close_frame(
        1000,
        &[
            b'a', 0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
        ],
    );
    assert!(matches!(verdict(&bad, 100).1, Some(WsError::Utf8)));
    // The reason is checked first (tungstenite's order).
    let both = close_frame(999, &[0xFF]);
    assert!(matches!(verdict(&both, 100).1, Some(WsError::Utf8)));
    let good = close_frame(1001, "κόσμε".as_bytes());
    assert_eq!(verdict(&good, 100).0, [Msg::Close(1001)]);
}

#[test]
fn bad_utf8_in_a_fragmented_text_fails_fast() {
    // The second fragment is bad; the message never finishes.
    let mut bytes = masked(OP_TEXT, false, b"ok ");
    bytes.extend(masked(OP_CONT, false, &[0xF4, 0x90, 0x80, 0x80]));
    assert!(matches!(verdict(&bytes, 100).1, Some(WsError::Utf8)));
    // A character cut between fragments is fine.
    let euro = "€".as_bytes();
    let mut bytes = masked(OP_TEXT, false, &euro[..1]);
    bytes.extend(masked(OP_CONT, false, &euro[1..2]));
    bytes.extend(masked(OP_CONT, true, &euro[2..]));
    assert_eq!(verdict(&bytes, 100).0, [Msg::Text("€".into())]);
    // Cut and then wrong.
    let mut bytes = masked(OP_TEXT, false, &euro[..2]);
    bytes.extend(masked(OP_CONT, false, b"a"));
    assert!(matches!(verdict(&bytes, 100).1, Some(WsError::Utf8)));
    // A cut character at the end of a final frame is an error.
    assert!(matches!(
        verdict(&masked(OP_TEXT, true, &euro[..2]), 100).1,
        Some(WsError::Utf8)
    ));
}

#[test]
fn utf8_prefix_checks_from_the_last_character_start() {
    let s = "a€𝄞b".as_bytes();
    for cut in 0..=s.len() {
        for from in 0..=cut {
            // Only prefixes that are themselves valid-but-cut qualify.
            if utf8_prefix(&s[..from], 0) {
                assert!(utf8_prefix(&s[..cut], from), "cut {cut} from {from}");
            }
        }
    }
    assert!(!utf8_prefix(&[0xE2, 0x82, 0xAC, 0xFF], 3));
    assert!(!utf8_prefix(&[0xE2, 0x82, 0x41], 2));
}

#[test]
fn oversized_frames_are_skipped_so_the_next_frame_still_parses() {
    let mut bytes = masked(OP_TEXT, true, &[b'z'; 500]);
    bytes.extend(close_frame(1000, b""));
    let mut r = Reader::default();
    r.buf.extend_from_slice(&bytes[..100]);
    assert!(matches!(r.parse(200), Err(WsError::TooBig(500, 200))));
    r.buf.extend_from_slice(&bytes[100..]);
    assert_eq!(r.parse(200).unwrap(), Some(Msg::Close(1000)));
}

/// The reviewer's crash: a 1-byte non-final text frame, then a
/// continuation whose 64-bit length is 2^64-1 or 2^64-100 (`len + so_far`
/// overflowed, then the slice index).
#[test]
fn regression_continuation_length_near_u64_max() {
    for len in [u64::MAX, u64::MAX - 99, (1 << 63) - 1, (1 << 63) - 2] {
        let mut bytes = masked(OP_TEXT, false, b"a");
        bytes.extend(long_header(OP_CONT, true, len, b"abc"));
        for max in [0, 1, 100, 1 << 20, usize::MAX] {
            let (msgs, err) = verdict(&bytes, max);
            assert!(msgs.is_empty());
            // With no limit, a legal length just waits for its payload.
            let waits = max == usize::MAX && len < 1 << 63 && err.is_none();
            assert!(
                waits || matches!(err, Some(WsError::Protocol(_) | WsError::TooBig(..))),
                "{len} {max}: {err:?}"
            );
        }
    }
}

/// With no limit to speak of, only `start + len` could still overflow.
#[test]
fn regression_huge_lengths_with_an_unlimited_max() {
    for len in [(1u64 << 63) - 1, 1 << 62, u64::from(u32::MAX) + 1] {
        let bytes = long_header(OP_BINARY, true, len, b"");
        let (msgs, err) = verdict(&bytes, usize::MAX);
        assert!(msgs.is_empty());
        // Waits for the payload (or says it cannot fit), never panics.
        assert!(matches!(err, None | Some(WsError::TooBig(..))), "{err:?}");
    }
}

#[test]
fn skipping_a_huge_oversized_frame_keeps_count() {
    let mut r = Reader::new(long_header(OP_BINARY, true, (1 << 63) - 1, &[0; 64]));
    assert!(matches!(r.parse(10), Err(WsError::TooBig(..))));
    r.buf.extend_from_slice(&[0; 4096]);
    assert_eq!(r.parse(10).unwrap(), None);
    assert!(r.buf.is_empty());
}
