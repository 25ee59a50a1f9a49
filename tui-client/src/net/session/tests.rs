//! Resume and deduplication rules of [`Session`].

use std::time::Instant;

use chat_protocol::{ChatMessage, ClientFrame, ErrorCode, ServerFrame};

use super::*;

fn msg(room: &str, offset: u64, id: Option<&str>) -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: room.into(),
        offset,
        nick: "ann".into(),
        text: format!("m{offset}"),
        app_id: "app1".into(),
        ts: 0,
        id: id.map(str::to_string),
        action: false,
    })
}

fn joined(room: &str, head: u64) -> ServerFrame {
    ServerFrame::Joined {
        room: room.into(),
        head,
    }
}

fn out(id: &str, room: &str) -> Outgoing {
    Outgoing::new(id, room, "hi", false)
}

#[test]
fn first_connect_asks_for_history_then_resumes_from_the_last_offset() {
    let mut s = Session::new("alice", "lobby", 50);
    assert_eq!(
        s.connect_params(),
        vec![
            ("nick", "alice".to_string()),
            ("room", "lobby".to_string()),
            ("history", "50".to_string())
        ]
    );
    s.on_connected();
    s.observe(&joined("lobby", 100));
    // Replay of the last 50 (51..=100) is shown, not dropped.
    assert!(s.observe(&msg("lobby", 51, None)));
    assert!(s.observe(&msg("lobby", 52, None)));
    assert_eq!(s.connect_params()[2], ("since", "52".to_string()));
}

#[test]
fn replay_works_with_sparse_offsets() {
    // Offsets only need to increase: a server may derive them from time.
    let mut s = Session::new("alice", "lobby", 50);
    s.on_connected();
    s.observe(&joined("lobby", 1_795_449_438_079_020));
    assert!(!s.room("lobby").unwrap().caught_up(Instant::now()));
    assert!(s.observe(&msg("lobby", 1_795_449_438_000_000, None)));
    assert!(s.observe(&msg("lobby", 1_795_449_438_079_020, None)));
    assert!(s.room("lobby").unwrap().caught_up(Instant::now()));
    assert!(!s.observe(&msg("lobby", 1_795_449_438_079_020, None)));
}

#[test]
fn a_fresh_join_without_history_starts_at_the_head() {
    let mut s = Session::new("alice", "lobby", 0);
    assert_eq!(s.connect_params().len(), 2, "no history parameter");
    s.on_connected();
    s.observe(&joined("lobby", 7));
    assert_eq!(s.room("lobby").unwrap().last, Some(7));
    assert!(s.room("lobby").unwrap().caught_up(Instant::now()));
}

#[test]
fn duplicates_are_dropped_per_room() {
    let mut s = Session::new("alice", "a", 0);
    s.join("b");
    s.on_connected();
    s.observe(&joined("a", 0));
    s.observe(&joined("b", 0));
    assert!(s.observe(&msg("a", 1, None)));
    assert!(s.observe(&msg("a", 2, None)));
    assert!(!s.observe(&msg("a", 2, None)), "same offset twice");
    assert!(!s.observe(&msg("a", 1, None)), "older offset");
    assert!(s.observe(&msg("b", 1, None)), "offsets are per room");
    assert!(s.observe(&msg("a", 3, None)));
}

#[test]
fn every_room_resumes_from_its_own_offset_after_a_reconnect() {
    let mut s = Session::new("alice", "a", 10);
    assert!(s.join("b").is_some());
    assert!(s.join("b").is_none(), "joining twice sends nothing");
    s.join("c");
    s.on_connected();
    s.observe(&joined("a", 5));
    s.observe(&joined("b", 0));
    s.observe(&joined("c", 40));
    s.observe(&msg("a", 6, None));
    s.observe(&msg("b", 1, None));
    // Disconnect, reconnect: the URL resumes `a`, joins resume `b` and `c`.
    assert_eq!(s.connect_params()[2], ("since", "6".to_string()));
    let joins = s.on_connected();
    assert_eq!(
        joins,
        vec![
            ClientFrame::Join {
                room: "b".into(),
                since: Some(1),
                history: None
            },
            // Joined with replay but nothing arrived yet: resume from the
            // start, which the server answers with its history (or a gap).
            ClientFrame::Join {
                room: "c".into(),
                since: Some(0),
                history: None
            },
        ]
    );
    // The replay after the resume overlaps what was seen: no duplicates.
    s.observe(&joined("a", 8));
    assert!(!s.observe(&msg("a", 6, None)));
    assert!(s.observe(&msg("a", 7, None)));
    assert!(s.observe(&msg("a", 8, None)));
}

#[test]
fn a_gap_moves_the_resume_point_past_the_hole() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 3));
    s.observe(&ServerFrame::Gap {
        room: "a".into(),
        from: 4,
        to: 900,
    });
    assert_eq!(s.room("a").unwrap().last, Some(900));
    assert!(!s.observe(&msg("a", 900, None)));
    assert!(s.observe(&msg("a", 901, None)));
}

#[test]
fn unconfirmed_sends_wait_for_catch_up_and_are_not_sent_twice() {
    let mut s = Session::new("alice", "a", 0);
    s.enqueue(out("c1", "a")).unwrap();
    assert!(
        s.next_sendable(Instant::now()).is_none(),
        "not connected yet"
    );
    s.on_connected();
    s.observe(&joined("a", 10));
    let f = s.next_sendable(Instant::now()).expect("caught up: send");
    assert!(matches!(f, ClientFrame::Send { id: Some(ref i), .. } if i == "c1"));
    assert!(
        s.next_sendable(Instant::now()).is_none(),
        "written once per connection"
    );
    s.enqueue(out("c2", "a")).unwrap();
    assert!(s.next_sendable(Instant::now()).is_some());

    // The socket drops before either is echoed. On the new connection the
    // room is behind its head: nothing is resent yet.
    s.on_connected();
    s.observe(&joined("a", 11));
    assert!(!s.has_sendable(Instant::now()));
    // The replay shows the server did accept c1 before the drop...
    assert!(s.observe(&msg("a", 11, Some("c1"))));
    // ...so only c2 goes again.
    match s.next_sendable(Instant::now()) {
        Some(ClientFrame::Send { id: Some(id), .. }) => assert_eq!(id, "c2"),
        other => panic!("expected c2, got {other:?}"),
    }
    assert!(s.next_sendable(Instant::now()).is_none());
    assert!(s.observe(&msg("a", 12, Some("c2"))));
    assert!(s.outbox.is_empty());
}

#[test]
fn errors_and_leaves_drop_sends() {
    let mut s = Session::new("alice", "a", 0);
    s.join("b");
    s.enqueue(out("c1", "a")).unwrap();
    s.enqueue(out("c2", "b")).unwrap();
    s.observe(&ServerFrame::Error {
        code: ErrorCode::RateLimited,
        message: "slow down".into(),
        id: Some("c1".into()),
    });
    assert_eq!(s.outbox.len(), 1);
    assert_eq!(s.leave("b"), ClientFrame::Leave { room: "b".into() });
    assert!(s.outbox.is_empty());
    assert_eq!(s.rooms.len(), 1);
}

#[test]
fn the_outbox_is_bounded() {
    let mut s = Session::new("alice", "a", 0);
    for i in 0..OUTBOX_MAX {
        s.enqueue(out(&format!("c{i}"), "a")).unwrap();
    }
    assert!(s.enqueue(out("more", "a")).is_err());
}

#[test]
fn the_nick_follows_the_server() {
    let mut s = Session::new("alice", "a", 0);
    s.observe(&ServerFrame::Nick {
        nick: "bob".into(),
        old: "alice".into(),
    });
    assert_eq!(s.connect_params()[0], ("nick", "bob".to_string()));
}

#[test]
fn sends_go_anyway_when_replay_never_reaches_the_head() {
    let mut s = Session::new("alice", "a", 10);
    s.on_connected();
    // History was lost: the head is announced but never replayed.
    s.observe(&joined("a", 40));
    s.enqueue(out("c1", "a")).unwrap();
    let now = Instant::now();
    assert!(!s.has_sendable(now));
    assert!(s.has_sendable(now + CATCH_UP_LIMIT + std::time::Duration::from_millis(10)));
}

#[test]
fn offsets_that_go_backwards_reset_the_resume_point() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 500));
    assert!(s.observe(&msg("a", 501, None)));
    // Reconnect to a cluster whose Redis restarted empty.
    s.on_connected();
    s.observe(&joined("a", 2));
    assert!(
        s.observe(&msg("a", 3, None)),
        "new messages are not duplicates"
    );
}

#[test]
fn unavailable_sends_are_retried_quietly_then_reported() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 0));
    s.enqueue(out("c1", "a")).unwrap();
    let unavailable = ServerFrame::Error {
        code: ErrorCode::Unavailable,
        message: "redis down".into(),
        id: Some("c1".into()),
    };
    let later =
        |n: u32| Instant::now() + UNAVAILABLE_DELAY * n + std::time::Duration::from_millis(10);
    for n in 1..=UNAVAILABLE_RETRIES {
        assert!(s.next_sendable(later(n)).is_some(), "try {n}");
        assert!(!s.observe(&unavailable), "try {n} is retried, not shown");
        assert!(!s.has_sendable(Instant::now()), "not at once");
        assert!(s.next_retry(Instant::now()).is_some());
        assert!(
            s.next_retry(later(n + 1)).is_none(),
            "past moments are not timers"
        );
    }
    assert!(s.next_sendable(later(UNAVAILABLE_RETRIES + 1)).is_some());
    assert!(s.observe(&unavailable), "the last refusal reaches the user");
    assert!(s.outbox.is_empty());
}
