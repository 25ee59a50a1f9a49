//! Presence hashes and the instance registry in Redis.

use std::time::Duration;

use super::{
    instance_key, members_key, nicks_key, registry_slot, room_slot, Conn, InstanceInfo,
    MemberEntry, Store, StoreError, StoreResult, INSTANCES_KEY,
};

impl Store {
    /// Record a member in a room's presence hash; returns the number of
    /// members now recorded.
    pub async fn add_member(
        &self,
        room: &str,
        conn_id: &str,
        entry: &MemberEntry,
    ) -> StoreResult<u64> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Reply(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(members_key(room))
            .arg(conn_id)
            .arg(json)
            .ignore()
            .cmd("HLEN")
            .arg(members_key(room));
        let (n,): (u64,) = self.query_pipe(room_slot(room), &pipe).await?;
        Ok(n)
    }

    /// Remove a member (and its claim on `nick`, if it is the claimant on
    /// record). Returns whether this call removed it (so exactly one
    /// caller announces the leave) and how many members remain.
    pub async fn remove_member(
        &self,
        room: &str,
        conn_id: &str,
        nick: &str,
    ) -> StoreResult<(bool, u64)> {
        self.on_slot(room_slot(room), |c: Conn| async move {
            let mut inv = self.depart.prepare_invoke();
            inv.key(members_key(room))
                .key(nicks_key(room))
                .arg(conn_id)
                .arg(nick);
            let mut conn = c.link.conn.clone();
            let (removed, left): (u64, u64) = self.timed(&c, inv.invoke_async(&mut conn)).await?;
            Ok((removed > 0, left))
        })
        .await
    }

    /// Claim `nick` in `room` for `owner` (`sub:<sub>`, `key:<nick_key>`
    /// or `conn:<conn_id>`), atomically: `Ok(None)` when claimed, or the
    /// holder's conn_id and presence entry when another owner's member
    /// holds it. `force` claims it whoever holds it (an authenticated
    /// member, or a holder the caller knows is on a dead instance).
    pub async fn claim_nick(
        &self,
        room: &str,
        nick: &str,
        owner: &str,
        conn_id: &str,
        force: bool,
    ) -> StoreResult<Option<(String, MemberEntry)>> {
        self.on_slot(room_slot(room), |c: Conn| async move {
            let mut inv = self.nick_claim.prepare_invoke();
            inv.key(members_key(room))
                .key(nicks_key(room))
                .arg(nick)
                .arg(owner)
                .arg(conn_id)
                .arg(if force { "1" } else { "0" });
            let mut conn = c.link.conn.clone();
            let held: Vec<String> = self.timed(&c, inv.invoke_async(&mut conn)).await?;
            let mut held = held.into_iter();
            Ok(match (held.next(), held.next()) {
                (Some(holder), Some(json)) => {
                    let entry = serde_json::from_str(&json)
                        .map_err(|e| StoreError::Reply(format!("presence entry: {e}")))?;
                    Some((holder, entry))
                }
                _ => None,
            })
        })
        .await
    }

    /// Every entry of a room's presence hash, stale ones included: O(members),
    /// for the sweep of dead instances' entries and the nick check of
    /// anonymous joins. Read with `HSCAN` in steps of 1000, so a big room is
    /// never one long `HGETALL` that blocks Redis.
    pub async fn members(&self, room: &str) -> StoreResult<Vec<(String, MemberEntry)>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, entries) = self.scan_members(room, cursor, 1000).await?;
            out.extend(
                entries
                    .into_iter()
                    .filter(|(id, _)| seen.insert(id.clone())),
            );
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// One `HSCAN` step over a room's presence hash: the next cursor (0
    /// when the scan is complete) and the entries of this step (stale ones
    /// included; an entry that is not valid JSON is skipped). `count` is
    /// Redis's hint of how many entries to look at.
    pub async fn scan_members(
        &self,
        room: &str,
        cursor: u64,
        count: usize,
    ) -> StoreResult<(u64, Vec<(String, MemberEntry)>)> {
        let (next, raw): (u64, Vec<(String, String)>) = self
            .query(
                room_slot(room),
                redis::cmd("HSCAN")
                    .arg(members_key(room))
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let entries = raw
            .into_iter()
            .filter_map(|(id, json)| serde_json::from_str(&json).ok().map(|e| (id, e)))
            .collect();
        Ok((next, entries))
    }

    /// How many entries a room's presence hash holds (stale ones included).
    pub async fn member_count(&self, room: &str) -> StoreResult<u64> {
        self.query(room_slot(room), redis::cmd("HLEN").arg(members_key(room)))
            .await
    }

    /// Refresh this instance's registry entry.
    pub async fn heartbeat(&self, info: &InstanceInfo, ttl: Duration) -> StoreResult<()> {
        let json = serde_json::to_string(info).map_err(|e| StoreError::Reply(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(instance_key(&info.app_id))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(INSTANCES_KEY)
            .arg(&info.app_id)
            .ignore();
        self.query_pipe::<()>(registry_slot(), &pipe).await
    }

    /// Remove this instance's registry entry (graceful shutdown).
    pub async fn deregister(&self, app_id: &str) -> StoreResult<()> {
        self.query::<i64>(registry_slot(), redis::cmd("DEL").arg(instance_key(app_id)))
            .await
            .map(drop)
    }

    /// Every live instance (heartbeat not expired), sorted by app_id.
    pub async fn instances(&self) -> StoreResult<Vec<InstanceInfo>> {
        let ids: Vec<String> = self
            .query(registry_slot(), redis::cmd("SMEMBERS").arg(INSTANCES_KEY))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| instance_key(id)).collect();
        let vals: Vec<Option<String>> = self
            .query(registry_slot(), redis::cmd("MGET").arg(&keys))
            .await?;
        let mut live: Vec<InstanceInfo> = vals
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        live.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        Ok(live)
    }
}
