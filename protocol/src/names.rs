//! What valid room names and nicks look like. Both sides use these checks,
//! so a client can refuse a bad name before it reaches the server.

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest nick, in characters.
pub const MAX_NICK_CHARS: usize = 32;
/// Longest client message id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// A room name is 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `#`.
pub fn validate_room(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > MAX_ROOM_LEN {
        return Err(format!(
            "room name must be 1 to {MAX_ROOM_LEN} characters, got {}",
            room.len()
        ));
    }
    match room
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '#')))
    {
        Some(c) => Err(format!(
            "room name may hold only letters, digits, '-', '_', '.' and '#'; found {c:?}"
        )),
        None => Ok(()),
    }
}

/// A nick is 1 to 32 characters, with no control characters, no white
/// space and none of `"<>\` (any script is welcome).
pub fn validate_nick(nick: &str) -> Result<(), String> {
    let chars = nick.chars().count();
    if chars == 0 || chars > MAX_NICK_CHARS {
        return Err(format!(
            "nick must be 1 to {MAX_NICK_CHARS} characters, got {chars}"
        ));
    }
    match nick
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '<' | '>' | '\\'))
    {
        Some(c) => Err(format!("nick may not contain {c:?}")),
        None => Ok(()),
    }
}

/// A client message id is at most 64 bytes.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_ID_LEN {
        return Err(format!("id must be at most {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        assert!(validate_room("lobby").is_ok());
        assert!(validate_room("rust-lang.general_2#x").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room("a b").is_err());
        assert!(validate_room("{x}").is_err());
        assert!(validate_room(&"r".repeat(65)).is_err());
        assert!(validate_room(&"r".repeat(64)).is_ok());
    }

    #[test]
    fn nicks() {
        assert!(validate_nick("alice").is_ok());
        assert!(validate_nick("Ålesund_日本").is_ok());
        assert!(validate_nick("").is_err());
        assert!(validate_nick("a b").is_err());
        assert!(validate_nick("a\u{7}").is_err());
        assert!(validate_nick("<script>").is_err());
        assert!(validate_nick(&"é".repeat(32)).is_ok());
        assert!(validate_nick(&"é".repeat(33)).is_err());
    }
}
