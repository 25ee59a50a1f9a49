//! The client side of one WebSocket: open (TCP from a chosen source, HTTP
//! upgrade), receive one message at a time, send text, close. The rest of
//! loadgen sees only [`Conn`], so the transport's buffers are one module's
//! business.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::kinds::{close_kind, io_kind, ws_kind};

/// Small WebSocket buffers: most sockets are idle, and a few KiB per socket
/// is what lets one process hold 19k of them.
pub fn ws_config(size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(0)
        .max_message_size(Some((size * 2).max(1 << 20)))
        .max_frame_size(Some((size * 2).max(1 << 20)))
}

/// What [`Conn::recv`] got.
#[derive(Debug)]
pub enum Recv<'a> {
    Text(&'a [u8]),
    /// A binary message of this many bytes (the protocol has none).
    Binary(usize),
    /// The server closed: `close: <code> <name>`.
    Closed {
        kind: String,
        code: Option<u16>,
    },
}

/// One open WebSocket.
#[derive(Debug)]
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    /// The last text message, borrowed out by [`Conn::recv`].
    last: Option<tokio_tungstenite::tungstenite::Utf8Bytes>,
}

impl Conn {
    /// TCP connect (from `src` when given) and upgrade at `url`. Errors are
    /// short report kinds (`connect: connection refused`, `upgrade: http 503`).
    pub async fn open(
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        url: String,
        config: WebSocketConfig,
    ) -> Result<Conn, String> {
        let sock = crate::sys::bound_socket(src, &addr)
            .map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("upgrade: {}", ws_kind(&e)))?;
        Ok(Conn { ws, last: None })
    }

    /// The next message. Cancel-safe (a `select!` branch may drop it).
    /// `Err` is a report kind (`read: connection reset`), and the
    /// connection is then unusable.
    pub async fn recv(&mut self) -> Result<Recv<'_>, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let t = self.last.insert(t);
                    return Ok(Recv::Text(t.as_bytes()));
                }
                Some(Ok(Message::Binary(b))) => return Ok(Recv::Binary(b.len())),
                Some(Ok(Message::Close(f))) => {
                    return Ok(Recv::Closed {
                        kind: close_kind(f.as_ref()),
                        code: f.as_ref().map(|f| u16::from(f.code)),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {}", ws_kind(&e))),
                None => return Err("read: closed without a close frame".into()),
            }
        }
    }

    /// Send one text message.
    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send: {}", ws_kind(&e)))
    }

    /// Send a normal close and wait briefly for the server's answer.
    pub async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "loadgen done".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}
