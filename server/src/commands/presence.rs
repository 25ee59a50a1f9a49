//! Presence: recording a connection in a room's member hash, announcing
//! joins, leaves and nick changes, and the cleanup that runs however a
//! connection ends.

use chat_protocol::{PresenceEvent, ServerFrame};

use super::Session;
use crate::store::MemberEntry;

impl Session {
    /// Remove our presence entry and announce the leave.
    pub(super) async fn depart(&self, room: &str) {
        depart(&self.state, room, &self.conn_id, &self.nick, self.sub()).await;
    }

    pub(super) fn presence(
        &self,
        room: &str,
        event: PresenceEvent,
        old_nick: Option<String>,
    ) -> String {
        presence_frame(
            &self.state,
            room,
            event,
            &self.conn_id,
            &self.nick,
            old_nick,
            self.sub(),
        )
    }

    /// Record our presence entry in every joined room again, without an
    /// announcement: Redis was replaced and may have lost it.
    pub async fn record_presence(&self) {
        let entry = MemberEntry {
            nick: self.nick.clone(),
            app_id: self.state.app_id.clone(),
            boot: self.state.boot.clone(),
            sub: self.sub().map(str::to_owned),
        };
        for j in &self.rooms {
            if let Err(e) = self
                .state
                .store
                .add_member(&j.name, &self.conn_id, &entry)
                .await
            {
                tracing::debug!(room = j.name, error = %e, "presence not recorded again");
            }
            // The nick index may be lost too: claim the nick again (a
            // refusal changes nothing here: the member keeps its nick).
            let _ = self.claim_nick(&j.name, &self.nick).await;
        }
    }

    /// Record our presence entry and announce a join or nick change.
    pub(super) async fn announce(
        &self,
        room: &str,
        event: PresenceEvent,
        old_nick: Option<String>,
    ) {
        let entry = MemberEntry {
            nick: self.nick.clone(),
            app_id: self.state.app_id.clone(),
            boot: self.state.boot.clone(),
            sub: self.sub().map(str::to_owned),
        };
        let store = &self.state.store;
        let res = match store.add_member(room, &self.conn_id, &entry).await {
            Ok(n) if n > self.state.config.presence_max_members => Ok(()),
            Ok(_) => {
                store
                    .publish_raw(room, &self.presence(room, event, old_nick))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!(room, error = %e, "presence not recorded");
        }
    }
}

/// Cleanup that must happen however the connection ends, a panic
/// included: the hub forgets the member at once, and the presence entries
/// are removed (and the leaves announced) by a task of their own.
impl Drop for Session {
    fn drop(&mut self) {
        let rooms = std::mem::take(&mut self.rooms);
        if rooms.is_empty() {
            return;
        }
        for j in &rooms {
            self.state.hub.leave(&j.name, self.member.id);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return; // no runtime (a unit test): nothing to announce to
        }
        let state = self.state.clone();
        let conn_id = std::mem::take(&mut self.conn_id);
        let nick = std::mem::take(&mut self.nick);
        let sub = self.identity.take().map(|id| id.sub);
        self.state.tracker.spawn(async move {
            for j in rooms {
                depart(&state, &j.name, &conn_id, &nick, sub.as_deref()).await;
            }
        });
    }
}

/// Remove a connection's presence entry from `room` and announce its leave.
async fn depart(state: &crate::AppState, room: &str, conn_id: &str, nick: &str, sub: Option<&str>) {
    match state.store.remove_member(room, conn_id, nick).await {
        // Big rooms do not broadcast presence (see --presence-max-members).
        Ok((true, left)) if left < state.config.presence_max_members => {
            let frame = presence_frame(state, room, PresenceEvent::Leave, conn_id, nick, None, sub);
            if let Err(e) = state.store.publish_raw(room, &frame).await {
                tracing::debug!(room, error = %e, "cannot announce leave");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(room, error = %e, "cannot remove presence entry"),
    }
}

fn presence_frame(
    state: &crate::AppState,
    room: &str,
    event: PresenceEvent,
    conn_id: &str,
    nick: &str,
    old_nick: Option<String>,
    sub: Option<&str>,
) -> String {
    ServerFrame::Presence {
        room: room.to_string(),
        event,
        conn_id: conn_id.to_string(),
        nick: nick.to_string(),
        app_id: state.app_id.clone(),
        ts: crate::now_ms(),
        old_nick,
        sub: sub.map(str::to_owned),
    }
    .to_json()
}
