//! The `server` binary: parse configuration, set up logging, run.

use anyhow::Context;
use chat_server::config::{Config, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc, configured at build time (`.cargo/config.toml`,
/// `JEMALLOC_SYS_WITH_MALLOC_CONF`) to hand freed pages back to the kernel
/// within a second: after a ramp of upgrades and joins, glibc keeps about
/// 1.1 KB per connection resident that the connections no longer use
/// (BENCHMARKS.md, "Issue 11: idle memory").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    chat_server::run(listener, config, chat_server::shutdown_signal()).await
}
