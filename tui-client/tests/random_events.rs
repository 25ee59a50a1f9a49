//! Robustness: thousands of random events (keys, pastes, resizes down to
//! 1x1, server frames in any order, history pages overlapping what is
//! shown, disconnects) never make the state or the view panic, and the
//! invariants a user relies on hold throughout.
//! The RNG is seeded, so a failure replays exactly.

use std::time::{Duration, Instant};

use chat_protocol::{ChatMessage, ErrorCode, Limits, Member, PresenceEvent, ServerFrame};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use ratatui::Terminal;
use tui_client::net::history::Page;
use tui_client::net::{NetEvent, Request};
use tui_client::state::clock::Clock;
use tui_client::state::{Action, App, Event, Settings};
use tui_client::view;

const ROOMS: [&str; 4] = ["lobby", "rust", "ops", "x#1"];
const WORDS: [&str; 14] = [
    "hi",
    "🇫🇷🇩🇪",
    "👍🏽",
    "line\rend",
    "/search hi",
    "日本語",
    "é",
    "a\u{301}",
    "🦀",
    "\t",
    "\u{1b}[2J",
    "alice",
    "/join rust",
    "  ",
];

fn limits() -> Limits {
    Limits {
        max_message_bytes: 64,
        max_rooms: 3,
        ..Limits::DEFAULT
    }
}

fn text(rng: &mut StdRng) -> String {
    (0..rng.random_range(0..12))
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn key(rng: &mut StdRng) -> Event {
    let codes = [
        KeyCode::Enter,
        KeyCode::Backspace,
        KeyCode::Delete,
        KeyCode::Left,
        KeyCode::Right,
        KeyCode::Home,
        KeyCode::End,
        KeyCode::Up,
        KeyCode::Down,
        KeyCode::PageUp,
        KeyCode::PageDown,
        KeyCode::Tab,
        KeyCode::Esc,
        KeyCode::F(2),
        KeyCode::Char('a'),
        KeyCode::Char('日'),
        KeyCode::Char('w'),
        KeyCode::Char('3'),
        KeyCode::Char('n'),
        KeyCode::Char('d'),
        KeyCode::Char('c'),
        // Search (Ctrl+R, n/N), mentions (Alt+M).
        KeyCode::Char('r'),
        KeyCode::Char('N'),
        KeyCode::Char('m'),
    ];
    let mods = [
        KeyModifiers::NONE,
        KeyModifiers::CONTROL,
        KeyModifiers::ALT,
        KeyModifiers::SHIFT,
    ];
    Event::Key(KeyEvent::new(
        codes[rng.random_range(0..codes.len())],
        mods[rng.random_range(0..mods.len())],
    ))
}

fn server(rng: &mut StdRng, offsets: &mut [u64; 4]) -> Event {
    let r = rng.random_range(0..ROOMS.len());
    let room = ROOMS[r].to_string();
    let nick = ["bob", "alice", "日本", "carol"][rng.random_range(0..4)].to_string();
    let frame = match rng.random_range(0..10) {
        0..=3 => {
            // Mostly in order, sometimes a replayed (older) offset.
            offsets[r] += rng.random_range(0..3);
            let offset = if rng.random_bool(0.1) {
                offsets[r].saturating_sub(2)
            } else {
                offsets[r]
            };
            ServerFrame::Message(ChatMessage {
                room,
                offset,
                epoch: "e1".into(),
                nick,
                text: text(rng),
                app_id: format!("app{}", rng.random_range(1..4)),
                ts: 1_700_000_000_000 + offset * 60_000,
                id: rng
                    .random_bool(0.2)
                    .then(|| format!("t-{}", rng.random_range(1..20))),
                action: rng.random_bool(0.1),
            })
        }
        4 => ServerFrame::Joined {
            room,
            head: offsets[r],
            epoch: "e1".into(),
            recovered: None,
        },
        5 => ServerFrame::Presence {
            room,
            event: [
                PresenceEvent::Join,
                PresenceEvent::Leave,
                PresenceEvent::Nick,
                PresenceEvent::Gone,
            ][rng.random_range(0..4)],
            conn_id: format!("c{}", rng.random_range(0..6)),
            nick,
            app_id: "app2".into(),
            ts: 1_700_000_000_000,
            old_nick: Some("old".into()),
            sub: rng.random_bool(0.5).then(|| "s1".into()),
        },
        6 => ServerFrame::Members {
            room,
            members: (0..rng.random_range(0..5))
                .map(|i| Member {
                    conn_id: format!("c{i}"),
                    nick: format!("m{i}"),
                    app_id: "app1".into(),
                    sub: None,
                })
                .collect(),
            total: 0,
        },
        7 => ServerFrame::Gap {
            room,
            from: 1,
            to: offsets[r],
        },
        // A retry the server had already applied, at an offset behind,
        // at or ahead of what was seen.
        8 => ServerFrame::Sent {
            room,
            id: format!("t-{}", rng.random_range(1..20)),
            offset: (offsets[r] + rng.random_range(0..4)).saturating_sub(2),
            epoch: "e1".into(),
            duplicate: true,
        },
        _ => ServerFrame::Error {
            code: [ErrorCode::RateLimited, ErrorCode::Timeout][rng.random_range(0..2)],
            message: "slow down".into(),
            id: Some(format!("t-{}", rng.random_range(1..20))),
        },
    };
    Event::Net(NetEvent::Frame(frame))
}

#[test]
fn random_events_never_break_the_client() {
    let mut rng = StdRng::seed_from_u64(0x7ac0);
    let settings = Settings {
        url: "ws://127.0.0.1:1/ws".into(),
        nick: "alice".into(),
        room: "lobby".into(),
        more_rooms: vec!["rust".into()],
        scrollback: 200,
        clock: Clock::fixed(1_700_000_000_000),
        id_prefix: "t".into(),
    };
    let t0 = Instant::now();
    let mut app = App::new(settings, Rect::new(0, 0, 100, 30), t0);
    let (mut w, mut h) = (100u16, 30u16);
    let mut offsets = [0u64; 4];
    let mut quits = 0;
    // History requests not answered yet.
    let mut asked: Vec<(String, Option<u64>)> = Vec::new();
    let mut pages = 0;
    for step in 0..6000u32 {
        let ev = match rng.random_range(0..20) {
            0..=6 => key(&mut rng),
            7 if rng.random_bool(0.1) => Event::Focus(rng.random_bool(0.5)),
            7 => Event::Paste(text(&mut rng)),
            8 => {
                w = rng.random_range(1..160);
                h = rng.random_range(1..50);
                Event::Resize(w, h)
            }
            9 => Event::Mouse(MouseEvent {
                kind: [
                    MouseEventKind::ScrollUp,
                    MouseEventKind::ScrollDown,
                    MouseEventKind::Down(crossterm::event::MouseButton::Left),
                ][rng.random_range(0..3)],
                column: rng.random_range(0..w.max(1)),
                row: rng.random_range(0..h.max(1)),
                modifiers: KeyModifiers::NONE,
            }),
            10 => Event::Net(match rng.random_range(0..4) {
                0 => NetEvent::Disconnected {
                    reason: "lost".into(),
                    retry_in: Some(Duration::from_millis(rng.random_range(0..3000))),
                    attempt: rng.random_range(1..9),
                },
                1 => NetEvent::Connected {
                    app_id: format!("app{}", rng.random_range(1..4)),
                    conn_id: format!("c{step}"),
                    nick: "alice".into(),
                    limits: limits(),
                },
                2 => NetEvent::Rtt(Duration::from_micros(rng.random_range(0..100_000))),
                _ => NetEvent::SendFailed {
                    id: format!("t-{}", rng.random_range(1..20)),
                    room: "lobby".into(),
                    reason: "full".into(),
                },
            }),
            11 => Event::Tick(t0 + Duration::from_millis(u64::from(step) * 50)),
            // A history page asked for (or one for no request at all):
            // offsets around `before`, overlapping what is shown, or an
            // error.
            12 => {
                let (room, before) = if asked.is_empty() {
                    (ROOMS[rng.random_range(0..ROOMS.len())].to_string(), None)
                } else {
                    asked.remove(rng.random_range(0..asked.len()))
                };
                let top = before.unwrap_or(offsets[0] + 3);
                let result = if rng.random_bool(0.15) {
                    Err("HTTP 503: history unavailable".to_string())
                } else {
                    let from = top.saturating_sub(rng.random_range(0..40));
                    let end = top + rng.random_range(0..4);
                    let mut messages = Vec::new();
                    for offset in from..end {
                        if rng.random_bool(0.8) {
                            messages.push(ChatMessage {
                                room: room.clone(),
                                offset,
                                epoch: "e1".into(),
                                nick: "bob".into(),
                                text: text(&mut rng),
                                app_id: "app1".into(),
                                ts: 1_700_000_000_000 + offset * 60_000,
                                id: None,
                                action: false,
                            });
                        }
                    }
                    Ok(Page {
                        messages,
                        more: rng.random_bool(0.7),
                    })
                };
                Event::Net(NetEvent::History {
                    room,
                    before,
                    result,
                })
            }
            _ => server(&mut rng, &mut offsets),
        };
        pages += usize::from(matches!(ev, Event::Net(NetEvent::History { .. })));
        let actions = app.update(ev);
        for a in &actions {
            if let Action::Net(Request::History { room, before, .. }) = a {
                asked.push((room.clone(), *before));
            }
        }
        quits += actions.iter().filter(|a| **a == Action::Quit).count();

        // What a user relies on, after every event.
        assert!(!app.rooms.is_empty(), "step {step}: no room left");
        assert!(
            app.current < app.rooms.len(),
            "step {step}: current room out of range"
        );
        assert!(app.input.cursor() <= app.input.chars().len());
        for r in &app.rooms {
            assert!(r.lines.len() <= 200, "step {step}: scrollback unbounded");
            let offs: Vec<u64> = r.lines.iter().filter_map(|l| l.offset).collect();
            assert!(
                offs.windows(2).all(|p| p[0] < p[1]),
                "step {step}: {} shows offsets out of order or twice: {offs:?}",
                r.name
            );
        }
        if step % 25 == 0 {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| view::render(&app, f)).unwrap();
            let _ = view::title(&app);
        }
    }
    assert!(
        quits > 0,
        "the run never hit a quit key: the generator is off"
    );
    assert!(pages > 0, "no history page: the generator is off");
}
