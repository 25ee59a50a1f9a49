//! The run loop's side effects of what the state decided: per-room log
//! files and desktop notifications.
//!
//! Room logs go to `<log dir>/<room>.log` (default
//! `$XDG_STATE_HOME/wschat/logs`), appended, one dated line per message,
//! join, leave or nick change that arrived live (history replay is not
//! logged again). Notifications go through the configured command or, by
//! default, ask the terminal (OSC 777 and OSC 9: urxvt, foot, kitty,
//! WezTerm, iTerm2, Windows Terminal; others ignore them).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::state::{LogEntry, Notification};

/// Most log files kept open at once (a client in many rooms reopens the
/// quiet ones).
const MAX_OPEN: usize = 32;
/// Most notification commands running at once; past it a notification is
/// dropped (and logged) rather than piling up processes.
const MAX_RUNNING: usize = 4;

/// The room log files.
#[derive(Debug)]
pub struct RoomLogs {
    dir: PathBuf,
    files: HashMap<String, File>,
    /// An error was reported already: say it once, not per line.
    reported: bool,
}

impl RoomLogs {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            reported: false,
        }
    }

    /// The file of a room's log.
    pub fn path(&self, room: &str) -> PathBuf {
        self.dir.join(format!("{room}.log"))
    }

    /// Append lines; the first failure is returned (once) for the user.
    pub fn write(&mut self, entries: &[LogEntry]) -> Option<String> {
        let mut first_error = None;
        for e in entries {
            if let Err(err) = self.append(e) {
                if !self.reported {
                    self.reported = true;
                    first_error = Some(format!(
                        "cannot write the log of {} in {}: {err} (no more room logs this run)",
                        e.room,
                        self.dir.display()
                    ));
                }
            }
        }
        first_error
    }

    fn append(&mut self, e: &LogEntry) -> std::io::Result<()> {
        if self.reported {
            return Ok(());
        }
        if !self.files.contains_key(&e.room) {
            if self.files.len() >= MAX_OPEN {
                self.files.clear();
            }
            std::fs::create_dir_all(&self.dir)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(&e.room))?;
            self.files.insert(e.room.clone(), f);
        }
        if let Some(f) = self.files.get_mut(&e.room) {
            writeln!(f, "{}", e.text)?;
        }
        Ok(())
    }
}

/// How notifications go out.
#[derive(Debug, Clone)]
pub struct Notifier {
    command: Option<String>,
    running: Arc<AtomicUsize>,
}

/// Text safe inside an OSC string: no control characters (an ESC or BEL
/// would end it early and let a message write to the terminal), and for
/// OSC 777 no `;`, which separates its fields.
fn osc_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() || c == ';' { ' ' } else { c })
        .take(200)
        .collect()
}

/// The escape sequences that ask the terminal for a notification: OSC 777
/// (`notify;title;body`) and OSC 9 (`body`).
pub fn osc(n: &Notification) -> Vec<u8> {
    let (title, body) = (osc_safe(&n.title), osc_safe(&n.body));
    format!("\x1b]777;notify;{title};{body}\x1b\\\x1b]9;{title}: {body}\x1b\\").into_bytes()
}

impl Notifier {
    pub fn new(command: Option<String>) -> Self {
        Self {
            command: command.filter(|c| !c.trim().is_empty()),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Deliver one notification: run the command (title as `$1`, text as
    /// `$2`, never spliced into the command line), or return the escape
    /// sequences for the terminal.
    pub fn deliver(&self, n: &Notification) -> Option<Vec<u8>> {
        let Some(cmd) = &self.command else {
            return Some(osc(n));
        };
        if self.running.load(Ordering::SeqCst) >= MAX_RUNNING {
            tracing::warn!("notification dropped: {MAX_RUNNING} notify commands still running");
            return None;
        }
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg("wschat-notify")
            .arg(&n.title)
            .arg(&n.body)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                let running = self.running.clone();
                running.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Err(e) = child.wait().await {
                        tracing::warn!(error = %e, "notify command");
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => tracing::warn!(error = %e, command = %cmd, "cannot run the notify command"),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_logs_append_per_room() {
        let dir = std::env::temp_dir().join(format!("wschat-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut logs = RoomLogs::new(&dir);
        let e = |room: &str, text: &str| LogEntry {
            room: room.into(),
            text: text.into(),
        };
        assert_eq!(
            logs.write(&[e("lobby", "2026-01-02 03:04:05 <ann> hi"), e("ops", "x")]),
            None
        );
        assert_eq!(logs.write(&[e("lobby", "second")]), None);
        let lobby = std::fs::read_to_string(dir.join("lobby.log")).unwrap();
        assert_eq!(lobby, "2026-01-02 03:04:05 <ann> hi\nsecond\n");
        assert_eq!(std::fs::read_to_string(dir.join("ops.log")).unwrap(), "x\n");
        std::fs::remove_dir_all(&dir).unwrap();
        // A directory that cannot be made is reported once.
        let mut bad = RoomLogs::new(Path::new("/proc/no/such/dir"));
        assert!(bad.write(&[e("a", "1")]).is_some());
        assert!(bad.write(&[e("a", "2")]).is_none());
    }

    #[test]
    fn osc_notifications_cannot_carry_escapes() {
        let n = Notification {
            title: "bob in lobby".into(),
            body: "hi\x1b]0;pwned\x07; there".into(),
        };
        let out = String::from_utf8(osc(&n)).unwrap();
        assert!(
            out.starts_with("\x1b]777;notify;bob in lobby;hi ]0 pwned   there\x1b\\"),
            "{out:?}"
        );
        assert!(out.contains("\x1b]9;bob in lobby: hi"));
        assert_eq!(out.matches('\x1b').count(), 4, "only our own escapes");
    }

    #[tokio::test]
    async fn a_notify_command_gets_title_and_text_as_arguments() {
        let out = std::env::temp_dir().join(format!("wschat-notify-{}", std::process::id()));
        let cmd = format!("printf '%s|%s' \"$1\" \"$2\" > {}", out.display());
        let n = Notifier::new(Some(cmd));
        let sent = n.deliver(&Notification {
            title: "bob".into(),
            body: "$(touch /tmp/x); `id`".into(),
        });
        assert!(sent.is_none(), "the command, not the terminal");
        let mut text = String::new();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            text = std::fs::read_to_string(&out).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
        }
        assert_eq!(
            text, "bob|$(touch /tmp/x); `id`",
            "the text is data, not shell"
        );
        let _ = std::fs::remove_file(&out);
    }
}
