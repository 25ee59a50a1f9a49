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

/// Draw the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let panes = layout::panes(frame.area());
    let buf = frame.buffer_mut();
    if let Some(area) = panes.rooms {
        sidebar::rooms(app, area, buf);
    }
    messages::render(app.room(), app.show_app_ids, panes.messages, buf);
    if let Some(area) = panes.members {
        sidebar::members(app, area, buf);
    }
    status::render(app, panes.status, buf);
    if let Some(cursor) = input::render(app, panes.input, buf) {
        frame.set_cursor_position(cursor);
    }
}
