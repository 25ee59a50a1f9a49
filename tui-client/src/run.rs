//! The run loop: one `select!` over the terminal's events, the network
//! worker's events and a tick; the state changes in `App::update` and the
//! screen is drawn from it at most ~60 times a second. SIGTERM and SIGHUP
//! leave through the same door as `/quit`.

use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt;
use ratatui::layout::Rect;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::MissedTickBehavior;

use crate::config::Loaded;
use crate::net::{self, NetConfig, NetHandle};
use crate::opts::Opts;
use crate::room_log::{Notifier, RoomLogs};
use crate::state::clock::Clock;
use crate::state::{Action, App, ConnStatus, Event, Settings};
use crate::terminal::TerminalGuard;
use crate::view;

/// The shortest time between two frames: a flood of messages is drawn as
/// it comes, but not once per message.
const FRAME: Duration = Duration::from_millis(16);
/// Network events taken in one go before drawing.
const EVENT_BATCH: usize = 1024;

/// The nick to ask for: `--nick`, else the login name when it is a valid
/// nick, else none (the server picks one).
pub fn default_nick(opts: &Opts) -> String {
    if let Some(n) = &opts.nick {
        return n.clone();
    }
    std::env::var("USER")
        .ok()
        .filter(|u| chat_protocol::names::validate_nick(u).is_ok())
        .unwrap_or_default()
}

/// Run the client until the user quits.
pub async fn run(opts: Opts, loaded: Loaded) -> anyhow::Result<()> {
    let nick = default_nick(&opts);
    let rooms = opts.rooms();
    let mut cfg = NetConfig::new(&opts.url, &nick, &rooms[0]);
    cfg.more_rooms = rooms[1..].to_vec();
    cfg.history = opts.history;
    cfg.registry.clone_from(&opts.registry);
    cfg.token = match (&opts.token, &opts.token_file) {
        (Some(t), _) => Some(net::Token::Fixed(t.clone())),
        (None, Some(p)) => Some(net::Token::File(p.clone())),
        (None, None) => None,
    };
    // The subject names this client's side of `dm.<a>.<b>` rooms.
    let my_sub = cfg
        .token
        .as_ref()
        .and_then(|t| t.current().ok())
        .and_then(|t| net::jwt::sub(&t));
    let (net, mut events) = net::spawn(cfg);

    let mut guard = TerminalGuard::new(!opts.no_mouse)?;
    let size = guard.terminal.size()?;
    let settings = Settings {
        url: opts.url.clone(),
        nick,
        room: rooms[0].clone(),
        more_rooms: rooms[1..].to_vec(),
        scrollback: opts.scrollback,
        clock: Clock {
            utc: opts.utc,
            fixed_ms: None,
            // Checked when the config was read; leaked once, so the clock
            // stays `Copy`.
            format: loaded
                .file
                .timestamp_format
                .clone()
                .map(|f| &*Box::leak(f.into_boxed_str())),
        },
        id_prefix: crate::state::new_id_prefix(),
    };
    let area = Rect::new(0, 0, size.width, size.height);
    let mut app = App::new(settings, area, Instant::now());
    app.show_app_ids = opts.show_app_ids;
    app.theme = loaded.theme;
    app.keys = loaded.keys.clone();
    app.highlights = loaded.file.highlight.clone().unwrap_or_default();
    app.my_sub = my_sub;
    app.save_dir = Some(opts.log_dir());
    let mut room_logs = (!opts.no_room_logs).then(|| RoomLogs::new(&opts.log_dir()));
    let notifier = Notifier::new(opts.notify_command.clone());

    // SIGTERM (kill, systemd, tmux kill-session) and SIGHUP end the
    // program the same way as /quit, so the terminal is given back and the
    // server sees a clean close.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut terminal_events = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut dirty = true;
    let mut title = String::new();
    let mut last_draw = Instant::now() - FRAME;
    let result = loop {
        if dirty && last_draw.elapsed() >= FRAME {
            let new_title = view::title(&app);
            if new_title != title {
                guard.set_title(&new_title);
                title = new_title;
            }
            if std::mem::take(&mut app.mentioned) && opts.bell {
                guard.bell();
            }
            for n in std::mem::take(&mut app.notify_out) {
                if let Some(osc) = notifier.deliver(&n) {
                    guard.write_raw(&osc);
                }
            }
            guard.terminal.draw(|f| view::render(&app, f))?;
            last_draw = Instant::now();
            dirty = false;
            if opts.panic_after_start {
                panic!("--panic-after-start: checking that the terminal is restored");
            }
        }
        let next_frame = tokio::time::Instant::from_std(last_draw + FRAME);
        tokio::select! {
            ev = terminal_events.next() => match ev {
                None => break Ok(()),
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading the terminal")),
                Some(Ok(ev)) => {
                    if let Some(ev) = from_terminal(ev) {
                        let actions = app.update(ev);
                        perform(&mut app, &net, &mut guard, actions)?;
                        dirty = true;
                    }
                }
            },
            ev = events.recv() => match ev {
                None => break Err(anyhow::anyhow!("the network worker stopped")),
                Some(ev) => {
                    app.update(Event::Net(ev));
                    // Take what else is waiting before drawing: in a busy
                    // room this is one frame per batch, not per message.
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(ev) => {
                                app.update(Event::Net(ev));
                            }
                            Err(_) => break,
                        }
                    }
                    dirty = true;
                }
            },
            _ = tick.tick() => {
                app.update(Event::Tick(Instant::now()));
                // Countdowns move while waiting to reconnect.
                if !matches!(app.conn, ConnStatus::Connected) {
                    dirty = true;
                }
            }
            _ = tokio::time::sleep_until(next_frame), if dirty => {}
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: quitting");
                break Ok(());
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: quitting");
                break Ok(());
            }
        }
        let entries = std::mem::take(&mut app.log_out);
        if let Some(logs) = room_logs.as_mut().filter(|_| !entries.is_empty()) {
            if let Some(e) = logs.write(&entries) {
                tracing::warn!(error = %e, "room log");
                app.error(&e);
            }
        }
        if app.quit {
            break Ok(());
        }
    };
    net.shutdown(Duration::from_secs(1)).await;
    drop(guard);
    result
}

fn from_terminal(ev: TermEvent) -> Option<Event> {
    match ev {
        TermEvent::Key(k) => Some(Event::Key(k)),
        TermEvent::Mouse(m) => Some(Event::Mouse(m)),
        TermEvent::Paste(s) => Some(Event::Paste(s)),
        TermEvent::Resize(w, h) => Some(Event::Resize(w, h)),
        TermEvent::FocusGained => Some(Event::Focus(true)),
        TermEvent::FocusLost => Some(Event::Focus(false)),
    }
}

fn perform(
    app: &mut App,
    net: &NetHandle,
    guard: &mut TerminalGuard,
    actions: Vec<Action>,
) -> anyhow::Result<()> {
    for action in actions {
        match action {
            Action::Net(req) => {
                if let Err(e) = net.request(req) {
                    app.error(&e.to_string());
                }
            }
            Action::Redraw => guard.terminal.clear()?,
            Action::Save { path, text } => match save(&path, &text) {
                Ok(()) => app.info(&format!("saved {} lines to {path}", text.lines().count())),
                Err(e) => app.error(&format!("cannot save to {path}: {e}")),
            },
            Action::Quit => app.quit = true,
        }
    }
    Ok(())
}

/// Write a `/save` file, making its directory first.
fn save(path: &str, text: &str) -> std::io::Result<()> {
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}
