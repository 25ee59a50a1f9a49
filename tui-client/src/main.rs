//! The `tui-client` binary: parse options, log to a file, run the UI.

use clap::Parser;
use tui_client::Opts;

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if let Err(e) = opts.validate() {
        eprintln!("tui-client: {e}");
        std::process::exit(2);
    }
    let log = opts.log_path();
    tui_client::logging::init(&log, &opts.log)?;
    tracing::info!(url = %opts.url, log = %log.display(), "starting");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(tui_client::run::run(opts));
    // The worker may be blocked on a dead socket; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "exiting with an error");
    }
    result
}
