//! Taking over the terminal and always giving it back.
//!
//! `ratatui::init` enters raw mode and the alternate screen and installs a
//! panic hook that restores both. This client also turns on mouse capture
//! and bracketed paste, which `ratatui::restore` does not turn off, so the
//! guard adds its own hook (run before ratatui's) and its `Drop` undoes
//! everything on every exit path, early returns and errors included.

use std::io::{stdout, Write};

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use crossterm::execute;
use ratatui::DefaultTerminal;

/// Owns the terminal while the UI runs.
#[derive(Debug)]
pub struct TerminalGuard {
    pub terminal: DefaultTerminal,
}

/// Turn off what `ratatui::restore` does not. Errors are ignored: this runs
/// while exiting or panicking, with nowhere left to report them.
fn undo_extras() {
    let mut out = stdout();
    let _ = execute!(out, DisableMouseCapture, DisableBracketedPaste);
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
        execute!(out, EnableBracketedPaste)?;
        if mouse {
            execute!(out, EnableMouseCapture)?;
        }
        Ok(Self { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        undo_extras();
        ratatui::restore();
    }
}
