//! Tokens for servers that want a JWT on the upgrade (`--jwt-secret`):
//! one HS256 token per client, minted with `jsonwebtoken`, sent as
//! `Authorization: Bearer` (see [`crate::ws::Conn::open_with_token`]).
//!
//! The subject is `lg<c>`, the nick loadgen asks for anyway, so a server
//! that takes the nick from the token gives each client the nick it
//! expects; `name` is set to the same nick for servers that prefer it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};

/// Margin added to a token's lifetime beyond the run itself, so that no
/// token expires mid-run (ramp, drain and reconnects included).
pub const EXP_MARGIN: Duration = Duration::from_secs(3600);

/// The claims loadgen puts in a token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// A secret that never shows in `Debug` output or in the report.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The nick (and token subject) of client `c`.
pub fn subject(c: usize) -> String {
    format!("lg{c}")
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 token for client `c`, valid for `lifetime` from now, with
/// `rooms` as its private rooms when given.
pub fn mint(
    secret: &Secret,
    c: usize,
    lifetime: Duration,
    rooms: Option<Vec<String>>,
) -> Result<String, String> {
    let sub = subject(c);
    let claims = Claims {
        name: Some(sub.clone()),
        sub,
        exp: now_unix() + lifetime.as_secs().max(1),
        rooms,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.0.as_bytes()),
    )
    .map_err(|e| format!("jwt: cannot mint a token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    #[test]
    fn tokens_are_hs256_for_the_client_and_last_the_run() {
        let secret = Secret("s3cret".into());
        let t = mint(&secret, 7, Duration::from_secs(600) + EXP_MARGIN, None).unwrap();
        assert_eq!(decode_header(&t).unwrap().alg, Algorithm::HS256);
        let got = decode::<Claims>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(got.sub, "lg7");
        assert_eq!(got.name.as_deref(), Some("lg7"));
        assert_eq!(got.rooms, None);
        let now = now_unix();
        assert!(
            got.exp >= now + 600 + 3600 - 5 && got.exp <= now + 600 + 3600,
            "{got:?}"
        );
        // Not the payload of another client or room list.
        let t = mint(
            &secret,
            12,
            Duration::from_secs(60),
            Some(vec!["lg-1-0".into()]),
        )
        .unwrap();
        let got = decode::<Claims>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(got.sub, "lg12");
        assert_eq!(got.rooms, Some(vec!["lg-1-0".to_string()]));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let t = mint(&Secret("a".into()), 0, Duration::from_secs(60), None).unwrap();
        assert!(decode::<Claims>(
            &t,
            &DecodingKey::from_secret(b"b"),
            &Validation::new(Algorithm::HS256),
        )
        .is_err());
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        assert_eq!(
            format!("{:?}", Some(Secret("hunter2".into()))),
            "Some(Secret(***))"
        );
    }
}
