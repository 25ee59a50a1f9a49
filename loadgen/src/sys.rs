//! What the operating system allows: the file-descriptor limit (raised to
//! the hard limit), open descriptors, ephemeral ports per source address,
//! and sockets bound to a loopback source address without reserving a port.
//!
//! The point is to warn *before* a run hits a limit, with the numbers and
//! the fix, instead of failing with a bare `EMFILE` or `EADDRNOTAVAIL`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};

/// File descriptors a process keeps for itself (stdio, epoll, logs, the
/// runtime, pipes to workers) and never gives to sockets.
pub const FD_RESERVE: usize = 200;

/// The soft and hard `RLIMIT_NOFILE` after trying to raise soft to hard.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

impl FdLimit {
    /// Sockets one process may hold.
    pub fn socket_budget(&self) -> usize {
        (self.soft as usize).saturating_sub(FD_RESERVE).max(1)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (which an unprivileged
/// process cannot raise further) and return both.
pub fn raise_fd_limit() -> FdLimit {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((1024, 1024));
    if soft < hard && rlimit::setrlimit(Resource::NOFILE, hard, hard).is_ok() {
        return FdLimit { soft: hard, hard };
    }
    FdLimit { soft, hard }
}

/// Descriptors open in this process right now (Linux: `/proc/self/fd`).
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Parse `127.0.0.2-127.0.0.20`, `127.0.0.2,127.0.0.3` or a mix. Only
/// loopback addresses are accepted: spreading source addresses is a
/// loopback trick (every 127/8 address is local).
pub fn parse_source_ips(s: &str) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: Ipv4Addr = a
            .parse()
            .with_context(|| format!("--source-ips: bad address {a:?}"))?;
        let b: Ipv4Addr = b
            .parse()
            .with_context(|| format!("--source-ips: bad address {b:?}"))?;
        let (x, y) = (u32::from(a), u32::from(b));
        if y < x {
            bail!("--source-ips: range {part} runs backwards");
        }
        if y - x > 65_535 {
            bail!("--source-ips: range {part} is too large");
        }
        for ip in x..=y {
            let ip = Ipv4Addr::from(ip);
            if !ip.is_loopback() {
                bail!("--source-ips: {ip} is not a loopback address (127.0.0.0/8)");
            }
            out.push(ip);
        }
    }
    if out.is_empty() {
        bail!("--source-ips: no addresses in {s:?}");
    }
    Ok(out)
}

/// Ports one source address can use towards one destination, with some
/// headroom for TIME_WAIT and other programs.
pub fn usable_ports_per_source() -> usize {
    let (lo, hi) = ephemeral_ports();
    (usize::from(hi.saturating_sub(lo)) + 1) * 9 / 10
}

/// Source addresses to use automatically when none were given: none (let
/// the kernel pick) while one address stays under a quarter of its ports,
/// else enough `127.0.0.2..` addresses to keep each under a quarter. The
/// kernel's search for a free port at `connect` slows down as the range
/// fills (a 100k-socket ramp slowed to a few hundred connections per
/// second at 60% occupancy), so this spreads long before ports run out.
pub fn auto_source_ips(sockets_per_dest: usize, dest_is_loopback: bool) -> Vec<Ipv4Addr> {
    let per = usable_ports_per_source() / 4;
    if !dest_is_loopback || sockets_per_dest <= per {
        return Vec::new();
    }
    let n = sockets_per_dest.div_ceil(per).min(250);
    (0..n as u32)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect()
}

/// Warnings about limits this run would hit, each with the numbers and a
/// fix. `sockets` is how many this process will hold, `per_dest` how many
/// go to the busiest single destination address.
pub fn capacity_warnings(
    sockets: usize,
    per_dest: usize,
    sources: usize,
    fd: FdLimit,
    workers: usize,
) -> Vec<String> {
    let mut w = Vec::new();
    let budget = fd.socket_budget();
    if sockets > budget {
        w.push(format!(
            "this process would hold {sockets} sockets but its file limit is {} (hard {}), \
             {budget} usable: connections past that will fail with 'too many open files'. \
             Use --workers {} (each worker process gets its own limit)",
            fd.soft,
            fd.hard,
            sockets.div_ceil(budget) * workers.max(1)
        ));
    }
    let ports = usable_ports_per_source() * sources.max(1);
    if per_dest > ports {
        let (lo, hi) = ephemeral_ports();
        w.push(format!(
            "{per_dest} connections to one address need more ephemeral ports than {} source \
             address(es) have ({ports} usable from the range {lo}-{hi}): connections past that \
             will fail with 'address not available'. Use --source-ips 127.0.0.2-127.0.0.{}",
            sources.max(1),
            (per_dest.div_ceil(usable_ports_per_source()) + 2).min(254)
        ));
    }
    w
}

/// A TCP socket bound to `source` with `IP_BIND_ADDRESS_NO_PORT`, so the
/// port is chosen at `connect` time per 4-tuple: each source address then
/// gets its own ~28k ports per destination instead of sharing one pool.
pub fn bound_socket(
    source: Option<Ipv4Addr>,
    dest: &SocketAddr,
) -> std::io::Result<tokio::net::TcpSocket> {
    let sock = match dest {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_nodelay(true)?;
    if let (Some(src), SocketAddr::V4(_)) = (source, dest) {
        set_bind_address_no_port(&sock)?;
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    }
    Ok(sock)
}

/// Set `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+); elsewhere a no-op, and the
/// bind then reserves a port per socket as usual.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_bind_address_no_port(sock: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: `sock` owns a valid, open socket descriptor for the duration
    // of the call; the option value points to a live `c_int` and the length
    // passed is exactly its size. setsockopt does not retain the pointer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_bind_address_no_port(_sock: &tokio::net::TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// Resident set size of this process in bytes (Linux).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// CPU time this process has used, in microseconds: `(user, system)`.
/// The split matters: on loopback, much of a client's system time is the
/// kernel's TCP work (including the peer's ACK processing, which runs in
/// the sender's softirq), which any client pays, whatever its language.
pub fn cpu_time_us() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 of the whole line.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick_us = 1_000_000 / clock_ticks();
    Some((
        f.get(11)?.parse::<u64>().ok()? * tick_us,
        f.get(12)?.parse::<u64>().ok()? * tick_us,
    ))
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux in practice.
fn clock_ticks() -> u64 {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], Ipv4Addr::new(127, 0, 1, 1));
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("127.0.0.5-127.0.0.2").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn warnings_name_the_fix() {
        let fd = FdLimit {
            soft: 20_000,
            hard: 20_000,
        };
        assert!(capacity_warnings(1000, 1000, 1, fd, 1).is_empty());
        let w = capacity_warnings(50_000, 50_000, 1, fd, 1);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("--workers 3"), "{}", w[0]);
        assert!(w[1].contains("--source-ips"), "{}", w[1]);
    }

    #[test]
    fn auto_sources_only_when_needed() {
        assert!(auto_source_ips(1000, true).is_empty());
        assert!(auto_source_ips(100_000, false).is_empty());
        let v = auto_source_ips(100_000, true);
        assert!(v.len() * usable_ports_per_source() >= 100_000);
        assert!(v.iter().all(|ip| ip.is_loopback()));
    }

    #[test]
    fn fd_limit_is_raised_to_hard() {
        let l = raise_fd_limit();
        assert_eq!(l.soft, l.hard);
        assert!(open_fds().unwrap() > 2);
    }

    #[tokio::test]
    async fn binds_many_sources_without_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dest = listener.local_addr().unwrap();
        for last in [2u8, 3] {
            let s = bound_socket(Some(Ipv4Addr::new(127, 0, 0, last)), &dest).unwrap();
            let stream = s.connect(dest).await.unwrap();
            assert_eq!(
                stream.local_addr().unwrap().ip(),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
            );
        }
    }
}
