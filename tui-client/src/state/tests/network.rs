//! App-state tests of what network events do: unread counts, resume and
//! dedup as the user sees them, reconnect notices, presence and errors.

use std::time::Duration;

use chat_protocol::{ErrorCode, Member, PresenceEvent, ServerFrame};

use super::*;

#[test]
fn unread_counts_only_new_messages_in_other_rooms() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    // A fresh join with history: replay up to the head is not unread.
    a.update(frame(ServerFrame::Joined {
        room: "rust".into(),
        head: 10,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(alt('1'));
    for o in 8..=10 {
        a.update(msg("rust", o, "bob", "old"));
    }
    assert_eq!(a.rooms[1].unread, 0);
    a.update(msg("rust", 11, "bob", "new"));
    a.update(msg("rust", 12, "bob", "hey alice, look"));
    a.update(msg("rust", 13, "alice", "my own line"));
    a.update(msg("lobby", 1, "bob", "in the room shown"));
    assert_eq!((a.rooms[1].unread, a.rooms[1].mentions), (2, 1));
    assert_eq!(a.rooms[0].unread, 0);
    a.update(alt('2'));
    assert_eq!((a.rooms[1].unread, a.rooms[1].mentions), (0, 0));
}

#[test]
fn mentions_are_whole_words() {
    assert!(mentions("hi Alice!", "alice"));
    assert!(mentions("alice: ping", "alice"));
    assert!(!mentions("malice", "alice"));
    assert!(!mentions("alice_2 here", "alice"));
    assert!(!mentions("anything", ""));
}

#[test]
fn reconnecting_to_another_instance_says_so_everywhere_and_keeps_the_rooms() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(msg("lobby", 5, "bob", "before"));
    let now = a.now;
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "connection lost".into(),
        retry_in: Some(Duration::from_millis(1500)),
        attempt: 1,
    }));
    assert_eq!(
        a.conn,
        ConnStatus::Reconnecting {
            attempt: 1,
            at: now + Duration::from_millis(1500),
            reason: "connection lost".into()
        }
    );
    assert!(a.rtt.is_none());
    assert!(texts(&a, 0)
        .iter()
        .any(|t| t.contains("disconnected from app1")));
    // A second failed attempt adds no line: the status bar counts.
    let n = a.rooms[0].lines.len();
    a.update(Event::Net(NetEvent::Connecting { attempt: 1 }));
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "refused".into(),
        retry_in: Some(Duration::from_secs(1)),
        attempt: 2,
    }));
    assert_eq!(a.rooms[0].lines.len(), n);
    a.update(Event::Net(welcome("app2")));
    assert_eq!(a.conn, ConnStatus::Connected);
    assert_eq!(a.app_id.as_deref(), Some("app2"));
    assert_eq!(a.prev_app_id.as_deref(), Some("app1"));
    for i in 0..2 {
        assert!(
            texts(&a, i)
                .iter()
                .any(|t| t == "reconnected: now on app2, was app1"),
            "{:?}",
            texts(&a, i)
        );
    }
    // Resume replay overlapping what was seen is not shown again.
    a.update(msg("lobby", 5, "bob", "before"));
    a.update(msg("lobby", 6, "bob", "missed while away"));
    let before: Vec<_> = texts(&a, 0).into_iter().filter(|t| t == "before").collect();
    assert_eq!(before.len(), 1);
    assert!(texts(&a, 0).contains(&"missed while away".to_string()));
    // Same instance again: no "was".
    a.update(Event::Net(welcome("app2")));
    assert_eq!(last_text(&a), "reconnected to app2");
}

#[test]
fn offline_is_reported_once_with_what_to_do() {
    let mut a = app();
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "closed by the server: 1008 policy".into(),
        retry_in: None,
        attempt: 1,
    }));
    assert!(matches!(a.conn, ConnStatus::Offline { .. }));
    assert_eq!(
        type_line(&mut a, "/reconnect"),
        vec![Action::Net(Request::Reconnect)]
    );
}

#[test]
fn gaps_are_shown_never_silent() {
    let mut a = app();
    a.update(frame(ServerFrame::Gap {
        room: "lobby".into(),
        from: 1,
        to: 99,
    }));
    let l = a.room().lines.back().unwrap();
    assert_eq!(l.kind, LineKind::Gap);
    assert!(
        l.text.contains("99 message(s) missed here (offsets 1–99)"),
        "{}",
        l.text
    );
    a.update(msg("lobby", 50, "bob", "inside the gap"));
    assert_ne!(last_text(&a), "inside the gap");
    // A jump to a new offset base is not a count of messages.
    a.update(frame(ServerFrame::Gap {
        room: "lobby".into(),
        from: 100,
        to: 1_795_452_045_573_999,
    }));
    assert_eq!(
        last_text(&a),
        "messages may have been missed here: the server lost this room's history"
    );
}

#[test]
fn presence_updates_members_and_shows_lines() {
    let mut a = app();
    let m = |c: &str, n: &str| Member {
        conn_id: c.into(),
        nick: n.into(),
        app_id: "app3".into(),
        sub: None,
    };
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![m("c1", "alice"), m("c2", "bob")],
        total: 0,
    }));
    let presence = |event, conn: &str, nick: &str, old: Option<&str>| {
        frame(ServerFrame::Presence {
            room: "lobby".into(),
            event,
            conn_id: conn.into(),
            nick: nick.into(),
            app_id: "app3".into(),
            ts: 1_700_000_000_000,
            old_nick: old.map(str::to_string),
            sub: None,
        })
    };
    a.update(presence(PresenceEvent::Join, "c3", "carol", None));
    assert_eq!(a.room().members.len(), 3);
    assert_eq!(a.room().lines.back().unwrap().kind, LineKind::Join);
    assert!(last_text(&a).contains("carol joined lobby (via app3)"));
    a.update(presence(PresenceEvent::Nick, "c2", "robert", Some("bob")));
    assert!(last_text(&a).contains("bob is now known as robert"));
    a.update(presence(PresenceEvent::Leave, "c3", "carol", None));
    past_leave_grace(&mut a);
    assert_eq!(a.room().lines.back().unwrap().kind, LineKind::Leave);
    let nicks: Vec<_> = a.room().members.iter().map(|p| p.nick).collect();
    assert_eq!(nicks, vec!["alice", "robert"]);
    // /who asks the server and prints the answer.
    assert_eq!(
        type_line(&mut a, "/who"),
        vec![Action::Net(Request::Who(Some("lobby".into())))]
    );
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![m("c1", "alice"), m("c2", "robert")],
        total: 0,
    }));
    assert_eq!(last_text(&a), "2 in lobby: alice (app3), robert (app3)");
}

#[test]
fn send_errors_turn_the_pending_line_into_an_error() {
    let mut a = app();
    type_line(&mut a, "too fast");
    a.update(frame(ServerFrame::Error {
        code: ErrorCode::RateLimited,
        message: "slow down".into(),
        id: Some("t-1".into()),
    }));
    assert!(a.room().pending.is_empty());
    assert_eq!(
        last_text(&a),
        "not sent (rate_limited: slow down): too fast"
    );
    type_line(&mut a, "queued");
    a.update(Event::Net(NetEvent::SendFailed {
        id: "t-2".into(),
        room: "lobby".into(),
        reason: "256 messages are already waiting to be sent".into(),
    }));
    assert!(a.room().pending.is_empty());
}

#[test]
fn scrollback_stays_bounded_in_a_busy_room() {
    let mut a = app();
    for o in 1..=5000 {
        a.update(msg("lobby", o, "bob", "flood"));
    }
    assert_eq!(a.room().lines.len(), 1000);
    assert_eq!(a.room().last_offset, Some(5000));
}

#[test]
fn a_marker_shows_where_unread_lines_start() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(frame(ServerFrame::Joined {
        room: "rust".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(msg("rust", 1, "bob", "seen"));
    a.update(alt('1'));
    a.update(msg("rust", 2, "bob", "unread 1"));
    a.update(msg("rust", 3, "bob", "unread 2"));
    let kinds = |a: &App| -> Vec<LineKind> {
        a.rooms[1]
            .lines
            .iter()
            .rev()
            .take(3)
            .map(|l| l.kind.clone())
            .collect()
    };
    assert_eq!(kinds(&a)[2], LineKind::Marker);
    // Read, leave again, more news: one marker, moved down.
    a.update(alt('2'));
    a.update(alt('1'));
    a.update(msg("rust", 4, "bob", "unread 3"));
    let markers = a.rooms[1]
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Marker)
        .count();
    assert_eq!(markers, 1);
    assert_eq!(kinds(&a)[1], LineKind::Marker);
}

#[test]
fn without_epochs_offsets_going_backwards_are_reported_and_do_not_hide_new_messages() {
    let mut a = app();
    a.update(msg("lobby", 900, "bob", "old world"));
    a.update(Event::Net(welcome("app1")));
    // A server that names no epochs.
    a.update(frame(ServerFrame::Joined {
        room: "lobby".into(),
        head: 0,
        epoch: String::new(),
        recovered: None,
    }));
    assert!(last_text(&a).contains("history of this room was reset"));
    a.update(msg("lobby", 1, "bob", "new world"));
    assert_eq!(last_text(&a), "new world");
}

#[test]
fn big_rooms_hide_joins_and_leaves_of_silent_people() {
    let mut a = app();
    let members: Vec<Member> = (0..150)
        .map(|i| Member {
            conn_id: format!("c{i}"),
            nick: format!("bot{i}"),
            app_id: "app2".into(),
            sub: None,
        })
        .collect();
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members,
        total: 0,
    }));
    let presence = |event, conn: &str, nick: &str| {
        frame(ServerFrame::Presence {
            room: "lobby".into(),
            event,
            conn_id: conn.into(),
            nick: nick.into(),
            app_id: "app2".into(),
            ts: 1_700_000_000_000,
            old_nick: None,
            sub: None,
        })
    };
    let n = a.room().lines.len();
    a.update(presence(PresenceEvent::Join, "x1", "silent"));
    a.update(presence(PresenceEvent::Leave, "c3", "bot3"));
    assert_eq!(a.room().lines.len(), n, "silent people come and go quietly");
    assert_eq!(a.room().members.len(), 150);
    a.update(msg("lobby", 1, "bot7", "I speak"));
    a.update(presence(PresenceEvent::Leave, "c7", "bot7"));
    past_leave_grace(&mut a);
    assert!(last_text(&a).contains("bot7 left lobby"));
}

#[test]
fn replayed_mentions_do_not_ring() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(frame(ServerFrame::Joined {
        room: "rust".into(),
        head: 5,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.mentioned = false;
    a.update(msg("rust", 4, "bob", "alice: old news"));
    assert!(!a.mentioned);
    a.update(msg("rust", 6, "bob", "alice: new"));
    assert!(a.mentioned);
}

#[test]
fn alt_a_goes_to_mentions_first_then_unread() {
    let mut a = app();
    for r in ["b", "c", "d"] {
        type_line(&mut a, &format!("/join {r}"));
    }
    a.update(alt('1'));
    a.update(msg("b", 1, "bob", "news"));
    a.update(msg("d", 1, "bob", "alice: you there?"));
    a.update(alt('a'));
    assert_eq!(a.room().name, "d", "the mention first");
    a.update(alt('a'));
    assert_eq!(a.room().name, "b", "then unread");
    a.update(alt('a'));
    assert_eq!(a.room().name, "b", "nothing left: stay");
}

#[test]
fn tab_completes_rooms_after_switch() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(Event::Paste("/switch lo".into()));
    a.update(Event::Key(crossterm::event::KeyEvent::new(
        crossterm::event::KeyCode::Tab,
        crossterm::event::KeyModifiers::NONE,
    )));
    assert_eq!(a.input.text(), "/switch lobby ");
}

#[test]
fn lines_never_echoed_are_reported_after_a_while_connected() {
    let mut a = app();
    let t0 = a.now;
    type_line(&mut a, "into the void");
    // Disconnected time does not count.
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "x".into(),
        retry_in: Some(Duration::from_secs(1)),
        attempt: 1,
    }));
    a.update(Event::Tick(t0 + Duration::from_secs(40)));
    assert_eq!(a.room().pending.len(), 1);
    a.update(Event::Net(welcome("app2")));
    a.update(Event::Tick(t0 + Duration::from_secs(60)));
    assert_eq!(a.room().pending.len(), 1, "20 s on the new connection");
    a.update(Event::Tick(t0 + Duration::from_secs(71)));
    assert!(a.room().pending.is_empty());
    assert!(last_text(&a).starts_with("no confirmation from the server after 30s"));
    assert!(last_text(&a).ends_with("into the void"));
}

#[test]
fn date_separators_name_the_day_of_the_lines_that_follow() {
    let mut a = app();
    let day = 86_400_000;
    let at = |offset: u64, ts: u64| {
        frame(ServerFrame::Message(chat_protocol::ChatMessage {
            room: "lobby".into(),
            offset,
            epoch: "e1".into(),
            nick: "bob".into(),
            text: format!("m{offset}"),
            app_id: "app1".into(),
            ts,
            id: None,
            action: false,
        }))
    };
    // 1_700_000_000_000 is Tuesday 14 November 2023 (UTC); the app's clock
    // is pinned there, so its own notices are from that day.
    a.update(at(1, 1_700_000_000_000 - 3 * day));
    a.update(at(2, 1_700_000_000_000 - 3 * day + 1));
    a.update(at(3, 1_700_000_000_000));
    let days: Vec<String> = a
        .room()
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Day)
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(
        days,
        vec!["Saturday, 11 November 2023", "Tuesday, 14 November 2023"]
    );
}

#[test]
fn the_status_bar_says_why_it_is_not_connected() {
    use crate::view::status::{conn_reason, conn_text};
    let mut a = app();
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "not authorized (401): token expired".into(),
        retry_in: None,
        attempt: 1,
    }));
    assert_eq!(conn_text(&a).0, "○ offline (/reconnect)");
    assert_eq!(
        conn_reason(&a).as_deref(),
        Some("not authorized (401): token expired")
    );
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "connection lost".into(),
        retry_in: Some(Duration::from_secs(2)),
        attempt: 3,
    }));
    assert_eq!(conn_reason(&a).as_deref(), Some("connection lost"));
    // While the next attempt runs, the last failure stays in view.
    a.update(Event::Net(NetEvent::Connecting { attempt: 3 }));
    assert_eq!(conn_reason(&a).as_deref(), Some("connection lost"));
    a.update(Event::Net(welcome("app1")));
    assert_eq!(conn_reason(&a), None);
    assert!(a.last_failure.is_none());
    // Long reasons are cut.
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "x".repeat(200),
        retry_in: None,
        attempt: 1,
    }));
    assert_eq!(conn_reason(&a), Some(format!("{}…", "x".repeat(60))));
}

#[test]
fn errors_of_authenticated_servers_read_as_sentences() {
    let mut a = app();
    let err = |code, message: &str| {
        frame(ServerFrame::Error {
            code,
            message: message.into(),
            id: None,
        })
    };
    a.update(err(ErrorCode::Forbidden, "room vip is private"));
    assert_eq!(last_text(&a), "not allowed: room vip is private");
    a.update(err(ErrorCode::NickTaken, "ann is taken in lobby"));
    assert_eq!(last_text(&a), "nick taken: ann is taken in lobby");
    a.update(err(ErrorCode::Unauthorized, "token expired"));
    assert_eq!(
        last_text(&a),
        "not authorized (bad or expired token): token expired"
    );
    // A code newer than the protocol crate, as the network passes it on.
    a.update(err(ErrorCode::Unknown, "nick_taken: bob is taken"));
    assert_eq!(last_text(&a), "nick taken: bob is taken");
    a.update(err(ErrorCode::Unknown, "something odd"));
    assert_eq!(last_text(&a), "unknown: something odd");
    // The others as before.
    a.update(err(ErrorCode::NotInRoom, "join it first"));
    assert_eq!(last_text(&a), "not_in_room: join it first");
}
