//! Per-receiver delivery verification: lost, duplicated, out of order.
//!
//! While the run goes, each receiver keeps one bit per (sender, seq) it has
//! seen: a set bit seen again is a duplicate; a message whose room offset
//! (chat mode) or per-sender sequence (raw mode, no offsets) is not above
//! the last one is out of order. Each sender keeps the time each of its
//! messages went out, and which ones the server refused (an `error` frame
//! with the id).
//!
//! At the end, [`verify`] decides what each receiver should have received,
//! honestly: a message is expected at a receiver only if it was written
//! after the receiver joined (got `joined`, or the greeting in raw mode), was
//! not refused, and was written at least `grace` before the receiver's
//! connection ended (or before the point the run stopped waiting). Anything
//! expected and never seen is lost.

use std::collections::HashMap;

/// What one sender did.
#[derive(Debug, Clone, Default)]
pub struct SenderLog {
    /// Global sender index (= client index).
    pub sender: u32,
    pub room: usize,
    /// APP_ID index of the sender's own connection.
    pub app: u16,
    /// When seq `i` was written, µs since the epoch (non-decreasing).
    pub sent_at: Vec<u64>,
    /// Seqs the server refused (error frame carrying the id), sorted.
    pub rejected: Vec<u32>,
    /// Seqs expected nowhere: the refused ones plus the unconfirmed ones
    /// (see [`confirm`]), sorted. Filled by [`confirm`], read by [`verify`].
    pub excluded: Vec<u32>,
}

/// What one receiver saw.
#[derive(Debug, Clone, Default)]
pub struct ReceiverLog {
    pub client: usize,
    pub room: usize,
    pub app: u16,
    /// When it became a member, µs since the epoch.
    pub joined_at: u64,
    /// When its connection ended early, if it did.
    pub left_at: Option<u64>,
    /// Per room-local sender index: one bit per seq seen.
    seen: Vec<Vec<u64>>,
    /// Per room-local sender index: highest seq seen (raw-mode ordering).
    max_seq: Vec<Option<u32>>,
    /// Highest room offset seen (chat-mode ordering).
    last_offset: u64,
    /// Probe deliveries, duplicates included.
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// How one delivery was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    Duplicate,
    OutOfOrder,
}

impl ReceiverLog {
    pub fn new(client: usize, room: usize, app: u16, joined_at: u64) -> Self {
        Self {
            client,
            room,
            app,
            joined_at,
            ..Self::default()
        }
    }

    /// Record a probe from room-local sender `local` with `seq`; `offset`
    /// is the room offset in chat mode.
    pub fn on_delivery(&mut self, local: usize, seq: u32, offset: Option<u64>) -> Verdict {
        self.received += 1;
        if self.seen.len() <= local {
            self.seen.resize_with(local + 1, Vec::new);
            self.max_seq.resize(local + 1, None);
        }
        let bits = &mut self.seen[local];
        let (w, b) = (seq as usize / 64, seq % 64);
        if bits.len() <= w {
            bits.resize(w + 1, 0);
        }
        if bits[w] & (1 << b) != 0 {
            self.duplicated += 1;
            return Verdict::Duplicate;
        }
        bits[w] |= 1 << b;
        let late = match offset {
            Some(o) => {
                let late = o <= self.last_offset;
                self.last_offset = self.last_offset.max(o);
                late
            }
            None => {
                let m = &mut self.max_seq[local];
                let late = m.is_some_and(|m| seq < m);
                *m = Some(m.map_or(seq, |m| m.max(seq)));
                late
            }
        };
        if late {
            self.out_of_order += 1;
            Verdict::OutOfOrder
        } else {
            Verdict::InOrder
        }
    }

    /// A message without our probe still moves the room offset on.
    pub fn on_foreign_offset(&mut self, offset: u64) {
        self.last_offset = self.last_offset.max(offset);
    }

    /// Distinct seqs of sender `local` seen in `lo..hi`.
    fn seen_in(&self, local: usize, lo: usize, hi: usize) -> u64 {
        let Some(bits) = self.seen.get(local) else {
            return 0;
        };
        let mut n = 0u64;
        let mut i = lo;
        while i < hi {
            let w = i / 64;
            let Some(&word) = bits.get(w) else { break };
            let start = i % 64;
            let end = (hi - w * 64).min(64);
            let mask = if end == 64 {
                u64::MAX
            } else {
                (1u64 << end) - 1
            } & !((1u64 << start) - 1);
            n += u64::from((word & mask).count_ones());
            i = w * 64 + end;
        }
        n
    }

    fn has(&self, local: usize, seq: u32) -> bool {
        self.seen
            .get(local)
            .and_then(|b| b.get(seq as usize / 64))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

/// Expected and lost deliveries for one (sender APP_ID, receiver APP_ID).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellCheck {
    pub expected: u64,
    pub lost: u64,
}

/// The verdict over every receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub expected: u64,
    /// Expected deliveries that arrived (at least once).
    pub delivered: u64,
    pub lost: u64,
    /// Distinct probes that arrived but were not expected (sent before the
    /// receiver joined, or within `grace` of its disconnect).
    pub unexpected: u64,
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Receivers that lost at least one delivery.
    pub receivers_with_loss: u64,
    /// Receivers that joined, in all and per APP_ID index.
    pub members: u64,
    pub members_per_app: HashMap<u16, u64>,
    pub cells: HashMap<(u16, u16), CellCheck>,
}

/// Decide, where each sender lives (its own receiver log is needed), which
/// of its messages nobody should be blamed for: those the server refused,
/// and those sent within `grace` of the sender's own disconnect that never
/// came back to it (the server may never have accepted them). Fills
/// [`SenderLog::excluded`] and returns how many were unconfirmed.
pub fn confirm(
    senders: &mut [SenderLog],
    receivers: &[ReceiverLog],
    rooms: usize,
    grace_us: u64,
) -> u64 {
    let by_client: HashMap<usize, &ReceiverLog> = receivers.iter().map(|r| (r.client, r)).collect();
    let mut unconfirmed = 0;
    for s in senders {
        let mut ex = s.rejected.clone();
        let own = by_client.get(&(s.sender as usize));
        if let Some(left) = own.and_then(|r| r.left_at) {
            let local = s.sender as usize / rooms.max(1);
            let from = s
                .sent_at
                .partition_point(|&t| t < left.saturating_sub(grace_us));
            for q in from..s.sent_at.len() {
                let seen = own.is_some_and(|r| r.has(local, q as u32));
                if !seen && ex.binary_search(&(q as u32)).is_err() {
                    unconfirmed += 1;
                    ex.push(q as u32);
                }
            }
            ex.sort_unstable();
        }
        s.excluded = ex;
    }
    unconfirmed
}

/// Check every receiver against the senders of its room (after
/// [`confirm`]). `rooms` maps a
/// global sender index to its room-local index (`sender / rooms`).
/// `checked_until`: sends after this (µs) are not expected anywhere
/// (`u64::MAX` when the run waited out its grace period).
pub fn verify(
    senders: &[SenderLog],
    receivers: &[ReceiverLog],
    rooms: usize,
    grace_us: u64,
    checked_until: u64,
) -> Verification {
    let mut by_room: HashMap<usize, Vec<(usize, &SenderLog)>> = HashMap::new();
    for s in senders {
        by_room
            .entry(s.room)
            .or_default()
            .push((s.sender as usize / rooms.max(1), s));
    }
    let mut v = Verification::default();
    for r in receivers {
        v.received += r.received;
        v.members += 1;
        *v.members_per_app.entry(r.app).or_default() += 1;
        v.duplicated += r.duplicated;
        v.out_of_order += r.out_of_order;
        let end = r
            .left_at
            .map_or(u64::MAX, |l| l.saturating_sub(grace_us))
            .min(checked_until);
        let distinct_seen: u64 = r
            .seen
            .iter()
            .flat_map(|b| b.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let mut got_here = 0u64;
        let mut lost_here = 0u64;
        for (local, s) in by_room.get(&r.room).map(Vec::as_slice).unwrap_or_default() {
            let lo = s.sent_at.partition_point(|&t| t < r.joined_at);
            let hi = if end < r.joined_at {
                lo
            } else {
                s.sent_at.partition_point(|&t| t <= end)
            };
            let refused: Vec<u32> = s
                .excluded
                .iter()
                .copied()
                .filter(|&q| (lo..hi).contains(&(q as usize)))
                .collect();
            let expected = (hi - lo - refused.len()) as u64;
            let refused_seen = refused.iter().filter(|&&q| r.has(*local, q)).count() as u64;
            let got = r.seen_in(*local, lo, hi) - refused_seen;
            let lost = expected - got.min(expected);
            v.expected += expected;
            v.delivered += got;
            got_here += got;
            v.lost += lost;
            lost_here += lost;
            let c = v.cells.entry((s.app, r.app)).or_default();
            c.expected += expected;
            c.lost += lost;
        }
        v.unexpected += distinct_seen.saturating_sub(got_here);
        if lost_here > 0 {
            v.receivers_with_loss += 1;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(idx: u32, room: usize, times: &[u64]) -> SenderLog {
        SenderLog {
            sender: idx,
            room,
            app: idx as u16,
            sent_at: times.to_vec(),
            ..SenderLog::default()
        }
    }

    /// `confirm` then `verify`, as a run does.
    fn check(
        mut senders: Vec<SenderLog>,
        receivers: &[ReceiverLog],
        rooms: usize,
        grace: u64,
        until: u64,
    ) -> (u64, Verification) {
        let u = confirm(&mut senders, receivers, rooms, grace);
        (u, verify(&senders, receivers, rooms, grace, until))
    }

    #[test]
    fn judges_duplicates_and_order() {
        let mut r = ReceiverLog::new(0, 0, 0, 0);
        assert_eq!(r.on_delivery(0, 0, Some(1)), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 2, Some(3)), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 1, Some(2)), Verdict::OutOfOrder);
        assert_eq!(r.on_delivery(0, 2, Some(3)), Verdict::Duplicate);
        // Raw mode: per-sender sequence.
        let mut r = ReceiverLog::new(0, 0, 0, 0);
        assert_eq!(r.on_delivery(1, 5, None), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 0, None), Verdict::InOrder);
        assert_eq!(r.on_delivery(1, 4, None), Verdict::OutOfOrder);
        assert_eq!(r.on_delivery(1, 200, None), Verdict::InOrder);
        assert_eq!((r.received, r.duplicated, r.out_of_order), (4, 0, 1));
    }

    #[test]
    fn loss_is_counted_only_inside_membership() {
        // Two senders in room 0 (global 0 and 2 with 2 rooms → local 0, 1).
        let s0 = sender(0, 0, &[10, 20, 30, 40, 50]);
        let mut s2 = sender(2, 0, &[15, 25, 35]);
        s2.rejected = vec![1]; // seq 1 (t=25) refused: never expected
                               // r1 joined at 18: expects s0 seq 1..=4, s2 seq 0 and 2.
        let mut r1 = ReceiverLog::new(1, 0, 1, 18);
        for seq in [1, 2, 4] {
            r1.on_delivery(0, seq, None);
        }
        r1.on_delivery(1, 2, None);
        r1.on_delivery(0, 0, None); // sent before the join: unexpected, not lost
                                    // r2 left at 40 with grace 5: window ends at 35.
        let mut r2 = ReceiverLog::new(3, 0, 0, 0);
        r2.left_at = Some(40);
        for seq in [0, 1, 2] {
            r2.on_delivery(0, seq, None);
        }
        for seq in [0, 2] {
            r2.on_delivery(1, seq, None);
        }
        let (_, v) = check(vec![s0, s2], &[r1, r2], 2, 5, u64::MAX);
        // r1: expected s0 1..=4 and s2 2 (s2#0 went out before the join,
        // s2#1 was refused) = 5, got 3 + 1: lost s0#3.
        // r2: expected s0 0..=2 (t ≤ 35) and s2 0,2 = 5, all there.
        assert_eq!(v.expected, 10);
        assert_eq!(v.lost, 1);
        assert_eq!(v.delivered, 9);
        assert_eq!(v.unexpected, 1);
        assert_eq!(v.receivers_with_loss, 1);
        assert_eq!(
            v.cells[&(0, 1)],
            CellCheck {
                expected: 4,
                lost: 1
            }
        );
        assert_eq!(
            v.cells[&(2, 1)],
            CellCheck {
                expected: 1,
                lost: 0
            }
        );
        assert_eq!(
            v.cells[&(0, 0)],
            CellCheck {
                expected: 3,
                lost: 0
            }
        );
        assert_eq!((v.members, v.members_per_app[&1]), (2, 1));
        // Stopping the check at t=30 shrinks what is expected.
        let (_, v2) = check(
            vec![sender(0, 0, &[10, 20, 30, 40])],
            &[ReceiverLog::new(1, 0, 0, 0)],
            1,
            0,
            30,
        );
        assert_eq!((v2.expected, v2.lost), (3, 3));
    }

    #[test]
    fn a_sender_that_vanished_is_not_blamed_for_unconfirmed_sends() {
        // Sender 0 left at t=100 (grace 10): seq 2 (t=95) went out just
        // before, and its own echo never came back; seq 1 (t=92) did.
        let s0 = sender(0, 0, &[10, 92, 95]);
        let mut own = ReceiverLog::new(0, 0, 0, 0);
        own.left_at = Some(100);
        own.on_delivery(0, 0, None);
        own.on_delivery(0, 1, None);
        let mut other = ReceiverLog::new(1, 0, 1, 0);
        other.on_delivery(0, 0, None);
        let (unconfirmed, v) = check(vec![s0], &[own, other], 1, 10, u64::MAX);
        // `own` expects only seq 0 (its window ends at 90); `other` expects
        // 0 and 1 (2 is unconfirmed) and lost 1.
        assert_eq!(unconfirmed, 1);
        assert_eq!((v.expected, v.lost), (3, 1));
    }

    #[test]
    fn bit_ranges_count_exactly() {
        let mut r = ReceiverLog::new(0, 0, 0, 0);
        for seq in (0..300).filter(|s| s % 3 == 0) {
            r.on_delivery(0, seq, None);
        }
        assert_eq!(r.seen_in(0, 0, 300), 100);
        assert_eq!(r.seen_in(0, 1, 64), 21);
        assert_eq!(r.seen_in(0, 63, 129), 22);
        assert_eq!(r.seen_in(0, 500, 900), 0);
        assert_eq!(r.seen_in(5, 0, 10), 0);
    }
}
