//! The PostgreSQL implementation of [`Store`]: one database shared by any number of tokengate
//! replicas.
//!
//! Records are kept as the same JSON documents sled stores (so a backup has one format on
//! both backends), beside the columns queries need: the username, the user id, the next
//! rotation, a history row's time and outcome. The schema is versioned and applied at start
//! under an advisory lock, so replicas starting together migrate once ([`MIGRATIONS`]).
//!
//! **Consistency.** A user record is updated by compare-and-swap on a version column, so
//! concurrent changes from several replicas (failed-login counts, the lock itself) never lose
//! one another. Every committed change that must end access — to a user (disable, password,
//! token, lock, login ranges) or to a session (logout, eviction) — sends a notification in the
//! same statement (`pg_notify`, delivered on commit). Each replica listens on a dedicated
//! connection and applies what it hears to its caches and to the session table through the
//! store's observers, so the authenticated-call path stays a memory lookup.
//!
//! **Failure.** Every call is bounded by `[store] timeout` and answers
//! [`StoreError::Unavailable`] past it. A replica that has not heard the channel for
//! `max_staleness` stops trusting its caches ([`Store::fresh`]): reads go to the database,
//! which fails closed while it is unreachable. When the listener connects again, every cache is
//! dropped (notifications may have been missed) and the replica is current again.
//!
//! **Singleton work.** The listener's connection also holds a session-level advisory lock when
//! it can: the replica holding it is the leader ([`Store::leader`]) and runs the scheduled jobs
//! that must run once (rotation, compliance retries, history retention). The lock goes with
//! the connection, so another replica takes over within a second or two when the leader's
//! process dies, and, since every connection detects a silent peer (`connect`), within about
//! a quarter of a minute when its host dies or drops off the network.
//!
//! The trait is synchronous (sled's is); calls run on a small runtime of the store's own and
//! the caller waits for the answer, bounded by the timeout, as it would for a disk read.
//!
//! Here: the store and its `Store` methods. `schema`: the migrations. `connect`: TLS, the pool
//! and dedicated connections. `listen`: the change channel, liveness and leadership. This file
//! is longer than most because it holds the whole trait implementation, one query per method,
//! which reads best beside the trait and the sled implementation.

mod acme;
mod audit_trail;
mod connect;
mod listen;
mod schema;

pub use listen::APPLICATION_NAME as LISTENER_APPLICATION_NAME;
pub use schema::MIGRATIONS;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use connect::Connector;

use super::cache::UserCache;
use super::{
    AcmeObserver, ExportSink, HistoryFilter, HistoryRow, RefreshFamily, SessionObserver,
    SessionRecord, Store, StoreError, User, UserChange, UserObserver,
};
use crate::config::PostgresConfig;
use crate::secret::Tag;

/// The notification channel every replica listens on.
const CHANNEL: &str = "tokengate";
/// Advisory lock keys (any 64-bit numbers of our own).
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e67_0001;
const LEADER_LOCK: i64 = 0x746f_6b65_6e67_0002;
/// Rows read per round trip when visiting every user or session.
const PAGE: i64 = 1_000;
/// How often the listener checks its connection (and tries for leadership).
const TICK: Duration = Duration::from_millis(500);
/// Notifications waiting to be applied, at most; past it the replica resynchronises.
const BACKLOG: usize = 4_096;

pub struct PgStore {
    inner: Arc<Inner>,
    /// The store's own runtime: the pool's connections and the listener live on it.
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    pool: Pool,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    max_staleness_ms: u64,
    /// This process's id in notifications, so it skips its own.
    me: String,
    /// Decoded user records, and the observers of user changes.
    cache: UserCache,
    session_observers: std::sync::RwLock<Vec<SessionObserver>>,
    acme_observers: std::sync::RwLock<Vec<AcmeObserver>>,
    /// When the listener last knew its connection good (ms since the epoch); 0: never.
    heard_ms: AtomicU64,
    leader: AtomicBool,
    /// Striped by user id: held from a user's compare-and-swap to its cache write, so this
    /// process's writers of one user reach the cache in the order they committed (two
    /// writers racing there could otherwise leave the older record cached).
    user_writes: Vec<std::sync::Mutex<()>>,
}

/// Stripes of [`Inner::user_writes`].
const USER_WRITE_STRIPES: usize = 64;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn db(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        unavailable(e)
    } else {
        StoreError::Io(e.to_string())
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// The advisory lock key of writes that take an administrator away ("tgadmin" in ASCII).
const ADMINS_LOCK: i64 = 0x0074_6761_646d_696e;

/// Takes the admins' lock until the transaction ends: every replica's demotions, disables
/// and deletes of an enabled admin run one at a time, each counting the others first.
async fn lock_admins(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMINS_LOCK])
        .await
        .map_err(db)?;
    Ok(())
}

/// Whether an enabled administrator other than `id` exists (read under the admins' lock).
async fn other_active_admin(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM tg_users WHERE id <> $1
               AND convert_from(data, 'UTF8')::jsonb @> '{\"admin\": true, \"disabled\": false}'
             LIMIT 1",
            &[&id],
        )
        .await
        .map_err(db)?;
    Ok(row.is_some())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Tag> {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()?;
    Tag::try_from(bytes.as_slice()).ok()
}

impl PgStore {
    /// Connects, applies the schema, and starts listening for other replicas' changes. Fails
    /// when the database cannot be reached within the timeout.
    pub fn connect(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        let cfg = &PostgresConfig {
            connect: connect::detecting_dead_peers(cfg.connect.clone()),
            ..cfg.clone()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tokengate-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let connector = Connector::new(cfg)?;
        let pool = {
            let _entered = runtime.enter();
            connector.pool(cfg)?
        };
        let mut me = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut me)
            .map_err(|_| StoreError::Io("no randomness".into()))?;
        let inner = Arc::new(Inner {
            pool,
            handle: runtime.handle().clone(),
            timeout: cfg.timeout,
            max_staleness_ms: u64::try_from(cfg.max_staleness.as_millis()).unwrap_or(u64::MAX),
            me: hex(&me),
            cache: UserCache::default(),
            session_observers: std::sync::RwLock::new(Vec::new()),
            acme_observers: std::sync::RwLock::new(Vec::new()),
            heard_ms: AtomicU64::new(0),
            leader: AtomicBool::new(false),
            user_writes: (0..USER_WRITE_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        });
        let store = Self {
            inner: inner.clone(),
            runtime: Some(runtime),
        };
        // Migrate on a connection of its own: the advisory lock goes with it, whatever happens.
        let (connect, c) = (cfg.connect.clone(), connector.clone());
        let timeout = cfg.timeout;
        store.block(async move {
            let client = tokio::time::timeout(timeout, c.connect(&connect, None))
                .await
                .map_err(|_| unavailable("the database did not answer in time"))?
                .map_err(db)?;
            schema::migrate(&client).await
        })?;
        // Listen before serving: a change committed from now on reaches this replica. The
        // listener's connection is named, so an operator can tell it in pg_stat_activity.
        let mut listen_cfg = cfg.connect.clone();
        listen_cfg.application_name(listen::APPLICATION_NAME);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        inner.handle.spawn(listen::listen(
            inner.clone(),
            connector,
            listen_cfg,
            ready_tx,
        ));
        ready_rx
            .recv_timeout(cfg.timeout * 2)
            .map_err(|_| unavailable("could not listen for changes in time"))?;
        Ok(store)
    }

    /// How the database judges this replica's connections dead when it goes silent (its host
    /// gone or cut off), as the server applies it: `tcp_keepalives_idle`,
    /// `tcp_keepalives_interval`, `tcp_keepalives_count` and `tcp_user_timeout`, in that order
    /// (seconds, seconds, probes, milliseconds; 0: the OS default).
    /// It bounds how long a vanished leader keeps leadership.
    pub fn dead_peer_settings(&self) -> Result<[String; 4], StoreError> {
        self.query(|c| async move {
            let row = c
                .query_one(
                    "SELECT current_setting('tcp_keepalives_idle'),
                            current_setting('tcp_keepalives_interval'),
                            current_setting('tcp_keepalives_count'),
                            current_setting('tcp_user_timeout')",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok([0, 1, 2, 3].map(|i| row.get::<_, String>(i)))
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.query(|c| async move {
            let row = c
                .query_one("SELECT max(version) FROM tg_schema", &[])
                .await
                .map_err(db)?;
            Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
        })
    }

    /// Runs `fut` on the store's runtime and waits for it, at most the timeout.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.inner.timeout;
        self.inner.handle.spawn(async move {
            let r = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| Err(unavailable("the database did not answer in time")));
            let _ = tx.send(r);
        });
        let wait = move || {
            rx.recv_timeout(timeout + Duration::from_millis(250))
                .unwrap_or_else(|_| Err(unavailable("the database did not answer in time")))
        };
        // On a server's worker thread, tell tokio the thread is busy so other tasks move on.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// [`Self::block`] with a pooled connection.
    fn query<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.inner.pool.clone();
        self.block(async move {
            let client = pool.get().await.map_err(unavailable)?;
            f(client).await
        })
    }

    fn load_by(&self, column: &'static str, value: &str) -> Result<Option<User>, StoreError> {
        let value = value.to_owned();
        let bytes = self.query(move |c| async move {
            let sql = format!("SELECT data FROM tg_users WHERE {column} = $1");
            let row = c.query_opt(&sql, &[&value]).await.map_err(db)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        bytes.map(|b| User::decode(&b)).transpose()
    }

    fn user_from_db(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Arc<User>>, StoreError> {
        let writes_before = self.inner.cache.writes();
        let Some(user) = self.load_by(column, value)? else {
            return Ok(None);
        };
        if !self.inner.fresh() {
            return Ok(Some(Arc::new(user)));
        }
        Ok(Some(self.inner.cache.read(Arc::new(user), writes_before)))
    }

    fn notify_payload(&self, kind: char, what: &str) -> String {
        format!("{kind}:{}:{what}", self.inner.me)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; a store may be dropped on a server's async thread.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The collections of a backup, in its order (the same as sled's).
const EXPORTED: [&str; 8] = [
    "users", "user_ids", "sessions", "meta", "settings", "outbox", "history", "audit",
];

impl Store for PgStore {
    fn observe_users(&self, observer: UserObserver) {
        self.inner.cache.observe(observer);
    }

    fn observe_sessions(&self, observer: SessionObserver) {
        self.inner
            .session_observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    fn acme_entry(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.acme_read(key)
    }

    fn put_acme_entry(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        self.acme_write(key, value)
    }

    fn observe_acme(&self, observer: AcmeObserver) {
        self.inner
            .acme_observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    fn shared(&self) -> bool {
        true
    }

    fn fresh(&self) -> bool {
        self.inner.fresh()
    }

    fn leader(&self) -> bool {
        self.inner.leader.load(Ordering::Acquire)
    }

    fn user_by_name(&self, canonical_username: &str) -> Result<Option<Arc<User>>, StoreError> {
        if self.fresh()
            && let Some(u) = self.inner.cache.by_name(canonical_username)
        {
            return Ok(Some(u));
        }
        self.user_from_db("username", canonical_username)
    }

    fn user_by_id(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        if self.fresh()
            && let Some(u) = self.inner.cache.by_id(id)
        {
            return Ok(Some(u));
        }
        self.user_from_db("id", id)
    }

    fn next_user_number(&self) -> Result<u64, StoreError> {
        Ok(self.next_id()? + 1)
    }

    fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let (id, name, rotation, data) = (
            user.id.clone(),
            user.username.clone(),
            user.next_rotation_at.map(to_i64),
            encode(user),
        );
        let inserted = self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_users (id, username, version, next_rotation_at, data)
                 VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING",
                &[&id, &name, &rotation, &data],
            )
            .await
            .map_err(db)
        })?;
        if inserted == 0 {
            return Err(StoreError::UserExists(user.username.clone()));
        }
        self.inner.cache.written(Arc::new(user.clone()));
        Ok(())
    }

    fn update_user(&self, id: &str, change: &mut dyn FnMut(&mut User)) -> Result<User, StoreError> {
        loop {
            let key = id.to_owned();
            let row = self.query(move |c| async move {
                let row = c
                    .query_opt("SELECT version, data FROM tg_users WHERE id = $1", &[&key])
                    .await
                    .map_err(db)?;
                Ok(row.map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1))))
            })?;
            let (version, bytes) = row.ok_or_else(|| StoreError::NoSuchUser(id.to_owned()))?;
            let mut user = User::decode(&bytes)?;
            let was_admin = user.is_active_admin();
            change(&mut user);
            // Taking an admin away: counted and written under the admins' lock.
            let guarded = was_admin && !user.is_active_admin();
            let (key, data, rotation) = (
                id.to_owned(),
                encode(&user),
                user.next_rotation_at.map(to_i64),
            );
            let payload = self.notify_payload('u', id);
            let stripe = id.bytes().fold(0usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            });
            let _ordered = self.inner.user_writes[stripe % USER_WRITE_STRIPES]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Compare-and-swap on the version; the notification commits with the write.
            const SWAP: &str = "WITH w AS (UPDATE tg_users SET data = $3, version = version + 1,
                     next_rotation_at = $4 WHERE id = $1 AND version = $2 RETURNING 1)
                 SELECT pg_notify($5, $6) FROM w";
            let swapped = self.query(move |mut c| async move {
                let params: [&(dyn ToSql + Sync); 6] =
                    [&key, &version, &data, &rotation, &CHANNEL, &payload];
                if !guarded {
                    let rows = c.query(SWAP, &params).await.map_err(db)?;
                    return Ok(!rows.is_empty());
                }
                let tx = c.transaction().await.map_err(db)?;
                lock_admins(&tx).await?;
                if !other_active_admin(&tx, &key).await? {
                    return Err(StoreError::LastAdmin);
                }
                let rows = tx.query(SWAP, &params).await.map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(!rows.is_empty())
            })?;
            if swapped {
                self.inner.cache.written(Arc::new(user.clone()));
                return Ok(user);
            }
            // Another writer (perhaps another replica) got there first: re-read, re-apply.
        }
    }

    fn due_rotations(&self, now: u64) -> Result<Vec<String>, StoreError> {
        let now = to_i64(now);
        self.query(move |c| async move {
            let rows = c
                .query(
                    "SELECT id FROM tg_users WHERE next_rotation_at <= $1 ORDER BY next_rotation_at",
                    &[&now],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn for_each_user(&self, visit: &mut dyn FnMut(User)) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let from = after.clone();
            let page = self.query(move |c| async move {
                let rows = c
                    .query(
                        "SELECT username, data FROM tg_users WHERE username > $1
                         ORDER BY username LIMIT $2",
                        &[&from, &PAGE],
                    )
                    .await
                    .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                    .collect::<Vec<_>>())
            })?;
            let last = page.len() < PAGE as usize;
            for (name, bytes) in page {
                visit(User::decode(&bytes)?);
                after = name;
            }
            if last {
                return Ok(());
            }
        }
    }

    fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let (key, payload) = (id.to_owned(), self.notify_payload('u', id));
        let deleted = self.query(move |mut c| async move {
            let tx = c.transaction().await.map_err(db)?;
            // The lock first, as every write that takes an admin away takes it.
            lock_admins(&tx).await?;
            let admin = tx
                .query_opt("SELECT data FROM tg_users WHERE id = $1", &[&key])
                .await
                .map_err(db)?
                .map(|r| User::decode(&r.get::<_, Vec<u8>>(0)))
                .transpose()?
                .is_some_and(|u| u.is_active_admin());
            if admin && !other_active_admin(&tx, &key).await? {
                return Err(StoreError::LastAdmin);
            }
            let rows = tx
                .query(
                    "WITH d AS (DELETE FROM tg_users WHERE id = $1 RETURNING 1)
                     SELECT pg_notify($2, $3) FROM d",
                    &[&key, &CHANNEL, &payload],
                )
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(!rows.is_empty())
        })?;
        if !deleted {
            return Ok(false);
        }
        self.inner.cache.forget(id, None);
        self.inner.cache.notify(UserChange::Deleted { id });
        self.delete_user_sessions(id)?;
        Ok(true)
    }

    fn count_login(&self, user_id: &str, window: u64) -> Result<Option<u64>, StoreError> {
        let (user, window) = (user_id.to_owned(), to_i64(window));
        self.query(move |c| async move {
            let row = c
                .query_one(
                    "INSERT INTO tg_login_counts (user_id, window_start, count) VALUES ($1, $2, 1)
                     ON CONFLICT (user_id, window_start)
                     DO UPDATE SET count = tg_login_counts.count + 1 RETURNING count",
                    &[&user, &window],
                )
                .await
                .map_err(db)?;
            Ok(Some(row.get::<_, i64>(0) as u64))
        })
    }

    fn prune_sessions(&self, idle_before: u64, created_before: u64) -> Result<usize, StoreError> {
        let (idle, created) = (to_i64(idle_before), to_i64(created_before));
        self.query(move |c| async move {
            let n = c
                .execute(
                    "DELETE FROM tg_sessions WHERE
                       (convert_from(data, 'UTF8')::jsonb->>'last_seen')::bigint < $1
                       OR (convert_from(data, 'UTF8')::jsonb->>'created_at')::bigint < $2",
                    &[&idle, &created],
                )
                .await
                .map_err(db)?;
            Ok(n as usize)
        })
    }

    fn refresh_insert(
        &self,
        key: &Tag,
        family: &RefreshFamily,
        max_per_user: usize,
    ) -> Result<(), StoreError> {
        let (key, user, current, data) = (
            key.to_vec(),
            family.user_id.clone(),
            family.current.to_vec(),
            encode(family),
        );
        let (created, ends) = (to_i64(family.created_at), to_i64(family.ends_at()));
        // The statement's snapshot does not see the row it inserts: keeping the newest
        // `max - 1` others keeps `max` with it.
        let keep = to_i64(max_per_user.saturating_sub(1) as u64);
        self.query(move |c| async move {
            c.execute(
                "WITH new AS (
                   INSERT INTO tg_refresh (key, user_id, current, created_at, ends_at, data)
                   VALUES ($1, $2, $3, $4, $5, $6)
                 )
                 DELETE FROM tg_refresh WHERE key IN (
                   SELECT key FROM tg_refresh WHERE user_id = $2
                   ORDER BY created_at DESC, key OFFSET $7
                 )",
                &[&key, &user, &current, &created, &ends, &data, &keep],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn refresh_family(&self, key: &Tag) -> Result<Option<RefreshFamily>, StoreError> {
        let key = key.to_vec();
        let bytes = self.query(move |c| async move {
            let row = c
                .query_opt("SELECT data FROM tg_refresh WHERE key = $1", &[&key])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        bytes.map(|b| decode("refresh", &b)).transpose()
    }

    fn refresh_rotate(
        &self,
        key: &Tag,
        expected: &Tag,
        next: &RefreshFamily,
    ) -> Result<bool, StoreError> {
        let (key, expected, current, data) = (
            key.to_vec(),
            expected.to_vec(),
            next.current.to_vec(),
            encode(next),
        );
        let ends = to_i64(next.ends_at());
        // One conditional UPDATE: of replicas racing with the same token, the row lock lets
        // one through and the others find `current` changed (0 rows).
        self.query(move |c| async move {
            let n = c
                .execute(
                    "UPDATE tg_refresh SET current = $3, ends_at = $4, data = $5
                     WHERE key = $1 AND current = $2",
                    &[&key, &expected, &current, &ends, &data],
                )
                .await
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn refresh_delete(&self, key: &Tag) -> Result<bool, StoreError> {
        let key = key.to_vec();
        self.query(move |c| async move {
            let n = c
                .execute("DELETE FROM tg_refresh WHERE key = $1", &[&key])
                .await
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn refresh_prune(&self, now: u64) -> Result<usize, StoreError> {
        let now = to_i64(now);
        self.query(move |c| async move {
            let n = c
                .execute("DELETE FROM tg_refresh WHERE ends_at < $1", &[&now])
                .await
                .map_err(db)?;
            Ok(n as usize)
        })
    }

    fn put_session(&self, key: &Tag, session: &SessionRecord) -> Result<(), StoreError> {
        let (key, user, data) = (key.to_vec(), session.user_id.clone(), encode(session));
        self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_sessions (key, user_id, data) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET data = excluded.data",
                &[&key, &user, &data],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn touch_sessions(&self, touched: &[(Tag, SessionRecord)]) -> Result<(), StoreError> {
        // One statement per page of sessions; an UPDATE, never an insert, so a session
        // deleted meanwhile stays deleted.
        for page in touched.chunks(PAGE as usize) {
            let keys: Vec<Vec<u8>> = page.iter().map(|(k, _)| k.to_vec()).collect();
            let seen: Vec<i64> = page.iter().map(|(_, r)| to_i64(r.last_seen)).collect();
            let data: Vec<Vec<u8>> = page.iter().map(|(_, r)| encode(r)).collect();
            self.query(move |c| async move {
                c.execute(
                    "UPDATE tg_sessions s SET data = u.data
                     FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS u(key, seen, data)
                     WHERE s.key = u.key
                       AND (convert_from(s.data, 'UTF8')::jsonb->>'last_seen')::bigint < u.seen",
                    &[&keys, &seen, &data],
                )
                .await
                .map_err(db)?;
                Ok(())
            })?;
        }
        Ok(())
    }

    fn session(&self, key: &Tag) -> Result<Option<SessionRecord>, StoreError> {
        let key = key.to_vec();
        let bytes = self.query(move |c| async move {
            let row = c
                .query_opt("SELECT data FROM tg_sessions WHERE key = $1", &[&key])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        bytes.map(|b| decode("session", &b)).transpose()
    }

    fn delete_session(&self, key: &Tag) -> Result<(), StoreError> {
        let payload = self.notify_payload('s', &hex(key));
        let key = key.to_vec();
        self.query(move |c| async move {
            c.query(
                "WITH d AS (DELETE FROM tg_sessions WHERE key = $1 RETURNING 1)
                 SELECT pg_notify($2, $3) FROM d",
                &[&key, &CHANNEL, &payload],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn delete_user_sessions(&self, user_id: &str) -> Result<usize, StoreError> {
        let (user, prefix) = (user_id.to_owned(), format!("s:{}:", self.inner.me));
        self.query(move |c| async move {
            let rows = c
                .query(
                    "WITH d AS (DELETE FROM tg_sessions WHERE user_id = $1 RETURNING key)
                     SELECT pg_notify($2, $3 || encode(key, 'hex')) FROM d",
                    &[&user, &CHANNEL, &prefix],
                )
                .await
                .map_err(db)?;
            Ok(rows.len())
        })
    }

    fn for_each_session(
        &self,
        visit: &mut dyn FnMut(Tag, SessionRecord),
    ) -> Result<(), StoreError> {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let from = after.clone();
            let page = self.query(move |c| async move {
                let rows = c
                    .query(
                        "SELECT key, data FROM tg_sessions WHERE key > $1 ORDER BY key LIMIT $2",
                        &[&from, &PAGE],
                    )
                    .await
                    .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect::<Vec<_>>())
            })?;
            let last = page.len() < PAGE as usize;
            for (k, v) in page {
                if let Ok(key) = Tag::try_from(k.as_slice()) {
                    visit(key, decode("session", &v)?);
                }
                after = k;
            }
            if last {
                return Ok(());
            }
        }
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.query(move |c| async move {
            let row = c
                .query_opt("SELECT value FROM tg_settings WHERE key = $1", &[&key])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn outbox_put(&self, id: u64, message: &[u8]) -> Result<(), StoreError> {
        let (id, message) = (to_i64(id), message.to_vec());
        self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_outbox (id, message) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET message = excluded.message",
                &[&id, &message],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn outbox_delete(&self, id: u64) -> Result<(), StoreError> {
        let id = to_i64(id);
        self.query(move |c| async move {
            c.execute("DELETE FROM tg_outbox WHERE id = $1", &[&id])
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.query(move |c| async move {
            let rows = c
                .query("SELECT id, message FROM tg_outbox ORDER BY id", &[])
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.query(move |c| async move {
            let row = c
                .query_one("SELECT nextval('tg_ids')", &[])
                .await
                .map_err(db)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn history_append(&self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let at: Vec<i64> = rows.iter().map(|r| to_i64(r.at_ms)).collect();
        let names: Vec<String> = rows.iter().map(|r| r.username.clone()).collect();
        let ids: Vec<Option<String>> = rows.iter().map(|r| r.user_id.clone()).collect();
        let outcomes: Vec<String> = rows.iter().map(|r| r.outcome.clone()).collect();
        let data: Vec<Vec<u8>> = rows.iter().map(encode).collect();
        self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_history (at_ms, username, user_id, outcome, data)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[])",
                &[&at, &names, &ids, &outcomes, &data],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn history_query(&self, filter: &HistoryFilter) -> Result<Vec<HistoryRow>, StoreError> {
        let since = to_i64(filter.since_ms.unwrap_or(0));
        let outcome = filter.outcome.clone();
        let user = filter.user.clone();
        let limit = to_i64(filter.limit as u64);
        let rows = self.query(move |c| async move {
            let params: [&(dyn ToSql + Sync); 4] = [&since, &outcome, &user, &limit];
            let rows = c
                .query(
                    "SELECT data FROM tg_history WHERE at_ms >= $1
                       AND ($2::text IS NULL OR outcome = $2)
                       AND ($3::text IS NULL OR lower(username) = $3 OR user_id = $3)
                     ORDER BY at_ms DESC, seq DESC LIMIT $4",
                    &params,
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Vec<_>>())
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for bytes in rows {
            let row: HistoryRow = decode("history row", &bytes)?;
            // The database's lower() and Rust's may differ outside ASCII: the filter decides.
            if filter.matches(&row) {
                out.push(row);
            }
        }
        Ok(out)
    }

    fn history_prune(&self, older_than_ms: u64, max_rows: usize) -> Result<usize, StoreError> {
        let (cutoff, max) = (to_i64(older_than_ms), to_i64(max_rows as u64));
        // Login counts of windows long over go with the history's retention pass (a day is
        // longer than any sensible limit period).
        let stale = to_i64(crate::now_secs().saturating_sub(86_400));
        self.query(move |c| async move {
            c.execute(
                "DELETE FROM tg_login_counts WHERE window_start < $1",
                &[&stale],
            )
            .await
            .map_err(db)?;
            let old = c
                .execute("DELETE FROM tg_history WHERE at_ms < $1", &[&cutoff])
                .await
                .map_err(db)?;
            let excess = c
                .execute(
                    "DELETE FROM tg_history WHERE seq IN (
                       SELECT seq FROM tg_history ORDER BY at_ms, seq
                       LIMIT greatest((SELECT count(*) FROM tg_history) - $1, 0))",
                    &[&max],
                )
                .await
                .map_err(db)?;
            Ok((old + excess) as usize)
        })
    }

    fn audit_append(
        &self,
        entry: &crate::store::trail::Entry,
    ) -> Result<crate::store::trail::Record, StoreError> {
        self.audit_write(entry)
    }

    fn audit_query(
        &self,
        filter: &crate::store::trail::Filter,
    ) -> Result<Vec<crate::store::trail::Record>, StoreError> {
        self.audit_read(filter)
    }

    fn audit_scan(
        &self,
        visit: &mut dyn FnMut(crate::store::trail::Record) -> bool,
    ) -> Result<(), StoreError> {
        self.audit_walk(visit)
    }

    fn audit_prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.audit_remove_before(older_than_ms)
    }

    fn export(&self, out: &mut ExportSink<'_>) -> Result<u64, StoreError> {
        // One snapshot of every table (REPEATABLE READ), read in one transaction.
        let records = self.query(move |mut c| async move {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db)?;
            let mut records: Vec<(&'static str, Vec<u8>, Vec<u8>)> = Vec::new();
            let users = tx
                .query(
                    "SELECT username, id, data FROM tg_users ORDER BY username",
                    &[],
                )
                .await
                .map_err(db)?;
            for r in &users {
                records.push(("users", r.get::<_, String>(0).into_bytes(), r.get(2)));
            }
            // The id index, as sled keeps and exports it: a backup restores into either.
            let mut ids: Vec<(String, String)> =
                users.iter().map(|r| (r.get(1), r.get(0))).collect();
            ids.sort();
            for (id, name) in ids {
                records.push(("user_ids", id.into_bytes(), name.into_bytes()));
            }
            for r in tx
                .query("SELECT key, data FROM tg_sessions ORDER BY key", &[])
                .await
                .map_err(db)?
            {
                records.push(("sessions", r.get(0), r.get(1)));
            }
            for (tree, sql) in [
                ("meta", "SELECT key, value FROM tg_meta ORDER BY key"),
                (
                    "settings",
                    "SELECT key, value FROM tg_settings ORDER BY key",
                ),
            ] {
                for r in tx.query(sql, &[]).await.map_err(db)? {
                    records.push((tree, r.get::<_, String>(0).into_bytes(), r.get(1)));
                }
            }
            for r in tx
                .query("SELECT id, message FROM tg_outbox ORDER BY id", &[])
                .await
                .map_err(db)?
            {
                records.push((
                    "outbox",
                    (r.get::<_, i64>(0) as u64).to_be_bytes().to_vec(),
                    r.get(1),
                ));
            }
            for r in tx
                .query(
                    "SELECT at_ms, seq, data FROM tg_history ORDER BY at_ms, seq",
                    &[],
                )
                .await
                .map_err(db)?
            {
                let mut key = (r.get::<_, i64>(0) as u64).to_be_bytes().to_vec();
                key.extend_from_slice(&(r.get::<_, i64>(1) as u64).to_be_bytes());
                records.push(("history", key, r.get(2)));
            }
            for r in tx
                .query("SELECT seq, data FROM tg_audit ORDER BY seq", &[])
                .await
                .map_err(db)?
            {
                let key = (r.get::<_, i64>(0) as u64).to_be_bytes().to_vec();
                records.push(("audit", key, r.get(1)));
            }
            tx.commit().await.map_err(db)?;
            Ok(records)
        })?;
        debug_assert!(records.iter().all(|(t, _, _)| EXPORTED.contains(t)));
        let mut n = 0;
        for (tree, k, v) in records {
            out(tree, &k, &v).map_err(|e| StoreError::Io(e.to_string()))?;
            n += 1;
        }
        Ok(n)
    }

    fn import(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match tree {
            "users" => {
                let user = User::decode(value)?;
                self.create_user(&user)
            }
            // Derived from the user records here.
            "user_ids" => Ok(()),
            "sessions" => {
                let key = Tag::try_from(key).map_err(|_| {
                    StoreError::Corrupt("a session key has the wrong length".into())
                })?;
                self.put_session(&key, &decode("session", value)?)
            }
            "settings" => self.put_setting(&String::from_utf8_lossy(key), value),
            "outbox" => {
                let id = <[u8; 8]>::try_from(key).map_err(|_| {
                    StoreError::Corrupt("an outbox key has the wrong length".into())
                })?;
                self.outbox_put(u64::from_be_bytes(id), value)
            }
            "history" => self.history_append(&[decode("history row", value)?]),
            "audit" => self.audit_import(&crate::store::trail::Record::decode(value)?),
            "meta" => {
                let (key, value) = (String::from_utf8_lossy(key).into_owned(), value.to_vec());
                self.query(move |c| async move {
                    c.execute(
                        "INSERT INTO tg_meta (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &value],
                    )
                    .await
                    .map_err(db)?;
                    Ok(())
                })
            }
            other => Err(StoreError::Corrupt(format!(
                "unknown collection '{}'",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        self.query(move |c| async move {
            let row = c
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM tg_users)
                        AND NOT EXISTS (SELECT 1 FROM tg_sessions)
                        AND NOT EXISTS (SELECT 1 FROM tg_settings)
                        AND NOT EXISTS (SELECT 1 FROM tg_history)
                        AND NOT EXISTS (SELECT 1 FROM tg_audit)
                        AND NOT EXISTS (SELECT 1 FROM tg_outbox)
                        AND NOT EXISTS (SELECT 1 FROM tg_meta)",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(row.get(0))
        })
    }

    fn server_key(&self, generate: &mut dyn FnMut() -> [u8; 32]) -> Result<[u8; 32], StoreError> {
        let fresh = generate().to_vec();
        // Inserted only if absent, so replicas starting together agree on one key.
        let key = self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_meta (key, value) VALUES ('server_key', $1) ON CONFLICT DO NOTHING",
                &[&fresh],
            )
            .await
            .map_err(db)?;
            let row = c
                .query_one("SELECT value FROM tg_meta WHERE key = 'server_key'", &[])
                .await
                .map_err(db)?;
            Ok(row.get::<_, Vec<u8>>(0))
        })?;
        <[u8; 32]>::try_from(key.as_slice())
            .map_err(|_| StoreError::Corrupt("server key has the wrong length".into()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every acknowledged write is a committed transaction.
        Ok(())
    }
}
