//! The TLS listener's configuration: PEM certificate and key from the config, or a
//! self-signed certificate for localhost/127.0.0.1 generated into the data directory: valid for
//! a year, and made anew at start when it has less than 30 days left. ALPN offers h2 and
//! http/1.1. Also the trust store of tokengate's own TLS clients (the upstream connection and
//! the load tool).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot write the generated certificate into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not form a valid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Paths of a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when tokengate generated the pair itself.
    pub generated: bool,
}

/// Uses the configured pair, or generates (once) a self-signed one in `data_dir/tls/`.
pub fn ensure_cert(
    configured: Option<(&Path, &Path)>,
    data_dir: &Path,
) -> Result<CertPaths, TlsError> {
    if let Some((cert, key)) = configured {
        return Ok(CertPaths {
            cert: cert.to_owned(),
            key: key.to_owned(),
            generated: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    // Kept while it has more than 30 days left; one from an older tokengate that made them
    // valid until the year 4096 is replaced too.
    let fresh = cert.is_file()
        && key.is_file()
        && not_after(&cert).is_some_and(|end| end > now() + RENEW_BEFORE && end < now() + LONGEST);
    if !fresh {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Write { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        let params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        let key_pair = rcgen::KeyPair::generate()?;
        let mut params = params;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "tokengate self-signed (localhost)",
        );
        // A year, like a public CA's longest; started a day back for clocks that lag.
        let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_before = start;
        params.not_after = start + time::Duration::days(VALID_DAYS);
        if cert.is_file() {
            tracing::warn!(path = %cert.display(), "the generated certificate expires within 30 days, lasts longer than a year, or is unreadable; making a new one (clients that pinned the old one must trust the new one)");
        }
        let c = params.self_signed(&key_pair)?;
        write_private(&key, key_pair.serialize_pem().as_bytes()).map_err(write_err(&key))?;
        std::fs::write(&cert, c.pem()).map_err(write_err(&cert))?;
    }
    Ok(CertPaths {
        cert,
        key,
        generated: true,
    })
}

/// Days a generated certificate is valid, and how long before its end it is made anew.
const VALID_DAYS: i64 = 366;
const RENEW_BEFORE: u64 = 30 * 86_400;
const LONGEST: u64 = 400 * 86_400;

fn now() -> u64 {
    crate::now_secs()
}

/// The end of the first certificate in a PEM file (Unix seconds), if it can be read.
pub fn not_after(pem: &Path) -> Option<u64> {
    let der = CertificateDer::pem_file_iter(pem).ok()?.next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// What `tokengate tls status` shows of a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

impl CertInfo {
    /// Reads a DER certificate; `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                            4 => Some(
                                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?)
                                    .to_string(),
                            ),
                            16 => Some(
                                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?)
                                    .to_string(),
                            ),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let secs = |t: i64| u64::try_from(t).unwrap_or(0);
        Some(Self {
            names,
            issuer: cert.issuer().to_string(),
            not_before: secs(cert.validity().not_before.timestamp()),
            not_after: secs(cert.validity().not_after.timestamp()),
        })
    }

    /// The first certificate of a PEM file.
    pub fn of_pem_file(path: &Path) -> Option<Self> {
        let der = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
        Self::of(&der)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Builds the rustls server configuration (ring provider, ALPN h2 + http/1.1).
pub fn server_config(paths: &CertPaths) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: paths.cert.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE section found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| TlsError::Key {
        path: paths.key.clone(),
        reason: e.to_string(),
    })?;
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Trust anchors for a TLS client: the certificates of a PEM file, or the Mozilla roots
/// (webpki-roots) without one. The error says what is wrong with the file.
pub fn client_roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_certificate_lasts_a_year_and_is_renewed_near_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ensure_cert(None, dir.path()).unwrap();
        let end = not_after(&paths.cert).unwrap();
        let year = 365 * 86_400;
        assert!(
            end > now() + year - 86_400 && end < now() + year + 86_400,
            "{end}"
        );
        // Kept while it has time left.
        let first = std::fs::read(&paths.cert).unwrap();
        ensure_cert(None, dir.path()).unwrap();
        assert_eq!(std::fs::read(&paths.cert).unwrap(), first);
        // One that ends within 30 days is made anew at start.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
        std::fs::write(&paths.cert, params.self_signed(&key).unwrap().pem()).unwrap();
        ensure_cert(None, dir.path()).unwrap();
        assert!(not_after(&paths.cert).unwrap() > now() + 300 * 86_400);
        server_config(&paths).expect("the new pair matches");
        // So is one valid for far too long (older tokengates made them until 4096).
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        std::fs::write(&paths.cert, params.self_signed(&key).unwrap().pem()).unwrap();
        ensure_cert(None, dir.path()).unwrap();
        assert!(not_after(&paths.cert).unwrap() < now() + 400 * 86_400);
    }
}

/// A client-side verifier that accepts any server certificate: for `sslmode=require` to
/// PostgreSQL (encrypted, not authenticated, as libpq means it) and the load tool's
/// `--insecure`. The handshake's signatures are still checked, so the peer holds the key of
/// the certificate it shows.
#[derive(Debug)]
pub struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client-side verifier for a certificate file given by the operator (the load tool's
/// `--ca`): a server certificate that is byte for byte one of the file's is accepted as
/// pinned; any other must chain to one of them as usual (webpki). Pinning is what makes a
/// self-signed server certificate usable: one made the common way (`openssl req -x509`) is
/// marked `CA:TRUE`, and webpki refuses a CA certificate as an end entity
/// (`CaUsedAsEndEntity`, RFC 5280 §4.2.1.9) where curl, Python and Node accept it. The
/// handshake's signatures are checked with the provider's algorithms either way, so the
/// server holds the key of the certificate it shows.
#[derive(Debug)]
pub struct PinnedOrChained {
    pinned: Vec<CertificateDer<'static>>,
    chained: Arc<rustls::client::WebPkiServerVerifier>,
}

impl PinnedOrChained {
    /// The certificates of a PEM file: pinned, and trust anchors for the others. The error
    /// says what is wrong with the file.
    pub fn from_pem_file(
        path: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let pinned: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if pinned.is_empty() {
            return Err("no CERTIFICATE section found".into());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &pinned {
            roots.add(cert.clone()).map_err(|e| e.to_string())?;
        }
        let chained =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
        Ok(Self { pinned, chained })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.chained
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    // The handshake's signatures are checked the same way for a pinned certificate and a
    // chained one: by the webpki verifier, with the provider's algorithms.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chained.supported_verify_schemes()
    }
}
