//! The invariants, checked per peer over everything it recorded: nothing
//! acknowledged is lost (or, where a scenario allows it, every loss was
//! announced), nothing is delivered twice, offsets increase within an
//! epoch, each sender's messages arrive in its send order, and delivery
//! resumed soon after the fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use super::record::{describe, Event, Peer, SentMsg};

/// What one peer's record says.
#[derive(Debug, Default)]
pub struct PeerReport {
    pub name: String,
    /// Acknowledged messages of its rooms that it was delivered.
    pub delivered: usize,
    /// Acknowledged messages of its rooms it never got, unannounced.
    pub lost: Vec<String>,
    /// Acknowledged messages it never got, covered by a gap, a reset or a
    /// `recovered: false` it received.
    pub announced: Vec<String>,
    /// Message ids delivered more than once.
    pub dup: Vec<String>,
    /// Where Redis lost its data: messages delivered again in the new
    /// epoch after an announced reset (see [`check_peer`]); allowed, counted.
    pub redelivered: Vec<String>,
    /// Offsets that did not increase within an epoch.
    pub ooo: Vec<String>,
    /// A sender's messages out of its send order.
    pub order: Vec<String>,
    /// Pipelined messages that needed a retry and came out of send order:
    /// allowed (see [`analyze`]), counted.
    pub reordered_retries: usize,
    /// From the fault to the first delivery of a message first sent after it.
    pub resume: Option<Duration>,
    pub reconnects: usize,
    pub resets: usize,
    pub gaps: usize,
    pub unrecovered: usize,
    /// Send errors by code (a sender's).
    pub errors: BTreeMap<&'static str, usize>,
    /// Why it gave up, if it did.
    pub failed: Option<String>,
    /// Everything but deliveries, for a failure message.
    pub timeline: Vec<String>,
}

/// The whole scenario.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub sent: usize,
    pub acked: usize,
    pub gave_up: usize,
    pub retried: usize,
    /// Attempts that got no answer (no delivery, `sent` or error) in time.
    pub unanswered: usize,
    pub dup_acks: usize,
    /// Redis lost its data in this scenario: announced losses are fine.
    pub announced_loss_ok: bool,
    pub peers: Vec<PeerReport>,
}

/// Check every peer against the registry of sent messages. `t_ref` is the
/// fault time resume latency is measured from. With `announced_loss_ok`
/// (a Redis that lost its data) a message a peer missed is fine if the
/// peer was told: a `gap` holding its offset, a `reset` from its epoch
/// after an earlier offset, or a resume from its epoch answered
/// `recovered: false`.
///
/// Send order: a stop-and-wait sender (window 1) sends a message only once
/// the previous one is acknowledged, and a retry reuses the id, which is
/// published at most once, so its messages must arrive in send order. A
/// pipelined sender's messages that needed a retry can legitimately land
/// after later ones (the retry goes after them, or the first attempt sat
/// on a command connection that was replaced): for those only the count is
/// reported; its messages that went through on their first attempt must
/// still keep their order.
pub fn analyze(
    name: &str,
    peers: &[std::sync::Arc<Peer>],
    reg: &HashMap<String, SentMsg>,
    t_ref: Instant,
    announced_loss_ok: bool,
) -> Report {
    let mut out = Report {
        name: name.to_string(),
        sent: reg.len(),
        acked: reg.values().filter(|m| m.ack.is_some()).count(),
        gave_up: reg.values().filter(|m| m.gave_up).count(),
        retried: reg.values().filter(|m| m.attempts > 1).count(),
        unanswered: reg.values().map(|m| m.unanswered as usize).sum(),
        dup_acks: reg
            .values()
            .filter(|m| m.ack.as_ref().is_some_and(|a| a.duplicate))
            .count(),
        announced_loss_ok,
        peers: Vec::new(),
    };
    for peer in peers {
        out.peers
            .push(check_peer(peer, reg, t_ref, announced_loss_ok));
    }
    out
}

fn check_peer(
    peer: &Peer,
    reg: &HashMap<String, SentMsg>,
    t_ref: Instant,
    announced_loss_ok: bool,
) -> PeerReport {
    let events = peer.snapshot();
    let rooms: HashSet<&str> = peer.spec.rooms.iter().map(String::as_str).collect();
    let mut r = PeerReport {
        name: peer.spec.name.clone(),
        ..Default::default()
    };
    // Id → (copies, epoch and index of the first).
    let mut seen: HashMap<&str, (u32, &str, usize)> = HashMap::new();
    // Where the peer was told of an epoch change: (index, room).
    let mut epoch_changes: Vec<(usize, &str)> = Vec::new();
    let mut last_offset: HashMap<(&str, &str), u64> = HashMap::new();
    let mut last_seq: HashMap<(&str, &str), (u64, &str)> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Reset { room, .. }
            | Event::Joined {
                room,
                recovered: Some(false),
                ..
            } => epoch_changes.push((i, room.as_str())),
            _ => {}
        }
        if let Some(line) = describe(e, t_ref) {
            r.timeline.push(line);
        }
        match e {
            Event::SendError { code, .. } => *r.errors.entry(code.as_str()).or_default() += 1,
            Event::Lost { .. } => r.reconnects += 1,
            Event::Reset { .. } => r.resets += 1,
            Event::Gap { .. } => r.gaps += 1,
            Event::Joined { recovered, .. } if *recovered == Some(false) => r.unrecovered += 1,
            Event::Failed { reason, .. } => r.failed = Some(reason.clone()),
            Event::Msg {
                at,
                room,
                epoch,
                offset,
                id,
                ..
            } => {
                let key = (room.as_str(), epoch.as_str());
                let first = id.as_deref().and_then(|id| {
                    let n = seen.entry(id).or_insert((0, epoch.as_str(), i));
                    n.0 += 1;
                    (n.0 > 1).then_some((n.1, n.2))
                });
                if let Some((first_epoch, first_at)) = first {
                    // Redis lost the send's idempotency key with its data:
                    // a retry of a send whose fate the sender never learned
                    // is published again in the new epoch. That is the one
                    // duplicate a data loss allows, and only across an
                    // epoch change the peer was told about.
                    let across_reset = first_epoch != epoch.as_str()
                        && epoch_changes
                            .iter()
                            .any(|(k, r)| *r == room.as_str() && *k > first_at);
                    let what = format!(
                        "{} ({room} {first_epoch} then {epoch}:{offset})",
                        id.as_deref().unwrap_or("")
                    );
                    if announced_loss_ok && across_reset {
                        r.redelivered.push(what);
                    } else {
                        r.dup.push(what);
                    }
                    continue;
                }
                match last_offset.get(&key) {
                    Some(&l) if *offset <= l => {
                        r.ooo.push(format!("{room} {epoch}: {offset} after {l}"))
                    }
                    _ => {}
                }
                let l = last_offset.entry(key).or_insert(0);
                *l = (*l).max(*offset);
                let Some(m) = id.as_deref().and_then(|id| reg.get(id)) else {
                    continue;
                };
                if r.resume.is_none() && m.first_send >= t_ref && *at >= t_ref {
                    r.resume = Some(at.duration_since(t_ref));
                }
                if m.pipelined && m.attempts > 1 {
                    if last_seq
                        .get(&(m.sender.as_str(), room.as_str()))
                        .is_some_and(|(s, _)| m.seq < *s)
                    {
                        r.reordered_retries += 1;
                    }
                    continue;
                }
                let id = id.as_deref().unwrap_or("");
                let k = (m.sender.as_str(), room.as_str());
                if let Some((s, prev)) = last_seq.get(&k) {
                    if m.seq < *s {
                        r.order.push(format!("{id} after {prev}"));
                    }
                }
                if last_seq.get(&k).is_none_or(|(s, _)| m.seq > *s) {
                    last_seq.insert(k, (m.seq, id));
                }
            }
            _ => {}
        }
    }
    let mut missed: Vec<(&String, &SentMsg)> = reg
        .iter()
        .filter(|(id, m)| {
            m.ack.is_some() && rooms.contains(m.room.as_str()) && !seen.contains_key(id.as_str())
        })
        .collect();
    missed.sort_by_key(|(_, m)| (m.sender.clone(), m.seq));
    r.delivered = reg
        .iter()
        .filter(|(id, m)| {
            m.ack.is_some() && rooms.contains(m.room.as_str()) && seen.contains_key(id.as_str())
        })
        .count();
    for (id, m) in missed {
        let ack = m.ack.as_ref().expect("filtered on ack");
        let what = format!("{id} ({} {}:{})", m.room, ack.epoch, ack.offset);
        if let Some(by) =
            covered(&events, &m.room, &ack.epoch, ack.offset).filter(|_| announced_loss_ok)
        {
            r.announced.push(format!("{what} by {by}"));
        } else {
            r.lost
                .push(format!("{id} ({} {}:{})", m.room, ack.epoch, ack.offset));
        }
    }
    r
}

/// The announcement (if any) that told the peer that `offset` of `epoch`
/// in `room` may be lost.
fn covered(events: &[Event], room: &str, epoch: &str, offset: u64) -> Option<String> {
    let found = events.iter().find(|e| match e {
        Event::Gap {
            room: r,
            epoch: ep,
            from,
            to,
            ..
        } => r == room && ep == epoch && (*from..=*to).contains(&offset),
        Event::Reset {
            room: r,
            previous,
            last,
            ..
        } => r == room && previous == epoch && offset > *last,
        Event::Joined {
            room: r,
            recovered: Some(false),
            since: Some((e, s)),
            ..
        } => r == room && e == epoch && offset > *s,
        _ => false,
    })?;
    describe(found, found.at())
}

impl Report {
    fn sum(&self, f: impl Fn(&PeerReport) -> usize) -> usize {
        self.peers.iter().map(f).sum()
    }

    /// Send errors by code, over every sender.
    pub fn errors(&self) -> BTreeMap<&'static str, usize> {
        let mut all = BTreeMap::new();
        for p in &self.peers {
            for (code, n) in &p.errors {
                *all.entry(*code).or_default() += n;
            }
        }
        all
    }

    /// The slowest peer's resume latency (`None` if one never resumed).
    pub fn worst_resume(&self) -> Option<Duration> {
        self.peers
            .iter()
            .map(|p| p.resume)
            .try_fold(Duration::ZERO, |acc, r| r.map(|r| acc.max(r)))
    }

    /// The one-line summary CI logs show.
    pub fn summary(&self) -> String {
        let mut resumes: Vec<u128> = self
            .peers
            .iter()
            .filter_map(|p| p.resume.map(|d| d.as_millis()))
            .collect();
        resumes.sort_unstable();
        let median = resumes.get(resumes.len() / 2).copied().unwrap_or(0);
        let worst = self
            .worst_resume()
            .map_or("never".to_string(), |d| d.as_millis().to_string());
        format!(
            "chaos {}: sent={} acked={} gave_up={} retried={} unanswered={} dup_acks={} errors={:?} delivered={} lost={} announced={} dup={} redelivered={} ooo={} order={} reordered_retries={} resets={} gaps={} unrecovered={} reconnects={} resume_ms(median/max)={}/{}",
            self.name,
            self.sent,
            self.acked,
            self.gave_up,
            self.retried,
            self.unanswered,
            self.dup_acks,
            self.errors(),
            self.sum(|p| p.delivered),
            self.sum(|p| p.lost.len()),
            self.sum(|p| p.announced.len()),
            self.sum(|p| p.dup.len()),
            self.sum(|p| p.redelivered.len()),
            self.sum(|p| p.ooo.len()),
            self.sum(|p| p.order.len()),
            self.sum(|p| p.reordered_retries),
            self.sum(|p| p.resets),
            self.sum(|p| p.gaps),
            self.sum(|p| p.unrecovered),
            self.sum(|p| p.reconnects),
            median,
            worst,
        )
    }

    /// Losses that were announced (allowed where Redis lost its data), one
    /// a line, for the log.
    pub fn announced(&self) -> String {
        let mut s = String::new();
        for p in &self.peers {
            for a in &p.announced {
                let _ = writeln!(s, "  {}: missed {a}", p.name);
            }
            for a in &p.redelivered {
                let _ = writeln!(s, "  {}: again after the reset {a}", p.name);
            }
        }
        s
    }

    /// Every broken invariant, one peer a line (empty: none).
    pub fn violations(&self, max_resume: Duration) -> String {
        let mut s = String::new();
        if self.sent == 0 {
            s.push_str("nothing was sent\n");
        }
        if self.acked != self.sent {
            let _ = writeln!(
                s,
                "{} of {} messages never acknowledged ({} given up)",
                self.sent - self.acked,
                self.sent,
                self.gave_up
            );
        }
        let few = |v: &[String]| {
            let mut t = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                let _ = write!(t, ", … ({} in all)", v.len());
            }
            t
        };
        for p in &self.peers {
            let mut line = Vec::new();
            if let Some(f) = &p.failed {
                line.push(format!("failed: {f}"));
            }
            if !p.lost.is_empty() {
                line.push(format!("lost {}: {}", p.lost.len(), few(&p.lost)));
            }
            if !p.dup.is_empty() {
                line.push(format!("duplicated {}: {}", p.dup.len(), few(&p.dup)));
            }
            if !p.ooo.is_empty() {
                line.push(format!(
                    "offsets out of order {}: {}",
                    p.ooo.len(),
                    few(&p.ooo)
                ));
            }
            if !p.order.is_empty() {
                line.push(format!(
                    "out of send order {}: {}",
                    p.order.len(),
                    few(&p.order)
                ));
            }
            if !self.announced_loss_ok && p.resets + p.gaps + p.unrecovered > 0 {
                // Redis kept everything: no new epoch, history holds every
                // message of the run, so nothing may be announced lost.
                line.push(format!(
                    "{} resets, {} gaps, {} resumes with recovered:false although Redis kept its data",
                    p.resets, p.gaps, p.unrecovered
                ));
            }
            match p.resume {
                None => line.push("no message sent after the fault was delivered".into()),
                Some(d) if d > max_resume => line.push(format!(
                    "delivery resumed after {d:?} (limit {max_resume:?})"
                )),
                _ => {}
            }
            if !line.is_empty() {
                let _ = writeln!(s, "{}: {}", p.name, line.join("; "));
                for t in p.timeline.iter().filter(|t| !t.contains(" error ")) {
                    let _ = writeln!(s, "    {t}");
                }
            }
        }
        s
    }
}
