//! Start a local chat cluster (redis-server, N servers, HAProxy on loopback)
//! for benchmarking loadgen by hand, print its URLs and PIDs, and stop it
//! after `--for` (bounded, so a forgotten cluster does not linger) or on
//! Ctrl-C / closed stdin.
//!
//! ```text
//! cargo run --release -p loadgen --example local-cluster -- --servers 3 --for 300s
//! ```

use std::io::BufRead as _;
use std::time::Duration;

use chat_cluster::{Cluster, ClusterOptions};
use clap::Parser;

/// Start a local cluster for loadgen runs.
#[derive(Debug, Parser)]
struct Args {
    /// Number of chat servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Stop after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    r#for: Duration,
    /// HAProxy maxconn.
    #[arg(long, default_value_t = 9000)]
    maxconn: u32,
    /// Extra server arguments, e.g. `--server-arg=--max-connections=30000`.
    #[arg(long)]
    server_arg: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cluster = Cluster::start(ClusterOptions {
        servers: a.servers,
        haproxy_maxconn: a.maxconn,
        server_args: a.server_arg.clone(),
        server_log: "warn".into(),
        ..Default::default()
    })?;
    println!("haproxy {}", cluster.ws_url());
    for i in 0..cluster.len() {
        println!(
            "server {} {} pid {:?}",
            cluster.app_id(i),
            cluster.server_ws_url(i),
            cluster.server_pid(i)
        );
    }
    println!("logs {}", cluster.log_dir().display());
    println!("ready");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for l in stdin.lock().lines() {
            if l.is_err() {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(a.r#for);
    drop(cluster);
    Ok(())
}
