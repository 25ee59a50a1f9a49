//! App-state tests of what issue 7's faults look like to the user: epochs
//! (a `reset`, a resume into another epoch), sends retried after `timeout`
//! and answered `sent` as duplicates, unique message ids, and presence
//! across a failover (`gone`).
//!
//! Where the network session decides what reaches the UI, frames go
//! through a real [`Session`] first, as the network actor does.

use chat_protocol::{ChatMessage, ErrorCode, Member, PresenceEvent, ServerFrame};

use super::*;
use crate::net::session::Session;

fn msg_in(room: &str, epoch: &str, offset: u64, nick: &str, text: &str) -> Event {
    frame(ServerFrame::Message(ChatMessage {
        room: room.into(),
        offset,
        epoch: epoch.into(),
        nick: nick.into(),
        text: text.into(),
        app_id: "app2".into(),
        ts: 1_700_000_000_000,
        id: None,
        action: false,
    }))
}

fn own_msg(offset: u64, id: &str, text: &str) -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: "lobby".into(),
        offset,
        epoch: "e1".into(),
        nick: "alice".into(),
        text: text.into(),
        app_id: "app1".into(),
        ts: 1_700_000_000_000,
        id: Some(id.into()),
        action: false,
    })
}

fn joined_in(epoch: &str, head: u64, recovered: Option<bool>) -> Event {
    frame(ServerFrame::Joined {
        room: "lobby".into(),
        head,
        epoch: epoch.into(),
        recovered,
    })
}

fn reset(epoch: &str, previous: &str, last: u64) -> Event {
    frame(ServerFrame::Reset {
        room: "lobby".into(),
        epoch: epoch.into(),
        previous: previous.into(),
        last,
    })
}

/// A frame as the network actor handles it: the session learns from it
/// and the UI sees it only if the session lets it through.
fn through(s: &mut Session, a: &mut App, f: ServerFrame) {
    if s.observe(&f) {
        a.update(frame(f));
    }
}

fn count(a: &App, text: &str) -> usize {
    texts(a, 0).iter().filter(|t| *t == text).count()
}

const RESTARTED: &str = "server restarted its history: messages after #501 may be lost";

#[test]
fn a_reset_is_announced_once_and_the_new_epoch_is_shown() {
    let mut a = app();
    a.update(msg_in("lobby", "e1", 501, "bob", "before"));
    a.update(reset("e2", "e1", 501));
    let l = a.room().lines.back().unwrap();
    assert_eq!(
        (l.kind.clone(), l.text.as_str()),
        (LineKind::Gap, RESTARTED)
    );
    // Lower offsets in the new epoch are new, not duplicates.
    a.update(msg_in("lobby", "e2", 12, "bob", "after"));
    assert_eq!(last_text(&a), "after");
    a.update(msg_in("lobby", "e2", 12, "bob", "after"));
    assert_eq!(count(&a, "after"), 1);
    // The same reset again (another instance's copy) says nothing more.
    a.update(reset("e2", "e1", 501));
    assert_eq!(count(&a, RESTARTED), 1);
}

#[test]
fn a_message_of_another_epoch_is_adopted_quietly() {
    // Replay that crosses an epoch: no reset comes, nothing is dropped.
    let mut a = app();
    a.update(msg_in("lobby", "e1", 900, "bob", "old"));
    a.update(msg_in("lobby", "e2", 5, "bob", "new"));
    assert_eq!(last_text(&a), "new");
    assert_eq!(a.room().epoch, "e2");
    assert!(!texts(&a, 0)
        .iter()
        .any(|t| t.starts_with("server restarted")));
}

#[test]
fn a_resume_that_did_not_recover_says_so() {
    let mut a = app();
    a.update(msg_in("lobby", "e1", 501, "bob", "before"));
    a.update(Event::Net(welcome("app2")));
    a.update(joined_in("e2", 40, Some(false)));
    assert_eq!(last_text(&a), RESTARTED);
    assert_eq!(a.room().lines.back().unwrap().kind, LineKind::Gap);
    // What history held after 501 still comes, then the new epoch.
    a.update(msg_in("lobby", "e1", 502, "bob", "kept"));
    a.update(msg_in("lobby", "e2", 39, "bob", "new"));
    assert_eq!(texts(&a, 0)[texts(&a, 0).len() - 2..], ["kept", "new"]);
    // A server that does not read the resume's epoch cannot say
    // `recovered: false`, but `joined` names another epoch: that is
    // enough.
    a.update(Event::Net(welcome("app3")));
    a.update(joined_in("e3", 60, Some(true)));
    assert_eq!(
        last_text(&a),
        "server restarted its history: messages after #39 may be lost"
    );
    // A resume in the same epoch is quiet.
    a.update(Event::Net(welcome("app1")));
    a.update(joined_in("e3", 60, Some(true)));
    assert_eq!(last_text(&a), "reconnected: now on app1, was app3");
}

#[test]
fn a_timeout_retried_then_sent_as_duplicate_shows_one_line() {
    // The delivery of the first try comes after the `sent`, or before it:
    // either way, one line.
    for delivery_first in [false, true] {
        let mut a = app();
        let mut s = Session::new("alice", "lobby", 0);
        s.on_connected();
        through(
            &mut s,
            &mut a,
            ServerFrame::Joined {
                room: "lobby".into(),
                head: 10,
                epoch: "e1".into(),
                recovered: None,
            },
        );
        let actions = type_line(&mut a, "once only");
        let Some(Action::Net(Request::Send { id, text, room, .. })) = actions.first().cloned()
        else {
            panic!("{actions:?}");
        };
        s.enqueue(crate::net::session::Outgoing::new(&id, &room, &text, false))
            .unwrap();
        assert!(s.next_sendable(a.now).is_some());
        through(
            &mut s,
            &mut a,
            ServerFrame::Error {
                code: ErrorCode::Timeout,
                message: "redis did not answer in time".into(),
                id: Some(id.clone()),
            },
        );
        assert_eq!(a.room().pending.len(), 1, "still sending, no error shown");
        assert!(!texts(&a, 0).iter().any(|t| t.contains("timeout")));
        // The retry, with the same id.
        let due = s.next_retry(std::time::Instant::now()).unwrap();
        match s.next_sendable(due) {
            Some(chat_protocol::ClientFrame::Send { id: Some(i), .. }) => assert_eq!(i, id),
            other => panic!("{other:?}"),
        }
        let sent = ServerFrame::Sent {
            room: "lobby".into(),
            id: id.clone(),
            offset: 11,
            epoch: "e1".into(),
            duplicate: true,
        };
        if delivery_first {
            through(&mut s, &mut a, own_msg(11, &id, "once only"));
            through(&mut s, &mut a, sent);
        } else {
            through(&mut s, &mut a, sent);
            assert_eq!(a.room().pending.len(), 1, "shown as sent until it comes");
            assert!(matches!(
                a.room().pending[0].kind,
                LineKind::Pending {
                    confirmed: Some(11),
                    ..
                }
            ));
            through(&mut s, &mut a, own_msg(11, &id, "once only"));
        }
        assert!(a.room().pending.is_empty());
        assert!(s.outbox.is_empty());
        // A resume replaying it changes nothing.
        s.on_connected();
        through(&mut s, &mut a, own_msg(11, &id, "once only"));
        assert_eq!(
            count(&a, "once only"),
            1,
            "delivery first: {delivery_first}"
        );
        let l = a.room().lines.back().unwrap();
        assert_eq!(l.offset, Some(11));
        assert!(matches!(l.kind, LineKind::Message { own: true, .. }));
    }
}

#[test]
fn a_confirmed_line_whose_delivery_fell_into_a_gap_still_shows_once() {
    let mut a = app();
    type_line(&mut a, "lost in transit");
    a.update(frame(ServerFrame::Sent {
        room: "lobby".into(),
        id: "t-1".into(),
        offset: 11,
        epoch: "e1".into(),
        duplicate: true,
    }));
    a.update(msg_in("lobby", "e1", 10, "bob", "before it"));
    assert_eq!(a.room().pending.len(), 1);
    a.update(frame(ServerFrame::Gap {
        room: "lobby".into(),
        from: 11,
        to: 12,
    }));
    assert!(a.room().pending.is_empty());
    assert_eq!(last_text(&a), "lost in transit");
    assert_eq!(a.room().lines.back().unwrap().offset, Some(11));
    a.update(msg_in("lobby", "e1", 13, "bob", "after it"));
    assert_eq!(count(&a, "lost in transit"), 1);
}

#[test]
fn a_send_that_timed_out_for_good_is_not_called_unsent() {
    let mut a = app();
    type_line(&mut a, "maybe");
    a.update(frame(ServerFrame::Error {
        code: ErrorCode::Timeout,
        message: "redis did not answer".into(),
        id: Some("t-1".into()),
    }));
    assert!(a.room().pending.is_empty());
    assert!(
        last_text(&a).starts_with("maybe not sent (timeout"),
        "{}",
        last_text(&a)
    );
}

#[test]
fn message_ids_differ_across_runs_and_fit_the_protocol() {
    let run = || {
        let settings = Settings {
            url: "ws://127.0.0.1:1/ws".into(),
            nick: "alice".into(),
            room: "lobby".into(),
            more_rooms: Vec::new(),
            scrollback: 100,
            clock: Clock::fixed(1_700_000_000_000),
            id_prefix: new_id_prefix(),
        };
        let mut a = App::new(settings, Rect::new(0, 0, 80, 24), Instant::now());
        a.update(Event::Net(welcome("app1")));
        let mut ids = Vec::new();
        for text in ["first", "second"] {
            for action in type_line(&mut a, text) {
                if let Action::Net(Request::Send { id, .. }) = action {
                    ids.push(id);
                }
            }
        }
        ids
    };
    let (one, two) = (run(), run());
    assert_eq!((one.len(), two.len()), (2, 2));
    assert_ne!(one[0], one[1]);
    assert_ne!(one[0], two[0], "a restarted client's first id is new");
    for id in one.iter().chain(&two) {
        chat_protocol::names::validate_id(id).unwrap();
        let (prefix, n) = id.split_once('-').unwrap();
        assert_eq!(prefix.len(), 8, "{id}");
        assert!(prefix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert!(n.parse::<u64>().is_ok(), "{id}");
    }
}

#[test]
fn presence_across_a_failover_shows_each_person_once() {
    let mut a = app();
    let m = |c: &str, n: &str, app: &str| Member {
        conn_id: c.into(),
        nick: n.into(),
        app_id: app.into(),
        sub: None,
    };
    let presence = |event, conn: &str, nick: &str, app: &str| {
        frame(ServerFrame::Presence {
            room: "lobby".into(),
            event,
            conn_id: conn.into(),
            nick: nick.into(),
            app_id: app.into(),
            ts: 1_700_000_000_000,
            old_nick: None,
            sub: None,
        })
    };
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![m("app1-1", "alice", "app1"), m("app1-2", "bob", "app1")],
        total: 2,
    }));
    let lines = a.room().lines.len();
    // app1 is killed. bob reconnects to app2 before the cluster notices
    // that his app1 connection is gone: no "joined".
    a.update(presence(PresenceEvent::Join, "app2-7", "bob", "app2"));
    assert_eq!(a.room().lines.len(), lines, "{:?}", texts(&a, 0));
    assert_eq!(a.room().members.count(), 2);
    // We reconnect too (to app3); the members frame still lists the dead
    // connections beside the new ones.
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app3".into(),
        conn_id: "app3-4".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![
            m("app1-1", "alice", "app1"),
            m("app1-2", "bob", "app1"),
            m("app2-7", "bob", "app2"),
            m("app3-4", "alice", "app3"),
        ],
        total: 4,
    }));
    let nicks: Vec<_> = a.room().members.iter().map(|p| p.nick).collect();
    assert_eq!(nicks, vec!["alice", "bob"]);
    let lines = a.room().lines.len();
    // The dead connections are announced `gone`: dropped, nothing said.
    a.update(presence(PresenceEvent::Gone, "app1-1", "alice", "app1"));
    a.update(presence(PresenceEvent::Gone, "app1-2", "bob", "app1"));
    assert_eq!(a.room().lines.len(), lines);
    assert_eq!(a.room().members.connections(), 2);
    type_line(&mut a, "/who");
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![m("app2-7", "bob", "app2"), m("app3-4", "alice", "app3")],
        total: 2,
    }));
    assert_eq!(last_text(&a), "2 in lobby: alice (app3), bob (app2)");
    // bob has two clients open; closing one is not a leave, the last is.
    a.update(presence(PresenceEvent::Join, "app1-9", "bob", "app1"));
    a.update(presence(PresenceEvent::Leave, "app2-7", "bob", "app2"));
    assert_eq!(a.room().lines.len(), lines + 1, "only the /who answer");
    a.update(presence(PresenceEvent::Leave, "app1-9", "bob", "app1"));
    past_leave_grace(&mut a);
    assert_eq!(last_text(&a), "bob left lobby");
    assert_eq!(a.room().members.count(), 1);
}
