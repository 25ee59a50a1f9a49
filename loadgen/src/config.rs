//! The validated configuration a run uses ([`Config`], built by
//! [`crate::opts::Opts::resolve`]) and how it maps clients to rooms, URLs
//! and senders.

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::ValueEnum;

use crate::presets::Preset;
use crate::thresholds::Thresholds;

/// Which wire protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// This project's JSON protocol (welcome, joined, send with id, message
    /// with offset and app_id).
    Chat,
    /// Any broadcast relay of text frames: the probe travels inside the text
    /// and the APP_ID comes from the greeting (see --app-id-regex).
    Raw,
}

/// A validated run configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub urls: Vec<String>,
    /// `--registry`: ask this `http://…/connect` before each connect and
    /// connect straight to the instance it names.
    pub registry: Option<String>,
    /// With `--registry`: `--url` was given, so a client whose registry
    /// asks failed [`crate::client::FALLBACK_AFTER`] times in a row
    /// connects through it instead.
    pub url_fallback: bool,
    pub preset: Option<Preset>,
    pub clients: usize,
    pub rooms: usize,
    pub senders: usize,
    pub rate: f64,
    pub size: usize,
    #[serde(serialize_with = "ser_dur")]
    pub duration: Duration,
    pub ramp: f64,
    pub protocol: Protocol,
    pub app_id_regex: String,
    #[serde(serialize_with = "ser_dur")]
    pub grace: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub connect_timeout: Duration,
    pub connect_concurrency: usize,
    pub room_prefix: String,
    pub workers: usize,
    pub source_ips: Vec<Ipv4Addr>,
    pub threads: usize,
    /// Reconnect and resume after a close or error (chat mode).
    pub reconnect: bool,
    /// Connection attempts per outage before a client gives up.
    pub reconnect_attempts: u32,
    /// Time per outage before a client gives up.
    #[serde(serialize_with = "ser_dur")]
    pub reconnect_timeout: Duration,
    /// The launcher's fault plan (`--faults`, `LOADGEN_FAULTS`).
    pub faults: Vec<crate::faults::Fault>,
    /// HS256 secret for one token per client (`--jwt-secret`); the report
    /// says only `set` or `unset`.
    #[serde(serialize_with = "ser_secret")]
    pub jwt_secret: Option<crate::jwt::Secret>,
    /// Put each client's room in its token's `rooms` claim.
    pub jwt_rooms: bool,
    #[serde(skip)]
    pub thresholds: Thresholds,
}

fn ser_secret<S: serde::Serializer>(
    v: &Option<crate::jwt::Secret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_some() { "set" } else { "unset" })
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl Config {
    /// A one-line description of the run, for the dashboard's title.
    pub fn describe(&self) -> String {
        format!(
            "{} clients · {} rooms · {} senders @ {} msg/s · {}",
            self.clients,
            self.rooms,
            self.senders,
            self.rate,
            humantime::format_duration(self.duration)
        )
    }

    /// The name of room `r`.
    pub fn room_name(&self, r: usize) -> String {
        format!("{}-{r}", self.room_prefix)
    }

    /// The room of client `c`.
    pub fn room_of(&self, c: usize) -> usize {
        c % self.rooms
    }

    /// Senders are clients `0..senders`, so sender `s` is in room
    /// `s % rooms` and is the `s / rooms`-th sender of that room.
    pub fn senders_in_room(&self, r: usize) -> usize {
        if r >= self.rooms {
            return 0;
        }
        (self.senders + self.rooms - 1 - r) / self.rooms
    }

    /// The highest seq any sender can reach, with room to spare: a probe
    /// beyond it did not come from this run (its bitset is not grown for it).
    pub fn max_seq(&self) -> u32 {
        let per_sender = self.rate * self.duration.as_secs_f64() / self.senders.max(1) as f64;
        let m = (per_sender * 2.0 + 1024.0).min(f64::from(u32::MAX));
        m as u32
    }

    /// Messages per second of one sender.
    pub fn per_sender_rate(&self) -> f64 {
        if self.senders == 0 {
            0.0
        } else {
            self.rate / self.senders as f64
        }
    }

    /// Which `--url` client `c` uses: `(c / rooms) mod urls`, so that the
    /// members of every room spread over every URL (with `c mod urls`, a
    /// room count that is a multiple of the URL count would pin each room
    /// to one endpoint, and nothing would cross instances).
    pub fn url_index(&self, c: usize) -> usize {
        (c / self.rooms) % self.urls.len()
    }

    /// The URL client `c` connects to.
    pub fn url_for(&self, c: usize) -> String {
        self.url_at(c, self.url_index(c))
    }

    /// The URL client `c` uses when it connects through `--url` number `i`
    /// (reconnects try the others in turn).
    pub fn url_at(&self, c: usize, i: usize) -> String {
        self.url_on(&self.urls[i % self.urls.len()], c)
    }

    /// The URL client `c` uses on the endpoint `u` (a `--url`, or the
    /// instance URL the registry named): its room, nick and nick key.
    pub fn url_on(&self, u: &str, c: usize) -> String {
        let room = self.room_name(self.room_of(c));
        if u.contains("{room}") {
            return u.replace("{room}", &room);
        }
        match self.protocol {
            Protocol::Raw => u.to_string(),
            Protocol::Chat => {
                let sep = if u.contains('?') { '&' } else { '?' };
                // The nick key gets the nick back on a reconnect while the
                // old connection (on a dead instance) still holds it.
                format!(
                    "{u}{sep}room={room}&nick=lg{c}&nick_key=lgkey-{}-{c}",
                    std::process::id()
                )
            }
        }
    }

    /// How long client tokens live: the whole run (ramp, duration, grace,
    /// a reconnect outage) plus [`crate::jwt::EXP_MARGIN`].
    pub fn token_lifetime(&self) -> Duration {
        let ramp = Duration::from_secs_f64((self.clients as f64 / self.ramp).min(1e6));
        ramp + self.duration
            + self.grace
            + self.connect_timeout
            + self.reconnect_timeout
            + crate::jwt::EXP_MARGIN
    }

    /// Client `c`'s token, with `--jwt-secret` (`None` without).
    pub fn token_for(&self, c: usize) -> Option<Result<String, String>> {
        let secret = self.jwt_secret.as_ref()?;
        let rooms = self
            .jwt_rooms
            .then(|| vec![self.room_name(self.room_of(c))]);
        Some(crate::jwt::mint(secret, c, self.token_lifetime(), rooms))
    }

    /// The URL that resumes client `c`'s room after offset `since` of
    /// `epoch`, through `--url` number `i`. The nick is always `lg<c>`:
    /// the server scopes a send's idempotency key to the nick, so retries
    /// must come from the same one.
    pub fn resume_url(&self, c: usize, i: usize, since: u64, epoch: &str) -> String {
        self.resume_on(&self.urls[i % self.urls.len()], c, since, epoch)
    }

    /// [`Config::resume_url`] on the endpoint `base` (a `--url` or the
    /// instance URL the registry named).
    pub fn resume_on(&self, base: &str, c: usize, since: u64, epoch: &str) -> String {
        let mut u = self.url_on(base, c);
        let sep = if u.contains('?') { '&' } else { '?' };
        if !u.contains("nick=") {
            u = format!("{u}{sep}nick=lg{c}");
        }
        let sep = if u.contains('?') { '&' } else { '?' };
        u.push(sep);
        u.push_str(&format!("since={since}"));
        if !epoch.is_empty() {
            u.push_str("&epoch=");
            for b in epoch.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    u.push(char::from(b));
                } else {
                    u.push_str(&format!("%{b:02X}"));
                }
            }
        }
        u
    }
}
