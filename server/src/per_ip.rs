//! Live connections per client address (`--max-connections-per-ip`), and
//! which address a request comes from (`--trusted-proxies`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;

/// Live connections per client address, capped.
#[derive(Debug)]
pub struct PerIp {
    /// 0: no cap (nothing is counted).
    cap: usize,
    live: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; the count goes back down when it is dropped,
/// however the connection ends.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut live = self.table.lock();
        if let Some(n) = live.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.ip);
            }
        }
    }
}

impl PerIp {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The cap (0: none).
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot for `ip`: `Err(())` when it already holds `cap`.
    /// `Ok(None)` when nothing is counted (no cap).
    #[allow(clippy::result_unit_err)]
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
        if self.cap == 0 {
            return Ok(None);
        }
        let mut live = self.lock();
        let n = live.entry(ip).or_insert(0);
        if *n >= self.cap {
            return Err(());
        }
        *n += 1;
        Ok(Some(IpSlot {
            table: self.clone(),
            ip,
        }))
    }

    /// Live connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or(0)
    }
}

/// The client address of a request from `peer`: the peer itself, or, when
/// the peer is a trusted proxy, the last address of the last
/// `X-Forwarded-For` header (the one that proxy appended). `None` for a
/// trusted proxy's request without a usable header: the proxy is not one
/// client, so such connections are not counted.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer.ip().to_canonical();
    if !trusted.iter().any(|t| t.to_canonical() == peer) {
        return Some(peer);
    }
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let last = last.to_str().ok()?.rsplit(',').next()?.trim();
    parse_addr(last).map(|ip| ip.to_canonical())
}

/// `1.2.3.4`, `::1`, `[::1]`, `1.2.3.4:5678` or `[::1]:5678`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        let trusted = [ip("127.0.0.1"), ip("::1")];
        let forged = xff(&["203.0.113.7"]);
        assert_eq!(
            client_ip(peer("198.51.100.2"), &forged, &trusted),
            Some(ip("198.51.100.2")),
            "an untrusted peer cannot pick its address"
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), &forged, &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_ip(peer("::ffff:127.0.0.1"), &forged, &trusted),
            Some(ip("203.0.113.7")),
            "an IPv4-mapped peer is the IPv4 address"
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), &HeaderMap::new(), &trusted),
            None,
            "a proxy without X-Forwarded-For is not one client"
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), &xff(&["garbage"]), &trusted),
            None
        );
    }

    #[test]
    fn the_last_forwarded_address_counts() {
        let trusted = [ip("127.0.0.1")];
        let h = xff(&["1.1.1.1, 2.2.2.2", "10.0.0.1 , 203.0.113.9"]);
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            Some(ip("203.0.113.9"))
        );
        for (v, want) in [
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("192.0.2.5:1234", "192.0.2.5"),
            ("2001:db8::2", "2001:db8::2"),
        ] {
            assert_eq!(
                client_ip(peer("127.0.0.1"), &xff(&[v]), &trusted),
                Some(ip(want)),
                "{v}"
            );
        }
    }

    #[test]
    fn slots_are_capped_and_freed_on_drop() {
        let t = PerIp::new(2);
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let s1 = t.acquire(a).unwrap();
        let s2 = t.acquire(a).unwrap();
        assert!(t.acquire(a).is_err(), "the third is over the cap");
        assert!(t.acquire(b).unwrap().is_some(), "another address is not");
        drop(s1);
        let s3 = t.acquire(a).unwrap();
        assert_eq!(t.count(a), 2);
        drop((s2, s3));
        assert_eq!(t.count(a), 0);
        assert!(t.lock().is_empty(), "no entry is left behind");
    }

    #[test]
    fn zero_counts_nothing() {
        let t = PerIp::new(0);
        for _ in 0..10 {
            assert!(t.acquire(ip("192.0.2.1")).unwrap().is_none());
        }
    }
}
