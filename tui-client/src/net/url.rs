//! Building the connect URL: the user's `--url` plus the session's query
//! parameters (room, nick, since/history).

/// Percent-encode a query value: nicks may be in any script and room names
/// may hold `#`, which would otherwise start a URL fragment.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `base` with `params` appended, keeping any query `base` already has
/// (parameters given here win over ones of the same name there).
pub fn with_params(base: &str, params: &[(&str, String)]) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, q),
        None => (base, ""),
    };
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            !params.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_string)
        .collect();
    parts.extend(params.iter().map(|(k, v)| format!("{k}={}", encode(v))));
    if parts.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_must_be() {
        assert_eq!(encode("lobby"), "lobby");
        assert_eq!(encode("#rust"), "%23rust");
        assert_eq!(encode("Åse"), "%C3%85se");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn appends_and_overrides() {
        let p = [("room", "#r".to_string()), ("since", "4".to_string())];
        assert_eq!(
            with_params("ws://h:1/ws", &p),
            "ws://h:1/ws?room=%23r&since=4"
        );
        assert_eq!(
            with_params("ws://h:1/ws?token=x&room=old", &p),
            "ws://h:1/ws?token=x&room=%23r&since=4"
        );
        assert_eq!(with_params("ws://h/ws", &[]), "ws://h/ws");
    }
}
