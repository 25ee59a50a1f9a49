//! What a session does with each client request: join, leave, send, nick,
//! who, ping. The per-connection state lives here; the socket loop is in
//! [`crate::session`].
//!
//! - [`join`]: joins, resume and history replay.
//! - [`send`]: chat sends and their publish.
//! - [`presence`]: member hashes, presence events, cleanup on drop.

mod join;
mod presence;
mod send;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use chat_protocol::names::validate_nick;
use chat_protocol::{ClientFrame, ErrorCode, PresenceEvent, ServerFrame, PROTOCOL_VERSION};

use crate::auth::{may_enter, Identity};
use crate::hub::{Member, RoomKey};
use crate::session::{Conn, End};
use crate::AppState;

/// A room this connection is in.
#[derive(Debug)]
/// A joined room. What was sent of it (its epoch and last offset) is in
/// the outbox's delivery filter (see `crate::outbox`).
struct Joined {
    name: String,
    key: RoomKey,
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

impl Bucket {
    fn full(burst: u32) -> Self {
        Self {
            tokens: burst as f32,
            at: Instant::now(),
        }
    }

    /// Refill at `rate` per second up to `burst`, then take one token if
    /// there is one.
    fn take(&mut self, rate: u32, burst: u32) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f32() * rate as f32;
        self.tokens = (self.tokens + refill).min(burst as f32);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The state of one connection.
pub struct Session {
    state: AppState,
    member: Member,
    pub conn_id: String,
    nick: String,
    /// An anonymous client's `nick_key` (its reconnects get the nick
    /// back); see [`Session::owner`].
    nick_key: Option<Box<str>>,
    /// The nick is the server's `guest<N>`, not one the client chose.
    assigned_nick: bool,
    /// Joined rooms, most recently joined (the current room) last.
    rooms: Vec<Joined>,
    bucket: Bucket,
    /// `join`, `leave` and `nick` frames (`--membership-rate`).
    membership: Bucket,
    /// Frames rejected for rate in a row.
    strikes: u32,
    /// What the upgrade's token said; `None`: anonymous.
    identity: Option<Box<Identity>>,
    /// A `refresh` moved the expiry since the session loop last looked.
    expiry_changed: bool,
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
    /// With an identity the nick is the token's and `nick` is ignored.
    pub fn new(
        state: AppState,
        member: Member,
        nick: Option<String>,
        nick_key: Option<String>,
        identity: Option<Box<Identity>>,
    ) -> Self {
        let conn_id = format!("{}-{}-{}", state.app_id, state.boot, member.id);
        let assigned_nick = identity.is_none() && nick.is_none();
        let nick = match &identity {
            Some(id) => id.nick.clone(),
            None => nick.unwrap_or_else(|| format!("guest{}", member.id)),
        };
        let nick_key = nick_key.filter(|_| identity.is_none()).map(Box::from);
        let burst = state.config.burst;
        // The upgrade's join (from the query) is the first membership change.
        let mut membership = Bucket::full(state.config.membership_burst);
        membership.take(state.config.membership_rate, state.config.membership_burst);
        Self {
            state,
            member,
            conn_id,
            nick,
            nick_key,
            assigned_nick,
            rooms: Vec::new(),
            bucket: Bucket::full(burst),
            membership,
            strikes: 0,
            identity,
            expiry_changed: false,
        }
    }

    /// Whose the nick is, in the rooms' nick index: `sub:<sub>` with a
    /// token, `key:<nick_key>` for an anonymous client that sent a
    /// `nick_key`, else `conn:<conn_id>`.
    fn owner(&self) -> String {
        match (self.sub(), &self.nick_key) {
            (Some(sub), _) => format!("sub:{sub}"),
            (None, Some(key)) => format!("key:{key}"),
            (None, None) => format!("conn:{}", self.conn_id),
        }
    }

    /// The token subject, for an authenticated connection.
    pub fn sub(&self) -> Option<&str> {
        self.identity.as_deref().map(|id| id.sub.as_str())
    }

    /// When the connection's token expires (seconds since the Unix epoch).
    pub fn expires(&self) -> Option<u64> {
        self.identity.as_deref().map(|id| id.exp)
    }

    /// Whether a `refresh` moved the expiry since the last call.
    pub fn take_expiry_changed(&mut self) -> bool {
        std::mem::take(&mut self.expiry_changed)
    }

    /// Claim `nick` in `room`'s nick index for this connection: `Ok(true)`
    /// when it is ours (free, ours already, held by a connection that left
    /// or renamed, or by one on a dead instance). A token's nick is always
    /// taken (the token vouches for it); so is a server-made `guest<N>`
    /// (unique on this instance), without taking it from anyone.
    async fn claim_nick(&self, room: &str, nick: &str) -> Result<bool, crate::store::StoreError> {
        let store = &self.state.store;
        let force = self.identity.is_some();
        let held = store
            .claim_nick(room, nick, &self.owner(), &self.conn_id, force)
            .await?;
        let Some((holder, entry)) = held else {
            return Ok(true);
        };
        if self.assigned_nick && nick == self.nick {
            return Ok(true);
        }
        if self.state.boot_alive(&entry.boot).await {
            tracing::debug!(room, nick, holder, "nick held by a live member");
            return Ok(false);
        }
        // The holder's instance is dead (its entry awaits the sweep).
        Ok(store
            .claim_nick(room, nick, &self.owner(), &self.conn_id, true)
            .await?
            .is_none())
    }

    /// Refuse a nick another live member of `room` holds; `Ok(false)` when
    /// refused (the client got the error).
    async fn check_nick_free(&self, conn: &mut Conn, room: &str, nick: &str) -> Result<bool, End> {
        match self.claim_nick(room, nick).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                let msg = format!(
                    "nick {nick:?} belongs to another member of {room:?}; pick another \
                     (reconnects get their nick back with the same ?nick_key=)"
                );
                conn.error(ErrorCode::NickTaken, msg, None).await?;
                Ok(false)
            }
            Err(e) => {
                let msg = format!("cannot check the nick: {e}");
                conn.error(ErrorCode::Unavailable, msg, None).await?;
                Ok(false)
            }
        }
    }

    /// A `refresh` frame: a new token for the same subject moves the
    /// connection's expiry. Name and rooms stay those of the first token.
    async fn refresh(&mut self, conn: &mut Conn, token: String) -> Result<(), End> {
        let verified = self.state.auth.verify(&token);
        let Some(current) = self.identity.as_deref_mut() else {
            let msg = "this connection has no token: reconnect with one";
            return conn.error(ErrorCode::Forbidden, msg, None).await;
        };
        match verified {
            Err(e) => {
                conn.error(ErrorCode::Unauthorized, e.to_string(), None)
                    .await
            }
            Ok(new) if new.sub != current.sub => {
                let msg = format!(
                    "the token is for {:?}, this connection is {:?}",
                    new.sub, current.sub
                );
                conn.error(ErrorCode::Forbidden, msg, None).await
            }
            Ok(new) => {
                current.exp = current.exp.max(new.exp);
                let exp = current.exp;
                self.expiry_changed = true;
                conn.frame(&ServerFrame::Refreshed { exp }).await
            }
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
        if self.bucket.take(cfg.rate_per_sec, cfg.burst) {
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

    /// Rate-limit a `join`, `leave` or `nick` frame (`--membership-rate`):
    /// `Ok(false)` if it was rejected (the client got `rate_limited` and
    /// the frame is not applied). Not a flood strike: the frame passed the
    /// per-frame limit, and the client is not closed for it.
    async fn admit_membership(&mut self, conn: &mut Conn) -> Result<bool, End> {
        let (rate, burst) = (
            self.state.config.membership_rate,
            self.state.config.membership_burst,
        );
        if self.membership.take(rate, burst) {
            return Ok(true);
        }
        let msg = format!(
            "rate limit: at most {rate}/s join, leave and nick frames with bursts of {burst}; \
             this frame was not applied"
        );
        conn.error(ErrorCode::RateLimited, msg, None).await?;
        Ok(false)
    }

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
        if matches!(
            frame,
            ClientFrame::Join { .. } | ClientFrame::Leave { .. } | ClientFrame::Nick { .. }
        ) && !self.admit_membership(conn).await?
        {
            return Ok(None);
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
            ClientFrame::Refresh { token } => self.refresh(conn, token).await,
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

    async fn leave(&mut self, conn: &mut Conn, room: &str) -> Result<(), End> {
        let Some(i) = self.position(room) else {
            return conn
                .error(ErrorCode::NotInRoom, format!("not in room {room:?}"), None)
                .await;
        };
        let left = self.rooms.remove(i);
        self.member.outbox.remove_room(left.key);
        self.state.hub.leave(room, self.member.id);
        self.depart(room).await;
        conn.frame(&ServerFrame::Left {
            room: room.to_string(),
        })
        .await
    }

    async fn rename(&mut self, conn: &mut Conn, nick: String) -> Result<(), End> {
        if self.identity.is_some() {
            let msg = "your nick is your token's name: it cannot be changed";
            return conn.error(ErrorCode::Forbidden, msg, None).await;
        }
        if let Err(e) = validate_nick(&nick) {
            return conn.error(ErrorCode::InvalidNick, e, None).await;
        }
        let rooms: Vec<String> = self.rooms.iter().map(|j| j.name.clone()).collect();
        for room in &rooms {
            if !self.check_nick_free(conn, room, &nick).await? {
                return Ok(());
            }
        }
        let old = std::mem::replace(&mut self.nick, nick.clone());
        self.assigned_nick = false;
        for room in rooms {
            self.announce(&room, PresenceEvent::Nick, Some(old.clone()))
                .await;
        }
        conn.frame(&ServerFrame::Nick { nick, old }).await
    }

    async fn who(&mut self, conn: &mut Conn, room: Option<String>) -> Result<(), End> {
        let room = room.or_else(|| self.current().map(|j| j.name.clone()));
        if let Some(Err(msg)) = room
            .as_deref()
            .map(|r| may_enter(self.identity.as_deref(), r))
        {
            return conn.error(ErrorCode::Forbidden, msg, None).await;
        }
        let room = match room {
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
        // A full list of a big room would be O(members) bytes to every
        // joiner and a full HGETALL: one page and the count are enough.
        match self
            .state
            .members_page(room, self.state.config.members_list_max)
            .await
        {
            Ok((members, total)) => {
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
