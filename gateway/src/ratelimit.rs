//! New sessions per client address: a token bucket per address (an IPv6 client by its /64,
//! which one subscriber usually holds whole), so one client cannot mint sessions (and make
//! the app create state) as fast as it can send. Requests that carry a session cookie are
//! never limited: honest shoppers keep going while a cookieless flood is refused with 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Client addresses tracked at most; past that, buckets that refilled are dropped and, if the
/// table is still full (a flood from that many addresses), new addresses are let through
/// untracked rather than refused (the limit protects, it must not lock honest clients out).
const MAX_CLIENTS: usize = 65_536;

/// The key a client is limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    ClientKey::V6Prefix(prefix)
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The limit on new sessions per client address.
pub struct NewSessionLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl NewSessionLimit {
    /// `per_second` new sessions per address on average, `burst` at once; `None` when
    /// `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<NewSessionLimit> {
        (per_second > 0).then(|| NewSessionLimit {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `client` may start another session at `now`.
    pub fn admit(&self, client: IpAddr, now: Instant) -> bool {
        let key = ClientKey::from(client);
        let mut buckets = self.buckets.lock().expect("rate buckets poisoned");
        if !buckets.contains_key(&key) && buckets.len() >= MAX_CLIENTS {
            let refill = std::time::Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.duration_since(b.last) < refill);
            if buckets.len() >= MAX_CLIENTS {
                return true;
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let limit = NewSessionLimit::new(10, 20).unwrap();
        let t0 = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let admitted = (0..100).filter(|_| limit.admit(a, t0)).count();
        assert_eq!(admitted, 20, "the burst");
        assert!(limit.admit(b, t0), "another address has its own bucket");
        assert!(!limit.admit(a, t0 + Duration::from_millis(50)));
        assert!(
            limit.admit(a, t0 + Duration::from_millis(100)),
            "10/s refills one in 100 ms"
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| limit.admit(a, later)).count(), 20);
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let limit = NewSessionLimit::new(1, 2).unwrap();
        let t0 = Instant::now();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        assert!(limit.admit(host(1), t0));
        assert!(limit.admit(host(2), t0));
        assert!(
            !limit.admit(host(3), t0),
            "rotating the interface id does not help"
        );
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(limit.admit(other, t0));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        assert!(limit.admit(mapped, t0));
        assert!(limit.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), t0));
        assert!(
            !limit.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), t0),
            "a mapped address is its IPv4 client"
        );
    }

    #[test]
    fn zero_means_no_limit_and_the_table_is_bounded() {
        assert!(NewSessionLimit::new(0, 10).is_none());
        let limit = NewSessionLimit::new(1, 1).unwrap();
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            limit.admit(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert!(limit.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
