//! Configuration: clap flags, each with an environment-variable fallback.
//! The Redis flags carry the same names as the server's, so one set of
//! environment variables configures both.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// The archiver: copies every chat message from the rooms' Redis Streams
/// into PostgreSQL, once.
#[derive(Debug, Clone, Parser)]
#[command(name = "archiver", version, about, long_about = None)]
pub struct Config {
    /// Redis holding the rooms' streams (with `--redis-sentinels` or
    /// `--redis-cluster` it only supplies the database, user and password).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Redis Sentinel addresses (`HOST:PORT,HOST:PORT,...`): the archiver
    /// asks them for the master of `--redis-sentinel-master` at every scan
    /// and follows failovers.
    #[arg(
        long,
        env = "REDIS_SENTINELS",
        value_delimiter = ',',
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinels: Vec<String>,

    /// The master name the sentinels monitor.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Redis Cluster seed nodes (`HOST:PORT,...`). The archiver reads the
    /// masters from `CLUSTER SLOTS` at every scan and scans each of them:
    /// no command ever spans two slots.
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster: Vec<String>,

    /// PostgreSQL, e.g. `postgres://user:pass@127.0.0.1:5432/chat`.
    /// Migrations run at start.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// This archiver's consumer name in each stream's `archiver` group
    /// (default: hostname-pid). Give a restarted archiver its old name to
    /// have it take its own pending entries back at once rather than after
    /// `--claim-idle`.
    #[arg(long, env = "ARCHIVER_CONSUMER")]
    pub consumer: Option<String>,

    /// Most rows in one PostgreSQL transaction (one batch is read from the
    /// streams, committed, then acknowledged).
    #[arg(long, env = "ARCHIVER_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,

    /// How often each Redis master is scanned for room streams (and the
    /// lag metrics and watermarks are refreshed).
    #[arg(long, env = "SCAN_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub scan_interval: Duration,

    /// Entries pending this long in another consumer (a dead or stuck
    /// archiver) are claimed (`XAUTOCLAIM`) and archived by this one.
    #[arg(long, env = "CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub claim_idle: Duration,

    /// How long to wait before reading again when no stream had anything
    /// new.
    #[arg(long, env = "POLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Where `/metrics` (Prometheus text) and `/healthz` are served.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9200")]
    pub metrics_listen: SocketAddr,

    /// On SIGTERM the batch in flight is finished (committed and
    /// acknowledged); this bounds how long that may take while PostgreSQL
    /// is down. Entries left unacknowledged stay pending in Redis for the
    /// next archiver.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The consumer name: `--consumer`, else `hostname-pid`.
    pub fn consumer_name(&self) -> String {
        if let Some(c) = &self.consumer {
            return c.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "archiver".into());
        format!("{host}-{}", std::process::id())
    }

    /// A configuration for tests: defaults plus the two URLs, metrics on
    /// an ephemeral port and quick scans.
    pub fn for_test(redis_url: &str, database_url: &str) -> Self {
        Self::parse_from([
            "archiver",
            "--redis-url",
            redis_url,
            "--database-url",
            database_url,
            "--metrics-listen",
            "127.0.0.1:0",
            "--scan-interval",
            "200ms",
            "--poll-interval",
            "20ms",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_consumer_name() {
        let c = Config::parse_from(["archiver", "--database-url", "postgres://x/y"]);
        assert_eq!(c.batch, 500);
        assert_eq!(c.scan_interval, Duration::from_secs(1));
        assert_eq!(c.claim_idle, Duration::from_secs(30));
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9200");
        assert!(c
            .consumer_name()
            .ends_with(&format!("-{}", std::process::id())));
        let c = Config::parse_from([
            "archiver",
            "--database-url",
            "postgres://x/y",
            "--consumer",
            "a1",
        ]);
        assert_eq!(c.consumer_name(), "a1");
    }

    #[test]
    fn sentinel_flags_need_a_master_name() {
        assert!(Config::try_parse_from([
            "archiver",
            "--database-url",
            "postgres://x/y",
            "--redis-sentinels",
            "127.0.0.1:26379"
        ])
        .is_err());
    }
}
