//! Persistent records (users, sessions, settings) behind one [`Store`] trait.
//!
//! Two backends implement it: `sled` (embedded, one process) and `postgres` (one database
//! shared by several replicas), so it carries neither's types. Records are plain serde
//! structs; secrets are stored only as an argon2id PHC string (passwords) and a keyed hash
//! (tokens, session ids), never in a form a reader of the database could turn back into a
//! credential. The records are `records`, the audit trail's records and chain `trail`; this
//! file is the trait and its error.

mod cache;
pub mod postgres;
mod records;
pub mod sled;
pub mod trail;

use std::sync::Arc;

use crate::secret::Tag;

pub use records::{
    ACME_ALL, AcmeObserver, DEFAULT_TOKEN_NAME, HistoryFilter, HistoryRow, LockoutState, MfaRecord,
    NamedToken, RefreshFamily, SessionChange, SessionObserver, SessionPolicy, SessionRecord,
    TokenRecord, User, UserChange, UserObserver, ranges_allow,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {path} is in use by another tokengate process")]
    Locked { path: String },
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("no user '{0}'")]
    NoSuchUser(String),
    /// The database could not be reached or did not answer within `[store] timeout`.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The write would leave no enabled administrator (it was refused, nothing changed).
    #[error("the change would leave no enabled administrator")]
    LastAdmin,
}

/// Receives exported records: (collection, key, value).
pub type ExportSink<'a> = dyn FnMut(&str, &[u8], &[u8]) -> std::io::Result<()> + 'a;

pub trait Store: Send + Sync + 'static {
    /// Registers `observer` for every later committed change to a user record.
    fn observe_users(&self, observer: UserObserver);

    /// Shared, not cloned: the cached Basic path reads a user on every request.
    fn user_by_name(&self, canonical_username: &str) -> Result<Option<Arc<User>>, StoreError>;
    fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError>;
    /// Allocates a fresh, never reused user number.
    fn next_user_number(&self) -> Result<u64, StoreError>;
    /// Inserts a new user; fails with [`StoreError::UserExists`] if the username is taken.
    fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// Applies `change` to the stored user atomically and returns the new record. A change that
    /// takes an enabled administrator's admin flag or enables them away is refused with
    /// [`StoreError::LastAdmin`] when no other enabled administrator exists; the count and the
    /// write are made under one lock that every such change takes (for a shared store, across
    /// replicas), so two admins demoting each other at once cannot both succeed.
    fn update_user(&self, id: &str, change: &mut dyn FnMut(&mut User)) -> Result<User, StoreError>;
    /// Calls `visit` with every user in username order, decoding one record at a time: a
    /// periodic scan of 100,000 users must not hold them all in memory at once.
    fn for_each_user(&self, visit: &mut dyn FnMut(User)) -> Result<(), StoreError>;
    /// Ids of the users whose scheduled rotation is due at `now` (Unix seconds), read from an
    /// index rather than from every record.
    fn due_rotations(&self, now: u64) -> Result<Vec<String>, StoreError>;
    /// Every user in username order.
    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let mut out = Vec::new();
        self.for_each_user(&mut |u| out.push(u))?;
        Ok(out)
    }
    /// Removes a user and the user's sessions; false when there was no such user.
    /// Deletes a user (and its sessions); under the same rule and lock as [`Self::update_user`]
    /// when the user is an enabled administrator.
    fn delete_user(&self, id: &str) -> Result<bool, StoreError>;

    /// Registers `observer` for sessions changed by other processes (a shared store only).
    fn observe_sessions(&self, _observer: SessionObserver) {}

    /// An entry of the `[tls] acme` state the replicas of a shared store share (`acme_shared`:
    /// the account key, the certificate, the challenge being validated). A single node's store
    /// keeps none: its ACME state is in its cache directory.
    fn acme_entry(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// Writes (with `None`, deletes) an ACME entry and tells the other processes on the store.
    fn put_acme_entry(&self, _key: &str, _value: Option<&[u8]>) -> Result<(), StoreError> {
        Err(StoreError::Io(
            "ACME entries are kept only in a shared store".into(),
        ))
    }

    /// Registers `observer` for ACME entries written by other processes (a shared store only).
    fn observe_acme(&self, _observer: AcmeObserver) {}

    /// Whether other processes write the same records (several replicas on one database):
    /// sessions are then read when first used rather than all at start.
    fn shared(&self) -> bool {
        false
    }

    /// Whether this process's caches can be trusted: false while a shared store has not
    /// heard other replicas' changes for longer than it may (reads then go to the database).
    fn fresh(&self) -> bool {
        true
    }

    /// Whether this process runs the jobs that must run once for the whole store (scheduled
    /// rotation, compliance retries, history retention).
    fn leader(&self) -> bool {
        true
    }

    /// Counts one login of `user_id` in the window starting at `window` (Unix seconds) and
    /// returns the window's count so far, for a per-user limit shared by every process on the
    /// store; `None` when the store is not shared (the process's own limiter is the limit).
    fn count_login(&self, _user_id: &str, _window: u64) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Deletes the persisted sessions idle since before `idle_before` or created before
    /// `created_before` (Unix seconds): on a shared store, sessions nobody holds any more.
    /// Returns how many went.
    fn prune_sessions(&self, _idle_before: u64, _created_before: u64) -> Result<usize, StoreError> {
        Ok(0)
    }

    fn put_session(&self, key: &Tag, session: &SessionRecord) -> Result<(), StoreError>;
    /// Writes back sessions' idle timers (`last_seen`), as one batch on a shared store: a
    /// session no longer stored is not written again (it was ended meanwhile, perhaps by
    /// another replica), and a stored timer is never moved back (another replica may have
    /// written a later one). The records are otherwise as stored.
    fn touch_sessions(&self, touched: &[(Tag, SessionRecord)]) -> Result<(), StoreError> {
        for (key, rec) in touched {
            if self
                .session(key)?
                .is_some_and(|stored| stored.last_seen < rec.last_seen)
            {
                self.put_session(key, rec)?;
            }
        }
        Ok(())
    }
    /// The persisted session under `key`.
    fn session(&self, key: &Tag) -> Result<Option<SessionRecord>, StoreError>;
    fn delete_session(&self, key: &Tag) -> Result<(), StoreError>;
    fn delete_user_sessions(&self, user_id: &str) -> Result<usize, StoreError>;
    /// Calls `visit` with every persisted session, one record at a time.
    fn for_each_session(&self, visit: &mut dyn FnMut(Tag, SessionRecord))
    -> Result<(), StoreError>;

    /// Stores a new refresh token family; past `max_per_user` live families of its user, the
    /// oldest end.
    fn refresh_insert(
        &self,
        key: &Tag,
        family: &RefreshFamily,
        max_per_user: usize,
    ) -> Result<(), StoreError>;
    fn refresh_family(&self, key: &Tag) -> Result<Option<RefreshFamily>, StoreError>;
    /// Replaces the family with `next` if its current token is still `expected`; `false` when
    /// it is not (used already, revoked, gone). Atomic: of rotations racing with the same
    /// token, on any number of replicas, exactly one succeeds.
    fn refresh_rotate(
        &self,
        key: &Tag,
        expected: &Tag,
        next: &RefreshFamily,
    ) -> Result<bool, StoreError>;
    /// Ends a family; returns whether it existed.
    fn refresh_delete(&self, key: &Tag) -> Result<bool, StoreError>;
    /// Deletes the families that ended before `now` (Unix seconds); returns how many.
    fn refresh_prune(&self, now: u64) -> Result<usize, StoreError>;

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Messages waiting to be retried (compliance copies), keyed by a unique id.
    fn outbox_put(&self, id: u64, message: &[u8]) -> Result<(), StoreError>;
    fn outbox_delete(&self, id: u64) -> Result<(), StoreError>;
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    fn next_id(&self) -> Result<u64, StoreError>;

    fn history_append(&self, rows: &[HistoryRow]) -> Result<(), StoreError>;
    /// Matching rows, newest first, at most `filter.limit`.
    fn history_query(&self, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, StoreError>;
    /// Removes rows older than `older_than_ms` and the oldest beyond `max_rows`; returns how
    /// many were removed.
    fn history_prune(&self, older_than_ms: u64, max_rows: usize) -> Result<usize, StoreError>;

    /// Appends `entry` to the audit trail as the next record of its hash chain (one writer at
    /// a time, across every process on the store) and returns the record, durably written.
    fn audit_append(&self, entry: &trail::Entry) -> Result<trail::Record, StoreError>;
    /// Matching audit records, newest first, at most `filter.limit`.
    fn audit_query(&self, filter: &trail::Filter) -> Result<Vec<trail::Record>, StoreError>;
    /// Calls `visit` with every audit record in chain order until it returns false.
    fn audit_scan(&self, visit: &mut dyn FnMut(trail::Record) -> bool) -> Result<(), StoreError>;
    /// Removes the audit records older than `older_than_ms`, first saving the last removed
    /// record's sequence number and hash as the chain's anchor; returns how many went.
    fn audit_prune(&self, older_than_ms: u64) -> Result<usize, StoreError>;

    /// Calls `out` with every record of every collection (tree name, key, value), as one
    /// consistent snapshot: writes wait until it is done. Returns the number of records.
    fn export(&self, out: &mut ExportSink<'_>) -> Result<u64, StoreError>;
    /// Writes one exported record back (restore into an empty store).
    fn import(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// True when the store holds no users, sessions, settings, history, audit trail or queued
    /// mail. On a shared store also no server key: a replica that started on the database
    /// generated one and holds it in memory, so a restore must not replace it. (A sled
    /// directory is restored with its server stopped: its key is no one's.)
    fn is_empty(&self) -> Result<bool, StoreError>;

    /// The installation's 32-byte server key, created on first use.
    fn server_key(&self, generate: &mut dyn FnMut() -> [u8; 32]) -> Result<[u8; 32], StoreError>;

    /// Makes every acknowledged write durable.
    fn flush(&self) -> Result<(), StoreError>;
}
