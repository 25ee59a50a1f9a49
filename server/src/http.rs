//! HTTP routes: the WebSocket upgrade, health, metrics, the cluster view.
//! Handlers only check and upgrade; sessions live in [`crate::session`].

use std::time::Duration;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_protocol::names::{validate_nick, validate_room};
use serde_json::json;

use crate::session::{self, ConnectParams};
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
    ws: WebSocketUpgrade,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
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
    let cfg = &state.config;
    let tracker = state.tracker.clone();
    ws.read_buffer_size(cfg.ws_read_buffer)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        // Frames up to 4x the limit are read whole and refused with 1009 and
        // a reason; only larger ones are cut off at the protocol layer.
        .max_frame_size(cfg.max_frame_bytes.saturating_mul(4))
        .max_message_size(cfg.max_frame_bytes.saturating_mul(4))
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(session::run(state, socket, params, permit)))
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
