//! The instance registry: a heartbeat in Redis that expires, so `/cluster`
//! lists live instances and presence forgets members of dead ones.
//!
//! When an instance disappears (its heartbeat expired: killed, or cut off),
//! the survivors remove its members from the rooms they share and announce
//! the leaves. Removal is an `HDEL`, so exactly one survivor announces each.
//!
//! An instance counts as dead only once it has been missing for two of our
//! beats in a row: when Redis stalls (SIGSTOP, a long fork) every heartbeat
//! expires at once, and the first instance to beat afterwards must not
//! declare the others dead before they had a chance to beat again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use chat_protocol::{PresenceEvent, ServerFrame};

use crate::store::InstanceInfo;
use crate::AppState;

/// How soon a changed connection count reaches the registry.
const LOAD_REPORT: std::time::Duration = std::time::Duration::from_millis(200);

/// This instance's registry entry now.
fn info(state: &AppState, connections: u64, healthy: bool) -> InstanceInfo {
    InstanceInfo {
        app_id: state.app_id.clone(),
        boot: state.boot.clone(),
        listen: state.config.listen.to_string(),
        connections,
        rooms: state.metrics.rooms.load(Relaxed),
        started_ms: state.started_ms,
        heartbeat_ms: crate::now_ms(),
        public_url: state.config.public_url(),
        max_connections: state.max_connections as u64,
        healthy: healthy && !state.shutdown.is_cancelled(),
    }
}

/// Heartbeat until shutdown, then deregister.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(state.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    // Boot id -> the beat it was last seen live at.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut replacements = state.store.redis_replacements();
    // Between beats, a changed connection count or health is reported
    // within LOAD_REPORT, so that `/connect` sends new clients elsewhere
    // soon (and to a new instance as soon as its subscription is live).
    let mut report = tokio::time::interval(LOAD_REPORT);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = (u64::MAX, false);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = report.tick() => {
                let now = (state.metrics.connections.load(Relaxed), state.hub.live());
                if now != reported {
                    reported = now;
                    let (now, healthy) = now;
                    let info = info(&state, now, healthy);
                    if let Err(e) = state.store.heartbeat(&info, state.config.instance_ttl).await {
                        tracing::debug!(error = %e, "load report failed");
                    }
                }
                continue;
            }
        }
        beats += 1;
        // A replaced Redis may have lost every presence entry: each
        // session records its own again.
        let now = state.store.redis_replacements();
        if now != replacements {
            replacements = now;
            tracing::info!("redis was replaced: recording presence again");
            state.sessions.refresh_all();
        }
        if let Err(e) = beat(&state, beats, &mut seen).await {
            tracing::warn!(error = %e, "instance heartbeat failed");
        }
    }
    if let Err(e) = state.store.deregister(&state.app_id).await {
        tracing::debug!(error = %e, "cannot deregister");
    }
}

async fn beat(
    state: &AppState,
    beats: u64,
    seen: &mut HashMap<String, u64>,
) -> Result<(), crate::store::StoreError> {
    let info = info(
        state,
        state.metrics.connections.load(Relaxed),
        state.hub.live(),
    );
    state
        .store
        .heartbeat(&info, state.config.instance_ttl)
        .await?;
    for i in state.store.instances().await? {
        seen.insert(i.boot, beats);
    }
    // Live: seen at this beat or the one before (see the module docs).
    seen.retain(|_, at| beats.saturating_sub(*at) < 100);
    let live: HashSet<String> = seen
        .iter()
        .filter(|(_, at)| beats.saturating_sub(**at) <= 1)
        .map(|(b, _)| b.clone())
        .collect();
    let previous = state.set_live(Arc::new(live.clone()));
    let lost_one = previous.iter().any(|b| !live.contains(b));
    // Sweep when someone vanished, and now and then for stragglers (an
    // instance that died before this one started).
    if lost_one || beats % 15 == 1 {
        sweep(state, &live).await;
    }
    Ok(())
}

/// Remove members of dead instances from the rooms with local members.
async fn sweep(state: &AppState, live: &HashSet<String>) {
    for room in state.hub.room_names() {
        let Ok(members) = state.store.members(&room).await else {
            continue;
        };
        let alive = |e: &crate::store::MemberEntry| live.contains(&e.boot) || e.boot == state.boot;
        // Nicks still in the room through a live connection: a member who
        // reconnected elsewhere before its old instance was declared dead
        // did not leave.
        let present: std::collections::HashSet<&str> = members
            .iter()
            .filter(|(_, e)| alive(e))
            .map(|(_, e)| e.nick.as_str())
            .collect();
        for (conn_id, e) in &members {
            if alive(e) {
                continue;
            }
            if let Ok((true, left)) = state.store.remove_member(&room, conn_id, &e.nick).await {
                if left >= state.config.presence_max_members {
                    continue;
                }
                let event = if present.contains(e.nick.as_str()) {
                    PresenceEvent::Gone
                } else {
                    PresenceEvent::Leave
                };
                tracing::info!(room = %room, conn_id, app_id = e.app_id, ?event, "removing member of a dead instance");
                let frame = ServerFrame::Presence {
                    room: room.to_string(),
                    event,
                    conn_id: conn_id.clone(),
                    nick: e.nick.clone(),
                    app_id: e.app_id.clone(),
                    ts: crate::now_ms(),
                    old_nick: None,
                    sub: e.sub.clone(),
                }
                .to_json();
                let _ = state.store.publish_raw(&room, &frame).await;
            }
        }
    }
}
