//! Sending chat text: the checks, then the publish that runs alongside the
//! connection's other sends (see DELIVERY.md, rule 9).

use std::sync::atomic::Ordering::Relaxed;

use chat_protocol::names::validate_id;
use chat_protocol::splice::{encode_tail, MessageTail};
use chat_protocol::{ErrorCode, ServerFrame};

use super::{SendJob, Session};
use crate::session::{Conn, End};

impl Session {
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
        // Unconstrained: tokio's cooperative budget must not stall a send
        // the session polls among its other work (the session runs a
        // connection's sends one at a time, in order: DELIVERY.md rule 9).
        // Each job does a bounded amount of work, so it cannot starve the
        // task.
        Ok(Some(Box::pin(tokio::task::coop::unconstrained(publish(
            state, room, tail, nick, id,
        )))))
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
