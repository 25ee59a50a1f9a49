//! Paging back through a room's history with PageUp at the top.

use super::*;
use crate::net::history::Page;
use crate::state::older::Older;
use crate::state::older::{BEGINNING, FAILED, LOADING, PAGE};

fn message(offset: u64, nick: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room: "lobby".into(),
        offset,
        epoch: "e1".into(),
        nick: nick.into(),
        text: text.into(),
        app_id: "app2".into(),
        ts: 1_700_000_000_000 + offset,
        id: None,
        action: false,
    }
}

fn page(offsets: std::ops::RangeInclusive<u64>, more: bool) -> Result<Page, String> {
    Ok(Page {
        messages: offsets
            .map(|o| message(o, "bob", &format!("m{o}")))
            .collect(),
        more,
    })
}

fn history(before: Option<u64>, result: Result<Page, String>) -> Event {
    Event::Net(NetEvent::History {
        room: "lobby".into(),
        before,
        result,
    })
}

/// The history request among `actions`, if any.
fn asked(actions: &[Action]) -> Option<(String, Option<u64>, u32)> {
    actions.iter().find_map(|a| match a {
        Action::Net(Request::History {
            room,
            before,
            limit,
        }) => Some((room.clone(), *before, *limit)),
        _ => None,
    })
}

fn offsets(a: &App) -> Vec<u64> {
    a.room().lines.iter().filter_map(|l| l.offset).collect()
}

#[test]
fn pageup_at_the_top_loads_older_pages_until_the_beginning() {
    let mut a = app();
    for o in 201..=300 {
        a.update(msg("lobby", o, "bob", &format!("m{o}")));
    }
    // Not at the top yet: PageUp only scrolls.
    let acts = a.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), None);
    let ctrl_home = Event::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::CONTROL));
    assert_eq!(asked(&a.update(ctrl_home.clone())), None);
    // At the top: the page before the oldest message is asked for, once,
    // and the loading line shows at the top of the view.
    let acts = a.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), Some(("lobby".into(), Some(201), PAGE)));
    assert_eq!(a.room().older, Older::Loading);
    assert!(texts(&a, 0).iter().any(|t| t == LOADING));
    assert!(a.room().at_top(a.geometry()));
    assert_eq!(
        asked(&a.update(key(KeyCode::PageUp))),
        None,
        "one at a time"
    );
    let top = a.room().scroll;
    // The page goes in above, in order; the view does not move.
    let unread_before = (a.room().unread, a.mention_log.len());
    a.update(history(Some(201), page(101..=200, true)));
    assert_eq!(a.room().scroll, top, "the view stays where it was");
    assert!(!texts(&a, 0).iter().any(|t| t == LOADING));
    assert_eq!(offsets(&a), (101..=300).collect::<Vec<_>>());
    assert_eq!(a.room().older, Older::Idle);
    // Scroll to the new top, then on to the next page.
    a.update(ctrl_home.clone());
    let acts = a.update(ctrl_home.clone());
    assert_eq!(asked(&acts), Some(("lobby".into(), Some(101), PAGE)));
    // The last page overlaps (a server that does not cut at `before`):
    // nothing shows twice.
    a.update(history(Some(101), page(1..=150, false)));
    assert_eq!(offsets(&a), (1..=300).collect::<Vec<_>>());
    let t = texts(&a, 0);
    let first_msg = a
        .room()
        .lines
        .iter()
        .position(|l| l.offset.is_some())
        .unwrap();
    assert_eq!(t[first_msg - 1], BEGINNING);
    assert_eq!(a.room().older, Older::Done);
    // Done: no further requests for this room.
    a.update(ctrl_home.clone());
    assert_eq!(asked(&a.update(key(KeyCode::PageUp))), None);
    assert!(!texts(&a, 0).iter().any(|t| t == LOADING));
    // History is old news: nothing counted, logged or rung.
    assert_eq!((a.room().unread, a.mention_log.len()), unread_before);
    assert!(a.log_out.iter().all(|e| !e.text.contains("m100")));
    assert!(!a.mentioned);
}

#[test]
fn a_page_neither_notifies_nor_logs_but_still_highlights_mentions() {
    let mut a = app();
    a.focused = false;
    a.update(msg("lobby", 50, "bob", "live"));
    a.log_out.clear();
    a.mentioned = false;
    let acts = a.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), Some(("lobby".into(), Some(50), PAGE)));
    a.update(history(
        Some(50),
        Ok(Page {
            messages: vec![message(10, "bob", "hey alice, remember?")],
            more: true,
        }),
    ));
    let l = a
        .room()
        .lines
        .iter()
        .find(|l| l.offset == Some(10))
        .unwrap();
    assert!(matches!(l.kind, LineKind::Message { mention: true, .. }));
    assert!(a.log_out.is_empty(), "{:?}", a.log_out);
    assert!(a.notify_out.is_empty());
    assert!(a.mention_log.is_empty());
    assert!(!a.mentioned);
    // Placed under a history separator, above the live line.
    let t = texts(&a, 0);
    let at = t.iter().position(|t| t == "hey alice, remember?").unwrap();
    assert_eq!(t[at - 1], "─── history ───");
    assert_eq!(t[at + 1], "live");
}

#[test]
fn a_failure_shows_its_reason_and_pageup_retries() {
    let mut a = app();
    a.update(msg("lobby", 7, "bob", "x"));
    assert!(asked(&a.update(key(KeyCode::PageUp))).is_some());
    a.update(history(
        Some(7),
        Err("HTTP 403: private room: not a member".into()),
    ));
    assert_eq!(a.room().older, Older::Idle);
    let fails: Vec<String> = texts(&a, 0)
        .into_iter()
        .filter(|t| t.starts_with(FAILED))
        .collect();
    assert_eq!(fails.len(), 1);
    assert!(fails[0].contains("403") && fails[0].contains("not a member"));
    // PageUp again: the failure line gives way to the loading line.
    let acts = a.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), Some(("lobby".into(), Some(7), PAGE)));
    let t = texts(&a, 0);
    assert!(!t.iter().any(|t| t.starts_with(FAILED)), "{t:?}");
    assert!(t.iter().any(|t| t == LOADING));
    a.update(history(
        Some(7),
        Err("127.0.0.1:1: connection refused".into()),
    ));
    assert!(texts(&a, 0)
        .iter()
        .any(|t| t.contains("connection refused")));
    assert!(!texts(&a, 0).iter().any(|t| t == LOADING));
}

#[test]
fn newer_messages_than_the_last_live_one_are_left_to_the_websocket() {
    let mut a = app();
    // Nothing loaded: the newest page is asked for.
    let acts = a.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), Some(("lobby".into(), None, PAGE)));
    // Meanwhile 5 arrives live.
    a.update(msg("lobby", 5, "bob", "m5"));
    a.update(history(None, page(1..=6, true)));
    // 5 is not shown twice, and 6 waits for its live delivery.
    assert_eq!(offsets(&a), vec![1, 2, 3, 4, 5]);
    a.update(msg("lobby", 6, "bob", "m6"));
    assert_eq!(offsets(&a), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_page_for_a_room_left_meanwhile_is_dropped_and_a_full_scrollback_asks_nothing() {
    let mut a = app();
    assert!(asked(&a.update(key(KeyCode::PageUp))).is_some());
    a.update(Event::Net(NetEvent::History {
        room: "gone".into(),
        before: None,
        result: page(1..=3, false),
    }));
    assert_eq!(a.room().older, Older::Loading);
    // A scrollback at its capacity does not grow upwards.
    let settings = Settings {
        url: "ws://127.0.0.1:1/ws".into(),
        nick: "alice".into(),
        room: "lobby".into(),
        more_rooms: Vec::new(),
        scrollback: 20,
        clock: Clock::fixed(1_700_000_000_000),
        id_prefix: "t".into(),
    };
    let mut small = App::new(settings, Rect::new(0, 0, 120, 40), Instant::now());
    for o in 100..130 {
        small.update(msg("lobby", o, "bob", "x"));
    }
    assert_eq!(asked(&small.update(key(KeyCode::PageUp))), None);
    assert!(last_text(&small).contains("scrollback is full"));
    // A page larger than the room left keeps its newest messages.
    type_line(&mut small, "/clear");
    for o in 130..140 {
        small.update(msg("lobby", o, "bob", "x"));
    }
    let acts = small.update(key(KeyCode::PageUp));
    assert_eq!(asked(&acts), Some(("lobby".into(), Some(130), PAGE)));
    small.update(history(Some(130), page(1..=129, true)));
    assert_eq!(small.room().lines.len(), 20);
    let got: Vec<u64> = small.room().lines.iter().filter_map(|l| l.offset).collect();
    let first = got[0];
    assert!(first > 100, "{got:?}");
    assert_eq!(got, (first..140).collect::<Vec<_>>());
}
