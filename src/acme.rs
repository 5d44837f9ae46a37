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
//! Known gap: rustls-acme's HTTP client sets no timeout on its requests, so a CA that accepts
//! a connection and never answers stalls the state machine (nothing else waits on it). A
//! watchdog that rebuilds the state when no event arrives by the renewal or backoff deadline
//! plus the longest order is the planned fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use futures_core::Stream;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::caches::DirCache;
use rustls_acme::{CertCache as _, EventOk, ResolvesServerCertAcme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::AcmeConfig;

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
}

/// The ACME-managed certificate of a running server.
pub struct Acme {
    server_config: Arc<ServerConfig>,
    /// Whether the latest order failed (cleared by the next certificate issued).
    failing: Arc<AtomicBool>,
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
        let acme = rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, client)
            .contact(cfg.contact.iter())
            .directory(&cfg.directory)
            .cache(DirCache::new(cfg.cache.clone()));
        let state = acme.state();

        let paths = crate::tls::ensure_cert(None, data_dir)?;
        let placeholder = Arc::new(load_certified_key(&paths.cert, &paths.key, &provider)?);
        let resolver = Arc::new(Resolver {
            acme: state.resolver(),
            placeholder,
        });
        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
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
        let failing = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(drive(state, cache, reporting, failing.clone()));
        Ok((
            Self {
                server_config: Arc::new(server_config),
                failing,
            },
            task,
        ))
    }

    /// Several replicas sharing one certificate through the store (`acme_shared`) build
    /// their own configuration and driving task.
    pub(crate) fn shared(server_config: Arc<ServerConfig>, failing: Arc<AtomicBool>) -> Self {
        Self {
            server_config,
            failing,
        }
    }

    /// True while the latest order failed: the certificate in force (or the placeholder) is
    /// still served, and the order is being retried (`/tokengate/ready` says "degraded").
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
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
        // The cache file is the private key's PEM followed by the chain's.
        let pem = self
            .cache
            .load_cert(&self.domains, &self.directory)
            .await
            .ok()??;
        let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        u64::try_from(cert.validity().not_after.timestamp()).ok()
    }
}

/// Runs the ACME state machine for the server's life (aborted at shutdown). Its stream never
/// ends: after a certificate is deployed it sleeps until the renewal is due; after a failed
/// order it sleeps 1, 2, 4 … seconds (at most 2^16) and orders again.
pub(crate) async fn drive(
    state: rustls_acme::AcmeState<std::io::Error>,
    cache: Cached,
    reporting: Reporting,
    failing: Arc<AtomicBool>,
) {
    let mut state = Box::pin(state);
    loop {
        let event = std::future::poll_fn(|cx| state.as_mut().poll_next(cx)).await;
        let Some(event) = event else { return };
        match event {
            Ok(EventOk::DeployedCachedCert) => {
                tracing::info!("serving the ACME certificate from the cache");
            }
            Ok(EventOk::DeployedNewCert) => {
                reporting.metrics.acme_order(true);
                failing.store(false, Ordering::Relaxed);
                tracing::info!("the ACME CA issued a new certificate; serving it");
            }
            Ok(EventOk::CertCacheStore) => {
                let end = cache.not_after().await;
                if let Some(end) = end {
                    reporting.metrics.certificate_expires(end);
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
                failing.store(true, Ordering::Relaxed);
                // The error is the CA's problem document or a transport error: no secret.
                tracing::warn!(error = %e, "ordering an ACME certificate failed; the certificate in force stays served and the order is retried with backoff");
            }
            Err(e) => {
                tracing::warn!(error = %e, "ACME certificate cache problem");
            }
        }
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
    acme: Arc<ResolvesServerCertAcme>,
    placeholder: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if rustls_acme::is_tls_alpn_challenge(&hello) {
            // Nothing but the challenge certificate for the validator (RFC 8737 §3).
            return self.acme.resolve(hello);
        }
        Some(
            self.acme
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
