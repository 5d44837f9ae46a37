//! How the leader publishes the TLS-ALPN-01 challenge before the CA validates it: the
//! [`PublishingVerifier`] on the leader's ACME client runs the [`Publisher`] before each
//! connection to the CA, which finds rustls-acme's current challenge with an in-memory
//! `acme-tls/1` handshake and stores its `acmeIdentifier` digest (RFC 8737 §3) for every
//! replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ACME_IDENTIFIER_OID, SharedDebug, challenge_key, read};
use crate::acme::ACME_TLS_ALPN;

/// The acmeIdentifier digest of a challenge certificate (an OCTET STRING of 32 bytes).
pub(super) fn acme_identifier(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)?;
    match ext.value {
        [0x04, 0x20, digest @ ..] => <[u8; 32]>::try_from(digest).ok(),
        _ => None,
    }
}

/// Publishes the challenge rustls-acme is about to be validated for, before each connection
/// of the leader's ACME client to the CA goes on.
#[derive(Debug)]
pub(super) struct Publisher {
    pub(super) shared: SharedDebug,
    pub(super) domains: Vec<String>,
    pub(super) provider: Arc<CryptoProvider>,
    /// rustls-acme's resolver, set as soon as its state is made (and again when the watchdog
    /// replaces a stalled state machine).
    pub(super) acme: RwLock<Option<Arc<dyn ResolvesServerCert>>>,
    /// What this leader published last, by name.
    pub(super) published: Mutex<HashMap<String, [u8; 32]>>,
}

impl Publisher {
    pub(super) fn publish(&self) {
        let Some(acme) = read(&self.acme).clone() else {
            return;
        };
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        for domain in &self.domains {
            let now = probe_challenge(&acme, domain, &self.provider);
            if published.get(domain) == now.as_ref() {
                continue;
            }
            let key = challenge_key(domain);
            match self
                .shared
                .0
                .store
                .put_acme_entry(&key, now.as_ref().map(|d| &d[..]))
            {
                Ok(()) => {
                    tracing::info!(
                        domain = %domain,
                        published = now.is_some(),
                        "the TLS-ALPN-01 challenge is shared with every replica"
                    );
                    match now {
                        Some(d) => published.insert(domain.clone(), d),
                        None => published.remove(domain),
                    };
                }
                // The validation may then reach a replica without it: the order fails and is
                // retried with backoff.
                Err(e) => {
                    tracing::warn!(error = %e, domain = %domain, "cannot publish the ACME challenge")
                }
            }
        }
    }
}

/// The acmeIdentifier digest of the challenge certificate rustls-acme's resolver holds for
/// `domain`, if any: asked the way the CA's validator asks, over an in-memory handshake.
pub(super) fn probe_challenge(
    acme: &Arc<dyn ResolvesServerCert>,
    domain: &str,
    provider: &Arc<CryptoProvider>,
) -> Option<[u8; 32]> {
    let mut server_cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(acme.clone());
    server_cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let capture = Arc::new(Capture {
        leaf: Mutex::new(None),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let mut client_cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    client_cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let name = ServerName::try_from(domain.to_owned()).ok()?;
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).ok()?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).ok()?;
    // ClientHello, then the server's first flight carries the certificate (TLS 1.3; TLS 1.2
    // needs no more rounds for it either).
    for _ in 0..3 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).ok()?;
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).ok()?;
        }
        // No challenge: the resolver has no certificate and the server refuses.
        server.process_new_packets().ok()?;
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).ok()?;
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).ok()?;
        }
        let _ = client.process_new_packets();
        let leaf = capture
            .leaf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(leaf) = leaf {
            return acme_identifier(&leaf);
        }
    }
    None
}

/// The probe's verifier: keeps the certificate shown and ends the handshake there.
#[derive(Debug)]
pub(super) struct Capture {
    pub(super) leaf: Mutex<Option<Vec<u8>>>,
    pub(super) schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        Err(rustls::Error::General("probe: certificate seen".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The leader's ACME client's verifier of the CA: the usual WebPKI verification, after the
/// current challenge is published (see the module docs for why here).
#[derive(Debug)]
pub(super) struct PublishingVerifier {
    pub(super) inner: Arc<rustls::client::WebPkiServerVerifier>,
    pub(super) publisher: Arc<Publisher>,
}

impl ServerCertVerifier for PublishingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.publisher.publish();
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
