//! Slash commands: parsing and the help text.
//!
//! Parsing is separate from carrying out so that every command and every
//! mistake can be tested without a connection.

/// A parsed line from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Plain chat text (including `//text`, which sends `/text`).
    Say(String),
    Join(String),
    /// Leave the named room, or the current one.
    Leave(Option<String>),
    Nick(String),
    /// Show the members of the named room, or the current one.
    Who(Option<String>),
    Me(String),
    /// Switch to a room by name or by its number in the room list.
    Switch(String),
    Help(Option<String>),
    Quit,
    /// Show or hide the APP_ID each message came through.
    AppIds,
    /// Reconnect now, skipping the backoff wait.
    Reconnect,
    /// Empty the current room's scrollback.
    Clear,
    /// Write the current room's scrollback to a file.
    Save(Option<String>),
    /// Show the lines of the current room that contain some text.
    Lastlog(String),
    /// Find earlier lines of the current room and jump to them.
    Search(String),
    /// List the messages that mentioned you, in every room.
    Mentions,
    /// Send a direct message (to a nick; on `dm.<a>.<b>`).
    Msg {
        nick: String,
        text: String,
    },
    /// Open the direct-message room with a nick and show it.
    Query(String),
}

/// Every command with its arguments and what it does, for `/help`.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("join", "<room>", "join a room and switch to it"),
    (
        "leave",
        "[room]",
        "leave a room (default: this one); alias /part",
    ),
    (
        "switch",
        "<room|number>",
        "show another joined room; also Alt+1..9",
    ),
    ("nick", "<nick>", "change your nick in every room"),
    ("who", "[room]", "list the members of a room"),
    (
        "me",
        "<action>",
        "send an action: /me waves → * alice waves",
    ),
    (
        "appids",
        "",
        "show which instance each message came through (F2)",
    ),
    (
        "reconnect",
        "",
        "reconnect now instead of waiting for the backoff",
    ),
    (
        "msg",
        "<nick> <text>",
        "send a direct message (needs a token); alias /m",
    ),
    (
        "query",
        "<nick>",
        "open the direct-message room with a nick (needs a token)",
    ),
    (
        "search",
        "<text>",
        "find earlier lines of this room: n older, N newer, Esc back; also Ctrl+R",
    ),
    (
        "lastlog",
        "<text>",
        "list the lines of this room that contain the text",
    ),
    (
        "mentions",
        "",
        "list the messages that mentioned you, in every room; also Alt+M",
    ),
    ("clear", "", "empty this room's scrollback on screen"),
    (
        "save",
        "[file]",
        "write this room's scrollback to a file (default: the log directory)",
    ),
    ("help", "[command]", "this help"),
    ("quit", "", "leave the chat; alias /exit"),
];

/// Why a line could not be read as a command. The message is shown to the
/// user, so it says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

fn usage(name: &str) -> CommandError {
    let (_, args, what) = COMMANDS
        .iter()
        .find(|(n, _, _)| *n == name)
        .copied()
        .unwrap_or((name, "", ""));
    CommandError(format!("usage: /{name} {args}  ({what})"))
}

/// Read one line of input.
pub fn parse(line: &str) -> Result<Command, CommandError> {
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Command::Say(line.to_string()));
    };
    if rest.starts_with('/') {
        return Ok(Command::Say(rest.to_string()));
    }
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    let name = name.to_lowercase();
    let one = |cmd: &str| -> Result<String, CommandError> {
        match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
            [one] => Ok(one.to_string()),
            _ => Err(usage(cmd)),
        }
    };
    let optional = |cmd: &str| -> Result<Option<String>, CommandError> {
        match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.trim_start_matches('/').to_string())),
            _ => Err(usage(cmd)),
        }
    };
    match name.as_str() {
        "join" | "j" => Ok(Command::Join(one("join")?)),
        "leave" | "part" => Ok(Command::Leave(optional("leave")?)),
        "nick" => Ok(Command::Nick(one("nick")?)),
        "who" | "names" => Ok(Command::Who(optional("who")?)),
        "me" if !arg.is_empty() => Ok(Command::Me(arg.to_string())),
        "me" => Err(usage("me")),
        "switch" | "s" | "buffer" | "window" => Ok(Command::Switch(one("switch")?)),
        "help" | "h" | "?" => Ok(Command::Help(optional("help")?)),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "appids" | "appid" => Ok(Command::AppIds),
        "reconnect" => Ok(Command::Reconnect),
        "clear" => Ok(Command::Clear),
        "lastlog" if !arg.is_empty() => Ok(Command::Lastlog(arg.to_string())),
        "lastlog" => Err(usage("lastlog")),
        "search" | "find" if !arg.is_empty() => Ok(Command::Search(arg.to_string())),
        "search" | "find" => Err(usage("search")),
        "mentions" => Ok(Command::Mentions),
        "msg" | "m" => match arg.split_once(char::is_whitespace) {
            Some((nick, text)) if !text.trim().is_empty() => Ok(Command::Msg {
                nick: nick.to_string(),
                text: text.trim_start().to_string(),
            }),
            _ => Err(usage("msg")),
        },
        "query" => Ok(Command::Query(one("query")?)),
        // A path may start with `/`: no stripping here.
        "save" if arg.is_empty() => Ok(Command::Save(None)),
        "save" => Ok(Command::Save(Some(arg.to_string()))),
        "" => Err(CommandError(
            "a lone / is not a command; type //text to send text that starts with /, or /help"
                .into(),
        )),
        other => Err(unknown(other)),
    }
}

/// The message for an unknown command: the closest known commands, and how
/// to send the text anyway.
fn unknown(name: &str) -> CommandError {
    let mut close: Vec<(usize, &str)> = COMMANDS
        .iter()
        .map(|(n, _, _)| (distance(name, n), *n))
        .filter(|(d, n)| *d <= 2 || n.starts_with(name))
        .collect();
    close.sort();
    let hint = match close.first() {
        Some((_, n)) => format!(" Did you mean /{n}?"),
        None => String::new(),
    };
    CommandError(format!(
        "unknown command /{name}.{hint} Type /help for the list, or //{name} to send it as text."
    ))
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The lines `/help` shows: with a command name, just that command.
pub fn help(topic: Option<&str>) -> Vec<String> {
    if let Some(t) = topic {
        let t = t.trim_start_matches('/');
        return match COMMANDS.iter().find(|(n, _, _)| *n == t) {
            Some((n, a, w)) => vec![format!("/{n} {a} — {w}")],
            None => vec![unknown(t).0],
        };
    }
    let mut lines = vec!["Commands:".to_string()];
    for (n, a, w) in COMMANDS {
        lines.push(format!("  /{:<22} {w}", format!("{n} {a}")));
    }
    lines.push("Keys:".into());
    for l in crate::opts::KEYS.lines().filter(|l| !l.trim().is_empty()) {
        lines.push(format!("  {}", l.trim_start()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        use Command::*;
        assert_eq!(parse("hello /join").unwrap(), Say("hello /join".into()));
        assert_eq!(parse("//join x").unwrap(), Say("/join x".into()));
        assert_eq!(parse("/join rust").unwrap(), Join("rust".into()));
        assert_eq!(parse("/JOIN  rust ").unwrap(), Join("rust".into()));
        assert_eq!(parse("/leave").unwrap(), Leave(None));
        assert_eq!(parse("/part ops").unwrap(), Leave(Some("ops".into())));
        assert_eq!(parse("/nick bob").unwrap(), Nick("bob".into()));
        assert_eq!(parse("/who").unwrap(), Who(None));
        assert_eq!(
            parse("/me waves  hello").unwrap(),
            Me("waves  hello".into())
        );
        assert_eq!(parse("/switch 2").unwrap(), Switch("2".into()));
        assert_eq!(parse("/help join").unwrap(), Help(Some("join".into())));
        assert_eq!(parse("/quit").unwrap(), Quit);
        assert_eq!(parse("/appids").unwrap(), AppIds);
        assert_eq!(parse("/reconnect").unwrap(), Reconnect);
        assert_eq!(
            parse("/lastlog deploy x").unwrap(),
            Lastlog("deploy x".into())
        );
        assert_eq!(
            parse("/save /tmp/x.log").unwrap(),
            Save(Some("/tmp/x.log".into()))
        );
        assert_eq!(parse("/search deploy").unwrap(), Search("deploy".into()));
        assert_eq!(parse("/mentions").unwrap(), Mentions);
        assert_eq!(
            parse("/msg bob  hi there").unwrap(),
            Msg {
                nick: "bob".into(),
                text: "hi there".into()
            }
        );
        assert!(parse("/msg bob").unwrap_err().0.contains("usage: /msg"));
        assert_eq!(parse("/query bob").unwrap(), Query("bob".into()));
    }

    #[test]
    fn lastlog_is_in_the_help_and_its_typos_get_a_suggestion() {
        assert!(help(None).iter().any(|l| l.contains("/lastlog")));
        let h = help(Some("lastlog"));
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("/lastlog <text>"), "{h:?}");
        let e = parse("/lastlgo x").unwrap_err().0;
        assert!(e.contains("Did you mean /lastlog?"), "{e}");
        let e = parse("/serch x").unwrap_err().0;
        assert!(e.contains("Did you mean /search?"), "{e}");
    }

    #[test]
    fn mistakes_say_what_to_do() {
        let e = parse("/join").unwrap_err().0;
        assert!(e.contains("usage: /join <room>"), "{e}");
        let e = parse("/nick a b").unwrap_err().0;
        assert!(e.contains("usage: /nick"), "{e}");
        let e = parse("/me").unwrap_err().0;
        assert!(e.contains("usage: /me"), "{e}");
        let e = parse("/jion rust").unwrap_err().0;
        assert!(e.contains("unknown command /jion"), "{e}");
        assert!(e.contains("Did you mean /join?"), "{e}");
        assert!(e.contains("/help"), "{e}");
        let e = parse("/frobnicate").unwrap_err().0;
        assert!(!e.contains("Did you mean"), "{e}");
        assert!(e.contains("//frobnicate"), "{e}");
        assert!(parse("/").is_err());
    }

    #[test]
    fn help_lists_every_command_and_the_keys() {
        let all = help(None).join("\n");
        for (n, _, _) in COMMANDS {
            assert!(all.contains(&format!("/{n}")), "{n} missing");
        }
        assert!(all.contains("PgUp"));
        assert_eq!(help(Some("/me")).len(), 1);
        assert!(help(Some("nope"))[0].contains("unknown command"));
    }
}
