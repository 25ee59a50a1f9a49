//! Taking over the terminal and always giving it back.
//!
//! `ratatui::init` enters raw mode and the alternate screen and installs a
//! panic hook that restores both. This client also turns on mouse capture
//! and bracketed paste, which `ratatui::restore` does not turn off, so the
//! guard adds its own hook (run before ratatui's) and its `Drop` undoes
//! everything on every exit path, early returns and errors included.

use std::io::{stdout, Write};

use crossterm::event::{
    DisableBracketedPaste, DisableFocusChange, DisableMouseCapture, EnableBracketedPaste,
    EnableFocusChange, EnableMouseCapture,
};
use crossterm::execute;
use crossterm::terminal::SetTitle;
use ratatui::DefaultTerminal;

/// Save the window title on xterm's title stack (XTWINOPS 22), to give it
/// back on exit (23): the client sets its own while it runs.
const PUSH_TITLE: &[u8] = b"\x1b[22;0t";
const POP_TITLE: &[u8] = b"\x1b[23;0t";

/// Owns the terminal while the UI runs.
#[derive(Debug)]
pub struct TerminalGuard {
    pub terminal: DefaultTerminal,
}

/// Turn off what `ratatui::restore` does not. Errors are ignored: this runs
/// while exiting or panicking, with nowhere left to report them.
fn undo_extras() {
    let mut out = stdout();
    let _ = execute!(
        out,
        DisableMouseCapture,
        DisableBracketedPaste,
        DisableFocusChange
    );
    let _ = out.flush();
}

impl TerminalGuard {
    /// Enter raw mode and the alternate screen; capture the mouse unless
    /// told not to.
    pub fn new(mouse: bool) -> anyhow::Result<Self> {
        let terminal = ratatui::try_init()?;
        let ratatui_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            undo_extras();
            ratatui_hook(info);
        }));
        let mut out = stdout();
        out.write_all(PUSH_TITLE)?;
        // Focus reports tell when to send desktop notifications.
        execute!(out, EnableBracketedPaste, EnableFocusChange)?;
        if mouse {
            execute!(out, EnableMouseCapture)?;
        }
        Ok(Self { terminal })
    }
}

impl TerminalGuard {
    /// Set the window title (tmux shows it with `set-titles`). Cosmetic:
    /// a terminal that does not take it loses nothing.
    pub fn set_title(&self, title: &str) {
        let _ = execute!(stdout(), SetTitle(crate::wrap::sanitize(title)));
    }

    /// Write bytes the terminal interprets (an OSC notification).
    pub fn write_raw(&self, bytes: &[u8]) {
        let mut out = stdout();
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }

    /// Ring the terminal bell (tmux marks the window).
    pub fn bell(&self) {
        let mut out = stdout();
        let _ = out.write_all(b"\x07").and_then(|()| out.flush());
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        // Give the title back (xterm's title stack; others ignore it).
        let _ = stdout()
            .write_all(POP_TITLE)
            .and_then(|()| stdout().flush());
        undo_extras();
        ratatui::restore();
    }
}
