//! `[tls] acme` on several replicas sharing one PostgreSQL store: one replica orders and
//! renews, every replica serves the same certificate, and any replica answers the CA's
//! TLS-ALPN-01 validation (RFC 8737), wherever the load balancer sends it.
//!
//! - **The cache is the store.** [`StoreCache`] is rustls-acme's account and certificate cache
//!   kept as `tg_acme` entries (`Store::acme_entry`), each sealed with the server key
//!   (AES-256-GCM, bound to its entry's name, as TOTP secrets are): the account key and the
//!   certificate's key are secrets. A single node (sled) keeps the cache directory instead:
//!   nothing is shared there, and the directory sits beside the server key under the same
//!   0700 data directory, so sealing would add nothing.
//! - **The leader orders.** Only the replica holding the store's leadership (`Store::leader`,
//!   the lock the other singleton work goes by) runs rustls-acme's state machine, from the
//!   shared cache: a new leader finds the certificate there and orders only when it is due.
//!   Leadership is checked every [`LEADERSHIP_CHECK`]; a replica that loses it stops the
//!   state machine at once. The state machine runs under `acme`'s driving task, so each order
//!   is bounded by `tls.acme.order_timeout` as on a single node: a stalled one is replaced by
//!   a fresh one reading the shared cache, while the certificate in force stays served.
//! - **Readiness.** The leader reports as a single node does (its driving task's view). A
//!   replica that does not lead orders nothing, so it reports on what it serves: "pending"
//!   until it has loaded a certificate from the store, "expired" past that certificate's end,
//!   "ok" otherwise; a failing renewal is the leader's to report ("degraded").
//! - **Every replica serves the stored certificate.** It is read at start, again when another
//!   replica writes an ACME entry (the store's change channel), and every [`REREAD`] in case a
//!   notification was missed, and swapped into [`SharedResolver`].
//! - **The challenge is published.** rustls-acme keeps the TLS-ALPN-01 challenge certificate
//!   in its own resolver and offers no way to read it, but it sets it before it asks the CA to
//!   validate, and each of its requests to the CA is a new TLS connection. The leader's ACME
//!   client therefore verifies the CA through [`PublishingVerifier`], which first looks (with
//!   an in-memory `acme-tls/1` handshake against rustls-acme's resolver) for a challenge and
//!   stores its `acmeIdentifier` digest: the entry is committed before the CA can validate.
//!   Every replica makes its own challenge certificate from the digest (the CA checks only the
//!   name and the digest, RFC 8737 §3), keeps it in memory (refreshed by notification), and on
//!   a validation for one of its names it does not hold yet reads the store (rare, throttled).
//!
//! The store cache is `cache`; the challenge's publication (the verifier, the in-memory
//! probe) is `publish`; this file is the leader's and every replica's loop and the resolver.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_acme::ResolvesServerCertAcme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::acme::{ACME_TLS_ALPN, AcmeError, Reporting, Status, SwapResolvers};
use crate::config::AcmeConfig;
use crate::secret::Secrets;
use crate::store::Store;

mod cache;
mod publish;
use cache::StoreCache;
use publish::{Publisher, PublishingVerifier};

/// How often a replica checks whether it leads (the store's listener tries for the lock
/// every half second).
pub const LEADERSHIP_CHECK: Duration = Duration::from_millis(500);
/// How often every replica reads the shared certificate again, whatever it heard.
pub const REREAD: Duration = Duration::from_secs(60);
/// At most one store read per this interval for a validation this replica holds no
/// challenge for (a validator's name it serves, never any name a client sends).
const MISS_READ_EVERY: Duration = Duration::from_millis(250);
/// id-pe-acmeIdentifier (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Sealed(#[from] crate::secret::SecretError),
    #[error("the stored ACME {0} is not usable: {1}")]
    Corrupt(&'static str, String),
}

impl From<SharedError> for std::io::Error {
    fn from(e: SharedError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// The store and the key that seals what the replicas share.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
}

/// An entry's name: `kind` and a digest of what rustls-acme keys it by (the names or contacts,
/// then the directory), as its cache directory names its files.
fn entry_key(kind: &str, parts: &[String], directory: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(directory.as_bytes());
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{kind}:{hex}")
}

fn cert_key(domains: &[String], directory: &str) -> String {
    entry_key("cert", domains, directory)
}

fn challenge_key(domain: &str) -> String {
    format!("challenge:{domain}")
}

impl Shared {
    fn read_sealed(&self, key: &str) -> Result<Option<Vec<u8>>, SharedError> {
        match self.store.acme_entry(key)? {
            Some(sealed) => Ok(Some(self.secrets.open(key, &sealed)?)),
            None => Ok(None),
        }
    }

    fn write_sealed(&self, key: &str, plain: &[u8]) -> Result<(), SharedError> {
        let sealed = self.secrets.seal(key, plain)?;
        Ok(self.store.put_acme_entry(key, Some(&sealed))?)
    }

    /// The stored certificate for `cfg` (rustls-acme's PEM: the key, then the chain).
    fn stored_pem(&self, cfg: &AcmeConfig) -> Result<Option<Vec<u8>>, SharedError> {
        self.read_sealed(&cert_key(&cfg.domains, &cfg.directory))
    }

    /// The challenge digest the leader published for `domain`.
    fn challenge(&self, domain: &str) -> Result<Option<[u8; 32]>, SharedError> {
        let Some(v) = self.store.acme_entry(&challenge_key(domain))? else {
            return Ok(None);
        };
        <[u8; 32]>::try_from(v.as_slice())
            .map(Some)
            .map_err(|_| SharedError::Corrupt("challenge", format!("{} bytes", v.len())))
    }
}

/// The certificate chain stored for `cfg` (leaf first), if there is one: what the replicas on
/// this store serve (`tokengate tls status`).
pub fn stored_chain(
    shared: &Shared,
    cfg: &AcmeConfig,
) -> Result<Option<Vec<CertificateDer<'static>>>, SharedError> {
    let Some(pem) = shared.stored_pem(cfg)? else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SharedError::Corrupt("certificate", e.to_string()))?;
    Ok(Some(chain).filter(|c| !c.is_empty()))
}

/// rustls-acme's cached PEM (the private key, then the chain) as a servable key.
fn certified_key(pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, SharedError> {
    let bad = |e: &dyn std::fmt::Display| SharedError::Corrupt("certificate", e.to_string());
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(&e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| bad(&e))
}

/// A TLS-ALPN-01 challenge certificate for `domain` carrying `digest` (RFC 8737 §3): a fresh
/// self-signed certificate with the name and the critical acmeIdentifier extension.
fn challenge_cert(
    domain: &str,
    digest: &[u8; 32],
    provider: &CryptoProvider,
) -> Option<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).ok()?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).ok()?;
    let cert = params.self_signed(&key).ok()?;
    let key_der = PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    ));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension it does not know.
    let key = provider.key_provider.load_private_key(key_der).ok()?;
    Some(CertifiedKey::new(vec![cert.der().clone()], key))
}

/// The store, without printing it.
struct SharedDebug(Shared);

impl std::fmt::Debug for SharedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Serves the shared certificate (the placeholder until there is one) and the challenge
/// certificate to the CA's validator, on every replica.
#[derive(Debug)]
pub(crate) struct SharedResolver {
    shared: SharedDebug,
    provider: Arc<CryptoProvider>,
    domains: Vec<String>,
    placeholder: Arc<CertifiedKey>,
    /// The certificate read from the store.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// While this replica leads: rustls-acme's resolver (the certificate it deployed, the
    /// challenge it is being validated for).
    leading: RwLock<Option<Arc<ResolvesServerCertAcme>>>,
    /// The challenges the leader published, by name: the digest and the certificate made
    /// from it. At most one per configured name.
    challenges: RwLock<HashMap<String, Challenge>>,
    /// When a validation this replica held no challenge for last read the store; its lock
    /// makes validators arriving together wait for one read.
    last_miss_read: Mutex<Option<Instant>>,
}

/// A published challenge: its acmeIdentifier digest and the certificate made from it.
type Challenge = ([u8; 32], Arc<CertifiedKey>);

impl SharedResolver {
    fn set_current(&self, ck: Arc<CertifiedKey>) {
        *write(&self.current) = Some(ck);
    }

    /// Makes the challenge certificate for `domain` from the published digest (`None`: the
    /// challenge is over), unless it is the one held already.
    fn set_challenge(&self, domain: &str, digest: Option<[u8; 32]>) {
        let mut map = write(&self.challenges);
        match digest {
            None => {
                map.remove(domain);
            }
            Some(d) if map.get(domain).is_some_and(|(held, _)| *held == d) => {}
            Some(d) => match challenge_cert(domain, &d, &self.provider) {
                Some(ck) => {
                    map.insert(domain.to_owned(), (d, Arc::new(ck)));
                }
                None => tracing::warn!(domain, "cannot make the TLS-ALPN-01 challenge certificate"),
            },
        }
    }

    /// A validation for one of our names with no challenge in memory: the leader may have
    /// published it a moment ago and the notification not arrived yet.
    fn challenge_from_store(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        if !self.domains.iter().any(|d| d == domain) {
            return None;
        }
        // Validators come several at once (one per vantage point): one reads, the others
        // wait for it and take what it found.
        let mut last = self
            .last_miss_read
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let held = || read(&self.challenges).get(domain).map(|(_, ck)| ck.clone());
        if let Some(ck) = held() {
            return Some(ck);
        }
        if last.is_some_and(|t| t.elapsed() < MISS_READ_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        match self.shared.0.challenge(domain) {
            Ok(digest) => self.set_challenge(domain, digest),
            Err(e) => tracing::warn!(error = %e, "cannot read the published ACME challenge"),
        }
        held()
    }
}

impl ResolvesServerCert for SharedResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let leading = read(&self.leading).clone();
        if rustls_acme::is_tls_alpn_challenge(&hello) {
            // Nothing but a challenge certificate for the validator (RFC 8737 §3).
            let name = hello.server_name()?.to_owned();
            if let Some(ck) = leading.and_then(|acme| acme.resolve(hello)) {
                return Some(ck);
            }
            let held = read(&self.challenges).get(&name).map(|(_, ck)| ck.clone());
            return held.or_else(|| self.challenge_from_store(&name));
        }
        leading
            .and_then(|acme| acme.resolve(hello))
            .or_else(|| read(&self.current).clone())
            .or_else(|| Some(self.placeholder.clone()))
    }
}

/// The leader's state machines as the driving task's watchdog replaces a stalled one
/// (`acme::drive`): the fresh one answers the validations and is the one whose challenge is
/// published. Serving needs no hand-over: until the fresh one has deployed the stored
/// certificate, the shared resolver serves the same certificate from the store.
struct LeaderResolvers {
    resolver: Arc<SharedResolver>,
    publisher: Arc<Publisher>,
}

impl SwapResolvers for LeaderResolvers {
    fn replace(&self, fresh: Arc<ResolvesServerCertAcme>) {
        *write(&self.publisher.acme) = Some(fresh.clone() as Arc<dyn ResolvesServerCert>);
        // Under the lock, and only while this replica leads: once leadership is lost the
        // task is being aborted and must not lead again.
        if let Some(leading) = write(&self.resolver.leading).as_mut() {
            *leading = fresh;
        }
    }

    fn settled(&self) {}
}

/// What the replica task needs.
struct Replica {
    cfg: AcmeConfig,
    shared: Shared,
    provider: Arc<CryptoProvider>,
    roots: Arc<rustls::RootCertStore>,
    resolver: Arc<SharedResolver>,
    reporting: Reporting,
    /// Readiness: the driving task's while this replica leads; otherwise the end of the
    /// certificate loaded from the store (none: pending).
    status: Arc<Status>,
}

/// The end (Unix seconds) of a certificate served, for readiness: `u64::MAX` when it cannot be
/// read (as `acme::Status` has it).
fn served_until(ck: &CertifiedKey) -> u64 {
    ck.end_entity_cert()
        .ok()
        .and_then(|c| crate::tls::CertInfo::of(c))
        .map_or(u64::MAX, |info| info.not_after)
}

/// Aborts the leader's state machine when dropped (leadership lost, or the server stopping).
struct Leading(tokio::task::JoinHandle<()>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Replica {
    /// Reads the certificate and the challenges from the store and serves them.
    async fn reload(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.reload_blocking()).await;
    }

    fn reload_blocking(&self) {
        match self.shared.stored_pem(&self.cfg) {
            Ok(Some(pem)) => match certified_key(&pem, &self.provider) {
                Ok(ck) => {
                    let leaf = ck.end_entity_cert().ok().map(|c| c.to_vec());
                    let held = read(&self.resolver.current)
                        .as_ref()
                        .and_then(|c| c.end_entity_cert().ok().map(|c| c.to_vec()));
                    if leaf != held {
                        if let Some(end) = leaf.as_deref().and_then(crate::tls::CertInfo::of) {
                            self.reporting.metrics.certificate_expires(end.not_after);
                        }
                        self.status
                            .served_until
                            .store(served_until(&ck), Ordering::Relaxed);
                        self.resolver.set_current(Arc::new(ck));
                        tracing::info!("serving the ACME certificate shared through the store");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the shared ACME certificate is not usable"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the shared ACME certificate"),
        }
        for domain in &self.cfg.domains {
            match self.shared.challenge(domain) {
                Ok(digest) => self.resolver.set_challenge(domain, digest),
                Err(e) => tracing::warn!(error = %e, "cannot read the published ACME challenge"),
            }
        }
    }

    /// Starts rustls-acme's state machine on the shared cache: it deploys the stored
    /// certificate if there is one and orders only when none is there or renewal is due.
    fn lead(&self) -> Result<Leading, rustls::Error> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let publisher = Arc::new(Publisher {
            shared: SharedDebug(self.shared.clone()),
            domains: self.cfg.domains.clone(),
            provider: self.provider.clone(),
            acme: RwLock::new(None),
            published: Mutex::default(),
        });
        // The publishing verifier delegates every check to WebPKI verification.
        let mut client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PublishingVerifier {
                inner: webpki,
                publisher: publisher.clone(),
            }))
            .with_no_client_auth();
        // A resumed session skips certificate verification, and with it the publishing: each
        // connection to the CA makes a full handshake.
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);
        let (cfg, shared, resolver, provider) = (
            self.cfg.clone(),
            self.shared.clone(),
            self.resolver.clone(),
            self.provider.clone(),
        );
        let cache = move || StoreCache {
            shared: shared.clone(),
            resolver: resolver.clone(),
            provider: provider.clone(),
        };
        let cached =
            crate::acme::Cached::new(Box::new(cache()), &self.cfg.domains, &self.cfg.directory);
        // The first state machine, and each the watchdog puts in place of a stalled one.
        let fresh = move || {
            rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, client.clone())
                .contact(cfg.contact.iter())
                .directory(&cfg.directory)
                .cache(cache())
                .state()
        };
        let state = fresh();
        // Set before the state is first polled, so before any connection to the CA.
        *write(&publisher.acme) = Some(state.resolver() as Arc<dyn ResolvesServerCert>);
        *write(&self.resolver.leading) = Some(state.resolver());
        let watchdog = crate::acme::Watchdog {
            cfg: self.cfg.clone(),
            fresh: Box::new(fresh),
            resolvers: Arc::new(LeaderResolvers {
                resolver: self.resolver.clone(),
                publisher,
            }),
        };
        Ok(Leading(tokio::spawn(crate::acme::drive(
            state,
            cached,
            self.reporting.clone(),
            self.status.clone(),
            watchdog,
        ))))
    }

    /// Follows leadership, the store's notifications and the periodic re-read, for the
    /// server's life (aborted at shutdown, which stops the state machine with it).
    async fn run(self: Arc<Self>, changed: Arc<tokio::sync::Notify>) {
        let mut leading: Option<Leading> = None;
        let mut check = tokio::time::interval(LEADERSHIP_CHECK);
        let mut reread = tokio::time::interval(REREAD);
        reread.tick().await; // the first tick is now: read at start already
        loop {
            tokio::select! {
                _ = changed.notified() => self.reload().await,
                _ = reread.tick() => self.reload().await,
                _ = check.tick() => match (self.shared.store.leader(), leading.is_some()) {
                    (true, false) => match self.lead() {
                        Ok(l) => {
                            tracing::info!("this replica now orders and renews the ACME certificate");
                            leading = Some(l);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot start the ACME client"),
                    },
                    (false, true) => {
                        leading = None;
                        *write(&self.resolver.leading) = None;
                        // From now on it reports as a replica that does not lead: on the
                        // certificate it serves from the store.
                        self.status.failing.store(false, Ordering::Relaxed);
                        let until = read(&self.resolver.current).as_deref().map_or(0, served_until);
                        self.status.served_until.store(until, Ordering::Relaxed);
                        tracing::info!("this replica no longer orders the ACME certificate; it serves the one in the store");
                    }
                    _ => {}
                },
            }
        }
    }
}

/// Starts `[tls] acme` on a replica of a shared store: the resolver every listener uses, the
/// certificate in the store served at once, and the task that follows leadership.
pub async fn start(
    cfg: &AcmeConfig,
    data_dir: &Path,
    reporting: Reporting,
    shared: Shared,
) -> Result<(crate::acme::Acme, tokio::task::JoinHandle<()>), AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = crate::tls::client_roots(cfg.ca_roots.as_deref()).map_err(AcmeError::Roots)?;
    let paths = crate::tls::ensure_cert(None, data_dir)?;
    let placeholder = Arc::new(crate::acme::load_certified_key(
        &paths.cert,
        &paths.key,
        &provider,
    )?);
    let resolver = Arc::new(SharedResolver {
        shared: SharedDebug(shared.clone()),
        provider: provider.clone(),
        domains: cfg.domains.clone(),
        placeholder,
        current: RwLock::new(None),
        leading: RwLock::new(None),
        challenges: RwLock::new(HashMap::new()),
        last_miss_read: Mutex::new(None),
    });
    let mut server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    // As with a single node (acme.rs): acme-tls/1 only for a client offering nothing else.
    server_config.alpn_protocols =
        vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];

    let status = Arc::new(Status::default());
    let replica = Arc::new(Replica {
        cfg: cfg.clone(),
        shared,
        provider,
        roots: Arc::new(roots),
        resolver,
        reporting,
        status: status.clone(),
    });
    // Heard before the first read, so nothing written in between is missed.
    let changed = Arc::new(tokio::sync::Notify::new());
    let tell = changed.clone();
    replica
        .shared
        .store
        .observe_acme(Arc::new(move |_key: &str| tell.notify_one()));
    replica.reload().await;
    if read(&replica.resolver.current).is_none() {
        tracing::warn!(
            domains = ?cfg.domains,
            directory = %cfg.directory,
            "no ACME certificate in the store yet: serving a self-signed placeholder until the leader has one issued"
        );
    }
    // Every replica says so at start when the directory cannot be used (the configuration is
    // the same on all of them), as a single node does.
    crate::acme::spawn_directory_check(cfg);
    let task = tokio::spawn(replica.run(changed));
    Ok((
        crate::acme::Acme::shared(Arc::new(server_config), status),
        task,
    ))
}

#[cfg(test)]
mod tests {
    use super::publish::{acme_identifier, probe_challenge};
    use super::*;

    #[test]
    fn a_challenge_certificate_carries_its_digest_and_the_probe_reads_it_back() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let digest = [7u8; 32];
        let ck = challenge_cert("api.example.test", &digest, &provider).expect("made");
        let leaf = ck.end_entity_cert().unwrap();
        assert_eq!(acme_identifier(leaf), Some(digest));

        // Asked as the validator asks, a resolver holding it shows it; one without shows none.
        let holding: Arc<dyn ResolvesServerCert> =
            Arc::new(rustls::sign::SingleCertAndKey::from(ck));
        assert_eq!(
            probe_challenge(&holding, "api.example.test", &provider),
            Some(digest)
        );
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let empty: Arc<dyn ResolvesServerCert> =
            rustls_acme::AcmeConfig::new_with_client_config(["api.example.test"], Arc::new(client))
                .state()
                .resolver();
        assert_eq!(probe_challenge(&empty, "api.example.test", &provider), None);
    }
}
