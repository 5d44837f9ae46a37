//! Certificates that manage themselves (`[tls] acme`): the listener's certificate is ordered
//! from an ACME CA (RFC 8555) and renewed before it ends, with the TLS-ALPN-01 challenge
//! (RFC 8737) answered by the listener itself, so no port-80 helper is needed.
//!
//! The ACME client, its account and order state machine, the challenge certificate and the
//! renewal schedule (when two thirds of the certificate's lifetime have passed; failed orders
//! retried with exponential backoff) are the `rustls-acme` crate's. This module owns what is
//! around it: the cache directory (account key and certificates, created 0700, so a restart
//! does not order again), the trust roots for the CA, the self-signed placeholder served until
//! the first certificate exists, the rustls server configuration both listeners share, and the
//! task that drives the state machine and reports what it does (logs, metrics, audit).
//!
//! A failed renewal never takes the listener down: the certificate in force is served until a
//! new one replaces it.
//!
//! The check of the CA's directory before the first order is `directory`.
//!
//! Every wait on the CA is bounded. rustls-acme's HTTP client sets no timeout on its requests
//! and takes no client or timeout from its user, so a CA that accepts a connection and never
//! answers would stall its state machine forever. The driving task therefore knows when the
//! next event is due (the renewal point, or the end of the backoff after a failure, or at once)
//! and allows one order `tls.acme.order_timeout` past it; when nothing has come by then it
//! counts a failed order, drops the state machine (and with it the stalled connection) and
//! builds a fresh one from the cache. Meanwhile, and until the fresh one has loaded it, the
//! certificate in force stays served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_core::Stream;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::caches::DirCache;
use rustls_acme::{CertCache as _, EventOk, ResolvesServerCertAcme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::AcmeConfig;

mod directory;
pub use directory::{DIRECTORY_TIMEOUT, check_directory};

/// The ALPN protocol id of a TLS-ALPN-01 validation connection (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = rustls_acme::acme::ACME_TLS_ALPN_NAME;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot create the ACME cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read tls.acme.ca_roots: {0}")]
    Roots(String),
    #[error("cannot make the placeholder certificate: {0}")]
    Placeholder(#[from] crate::tls::TlsError),
    #[error("cannot load the placeholder certificate {path}: {reason}")]
    PlaceholderLoad { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls.acme.directory {url}: {reason}")]
    Directory { url: String, reason: String },
}

/// The ACME-managed certificate of a running server.
pub struct Acme {
    server_config: Arc<ServerConfig>,
    status: Arc<Status>,
}

/// What the driving task has seen, for readiness; on a replica that does not lead
/// (`acme_shared`), the certificate it loaded from the store.
#[derive(Default)]
pub(crate) struct Status {
    /// Whether the latest order failed (cleared by the next certificate issued).
    pub(crate) failing: AtomicBool,
    /// The end (Unix seconds) of the certificate served; 0: none yet (the placeholder);
    /// `u64::MAX`: one is served but its end is not known yet.
    pub(crate) served_until: AtomicU64,
}

/// Where the ACME certificate stands, as `/tokengate/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No certificate from the CA yet: the self-signed placeholder is served.
    Pending,
    /// A certificate from the CA is served and the latest order (if any) succeeded.
    Ok,
    /// A valid certificate is served but the latest order or renewal failed.
    Degraded,
    /// The certificate served has ended (renewals kept failing).
    Expired,
}

impl Readiness {
    /// The word `/tokengate/ready` says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Expired => "expired",
        }
    }

    /// Whether a load balancer should send this replica traffic: not while clients that
    /// check certificates would refuse the one it serves.
    pub fn serves_trusted(self) -> bool {
        matches!(self, Self::Ok | Self::Degraded)
    }
}

/// What the driving task reports to: the server's metrics and audit trail.
#[derive(Clone)]
pub struct Reporting {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub audit: Option<Arc<crate::audit::Audit>>,
}

impl Acme {
    /// Prepares the cache and the placeholder and spawns the task that loads the cached
    /// certificate or orders one, then renews it. `data_dir` holds the placeholder
    /// (`tls/cert.pem`, the generated self-signed pair).
    pub async fn start(
        cfg: &AcmeConfig,
        data_dir: &Path,
        reporting: Reporting,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), AcmeError> {
        create_private_dir(&cfg.cache)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = crate::tls::client_roots(cfg.ca_roots.as_deref()).map_err(AcmeError::Roots)?;
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let state = new_state(cfg, client.clone());

        let paths = crate::tls::ensure_cert(None, data_dir)?;
        let placeholder = Arc::new(load_certified_key(&paths.cert, &paths.key, &provider)?);
        let resolver = Arc::new(Resolver::new(state.resolver(), placeholder));
        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // acme-tls/1 is chosen only by a client that offers nothing else: the CA's validator
        // (`is_tls_alpn_challenge`); the connection then ends after the handshake (conn.rs).
        server_config.alpn_protocols =
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];

        let cache = Cached::new(
            Box::new(DirCache::new(cfg.cache.clone())),
            &cfg.domains,
            &cfg.directory,
        );
        match cache.not_after().await {
            Some(end) => reporting.metrics.certificate_expires(end),
            None => tracing::warn!(
                domains = ?cfg.domains,
                directory = %cfg.directory,
                "no ACME certificate in the cache yet: serving a self-signed placeholder until the CA issues the first one"
            ),
        }
        spawn_directory_check(cfg);
        let status = Arc::new(Status::default());
        let fresh_cfg = cfg.clone();
        let watchdog = Watchdog {
            cfg: cfg.clone(),
            fresh: Box::new(move || new_state(&fresh_cfg, client.clone())),
            resolvers: resolver,
        };
        let task = tokio::spawn(drive(state, cache, reporting, status.clone(), watchdog));
        Ok((
            Self {
                server_config: Arc::new(server_config),
                status,
            },
            task,
        ))
    }

    /// Several replicas sharing one certificate through the store (`acme_shared`) build
    /// their own configuration and driving task, and keep `status` themselves.
    pub(crate) fn shared(server_config: Arc<ServerConfig>, status: Arc<Status>) -> Self {
        Self {
            server_config,
            status,
        }
    }

    /// True while the latest order failed: the certificate in force (or the placeholder) is
    /// still served, and the order is being retried.
    pub fn failing(&self) -> bool {
        self.status.failing.load(Ordering::Relaxed)
    }

    /// Where the certificate stands (`/tokengate/ready`).
    pub fn readiness(&self) -> Readiness {
        match self.status.served_until.load(Ordering::Relaxed) {
            0 => Readiness::Pending,
            end if end <= crate::now_secs() => Readiness::Expired,
            _ if self.failing() => Readiness::Degraded,
            _ => Readiness::Ok,
        }
    }

    /// The rustls configuration of both listeners while ACME is on.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }
}

/// Reads back the certificate in the cache (for its end date): the cache directory, or the
/// store shared by several replicas (`acme_shared`).
pub(crate) struct Cached {
    cache: Box<dyn rustls_acme::CertCache<EC = std::io::Error>>,
    domains: Vec<String>,
    directory: String,
}

impl Cached {
    pub(crate) fn new(
        cache: Box<dyn rustls_acme::CertCache<EC = std::io::Error>>,
        domains: &[String],
        directory: &str,
    ) -> Self {
        Self {
            cache,
            domains: domains.to_vec(),
            directory: directory.to_owned(),
        }
    }

    /// The end (Unix seconds) of the cached certificate, if there is one that can be read.
    async fn not_after(&self) -> Option<u64> {
        self.validity().await.map(|(_, end)| end)
    }

    /// The start and end (Unix seconds) of the cached certificate, if one can be read.
    async fn validity(&self) -> Option<(u64, u64)> {
        // The cache file is the private key's PEM followed by the chain's.
        let pem = self
            .cache
            .load_cert(&self.domains, &self.directory)
            .await
            .ok()??;
        let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let v = cert.validity();
        Some((
            u64::try_from(v.not_before.timestamp()).ok()?,
            u64::try_from(v.not_after.timestamp()).ok()?,
        ))
    }
}

/// Checks the directory in the background at start: one that cannot be used is worth an error
/// then, not only a warning per failed order; it is not fatal: a CA outage must not keep the
/// listener down.
pub(crate) fn spawn_directory_check(cfg: &AcmeConfig) {
    let check = cfg.clone();
    tokio::spawn(async move {
        if let Err(e) = check_directory(&check).await {
            tracing::error!(
                "{e}; the ACME CA cannot be used: tokengate keeps serving the certificate in force (or its placeholder) and retries"
            );
        }
    });
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// rustls-acme's state machine for `cfg`, loading the account and certificate from the cache.
fn new_state(
    cfg: &AcmeConfig,
    client: Arc<rustls::ClientConfig>,
) -> rustls_acme::AcmeState<std::io::Error> {
    rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, client)
        .contact(cfg.contact.iter())
        .directory(&cfg.directory)
        .cache(DirCache::new(cfg.cache.clone()))
        .state()
}

/// What the driving task needs to replace a stalled state machine with a fresh one.
pub(crate) struct Watchdog {
    /// `order_timeout`, and the directory for the log.
    pub(crate) cfg: AcmeConfig,
    /// Makes a state machine like the first: the same client, the same cache.
    pub(crate) fresh: Box<dyn Fn() -> rustls_acme::AcmeState<std::io::Error> + Send + Sync>,
    /// Where the state machines' resolvers answer the listener.
    pub(crate) resolvers: Arc<dyn SwapResolvers>,
}

/// The listener's view of the driving task's state machine, which the watchdog may replace.
pub(crate) trait SwapResolvers: Send + Sync {
    /// A fresh state machine's resolver takes over the challenges.
    fn replace(&self, fresh: Arc<ResolvesServerCertAcme>);
    /// The newest state machine deployed a certificate: it serves from now on.
    fn settled(&self);
}

/// When the next event of the state machine is due, from the one just seen: it wakes for the
/// renewal after a certificate is deployed, after its backoff after a failed order
/// (`backoff` is the number of failures in a row before this one, capped as rustls-acme caps
/// it: 1, 2, 4 … 2^16 seconds) and at once otherwise. `None`: not known (the certificate's
/// lifetime cannot be read back), so no deadline until the next event.
fn next_due(
    event: &rustls_acme::Event<std::io::Error, std::io::Error>,
    validity: Option<(u64, u64)>,
    backoff: u32,
    now: u64,
) -> Option<Duration> {
    match event {
        Ok(EventOk::DeployedCachedCert | EventOk::CertCacheStore) => validity
            .map(|(start, end)| Duration::from_secs(renewal_due(start, end).saturating_sub(now))),
        Err(rustls_acme::EventError::Order(_)) => Some(Duration::from_secs(1 << backoff.min(16))),
        // The new certificate is served but could not be stored: the state machine sleeps until
        // its renewal, which cannot be read back. A deadline here would order again and again.
        Err(rustls_acme::EventError::CertCacheStore(_)) => None,
        // After a new certificate, its cache write comes next; after the account's, the order.
        _ => Some(Duration::ZERO),
    }
}

/// Runs the ACME state machine for the server's life (aborted at shutdown). Its stream never
/// ends: after a certificate is deployed it sleeps until the renewal is due; after a failed
/// order it sleeps 1, 2, 4 … seconds (at most 2^16) and orders again. When nothing arrives by
/// the time the next event is due plus `order_timeout`, the state machine is replaced (module
/// docs). The leader of several replicas (`acme_shared`) runs it too, on the shared cache.
pub(crate) async fn drive(
    state: rustls_acme::AcmeState<std::io::Error>,
    cache: Cached,
    reporting: Reporting,
    status: Arc<Status>,
    watchdog: Watchdog,
) {
    let mut state = Box::pin(state);
    // Failures in a row, as the state machine counts them for its backoff.
    let mut backoff = 0u32;
    // At start: the cache is read and, without a certificate, the first order placed.
    let mut deadline = Some(tokio::time::Instant::now() + watchdog.cfg.order_timeout);
    loop {
        let stalled = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = std::future::poll_fn(|cx| state.as_mut().poll_next(cx)) => event,
            () = stalled => {
                reporting.metrics.acme_order(false);
                status.failing.store(true, Ordering::Relaxed);
                tracing::warn!(
                    directory = %watchdog.cfg.directory,
                    timeout = ?watchdog.cfg.order_timeout,
                    "the ACME CA did not complete an order within tls.acme.order_timeout; the certificate in force stays served and the ACME client starts again from its cache"
                );
                let fresh = (watchdog.fresh)();
                watchdog.resolvers.replace(fresh.resolver());
                state = Box::pin(fresh);
                backoff = 0;
                deadline = Some(tokio::time::Instant::now() + watchdog.cfg.order_timeout);
                continue;
            }
        };
        let Some(event) = event else { return };
        let mut validity = None;
        match &event {
            Ok(EventOk::DeployedCachedCert) => {
                watchdog.resolvers.settled();
                validity = cache.validity().await;
                status
                    .served_until
                    .store(validity.map_or(u64::MAX, |(_, end)| end), Ordering::Relaxed);
                tracing::info!("serving the ACME certificate from the cache");
            }
            Ok(EventOk::DeployedNewCert) => {
                watchdog.resolvers.settled();
                backoff = 0;
                reporting.metrics.acme_order(true);
                status.failing.store(false, Ordering::Relaxed);
                // Its end is read back from the cache once it is stored (the next event).
                status.served_until.store(u64::MAX, Ordering::Relaxed);
                tracing::info!("the ACME CA issued a new certificate; serving it");
            }
            Ok(EventOk::CertCacheStore) => {
                validity = cache.validity().await;
                let end = validity.map(|(_, end)| end);
                if let Some(end) = end {
                    reporting.metrics.certificate_expires(end);
                    status.served_until.store(end, Ordering::Relaxed);
                }
                if let Some(audit) = reporting.audit.clone() {
                    let after = serde_json::json!({
                        "directory": cache.directory,
                        "not_after": end.map(|e| e.to_string()),
                    });
                    let target = cache.domains.join(",");
                    // The store may block (PostgreSQL): off the async workers.
                    let _ = tokio::task::spawn_blocking(move || {
                        audit.record(crate::audit::Entry {
                            actor: crate::audit::Actor::system(),
                            action: "tls.certificate_issued",
                            target,
                            changes: crate::audit::diff(None, Some(&after)),
                        })
                    })
                    .await;
                }
            }
            Ok(EventOk::AccountCacheStore) => {
                tracing::info!("created an ACME account key and stored it in the cache");
            }
            Err(rustls_acme::EventError::Order(e)) => {
                reporting.metrics.acme_order(false);
                status.failing.store(true, Ordering::Relaxed);
                // The error is the CA's problem document or a transport error: no secret.
                tracing::warn!(error = %e, "ordering an ACME certificate failed; the certificate in force stays served and the order is retried with backoff");
            }
            Err(e) => {
                tracing::warn!(error = %e, "ACME certificate cache problem");
            }
        }
        let due = next_due(&event, validity, backoff, crate::now_secs());
        if matches!(event, Err(rustls_acme::EventError::Order(_))) {
            backoff = (backoff + 1).min(16);
        }
        deadline = due.map(|due| tokio::time::Instant::now() + due + watchdog.cfg.order_timeout);
    }
}

/// The certificate chain in the cache for `cfg` (leaf first), if there is one: what a server
/// with this configuration serves at start (`tokengate tls status`).
pub async fn cached_chain(cfg: &AcmeConfig) -> Option<Vec<CertificateDer<'static>>> {
    let pem = DirCache::new(cfg.cache.clone())
        .load_cert(&cfg.domains, &cfg.directory)
        .await
        .ok()??;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
}

/// When rustls-acme renews a certificate valid from `not_before` to `not_after` (Unix seconds):
/// once two thirds of its lifetime have passed.
pub fn renewal_due(not_before: u64, not_after: u64) -> u64 {
    not_after - (not_after.saturating_sub(not_before)) / 3
}

/// Serves the ACME certificate, the TLS-ALPN-01 challenge certificate to the CA's validator,
/// and the placeholder while there is no certificate yet.
#[derive(Debug)]
struct Resolver {
    acme: RwLock<Resolvers>,
    placeholder: Arc<CertifiedKey>,
}

/// The state machines' resolvers: after the watchdog replaced a stalled one, the fresh one
/// answers the challenges at once but serves certificates only once it has deployed one, so
/// the certificate in force stays served meanwhile.
#[derive(Debug)]
struct Resolvers {
    serving: Arc<ResolvesServerCertAcme>,
    newest: Arc<ResolvesServerCertAcme>,
}

impl Resolver {
    fn new(acme: Arc<ResolvesServerCertAcme>, placeholder: Arc<CertifiedKey>) -> Self {
        Self {
            acme: RwLock::new(Resolvers {
                serving: acme.clone(),
                newest: acme,
            }),
            placeholder,
        }
    }
}

impl SwapResolvers for Resolver {
    fn replace(&self, fresh: Arc<ResolvesServerCertAcme>) {
        self.acme.write().unwrap_or_else(|e| e.into_inner()).newest = fresh;
    }

    fn settled(&self) {
        let mut acme = self.acme.write().unwrap_or_else(|e| e.into_inner());
        acme.serving = acme.newest.clone();
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = self.acme.read().unwrap_or_else(|e| e.into_inner());
        if rustls_acme::is_tls_alpn_challenge(&hello) {
            // Nothing but the challenge certificate for the validator (RFC 8737 §3).
            return acme.newest.resolve(hello);
        }
        Some(
            acme.serving
                .resolve(hello)
                .unwrap_or_else(|| self.placeholder.clone()),
        )
    }
}

pub(crate) fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, AcmeError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls_pki_types::pem::Error| AcmeError::PlaceholderLoad {
            path,
            reason: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(err(cert))?
        .collect::<Result<_, _>>()
        .map_err(err(cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(err(key))?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// The cache holds the account key and certificate keys: only the owner may enter it.
fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |source| AcmeError::Cache {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_event_is_due_at_the_renewal_after_the_backoff_or_at_once() {
        let now = 1_000_000;
        let deployed: rustls_acme::Event<std::io::Error, std::io::Error> =
            Ok(EventOk::DeployedCachedCert);
        // A 90-day certificate issued a day ago: renewed on day 60.
        let (start, end) = (now - 86_400, now - 86_400 + 90 * 86_400);
        assert_eq!(
            next_due(&deployed, Some((start, end)), 0, now),
            Some(Duration::from_secs(59 * 86_400))
        );
        // Past its renewal point: the order starts at once.
        assert_eq!(
            next_due(&deployed, Some((start, now - 1)), 0, now),
            Some(Duration::ZERO)
        );
        // Its lifetime unknown: no deadline.
        assert_eq!(next_due(&deployed, None, 0, now), None);
        let failed = Err(rustls_acme::EventError::Order(
            rustls_acme::OrderError::TooManyAttemptsAuth("a.example.com".into()),
        ));
        assert_eq!(
            next_due(&failed, None, 0, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            next_due(&failed, None, 3, now),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            next_due(&failed, None, 40, now),
            Some(Duration::from_secs(1 << 16))
        );
        let account: rustls_acme::Event<std::io::Error, std::io::Error> =
            Ok(EventOk::AccountCacheStore);
        assert_eq!(next_due(&account, None, 5, now), Some(Duration::ZERO));
        let unstored: rustls_acme::Event<std::io::Error, std::io::Error> = Err(
            rustls_acme::EventError::CertCacheStore(std::io::Error::other("disk full")),
        );
        assert_eq!(next_due(&unstored, None, 0, now), None);
    }
}
