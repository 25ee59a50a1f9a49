//! A minimal HTTP/1.1 `GET` over plain TCP, for the registry and the
//! server's `/history`: one request per connection (`Connection: close`),
//! a bounded answer, plain or chunked bodies. The client only ever talks
//! `ws://` (see `--url`), so `http://` is all it needs, and a full HTTP
//! client would be a heavy dependency for two small GETs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: its status and its (de-chunked) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The first line of the body, for an error message (servers say why
    /// in a text body).
    pub fn reason(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {first}", self.status)
        }
    }
}

/// `GET url` (`http://host:port/path?query`) with extra `headers`, reading
/// at most `max` bytes, all within `limit`.
pub async fn get(
    url: &str,
    headers: &[(&str, String)],
    max: usize,
    limit: Duration,
) -> Result<Response, String> {
    tokio::time::timeout(limit, get_inner(url, headers, max))
        .await
        .map_err(|_| format!("no answer within {}s", limit.as_secs()))?
}

async fn get_inner(url: &str, headers: &[(&str, String)], max: usize) -> Result<Response, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// is supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let mut stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            return Err(format!("{addr}: answer over {max} bytes"));
        }
        if complete(&buf) {
            break;
        }
    }
    parse(&buf)
}

/// Whether a response is complete by its `Content-Length` (otherwise it
/// ends with the connection).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| buf.len() >= end + 4 + n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read an HTTP/1.1 response: its status and body (plain or chunked).
pub fn parse(buf: &[u8]) -> Result<Response, String> {
    let end = find(buf, b"\r\n\r\n").ok_or("the answer has no header end")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut body = buf[end + 4..].to_vec();
    if head
        .to_lowercase()
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(Response { status, body })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    // At most one chunk per byte of input: the loop ends.
    for _ in 0..=body.len() {
        let line_end = find(body, b"\r\n").ok_or("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let start = line_end + 2;
        let data = body
            .get(start..start + size)
            .ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(data);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
    Err("too many chunks".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_body_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc");
        let r = parse(b"HTTP/1.1 403 Forbidden\r\n\r\nprivate room\nmore\n").unwrap();
        assert_eq!(r.reason(), "HTTP 403: private room");
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(r.reason(), "HTTP 503");
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_not_a_panic() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(
            &format!("http://127.0.0.1:{port}/history"),
            &[],
            1024,
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
}
