//! Rate limits (governor): keyed limiters with a bounded key count. Beyond the bound, a coarse
//! limiter shared by all new keys takes over, so a flood of random keys cannot grow memory
//! without bound; stale keys are pruned on a schedule (`housekeep`).

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    keyed: DefaultKeyedRateLimiter<K>,
    /// Shared by every key once `max_keys` is reached.
    overflow: DefaultDirectRateLimiter,
    max_keys: usize,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `n` events per `period` per key, all of which may come at once (burst `n`).
    pub fn new(n: NonZeroU32, period: Duration, max_keys: usize) -> Self {
        let quota = Quota::with_period(period / n.get())
            .expect("non-zero period")
            .allow_burst(n);
        Self {
            keyed: RateLimiter::keyed(quota),
            overflow: RateLimiter::direct(
                quota.allow_burst(n.saturating_mul(NonZeroU32::new(16).expect("16"))),
            ),
            max_keys,
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `key` is over its limit: the time until it may try again.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let result = if self.keyed.len() >= self.max_keys {
            self.overflow
                .check()
                .map_err(|nu| nu.wait_time_from(self.clock.now()))
        } else {
            self.keyed
                .check_key(key)
                .map_err(|nu| nu.wait_time_from(self.clock.now()))
        };
        // Retry-After has whole-second resolution; never advise 0.
        result.map_err(|d| d.max(Duration::from_secs(1)))
    }

    /// Drops keys whose state is back to fresh and returns memory.
    pub fn housekeep(&self) {
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }

    pub fn keys(&self) -> usize {
        self.keyed.len()
    }
}

/// The limiter key of a client address: IPv6 clients are keyed by their /64, since one host
/// usually holds a whole /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Seconds for a `Retry-After` header.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_refuses_with_a_wait() {
        let l = KeyedLimiter::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(3600), 100);
        for _ in 0..5 {
            assert!(l.check(&"alice").is_ok());
        }
        let wait = l.check(&"alice").unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(720),
            "{wait:?}"
        );
        assert!(l.check(&"bob").is_ok());
    }

    #[test]
    fn keys_beyond_the_bound_share_the_coarse_limiter() {
        let l = KeyedLimiter::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(3600), 10);
        for i in 0..10 {
            assert!(l.check(&i).is_ok());
        }
        assert_eq!(l.keys(), 10);
        let mut refused = 0;
        for i in 10..100 {
            refused += usize::from(l.check(&i).is_err());
        }
        assert_eq!(l.keys(), 10, "no new keys past the bound");
        assert!(refused > 0);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
