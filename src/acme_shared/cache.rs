//! rustls-acme's account and certificate cache kept in the store ([`StoreCache`]): each entry
//! sealed with the server key and bound to its name, read and written off the async workers.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use super::{Shared, SharedError, SharedResolver, cert_key, certified_key, entry_key};

/// rustls-acme's cache in the store: the account key and the certificate, sealed.
pub(super) struct StoreCache {
    pub(super) shared: Shared,
    /// Told of each certificate stored, so this replica serves it without waiting for its own
    /// notification (a replica does not hear itself).
    pub(super) resolver: Arc<SharedResolver>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl StoreCache {
    /// Runs a store call off the async workers (PostgreSQL blocks).
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Shared) -> Result<T, SharedError> + Send + 'static,
    ) -> Result<T, std::io::Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(shared))
            .await
            .map_err(std::io::Error::other)?
            .map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl rustls_acme::CertCache for StoreCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let key = cert_key(domains, directory_url);
        self.blocking(move |s| s.read_sealed(&key)).await
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        let (key, pem) = (cert_key(domains, directory_url), cert.to_vec());
        self.blocking(move |s| s.write_sealed(&key, &pem)).await?;
        if let Ok(ck) = certified_key(cert, &self.provider) {
            self.resolver.set_current(Arc::new(ck));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl rustls_acme::AccountCache for StoreCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        let key = entry_key("account", contact, directory_url);
        self.blocking(move |s| s.read_sealed(&key)).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        let (key, account) = (
            entry_key("account", contact, directory_url),
            account.to_vec(),
        );
        self.blocking(move |s| s.write_sealed(&key, &account)).await
    }
}
