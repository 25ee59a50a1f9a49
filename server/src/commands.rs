//! What a session does with each client request: join, leave, send, nick,
//! who, ping. The per-connection state lives here; the socket loop is in
//! [`crate::session`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use chat_protocol::names::{validate_id, validate_nick, validate_room};
use chat_protocol::splice::{encode_tail, MessageTail};
use chat_protocol::{ClientFrame, ErrorCode, PresenceEvent, ServerFrame, PROTOCOL_VERSION};

use crate::hub::{Delivery, Member, RoomKey};
use crate::session::{Conn, End};
use crate::store::{History, MemberEntry};
use crate::AppState;

/// A room this connection is in.
#[derive(Debug)]
struct Joined {
    name: String,
    key: RoomKey,
    /// The highest chat offset sent to this client in this room; live
    /// copies at or below it were already sent from history.
    last: u64,
}

/// Token bucket for inbound frames.
#[derive(Debug)]
struct Bucket {
    tokens: f32,
    at: Instant,
}

/// The state of one connection.
#[derive(Debug)]
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
    /// already sent from history are skipped.
    pub fn accept(&mut self, d: &Delivery) -> bool {
        let Some(room) = self.rooms.iter_mut().find(|r| r.key == d.room) else {
            return false; // left the room while the frame was queued
        };
        if d.offset == 0 {
            return true;
        }
        if d.offset <= room.last {
            return false;
        }
        room.last = d.offset;
        true
    }

    /// Carry out one protocol frame.
    pub async fn command(&mut self, conn: &mut Conn, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Join {
                room,
                since,
                history,
            } => self.join(conn, &room, since, history).await,
            ClientFrame::Leave { room } => self.leave(conn, &room).await,
            ClientFrame::Send {
                room,
                text,
                id,
                action,
            } => self.send_chat(conn, room, text, id, action).await,
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
    }

    fn current(&self) -> Option<&Joined> {
        self.rooms.last()
    }

    fn position(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r.name == room)
    }

    /// Join (or re-join) a room and make it current; replay history if
    /// asked.
    pub async fn join(
        &mut self,
        conn: &mut Conn,
        room: &str,
        since: Option<u64>,
        history: Option<u32>,
    ) -> Result<(), End> {
        if let Err(e) = validate_room(room) {
            return conn.error(ErrorCode::InvalidRoom, e, None).await;
        }
        if let Some(i) = self.position(room) {
            let mut j = self.rooms.remove(i);
            if let Some(since) = since {
                // Asked again explicitly: replay from there (live copies
                // up to the new head are then skipped as usual).
                j.last = j.last.min(since);
            }
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
                last: 0,
            });
            self.announce(room, PresenceEvent::Join, None).await;
        }
        let store = &self.state.store;
        let hist = match (since, history) {
            (Some(since), _) => store.history_since(room, since).await,
            (None, Some(n)) if n > 0 => store.history_last(room, n).await,
            (None, _) => store.head(room).await.map(|head| History {
                head,
                ..Default::default()
            }),
        };
        let hist = match hist {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(room, error = %e, "history unavailable on join");
                conn.frame(&ServerFrame::Joined {
                    room: room.to_string(),
                    head: 0,
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
            head: hist.head,
        })
        .await?;
        self.send_members(conn, room).await?;
        self.replay(conn, room, since, hist).await
    }

    /// Send history entries (and a gap notice for what history lost).
    async fn replay(
        &mut self,
        conn: &mut Conn,
        room: &str,
        since: Option<u64>,
        hist: History,
    ) -> Result<(), End> {
        // `since: 0` asks for everything history holds: nothing is missing.
        if let Some(since) = since.filter(|s| *s > 0) {
            let wanted_from = since + 1;
            let have_from = hist.first.unwrap_or(hist.head + 1);
            if hist.head >= wanted_from && have_from > wanted_from {
                self.state.metrics.gaps.fetch_add(1, Relaxed);
                let to = (have_from - 1).min(hist.head);
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
        let mut last = self.rooms[i].last;
        let mut frames = Vec::with_capacity(hist.entries.len());
        for (off, f) in hist.entries {
            if off > last {
                last = off;
                if std::str::from_utf8(&f).is_ok() {
                    frames.push(f);
                }
            }
        }
        let sent = frames.len() as u64;
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

    /// Leave every room (the connection ended).
    pub async fn leave_all(&mut self) {
        for j in std::mem::take(&mut self.rooms) {
            self.state.hub.leave(&j.name, self.member.id);
            self.depart(&j.name).await;
        }
    }

    /// Remove our presence entry and announce the leave.
    async fn depart(&self, room: &str) {
        match self.state.store.remove_member(room, &self.conn_id).await {
            // Big rooms do not broadcast presence (see --presence-max-members).
            Ok((true, left)) if left < self.state.config.presence_max_members => {
                let frame = self.presence(room, PresenceEvent::Leave, None);
                if let Err(e) = self.state.store.publish_raw(room, &frame).await {
                    tracing::debug!(room, error = %e, "cannot announce leave");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(room, error = %e, "cannot remove presence entry"),
        }
    }

    fn presence(&self, room: &str, event: PresenceEvent, old_nick: Option<String>) -> String {
        ServerFrame::Presence {
            room: room.to_string(),
            event,
            conn_id: self.conn_id.clone(),
            nick: self.nick.clone(),
            app_id: self.state.app_id.clone(),
            ts: crate::now_ms(),
            old_nick,
        }
        .to_json()
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
    ) -> Result<(), End> {
        if let Some(Err(e)) = id.as_deref().map(validate_id) {
            return conn.error(ErrorCode::BadFrame, e, None).await;
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
            }
            None => match self.current() {
                Some(j) => j.name.clone(),
                None => {
                    return conn
                        .error(ErrorCode::NotInRoom, "join a room first", id)
                        .await
                }
            },
        };
        if text.is_empty() {
            return conn
                .error(ErrorCode::EmptyMessage, "empty message", id)
                .await;
        }
        let max = self.state.config.max_message_bytes;
        if text.len() > max {
            let msg = format!("message is {} bytes; the limit is {max}", text.len());
            return conn.error(ErrorCode::MessageTooLarge, msg, id).await;
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
        match self.state.store.publish_message(&room, &tail).await {
            Ok(_) => {
                self.state.metrics.messages_in.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(room, error = %e, "publish failed");
                let msg = format!("message not sent: {e}");
                conn.error(ErrorCode::Unavailable, msg, id).await
            }
        }
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
