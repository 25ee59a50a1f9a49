//! Command-line options (each with an environment variable) and the key
//! reference shown by `--help` and `/help`.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::Parser;

/// The keys, for `--help` and `/help`.
pub const KEYS: &str = "\
Enter            send the line (or run the /command)
Alt+Enter        new line in the message
←/→, Home/End    move by character; Ctrl+←/→ or Alt+B/F by word
Ctrl+A/Ctrl+E    start/end of the line
Backspace/Del    delete a character; Ctrl+W a word; Ctrl+U/Ctrl+K to start/end
↑/↓              input history
Tab              complete a nick, a /command or a room; again to cycle
PgUp/PgDn        scroll the messages; mouse wheel too
Ctrl+Home        top of the scrollback; Esc or Ctrl+End back to the bottom
Alt+1..9, Alt+0  show room 1..10; Ctrl+N/Ctrl+P or Alt+←/→ next/previous
Alt+A            next room that mentions you, else next with unread lines
                 (a click on a room in the list shows it)
F1               help;  F2 show/hide the APP_ID each message came through
Ctrl+L           redraw;  Ctrl+C (or Ctrl+D on an empty line) quit
";

/// A terminal chat client for the clustered chat server.
///
/// The status bar always shows the instance (APP_ID) the connection landed
/// on, the connection state, the round-trip time, your nick and the room.
/// When the connection drops it reconnects by itself (exponential backoff
/// with jitter) and resumes every room from the last message it saw.
/// With the mouse enabled, hold Shift to select text in most terminals.
#[derive(Debug, Clone, Parser)]
#[command(name = "tui-client", version, after_help = after_help())]
pub struct Opts {
    /// The server's WebSocket URL (normally HAProxy in front of the cluster).
    #[arg(long, env = "CHAT_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// Your nick: 1 to 32 characters, no spaces. Default: your login name
    /// ($USER) when it is a valid nick, else the server picks one.
    #[arg(long, env = "CHAT_NICK")]
    pub nick: Option<String>,

    /// A JWT for servers that require one: sent on every connection and
    /// reconnection as `?token=`. The nick then comes from the token.
    #[arg(
        long,
        env = "CHAT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// Read the JWT from this file instead (re-read on every connection
    /// attempt: replace the file when the token expires, then /reconnect).
    #[arg(long, env = "CHAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The room(s) to join, comma-separated (`lobby,rust,ops`): all are
    /// joined at start, the first is shown.
    #[arg(long, env = "CHAT_ROOM", default_value = "lobby")]
    pub room: String,

    /// Messages of history to show when joining a room.
    #[arg(long, env = "CHAT_HISTORY", default_value_t = 50)]
    pub history: u32,

    /// Lines of scrollback kept per room.
    #[arg(long, env = "CHAT_SCROLLBACK", default_value_t = crate::state::DEFAULT_SCROLLBACK)]
    pub scrollback: usize,

    /// The log file (logs never go to the screen). Default:
    /// $XDG_STATE_HOME/tui-client/tui-client.log or
    /// ~/.local/state/tui-client/tui-client.log.
    #[arg(long, env = "CHAT_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Log filter, in `RUST_LOG` syntax.
    #[arg(long, env = "CHAT_LOG", default_value = "info")]
    pub log: String,

    /// Do not capture the mouse (keeps the terminal's own text selection;
    /// no wheel scrolling).
    #[arg(long, env = "CHAT_NO_MOUSE", value_parser = BoolishValueParser::new())]
    pub no_mouse: bool,

    /// Show times in UTC rather than the local time zone.
    #[arg(long, env = "CHAT_UTC", value_parser = BoolishValueParser::new())]
    pub utc: bool,

    /// Show the APP_ID each message came through from the start (F2
    /// toggles).
    #[arg(long, env = "CHAT_SHOW_APP_IDS", value_parser = BoolishValueParser::new())]
    pub show_app_ids: bool,

    /// Ring the terminal bell when a message mentions your nick (tmux
    /// then flags the window).
    #[arg(long, env = "CHAT_BELL", value_parser = BoolishValueParser::new())]
    pub bell: bool,

    /// Panic once the UI is up: lets the end-to-end tests check that the
    /// terminal is restored after a panic. Not for users.
    #[arg(long, hide = true)]
    pub panic_after_start: bool,
}

fn after_help() -> String {
    format!(
        "Keys:\n{}\nCommands: /join /leave /switch /nick /who /me /appids /reconnect /clear /lastlog /save /help /quit\n",
        KEYS.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

impl Opts {
    /// Check what the server would refuse anyway, before connecting.
    pub fn validate(&self) -> Result<(), String> {
        for room in self.rooms() {
            chat_protocol::names::validate_room(&room)
                .map_err(|e| format!("--room/CHAT_ROOM: {room:?}: {e}"))?;
        }
        if let Some(nick) = &self.nick {
            chat_protocol::names::validate_nick(nick)
                .map_err(|e| format!("--nick/CHAT_NICK: {e}"))?;
        }
        if self.url.starts_with("wss://") {
            // Built without a TLS stack (the cluster speaks plain ws behind
            // HAProxy); better to say so than to retry forever.
            return Err(
                "--url/CHAT_URL: wss:// is not supported by this build; use ws:// \
                        (terminate TLS in HAProxy or a tunnel)"
                    .into(),
            );
        }
        if !self.url.starts_with("ws://") {
            return Err(format!(
                "--url/CHAT_URL must start with ws://, got {}",
                self.url
            ));
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("--token/CHAT_TOKEN is empty".into());
        }
        if let Some(p) = &self.token_file {
            crate::net::read_token_file(p)
                .map_err(|e| format!("--token-file/CHAT_TOKEN_FILE: {e}"))?;
        }
        if self.scrollback == 0 {
            return Err("--scrollback/CHAT_SCROLLBACK must be at least 1".into());
        }
        Ok(())
    }

    /// The rooms of `--room`, in order, without repeats (at least one: an
    /// empty entry is kept so that validation reports it).
    pub fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = Vec::new();
        for r in self.room.split(',').map(str::trim) {
            if !rooms.iter().any(|x| x == r) {
                rooms.push(r.to_string());
            }
        }
        rooms
    }

    /// Where the log goes.
    pub fn log_path(&self) -> PathBuf {
        if let Some(p) = &self.log_file {
            return p.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("tui-client").join("tui-client.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let o = Opts::try_parse_from(["tui-client"]).unwrap();
        assert_eq!(o.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(o.room, "lobby");
        assert!(o.validate().is_ok());
        let o = Opts::try_parse_from(["tui-client", "--nick", "ann", "--room", "ops"]).unwrap();
        assert!(!o.no_mouse && !o.utc);
        assert_eq!(o.nick.as_deref(), Some("ann"));
        assert_eq!(o.room, "ops");
        let o = Opts::try_parse_from(["tui-client", "--room", "lobby, rust,ops,rust"]).unwrap();
        assert_eq!(o.rooms(), vec!["lobby", "rust", "ops"]);
        assert!(o.validate().is_ok());
        let o = Opts::try_parse_from(["tui-client", "--no-mouse", "--utc"]).unwrap();
        assert!(o.no_mouse && o.utc);
    }

    #[test]
    fn bad_values_are_refused_before_connecting() {
        let o = Opts::try_parse_from(["tui-client", "--nick", "a b"]).unwrap();
        assert!(o.validate().unwrap_err().contains("--nick"));
        let o = Opts::try_parse_from(["tui-client", "--room", "no spaces"]).unwrap();
        assert!(o.validate().unwrap_err().contains("--room"));
        let o = Opts::try_parse_from(["tui-client", "--room", "a,,b"]).unwrap();
        assert!(o.validate().unwrap_err().contains("--room"));
        let o = Opts::try_parse_from(["tui-client", "--url", "http://x"]).unwrap();
        assert!(o.validate().unwrap_err().contains("ws://"));
        let o = Opts::try_parse_from(["tui-client", "--url", "wss://x/ws"]).unwrap();
        assert!(o.validate().unwrap_err().contains("not supported"));
    }

    #[test]
    fn tokens_from_the_flag_or_a_file() {
        let o = Opts::try_parse_from(["tui-client", "--token", "a.b.c"]).unwrap();
        assert_eq!(o.token.as_deref(), Some("a.b.c"));
        assert!(o.validate().is_ok());
        let o = Opts::try_parse_from(["tui-client", "--token", " "]).unwrap();
        assert!(o.validate().unwrap_err().contains("--token"));
        let path = std::env::temp_dir().join(format!("tui-token-{}", std::process::id()));
        std::fs::write(&path, "x.y.z\n").unwrap();
        let o =
            Opts::try_parse_from(["tui-client", "--token-file", path.to_str().unwrap()]).unwrap();
        assert!(o.validate().is_ok());
        std::fs::remove_file(&path).unwrap();
        assert!(o.validate().unwrap_err().contains("--token-file"));
        assert!(Opts::try_parse_from(["tui-client", "--token", "a", "--token-file", "f"]).is_err());
    }

    #[test]
    fn help_documents_the_keys_and_the_env_vars() {
        let help = <Opts as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for needle in [
            "PgUp",
            "Alt+1..9",
            "F2",
            "CHAT_URL",
            "CHAT_NICK",
            "CHAT_ROOM",
            "CHAT_TOKEN",
            "--token-file",
            "/join",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}");
        }
    }
}
