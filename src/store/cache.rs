//! The decoded user records both backends keep in memory, and the observers of user changes.
//!
//! The hot paths (a cached Basic credential, every login) read a user on every request: from
//! here they cost a map probe, not a decode. Writers always overwrite their entry after their
//! write is committed; readers only fill an absent one, and take it out again when a write
//! happened meanwhile (their record may predate it, and a cache cleared when full, or a
//! delete, would otherwise let the old record back in). The cache empties when full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{User, UserChange, UserObserver};

/// Decoded users kept in memory at most.
const CAPACITY: usize = 20_000;

#[derive(Default)]
pub(super) struct UserCache {
    /// canonical username → record
    by_name: DashMap<String, Arc<User>>,
    /// user id → canonical username, for the users in `by_name`
    names: DashMap<String, String>,
    /// Counts user writes (and deletes), for readers racing a write.
    writes: AtomicU64,
    observers: std::sync::RwLock<Vec<UserObserver>>,
}

impl UserCache {
    pub(super) fn observe(&self, observer: UserObserver) {
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    pub(super) fn by_name(&self, canonical_username: &str) -> Option<Arc<User>> {
        self.by_name
            .get(canonical_username)
            .map(|u| u.value().clone())
    }

    pub(super) fn by_id(&self, id: &str) -> Option<Arc<User>> {
        let name = self.names.get(id).map(|n| n.value().clone())?;
        self.by_name(&name)
    }

    /// Taken before reading a record from the store, passed to [`Self::read`] after.
    pub(super) fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// A writer's record, after its write is committed: replaces the cached one, and the
    /// observers hear of it.
    pub(super) fn written(&self, user: Arc<User>) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.make_room();
        self.names.insert(user.id.clone(), user.username.clone());
        self.by_name.insert(user.username.clone(), user.clone());
        self.notify(UserChange::Written(&user));
    }

    /// A reader's record, read after `writes_before` was taken (see the module docs).
    pub(super) fn read(&self, user: Arc<User>, writes_before: u64) -> Arc<User> {
        self.make_room();
        self.names.insert(user.id.clone(), user.username.clone());
        let cached = self
            .by_name
            .entry(user.username.clone())
            .or_insert(user)
            .value()
            .clone();
        if self.writes.load(Ordering::SeqCst) != writes_before {
            self.by_name
                .remove_if(&cached.username, |_, c| Arc::ptr_eq(c, &cached));
        }
        cached
    }

    /// Takes a user out (deleted, or changed where this process cannot read it now).
    pub(super) fn forget(&self, id: &str, canonical_username: Option<&str>) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some((_, name)) = self.names.remove(id) {
            self.by_name.remove(&name);
        }
        if let Some(name) = canonical_username {
            self.by_name.remove(name);
        }
    }

    /// Empties the cache (the store may have changed unseen).
    pub(super) fn clear(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.by_name.clear();
        self.names.clear();
    }

    pub(super) fn notify(&self, change: UserChange<'_>) {
        for o in self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            o(change);
        }
    }

    fn make_room(&self) {
        if self.by_name.len() >= CAPACITY {
            self.by_name.clear();
            self.names.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> Arc<User> {
        Arc::new(User::new(
            id.into(),
            name.into(),
            "a@example.com".into(),
            "$argon2id$".into(),
            [1; 32],
            24,
            0,
        ))
    }

    // A reader takes the write counter, reads the record from the store, and only then fills
    // the cache; each case runs a writer between the read and the fill, in that order.

    #[test]
    fn a_read_that_raced_a_delete_does_not_put_the_deleted_user_back() {
        let cache = UserCache::default();
        let ann = user("1", "ann");
        cache.written(ann.clone());
        // The entry is gone (evicted, or the cache was cleared) and a reader reads Ann...
        cache.clear();
        let before = cache.writes();
        let stale = user("1", "ann");
        // ...while a delete commits and takes her out of the cache...
        cache.forget("1", Some("ann"));
        // ...then the reader fills the cache with the record it read before the delete.
        let got = cache.read(stale, before);
        assert_eq!(got.id, "1", "the reader still answers with what it read");
        assert!(
            cache.by_name("ann").is_none(),
            "the deleted user is back by name"
        );
        assert!(cache.by_id("1").is_none(), "the deleted user is back by id");
        // A later read, with no write racing it, caches again.
        let before = cache.writes();
        cache.read(user("2", "bob"), before);
        assert!(cache.by_name("bob").is_some());
    }

    #[test]
    fn a_read_that_raced_an_update_does_not_replace_the_newer_record() {
        let cache = UserCache::default();
        let before = cache.writes();
        let mut stale = User::clone(&user("1", "ann"));
        stale.disabled = false;
        // A writer disables Ann and caches its record; then the reader's stale one arrives:
        // it finds the newer record, answers with it, and leaves the cache no older.
        let mut disabled = User::clone(&user("1", "ann"));
        disabled.disabled = true;
        cache.written(Arc::new(disabled));
        let got = cache.read(Arc::new(stale), before);
        assert!(got.disabled, "the reader answers with the newer record");
        assert!(cache.by_name("ann").is_none_or(|u| u.disabled));
        // The same with the writer's record gone from the cache (emptied when full): the
        // stale record must not stay.
        let before = cache.writes();
        cache.clear();
        cache.read(user("1", "ann"), before);
        assert!(cache.by_name("ann").is_none(), "the stale record stayed");
    }
}
