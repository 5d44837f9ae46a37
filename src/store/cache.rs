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
