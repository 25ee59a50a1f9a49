//! App-state tests of issue 12 (all-day use): each defect a newcomer hit,
//! then logs, search, direct messages and notifications.

use chat_protocol::{ChatMessage, Member, PresenceEvent, ServerFrame};

use super::*;

fn own(offset: u64, id: &str, text: &str) -> Event {
    frame(ServerFrame::Message(ChatMessage {
        room: "lobby".into(),
        offset,
        epoch: "e1".into(),
        nick: "alice".into(),
        text: text.into(),
        app_id: "app1".into(),
        ts: 1_700_000_000_000 + offset,
        id: Some(id.into()),
        action: false,
    }))
}

fn presence(event: PresenceEvent, conn: &str, nick: &str) -> Event {
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
}

fn member(c: &str, n: &str, sub: Option<&str>) -> Member {
    Member {
        conn_id: c.into(),
        nick: n.into(),
        app_id: "app2".into(),
        sub: sub.map(str::to_string),
    }
}

fn count(a: &App, room: usize, needle: &str) -> usize {
    a.rooms[room]
        .lines
        .iter()
        .chain(&a.rooms[room].pending)
        .filter(|l| l.text.contains(needle))
        .count()
}

fn in_room(room: &str, offset: u64, nick: &str, text: &str) -> Event {
    frame(ServerFrame::Message(ChatMessage {
        room: room.into(),
        offset,
        epoch: "e1".into(),
        nick: nick.into(),
        text: text.into(),
        app_id: "app2".into(),
        ts: 1_700_000_000_000 + offset,
        id: None,
        action: false,
    }))
}

/// Defect 1: a line the server applied twice (a Redis stall under a server
/// without idempotency keys) reaches the screen once.
#[test]
fn an_own_line_delivered_twice_under_two_offsets_shows_once() {
    let mut a = app();
    type_line(&mut a, "during the stall");
    a.update(own(5, "t-1", "during the stall"));
    a.update(own(6, "t-1", "during the stall"));
    assert_eq!(count(&a, 0, "during the stall"), 1, "{:?}", texts(&a, 0));
    // The room still moves on past the second copy.
    a.update(msg("lobby", 7, "bob", "next"));
    assert_eq!(last_text(&a), "next");
    assert_eq!(a.room().last_offset, Some(7));
}

/// Defect 2: `/jo<Tab>` is `/join `, and Enter then runs it.
#[test]
fn tab_completes_a_command_with_a_space() {
    let mut a = app();
    a.update(Event::Paste("/jo".into()));
    a.update(key(KeyCode::Tab));
    assert_eq!(a.input.text(), "/join ");
    a.update(Event::Paste("rust".into()));
    let actions = a.update(key(KeyCode::Enter));
    assert_eq!(actions, vec![Action::Net(Request::Join("rust".into()))]);
}

/// Defect 4: a paste whose lines end in CR keeps them apart.
#[test]
fn a_cr_paste_sends_separate_lines() {
    let mut a = app();
    let actions = type_line(&mut a, "pasted line one\rpasted line two");
    let Some(Action::Net(Request::Send { text, .. })) = actions.first() else {
        panic!("{actions:?}");
    };
    assert_eq!(text, "pasted line one\npasted line two");
}

/// Defect 8: history replayed on join goes above "you joined", under a
/// "history" separator; live lines after it.
#[test]
fn history_replay_goes_above_the_join_line() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    let i = a.room_index("rust").unwrap();
    a.update(frame(ServerFrame::Joined {
        room: "rust".into(),
        head: 12,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(in_room("rust", 10, "bob", "old ten"));
    a.update(in_room("rust", 12, "bob", "old twelve"));
    a.update(in_room("rust", 13, "bob", "live thirteen"));
    let t = texts(&a, i);
    let pos = |s: &str| t.iter().position(|x| x.contains(s)).unwrap_or(usize::MAX);
    assert!(pos("history") < pos("old ten"), "{t:?}");
    assert!(pos("old ten") < pos("old twelve"), "{t:?}");
    assert!(pos("old twelve") < pos("you joined rust"), "{t:?}");
    assert!(pos("you joined rust") < pos("live thirteen"), "{t:?}");
    // The replay is not news: it is not logged again.
    assert!(a.log_out.iter().all(|e| !e.text.contains("old ")));
    assert!(a
        .log_out
        .iter()
        .any(|e| e.text.contains("<bob> live thirteen")));
}

/// Defect 9: a member whose connection left and who is back within the
/// grace (reconnected elsewhere, or re-announced) is not shown as left.
#[test]
fn a_member_back_within_the_grace_was_never_shown_as_left() {
    let mut a = app();
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![member("app1-2", "bob", None)],
        total: 1,
    }));
    let n = a.room().lines.len();
    a.update(presence(PresenceEvent::Leave, "app1-2", "bob"));
    a.update(presence(PresenceEvent::Join, "app2-7", "bob"));
    past_leave_grace(&mut a);
    assert_eq!(a.room().lines.len(), n, "{:?}", texts(&a, 0));
    // The same connection re-announced after a leave: not a leave either.
    a.update(presence(PresenceEvent::Leave, "app2-7", "bob"));
    a.update(presence(PresenceEvent::Join, "app2-7", "bob"));
    past_leave_grace(&mut a);
    assert_eq!(a.room().lines.len(), n, "{:?}", texts(&a, 0));
    // A leave for a connection the list does not hold is stale.
    a.update(presence(PresenceEvent::Leave, "app9-9", "bob"));
    past_leave_grace(&mut a);
    assert_eq!(a.room().lines.len(), n);
    // A real leave shows, after the grace, where it arrived.
    a.update(presence(PresenceEvent::Leave, "app2-7", "bob"));
    assert_eq!(a.room().lines.len(), n);
    a.update(msg("lobby", 1, "carol", "said after bob left"));
    past_leave_grace(&mut a);
    let t = texts(&a, 0);
    assert_eq!(
        &t[t.len() - 2..],
        &[
            "bob left lobby".to_string(),
            "said after bob left".to_string()
        ]
    );
}

/// Defect 10: a nick change is told in every room.
#[test]
fn a_nick_change_is_echoed_in_every_room() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(frame(ServerFrame::Nick {
        nick: "alicia".into(),
        old: "alice".into(),
    }));
    for i in 0..2 {
        assert_eq!(count(&a, i, "you are now known as alicia"), 1, "room {i}");
    }
}

/// Defect 10: `/save` writes into the log directory, not the current one.
#[test]
fn save_defaults_to_the_log_directory() {
    let mut a = app();
    a.save_dir = Some("/var/tmp/wschat-logs".into());
    let actions = type_line(&mut a, "/save");
    let Some(Action::Save { path, .. }) = actions.first() else {
        panic!("{actions:?}");
    };
    assert!(
        path.starts_with("/var/tmp/wschat-logs/lobby-saved-"),
        "{path}"
    );
    let actions = type_line(&mut a, "/save here.txt");
    assert!(matches!(&actions[0], Action::Save { path, .. } if path == "here.txt"));
}

#[test]
fn search_jumps_to_matches_and_n_and_shift_n_and_esc_move_and_return() {
    let mut a = app();
    for i in 1..=200 {
        let text = if i == 20 || i == 120 {
            format!("the Deploy went out ({i})")
        } else {
            format!("line {i}")
        };
        a.update(msg("lobby", i, "bob", &text));
    }
    type_line(&mut a, "/search deploy");
    let newest = a.search.as_ref().and_then(|s| s.at).unwrap();
    assert!(a.room().lines[newest].text.contains("(120)"));
    assert!(a.room().scroll > 0, "scrolled up to it");
    assert!(a.search_status().unwrap().contains("2 of 2"));
    a.update(key(KeyCode::Char('n')));
    let older = a.search.as_ref().and_then(|s| s.at).unwrap();
    assert!(a.room().lines[older].text.contains("(20)"));
    assert!(a.room().scroll > 0);
    a.update(key(KeyCode::Char('n')));
    assert_eq!(
        a.search.as_ref().and_then(|s| s.at),
        Some(older),
        "no older one"
    );
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('N'),
        KeyModifiers::SHIFT,
    )));
    assert_eq!(a.search.as_ref().and_then(|s| s.at), Some(newest));
    a.update(key(KeyCode::Esc));
    assert!(a.search.is_none());
    assert_eq!(a.room().scroll, 0);
    // Ctrl+R: type the word, Enter.
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('r'),
        KeyModifiers::CONTROL,
    )));
    for c in "line 15".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    assert!(a.input.is_empty(), "the word is not typed into the message");
    a.update(key(KeyCode::Enter));
    let at = a.search.as_ref().and_then(|s| s.at).unwrap();
    assert!(a.room().lines[at].text.starts_with("line 15"));
    // /lastlog stays a filter view.
    a.update(key(KeyCode::Esc));
    type_line(&mut a, "/lastlog deploy");
    assert!(texts(&a, 0)
        .iter()
        .any(|t| t.contains("lastlog \"deploy\": 2 line(s)")));
}

#[test]
fn direct_messages_need_a_token_and_go_to_the_dm_room_of_both_subjects() {
    let mut a = app();
    let actions = type_line(&mut a, "/msg bob hi");
    assert!(actions.is_empty());
    assert!(last_text(&a).contains("direct messages need a token"));
    a.my_sub = Some("zed".into());
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![member("c2", "bob", Some("bob-sub"))],
        total: 1,
    }));
    let actions = type_line(&mut a, "/msg bob hi there");
    assert_eq!(
        actions,
        vec![
            Action::Net(Request::Join("dm.bob-sub.zed".into())),
            Action::Net(Request::Send {
                room: "dm.bob-sub.zed".into(),
                text: "hi there".into(),
                id: "t-1".into(),
                action: false
            })
        ]
    );
    assert_eq!(a.room().name, "lobby", "/msg stays in the room shown");
    let dm = a.room_index("dm.bob-sub.zed").unwrap();
    assert_eq!(a.room_label(dm), "@bob-sub");
    // DMs are listed apart: the rooms, a heading, the DMs.
    assert_eq!(a.sidebar_entries(), vec![Some(0), None, Some(dm)]);
    // An incoming DM counts as unread and notifies while unfocused.
    a.update(Event::Focus(false));
    a.update(frame(ServerFrame::Joined {
        room: "dm.bob-sub.zed".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(in_room("dm.bob-sub.zed", 1, "bob", "psst"));
    assert_eq!(a.rooms[dm].unread, 1);
    assert_eq!(a.notify_out.len(), 1);
    assert_eq!(a.notify_out[0].body, "psst");
    type_line(&mut a, "/query bob");
    assert_eq!(a.current, dm);
}

#[test]
fn mentions_are_listed_across_rooms_and_notify_only_when_unfocused_and_live() {
    let mut a = app();
    a.highlights = vec!["deploy".into()];
    type_line(&mut a, "/join ops");
    a.update(frame(ServerFrame::Joined {
        room: "ops".into(),
        head: 3,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(Event::Focus(false));
    // Replay: no notification.
    a.update(in_room("ops", 3, "carol", "alice: old news"));
    assert!(a.notify_out.is_empty());
    a.update(in_room("ops", 4, "carol", "deploy at noon"));
    assert_eq!(a.notify_out.len(), 1, "a highlight word counts");
    assert_eq!(a.notify_out[0].title, "carol in ops");
    a.update(Event::Focus(true));
    a.update(msg("lobby", 1, "bob", "alice: lunch?"));
    assert_eq!(a.notify_out.len(), 1, "focused: no notification");
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('m'),
        KeyModifiers::ALT,
    )));
    let t = texts(&a, a.current);
    assert!(t.iter().any(|l| l == "mentions of you: 2"), "{t:?}");
    assert!(
        t.iter().any(|l| l.contains("ops <carol> deploy at noon")),
        "{t:?}"
    );
    assert!(
        t.iter().any(|l| l.contains("lobby <bob> alice: lunch?")),
        "{t:?}"
    );
}

#[test]
fn live_lines_go_to_the_room_log_with_dates() {
    let mut a = app();
    a.update(msg("lobby", 1, "bob", "hello\nworld"));
    a.update(presence(PresenceEvent::Join, "c9", "dave"));
    let log: Vec<&str> = a.log_out.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        log,
        vec![
            "2023-11-14 22:13:20 <bob> hello ⏎ world",
            "2023-11-14 22:13:20 --> dave joined lobby (via app2)"
        ]
    );
    assert!(a.log_out.iter().all(|e| e.room == "lobby"));
}

#[test]
fn keys_from_the_config_are_used() {
    let mut a = app();
    let mut keys = crate::config::KeyMap::default();
    keys.bind(
        crate::config::parse_key("alt+s").unwrap(),
        crate::config::KeyAction::Search,
    );
    a.keys = keys;
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('s'),
        KeyModifiers::ALT,
    )));
    assert!(a.search.as_ref().is_some_and(|s| s.typing));
}
