//! HTTP routes: the WebSocket upgrade, health, metrics, the cluster view.
//! Handlers only check and upgrade; sessions live in [`crate::session`].

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_protocol::names::{validate_nick, validate_room};
use serde_json::json;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::session::{self, ConnectParams};
use crate::ws::{accept_key, WsStream};
use crate::AppState;

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(state)
}

async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let key = match check_upgrade(req.headers()) {
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
        });
    if let Some(why) = bad {
        state
            .metrics
            .connections_rejected_bad_request
            .fetch_add(1, Relaxed);
        return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    }
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
    let tracker = state.tracker.clone();
    let session = async move {
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
                let ws = WsStream::new(
                    parts.io.into_inner(),
                    parts.read_buf,
                    state.config.max_frame_bytes,
                );
                session::run(state, ws, params, permit).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream; closing it"),
        }
    };
    tracker.spawn(session);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()))
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// Check that a request is a WebSocket upgrade (RFC 6455 section 4.2.1);
/// returns its `Sec-WebSocket-Key`, or the response that refuses it.
#[allow(clippy::result_large_err)] // built once per refused request
fn check_upgrade(h: &HeaderMap) -> Result<String, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        let msg = "this endpoint speaks WebSocket: send an upgrade request (Connection: upgrade, Upgrade: websocket)\n";
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            msg,
        )
            .into_response());
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let msg = "unsupported WebSocket version: only 13 (RFC 6455)\n";
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            msg,
        )
            .into_response());
    }
    match h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        _ => Err((StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response()),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let subscriber_up = state.metrics.redis_subscriber_up.load(Relaxed) == 1;
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
