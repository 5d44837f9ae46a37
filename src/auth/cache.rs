//! The verified-credential cache: HTTP Basic on every call and repeated logins
//! with the same credentials skip argon2.
//!
//! Key: HMAC(per-process key, length-prefixed username ‖ secret), so the cache never holds a
//! secret. Value: the user, the user's credential epoch at verification time, and an expiry.
//! Successes only, bounded size, TTL. A hit is only honoured while the stored user's epoch is
//! unchanged, so a password change, token reset, disable, lock or login-range change kills every
//! cached verification at once. A verification with a named token also names the serial of
//! that token's value, and is honoured only while the user still holds it: resetting or
//! revoking one integration's token kills its entries and no other's.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ring::hmac;
use tokio::sync::OnceCell;

use crate::secret::Tag;

#[derive(Debug, Clone)]
pub struct Entry {
    /// Shared so that a hit costs a reference count, not a copy.
    pub user_id: Arc<str>,
    pub epoch: u64,
    /// Verified with the password alone (a trusted network): honoured only from one.
    pub password_only: bool,
    /// Verified with the superseded token of a grace window.
    pub superseded: bool,
    /// When the entry dies; set before insertion to end it before the TTL (0: at the TTL).
    pub expires: u64,
    /// Verified with a named token: its value's serial and its name. Honoured only while the
    /// user still holds that serial, so a reset or revocation of that token (which does not
    /// move the epoch) kills the entry and leaves the user's other tokens' entries alive.
    pub named: Option<(u64, Arc<str>)>,
}

pub struct CredentialCache<V: Clone> {
    map: DashMap<Tag, Entry>,
    key: hmac::Key,
    ttl: u64,
    max: usize,
    /// Verifications in flight: concurrent identical misses wait for the first one.
    inflight: DashMap<Tag, Arc<OnceCell<V>>>,
}

impl<V: Clone> CredentialCache<V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        let rng = ring::rand::SystemRandom::new();
        Self {
            map: DashMap::new(),
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                .expect("the OS random generator works"),
            ttl: ttl.as_secs().max(1),
            max,
            inflight: DashMap::new(),
        }
    }

    pub fn key(&self, canonical_username: &str, secret: &str) -> Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [canonical_username.as_bytes(), secret.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    pub fn get(&self, key: &Tag, now: u64) -> Option<Entry> {
        let e = self.map.get(key).map(|e| e.value().clone())?;
        if now >= e.expires {
            self.map.remove(key);
            return None;
        }
        Some(e)
    }

    pub fn insert(&self, key: Tag, mut entry: Entry, now: u64) {
        if self.max == 0 {
            return;
        }
        if self.map.len() >= self.max {
            self.map.retain(|_, e| now < e.expires);
            if self.map.len() >= self.max {
                return; // full of live entries: verify without caching rather than grow
            }
        }
        // An entry may carry its own earlier end (a superseded token's grace window).
        let ttl_end = now + self.ttl;
        entry.expires = if entry.expires > now {
            entry.expires.min(ttl_end)
        } else {
            ttl_end
        };
        self.map.insert(key, entry);
    }

    pub fn remove(&self, key: &Tag) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops expired entries.
    pub fn sweep(&self, now: u64) {
        self.map.retain(|_, e| now < e.expires);
    }

    /// Verifications in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Runs `verify` once for all concurrent callers with the same key. Cancellation-safe: if
    /// the caller running `verify` goes away, a waiting one takes over (`OnceCell`), and the
    /// first caller to leave, finished or not, retires the flight (later callers start a fresh
    /// one), so no entry outlives its callers.
    pub async fn single_flight<F, Fut>(&self, key: Tag, verify: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        if self.inflight.len() >= MAX_INFLIGHT {
            return verify().await;
        }
        let cell = self
            .inflight
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let _flight = Flight {
            map: &self.inflight,
            key,
            cell: cell.clone(),
        };
        cell.get_or_init(verify).await.clone()
    }
}

/// Verifications in flight at most; beyond, callers verify without sharing.
const MAX_INFLIGHT: usize = 100_000;

/// Retires a flight from the in-flight map when one of its callers leaves.
struct Flight<'a, V> {
    map: &'a DashMap<Tag, Arc<OnceCell<V>>>,
    key: Tag,
    cell: Arc<OnceCell<V>>,
}

impl<V> Drop for Flight<'_, V> {
    fn drop(&mut self) {
        self.map
            .remove_if(&self.key, |_, c| Arc::ptr_eq(c, &self.cell));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry() -> Entry {
        Entry {
            user_id: "005".into(),
            epoch: 1,
            password_only: false,
            superseded: false,
            expires: 0,
            named: None,
        }
    }

    #[test]
    fn keys_separate_users_and_secrets() {
        let c = CredentialCache::<()>::new(Duration::from_secs(60), 10);
        assert_ne!(c.key("ab", "c"), c.key("a", "bc"));
        assert_eq!(c.key("a", "b"), c.key("a", "b"));
    }

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = CredentialCache::<()>::new(Duration::from_secs(60), 2);
        c.insert([1; 32], entry(), 100);
        assert!(c.get(&[1; 32], 159).is_some());
        assert!(c.get(&[1; 32], 160).is_none());
        c.insert([1; 32], entry(), 100);
        c.insert([2; 32], entry(), 100);
        c.insert([3; 32], entry(), 100);
        assert_eq!(c.len(), 2);
        c.insert([3; 32], entry(), 200);
        assert_eq!(c.len(), 1, "expired entries make room");
    }

    #[tokio::test]
    async fn concurrent_identical_misses_share_one_verification() {
        let c = Arc::new(CredentialCache::<u32>::new(Duration::from_secs(60), 10));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.single_flight([7; 32], || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    42
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.inflight(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_flight_leaves_no_entry_behind() {
        let c = Arc::new(CredentialCache::<u32>::new(Duration::from_secs(60), 10));
        let c2 = c.clone();
        let t =
            tokio::spawn(
                async move { c2.single_flight([9; 32], std::future::pending::<u32>).await },
            );
        while c.inflight() == 0 {
            tokio::task::yield_now().await;
        }
        t.abort();
        let _ = t.await;
        assert_eq!(c.inflight(), 0);
    }
}
