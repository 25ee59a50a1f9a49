//! App-state tests. This file: helpers, commands, keys, scrolling, input.
//! `network.rs`: what network events do (unread counts, resume and dedup as
//! the user sees them, reconnect notices, presence, errors). `faults.rs`:
//! epochs, retried sends, unique ids and presence across a failover.

use std::time::Instant;

use chat_protocol::{ChatMessage, Limits, Member, ServerFrame};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;

use super::commands::split_message;
use super::room::LineKind;
use super::*;
use crate::net::{NetEvent, Request};

fn limits() -> Limits {
    Limits {
        max_rooms: 4,
        ..Limits::DEFAULT
    }
}

fn app() -> App {
    let settings = Settings {
        url: "ws://127.0.0.1:1/ws".into(),
        nick: "alice".into(),
        room: "lobby".into(),
        more_rooms: Vec::new(),
        scrollback: 1000,
        clock: Clock::fixed(1_700_000_000_000),
        id_prefix: "t".into(),
    };
    let mut a = App::new(settings, Rect::new(0, 0, 120, 40), Instant::now());
    a.update(Event::Net(welcome("app1")));
    a.update(frame(ServerFrame::Joined {
        room: "lobby".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    a
}

fn welcome(app_id: &str) -> NetEvent {
    NetEvent::Connected {
        app_id: app_id.into(),
        conn_id: format!("{app_id}-1"),
        nick: "alice".into(),
        limits: limits(),
    }
}

fn frame(f: ServerFrame) -> Event {
    Event::Net(NetEvent::Frame(f))
}

fn msg(room: &str, offset: u64, nick: &str, text: &str) -> Event {
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

fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn alt(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT))
}

fn type_line(a: &mut App, s: &str) -> Vec<Action> {
    a.update(Event::Paste(s.into()));
    a.update(key(KeyCode::Enter))
}

fn texts(a: &App, room: usize) -> Vec<String> {
    a.rooms[room].lines.iter().map(|l| l.text.clone()).collect()
}

/// Let the time pass after which held-back leaves show.
fn past_leave_grace(a: &mut App) {
    let later = a.now + room::LEAVE_GRACE + std::time::Duration::from_secs(1);
    a.update(Event::Tick(later));
}

fn last_text(a: &App) -> String {
    a.room()
        .lines
        .back()
        .map(|l| l.text.clone())
        .unwrap_or_default()
}

#[test]
fn typing_text_sends_it_with_a_pending_echo_until_the_server_echoes() {
    let mut a = app();
    let actions = type_line(&mut a, "héllo 日本");
    assert_eq!(
        actions,
        vec![Action::Net(Request::Send {
            room: "lobby".into(),
            text: "héllo 日本".into(),
            id: "t-1".into(),
            action: false
        })]
    );
    assert_eq!(a.room().pending.len(), 1);
    assert!(a.input.is_empty());
    let mut echo = ChatMessage {
        room: "lobby".into(),
        offset: 1,
        epoch: "e1".into(),
        nick: "alice".into(),
        text: "héllo 日本".into(),
        app_id: "app1".into(),
        ts: 0,
        id: Some("t-1".into()),
        action: false,
    };
    a.update(frame(ServerFrame::Message(echo.clone())));
    assert!(a.room().pending.is_empty());
    let l = a.room().lines.back().unwrap();
    assert_eq!(
        l.kind,
        LineKind::Message {
            own: true,
            action: false,
            mention: false
        }
    );
    // The same offset again (a resume overlap) is not shown twice.
    echo.id = None;
    let n = a.room().lines.len();
    a.update(frame(ServerFrame::Message(echo)));
    assert_eq!(a.room().lines.len(), n);
}

#[test]
fn me_sends_an_action() {
    let mut a = app();
    let actions = type_line(&mut a, "/me waves");
    assert!(matches!(
        &actions[..],
        [Action::Net(Request::Send { action: true, text, .. })] if text == "waves"
    ));
}

#[test]
fn join_switch_and_leave() {
    let mut a = app();
    assert_eq!(
        type_line(&mut a, "/join rust"),
        vec![Action::Net(Request::Join("rust".into()))]
    );
    assert_eq!(a.room().name, "rust");
    assert_eq!(a.current, 1);
    // Joining a joined room just shows it.
    type_line(&mut a, "/join lobby");
    assert!(type_line(&mut a, "/join lobby").is_empty());
    assert_eq!(a.current, 0);
    type_line(&mut a, "/switch 2");
    assert_eq!(a.current, 1);
    type_line(&mut a, "/switch lobby");
    assert_eq!(a.current, 0);
    a.update(alt('2'));
    assert_eq!(a.current, 1);
    a.update(alt('9'));
    assert_eq!(a.current, 1, "no room 9: nothing happens");
    type_line(&mut a, "/switch nope");
    assert!(
        last_text(&a).contains("no room \"nope\""),
        "{}",
        last_text(&a)
    );
    assert_eq!(
        type_line(&mut a, "/leave"),
        vec![Action::Net(Request::Leave("rust".into()))]
    );
    assert_eq!(a.rooms.len(), 1);
    assert_eq!(a.room().name, "lobby");
    // The last room cannot be left: the connection always has a room.
    assert!(type_line(&mut a, "/leave").is_empty());
    assert!(last_text(&a).contains("only room"), "{}", last_text(&a));
}

#[test]
fn bad_names_are_refused_locally() {
    let mut a = app();
    assert!(type_line(&mut a, "/join bad room!").is_empty());
    assert!(type_line(&mut a, "/join b@d").is_empty());
    assert!(last_text(&a).contains("cannot join"), "{}", last_text(&a));
    assert!(type_line(&mut a, "/nick bad<nick>").is_empty());
    assert!(last_text(&a).contains("cannot use nick"));
    assert_eq!(
        type_line(&mut a, "/nick bob"),
        vec![Action::Net(Request::Nick("bob".into()))]
    );
    a.update(frame(ServerFrame::Nick {
        nick: "bob".into(),
        old: "alice".into(),
    }));
    assert_eq!(a.nick, "bob");
}

#[test]
fn the_room_limit_from_the_welcome_is_respected() {
    let mut a = app();
    for r in ["a", "b", "c"] {
        assert!(!type_line(&mut a, &format!("/join {r}")).is_empty());
    }
    assert!(type_line(&mut a, "/join d").is_empty());
    assert!(last_text(&a).contains("4 rooms"), "{}", last_text(&a));
}

#[test]
fn unknown_commands_get_a_helpful_message() {
    let mut a = app();
    assert!(type_line(&mut a, "/jion rust").is_empty());
    let t = last_text(&a);
    assert!(
        t.contains("unknown command /jion") && t.contains("/join"),
        "{t}"
    );
    assert_eq!(a.room().lines.back().unwrap().kind, LineKind::Error);
    // Text starting with a slash can still be sent.
    assert!(matches!(
        &type_line(&mut a, "//jion")[..],
        [Action::Net(Request::Send { text, .. })] if text == "/jion"
    ));
}

#[test]
fn help_and_quit() {
    let mut a = app();
    let before = a.room().lines.len();
    type_line(&mut a, "/help");
    assert!(a.room().lines.len() > before + 10);
    assert!(texts(&a, 0).iter().any(|t| t.contains("/switch")));
    assert_eq!(type_line(&mut a, "/quit"), vec![Action::Quit]);
    let ctrl_c = Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(a.update(ctrl_c), vec![Action::Quit]);
}

#[test]
fn long_text_is_split_to_the_servers_limit() {
    let pieces = split_message(&"word ".repeat(2000), 4096);
    assert_eq!(pieces.len(), 3);
    assert!(pieces.iter().all(|p| p.len() <= 4096));
    assert_eq!(pieces.concat(), "word ".repeat(2000));
    let wide = "日".repeat(2000); // 6000 bytes, no spaces
    let pieces = split_message(&wide, 4096);
    assert!(pieces.iter().all(|p| p.len() <= 4096));
    assert_eq!(pieces.concat(), wide);
    assert_eq!(split_message("", 10), vec![String::new()]);
}

#[test]
fn scrolling_with_keys_and_wheel_and_following_at_the_bottom() {
    let mut a = app();
    for o in 1..=200 {
        a.update(msg("lobby", o, "bob", &format!("line {o}")));
    }
    assert_eq!(a.room().scroll, 0);
    a.update(key(KeyCode::PageUp));
    let page = a.room().scroll;
    assert_eq!(page, 36, "a page is the pane height (38) minus 2");
    // New messages while scrolled up do not move the view.
    a.update(msg("lobby", 201, "bob", "new"));
    assert_eq!(a.room().scroll, page + 1);
    assert_eq!(a.room().new_below, 1);
    let wheel = |kind| {
        Event::Mouse(MouseEvent {
            kind,
            column: 60,
            row: 10,
            modifiers: KeyModifiers::NONE,
        })
    };
    a.update(wheel(MouseEventKind::ScrollUp));
    assert_eq!(a.room().scroll, page + 4);
    a.update(wheel(MouseEventKind::ScrollDown));
    a.update(key(KeyCode::PageDown));
    a.update(key(KeyCode::PageDown));
    assert_eq!(a.room().scroll, 0);
    assert_eq!(a.room().new_below, 0);
    a.update(msg("lobby", 202, "bob", "followed"));
    assert_eq!(a.room().scroll, 0);
    // Sending jumps back to the bottom.
    a.update(key(KeyCode::PageUp));
    type_line(&mut a, "hi");
    assert_eq!(a.room().scroll, 0);
}

#[test]
fn input_history_with_arrows() {
    let mut a = app();
    type_line(&mut a, "one");
    type_line(&mut a, "two");
    a.update(key(KeyCode::Up));
    assert_eq!(a.input.text(), "two");
    a.update(key(KeyCode::Up));
    assert_eq!(a.input.text(), "one");
    a.update(key(KeyCode::Down));
    a.update(key(KeyCode::Down));
    assert_eq!(a.input.text(), "");
}

#[test]
fn tab_completes_member_nicks() {
    let mut a = app();
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![Member {
            conn_id: "c9".into(),
            nick: "bartholomew".into(),
            app_id: "app1".into(),
            sub: None,
        }],
        total: 0,
    }));
    a.update(Event::Paste("bar".into()));
    a.update(key(KeyCode::Tab));
    assert_eq!(a.input.text(), "bartholomew: ");
}

#[test]
fn app_id_toggle() {
    let mut a = app();
    a.update(key(KeyCode::F(2)));
    assert!(a.show_app_ids);
    type_line(&mut a, "/appids");
    assert!(!a.show_app_ids);
}

mod daily;
mod faults;
mod network;
mod older;

#[test]
fn huge_pastes_are_refused_not_flooded() {
    let mut a = app();
    let three = type_line(&mut a, &"x ".repeat(5000));
    assert_eq!(three.len(), 3, "10000 bytes go out as three messages");
    assert!(type_line(&mut a, &"y".repeat(200_000)).is_empty());
    assert!(last_text(&a).contains("at most 20"), "{}", last_text(&a));
}

#[test]
fn lastlog_lists_matching_messages() {
    let mut a = app();
    a.update(msg("lobby", 1, "bob", "the Deploy starts"));
    a.update(msg("lobby", 2, "bob", "unrelated"));
    a.update(msg("lobby", 3, "carol", "deploy done"));
    type_line(&mut a, "/lastlog deploy");
    let t = texts(&a, 0);
    let n = t.len();
    assert_eq!(t[n - 3], "lastlog \"deploy\": 2 line(s)");
    assert!(
        t[n - 2].ends_with("<bob> the Deploy starts"),
        "{}",
        t[n - 2]
    );
    assert!(t[n - 1].ends_with("<carol> deploy done"), "{}", t[n - 1]);
}

#[test]
fn every_room_of_the_command_line_is_listed_and_the_first_shown() {
    let settings = Settings {
        url: "ws://127.0.0.1:1/ws".into(),
        nick: "alice".into(),
        room: "lobby".into(),
        more_rooms: vec!["rust".into(), "ops".into()],
        scrollback: 10,
        clock: Clock::fixed(0),
        id_prefix: "t".into(),
    };
    let a = App::new(settings, Rect::new(0, 0, 80, 24), Instant::now());
    let names: Vec<_> = a.rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["lobby", "rust", "ops"]);
    assert_eq!(a.room().name, "lobby");
}

#[test]
fn a_late_leave_confirmation_does_not_remove_a_room_joined_again() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    type_line(&mut a, "/leave rust");
    type_line(&mut a, "/join rust");
    a.update(frame(ServerFrame::Left {
        room: "rust".into(),
    }));
    assert!(a.room_index("rust").is_some());
}

#[test]
fn clicking_a_room_shows_it_and_ctrl_home_end_jump() {
    let mut a = app();
    type_line(&mut a, "/join rust");
    a.update(alt('1'));
    // The room list's first row is its title; rooms follow.
    let click = |row| {
        Event::Mouse(MouseEvent {
            kind: MouseEventKind::Down(crossterm::event::MouseButton::Left),
            column: 3,
            row,
            modifiers: KeyModifiers::NONE,
        })
    };
    a.update(click(2));
    assert_eq!(a.room().name, "rust");
    a.update(click(0));
    a.update(click(9));
    assert_eq!(a.room().name, "rust", "the title and empty rows do nothing");
    for o in 1..=300 {
        a.update(msg("rust", o, "bob", "x"));
    }
    let ctrl = |code| Event::Key(KeyEvent::new(code, KeyModifiers::CONTROL));
    a.update(ctrl(KeyCode::Home));
    let top = a.room().scroll;
    assert!(top > 200, "{top}");
    // PageUp at the top asks the server for older history (see
    // `older.rs`): only its loading line comes in above.
    let acts = a.update(key(KeyCode::PageUp));
    assert!(
        matches!(acts.as_slice(), [Action::Net(Request::History { .. })]),
        "{acts:?}"
    );
    assert_eq!(a.room().scroll, top + 1, "nothing above the top");
    a.update(ctrl(KeyCode::End));
    assert_eq!(a.room().scroll, 0);
}
