//! A local cluster to drive `tui-client` by hand: redis-server, N chat
//! servers and HAProxy on loopback, plus commands on stdin to kill and
//! restart instances and to flood a room.
//!
//! ```text
//! cargo run -p tui-client --example local_cluster -- 3 15
//!   (3 servers, stops by itself after 15 minutes)
//! commands:  kill I | stop I | start I | redis-kill | redis-start | flood ROOM MESSAGES SENDERS | say ROOM TEXT | quit
//! ```

use std::io::BufRead;
use std::time::{Duration, Instant};

use chat_cluster::{Cluster, ClusterOptions};
use chat_protocol::ClientFrame;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Each flooding sender stays under the server's 20 messages/s.
const PER_SENDER_RATE: u64 = 15;

async fn sender(url: String, nick: String, room: String, count: usize) -> anyhow::Result<()> {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{url}?nick={nick}&room={room}")).await?;
    let (mut tx, mut rx) = ws.split();
    // Keep reading so the server never sees a slow consumer.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SENDER_RATE));
    for i in 0..count {
        tick.tick().await;
        let f = ClientFrame::Send {
            room: None,
            text: format!("{nick} flood line {i} — the quick brown fox jumps over the lazy dog"),
            id: None,
            action: false,
        };
        tx.send(Message::Text(serde_json::to_string(&f)?.into()))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tx.send(Message::Close(None)).await;
    reader.abort();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let servers = args.first().and_then(|s| s.parse().ok()).unwrap_or(3);
    let minutes: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut cluster = Cluster::start(ClusterOptions {
        servers,
        ..Default::default()
    })?;
    println!("HAProxy:  {}", cluster.ws_url());
    for i in 0..cluster.len() {
        println!("{}:     {}", cluster.app_id(i), cluster.server_ws_url(i));
    }
    println!("logs:     {}", cluster.log_dir().display());
    println!(
        "try:      cargo run -p tui-client -- --url {} --nick you",
        cluster.ws_url()
    );
    println!("commands: kill I | stop I | start I | redis-kill | redis-start | flood ROOM MESSAGES SENDERS | say ROOM TEXT | quit (I is 0-based)");
    let rt = tokio::runtime::Runtime::new()?;
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while Instant::now() < deadline {
        let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kill", i] => {
                let i: usize = i.parse()?;
                cluster.kill_server(i);
                println!("killed {} (SIGKILL)", cluster.app_id(i));
            }
            ["stop", i] => {
                let i: usize = i.parse()?;
                let status = cluster.stop_server(i)?;
                println!("stopped {} (SIGTERM): {status}", cluster.app_id(i));
            }
            ["redis-kill"] => {
                cluster.kill_redis();
                println!("killed redis");
            }
            ["redis-start"] => {
                cluster.start_redis()?;
                println!("started redis (empty)");
            }
            ["start", i] => {
                let i: usize = i.parse()?;
                cluster.start_server(i)?;
                println!("started {}", cluster.app_id(i));
            }
            ["flood", room, count, senders] => {
                let count: usize = count.parse()?;
                let senders: usize = senders.parse()?;
                let url = cluster.ws_url();
                for s in 0..senders {
                    let (url, room) = (url.clone(), room.to_string());
                    rt.spawn(async move {
                        if let Err(e) =
                            sender(url, format!("flood{s}"), room, count / senders.max(1)).await
                        {
                            eprintln!("flood{s}: {e}");
                        }
                    });
                }
                println!("flooding {room}: {count} messages from {senders} senders");
            }
            ["say", room, rest @ ..] => {
                let (url, room, text) = (cluster.ws_url(), room.to_string(), rest.join(" "));
                rt.block_on(async move {
                    let (mut ws, _) =
                        tokio_tungstenite::connect_async(format!("{url}?nick=console&room={room}"))
                            .await?;
                    let f = ClientFrame::Send {
                        room: None,
                        text,
                        id: None,
                        action: false,
                    };
                    ws.send(Message::Text(serde_json::to_string(&f)?.into()))
                        .await?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ws.close(None).await?;
                    anyhow::Ok(())
                })?;
            }
            ["quit"] => break,
            _ => println!("?"),
        }
    }
    cluster.shutdown();
    Ok(())
}
