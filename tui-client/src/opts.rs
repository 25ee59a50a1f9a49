//! Command-line options (each with an environment variable) and the key
//! reference shown by `--help` and `/help`.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::{self, Loaded};

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
                 (PgUp at the top loads older messages from the server)
Alt+1..9, Alt+0  show room 1..10; Ctrl+N/Ctrl+P or Alt+←/→ next/previous
Alt+A            next room that mentions you, else next with unread lines
                 (a click on a room in the list shows it)
Ctrl+R           search this room's scrollback (n/N next/previous, Esc back)
Alt+M            the mentions of you across rooms
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
    /// The config file (TOML). Default: $XDG_CONFIG_HOME/wschat/config.toml
    /// or ~/.config/wschat/config.toml, when it exists. Flags and
    /// environment variables override what it says.
    #[arg(long, env = "CHAT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file, environment and flags
    /// together, the token hidden) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

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

    /// Read the JWT from this file instead. It is read again on every
    /// connection attempt, ~30 s before the token's exp (a newer token found
    /// there is sent as a refresh, so the connection lives on) and after a
    /// close 4003 (token expired), which then reconnects with it.
    #[arg(long, env = "CHAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Ask this registry (`GET URL`, plain http://) before every connect
    /// which instance to connect to directly, bypassing HAProxy; `--url` is
    /// the fallback when the registry is down or names dead instances.
    #[arg(long, env = "CHAT_REGISTRY")]
    pub registry: Option<String>,

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

    /// The diagnostics log (logs never go to the screen). Default: one
    /// file per process, $XDG_STATE_HOME/wschat/diag/tui-client-<time>-<pid>.log
    /// (~/.local/state/wschat/... without XDG_STATE_HOME); the newest 20
    /// are kept.
    #[arg(long, env = "CHAT_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Where each room's log (<room>.log, with dates) and /save files go.
    /// Default: $XDG_STATE_HOME/wschat/logs.
    #[arg(long, env = "CHAT_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Do not write room logs.
    #[arg(long, env = "CHAT_NO_ROOM_LOGS", value_parser = BoolishValueParser::new())]
    pub no_room_logs: bool,

    /// A shell command run for each notification (a mention or a direct
    /// message while the terminal is unfocused), with the title as $1 and
    /// the text as $2, e.g. 'notify-send "$1" "$2"'. Without it the
    /// terminal is asked to notify (OSC 777 and OSC 9).
    #[arg(long, env = "CHAT_NOTIFY_COMMAND")]
    pub notify_command: Option<String>,

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
        "Keys:\n{}\nCommands: /join /leave /switch /nick /who /me /msg /query /search /lastlog /mentions /appids /reconnect /clear /save /help /quit\n",
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

    /// Where the diagnostics log goes: `--log-file`, else a file of this
    /// process's own (two clients never share one).
    pub fn log_path(&self) -> PathBuf {
        if let Some(p) = &self.log_file {
            return p.clone();
        }
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        config::state_dir()
            .join("diag")
            .join(format!("tui-client-{stamp}-{}.log", std::process::id()))
    }

    /// Where room logs and `/save` files go.
    pub fn log_dir(&self) -> PathBuf {
        match &self.log_dir {
            Some(d) => config::expand_home(d),
            None => config::state_dir().join("logs"),
        }
    }

    /// Parse the command line (and environment) and merge the config file
    /// under it: a flag or variable given wins over the file.
    pub fn load_from<I, T>(args: I) -> Result<(Opts, Loaded), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Opts::command().try_get_matches_from(args)?;
        let mut opts = Opts::from_arg_matches(&matches)?;
        let loaded = config::load(opts.config.as_deref())
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e + "\n"))?;
        opts.merge(&matches, &loaded);
        Ok((opts, loaded))
    }

    fn merge(&mut self, m: &clap::ArgMatches, loaded: &Loaded) {
        let given = |id: &str| {
            matches!(
                m.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let f = &loaded.file;
        if !given("url") {
            if let Some(v) = &f.url {
                self.url.clone_from(v);
            }
        }
        if !given("nick") && f.nick.is_some() {
            self.nick.clone_from(&f.nick);
        }
        // A token given by flag or environment replaces the file's, in
        // either form.
        if !given("token") && !given("token_file") {
            if let Some(t) = &f.token {
                self.token = Some(t.clone());
            } else if let Some(p) = &f.token_file {
                self.token_file = Some(config::expand_home(p));
            }
        }
        if !given("registry") && f.registry.is_some() {
            self.registry.clone_from(&f.registry);
        }
        if !given("room") {
            if let Some(r) = &f.rooms {
                self.room = r.join(",");
            }
        }
        if !given("history") {
            if let Some(h) = f.history {
                self.history = h;
            }
        }
        if !given("utc") {
            if let Some(u) = f.utc {
                self.utc = u;
            }
        }
        if !given("bell") {
            if let Some(b) = f.bell {
                self.bell = b;
            }
        }
        if !given("notify_command") && f.notify_command.is_some() {
            self.notify_command.clone_from(&f.notify_command);
        }
        if !given("log_dir") && f.log_dir.is_some() {
            self.log_dir.clone_from(&f.log_dir);
        }
    }

    /// The effective configuration as TOML (`--print-config`); the token
    /// is hidden.
    pub fn effective_toml(&self, loaded: &Loaded) -> String {
        let rooms = self.rooms();
        let file = config::FileConfig {
            url: Some(self.url.clone()),
            nick: self.nick.clone(),
            token: self.token.as_ref().map(|_| "***".to_string()),
            token_file: self.token_file.clone(),
            registry: self.registry.clone(),
            rooms: Some(rooms),
            history: Some(self.history),
            timestamp_format: Some(
                loaded
                    .file
                    .timestamp_format
                    .clone()
                    .unwrap_or_else(|| "%H:%M:%S".into()),
            ),
            utc: Some(self.utc),
            highlight: Some(loaded.file.highlight.clone().unwrap_or_default()),
            bell: Some(self.bell),
            notify_command: self.notify_command.clone(),
            log_dir: Some(self.log_dir()),
            colors: Some(config::ColorConfig {
                mention: Some(format!("{}", loaded.theme.mention).to_lowercase()),
                own: loaded.theme.own.map(|c| format!("{c}").to_lowercase()),
                timestamp: Some(format!("{}", loaded.theme.timestamp).to_lowercase()),
                status_bg: Some(loaded.theme.status_bg),
            }),
            keys: Some(
                loaded
                    .keys
                    .bindings
                    .iter()
                    .map(|(k, a)| (a.name().to_string(), config::key_name(k)))
                    .collect(),
            ),
        };
        let source = match &loaded.path {
            Some(p) => format!("# config file: {}\n", p.display()),
            None => "# no config file\n".to_string(),
        };
        source + &toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
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

    use std::path::Path;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tui-cfg-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_config_file_fills_in_and_flags_override_it() {
        let p = write(
            "merge",
            "nick = \"fromfile\"\nurl = \"ws://file:1/ws\"\nrooms = [\"a\", \"b\"]\nbell = true\n\n[keys]\nsearch = \"alt+s\"\n",
        );
        let path = p.to_str().unwrap();
        let (o, l) = Opts::load_from(["tui-client", "--config", path]).unwrap();
        assert_eq!(o.nick.as_deref(), Some("fromfile"));
        assert_eq!(o.url, "ws://file:1/ws");
        assert_eq!(o.rooms(), vec!["a", "b"]);
        assert!(o.bell);
        let (o, _) = Opts::load_from([
            "tui-client",
            "--config",
            path,
            "--nick",
            "flag",
            "--room",
            "c",
        ])
        .unwrap();
        assert_eq!(o.nick.as_deref(), Some("flag"));
        assert_eq!(o.rooms(), vec!["c"]);
        assert_eq!(o.url, "ws://file:1/ws");
        let printed = o.effective_toml(&l);
        assert!(printed.contains("nick = \"flag\""), "{printed}");
        assert!(printed.contains("search = \"alt+s\""), "{printed}");
        // What it prints reads back as a config file.
        let back = config::parse(&printed, Path::new("printed")).unwrap();
        assert_eq!(back.file.nick.as_deref(), Some("flag"));
        std::fs::write(&p, "nick = \"ok\"\nrooms = [\"x\"\n").unwrap();
        let e = Opts::load_from(["tui-client", "--config", path])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn the_token_is_hidden_in_the_printed_config() {
        // An empty file: the user's own config plays no part.
        let p = write("empty", "");
        let (o, l) = Opts::load_from([
            "tui-client",
            "--config",
            p.to_str().unwrap(),
            "--token",
            "secret.jwt.sig",
        ])
        .unwrap();
        let printed = o.effective_toml(&l);
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("token = \"***\""), "{printed}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn each_process_gets_its_own_diagnostics_log() {
        let o = Opts::try_parse_from(["tui-client"]).unwrap();
        let p = o.log_path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.ends_with(&format!("-{}.log", std::process::id())),
            "{name}"
        );
        assert!(
            p.parent().unwrap().ends_with("wschat/diag"),
            "{}",
            p.display()
        );
        assert!(o.log_dir().ends_with("wschat/logs"));
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
            "--config",
            "--print-config",
            "CHAT_REGISTRY",
            "/join",
            "/search",
            "Ctrl+R",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}");
        }
    }
}
