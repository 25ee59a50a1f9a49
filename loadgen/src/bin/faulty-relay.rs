//! `faulty-relay`: a WebSocket relay on loopback that drops, duplicates and
//! reorders deliveries on purpose, to show that loadgen's checker catches
//! each fault. See `loadgen::relay`.
//!
//! ```text
//! faulty-relay --listen 127.0.0.1:9100 --drop-every 50 --dup-every 70 --reorder-every 90
//! loadgen --protocol raw --url ws://127.0.0.1:9100/ws --max-lost 0   # fails, as it should
//! ```

use clap::Parser;
use loadgen::relay::{self, RelayConfig};

/// A deliberately faulty broadcast relay for testing load checkers.
#[derive(Debug, Parser)]
#[command(name = "faulty-relay", version, about)]
struct Args {
    /// Loopback address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
    /// Speak the chat protocol (welcome, joined, message with offset)
    /// instead of relaying raw text with a Node.js-style greeting.
    #[arg(long)]
    chat: bool,
    /// APP_IDs handed out round-robin, comma-separated.
    #[arg(long, default_value = "relay1,relay2,relay3", value_delimiter = ',')]
    app_ids: Vec<String>,
    /// Drop every Nth delivery (0: never).
    #[arg(long, default_value_t = 0)]
    drop_every: u64,
    /// Duplicate every Nth delivery (0: never).
    #[arg(long, default_value_t = 0)]
    dup_every: u64,
    /// Swap every Nth delivery with the next one to the same socket (0: never).
    #[arg(long, default_value_t = 0)]
    reorder_every: u64,
    /// With --chat: send every frame's fields in a shuffled order (valid
    /// JSON, never `type` first).
    #[arg(long)]
    shuffle: bool,
    /// With --chat: publish every Nth send to everyone but its sender,
    /// then cut the sender's connection without a close frame (0: never).
    /// The relay resumes `since` and answers retried ids with `sent`.
    #[arg(long, default_value_t = 0)]
    cut_sender_every: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address: this relay exists to misbehave");
    }
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let r = relay::spawn(
        listener,
        RelayConfig {
            chat: a.chat,
            app_ids: a.app_ids,
            drop_every: a.drop_every,
            dup_every: a.dup_every,
            reorder_every: a.reorder_every,
            shuffle: a.shuffle,
            cut_sender_every: a.cut_sender_every,
        },
        stop.clone(),
    )?;
    println!("faulty-relay listening on {}", r.ws_url());
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    let c = &r.counters;
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "deliveries {} dropped {} duplicated {} reordered {}",
        c.deliveries.load(Relaxed),
        c.dropped.load(Relaxed),
        c.duplicated.load(Relaxed),
        c.reordered.load(Relaxed)
    );
    Ok(())
}
