//! `tui-client`: a terminal chat client for the clustered chat server, for
//! all-day use. It always shows which instance (APP_ID) its WebSocket
//! landed on, reconnects by itself with backoff and jitter, and resumes
//! every room from the last offset it saw, so no line is lost or doubled.
//!
//! # Layout
//! - [`opts`] — command-line options, environment variables, the key list.
//! - [`config`] — the TOML config file under the options.
//! - [`room_log`] — per-room logs and notifications: the run loop's side
//!   effects of what the state decided.
//! - [`run`] — the `select!` loop tying terminal, network and state together.
//! - [`terminal`] — the guard that restores the terminal on exit and panic.
//! - [`logging`] — logs to a file, never to the screen.
//! - [`state`] — everything the client knows (rooms, input, connection),
//!   changed only by `App::update`; no drawing.
//! - [`view`] — drawing the state with ratatui; no state changes.
//! - [`net`] — the network actor: connect, resume, dedupe, ping, reconnect.
//! - [`layout`] — screen geometry shared by `state` and `view`.
//! - [`wrap`] — terminal-safe text and wrapping by display width.

pub mod config;
pub mod layout;
pub mod logging;
pub mod net;
pub mod opts;
pub mod room_log;
pub mod run;
pub mod state;
pub mod terminal;
pub mod view;
pub mod wrap;

pub use opts::Opts;
pub use state::{App, Event};
