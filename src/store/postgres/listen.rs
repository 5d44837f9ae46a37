//! The listener: one dedicated connection per replica that hears other replicas' changes
//! (`LISTEN`), keeps the liveness clock `max_staleness` is judged by, holds leadership (a
//! session-level advisory lock) when it can, and reconnects by itself, dropping every cache
//! when it does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::connect::Connector;
use super::{BACKLOG, CHANNEL, Inner, LEADER_LOCK, TICK, unhex};
use crate::store::{SessionChange, User, UserChange};

/// The `application_name` of the listener's connection (pg_stat_activity shows it).
pub const APPLICATION_NAME: &str = "tokengate-listener";

/// The listener: hears other replicas' changes, keeps the liveness clock, holds leadership
/// when it can, and reconnects by itself.
pub(super) async fn listen(
    inner: Arc<Inner>,
    connector: Connector,
    cfg: tokio_postgres::Config,
    ready: std::sync::mpsc::SyncSender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(BACKLOG);
        let client =
            match tokio::time::timeout(inner.timeout, connector.connect(&cfg, Some(tx))).await {
                Ok(Ok(c)) => c,
                _ => {
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            };
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_err()
        {
            continue;
        }
        // Whatever happened while nobody listened is unknown: start from the database.
        inner.resync();
        inner
            .heard_ms
            .store(crate::clock::now_ms(), Ordering::Release);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                payload = rx.recv() => match payload {
                    Some(p) => inner.apply(&p).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let leader = inner.leader.load(Ordering::Acquire);
                    let check = async {
                        if leader {
                            client.query_one("SELECT true", &[]).await
                        } else {
                            client
                                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                                .await
                        }
                    };
                    match tokio::time::timeout(inner.timeout, check).await {
                        Ok(Ok(row)) => {
                            inner.heard_ms.store(crate::clock::now_ms(), Ordering::Release);
                            if !leader && row.get::<_, bool>(0) {
                                tracing::info!("this replica now runs the scheduled jobs");
                                inner.leader.store(true, Ordering::Release);
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        inner.leader.store(false, Ordering::Release);
        tracing::warn!("lost the database's change channel: reconnecting");
    }
}

impl Inner {
    pub(super) fn fresh(&self) -> bool {
        let heard = self.heard_ms.load(Ordering::Acquire);
        heard != 0 && crate::clock::now_ms().saturating_sub(heard) <= self.max_staleness_ms
    }

    /// Drops every cache: users are read again, the session table forgets what it holds
    /// (sessions are fetched again on their next use), and the ACME state is read again.
    fn resync(&self) {
        self.cache.clear();
        self.tell_sessions(SessionChange::Unknown);
        self.tell_acme(crate::store::ACME_ALL);
    }

    fn tell_acme(&self, key: &str) {
        for o in self
            .acme_observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            o(key);
        }
    }

    fn tell_sessions(&self, change: SessionChange<'_>) {
        for o in self
            .session_observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            o(change);
        }
    }

    /// Applies another replica's notification.
    async fn apply(&self, payload: &str) {
        let mut parts = payload.splitn(3, ':');
        let (Some(kind), Some(from), Some(what)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if from == self.me {
            return;
        }
        match kind {
            "u" => match self.read_user(what).await {
                Ok(Some(u)) => self.cache.written(Arc::new(u)),
                Ok(None) => {
                    self.cache.forget(what, None);
                    self.cache.notify(UserChange::Deleted { id: what });
                }
                // A change this replica cannot read now may end sessions it holds: start
                // again from the database, as after a lost connection.
                Err(()) => self.resync(),
            },
            "s" => {
                if let Some(key) = unhex(what) {
                    self.tell_sessions(SessionChange::Ended(&key));
                }
            }
            // An ACME entry (`acme_shared`): its observers read it themselves.
            "a" => self.tell_acme(what),
            _ => {}
        }
    }

    /// The user record as stored now; `Err` when it cannot be read.
    async fn read_user(&self, id: &str) -> Result<Option<User>, ()> {
        let client = self.pool.get().await.map_err(|_| ())?;
        let row = client
            .query_opt("SELECT data FROM tg_users WHERE id = $1", &[&id])
            .await
            .map_err(|_| ())?;
        row.map(|r| User::decode(&r.get::<_, Vec<u8>>(0)).map_err(|_| ()))
            .transpose()
    }
}
