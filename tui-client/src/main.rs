//! The `tui-client` binary: parse options, log to a file, run the UI.

use tui_client::Opts;

fn main() -> anyhow::Result<()> {
    let (opts, loaded) = match Opts::load_from(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    if let Err(e) = opts.validate() {
        eprintln!("tui-client: {e}");
        std::process::exit(2);
    }
    if opts.print_config {
        println!("{}", opts.effective_toml(&loaded).trim_end());
        return Ok(());
    }
    let log = opts.log_path();
    tui_client::logging::init(&log, &opts.log)?;
    if opts.log_file.is_none() {
        if let Some(dir) = log.parent() {
            tui_client::logging::prune(dir, 20);
        }
    }
    tracing::info!(url = %opts.url, log = %log.display(), config = ?loaded.path, "starting");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(tui_client::run::run(opts, loaded));
    // The worker may be blocked on a dead socket; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "exiting with an error");
    }
    result
}
