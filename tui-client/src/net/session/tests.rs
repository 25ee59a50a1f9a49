//! Resume and deduplication rules of [`Session`].

use std::time::{Duration, Instant};

use chat_protocol::{ChatMessage, ClientFrame, ErrorCode, ServerFrame};

use super::*;

/// The epoch of the helpers' frames.
const E1: &str = "e1";

fn msg(room: &str, offset: u64, id: Option<&str>) -> ServerFrame {
    msg_in(room, E1, offset, id)
}

fn msg_in(room: &str, epoch: &str, offset: u64, id: Option<&str>) -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: room.into(),
        offset,
        epoch: epoch.into(),
        nick: "ann".into(),
        text: format!("m{offset}"),
        app_id: "app1".into(),
        ts: 0,
        id: id.map(str::to_string),
        action: false,
    })
}

fn joined(room: &str, head: u64) -> ServerFrame {
    joined_in(room, E1, head, None)
}

fn joined_in(room: &str, epoch: &str, head: u64, recovered: Option<bool>) -> ServerFrame {
    ServerFrame::Joined {
        room: room.into(),
        head,
        epoch: epoch.into(),
        recovered,
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
    assert_eq!(s.connect_params()[3], ("epoch", E1.to_string()));
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
                epoch: Some(E1.into()),
                history: None
            },
            // Joined with replay but nothing arrived yet: resume from the
            // start, which the server answers with its history (or a gap).
            ClientFrame::Join {
                room: "c".into(),
                since: Some(0),
                epoch: Some(E1.into()),
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
fn without_epochs_offsets_that_go_backwards_reset_the_resume_point() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined_in("a", "", 500, None));
    assert!(s.observe(&msg_in("a", "", 501, None)));
    // Reconnect to a cluster whose Redis restarted empty.
    s.on_connected();
    s.observe(&joined_in("a", "", 2, None));
    assert!(
        s.observe(&msg_in("a", "", 3, None)),
        "new messages are not duplicates"
    );
    assert!(!s.observe(&msg_in("a", "", 3, None)));
}

#[test]
fn refused_sends_are_retried_quietly_with_a_growing_delay_then_reported() {
    for code in [ErrorCode::Unavailable, ErrorCode::Timeout] {
        let mut s = Session::new("alice", "a", 0);
        s.on_connected();
        s.observe(&joined("a", 0));
        s.enqueue(out("c1", "a")).unwrap();
        let refusal = ServerFrame::Error {
            code,
            message: "redis".into(),
            id: Some("c1".into()),
        };
        let mut at = Instant::now();
        for n in 1..=SEND_RETRIES {
            match s.next_sendable(at) {
                Some(ClientFrame::Send { id: Some(id), .. }) => assert_eq!(id, "c1", "same id"),
                other => panic!("{code:?} try {n}: {other:?}"),
            }
            assert!(
                !s.observe(&refusal),
                "{code:?} try {n} is retried, not shown"
            );
            let now = Instant::now();
            assert!(!s.has_sendable(now), "not at once");
            assert!(s.next_sendable(now).is_none(), "not at once");
            let due = s.next_retry(now).expect("a retry timer");
            assert!(due >= now + send_retry_delay(n) - Duration::from_millis(50));
            assert!(s.next_retry(due).is_none(), "past moments are not timers");
            at = due;
        }
        assert!(s.next_sendable(at).is_some());
        assert!(s.observe(&refusal), "the last refusal reaches the user");
        assert!(s.outbox.is_empty());
    }
    assert_eq!(send_retry_delay(1), SEND_RETRY_DELAY);
    assert_eq!(send_retry_delay(2), SEND_RETRY_DELAY * 2);
    assert_eq!(send_retry_delay(30), SEND_RETRY_CAP);
}

#[test]
fn a_line_waiting_for_a_retry_does_not_hold_up_or_jump_with_others() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 0));
    s.enqueue(out("c1", "a")).unwrap();
    s.next_sendable(Instant::now()).unwrap();
    s.observe(&ServerFrame::Error {
        code: ErrorCode::Timeout,
        message: "slow redis".into(),
        id: Some("c1".into()),
    });
    s.enqueue(out("c2", "a")).unwrap();
    match s.next_sendable(Instant::now()) {
        Some(ClientFrame::Send { id: Some(id), .. }) => assert_eq!(id, "c2"),
        other => panic!("{other:?}"),
    }
    assert!(
        s.next_sendable(Instant::now()).is_none(),
        "c1 waits its turn"
    );
}

#[test]
fn a_timeout_retried_and_answered_as_duplicate_is_delivered_once() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 10));
    s.enqueue(out("c1", "a")).unwrap();
    s.next_sendable(Instant::now()).unwrap();
    // Redis applied it but answered too late.
    assert!(!s.observe(&ServerFrame::Error {
        code: ErrorCode::Timeout,
        message: "redis did not answer".into(),
        id: Some("c1".into()),
    }));
    let due = s.next_retry(Instant::now()).unwrap();
    assert!(matches!(
        s.next_sendable(due),
        Some(ClientFrame::Send { id: Some(ref i), .. }) if i == "c1"
    ));
    let sent = ServerFrame::Sent {
        room: "a".into(),
        id: "c1".into(),
        offset: 11,
        epoch: E1.into(),
        duplicate: true,
    };
    assert!(s.observe(&sent), "the UI learns it went out");
    assert!(s.outbox.is_empty(), "delivered: never sent again");
    // The original delivery comes after all (live or by resume): shown once.
    assert!(s.observe(&msg("a", 11, Some("c1"))));
    assert!(!s.observe(&msg("a", 11, Some("c1"))));
    s.on_connected();
    s.observe(&joined("a", 11));
    assert!(s.next_sendable(Instant::now()).is_none());
}

#[test]
fn resume_carries_the_epoch_and_a_new_epoch_is_adopted_not_dropped() {
    let mut s = Session::new("alice", "a", 0);
    s.join("b");
    s.on_connected();
    s.observe(&joined("a", 100));
    s.observe(&joined("b", 7));
    assert!(s.observe(&msg("b", 8, None)));
    let joins = s.on_connected();
    assert_eq!(
        joins,
        vec![ClientFrame::Join {
            room: "b".into(),
            since: Some(8),
            epoch: Some(E1.into()),
            history: None
        }]
    );
    s.observe(&joined("a", 100));
    s.observe(&joined("b", 8));
    // Redis failed over: the new epoch's offsets are lower (they need not
    // be, but nothing may rely on it). Not duplicates.
    assert!(s.observe(&msg_in("b", "e2", 3, None)));
    assert_eq!(s.room("b").unwrap().epoch, "e2");
    assert!(s.observe(&msg_in("b", "e2", 4, None)));
    assert!(!s.observe(&msg_in("b", "e2", 4, None)), "dedup within e2");
    assert_eq!(
        s.on_connected()[0],
        ClientFrame::Join {
            room: "b".into(),
            since: Some(4),
            epoch: Some("e2".into()),
            history: None
        }
    );
}

#[test]
fn a_reset_adopts_the_new_epoch_and_its_offsets_are_new() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 500));
    assert!(s.observe(&msg("a", 501, None)));
    assert!(s.observe(&ServerFrame::Reset {
        room: "a".into(),
        epoch: "e2".into(),
        previous: E1.into(),
        last: 501,
    }));
    let r = s.room("a").unwrap();
    assert_eq!((r.epoch.as_str(), r.last_in_epoch), ("e2", false));
    // Dropped before anything of e2 arrived: resume after what was seen,
    // in the epoch the user has been told about.
    assert_eq!(
        s.connect_params()[2..],
        [("since", "501".to_string()), ("epoch", "e2".to_string())]
    );
    assert_eq!(
        s.join_params(s.room("a").unwrap()),
        JoinParams {
            since: Some(501),
            epoch: Some("e2".into()),
            history: None
        }
    );
    assert!(s.observe(&msg_in("a", "e2", 12, None)), "lower, yet new");
    assert!(s.observe(&msg_in("a", "e2", 13, None)));
    assert!(!s.observe(&msg_in("a", "e2", 12, None)));
    // A second reset to the same epoch changes nothing.
    s.observe(&ServerFrame::Reset {
        room: "a".into(),
        epoch: "e2".into(),
        previous: E1.into(),
        last: 501,
    });
    assert!(!s.observe(&msg_in("a", "e2", 13, None)));
}

#[test]
fn a_resume_into_another_epoch_takes_the_replay_as_new() {
    // Whether the server says `recovered: false` or only names another
    // epoch (a server that does not read ours).
    for recovered in [Some(false), None] {
        let mut s = Session::new("alice", "a", 0);
        s.on_connected();
        s.observe(&joined("a", 500));
        assert!(s.observe(&msg("a", 501, None)));
        s.on_connected();
        s.observe(&joined_in("a", "e2", 40, recovered));
        let r = s.room("a").unwrap();
        assert_eq!((r.epoch.as_str(), r.last_in_epoch), ("e2", false));
        // Replay: what the old epoch still held after 501, then the new.
        assert!(s.observe(&msg("a", 502, None)));
        assert!(s.observe(&msg_in("a", "e2", 39, None)));
        assert!(s.observe(&msg_in("a", "e2", 40, None)));
        assert!(!s.observe(&msg_in("a", "e2", 40, None)));
        assert!(s.room("a").unwrap().caught_up(Instant::now()));
    }
}

#[test]
fn a_gap_after_a_reset_is_the_new_resume_point() {
    let mut s = Session::new("alice", "a", 0);
    s.on_connected();
    s.observe(&joined("a", 500));
    s.observe(&ServerFrame::Reset {
        room: "a".into(),
        epoch: "e2".into(),
        previous: E1.into(),
        last: 500,
    });
    s.observe(&ServerFrame::Gap {
        room: "a".into(),
        from: 10,
        to: 20,
    });
    assert!(!s.observe(&msg_in("a", "e2", 20, None)));
    assert!(s.observe(&msg_in("a", "e2", 21, None)));
}
