//! Who gets in: HS256 tokens checked at the upgrade, the Origin allow-list,
//! and which rooms a connection may join (`private.*` and `dm.<a>.<b>`).
//!
//! Tokens are checked once, at the handshake (and again on a `refresh`
//! frame); a session keeps the [`Identity`] they gave it.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use chat_protocol::names::validate_nick;

use crate::config::{AuthMode, Config};

/// Longest subject, in bytes.
pub const MAX_SUB_LEN: usize = 32;

/// Rooms with this prefix need a token whose `rooms` claim names them.
pub const PRIVATE_PREFIX: &str = "private.";
/// Direct-message rooms: `dm.<a>.<b>`, `a < b` the two subjects.
pub const DM_PREFIX: &str = "dm.";

/// What a valid token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's subject: stable, unique per user.
    pub sub: String,
    /// The display nick: the token's `name`, else `sub`.
    pub nick: String,
    /// Private rooms the token grants (`*` at the end: a prefix).
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// The claims read from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Why a token was refused; the text goes into the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token required")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token signature invalid")]
    BadSignature,
    #[error("token algorithm {0} not allowed: only HS256")]
    BadAlgorithm(String),
    #[error("token malformed: {0}")]
    Malformed(String),
    #[error("token claims invalid: {0}")]
    BadClaims(String),
    #[error("tokens are not accepted: the server has no --jwt-secret")]
    NoSecret,
}

/// The instance's access rules, built once from the flags.
pub struct Auth {
    pub mode: AuthMode,
    /// Current secret first, then the previous one.
    keys: Vec<DecodingKey>,
    validation: Validation,
    /// Allowed `Origin` values; empty: any.
    origins: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The rules of `config`; `--auth required` without a secret is an error.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let secret = config.jwt_secret.as_deref().filter(|s| !s.is_empty());
        if config.auth == AuthMode::Required && secret.is_none() {
            anyhow::bail!(
                "--auth required needs --jwt-secret (JWT_SECRET): without it no token can be checked"
            );
        }
        let mut keys = Vec::new();
        if let Some(s) = secret {
            keys.push(DecodingKey::from_secret(s.as_bytes()));
            if let Some(p) = config
                .jwt_previous_secret
                .as_deref()
                .filter(|s| !s.is_empty())
            {
                keys.push(DecodingKey::from_secret(p.as_bytes()));
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let origins = config
            .allowed_origins
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        Ok(Self {
            mode: config.auth,
            keys,
            validation,
            origins,
        })
    }

    /// Whether an upgrade with this `Origin` header (if any) may proceed.
    /// Requests without one (non-browser clients) always may.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.origins.is_empty() => true,
            Some(o) => self.origins.iter().any(|a| a == o.trim()),
        }
    }

    /// The identity of an upgrade: `Ok(None)` for an anonymous client
    /// (allowed unless `--auth required`).
    pub fn identify(&self, token: Option<&str>) -> Result<Option<Identity>, TokenError> {
        match (self.mode, token) {
            (AuthMode::Off, _) => Ok(None),
            (AuthMode::Optional, None) => Ok(None),
            (AuthMode::Required, None) => Err(TokenError::Missing),
            (_, Some(t)) => self.verify(t).map(Some),
        }
    }

    /// Check a token: HS256 only, signed with the current or the previous
    /// secret, not expired, with a valid `sub` (and `name`, if any).
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if self.keys.is_empty() {
            return Err(TokenError::NoSecret);
        }
        check_header(token)?;
        let mut last = TokenError::BadSignature;
        for key in &self.keys {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return identity(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidAlgorithm => {
                            return Err(TokenError::BadAlgorithm("other than HS256".into()))
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(TokenError::BadClaims(format!("no {c}")))
                        }
                        ErrorKind::Json(e) => return Err(TokenError::BadClaims(e.to_string())),
                        _ => return Err(TokenError::Malformed(e.to_string())),
                    };
                }
            }
        }
        Err(last)
    }
}

/// Refuse any `alg` but HS256 (`none` included) before anything else, with
/// a reason that names it.
fn check_header(token: &str) -> Result<(), TokenError> {
    let head = token
        .split('.')
        .next()
        .filter(|_| token.split('.').count() == 3)
        .ok_or_else(|| TokenError::Malformed("not three dot-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
    let header: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("header is not JSON".into()))?;
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("HS256") => Ok(()),
        Some(other) => Err(TokenError::BadAlgorithm(format!("{other:?}"))),
        None => Err(TokenError::Malformed("header has no alg".into())),
    }
}

fn identity(c: Claims) -> Result<Identity, TokenError> {
    let sub = c
        .sub
        .ok_or_else(|| TokenError::BadClaims("no sub".into()))?;
    validate_sub(&sub).map_err(TokenError::BadClaims)?;
    let nick = match c.name {
        Some(n) => {
            validate_nick(&n).map_err(|e| TokenError::BadClaims(format!("name: {e}")))?;
            n
        }
        None => sub.clone(),
    };
    Ok(Identity {
        sub,
        nick,
        rooms: c.rooms.unwrap_or_default(),
        exp: c.exp,
    })
}

/// A subject is 1 to 32 ASCII letters, digits, `_` or `-`.
pub fn validate_sub(sub: &str) -> Result<(), String> {
    if sub.is_empty() || sub.len() > MAX_SUB_LEN {
        return Err(format!("sub must be 1 to {MAX_SUB_LEN} characters"));
    }
    if !sub
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("sub may hold only letters, digits, '_' and '-'".into());
    }
    Ok(())
}

/// Whether a connection with this identity (or none) may join, list or
/// see `room`; the error is the `forbidden` message.
pub fn may_enter(identity: Option<&Identity>, room: &str) -> Result<(), String> {
    if room.starts_with(PRIVATE_PREFIX) {
        let granted = identity.is_some_and(|id| id.rooms.iter().any(|p| grants(p, room)));
        return if granted {
            Ok(())
        } else {
            Err(format!(
                "room {room:?} is private: your token does not grant it"
            ))
        };
    }
    if let Some(rest) = room.strip_prefix(DM_PREFIX) {
        let mut parts = rest.split('.');
        let (a, b) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if validate_sub(a).is_ok() && validate_sub(b).is_ok() => {
                (a, b)
            }
            _ => {
                return Err(format!(
                    "{room:?} is not a direct-message room: use dm.<a>.<b>"
                ))
            }
        };
        if a >= b {
            return Err(format!(
                "direct-message room names put the two subjects in byte order: dm.{b}.{a}"
            ));
        }
        return match identity {
            Some(id) if id.sub == a || id.sub == b => Ok(()),
            _ => Err(format!("{room:?} is a direct-message room of {a} and {b}")),
        };
    }
    Ok(())
}

/// Whether one entry of a `rooms` claim grants `room`.
fn grants(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn auth(args: &[&str]) -> Auth {
        let mut v = vec!["server", "--app-id", "t"];
        v.extend_from_slice(args);
        Auth::from_config(&Config::parse_from(v)).unwrap()
    }

    fn mint(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn later() -> u64 {
        crate::now_ms() / 1000 + 600
    }

    fn id(sub: &str, rooms: &[&str]) -> Identity {
        Identity {
            sub: sub.into(),
            nick: sub.into(),
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            exp: 0,
        }
    }

    #[test]
    fn required_without_a_secret_does_not_start() {
        let cfg = Config::parse_from(["server", "--app-id", "t", "--auth", "required"]);
        let e = Auth::from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("--jwt-secret"), "{e}");
    }

    #[test]
    fn tokens_are_checked() {
        let a = auth(&["--jwt-secret", "s1", "--jwt-previous-secret", "s0"]);
        let ok = mint(
            "s1",
            serde_json::json!({"sub":"ann","exp":later(),"name":"Ann"}),
        );
        let v = a.verify(&ok).unwrap();
        assert_eq!((v.sub.as_str(), v.nick.as_str()), ("ann", "Ann"));
        let old = mint("s0", serde_json::json!({"sub":"bob","exp":later()}));
        assert_eq!(a.verify(&old).unwrap().nick, "bob");
        let wrong = mint("zz", serde_json::json!({"sub":"bob","exp":later()}));
        assert_eq!(a.verify(&wrong), Err(TokenError::BadSignature));
        let expired = mint("s1", serde_json::json!({"sub":"bob","exp":1000}));
        assert_eq!(a.verify(&expired), Err(TokenError::Expired));
        let nosub = mint("s1", serde_json::json!({"exp":later()}));
        assert!(matches!(a.verify(&nosub), Err(TokenError::BadClaims(_))));
        let badsub = mint("s1", serde_json::json!({"sub":"a.b","exp":later()}));
        assert!(matches!(a.verify(&badsub), Err(TokenError::BadClaims(_))));
        let noexp = mint("s1", serde_json::json!({"sub":"bob"}));
        assert!(a.verify(&noexp).is_err());
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJib2IiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(matches!(a.verify(none), Err(TokenError::BadAlgorithm(_))));
        assert!(matches!(a.verify("garbage"), Err(TokenError::Malformed(_))));
        assert!(matches!(a.verify("a.b.c"), Err(TokenError::Malformed(_))));
        assert_eq!(a.identify(None), Ok(None));
        let off = auth(&["--auth", "off", "--jwt-secret", "s1"]);
        assert_eq!(off.identify(Some("garbage")), Ok(None));
        let req = auth(&["--auth", "required", "--jwt-secret", "s1"]);
        assert_eq!(req.identify(None), Err(TokenError::Missing));
    }

    #[test]
    fn origins() {
        let any = auth(&[]);
        assert!(any.origin_allowed(Some("http://x")));
        let a = auth(&["--allowed-origins", "http://good.example,https://b"]);
        assert!(a.origin_allowed(None));
        assert!(a.origin_allowed(Some("http://good.example")));
        assert!(a.origin_allowed(Some("https://b")));
        assert!(!a.origin_allowed(Some("http://evil.example")));
    }

    #[test]
    fn rooms() {
        assert!(may_enter(None, "lobby").is_ok());
        assert!(may_enter(None, "private.x").is_err());
        assert!(may_enter(Some(&id("a", &[])), "private.x").is_err());
        assert!(may_enter(Some(&id("a", &["private.x"])), "private.x").is_ok());
        assert!(may_enter(Some(&id("a", &["private.x"])), "private.xy").is_err());
        assert!(may_enter(Some(&id("a", &["private.t*"])), "private.team").is_ok());
        assert!(may_enter(Some(&id("a", &["private.t*"])), "private.x").is_err());
        assert!(may_enter(Some(&id("ann", &[])), "dm.ann.bob").is_ok());
        assert!(may_enter(Some(&id("bob", &[])), "dm.ann.bob").is_ok());
        assert!(may_enter(Some(&id("cat", &[])), "dm.ann.bob").is_err());
        assert!(may_enter(None, "dm.ann.bob").is_err());
        assert!(may_enter(Some(&id("ann", &[])), "dm.bob.ann").is_err());
        assert!(may_enter(Some(&id("ann", &[])), "dm.ann.ann").is_err());
        assert!(may_enter(Some(&id("ann", &[])), "dm.ann.bob.c").is_err());
        assert!(may_enter(Some(&id("ann", &[])), "dm.ann").is_err());
    }
}
