//! The composition root: what a data directory holds and the services built on it, assembled
//! one way for the server and for the CLI when no server runs, and the helper that runs the
//! periodic jobs.
//!
//! What it builds: the store and the installation's secrets ([`DataDir::open`]); on them the
//! users, tokens, the mailer and the audit trail ([`DataDir::services`]) and the admin
//! operations ([`Services::admin`]). These are everything that changes records, so a change
//! made through a running server and one made by the CLI without a server are made by the
//! same code.
//!
//! What it does not build, and why: the session table (`auth::session::Sessions`), the login
//! pipeline with its limiters and lockout (`auth::Authenticator`), the login history's writer
//! (`history::History`), OAuth refresh token families (`auth::refresh`), the metrics
//! registry, the console's cookie sessions, the upstream pool, TLS and the listeners. Each is
//! the live state of one running server (in memory, fed by its requests, gone when it
//! stops), and the CLI without a server answers no login and holds no session, so it has
//! nothing to share them with. `server::Server::start` builds them. The one crossing: a
//! server hands its session table to [`DataDir::services`], so that disabling a user or
//! resetting a token ends that user's live sessions; the CLI hands `None`, and the sessions
//! kept in the store are deleted instead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{Admin, Users};
use crate::audit::Audit;
use crate::auth::session::Sessions;
use crate::config::Backend;
use crate::config::Config;
use crate::mail::{MailError, Mailer};
use crate::metrics::Metrics;
use crate::secret::Secrets;
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::store::{Store, StoreError};
use crate::tokens::Tokens;

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("the operating system's random generator failed")]
    Random,
}

/// An open data directory: the store and the secrets derived from its server key.
pub struct DataDir {
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
}

impl DataDir {
    /// Opens (creating it 0700 if needed) the data directory of `cfg`.
    pub fn open(cfg: &Config) -> Result<Self, ServicesError> {
        let store = Self::open_store(cfg)?;
        let rng = ring::rand::SystemRandom::new();
        let mut random_failed = false;
        let key = store.server_key(&mut || {
            ring::rand::generate::<[u8; 32]>(&rng)
                .map(|k| k.expose())
                .unwrap_or_else(|_| {
                    random_failed = true;
                    [0; 32]
                })
        })?;
        if random_failed {
            return Err(ServicesError::Random);
        }
        let secrets = Arc::new(Secrets::new(&key, cfg.auth.argon2.clone()));
        Ok(Self { store, secrets })
    }

    /// The store alone, its server key neither read nor made: for a restore, which brings
    /// its own (and refuses a database a replica has started on, which holds one).
    pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, ServicesError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = &cfg.store.path;
        let dir_err = |source| ServicesError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let store: Arc<dyn Store> = match &cfg.store.backend {
            Backend::Sled => Arc::new(SledStore::open(
                &dir.join("db"),
                cfg.store.cache_capacity_bytes,
            )?),
            Backend::Postgres(pg) => Arc::new(PgStore::connect(pg)?),
        };
        Ok(store)
    }

    /// The services on this data directory. `sessions`: the live session table of a server
    /// (`None` in the CLI: a user's sessions are then deleted in the store); `metrics`: where
    /// the mailer counts its sends.
    pub fn services(
        self,
        cfg: &Config,
        sessions: Option<Arc<Sessions>>,
        metrics: Arc<Metrics>,
    ) -> Result<Services, ServicesError> {
        let DataDir { store, secrets } = self;
        let a = &cfg.auth;
        let users = Arc::new(Users::new(
            store.clone(),
            secrets.clone(),
            sessions.clone(),
            a.token_length,
            a.password_policy.clone(),
            cfg.allow_synthetic_users,
        ));
        let audit = Arc::new(Audit::new(store.clone(), metrics.audit_records.clone()));
        let mailer = Arc::new(Mailer::new(&cfg.mail, store.clone(), metrics)?);
        let tokens = Arc::new(
            Tokens::new(
                store.clone(),
                secrets.clone(),
                mailer.clone(),
                sessions,
                cfg.tokens.clone(),
                a.token_length,
                a.password_policy.clone(),
            )
            .audited(audit.clone()),
        );
        Ok(Services {
            store,
            secrets,
            users,
            tokens,
            mailer,
            audit,
        })
    }
}

/// The services of a data directory.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub mailer: Arc<Mailer>,
    pub audit: Arc<Audit>,
}

impl Services {
    /// Every admin operation on these services (the admin socket, the CLI's direct mode).
    pub fn admin(&self) -> Admin {
        Admin {
            users: self.users.clone(),
            tokens: self.tokens.clone(),
            store: self.store.clone(),
            audit: self.audit.clone(),
        }
    }
}

/// The admin operations on a data directory with no server running (the CLI's direct mode).
/// Its sends are not scraped: their counts go nowhere.
pub fn offline_admin(cfg: &Config) -> Result<Admin, ServicesError> {
    Ok(DataDir::open(cfg)?
        .services(cfg, None, Arc::default())?
        .admin())
}

/// Runs `job` every `period`, first after one period (`at_start`: also at once), until the
/// returned task is aborted. A job that overruns delays the next tick rather than piling up.
pub fn every<F, Fut>(period: Duration, at_start: bool, mut job: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !at_start {
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            job().await;
        }
    })
}
