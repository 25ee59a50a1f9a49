//! Logs go to a file: the terminal belongs to the UI, and a stray line on
//! it would tear the screen.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// Send `tracing` output to `path` (appending), filtered by `filter`.
pub fn init(path: &Path, filter: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).context("bad log filter")?)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    Ok(())
}
