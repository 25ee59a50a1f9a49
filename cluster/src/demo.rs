//! The demo: three bots connect through HAProxy, land on different
//! instances, and each says hello; every bot prints what reached it and
//! through which instance, so cross-instance delivery is visible.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chat_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bots that stay connected (members of `lobby`) until dropped.
#[derive(Debug)]
pub(crate) struct Bots(#[allow(dead_code)] Vec<tokio::task::JoinHandle<()>>);

impl Drop for Bots {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn next_frame(ws: &mut Ws) -> Result<ServerFrame> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .context("no frame within 5s")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(_)) => continue,
            other => bail!("connection ended: {other:?}"),
        }
    }
}

/// Run the demo against `url`.
pub(crate) async fn run(url: &str) -> Result<Bots> {
    let nicks = ["alice", "bob", "carol"];
    let mut bots = Vec::new();
    println!("\ndemo: three bots connect through HAProxy");
    for nick in nicks {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{url}?room=lobby&nick={nick}")).await?;
        let ServerFrame::Welcome { app_id, .. } = next_frame(&mut ws).await? else {
            bail!("first frame was not a welcome");
        };
        println!("  {nick:<6} landed on {app_id}");
        loop {
            if let ServerFrame::Members { .. } = next_frame(&mut ws).await? {
                break;
            }
        }
        bots.push((nick, app_id, ws));
    }
    for (nick, app_id, ws) in bots.iter_mut() {
        let text = format!("hello from {nick} on {app_id}");
        let frame = serde_json::json!({"type":"send","text":text,"id":format!("demo-{nick}")});
        ws.send(Message::Text(frame.to_string().into())).await?;
    }
    println!(
        "demo: each bot says hello; every bot receives every line, whichever instance sent it:"
    );
    let mut crossed = 0;
    for (nick, app_id, ws) in bots.iter_mut() {
        let mut got = 0;
        while got < nicks.len() {
            if let ServerFrame::Message(m) = next_frame(ws).await? {
                got += 1;
                let cross = if &m.app_id != app_id {
                    "  <- crossed instances"
                } else {
                    ""
                };
                if !cross.is_empty() {
                    crossed += 1;
                }
                println!(
                    "  {nick:<6} ({app_id}) got #{} {:<28} accepted by {}{cross}",
                    m.offset,
                    format!("{:?}", m.text),
                    m.app_id
                );
            }
        }
    }
    println!("demo: {crossed} deliveries crossed instances through Redis");
    let handles = bots
        .into_iter()
        .map(|(_, _, mut ws)| {
            tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
        })
        .collect();
    Ok(Bots(handles))
}
