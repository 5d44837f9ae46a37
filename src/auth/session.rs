//! Sessions: ids of the form `{15-char org id}!{43 url-safe characters}`, indexed in memory by
//! the keyed hash of the id and persisted in the store so a restart does not log anyone out. A
//! lookup is one map probe and no disk access; idle time is tracked in memory and written back
//! by the periodic sweep.
//!
//! A session carries its user's *session epoch* at login and a shared cell that holds the
//! user's current one: every use compares the two (one atomic load), so a disable, password
//! change, token reset, lock or login-range change ends every session at once, including one
//! created by a login that was verified just before the change. The cells follow the store
//! through its user observer, with no store access on the request path. A session is also
//! refused when it is used from outside the user's login ranges.
//!
//! A session made by an OAuth client's login carries that client's policy
//! (`store::SessionPolicy`, persisted with it): its own idle timeout, and no login ranges when
//! the client relaxes them. Both are fields of the session, read on use as the defaults are:
//! the lookup costs the same.
//!
//! A session logged in with a named token (one integration's token) holds, instead of its
//! user's cell, a cell of its own for that token's value: it follows the user's session epoch
//! while the user still holds the value's serial and is set to "gone" when the token is reset
//! or revoked. So one integration's reset ends that integration's sessions only, and the use
//! of a session still costs one atomic load.
//!
//! Each user holds at most `max_per_user` sessions: a new one past the bound ends the user's
//! oldest, so one valid credential cannot fill the table for everyone else.
//!
//! On a shared store (several replicas on one database) the table is a cache: a session made
//! by another replica is read from the store on its first use here, one ended elsewhere is
//! dropped when the store reports it, and an idle timer that ran out here is checked against
//! the store (another replica may have seen the session used) before the session is ended.
//! When the table is full, a session first used here is still served: it takes the place of
//! a cached one (the least recently used of a sample), whose record stays in the store.
//! While the store cannot vouch for this replica's caches ([`Store::fresh`]), every use checks
//! the user and the session's own record in the database, so a change this replica did not
//! hear is honoured and an unreachable database fails closed.
//!
//! The file is longer than most because it is one type: every method of [`Sessions`] keeps the
//! same maps (sessions, the per-user index, the epoch and token cells) consistent with each
//! other and with the store, and those invariants are easier to check read together than
//! split across files. Its unit tests are in `session/tests.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::last::{Kind, LastCredential};
use crate::domain::Identity;
use crate::secret::{Domain, SecretError, Secrets, Tag};
use crate::store::{
    SessionChange, SessionPolicy, SessionRecord, Store, StoreError, User, UserChange,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session table is full ({0} sessions)")]
    Full(usize),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The session epoch of a deleted user: no session matches it.
const GONE: u64 = u64::MAX;

/// A live session. Carries what forwarding needs so the hot path never reads the user record.
#[derive(Debug)]
pub struct Session {
    pub user_id: String,
    pub username: String,
    /// The user's session epoch at login.
    pub epoch: u64,
    pub created_at: u64,
    /// The serial of the named token's value the session was logged in with (0: none).
    pub token_serial: u64,
    /// That token's name, for the access log.
    pub token: Option<Arc<str>>,
    /// The identity headers' values for the upstream, made once for the session.
    pub identity: Identity,
    /// The user's current session epoch, shared by all the user's sessions (or, for a named
    /// token's session, by that value's sessions: `GONE` once the value is reset or revoked).
    live: Arc<AtomicU64>,
    /// The user's login ranges at login. A change of ranges moves the epoch on, so while the
    /// session lives they are the user's current ones. None for a session of an OAuth client
    /// that relaxes them.
    ranges: Arc<[ipnet::IpNet]>,
    /// Seconds without use that end the session: `[auth]`'s, or its OAuth client's.
    idle: u64,
    /// Its OAuth client's policy, as persisted.
    policy: SessionPolicy,
    last_seen: AtomicU64,
    persisted_seen: AtomicU64,
}

impl Session {
    /// A session as its stored record describes it, with the user's epoch cell and the shape
    /// its policy gives it (`Sessions::shaped`).
    fn from_record(
        rec: SessionRecord,
        live: Arc<AtomicU64>,
        (idle, ranges): (u64, Arc<[ipnet::IpNet]>),
    ) -> Self {
        Session {
            identity: Identity::new(&rec.username, &rec.user_id),
            user_id: rec.user_id,
            username: rec.username,
            epoch: rec.epoch,
            created_at: rec.created_at,
            token_serial: rec.token_serial,
            token: rec.token.map(Into::into),
            live,
            ranges,
            idle,
            policy: rec.policy,
            last_seen: AtomicU64::new(rec.last_seen),
            persisted_seen: AtomicU64::new(rec.last_seen),
        }
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Whether the user's state still allows this session (any client address).
    fn current(&self) -> bool {
        self.epoch == self.live.load(Ordering::Acquire)
    }
}

pub struct Sessions {
    map: Arc<DashMap<Tag, Arc<Session>>>,
    /// user id → the keys of the user's sessions, oldest first.
    by_user: Arc<DashMap<String, VecDeque<Tag>>>,
    /// Sessions being read from a shared store at once, at most (a flood of made-up ids must
    /// not turn into a flood of database reads).
    fetches: FetchSlots,
    /// How long a first use waits for one of those reads: the store's own timeout.
    fetch_wait: Duration,
    /// user id → the user's current session epoch, for users with sessions (shared with the
    /// store's observer).
    epochs: Arc<DashMap<String, Arc<AtomicU64>>>,
    /// user id → (named token serial, that value's cell), for values with sessions.
    token_epochs: Arc<TokenCells>,
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    idle: u64,
    lifetime: u64,
    max: usize,
    max_per_user: usize,
    org15: String,
}

/// user id → (named token serial, the cell of the sessions made with that value).
type TokenCells = DashMap<String, Vec<(u64, Arc<AtomicU64>)>>;

/// The session epoch a session made with the named token value `serial` (0: not a named
/// token) must carry to live: the user's, while the user holds that value.
fn token_epoch(user: &User, serial: u64) -> u64 {
    if serial == 0 || user.named_tokens.iter().any(|t| t.serial == serial) {
        user.session_epoch
    } else {
        GONE
    }
}

/// Session ids are ASCII and short; anything longer is not ours and is not hashed.
const MAX_SESSION_ID_LEN: usize = 128;
/// Concurrent reads of unknown sessions from a shared store.
const MAX_FETCHES: usize = 8;
/// Cached sessions looked at to choose one to evict when a shared store's table is full.
const EVICTION_SAMPLE: usize = 32;
/// Idle timers written back to a shared store per batch.
const WRITE_BACK_PAGE: usize = 1_000;

/// A counting semaphore for [`Sessions::fetch`], waited on synchronously (the store's calls
/// are synchronous) and for a bounded time: every client's first use after a
/// resynchronisation arrives at once, and each must wait its turn rather than be refused.
struct FetchSlots {
    busy: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One of [`FetchSlots`], given back when dropped.
struct FetchSlot<'a>(&'a FetchSlots);

impl FetchSlots {
    fn new() -> Self {
        Self {
            busy: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// A slot, waiting at most `wait` for one; `None` past it.
    fn acquire(&self, wait: Duration) -> Option<FetchSlot<'_>> {
        let take = || {
            let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            let (mut busy, timeout) = self
                .freed
                .wait_timeout_while(busy, wait, |b| *b >= MAX_FETCHES)
                .unwrap_or_else(|p| p.into_inner());
            if timeout.timed_out() && *busy >= MAX_FETCHES {
                return None;
            }
            *busy += 1;
            Some(FetchSlot(self))
        };
        // On a server's worker thread, tell tokio the thread may block so other tasks move on
        // (as the store's own calls do).
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(take)
            }
            _ => take(),
        }
    }
}

impl Drop for FetchSlot<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy -= 1;
        self.0.freed.notify_one();
    }
}

/// How the session table is bounded and timed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub lifetime: Duration,
    pub max: usize,
    pub max_per_user: usize,
    /// How long a first use on a shared store waits for a read of the session (the store's
    /// timeout); past it the session is refused as unavailable, never as invalid.
    pub fetch_wait: Duration,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, secrets: Arc<Secrets>, limits: Limits, org15: &str) -> Self {
        let epochs: Arc<DashMap<String, Arc<AtomicU64>>> = Arc::default();
        let token_epochs: Arc<TokenCells> = Arc::default();
        let cells = Arc::downgrade(&epochs);
        let token_cells = Arc::downgrade(&token_epochs);
        store.observe_users(Arc::new(move |change| {
            let (Some(cells), Some(token_cells)) = (cells.upgrade(), token_cells.upgrade()) else {
                return;
            };
            match change {
                UserChange::Written(u) => {
                    if let Some(c) = cells.get(&u.id) {
                        c.fetch_max(u.session_epoch, Ordering::AcqRel);
                    }
                    if let Some(values) = token_cells.get(&u.id) {
                        for (serial, c) in values.iter() {
                            c.fetch_max(token_epoch(u, *serial), Ordering::AcqRel);
                        }
                    }
                }
                UserChange::Deleted { id } => {
                    if let Some(c) = cells.get(id) {
                        c.store(GONE, Ordering::Release);
                    }
                    if let Some(values) = token_cells.get(id) {
                        for (_, c) in values.iter() {
                            c.store(GONE, Ordering::Release);
                        }
                    }
                }
            }
        }));
        let map: Arc<DashMap<Tag, Arc<Session>>> = Arc::default();
        let by_user: Arc<DashMap<String, VecDeque<Tag>>> = Arc::default();
        let (m, b, e) = (
            Arc::downgrade(&map),
            Arc::downgrade(&by_user),
            Arc::downgrade(&epochs),
        );
        // Another replica's changes: forget here what it ended (the store already deleted it).
        store.observe_sessions(Arc::new(move |change| {
            let (Some(map), Some(by_user), Some(epochs)) = (m.upgrade(), b.upgrade(), e.upgrade())
            else {
                return;
            };
            match change {
                SessionChange::Ended(key) => {
                    if let Some((_, s)) = map.remove(key)
                        && let Some(mut keys) = by_user.get_mut(&s.user_id)
                    {
                        keys.retain(|k| k != key);
                    }
                }
                SessionChange::Unknown => {
                    map.clear();
                    by_user.clear();
                    epochs.clear();
                }
            }
        }));
        Self {
            map,
            by_user,
            fetches: FetchSlots::new(),
            fetch_wait: limits.fetch_wait,
            epochs,
            token_epochs,
            store,
            secrets,
            idle: limits.idle.as_secs().max(1),
            lifetime: limits.lifetime.as_secs().max(1),
            max: limits.max,
            max_per_user: limits.max_per_user.max(1),
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

    /// Sessions the user holds now.
    pub fn count_for(&self, user_id: &str) -> usize {
        self.by_user.get(user_id).map_or(0, |k| k.len())
    }

    fn key(&self, sid: &str) -> Tag {
        self.secrets.tag(Domain::Session, &[sid.as_bytes()])
    }

    /// Times are whole seconds: `>` makes a session last at least its idle time and lifetime
    /// (and at most a second more), where `>=` could end it up to a second early.
    fn expired(&self, s: &Session, now: u64) -> bool {
        now > s.created_at.saturating_add(self.lifetime)
            || now > s.last_seen().saturating_add(s.idle)
    }

    /// A session's idle timeout and login ranges under `policy`.
    fn shaped(&self, policy: SessionPolicy, user: &User) -> (u64, Arc<[ipnet::IpNet]>) {
        let idle = policy.idle_secs.map_or(self.idle, |i| i.max(1));
        let ranges = if policy.relax_ranges {
            Arc::from([])
        } else {
            user.login_ranges.clone().into()
        };
        (idle, ranges)
    }

    /// The cell holding `user_id`'s current session epoch. A new cell is filled from the
    /// store after it is published, so a change committed before is read here and one
    /// committed after reaches it through the observer: none is missed.
    fn epoch_cell(&self, user_id: &str, seen: u64) -> Result<Arc<AtomicU64>, StoreError> {
        let (cell, fresh) = match self.epochs.get(user_id) {
            Some(c) => (c.clone(), false),
            None => {
                let mut fresh = false;
                let c = self
                    .epochs
                    .entry(user_id.to_owned())
                    .or_insert_with(|| {
                        fresh = true;
                        Arc::new(AtomicU64::new(seen))
                    })
                    .clone();
                (c, fresh)
            }
        };
        if fresh {
            match self.store.user_by_id(user_id)? {
                Some(u) => cell.fetch_max(u.session_epoch, Ordering::AcqRel),
                None => cell.swap(GONE, Ordering::AcqRel),
            };
        }
        Ok(cell)
    }

    /// The cell a session made with the named token value `serial` of `user_id` holds: like
    /// [`Self::epoch_cell`], filled from the store after it is published, so a reset or
    /// revocation committed before is read here and one committed after reaches it through
    /// the observer. `serial` 0 (not a named token): the user's cell.
    fn session_cell(
        &self,
        user_id: &str,
        serial: u64,
        seen: u64,
    ) -> Result<Arc<AtomicU64>, StoreError> {
        if serial == 0 {
            return self.epoch_cell(user_id, seen);
        }
        let (cell, fresh) = {
            let mut values = self.token_epochs.entry(user_id.to_owned()).or_default();
            match values.iter().find(|(s, _)| *s == serial) {
                Some((_, c)) => (c.clone(), false),
                None => {
                    let c = Arc::new(AtomicU64::new(seen));
                    values.push((serial, c.clone()));
                    (c, true)
                }
            }
        };
        if fresh {
            match self.store.user_by_id(user_id)? {
                Some(u) => cell.fetch_max(token_epoch(&u, serial), Ordering::AcqRel),
                None => cell.swap(GONE, Ordering::AcqRel),
            };
        }
        Ok(cell)
    }

    /// Loads persisted sessions at start, checked like sessions in use: expired ones, ones
    /// whose user is gone or has moved on, and ones beyond the table's bounds are deleted.
    pub fn load(&self) -> Result<usize, SessionError> {
        if self.store.shared() {
            // Read on first use instead: a replica starts in the same time whatever the
            // database holds.
            return Ok(0);
        }
        let now = crate::now_secs();
        let mut doomed = Vec::new();
        let mut users: HashMap<String, Option<Arc<User>>> = HashMap::new();
        let mut records = Vec::new();
        self.store
            .for_each_session(&mut |key, rec| records.push((key, rec)))?;
        // Oldest first, so the per-user bound keeps each user's newest sessions.
        records.sort_by_key(|(_, r)| r.created_at);
        for (key, rec) in records {
            let user = match users.get(&rec.user_id) {
                Some(u) => u.clone(),
                None => {
                    let u = self.store.user_by_id(&rec.user_id)?;
                    users.insert(rec.user_id.clone(), u.clone());
                    u
                }
            };
            let Some(user) =
                user.filter(|u| token_epoch(u, rec.token_serial) == rec.epoch && !u.disabled)
            else {
                doomed.push(key);
                continue;
            };
            let shape = self.shaped(rec.policy, &user);
            let live = self.session_cell(&user.id, rec.token_serial, user.session_epoch)?;
            let s = Session::from_record(rec, live, shape);
            if self.expired(&s, now) || self.map.len() >= self.max {
                doomed.push(key);
            } else {
                let user_id = s.user_id.clone();
                self.map.insert(key, Arc::new(s));
                for old in self.index(&user_id, key) {
                    self.remove(&old);
                }
            }
        }
        for key in &doomed {
            self.store.delete_session(key)?;
        }
        Ok(self.map.len())
    }

    /// Records `key` as `user_id`'s newest session; returns the keys past the per-user bound.
    fn index(&self, user_id: &str, key: Tag) -> Vec<Tag> {
        let mut keys = self.by_user.entry(user_id.to_owned()).or_default();
        keys.push_back(key);
        let excess = keys.len().saturating_sub(self.max_per_user);
        keys.drain(..excess).collect()
    }

    /// Starts a session for `user` (as a login verified it) and returns its id. The id itself
    /// is never stored. A user past the per-user bound loses the oldest session.
    pub fn create(&self, user: &User) -> Result<String, SessionError> {
        self.create_with(
            user,
            &crate::auth::TokenUsed::Default,
            SessionPolicy::default(),
        )
    }

    /// [`Self::create`] for a login with `token` under its OAuth client's `policy`: a session
    /// made with a named token ends when that token is reset or revoked.
    pub fn create_with(
        &self,
        user: &User,
        token: &crate::auth::TokenUsed,
        policy: SessionPolicy,
    ) -> Result<String, SessionError> {
        if self.map.len() >= self.max {
            self.sweep();
            if self.map.len() >= self.max {
                return Err(SessionError::Full(self.max));
            }
        }
        let sid = format!("{}!{}", self.org15, self.secrets.generate_session_secret()?);
        let now = crate::now_secs();
        let serial = token.serial();
        let rec = SessionRecord {
            user_id: user.id.clone(),
            username: user.username.clone(),
            epoch: user.session_epoch,
            created_at: now,
            last_seen: now,
            policy,
            token_serial: serial,
            token: token.name().map(str::to_owned),
        };
        let key = self.key(&sid);
        let shape = self.shaped(policy, user);
        let live = self.session_cell(&user.id, serial, user.session_epoch)?;
        self.store.put_session(&key, &rec)?;
        self.map
            .insert(key, Arc::new(Session::from_record(rec, live, shape)));
        for old in self.index(&user.id, key) {
            self.remove(&old);
        }
        Ok(sid)
    }

    /// The live session for `sid` used from `ip`, touching its idle timer; `None` when
    /// unknown, expired, ended by a change to its user, or used from outside the user's login
    /// ranges.
    /// Fails only when a shared store cannot answer (the caller then refuses the session as
    /// unavailable rather than unknown).
    pub fn lookup(&self, sid: &str, ip: IpAddr) -> Result<Option<Arc<Session>>, StoreError> {
        if sid.is_empty() || sid.len() > MAX_SESSION_ID_LEN {
            return Ok(None);
        }
        self.lookup_key(sid, &self.key(sid), ip)
    }

    /// [`Self::lookup`] on a connection that remembers the last credential it presented and
    /// its key ([`LastCredential`]): the same id again skips the keyed hash. Only the hash is
    /// skipped; the session is looked up and checked as on every other use.
    pub fn lookup_on(
        &self,
        sid: &str,
        ip: IpAddr,
        last: &LastCredential,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        if sid.is_empty() || sid.len() > MAX_SESSION_ID_LEN {
            return Ok(None);
        }
        let parts = [sid.as_bytes(), &[]];
        if let Some(key) = last.key(Kind::Session, parts) {
            return self.lookup_key(sid, &key, ip);
        }
        let key = self.key(sid);
        let found = self.lookup_key(sid, &key, ip)?;
        // Only an id that named a live session is worth remembering.
        if found.is_some() {
            last.remember(Kind::Session, parts, key);
        }
        Ok(found)
    }

    fn lookup_key(
        &self,
        sid: &str,
        key: &Tag,
        ip: IpAddr,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        let key = *key;
        let (s, fetched) = match self.map.get(&key).map(|r| r.value().clone()) {
            Some(s) => (s, false),
            None => match self.fetch(sid, &key)? {
                Some(s) => (s, true),
                None => return Ok(None),
            },
        };
        let now = crate::now_secs();
        if !s.current() || now > s.created_at.saturating_add(self.lifetime) {
            self.remove(&key);
            return Ok(None);
        }
        if now > s.last_seen().saturating_add(s.idle) && !self.used_elsewhere(&key, &s, now)? {
            self.remove(&key);
            return Ok(None);
        }
        if !self.store.fresh() {
            // This replica may have missed a change: the database decides, and an unreachable
            // one refuses. Both records: the user's (a disable, a reset) and the session's own
            // (a logout or an eviction on another replica deletes only the row).
            let user = self.store.user_by_id(&s.user_id)?;
            if !user.is_some_and(|u| !u.disabled && token_epoch(&u, s.token_serial) == s.epoch) {
                return Ok(None);
            }
            if !fetched && self.store.session(&key)?.is_none() {
                self.forget(&key);
                return Ok(None);
            }
        }
        // Salesforce's "enforce login IP ranges on every request".
        if !crate::store::ranges_allow(&s.ranges, ip) {
            return Ok(None);
        }
        s.last_seen.fetch_max(now, Ordering::Relaxed);
        Ok(Some(s))
    }

    /// On a shared store: whether another replica has seen the session used since this one
    /// last did (its idle timer, written back by that replica's sweep, is later than ours).
    fn used_elsewhere(&self, key: &Tag, s: &Session, now: u64) -> Result<bool, StoreError> {
        if !self.store.shared() {
            return Ok(false);
        }
        let Some(rec) = self.store.session(key)? else {
            return Ok(false);
        };
        s.last_seen.fetch_max(rec.last_seen, Ordering::Relaxed);
        s.persisted_seen.fetch_max(rec.last_seen, Ordering::Relaxed);
        Ok(now <= s.last_seen().saturating_add(s.idle))
    }

    /// On a shared store: a session this replica does not hold, read from the store (made by
    /// another replica, or forgotten after a resynchronisation).
    fn fetch(&self, sid: &str, key: &Tag) -> Result<Option<Arc<Session>>, StoreError> {
        // Ids are `{org id}!{secret}`: anything else is not one of ours and costs no read.
        if !self.store.shared()
            || !sid
                .strip_prefix(self.org15.as_str())
                .is_some_and(|rest| rest.starts_with('!'))
        {
            return Ok(None);
        }
        // Wait for a read in flight to finish, bounded by the store's timeout: a valid session
        // is never told it is invalid because others were first seen at the same moment.
        let Some(_slot) = self.fetches.acquire(self.fetch_wait) else {
            return Err(StoreError::Unavailable(
                "too many sessions were being read from the database".into(),
            ));
        };
        // A use that waited may find the session read meanwhile by another.
        if let Some(s) = self.map.get(key).map(|r| r.value().clone()) {
            return Ok(Some(s));
        }
        let Some(rec) = self.store.session(key)? else {
            return Ok(None);
        };
        let Some(user) = self
            .store
            .user_by_id(&rec.user_id)?
            .filter(|u| token_epoch(u, rec.token_serial) == rec.epoch && !u.disabled)
        else {
            self.store.delete_session(key)?;
            return Ok(None);
        };
        let shape = self.shaped(rec.policy, &user);
        let live = self.session_cell(&user.id, rec.token_serial, user.session_epoch)?;
        let s = Arc::new(Session::from_record(rec, live, shape));
        if self.map.len() >= self.max {
            self.sweep();
            if self.map.len() >= self.max {
                // The table is a cache of the database here: a valid session is served and
                // makes room, never refused as invalid because this replica holds many. (The
                // table can pass `max` by the reads in flight at once, `MAX_FETCHES`.)
                self.evict_one();
            }
        }
        if self.map.insert(*key, s.clone()).is_none() {
            for old in self.index(&s.user_id, *key) {
                self.remove(&old);
            }
        }
        Ok(Some(s))
    }

    /// The record of a live session, with its idle timer as of now.
    fn record(s: &Session) -> SessionRecord {
        SessionRecord {
            user_id: s.user_id.clone(),
            username: s.username.clone(),
            epoch: s.epoch,
            created_at: s.created_at,
            last_seen: s.last_seen(),
            policy: s.policy,
            token_serial: s.token_serial,
            token: s.token.as_deref().map(str::to_owned),
        }
    }

    fn write_back_one_by_one(&self, touched: &[Tag]) {
        for key in touched {
            // The entry is held while its record is written: a revocation waits for the write
            // and then deletes it, instead of being undone by it.
            let Some(entry) = self.map.get(key) else {
                continue;
            };
            let s = entry.value();
            let rec = Self::record(s);
            if self.store.put_session(key, &rec).is_ok() {
                s.persisted_seen.store(rec.last_seen, Ordering::Relaxed);
            }
        }
    }

    /// On a shared store, a page of sessions per statement. No entry is held: the store
    /// writes back only sessions it still has, so a revocation meanwhile is never undone.
    fn write_back_batched(&self, touched: &[Tag]) {
        for page in touched.chunks(WRITE_BACK_PAGE) {
            let (sessions, records): (Vec<_>, Vec<_>) = page
                .iter()
                .filter_map(|key| {
                    let s = self.map.get(key)?.value().clone();
                    let rec = Self::record(&s);
                    Some((s, (*key, rec)))
                })
                .unzip();
            match self.store.touch_sessions(&records) {
                Ok(()) => {
                    for (s, (_, rec)) in sessions.iter().zip(&records) {
                        s.persisted_seen.store(rec.last_seen, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not write idle timers back"),
            }
        }
    }

    /// On a shared store, with the table full: drops from this replica's table the least
    /// recently used of a few cached sessions (a sample, not a scan of the table), its idle
    /// timer written back first so the database keeps its last use here. Its record stays:
    /// its next use here reads it again.
    fn evict_one(&self) {
        let victim = self
            .map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|e| e.value().last_seen())
            .map(|e| (*e.key(), e.value().clone()));
        let Some((key, s)) = victim else {
            return;
        };
        if s.last_seen() > s.persisted_seen.load(Ordering::Relaxed)
            && let Err(e) = self.store.touch_sessions(&[(key, Self::record(&s))])
        {
            tracing::warn!(error = %e, "could not write an evicted session's idle timer back");
        }
        self.forget(&key);
    }

    /// Drops a session from this replica's table only (the store's record is left as it is).
    fn forget(&self, key: &Tag) {
        if let Some((_, s)) = self.map.remove(key)
            && let Some(mut keys) = self.by_user.get_mut(&s.user_id)
        {
            keys.retain(|k| k != key);
        }
    }

    fn remove(&self, key: &Tag) -> bool {
        let removed = self.map.remove(key);
        if let Some((_, s)) = &removed
            && let Some(mut keys) = self.by_user.get_mut(&s.user_id)
        {
            keys.retain(|k| k != key);
        }
        if let Err(e) = self.store.delete_session(key) {
            tracing::warn!(error = %e, "could not delete a session from the store");
        }
        removed.is_some()
    }

    /// Ends one session. Returns whether it existed.
    pub fn revoke(&self, sid: &str) -> bool {
        if sid.is_empty() || sid.len() > MAX_SESSION_ID_LEN {
            return false;
        }
        self.remove(&self.key(sid))
    }

    /// Ends every session of a user (after a disable or a credential change): the user's own
    /// sessions by the index, no scan of the table.
    pub fn revoke_user(&self, user_id: &str) -> Result<usize, SessionError> {
        let keys = self
            .by_user
            .remove(user_id)
            .map(|(_, k)| k)
            .unwrap_or_default();
        let mut n = 0;
        for key in &keys {
            n += usize::from(self.map.remove(key).is_some());
            self.store.delete_session(key)?;
        }
        Ok(n)
    }

    /// Drops expired sessions and ones whose user moved on, and writes back idle timers that
    /// moved by more than a threshold, so a restart (or another replica) resumes them where
    /// they were: on sled 30 s (a write per active session every half minute at most); on a
    /// shared store a tenth of the session's idle timeout, in batches. Run periodically, off
    /// the async workers (it writes to the store).
    pub fn sweep(&self) -> usize {
        self.sweep_moved_by(None)
    }

    /// [`Self::sweep`] at shutdown: every idle timer that moved at all is written back.
    pub fn sweep_all(&self) -> usize {
        self.sweep_moved_by(Some(0))
    }

    /// How far a session's idle timer moves before the sweep writes it back.
    fn write_back_after(&self, s: &Session) -> u64 {
        if self.store.shared() {
            // Replicas share idle timers through the store: a tenth of the idle time keeps
            // another replica's view of a session in use within that much of the truth, and
            // is the most often a session is written.
            (s.idle / 10).max(1)
        } else {
            30
        }
    }

    fn sweep_moved_by(&self, threshold: Option<u64>) -> usize {
        let now = crate::now_secs();
        let mut doomed = Vec::new();
        let mut touched = Vec::new();
        let mut forgotten = Vec::new();
        for entry in self.map.iter() {
            let s = entry.value();
            if self.store.shared()
                && s.current()
                && now <= s.created_at.saturating_add(self.lifetime)
                && now > s.last_seen().saturating_add(s.idle)
            {
                // Idle here, perhaps not on another replica: forget it here only (its next
                // use here reads it again).
                forgotten.push(*entry.key());
            } else if self.expired(s, now) || !s.current() {
                doomed.push(*entry.key());
            } else if s.last_seen()
                > s.persisted_seen.load(Ordering::Relaxed)
                    + threshold.unwrap_or_else(|| self.write_back_after(s))
            {
                touched.push(*entry.key());
            }
        }
        for key in &doomed {
            self.remove(key);
        }
        for key in &forgotten {
            self.forget(key);
        }
        if self.store.shared() {
            self.write_back_batched(&touched);
        } else {
            self.write_back_one_by_one(&touched);
        }
        self.by_user.retain(|_, keys| !keys.is_empty());
        // Cells no session holds any more; a new session makes a fresh one from the store.
        self.epochs.retain(|_, c| Arc::strong_count(c) > 1);
        self.token_epochs.retain(|_, values| {
            values.retain(|(_, c)| Arc::strong_count(c) > 1);
            !values.is_empty()
        });
        doomed.len()
    }
}

#[cfg(test)]
mod tests;
