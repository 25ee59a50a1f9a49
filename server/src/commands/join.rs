//! Joining a room: the baseline, history replay on resume, and where live
//! delivery takes over (see DELIVERY.md, rules 2, 7 and 8).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use chat_protocol::names::validate_room;
use chat_protocol::splice::peek_epoch;
use chat_protocol::{ErrorCode, PresenceEvent, ServerFrame};

use super::{Joined, Session};
use crate::session::{Conn, End};
use crate::store::{Head, History};

impl Session {
    /// Join (or re-join) a room and make it current; replay history if
    /// asked. With `since` (and the `epoch` it belongs to), everything
    /// after it that history holds is replayed, and live copies at or
    /// below it are never sent again.
    pub async fn join(
        &mut self,
        conn: &mut Conn,
        room: &str,
        since: Option<u64>,
        epoch: Option<String>,
        history: Option<u32>,
    ) -> Result<(), End> {
        if let Err(e) = validate_room(room) {
            return conn.error(ErrorCode::InvalidRoom, e, None).await;
        }
        if let Err(e) = crate::auth::may_enter(self.identity.as_deref(), room) {
            return conn.error(ErrorCode::Forbidden, e, None).await;
        }
        if let Some(i) = self.position(room) {
            let j = self.rooms.remove(i);
            self.rooms.push(j);
        } else {
            if self.rooms.len() >= self.state.config.max_rooms {
                let msg = format!(
                    "at most {} rooms per connection; leave one first",
                    self.state.config.max_rooms
                );
                return conn.error(ErrorCode::TooManyRooms, msg, None).await;
            }
            if !self.check_nick_free(conn, room, &self.nick.clone()).await? {
                return Ok(());
            }
            let key = match self.state.hub.join(room, self.member.clone()).await {
                Ok(k) => k,
                Err(e) => {
                    return conn
                        .error(ErrorCode::Unavailable, e.to_string(), None)
                        .await
                }
            };
            self.member.outbox.add_room(key);
            // Most connections are in one room: no room for four.
            self.rooms.reserve_exact(1);
            self.rooms.push(Joined {
                name: room.to_string(),
                key,
            });
            self.announce(room, PresenceEvent::Join, None).await;
        }
        let store = &self.state.store;
        let max_replay = self.state.config.max_replay();
        let read = async {
            let head = store.head(room).await?;
            match (since, history) {
                (Some(since), _) => {
                    // In another epoch, offsets after the epoch's start may
                    // sit below `since`: replay from there too.
                    let same = epoch.as_deref().is_none_or(|e| e == head.epoch);
                    let after = if same { since } else { since.min(head.start) };
                    // Offsets are distinct integers, so at most `max_replay`
                    // entries lie above the cutoff (up to the head): start
                    // there, and announce what lies below it with a gap.
                    let cutoff = head.head.saturating_sub(u64::from(max_replay));
                    let paging = Paging {
                        capped: (cutoff > after).then_some(cutoff),
                        budget: max_replay,
                        recent: None,
                    };
                    let page = REPLAY_PAGE.min(max_replay);
                    let hist = store
                        .history_after_n(room, head, after.max(cutoff), page)
                        .await?;
                    Ok((hist, Some(same), Some(paging)))
                }
                (None, Some(n)) if n > 0 => {
                    // Offsets within an epoch are consecutive, so the last
                    // `n` messages lie above `head - n`: replay them in
                    // pages from there, like a resume (no gap: nothing was
                    // asked for below). After an epoch change inside that
                    // window, fewer than `n` come back.
                    let n = n.min(max_replay);
                    let after = head.head.saturating_sub(u64::from(n));
                    let paging = Paging {
                        capped: None,
                        budget: n,
                        recent: Some(after),
                    };
                    let hist = store
                        .history_after_n(room, head, after, REPLAY_PAGE.min(n))
                        .await?;
                    Ok((hist, None, Some(paging)))
                }
                (None, _) => Ok((
                    History {
                        head,
                        ..Default::default()
                    },
                    None,
                    None,
                )),
            }
        };
        let (hist, recovered, paging) = match read.await {
            Ok(r) => r,
            Err(e) => {
                let e: crate::store::StoreError = e;
                tracing::warn!(room, error = %e, "history unavailable on join");
                conn.frame(&ServerFrame::Joined {
                    room: room.to_string(),
                    head: 0,
                    epoch: String::new(),
                    recovered: since.map(|_| false),
                })
                .await?;
                let msg = format!(
                    "joined, but history is unavailable ({e}); missed messages were not replayed"
                );
                return conn.error(ErrorCode::Unavailable, msg, None).await;
            }
        };
        conn.frame(&ServerFrame::Joined {
            room: room.to_string(),
            head: hist.head.head,
            epoch: hist.head.epoch.clone(),
            recovered,
        })
        .await?;
        self.send_members(conn, room).await?;
        let from = since.map(|s| (epoch.unwrap_or_else(|| hist.head.epoch.clone()), s));
        self.replay(conn, room, from, hist, paging).await
    }

    /// Send history entries after `from` (the client's epoch and offset),
    /// a gap notice for what history lost (or what lies beyond
    /// `--max-replay`), and set where live delivery takes over. With
    /// `paging`, `hist` holds the first page: each page is sent before the
    /// next is read, up to the budget.
    async fn replay(
        &mut self,
        conn: &mut Conn,
        room: &str,
        from: Option<(String, u64)>,
        hist: History,
        paging: Option<Paging>,
    ) -> Result<(), End> {
        let Head {
            epoch: head_epoch,
            head,
            start,
        } = hist.head;
        let capped = paging.as_ref().and_then(|p| p.capped);
        // What the archive is asked for: what history lost after `since`.
        let mut fill = None;
        if let (None, Some(after)) = (&from, paging.as_ref().and_then(|p| p.recent)) {
            // `history: n`: the part of the last n that Redis lost comes
            // from the archive. Nothing was asked for by offset, so
            // nothing is announced.
            let below = hist
                .first
                .unwrap_or(head.saturating_add(1))
                .min(head.saturating_add(1));
            if self.state.archive.is_some() && below > after.saturating_add(1) {
                fill = Some(Fill {
                    epoch: Some(head_epoch.clone()),
                    after,
                    below,
                    announce: false,
                });
            }
        }
        if let Some((epoch, since)) = from.as_ref() {
            let wanted_from = since.saturating_add(1);
            let held_from = hist.first.unwrap_or(head.saturating_add(1));
            let below = held_from.min(head.saturating_add(1));
            // Past the cap, nothing is read (a gap says so).
            let after = (*since).max(capped.unwrap_or(0));
            let archive = self.state.archive.is_some() && below > after.saturating_add(1);
            // `since: 0` asks for everything history holds: nothing is
            // missing but what the cap leaves out.
            let gap = if *since > 0 && *epoch == head_epoch {
                let to = held_from
                    .saturating_sub(1)
                    .max(capped.unwrap_or(0))
                    .min(head);
                if archive {
                    // The archive's part is announced as it is read:
                    // only what the cap leaves out is a gap already.
                    fill = Some(Fill {
                        epoch: Some(epoch.clone()),
                        after,
                        below,
                        announce: true,
                    });
                    capped
                        .filter(|c| *c >= wanted_from)
                        .map(|c| (wanted_from, c))
                } else {
                    (to >= wanted_from).then_some((wanted_from, to))
                }
            } else if let Some(cut) = capped {
                // Another epoch (`recovered: false` said so) or `since: 0`:
                // announce what the cap leaves out of what history holds
                // (of the current epoch).
                let mut f = wanted_from.max(held_from);
                if *epoch != head_epoch {
                    f = f.max(start.saturating_add(1));
                }
                (cut >= f).then_some((f, cut))
            } else {
                None
            };
            if archive && *since > 0 && *epoch != head_epoch {
                // Another epoch: the archive may hold the rest of the
                // client's epoch and the start of later ones, all below
                // what history holds (offsets grow across epochs). Whether
                // anything is missing cannot be told: `recovered: false`
                // already said so.
                fill = Some(Fill {
                    epoch: None,
                    after,
                    below,
                    announce: false,
                });
            }
            if let Some((from, to)) = gap {
                self.gap(conn, room, from, to).await?;
            }
        }
        let Some(i) = self.position(room) else {
            return Ok(());
        };
        let key = self.rooms[i].key;
        // The fan-out stops writing this room until the replay is over.
        let Some((was_epoch, was_last)) = self.member.outbox.unsettle(key) else {
            return Ok(());
        };
        // Where this client stands: what it said it has, else what this
        // session already sent; a fresh join replays everything fetched.
        let fresh = was_epoch.is_empty();
        let (mut epoch, mut last): (Arc<str>, u64) = match &from {
            Some((e, s)) => (self.state.hub.epoch_arc(room, e), *s),
            None if !fresh => (was_epoch, was_last),
            None => (self.state.hub.epoch_arc(room, &head_epoch), 0),
        };
        let mut sent = 0u64;
        if let Some(fill) = fill {
            // Boxed: a resume from the archive is rare, and the session
            // future would otherwise hold its state for every connection.
            match Box::pin(self.replay_archive(conn, room, fill, &mut epoch, &mut last)).await {
                Ok(n) => sent += n,
                Err(end) => {
                    self.member.outbox.settle(key, epoch, last);
                    return Err(end);
                }
            }
        }
        let mut entries = hist.entries;
        let mut page_len = paging
            .as_ref()
            .map_or(0, |p| REPLAY_PAGE.min(p.budget) as usize);
        let mut budget = paging.as_ref().map_or(0, |p| p.budget);
        let mut stopped = None;
        loop {
            budget = budget.saturating_sub(entries.len() as u32);
            let full = page_len > 0 && entries.len() >= page_len;
            let read_to = entries.last().map(|(o, _)| *o);
            let frames = self.unseen(room, entries, &mut epoch, &mut last);
            sent += frames.len() as u64;
            if let Err(end) = conn.send_texts(&frames).await {
                self.member.outbox.settle(key, epoch, last);
                return Err(end);
            }
            let Some(after) = read_to.filter(|_| full && budget > 0) else {
                break;
            };
            page_len = REPLAY_PAGE.min(budget) as usize;
            match self
                .state
                .store
                .history_page(room, after, page_len as u32)
                .await
            {
                Ok(next) => entries = next,
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        if from.is_none() && fresh && *epoch == *head_epoch {
            // Live delivery takes over after the head this client joined at.
            last = last.max(head);
        } else if sent == 0 && *epoch != *head_epoch {
            // A new epoch with nothing of it in history yet: live delivery
            // takes over after its head.
            epoch = self.state.hub.epoch_arc(room, &head_epoch);
            last = head;
        }
        self.member.outbox.settle(key, epoch, last);
        self.state.metrics.history_replayed.fetch_add(sent, Relaxed);
        if let Some(e) = stopped {
            tracing::warn!(room, error = %e, "history replay stopped");
            let msg = format!(
                "history replay stopped after offset {last} ({e}); resume from there to get the rest"
            );
            return conn.error(ErrorCode::Unavailable, msg, None).await;
        }
        Ok(())
    }
}

impl Session {
    /// The frames of `entries` (offset order) that this client does not
    /// have yet, given where it stands (`epoch`, `last`), which they
    /// advance.
    fn unseen(
        &self,
        room: &str,
        entries: Vec<(u64, bytes::Bytes)>,
        epoch: &mut Arc<str>,
        last: &mut u64,
    ) -> Vec<bytes::Bytes> {
        let mut frames = Vec::with_capacity(entries.len());
        for (off, f) in entries {
            let Some(e) = peek_epoch(&f) else { continue };
            if *e == **epoch && off <= *last {
                continue;
            }
            if *e != **epoch {
                *epoch = self.state.hub.epoch_arc(room, e);
            }
            *last = off;
            if std::str::from_utf8(&f).is_ok() {
                frames.push(f);
            }
        }
        frames
    }

    /// Send what the archive holds of `fill`, a page at a time, before
    /// what Redis history holds. Within one epoch offsets are dense, so a
    /// hole in the archive (or a read that failed) is announced with a
    /// `gap` where it lies; across epochs nothing can be told. Returns how
    /// many messages were sent.
    async fn replay_archive(
        &mut self,
        conn: &mut Conn,
        room: &str,
        fill: Fill,
        epoch: &mut Arc<str>,
        last: &mut u64,
    ) -> Result<u64, End> {
        let Some(archive) = self.state.archive.clone() else {
            return Ok(0);
        };
        let mut after = fill.after;
        let mut sent = 0u64;
        loop {
            let page = archive
                .range(room, fill.epoch.as_deref(), after, fill.below, REPLAY_PAGE)
                .await;
            let rows = match page {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(room, error = %e, "archive unavailable during a resume");
                    break;
                }
            };
            let full = rows.len() >= REPLAY_PAGE as usize;
            let mut entries = Vec::with_capacity(rows.len());
            for (_, off, frame) in rows {
                if fill.announce && off > after.saturating_add(1) {
                    sent += self
                        .send_unseen(conn, room, &mut entries, epoch, last)
                        .await?;
                    self.gap(conn, room, after.saturating_add(1), off - 1)
                        .await?;
                }
                after = off;
                entries.push((off, frame));
            }
            sent += self
                .send_unseen(conn, room, &mut entries, epoch, last)
                .await?;
            if !full {
                break;
            }
        }
        if fill.announce && after.saturating_add(1) < fill.below {
            self.gap(conn, room, after.saturating_add(1), fill.below - 1)
                .await?;
        }
        self.state.metrics.archive_replayed.fetch_add(sent, Relaxed);
        Ok(sent)
    }

    /// Send the unseen frames of `entries` (emptied); how many were sent.
    async fn send_unseen(
        &self,
        conn: &mut Conn,
        room: &str,
        entries: &mut Vec<(u64, bytes::Bytes)>,
        epoch: &mut Arc<str>,
        last: &mut u64,
    ) -> Result<u64, End> {
        let frames = self.unseen(room, std::mem::take(entries), epoch, last);
        conn.send_texts(&frames).await?;
        Ok(frames.len() as u64)
    }

    /// Tell the client that offsets `from..=to` of `room` are lost.
    async fn gap(&self, conn: &mut Conn, room: &str, from: u64, to: u64) -> Result<(), End> {
        self.state.metrics.gaps.fetch_add(1, Relaxed);
        conn.frame(&ServerFrame::Gap {
            room: room.to_string(),
            from,
            to,
        })
        .await
    }
}

/// What a resume reads from the archive: offsets strictly between `after`
/// and `below`, of one epoch (the client's, which is also the room's) or,
/// after an epoch change, of any.
struct Fill {
    epoch: Option<String>,
    /// Announce what the archive lacks with `gap` (a resume in the
    /// client's own epoch, where offsets are dense).
    announce: bool,
    after: u64,
    below: u64,
}

/// Entries read from history at once during a replay.
const REPLAY_PAGE: u32 = 100;

/// A paged replay (`join` with `since` or `history`).
struct Paging {
    /// The cutoff below which `--max-replay` leaves entries out (a gap
    /// announces them), if it does.
    capped: Option<u64>,
    /// For `history: n`: the offset the last `n` messages lie above (the
    /// archive supplies those Redis no longer holds).
    recent: Option<u64>,
    /// Most entries this replay reads, the first page included.
    budget: u32,
}
