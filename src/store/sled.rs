//! The embedded sled implementation of [`Store`].
//!
//! sled takes an exclusive lock on its directory, so only one process can open a data
//! directory; the admin CLI talks to a running server over its socket instead (see `admin`).
//! User records are keyed by canonical username, so the login path costs one tree lookup
//! whether or not the user exists (the id index is only for the rare lookups by id).
//! Single-record updates use compare-and-swap; the record and its id index are written in one
//! transaction.
//!
//! Longer than most modules because it holds the whole `Store` implementation, one short
//! method per trait method over its trees, like `postgres`: splitting the one `impl` across
//! files would only scatter it. The audit trail's chained append is `audit_trail`.

use std::path::Path;
use std::sync::Arc;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::cache::UserCache;
use super::trail as audit;
use super::{
    ExportSink, HistoryFilter, HistoryRow, RefreshFamily, SessionRecord, Store, StoreError, User,
    UserChange, UserObserver,
};
use crate::secret::Tag;

pub struct SledStore {
    db: sled::Db,
    /// canonical username → user record
    users: sled::Tree,
    /// user id → canonical username
    user_ids: sled::Tree,
    sessions: sled::Tree,
    meta: sled::Tree,
    settings: sled::Tree,
    outbox: sled::Tree,
    /// (time ms, sequence) big-endian → history row: iterates in time order.
    history: sled::Tree,
    /// Sequence number big-endian → audit record (`audit`), in chain order.
    audit: sled::Tree,
    /// Held while an audit record is chained and written: one writer at a time.
    audit_append: std::sync::Mutex<()>,
    /// Held by every write that takes an enabled administrator away (demotion, disable,
    /// delete) from counting the others to writing, so the last one is never taken.
    admins: std::sync::Mutex<()>,
    /// (next rotation, Unix seconds big-endian) ‖ user id → empty: the scheduled rotations in
    /// time order, so finding the due ones reads a few keys instead of every user record.
    /// Written in the same transaction as the user record; derived, so not exported.
    rotations: sled::Tree,
    /// Refresh token families: family key → record (`RefreshFamily`). Not exported.
    refresh: sled::Tree,
    /// user id ‖ 0 ‖ family key → empty: each user's families, for the per-user bound.
    refresh_users: sled::Tree,
    /// Writers hold it shared; a backup holds it exclusively, so its snapshot is consistent
    /// across trees.
    gate: std::sync::RwLock<()>,
    /// Decoded user records (write-through: this process is the store's only writer, by
    /// sled's directory lock), and the observers of user changes.
    cache: UserCache,
    /// Every canonical username, so a login for a name that does not exist is answered from
    /// memory, as fast as one that does (no timing difference to enumerate users by).
    names: dashmap::DashSet<String>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// How long [`SledStore::open`] waits for a lock this process is still releasing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        // A store this process closed a moment ago may still be letting go of its lock (sled
        // finishes background writes after the last handle is dropped): a restart in the same
        // process waits for it, briefly. Another process holding it is reported after that.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_capacity_bytes)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(ref ioe)) if ioe.to_string().contains("lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: dir.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(other) => return Err(io(other)),
            }
        };
        let store = Self {
            users: db.open_tree("users").map_err(io)?,
            user_ids: db.open_tree("user_ids").map_err(io)?,
            sessions: db.open_tree("sessions").map_err(io)?,
            meta: db.open_tree("meta").map_err(io)?,
            settings: db.open_tree("settings").map_err(io)?,
            outbox: db.open_tree("outbox").map_err(io)?,
            history: db.open_tree("history").map_err(io)?,
            audit: db.open_tree("audit").map_err(io)?,
            audit_append: std::sync::Mutex::new(()),
            admins: std::sync::Mutex::new(()),
            rotations: db.open_tree("rotations").map_err(io)?,
            refresh: db.open_tree("refresh").map_err(io)?,
            refresh_users: db.open_tree("refresh_users").map_err(io)?,
            gate: std::sync::RwLock::new(()),
            cache: UserCache::default(),
            names: dashmap::DashSet::new(),
            db,
        };
        // The id index holds every username and is small: reading it does not pull every
        // user record into sled's cache, as iterating `users` would.
        for item in store.user_ids.iter().values() {
            store
                .names
                .insert(String::from_utf8_lossy(&item.map_err(io)?).into_owned());
        }
        store.build_rotation_index()?;
        Ok(store)
    }

    /// Whether an enabled administrator other than `id` exists (read under `admins`).
    fn other_active_admin(&self, id: &str) -> Result<bool, StoreError> {
        for item in self.users.iter().values() {
            let user = User::decode(&item.map_err(io)?)?;
            if user.id != id && user.is_active_admin() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Builds the rotation index once, for a store written before it existed.
    fn build_rotation_index(&self) -> Result<(), StoreError> {
        const DONE: &str = "rotation_index_v1";
        if self.meta.contains_key(DONE).map_err(io)? {
            return Ok(());
        }
        for item in self.users.iter() {
            let (_, v) = item.map_err(io)?;
            let user = User::decode(&v)?;
            if let Some(key) = rotation_key(&user) {
                self.rotations.insert(key, &[]).map_err(io)?;
            }
        }
        self.meta.insert(DONE, &[]).map_err(io)?;
        Ok(())
    }
}

/// The user's entry in the rotation index, if a rotation is scheduled.
fn rotation_key(user: &User) -> Option<Vec<u8>> {
    let at = user.next_rotation_at?;
    let mut key = at.to_be_bytes().to_vec();
    key.extend_from_slice(user.id.as_bytes());
    Some(key)
}

impl SledStore {
    fn write_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree(&self, name: &str) -> Option<&sled::Tree> {
        Some(match name {
            "users" => &self.users,
            "user_ids" => &self.user_ids,
            "sessions" => &self.sessions,
            "meta" => &self.meta,
            "settings" => &self.settings,
            "outbox" => &self.outbox,
            "history" => &self.history,
            "audit" => &self.audit,
            _ => return None,
        })
    }
}

const TREES: [&str; 8] = [
    "users", "user_ids", "sessions", "meta", "settings", "outbox", "history", "audit",
];

impl Store for SledStore {
    fn observe_users(&self, observer: UserObserver) {
        self.cache.observe(observer);
    }

    fn user_by_name(&self, canonical_username: &str) -> Result<Option<Arc<User>>, StoreError> {
        if let Some(u) = self.cache.by_name(canonical_username) {
            return Ok(Some(u));
        }
        if !self.names.contains(canonical_username) {
            return Ok(None);
        }
        let writes_before = self.cache.writes();
        let Some(bytes) = self.users.get(canonical_username).map_err(io)? else {
            return Ok(None);
        };
        let user = User::decode(&bytes)?;
        Ok(Some(self.cache.read(Arc::new(user), writes_before)))
    }

    fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        match self.user_ids.get(id).map_err(io)? {
            Some(name) => self.user_by_name(std::str::from_utf8(&name).unwrap_or_default()),
            None => Ok(None),
        }
    }

    fn next_user_number(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id().map_err(io)? + 1)
    }

    fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        let record = encode(user);
        let rotation = rotation_key(user);
        (&self.users, &self.user_ids, &self.rotations)
            .transaction(|(users, ids, rotations)| {
                if users.get(user.username.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                users.insert(user.username.as_bytes(), record.as_slice())?;
                ids.insert(user.id.as_bytes(), user.username.as_bytes())?;
                if let Some(key) = &rotation {
                    rotations.insert(key.as_slice(), &[])?;
                }
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => StoreError::UserExists(user.username.clone()),
                TransactionError::Storage(e) => io(e),
            })?;
        self.names.insert(user.username.clone());
        self.cache.written(Arc::new(user.clone()));
        Ok(())
    }

    fn update_user(&self, id: &str, change: &mut dyn FnMut(&mut User)) -> Result<User, StoreError> {
        let _gate = self.write_gate();
        let name = self
            .user_ids
            .get(id)
            .map_err(io)?
            .ok_or_else(|| StoreError::NoSuchUser(id.to_owned()))?;
        let mut admins = None;
        loop {
            let old = self
                .users
                .get(&name)
                .map_err(io)?
                .ok_or_else(|| StoreError::NoSuchUser(id.to_owned()))?;
            let mut user = User::decode(&old)?;
            let was = rotation_key(&user);
            let was_admin = user.is_active_admin();
            change(&mut user);
            if was_admin && !user.is_active_admin() {
                // Taking an admin away: under the lock, read again, then count the others.
                if admins.is_none() {
                    admins = Some(self.admins.lock().unwrap_or_else(|p| p.into_inner()));
                    continue;
                }
                if !self.other_active_admin(id)? {
                    return Err(StoreError::LastAdmin);
                }
            }
            // The username is the key: a change that renamed the user would orphan the index.
            debug_assert_eq!(user.username.as_bytes(), &name[..]);
            let new = encode(&user);
            let now = rotation_key(&user);
            let swapped = if was == now {
                // The common case (lockout counts, tokens): one compare-and-swap.
                self.users
                    .compare_and_swap(&name, Some(&old), Some(new))
                    .map_err(io)?
                    .is_ok()
            } else {
                // The schedule moved: the record and its index entry change together.
                (&self.users, &self.rotations)
                    .transaction(|(users, rotations)| {
                        if users.get(&name)?.as_deref() != Some(&old[..]) {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        users.insert(&name, new.as_slice())?;
                        if let Some(k) = &was {
                            rotations.remove(k.as_slice())?;
                        }
                        if let Some(k) = &now {
                            rotations.insert(k.as_slice(), &[])?;
                        }
                        Ok(())
                    })
                    .map_or_else(
                        |e| match e {
                            TransactionError::Abort(()) => Ok(false),
                            TransactionError::Storage(e) => Err(io(e)),
                        },
                        |()| Ok(true),
                    )?
            };
            if swapped {
                self.cache.written(Arc::new(user.clone()));
                return Ok(user);
            }
            // Raced with another writer: re-read and re-apply.
        }
    }

    fn due_rotations(&self, now: u64) -> Result<Vec<String>, StoreError> {
        let mut due = Vec::new();
        // Keys start with the due time; every key of a time ≤ now sorts before (now + 1).
        for item in self.rotations.range(..(now + 1).to_be_bytes().to_vec()) {
            let (k, _) = item.map_err(io)?;
            // Every key is 8 bytes of time then the id; anything shorter is not ours.
            if let Some(id) = k.get(8..) {
                due.push(String::from_utf8_lossy(id).into_owned());
            }
        }
        Ok(due)
    }

    fn for_each_user(&self, visit: &mut dyn FnMut(User)) -> Result<(), StoreError> {
        // Keys are canonical usernames, so sled's key order is username order.
        for item in self.users.iter() {
            let (_, v) = item.map_err(io)?;
            visit(User::decode(&v)?);
        }
        Ok(())
    }

    fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let gate = self.write_gate();
        let Some(name) = self.user_ids.get(id).map_err(io)? else {
            return Ok(false);
        };
        // Every write that takes an admin away holds the lock; a user made admin meanwhile
        // is caught inside the transaction (the record is read there again).
        let _admins = self.admins.lock().unwrap_or_else(|p| p.into_inner());
        let others = match self.users.get(&name).map_err(io)? {
            Some(b) if User::decode(&b)?.is_active_admin() => self.other_active_admin(id)?,
            _ => true,
        };
        (&self.users, &self.user_ids, &self.rotations)
            .transaction(|(users, ids, rotations)| {
                if let Some(old) = users.remove(&name)? {
                    let user = serde_json::from_slice::<User>(&old).ok();
                    if !others && user.as_ref().is_some_and(User::is_active_admin) {
                        return Err(ConflictableTransactionError::Abort(StoreError::LastAdmin));
                    }
                    if let Some(key) = user.as_ref().and_then(rotation_key) {
                        rotations.remove(key)?;
                    }
                }
                ids.remove(id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => io(e),
            })?;
        let canonical = std::str::from_utf8(&name).unwrap_or_default();
        // The name first, then the writes counter, then the cache: a reader that filled the
        // cache from a record read before the delete sees one of the first two and takes it
        // out, or filled it before the third and is taken out by it.
        self.names.remove(canonical);
        self.cache.forget(id, Some(canonical));
        self.cache.notify(UserChange::Deleted { id });
        // The read gate is not re-entrant under a waiting backup: release it first.
        drop(gate);
        self.delete_user_sessions(id)?;
        Ok(true)
    }

    fn put_session(&self, key: &Tag, session: &SessionRecord) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        self.sessions.insert(key, encode(session)).map_err(io)?;
        Ok(())
    }

    /// One compare-and-swap per session (sled's `update_and_fetch`), so two callers racing
    /// cannot move a timer back by the gap between a read and a write, as the trait's
    /// read-then-write default could. (A single node's session table writes its timers back
    /// with `put_session`, holding the session's entry; this keeps the trait's promise for any
    /// other caller, and the store contract checks it on both backends.)
    fn touch_sessions(&self, touched: &[(Tag, SessionRecord)]) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        for (key, rec) in touched {
            let newer = encode(rec);
            self.sessions
                .update_and_fetch(key, |stored| {
                    let stored = stored?; // ended meanwhile: not written again
                    match decode::<SessionRecord>("session", stored) {
                        Ok(s) if s.last_seen < rec.last_seen => Some(newer.clone()),
                        _ => Some(stored.to_vec()),
                    }
                })
                .map_err(io)?;
        }
        Ok(())
    }

    fn session(&self, key: &Tag) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(key)
            .map_err(io)?
            .map(|v| decode("session", &v))
            .transpose()
    }

    fn delete_session(&self, key: &Tag) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        self.sessions.remove(key).map_err(io)?;
        Ok(())
    }

    fn delete_user_sessions(&self, user_id: &str) -> Result<usize, StoreError> {
        let _gate = self.write_gate();
        let mut doomed = Vec::new();
        self.for_each_session(&mut |k, s| {
            if s.user_id == user_id {
                doomed.push(k);
            }
        })?;
        for k in &doomed {
            self.sessions.remove(k).map_err(io)?;
        }
        Ok(doomed.len())
    }

    fn for_each_session(
        &self,
        visit: &mut dyn FnMut(Tag, SessionRecord),
    ) -> Result<(), StoreError> {
        for item in self.sessions.iter() {
            let (k, v) = item.map_err(io)?;
            let Ok(key) = <Tag>::try_from(k.as_ref()) else {
                continue;
            };
            visit(key, decode("session", &v)?);
        }
        Ok(())
    }

    fn refresh_insert(
        &self,
        key: &Tag,
        family: &RefreshFamily,
        max_per_user: usize,
    ) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        let index = |user: &str, key: &[u8]| [user.as_bytes(), &[0], key].concat();
        self.refresh.insert(key, encode(family)).map_err(io)?;
        self.refresh_users
            .insert(index(&family.user_id, key), &[])
            .map_err(io)?;
        let prefix = [family.user_id.as_bytes(), &[0]].concat();
        let mut held = Vec::new();
        for item in self.refresh_users.scan_prefix(&prefix).keys() {
            let k = item.map_err(io)?;
            let fk = &k[prefix.len()..];
            match self.refresh.get(fk).map_err(io)? {
                Some(v) => held.push((decode::<RefreshFamily>("refresh", &v)?.created_at, k)),
                None => {
                    self.refresh_users.remove(&k).map_err(io)?;
                }
            }
        }
        if held.len() > max_per_user {
            held.sort_by_key(|(created, _)| *created);
            for (_, k) in &held[..held.len() - max_per_user] {
                self.refresh.remove(&k[prefix.len()..]).map_err(io)?;
                self.refresh_users.remove(k).map_err(io)?;
            }
        }
        Ok(())
    }

    fn refresh_family(&self, key: &Tag) -> Result<Option<RefreshFamily>, StoreError> {
        self.refresh
            .get(key)
            .map_err(io)?
            .map(|v| decode("refresh", &v))
            .transpose()
    }

    fn refresh_rotate(
        &self,
        key: &Tag,
        expected: &Tag,
        next: &RefreshFamily,
    ) -> Result<bool, StoreError> {
        let _gate = self.write_gate();
        let Some(old) = self.refresh.get(key).map_err(io)? else {
            return Ok(false);
        };
        let held: RefreshFamily = decode("refresh", &old)?;
        if held.current != *expected {
            return Ok(false);
        }
        // Compare-and-swap on the bytes read: a rotation that won in between changed them.
        Ok(self
            .refresh
            .compare_and_swap(key, Some(old), Some(encode(next)))
            .map_err(io)?
            .is_ok())
    }

    fn refresh_delete(&self, key: &Tag) -> Result<bool, StoreError> {
        let _gate = self.write_gate();
        let Some(old) = self.refresh.remove(key).map_err(io)? else {
            return Ok(false);
        };
        if let Ok(f) = decode::<RefreshFamily>("refresh", &old) {
            let k = [f.user_id.as_bytes(), &[0], key.as_slice()].concat();
            self.refresh_users.remove(k).map_err(io)?;
        }
        Ok(true)
    }

    fn refresh_prune(&self, now: u64) -> Result<usize, StoreError> {
        let mut ended = Vec::new();
        for item in self.refresh.iter() {
            let (k, v) = item.map_err(io)?;
            if decode::<RefreshFamily>("refresh", &v).is_ok_and(|f| f.ends_at() < now) {
                ended.push(k);
            }
        }
        let mut n = 0;
        for k in ended {
            if let Ok(key) = <Tag>::try_from(k.as_ref()) {
                n += usize::from(self.refresh_delete(&key)?);
            }
        }
        Ok(n)
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.settings.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        self.settings.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn outbox_put(&self, id: u64, message: &[u8]) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        self.outbox.insert(id.to_be_bytes(), message).map_err(io)?;
        Ok(())
    }

    fn outbox_delete(&self, id: u64) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        self.outbox.remove(id.to_be_bytes()).map_err(io)?;
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = item.map_err(io)?;
            if let Ok(k) = <[u8; 8]>::try_from(k.as_ref()) {
                out.push((u64::from_be_bytes(k), v.to_vec()));
            }
        }
        Ok(out)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(io)
    }

    fn history_append(&self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        let _gate = self.write_gate();
        let mut batch = sled::Batch::default();
        for row in rows {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&row.at_ms.to_be_bytes());
            key[8..].copy_from_slice(&self.db.generate_id().map_err(io)?.to_be_bytes());
            batch.insert(&key[..], encode(row));
        }
        self.history.apply_batch(batch).map_err(io)
    }

    fn history_query(&self, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, StoreError> {
        let mut out = Vec::new();
        let start = filter.since_ms.unwrap_or(0).to_be_bytes();
        for item in self.history.range(&start[..]..).rev() {
            let (_, v) = item.map_err(io)?;
            let row: HistoryRow = decode("history row", &v)?;
            if filter.matches(&row) {
                out.push(row);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn history_prune(&self, older_than_ms: u64, max_rows: usize) -> Result<usize, StoreError> {
        let _gate = self.write_gate();
        let mut removed = 0;
        let cutoff = older_than_ms.to_be_bytes();
        for item in self.history.range(..&cutoff[..]) {
            let (k, _) = item.map_err(io)?;
            self.history.remove(k).map_err(io)?;
            removed += 1;
        }
        let excess = self.history.len().saturating_sub(max_rows);
        for item in self.history.iter().take(excess) {
            let (k, _) = item.map_err(io)?;
            self.history.remove(k).map_err(io)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn audit_append(&self, entry: &audit::Entry) -> Result<audit::Record, StoreError> {
        self.audit_write(entry)
    }

    fn audit_query(&self, filter: &audit::Filter) -> Result<Vec<audit::Record>, StoreError> {
        self.audit_read(filter)
    }

    fn audit_scan(&self, visit: &mut dyn FnMut(audit::Record) -> bool) -> Result<(), StoreError> {
        self.audit_walk(visit)
    }

    fn audit_prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.audit_remove_before(older_than_ms)
    }

    fn export(&self, out: &mut ExportSink<'_>) -> Result<u64, StoreError> {
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for name in TREES {
            let tree = self.tree(name).expect("known tree");
            for item in tree.iter() {
                let (k, v) = item.map_err(io)?;
                out(name, &k, &v).map_err(|e| StoreError::Io(e.to_string()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn import(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let t = self.tree(tree).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "unknown collection '{}'",
                tree.chars().take(40).collect::<String>()
            ))
        })?;
        t.insert(key, value).map_err(io)?;
        if tree == "users" {
            self.names.insert(String::from_utf8_lossy(key).into_owned());
            let user = User::decode(value)?;
            if let Some(k) = rotation_key(&user) {
                self.rotations.insert(k, &[]).map_err(io)?;
            }
            self.cache.written(Arc::new(user));
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok([
            "users", "sessions", "settings", "history", "outbox", "audit",
        ]
        .iter()
        .all(|n| self.tree(n).expect("known tree").is_empty()))
    }

    fn server_key(&self, generate: &mut dyn FnMut() -> [u8; 32]) -> Result<[u8; 32], StoreError> {
        if let Some(k) = self.meta.get("server_key").map_err(io)? {
            return <[u8; 32]>::try_from(k.as_ref())
                .map_err(|_| StoreError::Corrupt("server key has the wrong length".into()));
        }
        let fresh = generate();
        // Insert only if still absent, so two racing first starts agree on one key.
        let _ = self
            .meta
            .compare_and_swap("server_key", None as Option<&[u8]>, Some(&fresh[..]))
            .map_err(io)?;
        self.flush()?;
        let k = self
            .meta
            .get("server_key")
            .map_err(io)?
            .expect("just written");
        <[u8; 32]>::try_from(k.as_ref())
            .map_err(|_| StoreError::Corrupt("server key has the wrong length".into()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

mod audit_trail;

#[cfg(test)]
mod tests;
