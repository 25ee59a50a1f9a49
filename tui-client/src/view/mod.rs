//! Drawing: reads the [`App`] and never changes it.
//!
//! - `messages`: the message pane (only visible rows are wrapped).
//! - `sidebar`: the room list and the member list.
//! - `status`: the status bar.
//! - `input`: the input line and the cursor.
//! - [`colors`] — stable nick colours.

pub mod colors;
mod input;
mod messages;
mod sidebar;
pub mod status;

use ratatui::Frame;

use crate::layout;
use crate::state::App;

/// The terminal (or tmux pane) title: where you are and what is waiting,
/// so it can be seen from other windows.
pub fn title(app: &App) -> String {
    let unread: usize = app.rooms.iter().map(|r| r.unread).sum();
    let mentions: usize = app.rooms.iter().map(|r| r.mentions).sum();
    let mut t = format!("tui-client: {}", app.room_label(app.current));
    if let Some(id) = &app.app_id {
        t.push_str(&format!(" on {id}"));
    }
    if unread > 0 {
        t.push_str(&format!(" ({unread} unread"));
        if mentions > 0 {
            t.push_str(&format!(", {mentions} for you"));
        }
        t.push(')');
    }
    if app.conn != crate::state::ConnStatus::Connected {
        t.push_str(" [disconnected]");
    }
    t
}

/// Draw the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let panes = layout::panes(frame.area());
    let buf = frame.buffer_mut();
    if let Some(area) = panes.rooms {
        sidebar::rooms(app, area, buf);
    }
    messages::render(app, panes.messages, buf);
    if let Some(area) = panes.members {
        sidebar::members(app, area, buf);
    }
    status::render(app, panes.status, buf);
    if let Some(cursor) = input::render(app, panes.input, buf) {
        frame.set_cursor_position(cursor);
    }
}
