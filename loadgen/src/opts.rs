//! Command-line options, presets, and the validated [`Config`] a run uses.
//!
//! Flags that a preset may set are `Option`s in [`Opts`], so that
//! [`Opts::resolve`] can layer them: an explicit flag beats the preset, and
//! the preset beats the built-in default. Outside scripts rely on the flag
//! names (`--url`, `--clients`, `--rooms`, `--senders`, `--rate`,
//! `--duration`, `--ramp`, `--size`, `--protocol`, `--app-id-regex`,
//! `--json`, `--hgrm`, `--max-p99`, `--max-lost`, `--min-instances`,
//! `--preset`, `--workers`, `--source-ips`): keep them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

use crate::config::{Config, Protocol};
use crate::presets::{preset_values, Preset};
use crate::sys::parse_source_ips;
use crate::thresholds::Thresholds;

/// The URL of the local HAProxy started by the cluster launcher or compose.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/ws";
/// Matches the greeting of the published Node.js design.
pub const DEFAULT_APP_ID_REGEX: &str = r"Connected successfully to server\s+(?P<app_id>[^\s\x22]+)";

/// Load generator and cross-instance delivery checker for WebSocket group
/// chat. Opens many sockets (through HAProxy by default), sends on an
/// open-loop schedule, and checks every delivery at every receiver.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
pub struct Opts {
    /// WebSocket URL to connect to; repeat to spread clients round-robin
    /// over several endpoints (e.g. straight to each instance). A `{room}`
    /// in the URL is replaced by the client's room name. With --registry,
    /// the fallback after 3 failed registry asks in a row
    /// [default: ws://127.0.0.1:8080/ws].
    #[arg(long, action = clap::ArgAction::Append)]
    pub url: Vec<String>,

    /// Instance registry, e.g. `http://127.0.0.1:8080/connect` (any
    /// instance's `GET /connect`, or through HAProxy): before each connect
    /// and reconnect a client asks it for the least-loaded instance and
    /// connects its WebSocket straight there, with no proxy in the data
    /// path. Plain http:// only. A direct connect that fails asks again;
    /// an instance that just failed is not tried again at once.
    #[arg(long, env = "LOADGEN_REGISTRY")]
    pub registry: Option<String>,

    /// Built-in scenario; explicit flags override its values.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,

    /// Number of client connections in all [default: 100].
    #[arg(long)]
    pub clients: Option<usize>,

    /// Number of rooms; client i joins room i mod rooms [default: 1].
    #[arg(long)]
    pub rooms: Option<usize>,

    /// Members per room; sets --clients to rooms × members.
    #[arg(long)]
    pub members: Option<usize>,

    /// Number of clients that send (spread over the rooms) [default: rooms].
    #[arg(long)]
    pub senders: Option<usize>,

    /// Aggregate send rate over all senders, in messages per second
    /// [default: 10].
    #[arg(long)]
    pub rate: Option<f64>,

    /// Chat text size in bytes (the probe id travels in the message id in
    /// chat mode, inside the text in raw mode) [default: 64].
    #[arg(long)]
    pub size: Option<usize>,

    /// How long senders send once every client is connected, e.g. `30s`,
    /// `2m` [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Connection ramp: new connections per second [default: 1000].
    #[arg(long)]
    pub ramp: Option<f64>,

    /// Wire protocol: `chat` (this project's JSON frames) or `raw` (any
    /// broadcast relay of text frames).
    #[arg(long, value_enum, default_value_t = Protocol::Chat)]
    pub protocol: Protocol,

    /// Raw mode: regex that finds the APP_ID in the greeting frame; uses the
    /// group named `app_id`, else group 1, else the whole match. An empty
    /// regex waits for no greeting (every client is then `unknown`).
    #[arg(long, default_value = DEFAULT_APP_ID_REGEX)]
    pub app_id_regex: String,

    /// Write the JSON report to this file, or `-` for stdout (the human
    /// summary then goes to stderr). Schema: loadgen/README.md.
    #[arg(long)]
    pub json: Option<String>,

    /// Write the fan-out latency distribution (from scheduled send time) in
    /// HdrHistogram's percentile format (.hgrm), in milliseconds.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,

    /// Fail (exit 1) if fan-out p99 (from scheduled time) exceeds this,
    /// e.g. `20ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_p99: Option<Duration>,

    /// Fail if more deliveries than this were lost.
    #[arg(long)]
    pub max_lost: Option<u64>,

    /// Fail if more deliveries than this were duplicated.
    #[arg(long)]
    pub max_duplicated: Option<u64>,

    /// Fail if more deliveries than this arrived out of order.
    #[arg(long)]
    pub max_out_of_order: Option<u64>,

    /// Fail if more connections than this failed to open or join.
    #[arg(long)]
    pub max_failed_connections: Option<u64>,

    /// Fail if clients landed on fewer distinct APP_IDs than this.
    #[arg(long)]
    pub min_instances: Option<usize>,

    /// Fail if fewer deliveries than this crossed instances (sender APP_ID
    /// differs from receiver APP_ID).
    #[arg(long)]
    pub min_cross_instance: Option<u64>,

    /// Worker processes (loadgen re-executes itself), each with its own file
    /// limit; clients are dealt round-robin, one merged report.
    /// Default: as many as the file-descriptor limit requires.
    #[arg(long)]
    pub workers: Option<usize>,

    /// Loopback source addresses to spread connections over, e.g.
    /// `127.0.0.2-127.0.0.20` or `127.0.0.2,127.0.0.3`. Default: chosen
    /// automatically when one address would run out of ephemeral ports.
    #[arg(long)]
    pub source_ips: Option<String>,

    /// Time to wait after the last send for in-flight deliveries; messages
    /// sent within this long of a receiver's disconnect are not counted as
    /// expected there.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub grace: Duration,

    /// Give up on a connection that has not been welcomed and joined within
    /// this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Connection attempts in flight at once (TCP + WebSocket handshake).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Prefix of the room names; default `lg-<random>` so runs never share
    /// rooms or history.
    #[arg(long)]
    pub room_prefix: Option<String>,

    /// Chat mode: when a socket closes or fails, reconnect (exponential
    /// backoff with jitter, trying each --url in turn) and resume the room
    /// with `since` and `epoch`; senders pause meanwhile and then retry
    /// unconfirmed sends with the same id. Loss, duplication and order
    /// are still checked across the outage.
    #[arg(long)]
    pub reconnect: bool,

    /// With --reconnect: connection attempts per outage before a client
    /// gives up (it then counts as dropped).
    #[arg(long, default_value_t = 20)]
    pub reconnect_attempts: u32,

    /// With --reconnect: how long one outage may last before a client
    /// gives up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub reconnect_timeout: Duration,

    /// Faults injected while loadgen runs, to show on the timeline with
    /// the recovery after each: a JSON array of `{"name", "kind",
    /// "target", "at_unix_ms", "end_unix_ms"}` (what `cluster exec
    /// --fault ...` passes in LOADGEN_FAULTS).
    #[arg(long, env = "LOADGEN_FAULTS", hide_env_values = true)]
    pub faults: Option<String>,

    /// HS256 secret: mint one JWT per client (`sub` and `name` = its nick
    /// `lg<i>`, `exp` = the run plus an hour) and send it on every upgrade
    /// as `Authorization: Bearer`. Never printed (the report says `set`).
    #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// With --jwt-secret: list each client's room in its token's `rooms`
    /// claim (for servers that keep rooms private to token holders).
    #[arg(long)]
    pub jwt_rooms: bool,

    /// Runtime threads per process [default: number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,

    /// No live dashboard even on a terminal: a progress line every second.
    #[arg(long)]
    pub no_tui: bool,

    /// No live output at all (the report is still printed).
    #[arg(long, short)]
    pub quiet: bool,

    /// Internal: run as worker `INDEX/COUNT/EPOCH_US` of a parent loadgen.
    #[arg(long, hide = true)]
    pub worker_of: Option<String>,
}

impl Opts {
    /// Layer explicit flags over the preset over the defaults, and check
    /// that the result makes sense. `fd_budget` is how many sockets one
    /// process may hold (for the automatic worker count).
    pub fn resolve(&self, fd_budget: usize) -> Result<Config> {
        let p = preset_values(self.preset);
        let rooms = self.rooms.or(p.rooms).unwrap_or(1);
        if rooms == 0 {
            bail!("--rooms must be at least 1");
        }
        let clients = match (self.members, self.clients) {
            (Some(m), Some(c)) if m * rooms != c => {
                bail!(
                    "--members {m} × --rooms {rooms} = {} but --clients is {c}; give one of them",
                    m * rooms
                )
            }
            (Some(m), _) => m * rooms,
            (None, Some(c)) => c,
            (None, None) => p.clients.unwrap_or(100),
        };
        if clients < rooms {
            bail!("--clients {clients} is fewer than --rooms {rooms}: every room needs a member");
        }
        let senders = self.senders.or(p.senders).unwrap_or(rooms);
        if senders > clients {
            bail!("--senders {senders} is more than --clients {clients}");
        }
        let rate = self.rate.or(p.rate).unwrap_or(10.0);
        if !(rate.is_finite() && rate >= 0.0) || (senders > 0 && rate == 0.0) {
            bail!("--rate must be a positive number of messages per second (got {rate})");
        }
        let ramp = self.ramp.or(p.ramp).unwrap_or(1000.0);
        if !(ramp.is_finite() && ramp > 0.0) {
            bail!("--ramp must be a positive number of connections per second (got {ramp})");
        }
        let size = self.size.or(p.size).unwrap_or(64);
        if size == 0 || size > 1 << 20 {
            bail!("--size must be between 1 and 1048576 bytes (got {size})");
        }
        let duration = self
            .duration
            .or(p.duration)
            .unwrap_or(Duration::from_secs(10));
        let url_fallback = !self.url.is_empty();
        let urls = if self.url.is_empty() {
            vec![DEFAULT_URL.to_string()]
        } else {
            self.url.clone()
        };
        for u in &urls {
            check_url(u)?;
        }
        if let Some(r) = &self.registry {
            crate::registry::Endpoint::parse(r).map_err(|e| anyhow::anyhow!(e))?;
            if self.protocol == Protocol::Raw {
                bail!("--registry needs --protocol chat: a raw relay has no instance registry");
            }
        }
        if self.protocol == Protocol::Raw && rooms > 1 && !urls.iter().all(|u| u.contains("{room}"))
        {
            bail!(
                "--protocol raw with --rooms {rooms}: a raw relay broadcasts to every socket, so \
                 rooms only exist if the URL names them; put `{{room}}` in --url or use --rooms 1"
            );
        }
        if let Err(e) = regex::Regex::new(&self.app_id_regex) {
            bail!("--app-id-regex is not a valid regex: {e}");
        }
        let source_ips = match &self.source_ips {
            Some(s) => parse_source_ips(s)?,
            // Ports are per (source, destination) system-wide, so the
            // automatic choice looks at every worker's sockets together.
            None => crate::sys::auto_source_ips(
                clients.div_ceil(urls.len()),
                urls.iter().all(|u| url_is_loopback(u))
                    && self
                        .registry
                        .as_deref()
                        .is_none_or(|r| url_is_loopback(&r.replacen("http", "ws", 1))),
            ),
        };
        let workers = match self.workers {
            Some(0) => bail!("--workers must be at least 1"),
            Some(w) => w,
            None => clients.div_ceil(fd_budget.max(1)).max(1),
        };
        let room_prefix = match &self.room_prefix {
            Some(p) => p.clone(),
            None => format!("lg-{:08x}", rand::random::<u32>()),
        };
        if room_prefix.len() + 12 > chat_protocol::names::MAX_ROOM_LEN {
            bail!("--room-prefix is too long: room names are at most 64 bytes");
        }
        chat_protocol::names::validate_room(&room_prefix)
            .map_err(|e| anyhow::anyhow!("--room-prefix: {e}"))?;
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        if self.reconnect && self.protocol == Protocol::Raw {
            bail!("--reconnect needs --protocol chat: a raw relay cannot resume a room");
        }
        if self.reconnect && self.reconnect_attempts == 0 {
            bail!("--reconnect-attempts must be at least 1");
        }
        let faults = match &self.faults {
            Some(j) => crate::faults::parse(j).map_err(|e| anyhow::anyhow!(e))?,
            None => Vec::new(),
        };
        if self.jwt_secret.as_deref() == Some("") {
            bail!("--jwt-secret/LOADGEN_JWT_SECRET is empty");
        }
        if self.jwt_rooms && self.jwt_secret.is_none() {
            bail!("--jwt-rooms needs --jwt-secret (or LOADGEN_JWT_SECRET)");
        }
        let mut thresholds = p.thresholds;
        thresholds.overlay(&Thresholds {
            max_p99: self.max_p99,
            max_lost: self.max_lost,
            max_duplicated: self.max_duplicated,
            max_out_of_order: self.max_out_of_order,
            max_failed_connections: self.max_failed_connections,
            min_instances: self.min_instances,
            min_cross_instance: self.min_cross_instance,
        });
        Ok(Config {
            urls,
            registry: self.registry.clone(),
            url_fallback: url_fallback && self.registry.is_some(),
            preset: self.preset,
            clients,
            rooms,
            senders,
            rate,
            size,
            duration,
            ramp,
            protocol: self.protocol,
            app_id_regex: self.app_id_regex.clone(),
            grace: self.grace,
            connect_timeout: self.connect_timeout,
            connect_concurrency: self.connect_concurrency.max(1),
            room_prefix,
            workers,
            source_ips,
            threads,
            reconnect: self.reconnect,
            reconnect_attempts: self.reconnect_attempts,
            reconnect_timeout: self.reconnect_timeout,
            faults,
            jwt_secret: self.jwt_secret.clone().map(crate::jwt::Secret),
            jwt_rooms: self.jwt_rooms,
            thresholds,
        })
    }
}

/// Loopback-only URLs would be a policy for tests; here we only check the
/// shape, so that a typo fails before thousands of connections do.
fn check_url(u: &str) -> Result<()> {
    let probe = u.replace("{room}", "room");
    let parsed = tokio_tungstenite::tungstenite::http::Uri::try_from(probe.as_str())
        .map_err(|e| anyhow::anyhow!("--url {u}: {e}"))?;
    match parsed.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!(
            "--url {u}: wss:// is not supported (loadgen speaks plain ws://; put TLS in HAProxy)"
        ),
        _ => bail!("--url {u}: expected ws://HOST:PORT/PATH"),
    }
    if parsed.host().is_none() {
        bail!("--url {u}: no host");
    }
    Ok(())
}

/// Whether a URL's host is a loopback address (or `localhost`).
fn url_is_loopback(u: &str) -> bool {
    let probe = u.replace("{room}", "room");
    let Ok(uri) = tokio_tungstenite::tungstenite::http::Uri::try_from(probe.as_str()) else {
        return false;
    };
    let host = uri
        .host()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config> {
        let mut v = vec!["loadgen"];
        v.extend_from_slice(args);
        Opts::try_parse_from(v)?.resolve(19_000)
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.urls, vec![DEFAULT_URL.to_string()]);
        assert_eq!((c.clients, c.rooms, c.senders), (100, 1, 1));
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.protocol, Protocol::Chat);
        assert_eq!(c.workers, 1);
        assert!(c.thresholds.is_empty());
    }

    #[test]
    fn explicit_flags_beat_the_preset() {
        let c = cfg(&[
            "--preset",
            "smoke",
            "--clients",
            "90",
            "--duration",
            "2s",
            "--max-lost",
            "5",
        ])
        .unwrap();
        assert_eq!((c.clients, c.rooms, c.senders), (90, 4, 8));
        assert_eq!(c.duration, Duration::from_secs(2));
        assert_eq!(c.thresholds.max_lost, Some(5));
        assert_eq!(c.thresholds.max_duplicated, Some(0));
    }

    #[test]
    fn members_sets_clients() {
        let c = cfg(&["--rooms", "4", "--members", "25"]).unwrap();
        assert_eq!(c.clients, 100);
        assert!(cfg(&["--rooms", "4", "--members", "25", "--clients", "99"]).is_err());
    }

    #[test]
    fn rejects_nonsense() {
        assert!(cfg(&["--clients", "2", "--rooms", "3"]).is_err());
        assert!(cfg(&["--senders", "200"]).is_err());
        assert!(cfg(&["--rate", "0"]).is_err());
        assert!(cfg(&["--url", "http://x/ws"]).is_err());
        assert!(cfg(&["--duration", "ten"]).is_err());
        assert!(cfg(&["--protocol", "raw", "--rooms", "2", "--clients", "4"]).is_err());
        assert!(cfg(&["--app-id-regex", "("]).is_err());
        // One room may spread over several workers.
        assert_eq!(cfg(&["--clients", "50000"]).unwrap().workers, 3);
    }

    #[test]
    fn automatic_workers_follow_the_fd_budget() {
        let c = Opts::try_parse_from(["loadgen", "--clients", "100000", "--rooms", "100"])
            .unwrap()
            .resolve(19_000)
            .unwrap();
        assert_eq!(c.workers, 6);
    }

    #[test]
    fn rooms_and_senders_layout() {
        let c = cfg(&["--clients", "10", "--rooms", "3", "--senders", "4"]).unwrap();
        assert_eq!(
            (0..3).map(|r| c.senders_in_room(r)).collect::<Vec<_>>(),
            vec![2, 1, 1]
        );
        assert_eq!(c.room_of(4), 1);
        assert!(c
            .url_for(4)
            .contains(&format!("?room={}-1&nick=lg4&nick_key=", c.room_prefix)));
        let raw = cfg(&[
            "--protocol",
            "raw",
            "--url",
            "ws://127.0.0.1:1/r/{room}",
            "--rooms",
            "2",
            "--clients",
            "2",
        ])
        .unwrap();
        assert_eq!(
            raw.url_for(1),
            format!("ws://127.0.0.1:1/r/{}-1", raw.room_prefix)
        );
    }

    #[test]
    fn rooms_spread_over_urls() {
        let c = cfg(&[
            "--clients",
            "12",
            "--rooms",
            "3",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
            "--url",
            "ws://127.0.0.1:3/ws",
        ])
        .unwrap();
        for r in 0..3 {
            let mut urls: Vec<usize> = (0..12)
                .filter(|&x| c.room_of(x) == r)
                .map(|x| c.url_index(x))
                .collect();
            urls.sort();
            urls.dedup();
            assert_eq!(urls.len(), 3, "room {r} is on every URL");
        }
    }

    #[test]
    fn jwt_secret_is_kept_but_never_shown() {
        let c = cfg(&[
            "--jwt-secret",
            "hunter2",
            "--jwt-rooms",
            "--rooms",
            "2",
            "--clients",
            "4",
        ])
        .unwrap();
        assert_eq!(c.jwt_secret, Some(crate::jwt::Secret("hunter2".into())));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""jwt_secret":"set""#), "{json}");
        assert!(json.contains(r#""jwt_rooms":true"#), "{json}");
        assert!(!json.contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = c.token_for(3).unwrap().unwrap();
        let claims = jsonwebtoken::decode::<crate::jwt::Claims>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"hunter2"),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap()
        .claims;
        // The token's subject is the nick of the URL.
        assert_eq!(claims.sub, "lg3");
        assert!(c.url_for(3).contains("&nick=lg3&"));
        assert_eq!(claims.rooms, Some(vec![c.room_name(1)]));
        assert!(claims.exp >= crate::jwt::now_unix() + 3600 + 10);

        let c = cfg(&[]).unwrap();
        assert!(c.token_for(0).is_none());
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains(r#""jwt_secret":"unset""#));
        assert!(cfg(&["--jwt-rooms"]).is_err());
        assert!(cfg(&["--jwt-secret", ""]).is_err());
    }

    #[test]
    fn registry_and_its_url_fallback() {
        let c = cfg(&["--registry", "http://127.0.0.1:8080/connect"]).unwrap();
        assert_eq!(c.registry.as_deref(), Some("http://127.0.0.1:8080/connect"));
        // No --url: nothing to fall back to (the default is kept for
        // placement only).
        assert!(!c.url_fallback);
        assert_eq!(c.urls, vec![DEFAULT_URL.to_string()]);
        let c = cfg(&[
            "--registry",
            "http://127.0.0.1:8080/connect",
            "--url",
            "ws://127.0.0.1:8080/ws",
        ])
        .unwrap();
        assert!(c.url_fallback);
        // --url alone is no fallback either: there is no registry.
        assert!(
            !cfg(&["--url", "ws://127.0.0.1:8080/ws"])
                .unwrap()
                .url_fallback
        );
        let e = cfg(&["--registry", "https://127.0.0.1:8443/connect"]).unwrap_err();
        assert!(e.to_string().contains("https:// is not supported"), "{e}");
        assert!(cfg(&["--registry", "ws://127.0.0.1:8080/connect"]).is_err());
        assert!(cfg(&[
            "--registry",
            "http://127.0.0.1:8080/connect",
            "--protocol",
            "raw"
        ])
        .is_err());
        // The placement of a client on the instance the registry names.
        let c = cfg(&[
            "--registry",
            "http://127.0.0.1:8080/connect",
            "--rooms",
            "2",
            "--clients",
            "4",
        ])
        .unwrap();
        let u = c.url_on("ws://127.0.0.1:9002/ws", 3);
        assert!(
            u.starts_with(&format!(
                "ws://127.0.0.1:9002/ws?room={}-1&nick=lg3&nick_key=",
                c.room_prefix
            )),
            "{u}"
        );
        let r = c.resume_on("ws://127.0.0.1:9002/ws", 3, 41, "e 1");
        assert!(r.starts_with(&u), "{r}");
        assert!(r.ends_with("&since=41&epoch=e%201"), "{r}");
    }

    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let cmd = Opts::command();
        for a in cmd.get_arguments() {
            if a.is_hide_set() || a.get_id() == "help" || a.get_id() == "version" {
                continue;
            }
            assert!(a.get_help().is_some(), "--{} has no help", a.get_id());
        }
        cmd.debug_assert();
    }
}
