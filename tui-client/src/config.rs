//! The config file: TOML at `$XDG_CONFIG_HOME/wschat/config.toml` (or
//! `~/.config/wschat/config.toml`), or the file given with `--config`.
//!
//! Flags and environment variables override the file; `--print-config`
//! prints the result. A mistake in the file stops the client with the line
//! it is on: a client that silently ignored a typo in `nick` would connect
//! as someone else.
//!
//! ```toml
//! url = "ws://chat.example:8080/ws"
//! nick = "alice"
//! token_file = "~/.config/wschat/token"
//! rooms = ["lobby", "ops"]
//! timestamp_format = "%H:%M"
//! highlight = ["deploy", "oncall"]
//! bell = true
//! notify_command = "notify-send \"$1\" \"$2\""
//! log_dir = "~/chatlogs"
//!
//! [colors]
//! mention = "yellow"
//! own = "lightgreen"
//! status_bg = 236
//!
//! [keys]
//! search = "ctrl+r"
//! mentions = "alt+m"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyModifiers};
use ratatui::style::Color;
use serde::{Deserialize, Serialize};

/// Everything the file may hold; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub nick: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub registry: Option<String>,
    /// Rooms joined at start; the first is shown.
    pub rooms: Option<Vec<String>>,
    pub history: Option<u32>,
    /// A chrono `strftime` format for the time column (8 cells are shown).
    pub timestamp_format: Option<String>,
    pub utc: Option<bool>,
    /// Words that count as mentions, like your nick.
    pub highlight: Option<Vec<String>>,
    pub bell: Option<bool>,
    /// A shell command run for each notification, with the title as `$1`
    /// and the text as `$2` (never pasted into the command itself).
    pub notify_command: Option<String>,
    /// Where room logs and `/save` files go.
    pub log_dir: Option<PathBuf>,
    pub colors: Option<ColorConfig>,
    /// Action name to key, e.g. `search = "ctrl+r"`.
    pub keys: Option<BTreeMap<String, String>>,
}

/// Colours: a name (`yellow`, `lightgreen`), `#rrggbb` or a 0-255 index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColorConfig {
    pub mention: Option<String>,
    pub own: Option<String>,
    pub timestamp: Option<String>,
    /// The status bar's background, a 256-colour index.
    pub status_bg: Option<u8>,
}

/// The colours the view uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub mention: Color,
    pub own: Option<Color>,
    pub timestamp: Color,
    pub status_bg: u8,
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            mention: Color::Yellow,
            own: None,
            timestamp: Color::DarkGray,
            status_bg: 236,
        }
    }
}

/// Actions that can be bound to keys in `[keys]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyAction {
    Search,
    Mentions,
    NextRoom,
    PrevRoom,
    NextActive,
    Help,
    AppIds,
    Redraw,
}

impl KeyAction {
    pub const ALL: [(&'static str, KeyAction); 8] = [
        ("search", KeyAction::Search),
        ("mentions", KeyAction::Mentions),
        ("next_room", KeyAction::NextRoom),
        ("prev_room", KeyAction::PrevRoom),
        ("next_active", KeyAction::NextActive),
        ("help", KeyAction::Help),
        ("app_ids", KeyAction::AppIds),
        ("redraw", KeyAction::Redraw),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A key with its modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

/// Keys bound to actions; the defaults, then what `[keys]` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMap {
    pub bindings: Vec<(Key, KeyAction)>,
}

impl Default for KeyMap {
    fn default() -> Self {
        let k = |s: &str| parse_key(s).expect("the default keys parse");
        Self {
            bindings: vec![
                (k("ctrl+r"), KeyAction::Search),
                (k("alt+m"), KeyAction::Mentions),
            ],
        }
    }
}

impl KeyMap {
    /// The action bound to a key press, if any.
    pub fn action(&self, code: KeyCode, mods: KeyModifiers) -> Option<KeyAction> {
        let code = match code {
            KeyCode::Char(c) => KeyCode::Char(c.to_ascii_lowercase()),
            c => c,
        };
        // Shift is part of the character itself for letters.
        let mods = mods & (KeyModifiers::CONTROL | KeyModifiers::ALT);
        self.bindings
            .iter()
            .find(|(k, _)| k.code == code && k.mods == mods)
            .map(|(_, a)| *a)
    }

    /// Bind `key` to `action`, replacing the action's earlier binding and
    /// whatever the key did before.
    pub fn bind(&mut self, key: Key, action: KeyAction) {
        self.bindings.retain(|(k, a)| *a != action && *k != key);
        self.bindings.push((key, action));
    }
}

/// Read `ctrl+r`, `alt+m`, `f3`, `ctrl+alt+x`, `pageup`.
pub fn parse_key(s: &str) -> Result<Key, String> {
    let mut mods = KeyModifiers::NONE;
    let lower = s.trim().to_lowercase();
    let mut parts: Vec<&str> = lower.split('+').collect();
    let last = parts.pop().unwrap_or_default();
    for p in parts {
        mods |= match p {
            "ctrl" | "control" | "c" => KeyModifiers::CONTROL,
            "alt" | "meta" | "m" => KeyModifiers::ALT,
            other => return Err(format!("unknown modifier {other:?} in key {s:?}")),
        };
    }
    let code = match last {
        "pageup" => KeyCode::PageUp,
        "pagedown" => KeyCode::PageDown,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "tab" => KeyCode::Tab,
        "esc" => KeyCode::Esc,
        f if f.starts_with('f') && f.len() > 1 => match f[1..].parse::<u8>() {
            Ok(n @ 1..=12) => KeyCode::F(n),
            _ => return Err(format!("unknown key {s:?}")),
        },
        c if c.chars().count() == 1 => KeyCode::Char(c.chars().next().unwrap_or(' ')),
        _ => return Err(format!("unknown key {s:?}")),
    };
    if mods.is_empty() && matches!(code, KeyCode::Char(_)) {
        return Err(format!(
            "key {s:?} would stop you typing that character: add ctrl+ or alt+"
        ));
    }
    Ok(Key { code, mods })
}

/// A key as `parse_key` reads it (for `--print-config`).
pub fn key_name(k: &Key) -> String {
    let mut s = String::new();
    if k.mods.contains(KeyModifiers::CONTROL) {
        s.push_str("ctrl+");
    }
    if k.mods.contains(KeyModifiers::ALT) {
        s.push_str("alt+");
    }
    match k.code {
        KeyCode::Char(c) => s.push(c),
        KeyCode::F(n) => s.push_str(&format!("f{n}")),
        KeyCode::PageUp => s.push_str("pageup"),
        KeyCode::PageDown => s.push_str("pagedown"),
        KeyCode::Home => s.push_str("home"),
        KeyCode::End => s.push_str("end"),
        KeyCode::Tab => s.push_str("tab"),
        KeyCode::Esc => s.push_str("esc"),
        _ => s.push('?'),
    }
    s
}

/// Read a colour: a name, `#rrggbb` or an index 0-255.
pub fn parse_color(s: &str) -> Result<Color, String> {
    s.trim()
        .parse::<Color>()
        .map_err(|_| format!("unknown colour {s:?} (a name like yellow, #rrggbb, or 0-255)"))
}

/// Check a `strftime` format without panicking on a bad one.
pub fn check_time_format(f: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "bad timestamp_format {f:?} (see chrono's strftime)"
        ));
    }
    Ok(())
}

/// The default config file: `$XDG_CONFIG_HOME/wschat/config.toml`, else
/// `~/.config/wschat/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("wschat").join("config.toml"))
}

/// `$XDG_STATE_HOME/wschat`, else `~/.local/state/wschat` (else the temp
/// directory): room logs, diagnostics logs and `/save` files go under it.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wschat")
}

/// `~/x` as `$HOME/x`.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// The 1-based line of `key = …` in `text`, for errors found after
/// parsing (a bad colour, a bad key).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// What a config file says, checked.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub file: FileConfig,
    pub theme: Theme,
    pub keys: KeyMap,
    /// The file read, if any.
    pub path: Option<PathBuf>,
}

/// Parse and check the text of a config file; errors name the file and
/// the line.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, String> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        // toml's message starts with "TOML parse error at line N, column M".
        let msg = e.to_string();
        let line = e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        match line {
            Some(n) => format!(
                "{}: line {n}: {}",
                path.display(),
                msg.lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or(&msg)
                    .trim()
            ),
            None => format!("{}: {msg}", path.display()),
        }
    })?;
    let at = |key: &str, e: String| match line_of(text, key) {
        Some(n) => format!("{}: line {n}: {e}", path.display()),
        None => format!("{}: {e}", path.display()),
    };
    let mut theme = Theme::default();
    if let Some(c) = &file.colors {
        if let Some(s) = &c.mention {
            theme.mention = parse_color(s).map_err(|e| at("mention", e))?;
        }
        if let Some(s) = &c.own {
            theme.own = Some(parse_color(s).map_err(|e| at("own", e))?);
        }
        if let Some(s) = &c.timestamp {
            theme.timestamp = parse_color(s).map_err(|e| at("timestamp", e))?;
        }
        if let Some(b) = c.status_bg {
            theme.status_bg = b;
        }
    }
    let mut keys = KeyMap::default();
    for (name, key) in file.keys.iter().flatten() {
        let action = KeyAction::ALL
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = KeyAction::ALL.iter().map(|(n, _)| *n).collect();
                at(
                    name,
                    format!(
                        "unknown action {name:?} in [keys] (known: {})",
                        names.join(", ")
                    ),
                )
            })?;
        keys.bind(parse_key(key).map_err(|e| at(name, e))?, action);
    }
    if let Some(f) = &file.timestamp_format {
        check_time_format(f).map_err(|e| at("timestamp_format", e))?;
    }
    if let Some(n) = &file.nick {
        chat_protocol::names::validate_nick(n).map_err(|e| at("nick", format!("nick: {e}")))?;
    }
    for r in file.rooms.iter().flatten() {
        chat_protocol::names::validate_room(r)
            .map_err(|e| at("rooms", format!("room {r:?}: {e}")))?;
    }
    if file.rooms.as_ref().is_some_and(Vec::is_empty) {
        return Err(at("rooms", "rooms is empty: name at least one".into()));
    }
    Ok(Loaded {
        file,
        theme,
        keys,
        path: Some(path.to_path_buf()),
    })
}

/// Read the config: `explicit` must exist; the default file may be absent.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, String> {
    let (path, must) = match explicit {
        Some(p) => (expand_home(p), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(Loaded::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(e) if !must && e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::default()),
        Err(e) => Err(format!(
            "cannot read the config file {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Loaded, String> {
        parse(text, Path::new("/x/config.toml"))
    }

    #[test]
    fn a_full_file_reads() {
        let l = p(r##"
url = "ws://h:1/ws"
nick = "ann"
rooms = ["lobby", "ops"]
timestamp_format = "%H:%M"
highlight = ["deploy"]
bell = true
notify_command = "notify-send \"$1\" \"$2\""
log_dir = "/tmp/logs"

[colors]
mention = "lightmagenta"
own = "#00ff00"
status_bg = 17

[keys]
search = "alt+s"
mentions = "f4"
"##)
        .unwrap();
        assert_eq!(l.file.nick.as_deref(), Some("ann"));
        assert_eq!(l.file.rooms.as_ref().unwrap().len(), 2);
        assert_eq!(l.theme.mention, Color::LightMagenta);
        assert_eq!(l.theme.own, Some(Color::Rgb(0, 255, 0)));
        assert_eq!(l.theme.status_bg, 17);
        assert_eq!(
            l.keys.action(KeyCode::Char('s'), KeyModifiers::ALT),
            Some(KeyAction::Search)
        );
        assert_eq!(
            l.keys.action(KeyCode::Char('r'), KeyModifiers::CONTROL),
            None,
            "rebinding moves the action"
        );
        assert_eq!(
            l.keys.action(KeyCode::F(4), KeyModifiers::NONE),
            Some(KeyAction::Mentions)
        );
    }

    #[test]
    fn mistakes_name_the_line() {
        let e = p("nick = \"ann\"\n\nurl = ws://x\n").unwrap_err();
        assert!(e.contains("/x/config.toml: line 3"), "{e}");
        let e = p("nick = \"ann\"\nnikc = \"bob\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("nikc"), "{e}");
        let e = p("bell = \"yes\"\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = p("nick = \"ann\"\n[colors]\nmention = \"blurple\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("blurple"), "{e}");
        let e = p("[keys]\nfrobnicate = \"ctrl+x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("unknown action"), "{e}");
        let e = p("[keys]\nsearch = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("ctrl+"), "{e}");
        let e = p("\ntimestamp_format = \"%Q\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = p("nick = \"a b\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("nick"), "{e}");
        let e = p("rooms = [\"ok\", \"not ok\"]\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("not ok"), "{e}");
    }

    #[test]
    fn an_absent_default_file_is_no_error_but_an_absent_given_one_is() {
        let missing = std::env::temp_dir().join("wschat-no-such-config.toml");
        let e = load(Some(&missing)).unwrap_err();
        assert!(e.contains("cannot read the config file"), "{e}");
    }
}
