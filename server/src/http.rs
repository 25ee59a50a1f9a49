//! HTTP routes: the WebSocket upgrade, health, metrics, the cluster view.
//! Handlers only check and upgrade; sessions live in [`crate::session`].

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_protocol::names::{validate_nick, validate_room};
use serde_json::json;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::session::{self, ConnectParams};
use crate::ws::handshake::check_request;
use crate::ws::{accept_key, WsStream};
use crate::AppState;

/// Every public route of the server; `/metrics` and `/cluster` only
/// when `with_admin` (no `--admin-listen`).
pub fn router(state: AppState, with_admin: bool) -> Router {
    let r = Router::new()
        .route("/", get(index))
        .route("/ws", get(upgrade))
        .route("/connect", get(connect))
        .route("/history", get(history))
        .route("/healthz", get(healthz));
    let r = if with_admin {
        r.route("/metrics", get(metrics))
            .route("/cluster", get(cluster))
    } else {
        r
    };
    r.with_state(state)
}

/// The routes of `--admin-listen`.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(state)
}

async fn upgrade(
    State(state): State<AppState>,
    Query(mut params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let key = match check_upgrade(req.method(), req.headers()) {
        Ok(key) => key,
        Err(resp) => return resp,
    };
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "instance is shutting down; reconnect\n",
        )
            .into_response();
    }
    match admit(&state, req.headers(), params.token.take()) {
        Ok(identity) => params.identity = identity.map(Box::new),
        Err(refusal) => {
            state
                .metrics
                .connections_rejected_bad_request
                .fetch_add(1, Relaxed);
            return refusal;
        }
    }
    if params.identity.is_some() {
        // The nick is the token's; a `?nick=` is ignored.
        params.nick = None;
    }
    let bad = params
        .room
        .as_deref()
        .map(validate_room)
        .and_then(Result::err)
        .or_else(|| {
            params
                .nick
                .as_deref()
                .map(validate_nick)
                .and_then(Result::err)
        })
        .or_else(|| {
            params
                .nick_key
                .as_deref()
                .map(validate_nick_key)
                .and_then(Result::err)
        });
    if let Some(why) = bad {
        state
            .metrics
            .connections_rejected_bad_request
            .fetch_add(1, Relaxed);
        return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let client = match peer {
        Some(peer) if state.per_ip.cap() > 0 => {
            crate::per_ip::client_ip(peer, req.headers(), &state.config.trusted_proxies)
        }
        _ => None,
    };
    let ip_slot = match client.map(|ip| (ip, state.per_ip.acquire(ip))) {
        None => None,
        Some((_, Ok(slot))) => slot,
        Some((ip, Err(()))) => {
            state
                .metrics
                .connections_rejected_per_ip
                .fetch_add(1, Relaxed);
            let msg = format!(
                "too many connections from {ip}: at most {} per address on this instance\n",
                state.per_ip.cap()
            );
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "5")],
                msg,
            )
                .into_response();
        }
    };
    let Ok(permit) = state.conn_limit.clone().try_acquire_owned() else {
        state
            .metrics
            .connections_rejected_full
            .fetch_add(1, Relaxed);
        let msg = format!(
            "instance {} is full ({} connections); try again\n",
            state.app_id, state.max_connections
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            msg,
        )
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let params = Box::new(params);
    let tracker = state.tracker.clone();
    // The upgrade waits in a task of its own, which hands the connection
    // to a new task and ends: the session's task then holds the session
    // alone, not also what the upgrade needed (its future was part of
    // every idle connection's memory).
    let upgrade = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // axum::serve hands hyper a TokioIo<TcpStream>: take the socket
        // back so frames can be written with writev and no extra buffers.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                limit_send_buffer(&tcp, state.config.socket_send_buffer);
                let ws = WsStream::new(tcp, parts.read_buf, state.config.max_frame_bytes);
                // The address's slot is held as long as the connection.
                let session = session::run(state.clone(), ws, params, permit, ip_slot);
                state.tracker.spawn(session);
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream; closing it"),
        }
    };
    tracker.spawn(upgrade);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()))
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// Who a request is, or the refusal: its `Origin` must be allowed (else
/// 403) and its token (`token`, else `Authorization: Bearer`) valid, or
/// absent where the auth mode allows that (else 401). The upgrade and
/// `GET /history` both ask this.
#[allow(clippy::result_large_err)] // built once per refused request
fn admit(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<String>,
) -> Result<Option<crate::auth::Identity>, Response> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !state.auth.origin_allowed(origin.as_deref()) {
        let origin = origin.unwrap_or_default();
        return Err((
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed\n"),
        )
            .into_response());
    }
    let token = token.or_else(|| bearer(headers).map(str::to_owned));
    state
        .auth
        .identify(token.as_deref())
        .map_err(|why| (StatusCode::UNAUTHORIZED, format!("401 {why}\n")).into_response())
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Fix the socket's kernel send buffer (`--socket-send-buffer`; 0 keeps
/// autotuning). Autotuned, a client that stops reading lets the kernel
/// queue up to `tcp_wmem` max (4 MiB) for it before a write blocks and the
/// outbox starts counting toward the slow-consumer cut.
fn limit_send_buffer(tcp: &TcpStream, bytes: usize) {
    if bytes == 0 {
        return;
    }
    if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(bytes) {
        tracing::warn!(error = %e, bytes, "cannot set SO_SNDBUF; the kernel default applies");
    }
}

/// Check that a request is a WebSocket upgrade (RFC 6455 section 4.2.1,
/// GET only); returns its `Sec-WebSocket-Key`, or the response that
/// refuses it. The checks live in [`crate::ws::handshake`] (and are fuzzed
/// there); this only renders the refusal.
#[allow(clippy::result_large_err)] // built once per refused request
fn check_upgrade(method: &Method, h: &HeaderMap) -> Result<String, Response> {
    check_request(method, h).map_err(|r| {
        let mut resp = (r.status, r.reason).into_response();
        if let Some((name, value)) = r.header {
            resp.headers_mut()
                .insert(name, header::HeaderValue::from_static(value));
        }
        resp
    })
}

async fn healthz(State(state): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    // Up means more than connected: the subscription heard this
    // instance's own liveness probe within --probe-timeout.
    let subscriber_up = state.hub.live();
    let redis = tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await;
    let redis = match redis {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 1s".to_string()),
    };
    let draining = state.shutdown.is_cancelled();
    let ok = redis.is_ok() && subscriber_up && !draining;
    let body = json!({
        "status": if ok { "ok" } else if draining { "draining" } else { "unavailable" },
        "app_id": state.app_id,
        "redis": match &redis { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
        "subscriber": if subscriber_up { "up" } else { "down" },
        "connections": state.metrics.connections.load(Relaxed),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /connect`: the WebSocket URL of the least-loaded healthy instance,
/// from the registry, for clients that connect straight to it rather than
/// through the load balancer (seed 004's service registry).
///
/// Load is the connection count of each live registry entry (this
/// instance's own count is read live), plus the clients this instance sent
/// there since that entry was last reported, so that a burst of asks does
/// not send everyone to the same instance. Instances that are unhealthy,
/// draining or full are skipped; none left is 503.
async fn connect(State(state): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    let instances = match state.store.instances().await {
        Ok(i) => i,
        Err(e) => {
            let body = json!({"error": format!("instance registry unavailable: {e}")});
            return (StatusCode::SERVICE_UNAVAILABLE, no_store, Json(body)).into_response();
        }
    };
    let mine = state.metrics.connections.load(Relaxed);
    let pick = {
        let mut assigned = state.assigned.lock().unwrap_or_else(|p| p.into_inner());
        assigned.retain(|app, _| instances.iter().any(|i| i.app_id == *app));
        let best = instances
            .iter()
            .filter(|i| i.healthy && !i.public_url.is_empty())
            .map(|i| {
                let conns = if i.app_id == state.app_id {
                    mine
                } else {
                    i.connections
                };
                let sent = match assigned.get(&i.app_id) {
                    Some((beat, n)) if *beat == i.heartbeat_ms => *n,
                    _ => 0,
                };
                (i, conns, conns.saturating_add(sent))
            })
            .filter(|(i, conns, _)| i.max_connections == 0 || *conns < i.max_connections)
            .min_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.app_id.cmp(&b.0.app_id)));
        best.map(|(i, conns, load)| {
            let sent = load - conns;
            assigned.insert(i.app_id.clone(), (i.heartbeat_ms, sent.saturating_add(1)));
            (i.public_url.clone(), i.app_id.clone(), conns)
        })
    };
    match pick {
        Some((url, app_id, connections)) => (
            no_store,
            Json(json!({"url": url, "app_id": app_id, "connections": connections})),
        )
            .into_response(),
        None => {
            let body = json!({"error": "no healthy instance with room for a connection"});
            (StatusCode::SERVICE_UNAVAILABLE, no_store, Json(body)).into_response()
        }
    }
}

/// The query of `GET /history`.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    room: String,
    /// Messages below this offset (absent: the newest).
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    token: Option<String>,
}

/// Most messages one `GET /history` returns.
const HISTORY_MAX_LIMIT: u32 = 500;

/// `GET /history` requests served at once by this instance; more get 503
/// with `Retry-After`, so a flood of them cannot queue up work on Redis
/// and PostgreSQL that chatting members wait behind.
static HISTORY_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// `GET /history?room=R&before=OFFSET&limit=N`: pages back through a room,
/// newest page first. Answers `{"room", "messages": [message frames as
/// sent live, oldest first], "more"}`, where `more: false` means nothing
/// older exists. Reads Redis history and, with `--database-url`, the
/// archive, and merges them by offset (the archive may lag behind Redis,
/// and Redis no longer holds what the archive has). Access is checked
/// like the upgrade's: the token (`?token=` or Bearer), the Origin, and
/// private rooms.
async fn history(
    State(state): State<AppState>,
    Query(mut q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Response {
    let identity = match admit(&state, &headers, q.token.take()) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    if let Err(why) = validate_room(&q.room) {
        return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    }
    if let Err(why) = crate::auth::may_enter(identity.as_ref(), &q.room) {
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=HISTORY_MAX_LIMIT).contains(&limit) {
        let msg = format!("limit must be 1 to {HISTORY_MAX_LIMIT}\n");
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let Ok(_slot) = HISTORY_SLOTS.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many history requests at once on this instance; retry\n",
        )
            .into_response();
    };
    let room = q.room.as_str();
    let redis = state.store.history_before(room, q.before, limit);
    let archived = async {
        match &state.archive {
            Some(a) => a
                .before(room, q.before.unwrap_or(u64::MAX), limit)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (redis, archived) = tokio::join!(redis, archived);
    let unavailable = |what: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("history unavailable: {what}\n"),
        )
            .into_response()
    };
    let redis = match redis {
        Ok(r) => r,
        Err(e) => return unavailable(e.to_string()),
    };
    let archived = match archived {
        Ok(a) => a.unwrap_or_default(),
        Err(e) => return unavailable(e.to_string()),
    };
    // Newest first from both; one copy of each offset, the newest `limit`.
    let mut page: std::collections::BTreeMap<u64, bytes::Bytes> = archived
        .into_iter()
        .map(|(_, off, frame)| (off, frame))
        .collect();
    page.extend(redis);
    let messages: Vec<&bytes::Bytes> = page.values().rev().take(limit as usize).collect();
    let more = messages.len() >= limit as usize;
    let mut body = Vec::with_capacity(64 + messages.iter().map(|f| f.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"room\":");
    body.extend_from_slice(&serde_json::to_vec(room).unwrap_or_default());
    body.extend_from_slice(b",\"messages\":[");
    for (i, f) in messages.iter().rev().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(f);
    }
    body.extend_from_slice(format!("],\"more\":{more}}}").as_bytes());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.app_id),
    )
        .into_response()
}

async fn cluster(State(state): State<AppState>) -> Response {
    match state.store.instances().await {
        Ok(instances) => {
            let total: u64 = instances.iter().map(|i| i.connections).sum();
            Json(json!({
                "self": state.app_id,
                "instances": instances,
                "total_connections": total,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("instance registry unavailable: {e}")})),
        )
            .into_response(),
    }
}

async fn index(State(state): State<AppState>) -> String {
    format!(
        "chat server {app}\n\nConnect a WebSocket to /ws (query: room, nick, since, history).\n\
         From a browser console:\n  ws = new WebSocket(`ws://${{location.host}}/ws?room=lobby&nick=me`);\n  \
         ws.onmessage = e => console.log(e.data);\n  ws.send('hello everyone');\n\n\
         GET /healthz, /metrics, /cluster. Protocol: PROTOCOL.md in the repository.\n",
        app = state.app_id
    )
}

/// A `nick_key` is 8 to 64 of `[A-Za-z0-9_-]`: a client's secret, never
/// shown to anyone.
fn validate_nick_key(key: &str) -> Result<(), String> {
    let ok = (8..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("invalid nick_key: 8 to 64 of [A-Za-z0-9_-]".to_string())
    }
}
