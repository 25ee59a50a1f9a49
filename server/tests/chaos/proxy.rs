//! A tiny TCP proxy that can freeze its connections: the stand-in for a
//! hung peer or a half-open TCP path between one instance and Redis.
//!
//! [`FreezeProxy::freeze`] stops forwarding bytes, in both directions, on
//! every connection that exists at that moment. The sockets stay open and
//! unread, so neither end sees an error or a FIN: writes pile up in kernel
//! buffers and reads never return, exactly like a peer that hung or a path
//! that silently lost its packets. Connections accepted later are forwarded
//! normally, so an instance that gives up on a frozen connection and dials
//! again gets through.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The proxy; dropping it closes every connection.
#[derive(Debug)]
pub struct FreezeProxy {
    addr: String,
    /// One freeze switch per connection accepted so far.
    switches: Arc<Mutex<Vec<watch::Sender<bool>>>>,
    /// The accept loop and every connection task: aborted on drop.
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl FreezeProxy {
    /// Listen on a free loopback port and forward to `target` (`host:port`).
    pub async fn start(target: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let switches: Arc<Mutex<Vec<watch::Sender<bool>>>> = Arc::default();
        let tasks: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let (sw, ts) = (switches.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(&target).await else {
                    continue; // the client sees its connection close
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (tx, rx) = watch::channel(false);
                sw.lock().unwrap().push(tx);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                let mut set = ts.lock().unwrap();
                set.spawn(pump(cr, uw, rx.clone()));
                set.spawn(pump(ur, cw, rx));
            }
        });
        Ok(Self {
            addr,
            switches,
            tasks,
        })
    }

    /// `host:port` to dial instead of the target.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Freeze every connection open now; returns how many there were.
    pub fn freeze(&self) -> usize {
        let switches = self.switches.lock().unwrap();
        for s in switches.iter() {
            s.send_replace(true);
        }
        switches.len()
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.abort_all();
        }
    }
}

/// Copy `from` to `to` until either side closes or the switch freezes the
/// connection; a frozen pump keeps both halves open and never touches them
/// again (the bytes it read but had not written yet are held back too).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow() {
            break;
        }
        tokio::select! {
            biased;
            changed = frozen.changed() => {
                if changed.is_err() {
                    return; // the proxy is gone
                }
            }
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if *frozen.borrow() {
                        break;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    // Frozen: hold both halves open until the proxy is dropped.
    let _hold = (from, to);
    std::future::pending::<()>().await;
}
