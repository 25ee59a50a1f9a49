//! `--registry URL`: seed 004's way in. Before each connect a client asks
//! the instance registry (`GET /connect` on any instance, or through
//! HAProxy) which instance is least loaded, and connects its WebSocket
//! straight to the `url` of the answer, so no proxy relays its frames.
//!
//! The ask is one plain HTTP/1.1 `GET` with `Connection: close`, written
//! and read by hand on a tokio `TcpStream` (plain `http://` only: loadgen
//! measures loopback clusters). Failures are short, bounded report kinds:
//! `http <status>`, `refused`, `timeout`, `bad json`, or `io: <kind>`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kinds::io_kind;

/// Most bytes of an answer read (head and body).
pub const MAX_ANSWER: usize = 16 * 1024;
/// How long one ask may take (connect, write, read).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed `--registry` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` for the `Host` header.
    pub host: String,
    pub port: u16,
    /// `/path?query` of the request line.
    pub path: String,
}

impl Endpoint {
    /// Parse `http://HOST[:PORT]/PATH`; `https://` and anything else is
    /// refused with the reason.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().map_err(|e| format!("--registry {url}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--registry {url}: https:// is not supported (loadgen asks the registry over \
                     plain http://, e.g. http://127.0.0.1:8080/connect; put TLS in HAProxy)"
                ))
            }
            _ => {
                return Err(format!(
                    "--registry {url}: expected http://HOST:PORT/connect"
                ))
            }
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("--registry {url}: no host"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let path = if path.is_empty() { "/".into() } else { path };
        Ok(Endpoint { host, port, path })
    }

    /// The `Host` header's value.
    fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolve the host once (prefer IPv4, like `--url`).
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        resolve_host(&self.host, self.port).await
    }
}

/// `host:port` to an address: an IP literal at once, a name through the
/// resolver (IPv4 first: the cluster listens on 127.0.0.1).
pub async fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    let h = host.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let all: Vec<SocketAddr> = tokio::net::lookup_host((h, port))
        .await
        .map_err(|e| format!("resolving {h}: {e}"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| format!("{h} has no address"))
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `ws://HOST:PORT/PATH` of the instance to connect to.
    pub url: String,
    pub app_id: String,
    pub connections: u64,
    /// Where `url` points (resolved).
    pub addr: SocketAddr,
}

/// Why an ask failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// An answer other than 200.
    Status(u16),
    Refused,
    Timeout,
    /// Not an HTTP response, or a body without a usable `url`.
    BadJson,
    /// Any other I/O failure (reset, closed early).
    Io(String),
}

impl AskError {
    /// A short, bounded report key.
    pub fn kind(&self) -> String {
        match self {
            AskError::Status(s) => format!("http {s}"),
            AskError::Refused => "refused".into(),
            AskError::Timeout => "timeout".into(),
            AskError::BadJson => "bad json".into(),
            AskError::Io(k) => format!("io: {k}"),
        }
    }
}

fn io_err(e: &std::io::Error) -> AskError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => AskError::Refused,
        std::io::ErrorKind::TimedOut => AskError::Timeout,
        _ => AskError::Io(io_kind(e)),
    }
}

/// Ask the registry at `addr` once (from `src` when given), within
/// [`ASK_TIMEOUT`].
pub async fn ask(
    ep: &Endpoint,
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
) -> Result<Answer, AskError> {
    let raw = match tokio::time::timeout(ASK_TIMEOUT, exchange(ep, addr, src)).await {
        Ok(r) => r?,
        Err(_) => return Err(AskError::Timeout),
    };
    let a = parse_response(&raw)?;
    let addr = match ws_host_port(&a.0) {
        Some((h, p)) => resolve_host(&h, p).await.map_err(|_| AskError::BadJson)?,
        None => return Err(AskError::BadJson),
    };
    Ok(Answer {
        url: a.0,
        app_id: a.1,
        connections: a.2,
        addr,
    })
}

/// Connect, write the request, read the whole answer (until the body's
/// length, the end of the stream, or [`MAX_ANSWER`]).
async fn exchange(
    ep: &Endpoint,
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
) -> Result<Vec<u8>, AskError> {
    let sock = crate::sys::bound_socket(src, &addr).map_err(|e| io_err(&e))?;
    let mut tcp = sock.connect(addr).await.map_err(|e| io_err(&e))?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\
         User-Agent: loadgen\r\n\r\n",
        ep.path,
        ep.host_header()
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| io_err(&e))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    // Bounded by MAX_ANSWER (each turn reads at least a byte) and by the
    // caller's timeout.
    loop {
        if complete(&buf) {
            break;
        }
        let n = tcp.read(&mut chunk).await.map_err(|e| io_err(&e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_ANSWER {
            return Err(AskError::BadJson);
        }
    }
    if buf.is_empty() {
        return Err(AskError::Io("closed before the response".into()));
    }
    Ok(buf)
}

/// Whether `buf` holds a whole response with a `Content-Length` body.
fn complete(buf: &[u8]) -> bool {
    let Some(i) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..i]);
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= i + 4 + len)
}

/// A whole HTTP response to `(url, app_id, connections)`.
pub fn parse_response(raw: &[u8]) -> Result<(String, String, u64), AskError> {
    let i = memchr::memmem::find(raw, b"\r\n\r\n").ok_or(AskError::BadJson)?;
    let head = String::from_utf8_lossy(&raw[..i]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.") {
        return Err(AskError::BadJson);
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(AskError::BadJson)?;
    if status != 200 {
        return Err(AskError::Status(status));
    }
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[i + 4..];
    let body: Vec<u8> = if chunked {
        dechunk(rest).ok_or(AskError::BadJson)?
    } else {
        match length {
            Some(n) => rest.get(..n).ok_or(AskError::BadJson)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    parse_body(&body)
}

/// A chunked body, decoded; `None` when malformed or cut short.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // Each turn consumes at least the size line, so this ends.
    loop {
        let eol = memchr::memmem::find(b, b"\r\n")?;
        let size_s = std::str::from_utf8(&b[..eol]).ok()?;
        let size_s = size_s.split(';').next()?.trim();
        let size = usize::from_str_radix(size_s, 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size..)?.strip_prefix(b"\r\n")?;
        if out.len() > MAX_ANSWER {
            return None;
        }
    }
}

/// The JSON body: `{"url": "ws://…", "app_id": "…", "connections": N}`.
pub fn parse_body(body: &[u8]) -> Result<(String, String, u64), AskError> {
    #[derive(serde::Deserialize)]
    struct Body {
        url: String,
        #[serde(default)]
        app_id: String,
        #[serde(default)]
        connections: u64,
    }
    let b: Body = serde_json::from_slice(body).map_err(|_| AskError::BadJson)?;
    if ws_host_port(&b.url).is_none() {
        return Err(AskError::BadJson);
    }
    Ok((b.url, b.app_id, b.connections))
}

/// Host and port of a `ws://` URL; `None` for anything else.
pub fn ws_host_port(url: &str) -> Option<(String, u16)> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("ws") {
        return None;
    }
    let host = uri.host()?.to_string();
    Some((host, uri.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_http_and_refuses_https() {
        let e = Endpoint::parse("http://127.0.0.1:8080/connect").unwrap();
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.port, 8080);
        assert_eq!(e.path, "/connect");
        assert_eq!(e.host_header(), "127.0.0.1:8080");
        let e = Endpoint::parse("http://localhost/connect?x=1").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/connect?x=1"));
        assert_eq!(e.host_header(), "localhost");
        let err = Endpoint::parse("https://127.0.0.1:8443/connect").unwrap_err();
        assert!(err.contains("https:// is not supported"), "{err}");
        assert!(Endpoint::parse("ws://127.0.0.1:8080/connect").is_err());
        assert!(Endpoint::parse("127.0.0.1:8080/connect").is_err());
    }

    #[test]
    fn a_good_answer() {
        let body = r#"{"url":"ws://127.0.0.1:9002/ws","app_id":"app2","connections":7}"#;
        let raw = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        assert!(complete(raw.as_bytes()));
        assert!(!complete(&raw.as_bytes()[..raw.len() - 1]));
        assert_eq!(
            parse_response(raw.as_bytes()).unwrap(),
            ("ws://127.0.0.1:9002/ws".into(), "app2".into(), 7)
        );
        // Chunked, and without a length (read to the end of the stream).
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            10,
            &body[..10],
            body.len() - 10,
            &body[10..]
        );
        assert_eq!(parse_response(chunked.as_bytes()).unwrap().1, "app2");
        let bare = format!("HTTP/1.0 200 OK\r\n\r\n{body}");
        assert_eq!(parse_response(bare.as_bytes()).unwrap().2, 7);
    }

    #[test]
    fn failures_by_kind() {
        let r = |s: &str| parse_response(s.as_bytes()).unwrap_err().kind();
        assert_eq!(
            r("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\n{\"error\"}"),
            "http 503"
        );
        assert_eq!(r("HTTP/1.1 404 Not Found\r\n\r\n"), "http 404");
        assert_eq!(
            r("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
            "bad json"
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n{\"app_id\":\"a\"}"), "bad json");
        assert_eq!(
            r("HTTP/1.1 200 OK\r\n\r\n{\"url\":\"http://127.0.0.1:1/ws\"}"),
            "bad json"
        );
        assert_eq!(r("SSH-2.0-OpenSSH\r\n\r\n"), "bad json");
        assert_eq!(
            r("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{}"),
            "bad json"
        );
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            "bad json"
        );
        assert_eq!(AskError::Refused.kind(), "refused");
        assert_eq!(AskError::Timeout.kind(), "timeout");
    }

    #[test]
    fn ws_urls() {
        assert_eq!(
            ws_host_port("ws://127.0.0.1:9001/ws"),
            Some(("127.0.0.1".into(), 9001))
        );
        assert_eq!(ws_host_port("ws://h/ws"), Some(("h".into(), 80)));
        assert_eq!(ws_host_port("wss://h/ws"), None);
        assert_eq!(ws_host_port("nonsense"), None);
    }

    /// A one-shot HTTP server on loopback that answers `response` (or
    /// nothing, holding the socket, when it is empty).
    async fn serve_once(response: String) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).await.unwrap();
            let req = String::from_utf8_lossy(&b[..n]).into_owned();
            assert!(req.starts_with("GET /connect HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("\r\nHost: "), "{req}");
            if response.is_empty() {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return;
            }
            s.write_all(response.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn ask_over_a_socket() {
        let body = r#"{"url":"ws://127.0.0.1:9/ws","app_id":"a1","connections":3}"#;
        let ok = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let addr = serve_once(ok).await;
        let ep = Endpoint::parse(&format!("http://{addr}/connect")).unwrap();
        let a = ask(&ep, addr, None).await.unwrap();
        assert_eq!(a.url, "ws://127.0.0.1:9/ws");
        assert_eq!(a.app_id, "a1");
        assert_eq!(a.connections, 3);
        assert_eq!(a.addr, "127.0.0.1:9".parse().unwrap());

        let addr = serve_once("HTTP/1.1 503 x\r\ncontent-length: 2\r\n\r\n{}".into()).await;
        assert_eq!(
            ask(&ep, addr, None).await.unwrap_err(),
            AskError::Status(503)
        );

        // Nobody listens on a port just released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        assert_eq!(ask(&ep, dead, None).await.unwrap_err(), AskError::Refused);
    }

    #[tokio::test]
    async fn a_silent_registry_times_out() {
        let addr = serve_once(String::new()).await;
        let ep = Endpoint::parse(&format!("http://{addr}/connect")).unwrap();
        assert_eq!(ask(&ep, addr, None).await.unwrap_err(), AskError::Timeout);
    }
}
