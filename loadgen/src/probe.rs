//! The latency probe: what a send carries so that every delivery can be
//! matched to it, and the cheap byte scans that read it back.
//!
//! A probe id is `<sender>.<seq>.<scheduled_us>.<sent_us>` in lowercase hex
//! (at most 51 bytes, under the protocol's 64-byte id limit). Times are
//! microseconds since the run's epoch, so a receiver computes both the
//! coordinated-omission-corrected latency (from the scheduled time) and the
//! raw latency (from the actual send) without looking anything up.
//!
//! In chat mode the id goes in the `id` field of `send` and comes back in
//! every delivered copy; the text is padding. In raw mode the probe travels
//! inside the text as `LG1 <id> ` followed by padding, so any relay that
//! forwards text (even wrapped in its own JSON) carries it.
//!
//! Reading a delivery never runs a JSON parser: [`scan_chat`] strips the
//! fixed `{"type":"message","offset":N,` prefix (see
//! `chat_protocol::splice::peek_offset`) and searches backwards from the end
//! of the frame, where the server puts `app_id`, `ts` and `id`, so the cost
//! does not grow with the text.

use std::sync::LazyLock;

use memchr::memmem;

/// Marks a probe inside raw-mode text.
pub const RAW_MARKER: &[u8] = b"LG1 ";

/// One probe, as sent and as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Global sender index (a client index below `--senders`).
    pub sender: u32,
    /// Per-sender sequence number, from 0.
    pub seq: u32,
    /// When the send was scheduled, µs since the run epoch.
    pub sched_us: u64,
    /// When it was actually written, µs since the run epoch.
    pub sent_us: u64,
}

impl Probe {
    /// Append the id form to `out`.
    pub fn write_id(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "{:x}.{:x}.{:x}.{:x}",
            self.sender, self.seq, self.sched_us, self.sent_us
        );
    }

    /// The id form.
    pub fn id(&self) -> String {
        let mut s = String::with_capacity(52);
        self.write_id(&mut s);
        s
    }

    /// Parse the id form; `None` for anything that is not one of ours.
    pub fn parse_id(b: &[u8]) -> Option<Probe> {
        let mut it = b.split(|&c| c == b'.');
        let p = Probe {
            sender: u32::try_from(hex(it.next()?)?).ok()?,
            seq: u32::try_from(hex(it.next()?)?).ok()?,
            sched_us: hex(it.next()?)?,
            sent_us: hex(it.next()?)?,
        };
        it.next().is_none().then_some(p)
    }
}

fn hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// The JSON `send` frame for a chat-mode probe with `size` bytes of text.
pub fn chat_send_frame(probe: &Probe, padding: &str) -> String {
    let mut s = String::with_capacity(padding.len() + 96);
    s.push_str("{\"type\":\"send\",\"text\":\"");
    s.push_str(padding);
    s.push_str("\",\"id\":\"");
    probe.write_id(&mut s);
    s.push_str("\"}");
    s
}

/// The raw-mode text: marker, id, the sender's APP_ID (so a receiver in
/// another worker process knows it), then padding up to `size` bytes.
pub fn raw_text(probe: &Probe, size: usize, app: &str) -> String {
    let mut s = String::with_capacity(size.max(64 + app.len()));
    s.push_str("LG1 ");
    probe.write_id(&mut s);
    s.push(' ');
    // The APP_ID ends at the next space, so none may be inside it.
    s.extend(
        app.chars()
            .take(64)
            .map(|c| if c.is_whitespace() { '_' } else { c }),
    );
    s.push(' ');
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Padding text of `size` bytes: plain ASCII that needs no JSON escaping.
pub fn padding(size: usize) -> String {
    "loadgen ".chars().cycle().take(size).collect()
}

/// What a chat-mode `message` frame tells the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatDelivery<'a> {
    pub offset: u64,
    /// The instance that accepted the message.
    pub app_id: Option<&'a [u8]>,
    /// Our probe, if the message carried one of our ids.
    pub probe: Option<Probe>,
}

static ID_KEY: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\"id\":\""));
static APP_KEY: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\"app_id\":\""));
static RAW_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(RAW_MARKER));

/// Read a chat `message` frame; `None` if the frame is not one.
///
/// Keys cannot appear inside string values (a `"` there is escaped as
/// `\"`), so the last `"id":"` is the id field.
pub fn scan_chat(frame: &[u8]) -> Option<ChatDelivery<'_>> {
    // A frame cut short is not a message (the JSON fallback says what it is).
    if frame.last() != Some(&b'}') {
        return None;
    }
    let offset = chat_protocol::splice::peek_offset(frame)?;
    let id_at = ID_KEY.rfind(frame);
    let probe = id_at.and_then(|at| {
        let v = &frame[at + 6..];
        let end = memchr::memchr(b'"', v)?;
        Probe::parse_id(&v[..end])
    });
    let app_id = APP_KEY.rfind(frame).and_then(|at| {
        let v = &frame[at + 10..];
        let end = memchr::memchr(b'"', v)?;
        Some(&v[..end])
    });
    Some(ChatDelivery {
        offset,
        app_id,
        probe,
    })
}

/// Find a raw-mode probe anywhere in a text frame, with the sender's
/// APP_ID when the probe carries one.
pub fn scan_raw(frame: &[u8]) -> Option<(Probe, Option<&[u8]>)> {
    let at = RAW_KEY.find(frame)?;
    let v = &frame[at + RAW_MARKER.len()..];
    let end = v
        .iter()
        .position(|&c| !(c.is_ascii_hexdigit() || c == b'.'))
        .unwrap_or(v.len());
    let probe = Probe::parse_id(&v[..end])?;
    let app = v
        .get(end..)
        .and_then(|r| r.strip_prefix(b" "))
        .and_then(|r| {
            let n = r
                .iter()
                .position(|&c| c == b' ' || c == b'"' || c == b'\\')
                .unwrap_or(r.len());
            (n > 0).then(|| &r[..n])
        });
    Some((probe, app))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::splice::{encode_tail, splice, MessageTail};

    const P: Probe = Probe {
        sender: 7,
        seq: 4242,
        sched_us: 1_234_567,
        sent_us: 1_234_999,
    };

    #[test]
    fn id_round_trip_and_limit() {
        assert_eq!(Probe::parse_id(P.id().as_bytes()), Some(P));
        let max = Probe {
            sender: u32::MAX,
            seq: u32::MAX,
            sched_us: u64::MAX,
            sent_us: u64::MAX,
        };
        assert!(max.id().len() <= chat_protocol::names::MAX_ID_LEN);
        assert_eq!(Probe::parse_id(max.id().as_bytes()), Some(max));
        for bad in ["", "1.2.3", "1.2.3.4.5", "1.2.3.g", "1..3.4", "A.1.1.1"] {
            assert_eq!(Probe::parse_id(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn send_frame_is_a_valid_client_frame() {
        let f = chat_send_frame(&P, &padding(10));
        let parsed: chat_protocol::ClientFrame = serde_json::from_str(&f).unwrap();
        assert_eq!(
            parsed,
            chat_protocol::ClientFrame::Send {
                room: None,
                text: "loadgen lo".into(),
                id: Some(P.id()),
                action: false
            }
        );
    }

    #[test]
    fn scans_what_the_server_splices() {
        let id = P.id();
        let text = "tricky \"id\":\"0.0.0.0\" text";
        let tail = encode_tail(&MessageTail {
            room: "r",
            nick: "n\"id\":\"1.1.1.1",
            text,
            app_id: "app2",
            ts: 1,
            id: Some(&id),
            action: false,
        });
        let frame = splice(99, "e1", &tail);
        let d = scan_chat(frame.as_bytes()).unwrap();
        assert_eq!(d.offset, 99);
        assert_eq!(d.app_id, Some(&b"app2"[..]));
        assert_eq!(d.probe, Some(P));
        // And a message without an id (someone else chatting) has no probe.
        let tail = encode_tail(&MessageTail {
            room: "r",
            nick: "n",
            text: "hi",
            app_id: "app1",
            ts: 1,
            id: None,
            action: false,
        });
        let frame = splice(5, "e1", &tail);
        let d = scan_chat(frame.as_bytes()).unwrap();
        assert_eq!((d.offset, d.probe), (5, None));
        assert_eq!(
            scan_chat(b"{\"type\":\"joined\",\"room\":\"r\",\"head\":0}"),
            None
        );
    }

    #[test]
    fn raw_probe_survives_wrapping() {
        let t = raw_text(&P, 100, "node 2");
        assert_eq!(t.len(), 100);
        assert_eq!(scan_raw(t.as_bytes()), Some((P, Some(&b"node_2"[..]))));
        let wrapped = format!(
            "{{\"from\":\"x\",\"msg\":{}}}",
            serde_json::to_string(&t).unwrap()
        );
        assert_eq!(
            scan_raw(wrapped.as_bytes()),
            Some((P, Some(&b"node_2"[..])))
        );
        // A relay that cuts the text after the id still yields the probe.
        assert_eq!(
            scan_raw(format!("LG1 {}", P.id()).as_bytes()),
            Some((P, None))
        );
        assert_eq!(scan_raw(b"Connected successfully to server app1"), None);
    }
}
