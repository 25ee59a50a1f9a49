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

/// The URL of one connection attempt: the session's parameters, and the
/// token (percent-encoded) when there is one.
pub fn connect_url(base: &str, params: &[(&str, String)], token: Option<&str>) -> String {
    let mut all = params.to_vec();
    if let Some(t) = token {
        all.push(("token", t.to_string()));
    }
    with_params(base, &all)
}

/// `url` with the value of any `token` parameter hidden, for logs.
pub fn redact(url: &str) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("token", _)) => "token=***".to_string(),
            Some(("nick_key", _)) => "nick_key=***".to_string(),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_encoded_replaces_one_in_the_url_and_is_hidden_in_logs() {
        let p = [("room", "lobby".to_string()), ("nick", "ann".to_string())];
        let u = connect_url("ws://h:1/ws", &p, Some("eyJh.eyJz+/=.sig"));
        assert_eq!(
            u,
            "ws://h:1/ws?room=lobby&nick=ann&token=eyJh.eyJz%2B%2F%3D.sig"
        );
        // A token already in --url is replaced, not sent twice.
        let u = connect_url("ws://h:1/ws?token=old&x=1", &p, Some("new"));
        assert_eq!(u, "ws://h:1/ws?x=1&room=lobby&nick=ann&token=new");
        // Without a token the URL is as before (one in --url is kept).
        assert_eq!(
            connect_url("ws://h:1/ws", &p, None),
            "ws://h:1/ws?room=lobby&nick=ann"
        );
        assert_eq!(
            connect_url("ws://h:1/ws?token=t", &[], None),
            "ws://h:1/ws?token=t"
        );
        assert_eq!(
            redact("ws://h:1/ws?room=lobby&token=secret.jwt&since=3"),
            "ws://h:1/ws?room=lobby&token=***&since=3"
        );
        assert_eq!(redact("ws://h:1/ws"), "ws://h:1/ws");
    }

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
