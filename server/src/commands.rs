//! What a session does with each client request: join, leave, send, nick,
//! who, ping. The per-connection state lives here; the socket loop is in
//! [`crate::session`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use chat_protocol::names::{validate_id, validate_nick, validate_room};
use chat_protocol::splice::{encode_tail, peek_epoch, MessageTail};
use chat_protocol::{ClientFrame, ErrorCode, PresenceEvent, ServerFrame, PROTOCOL_VERSION};

use crate::hub::{Delivery, Member, RoomKey};
use crate::session::{Conn, End};
use crate::store::{Head, History, MemberEntry};
use crate::AppState;

/// A room this connection is in.
#[derive(Debug)]
struct Joined {
    name: String,
    key: RoomKey,
    /// The epoch of `last`: offsets compare only within one epoch.
    epoch: Arc<str>,
    /// The highest chat offset of `epoch` sent to this client in this
    /// room (or the point it resumed from, or the head it joined at); live
    /// copies at or below it were already sent or predate the join.
    last: u64,
}

/// A send that passed its checks, on its way through Redis: resolves to
/// the frame to answer with (none when the delivery itself is the answer).
pub type SendJob = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;

/// Token bucket for inbound frames.
#[derive(Debug)]
struct Bucket {
    tokens: f32,
    at: Instant,
}

/// The state of one connection.
pub struct Session {
    state: AppState,
    member: Member,
    pub conn_id: String,
    nick: String,
    /// Joined rooms, most recently joined (the current room) last.
    rooms: Vec<Joined>,
    bucket: Bucket,
    /// Frames rejected for rate in a row.
    strikes: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("conn_id", &self.conn_id)
            .field("nick", &self.nick)
            .field("rooms", &self.rooms)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session for `member`; `nick` was validated by the upgrade.
    pub fn new(state: AppState, member: Member, nick: Option<String>) -> Self {
        let conn_id = format!("{}-{}-{}", state.app_id, state.boot, member.id);
        let nick = nick.unwrap_or_else(|| format!("guest{}", member.id));
        let burst = state.config.burst as f32;
        Self {
            state,
            member,
            conn_id,
            nick,
            rooms: Vec::new(),
            bucket: Bucket {
                tokens: burst,
                at: Instant::now(),
            },
            strikes: 0,
        }
    }

    /// Send the welcome frame.
    pub async fn welcome(&self, conn: &mut Conn, room: Option<&str>) -> Result<(), End> {
        conn.frame(&ServerFrame::Welcome {
            app_id: self.state.app_id.clone(),
            conn_id: self.conn_id.clone(),
            nick: self.nick.clone(),
            room: room.unwrap_or(crate::DEFAULT_ROOM).to_string(),
            protocol: PROTOCOL_VERSION,
            limits: self.state.config.limits(),
        })
        .await
    }

    /// Rate-limit one inbound frame: `Ok(false)` if it was rejected (the
    /// client got `rate_limited`), `Err` once the client floods.
    pub async fn admit(&mut self, conn: &mut Conn, id: Option<String>) -> Result<bool, End> {
        let cfg = &self.state.config;
        let now = Instant::now();
        let refill = now.duration_since(self.bucket.at).as_secs_f32() * cfg.rate_per_sec as f32;
        self.bucket.tokens = (self.bucket.tokens + refill).min(cfg.burst as f32);
        self.bucket.at = now;
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            self.strikes = 0;
            return Ok(true);
        }
        self.strikes += 1;
        if self.strikes >= cfg.flood_strikes {
            return Err(End::Close(
                chat_protocol::close::POLICY,
                format!(
                    "flood: {} frames in a row over the limit of {}/s",
                    self.strikes, cfg.rate_per_sec
                ),
            ));
        }
        let msg = format!(
            "rate limit: at most {}/s with bursts of {}; this frame was dropped",
            cfg.rate_per_sec, cfg.burst
        );
        conn.error(ErrorCode::RateLimited, msg, id).await?;
        Ok(false)
    }

    /// Whether a queued delivery should go to this client: chat frames
    /// already sent from history, or older than the join, are skipped. A
    /// frame of another epoch is never skipped: the hub announced the new
    /// epoch with a `reset` before it.
    pub fn accept(&mut self, d: &Delivery) -> bool {
        let Some(room) = self.rooms.iter_mut().find(|r| r.key == d.room) else {
            return false; // left the room while the frame was queued
        };
        if d.offset == 0 {
            return true;
        }
        if !Arc::ptr_eq(&room.epoch, &d.epoch) && *room.epoch != *d.epoch {
            room.epoch = d.epoch.clone();
        } else if d.offset <= room.last {
            return false;
        }
        room.last = d.offset;
        true
    }

    /// Carry out one protocol frame.
    /// Carry out one protocol frame. A send that passed its checks comes
    /// back as a [`SendJob`] for the session loop to run alongside others
    /// (sends are pipelined, not one Redis round trip at a time).
    pub async fn command(
        &mut self,
        conn: &mut Conn,
        frame: ClientFrame,
    ) -> Result<Option<SendJob>, End> {
        if let ClientFrame::Send {
            room,
            text,
            id,
            action,
        } = frame
        {
            return self.send_chat(conn, room, text, id, action).await;
        }
        match frame {
            ClientFrame::Join {
                room,
                since,
                epoch,
                history,
            } => self.join(conn, &room, since, epoch, history).await,
            ClientFrame::Leave { room } => self.leave(conn, &room).await,
            ClientFrame::Send { .. } => Ok(()),
            ClientFrame::Nick { nick } => self.rename(conn, nick).await,
            ClientFrame::Who { room } => self.who(conn, room).await,
            ClientFrame::Ping { id, ts } => {
                conn.frame(&ServerFrame::Pong {
                    id,
                    ts,
                    server_ts: crate::now_ms(),
                })
                .await
            }
        }
        .map(|()| None)
    }

    fn current(&self) -> Option<&Joined> {
        self.rooms.last()
    }

    fn position(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r.name == room)
    }

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
            let key = match self.state.hub.join(room, self.member.clone()).await {
                Ok(k) => k,
                Err(e) => {
                    return conn
                        .error(ErrorCode::Unavailable, e.to_string(), None)
                        .await
                }
            };
            self.rooms.push(Joined {
                name: room.to_string(),
                key,
                epoch: crate::hub::no_epoch(),
                last: 0,
            });
            self.announce(room, PresenceEvent::Join, None).await;
        }
        let store = &self.state.store;
        let read = async {
            let head = store.head(room).await?;
            match (since, history) {
                (Some(since), _) => {
                    // In another epoch, offsets after the epoch's start may
                    // sit below `since`: replay from there too.
                    let same = epoch.as_deref().is_none_or(|e| e == head.epoch);
                    let after = if same { since } else { since.min(head.start) };
                    Ok((store.history_after(room, head, after).await?, Some(same)))
                }
                (None, Some(n)) if n > 0 => Ok((store.history_last(room, head, n).await?, None)),
                (None, _) => Ok((
                    History {
                        head,
                        ..Default::default()
                    },
                    None,
                )),
            }
        };
        let (hist, recovered) = match read.await {
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
        self.replay(conn, room, from, hist).await
    }

    /// Send history entries after `from` (the client's epoch and offset),
    /// a gap notice for what history lost, and set where live delivery
    /// takes over.
    async fn replay(
        &mut self,
        conn: &mut Conn,
        room: &str,
        from: Option<(String, u64)>,
        hist: History,
    ) -> Result<(), End> {
        let Head {
            epoch: head_epoch,
            head,
            ..
        } = hist.head;
        // `since: 0` asks for everything history holds: nothing is missing.
        if let Some((epoch, since)) = from.as_ref().filter(|(_, s)| *s > 0) {
            let wanted_from = since.saturating_add(1);
            let have_from = hist.first.unwrap_or(head.saturating_add(1));
            if *epoch == head_epoch && head >= wanted_from && have_from > wanted_from {
                self.state.metrics.gaps.fetch_add(1, Relaxed);
                let to = (have_from - 1).min(head);
                conn.frame(&ServerFrame::Gap {
                    room: room.to_string(),
                    from: wanted_from,
                    to,
                })
                .await?;
            }
        }
        let Some(i) = self.position(room) else {
            return Ok(());
        };
        // Where this client stands: what it said it has, else what this
        // session already sent; a fresh join replays everything fetched.
        let fresh = self.rooms[i].epoch.is_empty();
        let (mut epoch, mut last): (Arc<str>, u64) = match &from {
            Some((e, s)) => (self.state.hub.epoch_arc(room, e), *s),
            None if !fresh => (self.rooms[i].epoch.clone(), self.rooms[i].last),
            None => (self.state.hub.epoch_arc(room, &head_epoch), 0),
        };
        let mut frames = Vec::with_capacity(hist.entries.len());
        for (off, f) in hist.entries {
            let Some(e) = peek_epoch(&f) else { continue };
            if *e == *epoch && off <= last {
                continue;
            }
            if *e != *epoch {
                epoch = self.state.hub.epoch_arc(room, e);
            }
            last = off;
            if std::str::from_utf8(&f).is_ok() {
                frames.push(f);
            }
        }
        if from.is_none() && fresh && *epoch == *head_epoch {
            // Live delivery takes over after the head this client joined at.
            last = last.max(head);
        } else if frames.is_empty() && *epoch != *head_epoch {
            // A new epoch with nothing of it in history yet: live delivery
            // takes over after its head.
            epoch = self.state.hub.epoch_arc(room, &head_epoch);
            last = head;
        }
        let sent = frames.len() as u64;
        self.rooms[i].epoch = epoch;
        self.rooms[i].last = last;
        self.state.metrics.history_replayed.fetch_add(sent, Relaxed);
        conn.send_texts(&frames).await?;
        Ok(())
    }

    async fn leave(&mut self, conn: &mut Conn, room: &str) -> Result<(), End> {
        let Some(i) = self.position(room) else {
            return conn
                .error(ErrorCode::NotInRoom, format!("not in room {room:?}"), None)
                .await;
        };
        self.rooms.remove(i);
        self.state.hub.leave(room, self.member.id);
        self.depart(room).await;
        conn.frame(&ServerFrame::Left {
            room: room.to_string(),
        })
        .await
    }

    /// Remove our presence entry and announce the leave.
    async fn depart(&self, room: &str) {
        depart(&self.state, room, &self.conn_id, &self.nick).await;
    }

    fn presence(&self, room: &str, event: PresenceEvent, old_nick: Option<String>) -> String {
        presence_frame(
            &self.state,
            room,
            event,
            &self.conn_id,
            &self.nick,
            old_nick,
        )
    }

    /// Record our presence entry in every joined room again, without an
    /// announcement: Redis was replaced and may have lost it.
    pub async fn record_presence(&self) {
        let entry = MemberEntry {
            nick: self.nick.clone(),
            app_id: self.state.app_id.clone(),
            boot: self.state.boot.clone(),
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
        }
    }

    /// Record our presence entry and announce a join or nick change.
    async fn announce(&self, room: &str, event: PresenceEvent, old_nick: Option<String>) {
        let entry = MemberEntry {
            nick: self.nick.clone(),
            app_id: self.state.app_id.clone(),
            boot: self.state.boot.clone(),
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

    /// Publish chat text to `room` (default: the current room).
    pub async fn send_chat(
        &mut self,
        conn: &mut Conn,
        room: Option<String>,
        text: String,
        id: Option<String>,
        action: bool,
    ) -> Result<Option<SendJob>, End> {
        if let Some(Err(e)) = id.as_deref().map(validate_id) {
            return conn
                .error(ErrorCode::BadFrame, e, None)
                .await
                .map(|()| None);
        }
        let room = match room {
            Some(r) if self.position(&r).is_some() => r,
            Some(r) => {
                return conn
                    .error(
                        ErrorCode::NotInRoom,
                        format!("join {r:?} before sending to it"),
                        id,
                    )
                    .await
                    .map(|()| None)
            }
            None => match self.current() {
                Some(j) => j.name.clone(),
                None => {
                    return conn
                        .error(ErrorCode::NotInRoom, "join a room first", id)
                        .await
                        .map(|()| None)
                }
            },
        };
        if text.is_empty() {
            return conn
                .error(ErrorCode::EmptyMessage, "empty message", id)
                .await
                .map(|()| None);
        }
        let max = self.state.config.max_message_bytes;
        if text.len() > max {
            let msg = format!("message is {} bytes; the limit is {max}", text.len());
            return conn
                .error(ErrorCode::MessageTooLarge, msg, id)
                .await
                .map(|()| None);
        }
        let tail = encode_tail(&MessageTail {
            room: &room,
            nick: &self.nick,
            text: &text,
            app_id: &self.state.app_id,
            ts: crate::now_ms(),
            id: id.as_deref(),
            action,
        });
        let state = self.state.clone();
        let nick = self.nick.clone();
        Ok(Some(Box::pin(publish(state, room, tail, nick, id))))
    }

    async fn rename(&mut self, conn: &mut Conn, nick: String) -> Result<(), End> {
        if let Err(e) = validate_nick(&nick) {
            return conn.error(ErrorCode::InvalidNick, e, None).await;
        }
        let old = std::mem::replace(&mut self.nick, nick.clone());
        let rooms: Vec<String> = self.rooms.iter().map(|j| j.name.clone()).collect();
        for room in rooms {
            self.announce(&room, PresenceEvent::Nick, Some(old.clone()))
                .await;
        }
        conn.frame(&ServerFrame::Nick { nick, old }).await
    }

    async fn who(&mut self, conn: &mut Conn, room: Option<String>) -> Result<(), End> {
        let room = match room.or_else(|| self.current().map(|j| j.name.clone())) {
            Some(r) if self.position(&r).is_some() => r,
            Some(r) => {
                return conn
                    .error(
                        ErrorCode::NotInRoom,
                        format!("join {r:?} to see its members"),
                        None,
                    )
                    .await
            }
            None => {
                return conn
                    .error(ErrorCode::NotInRoom, "join a room first", None)
                    .await
            }
        };
        self.send_members(conn, &room).await
    }

    async fn send_members(&self, conn: &mut Conn, room: &str) -> Result<(), End> {
        match self.state.members(room).await {
            Ok(mut members) => {
                // A full list of a big room would be O(members) bytes to
                // every joiner; the first ones and the count are enough.
                let total = members.len() as u64;
                members.truncate(self.state.config.members_list_max);
                conn.frame(&ServerFrame::Members {
                    room: room.to_string(),
                    members,
                    total,
                })
                .await
            }
            Err(e) => {
                conn.error(
                    ErrorCode::Unavailable,
                    format!("member list unavailable: {e}"),
                    None,
                )
                .await
            }
        }
    }
}

/// Publish one send; the answer to the sender, if any. The delivery is the
/// acknowledgement of a send that went through.
async fn publish(
    state: crate::AppState,
    room: String,
    tail: String,
    nick: String,
    id: Option<String>,
) -> Option<ServerFrame> {
    let idem = id.as_deref().map(|i| (nick.as_str(), i));
    let res = state.store.publish_message(&room, &tail, idem).await;
    let m = &state.metrics;
    match res {
        Ok(p) if p.duplicate => {
            m.duplicate_sends.fetch_add(1, Relaxed);
            Some(ServerFrame::Sent {
                room,
                id: id.unwrap_or_default(),
                offset: p.offset,
                epoch: p.epoch,
                duplicate: true,
            })
        }
        Ok(_) => {
            m.messages_in.fetch_add(1, Relaxed);
            None
        }
        Err(e) if e.maybe_applied() => {
            tracing::warn!(room, error = %e, "publish may or may not have gone through");
            m.error(ErrorCode::Timeout);
            let msg = format!(
                "message may or may not have been sent ({e}); retry with the same id, which is never published twice"
            );
            Some(ServerFrame::error(ErrorCode::Timeout, msg, id))
        }
        Err(e) => {
            tracing::warn!(room, error = %e, "publish failed");
            m.error(ErrorCode::Unavailable);
            let msg = format!("message not sent: {e}");
            Some(ServerFrame::error(ErrorCode::Unavailable, msg, id))
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
        self.state.tracker.spawn(async move {
            for j in rooms {
                depart(&state, &j.name, &conn_id, &nick).await;
            }
        });
    }
}

/// Remove a connection's presence entry from `room` and announce its leave.
async fn depart(state: &crate::AppState, room: &str, conn_id: &str, nick: &str) {
    match state.store.remove_member(room, conn_id).await {
        // Big rooms do not broadcast presence (see --presence-max-members).
        Ok((true, left)) if left < state.config.presence_max_members => {
            let frame = presence_frame(state, room, PresenceEvent::Leave, conn_id, nick, None);
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
) -> String {
    ServerFrame::Presence {
        room: room.to_string(),
        event,
        conn_id: conn_id.to_string(),
        nick: nick.to_string(),
        app_id: state.app_id.clone(),
        ts: crate::now_ms(),
        old_nick,
    }
    .to_json()
}
