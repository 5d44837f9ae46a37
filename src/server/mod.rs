//! The running server: opens the store, builds the TLS listener (and the console's own, when
//! `[console] listen` is set), accepts connections (HTTP/1.1 and HTTP/2 by ALPN), routes
//! requests (`routes`), serves the admin socket, sweeps sessions, and shuts down gracefully.
//! It wires the other modules together and owns none of their rules; what every handler
//! shares is [`App`] (`app`).

pub mod access;
pub(crate) mod api;
mod app;
pub mod body;
pub mod caller;
pub mod conn;
pub mod console;
pub mod handlers;
pub mod peer;
pub mod read;
pub mod refusal;
mod reuse;
pub mod routes;
pub mod target;

pub use app::{App, Live};
pub use body::{Budget, ReqBody};
pub use peer::{Client, Conn, Listener};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin, Users};
use crate::auth::Authenticator;
use crate::auth::session::Sessions;
use crate::config::{Config, Workers};
use crate::history::History;
use crate::limit::KeyedLimiter;
use crate::mail::Mailer;
use crate::proxy::Upstream;
use crate::secret::Secrets;
use crate::store::Store;
use crate::tls::{self, CertPaths};
use crate::tokens::Tokens;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error(transparent)]
    Session(#[from] crate::auth::session::SessionError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error("the operating system's random generator failed")]
    Random,
}

impl From<crate::services::ServicesError> for ServerError {
    fn from(e: crate::services::ServicesError) -> Self {
        use crate::services::ServicesError as S;
        match e {
            S::DataDir { path, source } => ServerError::DataDir { path, source },
            S::Store(e) => ServerError::Store(e),
            S::Mail(e) => ServerError::Mail(e),
            S::Random => ServerError::Random,
        }
    }
}

/// The Prometheus listener: plain HTTP on a loopback address, `GET /metrics`.
async fn serve_metrics(
    addr: SocketAddr,
    app: Arc<App>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let r = if req.uri().path() == "/metrics" {
                            crate::wire::respond(
                                http::StatusCode::OK,
                                crate::metrics::CONTENT_TYPE,
                                app.metrics.render(&app.gauges()),
                            )
                        } else {
                            crate::wire::json_error(
                                http::StatusCode::NOT_FOUND,
                                "not_found",
                                "try /metrics",
                            )
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let _ = b.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Ok((task, bound))
}

/// A started server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub addr: SocketAddr,
    /// The Prometheus listener's address, when on.
    pub metrics_addr: Option<SocketAddr>,
    /// The console's own listener's address (`[console] listen`), when set.
    pub console_addr: Option<SocketAddr>,
    pub origin: String,
    pub cert: CertPaths,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
    console_task: Option<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    history_task: tokio::task::JoinHandle<()>,
}

const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often limiter keys and other expiring entries are cleared out.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// Self-service token resets being delivered at once, at most.
const RESET_SLOTS: usize = 64;

/// The public listener, as `[server] workers` asks.
enum Listening {
    Shared(TcpListener),
    /// One socket per worker thread (`conn::serve_per_core`).
    PerCore(Vec<std::net::TcpListener>),
}

impl Listening {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listening::Shared(l) => l.local_addr(),
            Listening::PerCore(ls) => match ls.first() {
                Some(l) => l.local_addr(),
                None => Err(std::io::Error::other("no worker thread to listen on")),
            },
        }
    }
}

impl Server {
    pub async fn start(cfg: Config) -> Result<Self, ServerError> {
        let data = crate::services::DataDir::open(&cfg)?;
        let (store, secrets) = (data.store.clone(), data.secrets.clone());
        let cert = tls::ensure_cert(
            cfg.tls.cert.as_deref().zip(cfg.tls.key.as_deref()),
            &cfg.store.path,
        )?;

        let sessions = Arc::new(Sessions::new(
            store.clone(),
            secrets.clone(),
            crate::auth::session::Limits {
                idle: cfg.auth.session_idle_timeout,
                lifetime: cfg.auth.session_lifetime,
                max: cfg.auth.max_sessions,
                max_per_user: cfg.auth.max_sessions_per_user,
                fetch_wait: cfg.store.backend.timeout().unwrap_or_default(),
            },
            &cfg.server.org.id15,
        ));
        let restored = sessions.load()?;
        let (history, history_task) = History::start(store.clone(), &cfg.history);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let services = data.services(&cfg, Some(sessions.clone()), metrics.clone())?;
        // With `[tls] acme` the generated pair above is only the placeholder served until the
        // CA's first certificate.
        let (acme, acme_task) = match &cfg.tls.acme {
            Some(a) => {
                let reporting = crate::acme::Reporting {
                    metrics: metrics.clone(),
                    audit: Some(services.audit.clone()),
                };
                // Several replicas share one certificate through the store (`acme_shared`);
                // a single node keeps its cache directory.
                let (acme, task) = if store.shared() {
                    let shared = crate::acme_shared::Shared {
                        store: store.clone(),
                        secrets: secrets.clone(),
                    };
                    crate::acme_shared::start(a, &cfg.store.path, reporting, shared).await?
                } else {
                    crate::acme::Acme::start(a, &cfg.store.path, reporting).await?
                };
                (Some(acme), Some(task))
            }
            None => (None, None),
        };
        let acceptor = match &acme {
            Some(acme) => TlsAcceptor::from(acme.server_config()),
            None => {
                if let Some(end) = tls::not_after(&cert.cert) {
                    metrics.certificate_expires(end);
                }
                TlsAcceptor::from(tls::server_config(&cert)?)
            }
        };
        let (mailer, users, tokens) = (
            services.mailer.clone(),
            services.users.clone(),
            services.tokens.clone(),
        );
        let (lock_notices, lock_queue) = tokio::sync::mpsc::channel(crate::mail::LOCK_NOTICE_QUEUE);
        let auth = Authenticator::new(
            store.clone(),
            secrets.clone(),
            &cfg,
            history.clone(),
            Some(lock_notices),
            metrics.clone(),
        )?;
        let upstream = Upstream::new(
            &cfg.upstream,
            metrics.clone(),
            cfg.server.workers == Workers::PerCore,
        )?;
        let admin = Arc::new(services.admin());

        let bind_error = |source| ServerError::Bind {
            addr: cfg.server.listen,
            source,
        };
        let listener = match cfg.server.workers {
            Workers::Shared => Listening::Shared(
                TcpListener::bind(cfg.server.listen)
                    .await
                    .map_err(bind_error)?,
            ),
            Workers::PerCore => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                Listening::PerCore(
                    conn::bind_per_core(cfg.server.listen, cores).map_err(bind_error)?,
                )
            }
        };
        let addr = listener.local_addr().map_err(bind_error)?;
        // The console's own listener: bound before anything runs, so a taken address fails
        // the start like the public one.
        let console_listener = match cfg.console.listen {
            Some(at) => {
                let l = TcpListener::bind(at)
                    .await
                    .map_err(|source| ServerError::Bind { addr: at, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| ServerError::Bind { addr: at, source })?;
                Some((l, bound))
            }
            None => None,
        };
        let origin = cfg.public_origin(addr);
        let admin_task = admin::serve_socket(&cfg.store.path, admin.clone())?;
        let console = console::Console::new(secrets.clone(), store.clone(), cfg.console.clone())?;
        const HOUR: Duration = Duration::from_secs(3600);
        let reset_per_user = KeyedLimiter::new(cfg.tokens.reset_per_user_per_hour, HOUR, 100_000);
        let reset_per_ip = KeyedLimiter::new(cfg.tokens.reset_per_ip_per_hour, HOUR, 100_000);

        let cfg_oauth = cfg.oauth_clients.clone();
        let refresh = crate::auth::refresh::RefreshTokens::new(
            store.clone(),
            secrets.clone(),
            cfg.refresh_families_per_user,
        );
        let hosts = app::hosts_of(&cfg, &origin);
        let bodies = Budget::new(cfg.server.max_buffered_body_bytes);
        let app = Arc::new(App {
            cfg,
            store,
            secrets,
            auth,
            sessions: sessions.clone(),
            refresh,
            upstream,
            users,
            history,
            tokens: tokens.clone(),
            admin,
            console,
            metrics,
            reset_per_user,
            reset_per_ip,
            reset_slots: Arc::new(Semaphore::new(RESET_SLOTS)),
            bodies,
            hosts,
            origin: origin.clone(),
            request_ids: access::RequestIds::new().map_err(|_| ServerError::Random)?,
            live: std::sync::RwLock::new(Arc::new(Live {
                tls: acceptor,
                oauth_clients: cfg_oauth,
            })),
            acme,
        });

        use crate::services::every;
        // Scheduled rotations: at start (catching up on any missed while down), then on a timer.
        let rotations = every(tokens.check_interval(), true, move || {
            let tokens = tokens.clone();
            async move {
                tokens.run_due().await;
            }
        });
        let notices = tokio::spawn(crate::mail::send_lock_notices(mailer.clone(), lock_queue));
        let retries = every(mailer.retry_interval(), false, move || {
            let mailer = mailer.clone();
            async move { mailer.retry_queued().await }
        });
        let a = app.clone();
        let housekeeping = every(HOUSEKEEPING_EVERY, true, move || {
            a.auth.housekeep();
            a.reset_per_user.housekeep();
            a.reset_per_ip.housekeep();
            std::future::ready(())
        });
        let a = app.clone();
        let pool_sweeper = every(a.upstream.sweep_every(), true, move || {
            a.upstream.sweep_idle();
            std::future::ready(())
        });
        // Sessions (API and console) whose every holder is gone are deleted from a shared
        // store by the leader, once they are past the longer of the two timeouts.
        let (idle, lifetime) = (
            app.cfg
                .oauth_clients
                .iter()
                .filter_map(|c| c.session_idle_timeout)
                .fold(app.cfg.auth.session_idle_timeout, Duration::max)
                .max(app.cfg.console.session_idle_timeout),
            app.cfg
                .auth
                .session_lifetime
                .max(app.cfg.console.session_lifetime),
        );
        let shared = app.store.clone();
        let sweeper = every(SESSION_SWEEP_EVERY, false, move || {
            let (s, shared) = (sessions.clone(), shared.clone());
            async move {
                let _ = tokio::task::spawn_blocking(move || {
                    s.sweep();
                    if shared.shared() && shared.leader() {
                        let now = crate::now_secs();
                        let pruned = shared.prune_sessions(
                            now.saturating_sub(idle.as_secs()),
                            now.saturating_sub(lifetime.as_secs()),
                        );
                        if let Err(e) = pruned {
                            tracing::warn!(error = %e, "could not prune expired sessions");
                        }
                    }
                })
                .await;
            }
        });

        let (stop, stop_rx) = watch::channel(false);
        let accept_task = match listener {
            Listening::Shared(l) => tokio::spawn(conn::accept_loop(
                l,
                app.clone(),
                stop_rx.clone(),
                Listener::Public,
            )),
            Listening::PerCore(ls) => conn::serve_per_core(ls, app.clone(), stop_rx.clone())
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        };
        let console_addr = console_listener.as_ref().map(|(_, a)| *a);
        let console_task = console_listener.map(|(l, _)| {
            tokio::spawn(conn::accept_loop(
                l,
                app.clone(),
                stop_rx,
                Listener::Console,
            ))
        });
        let mut background = vec![
            sweeper,
            notices,
            admin_task,
            rotations,
            retries,
            housekeeping,
            pool_sweeper,
        ];
        background.extend(acme_task);
        let mut metrics_addr = None;
        if let Some(addr) = app.cfg.metrics_listen {
            let (task, bound) = serve_metrics(addr, app.clone()).await?;
            background.push(task);
            metrics_addr = Some(bound);
        }
        tracing::info!(%addr, %origin, restored_sessions = restored, "tokengate is listening");
        if let Some(at) = console_addr {
            tracing::info!(addr = %at, "the console and the admin API are on their own listener");
        }
        Ok(Self {
            addr,
            metrics_addr,
            console_addr,
            origin,
            cert,
            app,
            stop,
            accept_task,
            console_task,
            background,
            history_task,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded), persists session idle
    /// timers and flushes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        if let Some(t) = self.console_task {
            let _ = t.await;
        }
        for t in self.background {
            t.abort();
            let _ = t.await;
        }
        // Write out queued login history before closing the store.
        self.app.history.drain(Duration::from_secs(2)).await;
        self.history_task.abort();
        let _ = self.history_task.await;
        let _ = std::fs::remove_file(admin::socket_path(&self.app.cfg.store.path));
        self.app.sessions.sweep_all();
        if let Err(e) = self.app.store.flush() {
            tracing::error!(error = %e, "could not flush the store at shutdown");
        }
        // Connection tasks drop their handle on the app a moment after their connection ends;
        // wait for them so the store (and its directory lock) is closed when this returns.
        let deadline = tokio::time::Instant::now() + self.app.cfg.server.drain_timeout;
        while Arc::strong_count(&self.app) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Blocking tasks (history writes, session sweeps) may still hold the store for a
        // moment after their async owner was aborted: wait until it is really closed, so the
        // data directory's lock is free when this returns (a restart in the same process).
        let store = Arc::downgrade(&self.app.store);
        drop(self.app);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!("tokengate stopped");
    }
}
