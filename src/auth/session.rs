//! Sessions (DESIGN.md §3.4): ids of the form `{15-char org id}!{43 url-safe characters}`,
//! indexed in memory by the keyed hash of the id and persisted in the store so a restart does
//! not log anyone out. A lookup is one map probe and no disk access; idle time is tracked in
//! memory and written back by the periodic sweep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::secret::{Domain, SecretError, Secrets, Tag};
use crate::store::{SessionRecord, Store, StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session table is full ({0} sessions)")]
    Full(usize),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A live session. Carries what forwarding needs so the hot path never reads the user record.
#[derive(Debug)]
pub struct Session {
    pub user_id: String,
    pub username: String,
    pub epoch: u64,
    pub created_at: u64,
    last_seen: AtomicU64,
    persisted_seen: AtomicU64,
}

impl Session {
    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}

pub struct Sessions {
    map: DashMap<Tag, Arc<Session>>,
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    idle: u64,
    lifetime: u64,
    max: usize,
    org15: String,
}

/// Session ids are ASCII and short; anything longer is not ours and is not hashed.
const MAX_SESSION_ID_LEN: usize = 128;

impl Sessions {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        idle: Duration,
        lifetime: Duration,
        max: usize,
        org15: &str,
    ) -> Self {
        Self {
            map: DashMap::new(),
            store,
            secrets,
            idle: idle.as_secs().max(1),
            lifetime: lifetime.as_secs().max(1),
            max,
            org15: org15.to_owned(),
        }
    }

    pub fn idle_timeout_secs(&self) -> u64 {
        self.idle
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn key(&self, sid: &str) -> Tag {
        self.secrets.tag(Domain::Session, &[sid.as_bytes()])
    }

    fn expired(&self, s: &Session, now: u64) -> bool {
        now >= s.created_at.saturating_add(self.lifetime)
            || now >= s.last_seen().saturating_add(self.idle)
    }

    /// Loads persisted sessions at start, dropping the ones that expired meanwhile.
    pub fn load(&self) -> Result<usize, SessionError> {
        let now = crate::now_secs();
        let mut expired = Vec::new();
        self.store.for_each_session(&mut |key, rec| {
            let s = Session {
                user_id: rec.user_id,
                username: rec.username,
                epoch: rec.epoch,
                created_at: rec.created_at,
                last_seen: AtomicU64::new(rec.last_seen),
                persisted_seen: AtomicU64::new(rec.last_seen),
            };
            if self.expired(&s, now) {
                expired.push(key);
            } else if self.map.len() < self.max {
                self.map.insert(key, Arc::new(s));
            }
        })?;
        for key in &expired {
            self.store.delete_session(key)?;
        }
        Ok(self.map.len())
    }

    /// Starts a session for `user` and returns its id. The id itself is never stored.
    pub fn create(&self, user: &User) -> Result<String, SessionError> {
        if self.map.len() >= self.max {
            self.sweep();
            if self.map.len() >= self.max {
                return Err(SessionError::Full(self.max));
            }
        }
        let sid = format!("{}!{}", self.org15, self.secrets.generate_session_secret()?);
        let now = crate::now_secs();
        let rec = SessionRecord {
            user_id: user.id.clone(),
            username: user.username.clone(),
            epoch: user.epoch,
            created_at: now,
            last_seen: now,
        };
        let key = self.key(&sid);
        self.store.put_session(&key, &rec)?;
        self.map.insert(
            key,
            Arc::new(Session {
                user_id: rec.user_id,
                username: rec.username,
                epoch: rec.epoch,
                created_at: now,
                last_seen: AtomicU64::new(now),
                persisted_seen: AtomicU64::new(now),
            }),
        );
        Ok(sid)
    }

    /// The live session for `sid`, touching its idle timer; `None` when unknown or expired.
    pub fn lookup(&self, sid: &str) -> Option<Arc<Session>> {
        if sid.is_empty() || sid.len() > MAX_SESSION_ID_LEN {
            return None;
        }
        let key = self.key(sid);
        let s = self.map.get(&key).map(|r| r.value().clone())?;
        let now = crate::now_secs();
        if self.expired(&s, now) {
            self.remove(&key);
            return None;
        }
        s.last_seen.fetch_max(now, Ordering::Relaxed);
        Some(s)
    }

    fn remove(&self, key: &Tag) -> bool {
        let removed = self.map.remove(key).is_some();
        if let Err(e) = self.store.delete_session(key) {
            tracing::warn!(error = %e, "could not delete a session from the store");
        }
        removed
    }

    /// Ends one session. Returns whether it existed.
    pub fn revoke(&self, sid: &str) -> bool {
        if sid.is_empty() || sid.len() > MAX_SESSION_ID_LEN {
            return false;
        }
        self.remove(&self.key(sid))
    }

    /// Ends every session of a user (after a disable or a credential change).
    pub fn revoke_user(&self, user_id: &str) -> Result<usize, SessionError> {
        let before = self.map.len();
        self.map.retain(|_, s| s.user_id != user_id);
        let n = self.store.delete_user_sessions(user_id)?;
        Ok(n.max(before.saturating_sub(self.map.len())))
    }

    /// Drops expired sessions and writes back idle timers that moved, so a restart resumes
    /// them where they were. Run periodically.
    pub fn sweep(&self) -> usize {
        let now = crate::now_secs();
        let mut expired = Vec::new();
        let mut touched = Vec::new();
        for entry in self.map.iter() {
            let s = entry.value();
            if self.expired(s, now) {
                expired.push(*entry.key());
            } else if s.last_seen() > s.persisted_seen.load(Ordering::Relaxed) + 30 {
                touched.push((*entry.key(), s.clone()));
            }
        }
        for key in &expired {
            self.remove(key);
        }
        for (key, s) in touched {
            let seen = s.last_seen();
            let rec = SessionRecord {
                user_id: s.user_id.clone(),
                username: s.username.clone(),
                epoch: s.epoch,
                created_at: s.created_at,
                last_seen: seen,
            };
            // Only write back sessions still present, so a concurrent revoke is not undone.
            if self.map.contains_key(&key) && self.store.put_session(&key, &rec).is_ok() {
                s.persisted_seen.store(seen, Ordering::Relaxed);
            }
        }
        expired.len()
    }
}
