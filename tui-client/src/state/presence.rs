//! What a presence event does: the member list by connection, and the
//! lines for joins, leaves and nick changes. A leave is held back for
//! [`LEAVE_GRACE`]: a member whose connection left and who is back within
//! it (reconnected elsewhere after a failover, or re-announced by their
//! instance) never left, so no "left" line is shown for them.

use chat_protocol::PresenceEvent;

use super::net_events::SMART_FILTER_MEMBERS;
use super::room::{HeldLeave, Line, LineKind, LEAVE_GRACE};
use super::App;
use crate::wrap;

/// A `presence` frame's fields.
pub(super) struct Presence {
    pub room: String,
    pub event: PresenceEvent,
    pub conn_id: String,
    pub nick: String,
    pub app_id: String,
    pub ts: u64,
    pub old_nick: Option<String>,
    pub sub: Option<String>,
}

impl App {
    pub(super) fn on_presence(&mut self, p: Presence) {
        let Presence {
            room,
            event,
            conn_id,
            nick,
            app_id,
            ts,
            old_nick,
            sub,
        } = p;
        let Some(i) = self.room_index(&room) else {
            return;
        };
        // Our own joins, leaves and nick changes are the echo of
        // what we did (and of every reconnect), already told in our
        // own words: keep the member list, skip the line.
        let own = self.own_conn_ids.contains(&conn_id);
        let r = &mut self.rooms[i];
        let members = &mut r.members;
        let (kind, text) = match event {
            PresenceEvent::Join => {
                let first = members.add(chat_protocol::Member {
                    conn_id: conn_id.clone(),
                    nick: nick.clone(),
                    app_id: app_id.clone(),
                    sub,
                });
                // Back within the grace of a held leave (the same
                // connection re-announced, or the member
                // reconnected elsewhere): they never left.
                let held = r.held_leaves.len();
                let safe = wrap::sanitize(&nick);
                r.held_leaves
                    .retain(|h| h.conn_id != conn_id && h.nick != safe);
                // Another connection of someone already here (a
                // reconnect to another instance) is no news.
                if !first || r.held_leaves.len() < held {
                    return;
                }
                (
                    LineKind::Join,
                    format!("{nick} joined {room} (via {app_id})"),
                )
            }
            PresenceEvent::Leave => {
                // Only the last connection of a nick leaving is a
                // leave, and only of a connection the list knows:
                // a leave for one it does not is a stale account
                // of a connection from before a failover.
                let last = match members.remove(&conn_id) {
                    Some((_, last)) => last,
                    None => false,
                };
                if !last {
                    return;
                }
                (LineKind::Leave, format!("{nick} left {room}"))
            }
            // A connection that ended without a leave while its
            // member stays through another: drop it, say nothing.
            PresenceEvent::Gone => {
                members.remove(&conn_id);
                return;
            }
            PresenceEvent::Nick => {
                members.rename(&conn_id, &nick);
                let old = old_nick.unwrap_or_else(|| "someone".into());
                (
                    LineKind::NickChange,
                    format!("{old} is now known as {nick}"),
                )
            }
        };
        if own {
            return;
        }
        // WeeChat's "smart filter": in a big room, joins and leaves
        // of people who have not spoken would drown the talk (a
        // load test joins thousands). The member list still counts
        // them.
        let r = &self.rooms[i];
        if kind != LineKind::NickChange
            && r.members.len() > SMART_FILTER_MEMBERS
            && !r.talkers.contains(&nick)
        {
            return;
        }
        let stamp = self.clock.stamp(ts);
        let line = Line {
            time: stamp.time,
            day: stamp.day,
            kind: kind.clone(),
            nick: String::new(),
            text: wrap::sanitize(&text),
            app_id: Some(wrap::sanitize(&app_id)),
            offset: None,
        };
        if kind == LineKind::Leave {
            // Held back: see `LEAVE_GRACE`.
            let until = self.now + LEAVE_GRACE;
            let after = self.rooms[i].appended;
            self.rooms[i].held_leaves.push(HeldLeave {
                nick: wrap::sanitize(&nick),
                conn_id,
                until,
                after,
                ts,
                line,
            });
            return;
        }
        let mark = if kind == LineKind::Join { "-->" } else { "--" };
        self.log(&room, ts, format!("{mark} {}", line.text));
        self.push_line(i, line);
    }
}
