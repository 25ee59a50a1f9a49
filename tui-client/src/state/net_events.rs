//! What each network event does to the state.

use chat_protocol::{ChatMessage, ErrorCode, ServerFrame};

use super::presence::Presence;
use super::room::{Line, LineKind};
use super::{is_dm, App, ConnStatus, Mention, MENTIONS_MAX};
use crate::net::NetEvent;

/// Above this many members, joins and leaves are shown only for people who
/// have spoken in the room.
pub(super) const SMART_FILTER_MEMBERS: usize = 100;
use crate::wrap;

/// An error frame in words: the codes of authenticated servers get a
/// sentence, the others stay `code: message`.
pub(super) fn error_text(code: &str, message: &str) -> String {
    let label = match code {
        "forbidden" => "not allowed",
        "nick_taken" => "nick taken",
        "unauthorized" => "not authorized (bad or expired token)",
        _ => return format!("{code}: {message}"),
    };
    if message.is_empty() {
        label.to_string()
    } else {
        format!("{label}: {message}")
    }
}

/// The network keeps the name of an error code the protocol crate does not
/// know by putting it before the message (`nick_taken: …`): read it back.
pub(super) fn split_unknown_code(message: &str) -> Option<(&str, &str)> {
    let (code, rest) = message.split_once(": ")?;
    let plain = !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit());
    plain.then_some((code, rest))
}

impl App {
    pub(super) fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connecting { attempt } => self.conn = ConnStatus::Connecting { attempt },
            NetEvent::Connected {
                app_id,
                conn_id,
                nick,
                limits,
            } => {
                self.last_failure = None;
                self.on_connected(app_id, conn_id, nick, limits);
            }
            NetEvent::Frame(f) => self.on_frame(f),
            NetEvent::Via { direct } => self.direct = direct,
            NetEvent::Rtt(rtt) => self.rtt = Some(rtt),
            NetEvent::Disconnected {
                reason,
                retry_in,
                attempt,
            } => {
                let was_up = self.conn == ConnStatus::Connected;
                self.last_failure = Some(reason.clone());
                let from = self.app_id.clone().unwrap_or_else(|| "the server".into());
                self.rtt = None;
                for r in &mut self.rooms {
                    r.joined = false;
                }
                self.conn = match retry_in {
                    Some(d) => ConnStatus::Reconnecting {
                        attempt,
                        at: self.now + d,
                        reason: reason.clone(),
                    },
                    None => ConnStatus::Offline {
                        reason: reason.clone(),
                    },
                };
                // One line per outage, not one per failed attempt: the
                // status bar shows the attempts.
                if was_up {
                    self.info_everywhere(&format!(
                        "disconnected from {from}: {reason}; reconnecting…"
                    ));
                } else if retry_in.is_none() {
                    self.error(&format!("offline: {reason} — type /reconnect to try again"));
                }
            }
            NetEvent::History {
                room,
                before,
                result,
            } => self.on_history(&room, before, result),
            NetEvent::SendFailed { id, room, reason } => {
                let i = self.room_index(&room).unwrap_or(self.current);
                let text = self.rooms[i].take_pending(&id).map(|l| l.text);
                let line = self.local_line(
                    LineKind::Error,
                    &format!("not sent ({reason}): {}", text.unwrap_or_default()),
                );
                self.push_line(i, line);
            }
        }
    }

    fn on_connected(
        &mut self,
        app_id: String,
        conn_id: String,
        nick: String,
        limits: chat_protocol::Limits,
    ) {
        let text = match (&self.app_id, self.was_connected) {
            (Some(old), true) if *old != app_id => {
                self.prev_app_id = Some(old.clone());
                format!("reconnected: now on {app_id}, was {old}")
            }
            (_, true) => format!("reconnected to {app_id}"),
            (_, false) => format!("connected to {app_id} as {nick}"),
        };
        self.was_connected = true;
        self.app_id = Some(wrap::sanitize(&app_id));
        // Bounded: one entry per reconnect, the oldest forgotten.
        if self.own_conn_ids.len() >= 64 {
            self.own_conn_ids.remove(0);
        }
        self.own_conn_ids.push(conn_id.clone());
        self.conn_id = Some(conn_id);
        self.nick = nick;
        self.limits = Some(limits);
        self.conn = ConnStatus::Connected;
        // Waiting for an echo starts again on the new connection.
        for r in &mut self.rooms {
            for l in &mut r.pending {
                if let LineKind::Pending { since, .. } = &mut l.kind {
                    *since = self.now;
                }
            }
        }
        self.info_everywhere(&text);
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome { .. } | ServerFrame::Pong { .. } => {}
            // The answer to a `refresh`, which this client does not send.
            ServerFrame::Refreshed { .. } => {}
            ServerFrame::Joined {
                room,
                head,
                epoch,
                recovered,
            } => {
                let i = match self.room_index(&room) {
                    Some(i) => i,
                    // The server put us in a room we did not ask for (the
                    // default room of a bare URL): show it.
                    None => {
                        self.rooms
                            .push(super::room::Room::new(&room, self.scrollback));
                        self.rooms.len() - 1
                    }
                };
                let r = &mut self.rooms[i];
                r.joined = true;
                let resumed = r.ever_joined;
                // Another epoch on a resume: said by the server, or only
                // seen here (a server that does not read our epoch).
                let new_epoch = !epoch.is_empty() && !r.epoch.is_empty() && epoch != r.epoch;
                if resumed && (recovered == Some(false) || new_epoch) {
                    let after = r.last_offset.unwrap_or_default();
                    self.new_epoch(i, &epoch, after);
                } else if epoch.is_empty() && r.last_offset.is_some_and(|last| head < last) {
                    // A server without epochs whose offsets went backwards.
                    r.last_offset = Some(head);
                    let line = self.local_line(
                        LineKind::Gap,
                        "the server's history of this room was reset (offsets went backwards); \
                         what was said meanwhile may be lost",
                    );
                    self.push_line(i, line);
                } else if !epoch.is_empty() {
                    r.epoch = epoch;
                }
                let r = &mut self.rooms[i];
                if !r.ever_joined {
                    r.ever_joined = true;
                    // History replay of a fresh join is not "unread".
                    r.quiet_until = head;
                    let line = self.local_line(LineKind::Join, &format!("you joined {room}"));
                    self.push_line(i, line);
                    // The replay that follows is older than the join: it
                    // goes above this line, not after it.
                    let r = &mut self.rooms[i];
                    r.replay_at = (head > 0).then(|| r.lines.len() - 1);
                }
            }
            ServerFrame::Reset {
                room, epoch, last, ..
            } => {
                let Some(i) = self.room_index(&room) else {
                    return;
                };
                let r = &self.rooms[i];
                if epoch != r.epoch {
                    // "0: none" delivered in the old epoch: what we saw is
                    // the better bound then.
                    let after = if last > 0 {
                        last
                    } else {
                        r.last_offset.unwrap_or_default()
                    };
                    self.new_epoch(i, &epoch, after);
                }
            }
            ServerFrame::Sent {
                room, id, offset, ..
            } => {
                // A retry the server had already applied. Its delivery
                // either came (the local echo is gone) or is on its way:
                // until then the echo stays, marked as sent.
                let Some(i) = self.room_index(&room) else {
                    return;
                };
                let r = &mut self.rooms[i];
                for l in &mut r.pending {
                    if let LineKind::Pending {
                        id: p, confirmed, ..
                    } = &mut l.kind
                    {
                        if *p == id {
                            *confirmed = Some(offset);
                        }
                    }
                }
                // Already past it (a gap, say): it will not come in order.
                let upto = r.last_offset;
                if upto.is_some_and(|l| offset <= l) {
                    self.settle_confirmed(i, upto);
                }
            }
            // A leave is always ours, and the room left the list when it
            // was asked for; acting on the confirmation would remove a room
            // joined again in the meantime.
            ServerFrame::Left { .. } => {}
            ServerFrame::Message(m) => self.on_message(m),
            ServerFrame::Gap { room, from, to } => {
                let Some(i) = self.room_index(&room) else {
                    return;
                };
                let r = &self.rooms[i];
                let upto = r.last_offset.map_or(to, |l| l.max(to));
                // Offsets are dense while the server's store lives, so a
                // small range is a count; a huge one is a jump to a new
                // base (the store lost the room), which no count describes.
                let span = to.saturating_sub(from).saturating_add(1);
                let text = if span <= 1_000_000 {
                    format!(
                        "{span} message(s) missed here (offsets {from}–{to}): the room's history no longer holds them"
                    )
                } else {
                    "messages may have been missed here: the server lost this room's history".into()
                };
                let line = self.local_line(LineKind::Gap, &text);
                self.push_line(i, line);
                // Our own lines the server confirmed inside the hole.
                self.settle_confirmed(i, Some(upto));
                self.rooms[i].last_offset = Some(upto);
            }
            ServerFrame::Presence {
                room,
                event,
                conn_id,
                nick,
                app_id,
                ts,
                old_nick,
                sub,
            } => self.on_presence(Presence {
                room,
                event,
                conn_id,
                nick,
                app_id,
                ts,
                old_nick,
                sub,
            }),
            ServerFrame::Members {
                room,
                members,
                total,
            } => {
                let Some(i) = self.room_index(&room) else {
                    return;
                };
                let r = &mut self.rooms[i];
                r.members.set(members, total as usize);
                // Whoever the list holds has not left.
                let listed = &r.members;
                r.held_leaves.retain(|h| !listed.has_nick(&h.nick));
                if let Some(p) = self.who_pending.iter().position(|r| *r == room) {
                    self.who_pending.remove(p);
                    self.print_members(i);
                }
            }
            ServerFrame::Nick { nick, old } => {
                self.nick = nick.clone();
                // A nick is the same in every room: say so in each.
                self.info_everywhere(&format!("you are now known as {nick} (was {old})"));
            }
            ServerFrame::Error { code, message, id } => {
                let failed = id.as_deref().and_then(|id| {
                    self.rooms
                        .iter_mut()
                        .enumerate()
                        .find_map(|(i, r)| r.take_pending(id).map(|l| (i, l.text)))
                });
                let text = match code {
                    ErrorCode::Unknown => match split_unknown_code(&message) {
                        Some((raw, rest)) => error_text(raw, rest),
                        None => error_text(code.as_str(), &message),
                    },
                    _ => error_text(code.as_str(), &message),
                };
                match failed {
                    // The network gave up retrying a send that may have
                    // gone through: do not claim it did not.
                    Some((i, sent)) if code == ErrorCode::Timeout => {
                        let line = self.local_line(
                            LineKind::Error,
                            &format!("maybe not sent ({text}); it shows here if it was: {sent}"),
                        );
                        self.push_line(i, line);
                    }
                    Some((i, sent)) => {
                        let line =
                            self.local_line(LineKind::Error, &format!("not sent ({text}): {sent}"));
                        self.push_line(i, line);
                    }
                    None => self.error(&text),
                }
            }
        }
    }

    fn on_message(&mut self, m: ChatMessage) {
        let Some(i) = self.room_index(&m.room) else {
            tracing::debug!(room = %m.room, "message for a room not shown");
            return;
        };
        let r = &mut self.rooms[i];
        if !m.epoch.is_empty() && m.epoch != r.epoch {
            // Another epoch (replay across one, or a `reset` this client
            // missed): its offsets do not compare with ours. The network
            // session adopts it the same way.
            self.settle_confirmed(i, None);
            let r = &mut self.rooms[i];
            r.epoch.clone_from(&m.epoch);
            r.last_offset = None;
        }
        let r = &mut self.rooms[i];
        if r.last_offset.is_some_and(|last| m.offset <= last) {
            return;
        }
        // Our own lines confirmed below this offset whose delivery did not
        // come: they go in before it.
        self.settle_confirmed(i, Some(m.offset.saturating_sub(1)));
        let r = &mut self.rooms[i];
        r.last_offset = Some(m.offset);
        r.note_talker(&m.nick);
        let echoed = m.id.as_deref().and_then(|id| r.take_pending(id)).is_some();
        // A line of ours delivered a second time under another offset (a
        // send applied twice by a server without idempotency keys): one
        // copy is shown, never two.
        if let Some(id) = m.id.as_deref().filter(|id| id.starts_with(&self.id_prefix)) {
            if !self.first_delivery(id) {
                tracing::info!(
                    id,
                    offset = m.offset,
                    "dropped a second delivery of an own line"
                );
                return;
            }
        }
        let own = echoed || m.nick == self.nick;
        let mention = !own && self.is_mention(&m.text);
        let r = &mut self.rooms[i];
        let live = m.offset > r.quiet_until;
        if live {
            r.replay_at = None;
        }
        // Replay of a fresh join is old news: no bell for it.
        self.mentioned |= mention && live;
        if i != self.current && !own && m.offset > r.quiet_until {
            if r.unread == 0 {
                let mut marker = self.local_line(LineKind::Marker, "─── new messages ───");
                marker.time.clear();
                let geo = self.geometry();
                self.rooms[i].set_marker(marker, geo);
            }
            let r = &mut self.rooms[i];
            r.unread += 1;
            r.mentions += usize::from(mention);
        }
        let line = self.message_line(&m, own, mention);
        if live {
            // Replay is already in the log (or predates this client).
            let text = if m.action {
                format!("* {} {}", line.nick, line.text)
            } else {
                format!("<{}> {}", line.nick, line.text)
            };
            self.log(&m.room, m.ts, text);
            let dm = is_dm(&m.room) && !own;
            if mention || dm {
                let label = self.room_label(i);
                if mention {
                    if self.mention_log.len() >= MENTIONS_MAX {
                        self.mention_log.pop_front();
                    }
                    self.mention_log.push_back(Mention {
                        room: label.clone(),
                        time: line.time.clone(),
                        nick: line.nick.clone(),
                        text: line.text.clone(),
                    });
                }
                let title = if dm {
                    format!("{} (direct)", line.nick)
                } else {
                    format!("{} in {label}", line.nick)
                };
                self.notify(title, line.text.clone());
                self.mentioned |= dm;
            }
        }
        let r = &mut self.rooms[i];
        if !live && r.replay_at.is_some() {
            let geo = self.geometry();
            self.rooms[i].push_replay(line, geo);
            if m.offset >= self.rooms[i].quiet_until {
                // The head: replay is complete.
                self.rooms[i].replay_at = None;
            }
            return;
        }
        self.push_line(i, line);
    }

    /// Room `i` moved to a new epoch: what was published after offset
    /// `after` of the old one may be lost. Said once, as a warning line.
    fn new_epoch(&mut self, i: usize, epoch: &str, after: u64) {
        self.settle_confirmed(i, None);
        let r = &mut self.rooms[i];
        r.epoch = epoch.to_string();
        r.last_offset = None;
        // Everything of the new epoch is news, whatever its offsets.
        r.quiet_until = 0;
        let text = if after > 0 {
            format!("server restarted its history: messages after #{after} may be lost")
        } else {
            "server restarted its history: messages may have been lost".to_string()
        };
        let line = self.local_line(LineKind::Gap, &text);
        self.push_line(i, line);
    }

    /// Move our own lines that the server confirmed at an offset at or
    /// below `upto` (all for `None`) into the scrollback: the room has
    /// moved past them without their delivery. A line keeps its offset
    /// only where that is still in order (and then counts as shown, so a
    /// late delivery does not show it twice).
    fn settle_confirmed(&mut self, i: usize, upto: Option<u64>) {
        let mut lines = self.rooms[i].take_confirmed(upto);
        lines.sort_by_key(|l| match l.kind {
            LineKind::Pending { confirmed, .. } => confirmed,
            _ => None,
        });
        for l in lines {
            let LineKind::Pending {
                action,
                confirmed,
                ref id,
                ..
            } = l.kind
            else {
                continue;
            };
            // Shown now: a late delivery of it is not shown again.
            let id = id.clone();
            self.first_delivery(&id);
            let r = &mut self.rooms[i];
            let offset = confirmed.filter(|o| r.last_offset.is_none_or(|last| *o > last));
            if offset.is_some() {
                r.last_offset = offset;
            }
            let line = Line {
                kind: LineKind::Message {
                    own: true,
                    action,
                    mention: false,
                },
                offset,
                ..l
            };
            self.push_line(i, line);
        }
    }
}
