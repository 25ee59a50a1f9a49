//! Reading a JWT's claims without verifying it: the client only needs to
//! know when its token expires (to refresh it in time) and its subject
//! (to name `dm.<a>.<b>` rooms). The server does the verifying.

/// Decode base64url (with or without padding); `None` on a bad character.
pub fn base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The payload of a JWT as JSON.
fn payload(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.trim().split('.');
    let (_, p, _) = (parts.next()?, parts.next()?, parts.next()?);
    serde_json::from_slice(&base64url(p)?).ok()
}

/// The token's `exp` (seconds since the Unix epoch).
pub fn exp(token: &str) -> Option<u64> {
    payload(token)?.get("exp")?.as_u64()
}

/// The token's `sub`.
pub fn sub(token: &str) -> Option<String> {
    Some(payload(token)?.get("sub")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_and_sub_and_survives_garbage() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"ann","exp":1700000600,"name":"Ann"} . sig
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiJhbm4iLCJleHAiOjE3MDAwMDA2MDAsIm5hbWUiOiJBbm4ifQ.c2ln";
        assert_eq!(exp(t), Some(1_700_000_600));
        assert_eq!(sub(t).as_deref(), Some("ann"));
        assert_eq!(base64url("aGk").unwrap(), b"hi");
        assert_eq!(base64url("aGk=").unwrap(), b"hi");
        for bad in ["", "x", "a.b", "a.!!!.c", "a.aGk.c", "..", "a..b"] {
            assert_eq!(exp(bad), None, "{bad:?}");
            assert_eq!(sub(bad), None, "{bad:?}");
        }
    }
}
