//! Rate limits (governor) and the lockout policy.
//!
//! Keyed limiters have a bounded key count: beyond the bound, a coarse limiter shared by the
//! keys that found no room takes over for them (keys already held keep their own state), so a
//! flood of random usernames or addresses cannot grow memory without bound nor throttle the
//! users the limiter already knows; stale keys are pruned on a schedule (`housekeep`). Login
//! limits are checked before any password hashing.
//!
//! Failed logins are answered no sooner than `failure_delay` after they arrived (as Authelia
//! delays its failed first-factor answers): every kind of failure then takes the same time, so
//! timing tells an attacker nothing, and a connection that keeps guessing gets a few answers a
//! second instead of thousands, which leaves the CPU to legitimate traffic. The delay is a timer,
//! not a thread; at most `max_delayed_failures` wait at once, and beyond that bound failures are
//! answered at once (and counted) rather than queued without limit.
//!
//! Lockout (docs/salesforce-protocol.md §5): after `max_failures` counted failures within `window` the account is
//! locked for `period` (or until an admin unlocks). The same wrong secret sent again and again
//! (an integration with a stale token) counts once: recent wrong secrets are remembered per user
//! as keyed fingerprints, in memory only.

use std::cell::Cell;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use ring::hmac;

use crate::config::{LimitsConfig, LockoutConfig};
use crate::store::LockoutState;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A limiter key, noting whether the bounded store had no room for it.
pub struct Probe<K> {
    key: K,
    spilled: Cell<bool>,
}

impl<K: Clone> Clone for Probe<K> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            spilled: Cell::new(self.spilled.get()),
        }
    }
}

impl<K: Hash> Hash for Probe<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<K: PartialEq> PartialEq for Probe<K> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq> Eq for Probe<K> {}

/// governor's DashMap state store with a bound on its keys: once it holds `max` keys, a key it
/// does not hold yet is not added (it is judged as fresh here and marked `spilled`, and the
/// caller sends it to the shared limiter). Keys it holds keep their own state whatever the
/// count, so a flood of new names cannot move real users onto the shared limiter.
pub struct BoundedStore<K: Hash + Eq + Clone> {
    inner: DashMapStateStore<K>,
    max: usize,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = Probe<K>;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe<K>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.inner.len() >= self.max && !self.inner.contains_key(&probe.key) {
            probe.spilled.set(true);
            return f(None).map(|(t, _)| t);
        }
        self.inner.measure_and_replace(&probe.key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<Probe<K>> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.inner, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.inner);
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

type Keyed<K> = RateLimiter<
    Probe<K>,
    BoundedStore<K>,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    keyed: Keyed<K>,
    /// Shared by the keys that found no room once `max_keys` is reached.
    overflow: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `n` events per `period` per key, all of which may come at once (burst `n`).
    pub fn new(n: NonZeroU32, period: Duration, max_keys: usize) -> Self {
        let quota = Quota::with_period(period / n.get())
            .expect("non-zero period")
            .allow_burst(n);
        let clock = DefaultClock::default();
        Self {
            keyed: RateLimiter::new(
                quota,
                BoundedStore {
                    inner: DashMapStateStore::default(),
                    max: max_keys,
                },
                clock.clone(),
            ),
            overflow: RateLimiter::direct(
                quota.allow_burst(n.saturating_mul(NonZeroU32::new(16).expect("16"))),
            ),
            clock,
        }
    }

    /// `Err(wait)` when `key` is over its limit: the time until it may try again.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let probe = Probe {
            key: key.clone(),
            spilled: Cell::new(false),
        };
        let mut result = self
            .keyed
            .check_key(&probe)
            .map_err(|nu| nu.wait_time_from(self.clock.now()));
        if probe.spilled.get() {
            result = self
                .overflow
                .check()
                .map_err(|nu| nu.wait_time_from(self.clock.now()));
        }
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

/// The login limiters: per client address (IPv6 by /64), per username, and a global cap on
/// password verifications.
pub struct LoginLimits {
    per_ip: KeyedLimiter<IpAddr>,
    per_user: KeyedLimiter<String>,
    /// `login_per_user` per `login_per_user_period`, for the count shared by replicas.
    per_user_quota: (u64, Duration),
    argon2: DefaultDirectRateLimiter,
    clock: DefaultClock,
    failure_delay: Duration,
    max_delayed: usize,
    delayed: AtomicUsize,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Gives back a place among the delayed failures, also when the client goes away mid-delay.
struct DelayedPlace<'a>(&'a AtomicUsize);

impl Drop for DelayedPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoginLimits {
    pub fn new(cfg: &LimitsConfig, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        let per_second = cfg.argon2_per_second;
        Self {
            per_ip: KeyedLimiter::new(cfg.login_per_ip, cfg.login_per_ip_period, cfg.max_keys),
            per_user: KeyedLimiter::new(
                cfg.login_per_user,
                cfg.login_per_user_period,
                cfg.max_keys,
            ),
            per_user_quota: (
                u64::from(cfg.login_per_user.get()),
                cfg.login_per_user_period,
            ),
            argon2: RateLimiter::direct(Quota::per_second(per_second)),
            clock: DefaultClock::default(),
            failure_delay: cfg.failure_delay,
            max_delayed: cfg.max_delayed_failures,
            delayed: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Waits until `failure_delay` has passed since `started`, the arrival of a login that
    /// failed; returns at once when the delay is off, already over, or too many wait.
    pub async fn delay_failure(&self, started: Instant) {
        let deadline = started + self.failure_delay;
        if deadline <= Instant::now() {
            return;
        }
        if self.delayed.fetch_add(1, Ordering::AcqRel) >= self.max_delayed {
            self.delayed.fetch_sub(1, Ordering::AcqRel);
            self.metrics.failure_undelayed();
            return;
        }
        let _place = DelayedPlace(&self.delayed);
        tokio::time::sleep_until(deadline.into()).await;
    }

    /// How long after its arrival a failure is answered.
    pub fn failure_delay(&self) -> Duration {
        self.failure_delay
    }

    /// Failed logins waiting out their delay.
    pub fn delayed_failures(&self) -> usize {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Per address, then per canonical username.
    pub fn check(&self, ip: IpAddr, canonical_user: &str) -> Result<(), Duration> {
        self.per_ip.check(&ip_key(ip))?;
        self.per_user.check(&canonical_user.to_owned())
    }

    /// `login_per_user` logins per `login_per_user_period`, as a count kept in a shared store
    /// for all replicas (fixed windows of one period): `count` is the user's logins in the
    /// window starting at `window`, this one included. The per-replica limiter applies too.
    pub fn per_user_window(&self, now: u64) -> (u64, u64) {
        let period = self.per_user_quota.1.as_secs().max(1);
        (now - now % period, period)
    }

    /// Whether `count` logins in the current window exceed the limit; how long until it ends.
    pub fn over_shared_limit(&self, count: u64, now: u64) -> Option<Duration> {
        let (window, period) = self.per_user_window(now);
        (count > self.per_user_quota.0).then(|| Duration::from_secs(window + period - now))
    }

    /// Per client address only (self-service requests that failed verification).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.per_ip.check(&ip_key(ip))
    }

    /// The global cap on password verifications.
    pub fn check_argon2(&self) -> Result<(), Duration> {
        self.argon2.check().map_err(|nu| {
            nu.wait_time_from(self.clock.now())
                .max(Duration::from_secs(1))
        })
    }

    pub fn housekeep(&self) {
        self.per_ip.housekeep();
        self.per_user.housekeep();
    }

    /// Keys held by the per-address and per-user limiters.
    pub fn keys(&self) -> (usize, usize) {
        (self.per_ip.keys(), self.per_user.keys())
    }
}

/// The lockout rules, applied to a user's stored [`LockoutState`].
pub struct Lockout {
    cfg: std::sync::RwLock<LockoutConfig>,
    /// user id → fingerprints (and times) of recent wrong secrets.
    recent: DashMap<String, Vec<(u64, u64)>>,
    key: hmac::Key,
}

/// Wrong secrets remembered per user, and users remembered at most.
const RECENT_PER_USER: usize = 32;
const RECENT_USERS: usize = 100_000;

impl Lockout {
    pub fn new(cfg: &LockoutConfig) -> Self {
        let rng = ring::rand::SystemRandom::new();
        Self {
            cfg: std::sync::RwLock::new(cfg.clone()),
            recent: DashMap::new(),
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                .expect("the OS random generator works"),
        }
    }

    fn cfg(&self) -> LockoutConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a reloaded policy; stored lock states are kept.
    pub fn reload(&self, cfg: &LockoutConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg.clone();
    }

    pub fn enabled(&self) -> bool {
        self.cfg().max_failures > 0
    }

    /// Whether this wrong secret should count: false when the same secret already failed for
    /// this user within the window (a stale credential replayed).
    pub fn first_failure_of(&self, user_id: &str, secret: &str, now: u64) -> bool {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(user_id.len() as u64).to_be_bytes());
        ctx.update(user_id.as_bytes());
        ctx.update(secret.as_bytes());
        let tag = ctx.sign();
        let fp = u64::from_be_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"));
        let window = self.cfg().window.as_secs();
        if self.recent.len() >= RECENT_USERS {
            self.recent
                .retain(|_, v| v.iter().any(|(_, at)| now < at + window));
            if self.recent.len() >= RECENT_USERS {
                self.recent.clear();
            }
        }
        let mut seen = self.recent.entry(user_id.to_owned()).or_default();
        seen.retain(|(_, at)| now < at + window);
        if seen.iter().any(|(f, _)| *f == fp) {
            return false;
        }
        if seen.len() >= RECENT_PER_USER {
            seen.remove(0);
        }
        seen.push((fp, now));
        true
    }

    /// Counts one failure; returns true when it locked the account.
    pub fn register_failure(&self, s: &mut LockoutState, now: u64) -> bool {
        let cfg = self.cfg();
        if cfg.max_failures == 0 || s.is_locked(now) {
            return false;
        }
        if s.failures == 0 || now >= s.window_started_at + cfg.window.as_secs() {
            s.failures = 0;
            s.window_started_at = now;
        }
        s.failures += 1;
        if s.failures >= cfg.max_failures {
            s.locked_until = Some(match cfg.period {
                Some(p) => now + p.as_secs(),
                None => u64::MAX,
            });
            s.failures = 0;
            return true;
        }
        false
    }

    /// Forgets the remembered wrong secrets of a user (after a success or an unlock).
    pub fn forget(&self, user_id: &str) {
        self.recent.remove(user_id);
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
    fn keys_held_before_the_bound_keep_their_own_limit_during_a_flood() {
        let l = KeyedLimiter::new(NonZeroU32::new(3).unwrap(), Duration::from_secs(3600), 10);
        assert!(l.check(&"alice".to_owned()).is_ok());
        // A flood of new names fills the store and exhausts the shared limiter.
        for i in 0..1000 {
            let _ = l.check(&format!("flood-{i}"));
        }
        assert!(
            l.check(&"new-name".to_owned()).is_err(),
            "the shared limiter is spent"
        );
        // Alice still has her own two remaining attempts, then her own refusal.
        assert!(l.check(&"alice".to_owned()).is_ok());
        assert!(l.check(&"alice".to_owned()).is_ok());
        assert!(l.check(&"alice".to_owned()).is_err());
    }

    fn lockout(max: u32) -> Lockout {
        Lockout::new(&LockoutConfig {
            max_failures: max,
            window: Duration::from_secs(900),
            period: Some(Duration::from_secs(900)),
        })
    }

    #[test]
    fn the_same_wrong_secret_counts_once_and_different_ones_each_count() {
        let l = lockout(3);
        assert!(l.first_failure_of("u1", "stale", 100));
        assert!(!l.first_failure_of("u1", "stale", 200));
        assert!(l.first_failure_of("u1", "other", 200));
        assert!(l.first_failure_of("u2", "stale", 200), "per user");
        assert!(
            l.first_failure_of("u1", "stale", 100 + 901),
            "the window ends"
        );
    }

    #[test]
    fn failures_lock_after_the_maximum_and_the_lock_expires() {
        let l = lockout(3);
        let mut s = LockoutState::default();
        assert!(!l.register_failure(&mut s, 10));
        assert!(!l.register_failure(&mut s, 11));
        assert!(l.register_failure(&mut s, 12));
        assert!(s.is_locked(13));
        assert!(!s.is_locked(12 + 900));
        // Failures outside the window start a new count.
        let mut s = LockoutState::default();
        l.register_failure(&mut s, 10);
        l.register_failure(&mut s, 11);
        assert!(!l.register_failure(&mut s, 10 + 901));
        assert_eq!(s.failures, 1);
        // Forever means until an admin unlocks.
        let forever = Lockout::new(&LockoutConfig {
            max_failures: 1,
            window: Duration::from_secs(60),
            period: None,
        });
        let mut s = LockoutState::default();
        assert!(forever.register_failure(&mut s, 5));
        assert!(s.is_locked(u64::MAX - 1));
        assert!(
            !lockout(0).register_failure(&mut LockoutState::default(), 5),
            "0 turns it off"
        );
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
