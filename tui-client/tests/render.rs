//! Render tests: the real view drawn into ratatui's `TestBackend`, checked
//! with insta snapshots and with explicit assertions on what must be seen.

use std::time::{Duration, Instant};

use chat_protocol::{ChatMessage, Limits, Member, ServerFrame};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use ratatui::Terminal;
use tui_client::net::NetEvent;
use tui_client::state::clock::Clock;
use tui_client::state::{App, Event, Settings};
use tui_client::view;

const T0: u64 = 1_700_000_000_000;

fn limits() -> Limits {
    Limits::DEFAULT
}

fn app(w: u16, h: u16) -> App {
    let settings = Settings {
        url: "ws://127.0.0.1:8080/ws".into(),
        nick: "alice".into(),
        room: "lobby".into(),
        more_rooms: Vec::new(),
        scrollback: 10_000,
        clock: Clock::fixed(T0),
        id_prefix: "t".into(),
    };
    let mut a = App::new(settings, Rect::new(0, 0, w, h), Instant::now());
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app1".into(),
        conn_id: "app1-1".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    a.update(frame(ServerFrame::Joined {
        room: "lobby".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(Event::Net(NetEvent::Rtt(Duration::from_micros(2400))));
    a
}

fn frame(f: ServerFrame) -> Event {
    Event::Net(NetEvent::Frame(f))
}

fn msg(room: &str, offset: u64, nick: &str, app_id: &str, text: &str) -> Event {
    frame(ServerFrame::Message(ChatMessage {
        room: room.into(),
        offset,
        epoch: "e1".into(),
        nick: nick.into(),
        text: text.into(),
        app_id: app_id.into(),
        ts: T0 + offset * 1000,
        id: None,
        action: false,
    }))
}

fn draw(a: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(a, f)).unwrap();
    t
}

fn screen(t: &Terminal<TestBackend>) -> String {
    t.backend().to_string()
}

/// Row `y` as text; the cell after a wide character is part of it.
fn row(t: &Terminal<TestBackend>, y: u16) -> String {
    let buf = t.backend().buffer();
    let mut out = String::new();
    let mut x = 0;
    while x < buf.area.width {
        let sym = buf[(x, y)].symbol();
        out.push_str(sym);
        x += tui_client::wrap::str_width(sym).max(1) as u16;
    }
    out
}

/// A lively room: members across instances, messages through every
/// instance, a join, an action, a mention, a long wrapped line.
fn busy() -> App {
    let mut a = app(120, 30);
    let member = |c: &str, n: &str, app: &str| Member {
        conn_id: c.into(),
        nick: n.into(),
        app_id: app.into(),
        sub: None,
    };
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![
            member("c1", "alice", "app1"),
            member("c2", "bob", "app2"),
            member("c3", "carol", "app3"),
            member("c4", "日本語ニック", "app2"),
        ],
        total: 0,
    }));
    a.update(msg("lobby", 1, "bob", "app2", "hi all"));
    a.update(msg(
        "lobby",
        2,
        "carol",
        "app3",
        "hello from the third instance",
    ));
    a.update(msg("lobby", 3, "alice", "app1", "hey bob, carol"));
    a.update(msg(
        "lobby",
        4,
        "bob",
        "app2",
        "a long line that has to wrap because it is much longer than the message pane is wide, \
         so the continuation rows must line up under the text column and never cut a word",
    ));
    a.update(msg(
        "lobby",
        5,
        "日本語ニック",
        "app2",
        "日本語のテキストも大丈夫です alice",
    ));
    a.update(frame(ServerFrame::Message(ChatMessage {
        room: "lobby".into(),
        offset: 6,
        epoch: "e1".into(),
        nick: "carol".into(),
        text: "waves".into(),
        app_id: "app3".into(),
        ts: T0 + 6000,
        id: None,
        action: true,
    })));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('x'),
        KeyModifiers::NONE,
    )));
    a.update(Event::Paste("ünïcödé 日本".into()));
    a
}

#[test]
fn a_busy_room() {
    let a = busy();
    let mut t = draw(&a, 120, 30);
    let s = screen(&t);
    insta::assert_snapshot!("busy_room", s);
    let status = row(&t, 28);
    assert!(status.contains("on app1"), "{status}");
    assert!(status.contains("● connected"), "{status}");
    assert!(status.contains("rtt 2.4ms"), "{status}");
    assert!(status.contains("alice in lobby"), "{status}");
    assert!(s.contains("Members (4)"));
    assert!(s.contains("* │ carol waves"));
    // The cursor sits after the typed text, counted in cells: the prompt
    // "[lobby] " (8) + "xünïcödé " (9) + two wide characters (4).
    t.backend_mut().assert_cursor_position((8 + 9 + 4, 29));
}

#[test]
fn app_ids_shown_per_message_and_member() {
    let mut a = busy();
    a.update(Event::Key(KeyEvent::new(KeyCode::F(2), KeyModifiers::NONE)));
    let t = draw(&a, 120, 30);
    insta::assert_snapshot!("app_ids", screen(&t));
    let s = screen(&t);
    for app in ["app1", "app2", "app3"] {
        assert!(
            s.lines().any(|l| l.contains(app) && l.contains('│')),
            "{app} not shown"
        );
    }
}

#[test]
fn reconnecting_and_then_landing_elsewhere() {
    let mut a = busy();
    let now = a.now;
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "connection lost".into(),
        retry_in: Some(Duration::from_millis(1500)),
        attempt: 2,
    }));
    a.update(Event::Tick(now + Duration::from_millis(300)));
    let t = draw(&a, 120, 30);
    let status = row(&t, 28);
    assert!(
        status.contains("reconnecting (attempt 2, in 1.2s): connection lost"),
        "why it is down comes right after the state: {status}"
    );
    assert!(status.contains("rtt –"), "{status}");
    assert!(status.starts_with(" was on app1 │"), "{status}");
    // Lines typed now wait, and the status bar says so.
    a.update(Event::Paste("queued while away".into()));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    let t = draw(&a, 120, 30);
    assert!(row(&t, 28).contains("1 waiting to send"), "{}", row(&t, 28));
    assert!(
        screen(&t)
            .lines()
            .any(|l| l.starts_with("\"                 │sending ")
                && l.contains("alice │")
                && l.contains("queued while away")),
        "{}",
        screen(&t)
    );
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app3".into(),
        conn_id: "app3-9".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    let t = draw(&a, 120, 30);
    insta::assert_snapshot!("landed_elsewhere", screen(&t));
    assert!(row(&t, 28).contains("on app3 (was app1)"));
    assert!(screen(&t).contains("reconnected: now on app3, was app1"));
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "closed by the server: 1008 policy".into(),
        retry_in: None,
        attempt: 1,
    }));
    assert!(row(&draw(&a, 120, 30), 28).contains("offline"));
}

#[test]
fn a_failover_with_a_reset_and_a_retried_line() {
    let mut a = busy();
    let member = |c: &str, n: &str, app: &str| Member {
        conn_id: c.into(),
        nick: n.into(),
        app_id: app.into(),
        sub: None,
    };
    // app1 died; we and bob are back through app3 and app2, and the
    // members frame still lists the dead connections beside the new ones.
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app3".into(),
        conn_id: "app3-9".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    a.update(frame(ServerFrame::Members {
        room: "lobby".into(),
        members: vec![
            member("c1", "alice", "app1"),
            member("app3-9", "alice", "app3"),
            member("c2", "bob", "app2"),
            member("app2-5", "bob", "app2"),
            member("c3", "carol", "app3"),
        ],
        total: 5,
    }));
    // Redis failed over meanwhile.
    a.update(frame(ServerFrame::Reset {
        room: "lobby".into(),
        epoch: "e2".into(),
        previous: "e1".into(),
        last: 5,
    }));
    // A line whose first try timed out; the retry found it applied.
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('u'),
        KeyModifiers::CONTROL,
    )));
    a.update(Event::Paste("did this go out?".into()));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    a.update(frame(ServerFrame::Sent {
        room: "lobby".into(),
        id: "t-1".into(),
        offset: 7,
        epoch: "e2".into(),
        duplicate: true,
    }));
    let t = draw(&a, 120, 30);
    insta::assert_snapshot!("failover_reset", screen(&t));
    let s = screen(&t);
    assert!(s.contains("Members (3)"), "{s}");
    let pane: Vec<&str> = s
        .lines()
        .filter_map(|l| l.rsplit('│').next())
        .map(|c| c.trim_matches(|c: char| c == ' ' || c == '"'))
        .collect();
    assert_eq!(
        pane[1..4],
        ["alice", "bob", "carol"],
        "each person once: {s}"
    );
    // Wrapped over two rows, as a warning ("!!", yellow).
    assert!(s.contains("!! │ server restarted its history: messages after #5 may be"));
    assert!(
        s.lines()
            .any(|l| l.contains("│sent ") && l.contains("did this go out?")),
        "{s}"
    );
    // F2: each person once, with every instance they are connected through.
    a.update(Event::Key(KeyEvent::new(KeyCode::F(2), KeyModifiers::NONE)));
    let s = screen(&draw(&a, 120, 30));
    assert!(s.contains("alice app1,app3"), "{s}");
}

#[test]
fn room_list_with_unread_counts_and_mentions() {
    let mut a = busy();
    for r in ["rust", "ops"] {
        a.update(Event::Paste(format!("/join {r}")));
        a.update(Event::Key(KeyEvent::new(
            KeyCode::Enter,
            KeyModifiers::NONE,
        )));
        a.update(frame(ServerFrame::Joined {
            room: r.into(),
            head: 0,
            epoch: "e1".into(),
            recovered: None,
        }));
    }
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('1'),
        KeyModifiers::ALT,
    )));
    for o in 1..=3 {
        a.update(msg("rust", o, "bob", "app2", "news"));
    }
    a.update(msg("ops", 1, "carol", "app3", "alice: the deploy is yours"));
    let t = draw(&a, 120, 30);
    insta::assert_snapshot!("room_list", screen(&t));
    assert!(
        row(&t, 2).contains("2 rust") && row(&t, 2).contains(" 3"),
        "{}",
        row(&t, 2)
    );
    assert!(
        row(&t, 3).contains("3 ops") && row(&t, 3).contains("1!1"),
        "{}",
        row(&t, 3)
    );
    assert!(row(&t, 28).contains("act: 2 3"), "{}", row(&t, 28));
}

#[test]
fn narrow_terminal_keeps_status_and_input() {
    let mut a = busy();
    a.update(Event::Resize(50, 12));
    let t = draw(&a, 50, 12);
    insta::assert_snapshot!("narrow", screen(&t));
    assert!(row(&t, 10).contains("on app1"));
    assert!(row(&t, 11).starts_with("[lobby]"));
    // Tiny sizes draw without panicking.
    for (w, h) in [(1, 1), (3, 2), (10, 3), (200, 2)] {
        let mut a = busy();
        a.update(Event::Resize(w, h));
        draw(&a, w, h);
    }
}

#[test]
fn escape_sequences_in_messages_cannot_reach_the_terminal() {
    let mut a = app(80, 10);
    a.update(msg("lobby", 1, "mallory", "app2", "\x1b[2J\x1b[31mred\x07"));
    let t = draw(&a, 80, 10);
    let buf = t.backend().buffer();
    for cell in buf.content() {
        assert!(
            !cell.symbol().chars().any(|c| c.is_control()),
            "control character in a cell: {:?}",
            cell.symbol()
        );
    }
}

#[test]
fn scrolled_view_stays_put_while_messages_arrive() {
    let mut a = app(120, 30);
    for o in 1..=100 {
        a.update(msg("lobby", o, "bob", "app2", &format!("line {o}")));
    }
    a.update(Event::Key(KeyEvent::new(
        KeyCode::PageUp,
        KeyModifiers::NONE,
    )));
    let before = screen(&draw(&a, 120, 30));
    let body = |s: &str| s.lines().take(27).collect::<Vec<_>>().join("\n");
    for o in 101..=120 {
        a.update(msg("lobby", o, "bob", "app2", &format!("line {o}")));
    }
    let t = draw(&a, 120, 30);
    let after = screen(&t);
    assert_eq!(body(&before), body(&after), "the view moved");
    assert!(row(&t, 28).contains("20 new below"), "{}", row(&t, 28));
    a.update(Event::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)));
    assert!(screen(&draw(&a, 120, 30)).contains("line 120"));
}

#[test]
fn ten_thousand_lines_render_fast() {
    let mut a = app(120, 40);
    for o in 1..=10_000 {
        a.update(msg(
            "lobby",
            o,
            &format!("user{}", o % 50),
            "app2",
            &format!("message number {o} with some text that is long enough to wrap twice in a normal pane {}", "x".repeat(o as usize % 40)),
        ));
    }
    assert_eq!(a.room().lines.len(), 10_000);
    let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let frames = 50;
    let start = Instant::now();
    for _ in 0..frames {
        t.draw(|f| view::render(&a, f)).unwrap();
    }
    let per_frame = start.elapsed() / frames;
    eprintln!("render at the bottom of 10k lines: {per_frame:?} per frame");
    // Halfway up the scrollback: rows are walked, not drawn.
    for _ in 0..150 {
        a.update(Event::Key(KeyEvent::new(
            KeyCode::PageUp,
            KeyModifiers::NONE,
        )));
    }
    assert!(a.room().scroll > 4000);
    let start = Instant::now();
    t.draw(|f| view::render(&a, f)).unwrap();
    let scrolled = start.elapsed();
    eprintln!("render {} rows up: {scrolled:?}", a.room().scroll);
    // Generous bounds (debug build, shared machine): what they catch is
    // drawing every line, which is orders of magnitude slower.
    assert!(per_frame < Duration::from_millis(40), "{per_frame:?}");
    assert!(scrolled < Duration::from_millis(400), "{scrolled:?}");
}

#[test]
fn a_flood_of_messages_is_absorbed_quickly() {
    let mut a = app(120, 40);
    // Real clock: the local time zone conversion is part of the cost.
    a.clock = Clock::default();
    let n = 20_000;
    let start = Instant::now();
    for o in 1..=n {
        a.update(msg(
            "lobby",
            o,
            &format!("user{}", o % 50),
            "app2",
            "a flood line of ordinary length, nothing special",
        ));
    }
    let per_msg = start.elapsed() / n as u32;
    eprintln!("update: {per_msg:?} per message");
    // Debug build on a shared machine: a generous bound that still catches
    // anything quadratic (20k messages must not take seconds each batch).
    assert!(per_msg < Duration::from_micros(500), "{per_msg:?}");
}

#[test]
fn long_input_scrolls_sideways_to_keep_the_cursor_visible() {
    let mut a = app(40, 8);
    let text: String = (0..30).map(|i| format!("w{i}日 ")).collect();
    a.update(Event::Paste(text));
    let mut t = draw(&a, 40, 8);
    let input = row(&t, 7);
    assert!(input.starts_with("[lobby] "), "{input}");
    assert!(input.contains("w29日"), "the end is shown: {input}");
    let (x, y) = {
        let p = t.get_cursor_position().unwrap();
        (p.x, p.y)
    };
    assert_eq!(y, 7);
    assert!(x < 40, "cursor off screen at {x}");
    // Home: the start is shown and the cursor follows it.
    a.update(Event::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE)));
    t = draw(&a, 40, 8);
    assert!(
        row(&t, 7).starts_with("[lobby] w0日 w1日"),
        "{}",
        row(&t, 7)
    );
    t.backend_mut().assert_cursor_position((8, 7));
    // A newline typed with Alt+Enter shows as ↵.
    a.update(Event::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)));
    assert!(row(&draw(&a, 40, 8), 7).starts_with("[lobby] ↵w0日"));
}

#[test]
fn the_window_title_tells_what_is_waiting() {
    let mut a = busy();
    assert_eq!(view::title(&a), "tui-client: lobby on app1");
    a.update(Event::Paste("/join ops".into()));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    a.update(frame(ServerFrame::Joined {
        room: "ops".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Char('1'),
        KeyModifiers::ALT,
    )));
    a.mentioned = false;
    a.update(msg("ops", 1, "bob", "app2", "anyone?"));
    assert!(!a.mentioned);
    a.update(msg("ops", 2, "bob", "app2", "alice: ping"));
    assert_eq!(
        view::title(&a),
        "tui-client: lobby on app1 (2 unread, 1 for you)"
    );
    assert!(a.mentioned, "a mention rings the bell (with --bell)");
    a.update(Event::Net(NetEvent::Disconnected {
        reason: "x".into(),
        retry_in: None,
        attempt: 1,
    }));
    assert!(view::title(&a).ends_with("[disconnected]"));
}

#[test]
fn an_80_by_24_terminal() {
    let mut a = busy();
    a.update(Event::Resize(80, 24));
    let t = draw(&a, 80, 24);
    insta::assert_snapshot!("eighty_by_24", screen(&t));
    // Defect 6: the lists collapse so the text keeps 50+ cells.
    assert!(!screen(&t).contains("Members (4)"));
    assert!(row(&t, 22).starts_with(" on app1 │ ● connected"));
    let text_col = row(&t, 21).find(" │ ").map(|i| 80 - i - 3);
    assert!(text_col.is_some_and(|w| w >= 50), "{text_col:?}");
}

/// Defect 6: the status bar's important items come first, so 80 columns
/// show the scroll state whole.
#[test]
fn an_80_column_status_bar_shows_the_scroll_state_whole() {
    let mut a = app(80, 24);
    a.update(frame(ServerFrame::Joined {
        room: "ops".into(),
        head: 0,
        epoch: "e1".into(),
        recovered: None,
    }));
    for o in 1..=60 {
        a.update(msg("lobby", o, "bob", "app2", &format!("line {o}")));
    }
    a.update(Event::Key(KeyEvent::new(
        KeyCode::PageUp,
        KeyModifiers::NONE,
    )));
    a.update(msg("lobby", 61, "bob", "app2", "one more"));
    a.update(msg("ops", 1, "carol", "app3", "alice: ping"));
    let t = draw(&a, 80, 24);
    let status = row(&t, 22);
    assert!(status.contains("⇣ 1 new below (Esc)"), "{status}");
    assert!(status.contains("act: 2"), "{status}");
}

/// `--registry`: connected straight to an instance, the status bar says
/// `direct`; through `--url` it does not.
#[test]
fn the_status_bar_says_direct_when_the_registry_was_used() {
    let mut a = app(100, 10);
    a.update(Event::Net(NetEvent::Via { direct: true }));
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app2".into(),
        conn_id: "app2-1".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    let status = row(&draw(&a, 100, 10), 8);
    assert!(status.contains("on app2 (was app1) direct │"), "{status}");
    a.update(Event::Net(NetEvent::Via { direct: false }));
    a.update(Event::Net(NetEvent::Connected {
        app_id: "app3".into(),
        conn_id: "app3-1".into(),
        nick: "alice".into(),
        limits: limits(),
    }));
    let status = row(&draw(&a, 100, 10), 8);
    assert!(!status.contains("direct"), "{status}");
}

/// Defect 7: with every instance down, why is on screen (not only in the
/// log), even at 80 columns.
#[test]
fn the_reason_for_reconnecting_is_on_screen_at_80_columns() {
    let mut a = app(80, 24);
    let now = a.now;
    for (attempt, reason) in [
        (6, "connection refused"),
        (7, "HTTP 503 Service Unavailable: No server is available"),
    ] {
        a.update(Event::Net(NetEvent::Disconnected {
            reason: reason.into(),
            retry_in: Some(Duration::from_secs(20)),
            attempt,
        }));
        a.update(Event::Tick(now));
        let status = row(&draw(&a, 80, 24), 22);
        let shown: String = reason.chars().take(14).collect();
        assert!(status.contains(&shown), "{status}");
        assert!(status.contains(&format!("attempt {attempt}")), "{status}");
    }
}

/// Defect 5: a flag is one two-cell glyph to measure, never split across
/// rows. On screen its two regional indicators go into two one-cell cells
/// (tmux keeps them so): whenever a cell that held one changes, the diff
/// ratatui sends rewrites that very cell, so no half flag is left behind
/// as lines scroll (the ghost that only Ctrl+L cleared).
#[test]
fn flags_leave_no_ghosts_while_lines_wrap_and_scroll() {
    let is_ri = |c: char| ('\u{1F1E6}'..='\u{1F1FF}').contains(&c);
    let mut a = app(60, 12);
    let flags = "🇫🇷🇩🇪🇯🇵🇧🇷🇮🇹🇪🇸🇨🇦🇳🇴🇸🇪🇫🇮".repeat(3);
    for o in 1..=6 {
        a.update(msg("lobby", o, "bob", "app2", &format!("{o} {flags} end")));
    }
    let mut prev = draw(&a, 60, 12).backend().buffer().clone();
    for o in 7..=14 {
        let tail = if o % 2 == 0 { " x" } else { " longer tail" };
        a.update(msg(
            "lobby",
            o,
            "bob",
            "app2",
            &format!("{o} {flags}{tail}"),
        ));
        let next = draw(&a, 60, 12).backend().buffer().clone();
        let updated: std::collections::HashSet<(u16, u16)> =
            prev.diff(&next).iter().map(|(x, y, _)| (*x, *y)).collect();
        for y in 0..12u16 {
            for x in 0..60u16 {
                let before = prev[(x, y)].symbol();
                // A terminal that keeps one indicator per cell holds the
                // k-th indicator of this symbol at column x + k.
                for (k, ri) in before.chars().filter(|c| is_ri(*c)).enumerate() {
                    let col = x + k as u16;
                    let now = next[(col, y)].symbol();
                    if now != ri.to_string() {
                        assert!(
                            updated.contains(&(col, y)),
                            "line {o}: {ri} at ({col},{y}) became {now:?} but is not redrawn"
                        );
                    }
                }
                let sym = next[(x, y)].symbol();
                assert!(
                    sym.chars().filter(|c| is_ri(*c)).count() <= 1,
                    "({x},{y}) {sym:?}"
                );
            }
        }
        // Flags stay whole: each indicator sits next to its partner.
        for y in 0..12u16 {
            let row: Vec<bool> = (0..60u16)
                .map(|x| next[(x, y)].symbol().chars().any(is_ri))
                .collect();
            let run_lengths = row.split(|ri| !ri).map(<[bool]>::len).filter(|n| *n > 0);
            for n in run_lengths {
                assert_eq!(
                    n % 2,
                    0,
                    "row {y} has half a flag: {}",
                    screen_row(&next, y)
                );
            }
        }
        prev = next;
    }
    // The input line moves over a flag in one step.
    a.update(Event::Paste("a🇫🇷".into()));
    a.update(Event::Key(KeyEvent::new(KeyCode::Left, KeyModifiers::NONE)));
    assert_eq!(a.input.cursor(), 1);
}

fn screen_row(buf: &ratatui::buffer::Buffer, y: u16) -> String {
    (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect()
}

/// Search: the match is brought back on screen and highlighted.
#[test]
fn search_brings_a_scrolled_off_line_back_highlighted() {
    let mut a = app(100, 20);
    a.update(msg("lobby", 1, "bob", "app2", "the needle is here"));
    for o in 2..=80 {
        a.update(msg("lobby", o, "bob", "app2", &format!("hay {o}")));
    }
    assert!(!screen(&draw(&a, 100, 20)).contains("needle"));
    a.update(Event::Paste("/search NEEDLE".into()));
    a.update(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    let t = draw(&a, 100, 20);
    let s = screen(&t);
    assert!(s.contains("the needle is here"), "{s}");
    assert!(
        row(&t, 18).contains("search \"NEEDLE\": 1 of 1"),
        "{}",
        row(&t, 18)
    );
    // The matching word is drawn highlighted.
    let buf = t.backend().buffer();
    let y = (0..18).find(|&y| row(&t, y).contains("needle")).unwrap();
    let x = row(&t, y).find("needle").unwrap() as u16;
    assert_eq!(buf[(x, y)].bg, ratatui::style::Color::LightYellow);
}

/// Direct messages are listed apart, under "Direct", by the other party.
#[test]
fn direct_message_rooms_are_listed_apart_with_unread_counts() {
    let mut a = app(120, 20);
    a.my_sub = Some("alice".into());
    for room in ["rust", "dm.alice.bob"] {
        a.update(frame(ServerFrame::Joined {
            room: room.into(),
            head: 0,
            epoch: "e1".into(),
            recovered: None,
        }));
    }
    a.update(msg("dm.alice.bob", 1, "bob", "app2", "psst"));
    a.update(msg("dm.alice.bob", 2, "bob", "app2", "you there?"));
    let t = draw(&a, 120, 20);
    insta::assert_snapshot!("direct_messages", screen(&t));
    assert!(row(&t, 3).starts_with(" Direct"), "{}", row(&t, 3));
    assert!(row(&t, 4).contains("@bob"), "{}", row(&t, 4));
    assert!(row(&t, 4).contains(" 2"), "{}", row(&t, 4));
}

#[test]
fn paging_back_shows_loading_then_the_page_and_the_beginning() {
    let (w, h) = (100, 16);
    let mut a = app(w, h);
    for o in 21..=40 {
        a.update(msg("lobby", o, "bob", "app2", &format!("live {o}")));
    }
    let ctrl_home = Event::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::CONTROL));
    assert!(a.update(ctrl_home.clone()).is_empty(), "not at the top yet");
    let acts = a.update(Event::Key(KeyEvent::new(
        KeyCode::PageUp,
        KeyModifiers::NONE,
    )));
    assert_eq!(acts.len(), 1, "{acts:?}");
    let t = draw(&a, w, h);
    assert!(
        screen(&t).contains(tui_client::state::older::LOADING),
        "{}",
        screen(&t)
    );
    let page = (1..=20)
        .map(|o| ChatMessage {
            room: "lobby".into(),
            offset: o,
            epoch: "e1".into(),
            nick: if o % 2 == 0 { "carol" } else { "dave" }.into(),
            text: format!("archived {o}"),
            app_id: "app3".into(),
            ts: T0 - 86_400_000 + o * 1000,
            id: None,
            action: false,
        })
        .collect();
    a.update(Event::Net(NetEvent::History {
        room: "lobby".into(),
        before: Some(21),
        result: Ok(tui_client::net::history::Page {
            messages: page,
            more: false,
        }),
    }));
    a.update(ctrl_home);
    let t = draw(&a, w, h);
    let s = screen(&t);
    assert!(!s.contains(tui_client::state::older::LOADING), "{s}");
    assert!(s.contains(tui_client::state::older::BEGINNING), "{s}");
    insta::assert_snapshot!("history_beginning", s);
}
