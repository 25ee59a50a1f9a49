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
//! expected and never seen is lost, unless the server announced it: a `gap`
//! frame naming its offset, or a `reset` (or a resume answered
//! `recovered: false`) that says messages after some offset of an epoch
//! may be gone. Those are *announced lost*, counted apart.
//!
//! With `--reconnect` a receiver's window does not end when its socket
//! drops: it resumes with `since` and `epoch`, and the server replays what
//! it missed. Offsets are compared only within one epoch.

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
    /// `--reconnect`: seqs still waiting for a confirmation (own echo or
    /// `sent`) when the run ended, sorted. The server may not have applied
    /// them, so they are expected nowhere.
    pub unconfirmed: Vec<u32>,
    /// `(epoch hash, offset)` of each seq, when the sender learned it (own
    /// echo or `sent`); `(0, 0)` when unknown. Tells whether an announced
    /// loss covers a message another receiver never got.
    pub offsets: Vec<(u64, u64)>,
    /// `(first seq, APP_ID)` from each reconnect that moved the sender to
    /// another instance (`app` before the first).
    pub moves: Vec<(u32, u16)>,
}

impl SenderLog {
    /// The APP_ID the sender was connected to when it wrote seq `q`.
    pub fn app_at(&self, q: usize) -> u16 {
        self.moves
            .iter()
            .rev()
            .find(|(from, _)| *from as usize <= q)
            .map_or(self.app, |m| m.1)
    }

    /// Remember where seq `seq` landed.
    pub fn learn_offset(&mut self, seq: u32, epoch: u64, offset: u64) {
        let i = seq as usize;
        if i >= self.sent_at.len() {
            return;
        }
        if self.offsets.len() <= i {
            self.offsets.resize(i + 1, (0, 0));
        }
        self.offsets[i] = (epoch, offset);
    }
}

/// A 64-bit FNV-1a hash of an epoch, never 0 (0 means "unknown").
pub fn epoch_hash(epoch: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in epoch {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A loss the server announced to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// `gap`: offsets `from..=to` of epoch `epoch` are gone.
    Gap { epoch: u64, from: u64, to: u64 },
    /// `reset`, or a resume answered `recovered: false`: what followed
    /// offset `after` of epoch `epoch` may be gone; announced at `at_us`.
    Reset { epoch: u64, after: u64, at_us: u64 },
}

/// Most announcements kept per receiver (each is one frame from the server).
const MAX_ANNOUNCED: usize = 64;

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
    /// `(from µs, APP_ID)` from each reconnect that moved it to another
    /// instance (`app` before the first): messages sent after the loss
    /// reached it through the new one.
    pub moves: Vec<(u64, u16)>,
    /// Per room-local sender index: one bit per seq seen.
    seen: Vec<Vec<u64>>,
    /// Per room-local sender index: highest seq seen (raw-mode ordering).
    max_seq: Vec<Option<u32>>,
    /// Highest room offset seen in `epoch` (chat-mode ordering).
    last_offset: u64,
    /// Hash of the epoch `last_offset` belongs to (0: none yet).
    epoch: u64,
    /// Losses the server announced to this receiver.
    pub announced: Vec<Announced>,
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
    /// is `(epoch hash, room offset)` in chat mode.
    pub fn on_delivery(&mut self, local: usize, seq: u32, offset: Option<(u64, u64)>) -> Verdict {
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
            Some((e, o)) => {
                self.enter_epoch(e);
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
    pub fn on_foreign_offset(&mut self, epoch: u64, offset: u64) {
        self.enter_epoch(epoch);
        self.last_offset = self.last_offset.max(offset);
    }

    /// The APP_ID this receiver got messages sent at `t` (µs) through.
    #[inline]
    pub fn app_at(&self, t: u64) -> u16 {
        if self.moves.is_empty() {
            return self.app;
        }
        self.moves
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map_or(self.app, |m| m.1)
    }

    /// Offsets are compared only within one epoch: a new one starts over.
    fn enter_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.last_offset = 0;
        }
    }

    /// The server announced a loss (bounded: a flood of announcements
    /// keeps the first ones, and the last one as a catch-all reset).
    pub fn announce(&mut self, a: Announced) {
        if self.announced.len() < MAX_ANNOUNCED {
            self.announced.push(a);
        } else if let (Some(last), Announced::Reset { .. }) = (self.announced.last_mut(), a) {
            *last = a;
        }
    }

    /// Whether an announcement covers seq `seq` of a sender, given where
    /// it landed (`(0, 0)`: unknown) and when it was sent.
    fn announced_covers(&self, at: (u64, u64), sent_us: u64) -> bool {
        self.announced.iter().any(|a| match (*a, at) {
            (Announced::Gap { epoch, from, to }, (e, o)) => e == epoch && (from..=to).contains(&o),
            (Announced::Reset { epoch, after, .. }, (e, o)) if e != 0 => e == epoch && o > after,
            // Where it landed is unknown (its sender never heard back):
            // any reset announced after it was sent may have taken it.
            (Announced::Reset { at_us, .. }, _) => at_us >= sent_us,
        })
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
    /// Expected, never seen, and covered by a loss the server announced to
    /// the receiver (`gap`, `reset`, `recovered: false`): not in `lost`.
    pub announced_lost: u64,
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
        for &q in &s.unconfirmed {
            if ex.binary_search(&q).is_err() {
                unconfirmed += 1;
                ex.push(q);
            }
        }
        ex.sort_unstable();
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

/// Expected, delivered, lost and announced-lost deliveries of seqs
/// `a..b` of sender `s` (room-local index `local`) at receiver `r`.
struct Judged {
    expected: u64,
    got: u64,
    lost: u64,
    announced: u64,
}

fn judge(r: &ReceiverLog, local: usize, s: &SenderLog, a: usize, b: usize) -> Judged {
    let refused: Vec<u32> = s
        .excluded
        .iter()
        .copied()
        .filter(|&q| (a..b).contains(&(q as usize)))
        .collect();
    let expected = (b - a - refused.len()) as u64;
    let refused_seen = refused.iter().filter(|&&q| r.has(local, q)).count() as u64;
    let got = r.seen_in(local, a, b).saturating_sub(refused_seen);
    let mut lost = expected - got.min(expected);
    let mut announced = 0u64;
    if lost > 0 && !r.announced.is_empty() {
        // Which of the missing ones did the server own up to?
        for q in a..b {
            let seq = q as u32;
            if r.has(local, seq) || s.excluded.binary_search(&seq).is_ok() {
                continue;
            }
            let at = s.offsets.get(q).copied().unwrap_or((0, 0));
            if r.announced_covers(at, s.sent_at[q]) {
                announced += 1;
            }
        }
        announced = announced.min(lost);
        lost -= announced;
    }
    Judged {
        expected,
        got,
        lost,
        announced,
    }
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
            // Split where the sender or the receiver moved to another
            // instance, so each cell of the APP_ID matrix gets its part.
            let mut cuts: Vec<usize> = s
                .moves
                .iter()
                .map(|m| m.0 as usize)
                .chain(
                    r.moves
                        .iter()
                        .map(|m| s.sent_at.partition_point(|&t| t < m.0)),
                )
                .filter(|&q| q > lo && q < hi)
                .collect();
            cuts.push(lo);
            cuts.push(hi);
            cuts.sort_unstable();
            cuts.dedup();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let j = judge(r, *local, s, a, b);
                v.expected += j.expected;
                v.delivered += j.got;
                got_here += j.got;
                v.lost += j.lost;
                lost_here += j.lost;
                v.announced_lost += j.announced;
                let c = v
                    .cells
                    .entry((s.app_at(a), r.app_at(s.sent_at[a])))
                    .or_default();
                c.expected += j.expected;
                c.lost += j.lost;
            }
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
        assert_eq!(r.on_delivery(0, 0, Some((1, 1))), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 2, Some((1, 3))), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 1, Some((1, 2))), Verdict::OutOfOrder);
        assert_eq!(r.on_delivery(0, 2, Some((1, 3))), Verdict::Duplicate);
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

    #[test]
    fn offsets_compare_only_within_an_epoch() {
        let mut r = ReceiverLog::new(0, 0, 0, 0);
        assert_eq!(r.on_delivery(0, 0, Some((7, 500))), Verdict::InOrder);
        // A new epoch may start lower: not out of order.
        assert_eq!(r.on_delivery(0, 1, Some((8, 100))), Verdict::InOrder);
        assert_eq!(r.on_delivery(0, 2, Some((8, 99))), Verdict::OutOfOrder);
        r.on_foreign_offset(9, 5);
        assert_eq!(r.on_delivery(0, 3, Some((9, 6))), Verdict::InOrder);
    }

    #[test]
    fn announced_losses_are_not_silent_losses() {
        // Sender 0 sent 6 messages; it learned the offsets of seqs 0..=3
        // (epoch 1, offsets 10..=13); 4 and 5 never came back to it.
        let mut s0 = sender(0, 0, &[10, 20, 30, 40, 50, 60]);
        for q in 0..4 {
            s0.learn_offset(q, 1, 10 + u64::from(q));
        }
        // r1 got 0 and 3, was told offsets 11..=12 are gone (gap), and a
        // reset after offset 13 announced at t=55: seq 4 (sent at 50) is
        // covered by it, seq 5 (sent at 60, after the reset) is not.
        let mut r1 = ReceiverLog::new(1, 0, 1, 0);
        r1.on_delivery(0, 0, Some((1, 10)));
        r1.on_delivery(0, 3, Some((1, 13)));
        r1.announce(Announced::Gap {
            epoch: 1,
            from: 11,
            to: 12,
        });
        r1.announce(Announced::Reset {
            epoch: 1,
            after: 13,
            at_us: 55,
        });
        // r2 got nothing and was told nothing: all six are lost.
        let r2 = ReceiverLog::new(2, 0, 1, 0);
        let (_, v) = check(vec![s0], &[r1, r2], 1, 0, u64::MAX);
        assert_eq!(v.expected, 12);
        assert_eq!(v.delivered, 2);
        assert_eq!(v.announced_lost, 3);
        assert_eq!(v.lost, 1 + 6);
    }

    #[test]
    fn sends_unconfirmed_at_the_end_are_expected_nowhere() {
        let mut s0 = sender(0, 0, &[10, 20, 30]);
        s0.unconfirmed = vec![2];
        let mut r = ReceiverLog::new(1, 0, 0, 0);
        r.on_delivery(0, 0, None);
        r.on_delivery(0, 1, None);
        let (u, v) = check(vec![s0], &[r], 1, 0, u64::MAX);
        assert_eq!((u, v.expected, v.lost), (1, 2, 0));
        assert_eq!(epoch_hash(b""), epoch_hash(b""));
        assert_ne!(epoch_hash(b"a"), epoch_hash(b"b"));
    }
}
