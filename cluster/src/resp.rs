//! A tiny blocking RESP2 client for the launcher's probes and faults
//! (`INFO`, `ROLE`, `SENTINEL ...`, `DEBUG SLEEP`): one connection per
//! command, every read bounded by a timeout. Not for the servers' traffic.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`, kept as a value: callers decide whether it is a failure.
    Error(String),
    /// `:1`
    Int(i64),
    /// `$n`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*n`; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a simple or bulk string (lossy UTF-8), or an integer.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The elements of an array (empty for a null array or a non-array).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }

    /// A flat `key, value, key, value` array (what `SENTINEL master`,
    /// `SENTINEL replicas` entries and `SENTINEL sentinels` entries are) as a
    /// map.
    pub fn pairs(&self) -> HashMap<String, String> {
        self.items()
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.text()?, v.text().unwrap_or_default())),
                _ => None,
            })
            .collect()
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let s = TcpStream::connect_timeout(&sa, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Send one command to `addr` and read its reply, each step bounded by
/// `timeout`. An error reply is returned as [`Reply::Error`].
pub fn command(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&encode(args))?;
    let mut r = BufReader::new(s);
    read_reply(&mut r).with_context(|| format!("{} on {addr}", args.join(" ")))
}

/// Send several commands on one connection and read their replies, in
/// order: for commands that depend on the connection (`SET` then `WAIT`).
pub fn pipeline(addr: &str, cmds: &[&[&str]], timeout: Duration) -> Result<Vec<Reply>> {
    let mut s = connect(addr, timeout)?;
    for args in cmds {
        s.write_all(&encode(args))?;
    }
    let mut r = BufReader::new(s);
    cmds.iter()
        .map(|args| read_reply(&mut r).with_context(|| format!("{} on {addr}", args.join(" "))))
        .collect()
}

/// Like [`command`], but an error reply is an `Err`.
pub fn command_ok(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply> {
    match command(addr, args, timeout)? {
        Reply::Error(e) => bail!("{} on {addr}: {e}", args.join(" ")),
        r => Ok(r),
    }
}

/// Send one command and close without reading the reply: for commands that
/// block the server (`DEBUG SLEEP`). Redis reads the request before it
/// notices the close, so the command still runs.
pub fn send_only(addr: &str, args: &[&str], timeout: Duration) -> Result<()> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&encode(args))?;
    s.flush()?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

fn read_line(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_reply(r: &mut impl BufRead) -> Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().context("integer reply")?),
        "$" => {
            let n: i64 = rest.parse().context("bulk length")?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().context("array length")?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let items = (0..n).map(|_| read_reply(r)).collect::<Result<_>>()?;
                Reply::Array(Some(items))
            }
        }
        _ => bail!("unexpected RESP line {line:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let raw = b"*3\r\n$6\r\nmaster\r\n:42\r\n*2\r\n$2\r\nip\r\n$-1\r\n";
        let reply = read_reply(&mut &raw[..]).unwrap();
        assert_eq!(reply.items()[0].text().as_deref(), Some("master"));
        assert_eq!(reply.items()[1], Reply::Int(42));
        assert_eq!(
            reply.items()[2].pairs().get("ip").map(String::as_str),
            Some("")
        );
        assert_eq!(
            encode(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
