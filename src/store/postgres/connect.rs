//! Connections: plain or TLS by rustls as `sslmode` says, the pool, and the dedicated
//! connections (the listener's, the migration's) whose messages are polled here.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::AsyncMessage;

use crate::config::{PgTls, PostgresConfig};
use crate::store::StoreError;

/// How connections are made: plain or rustls (verify-full, or `require` without checking the
/// certificate, as libpq's `sslmode=require`).
#[derive(Clone)]
pub(super) enum Connector {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Connector {
    pub(super) fn new(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let tls = match cfg.tls {
            PgTls::Disable => return Ok(Connector::Plain),
            PgTls::VerifyFull => {
                let roots = crate::tls::client_roots(cfg.ca.as_deref())
                    .map_err(|e| StoreError::Io(format!("store.ca: {e}")))?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            PgTls::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate::new(
                    provider,
                )))
                .with_no_client_auth(),
        };
        Ok(Connector::Tls(
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ))
    }

    pub(super) fn pool(&self, cfg: &PostgresConfig) -> Result<Pool, StoreError> {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match self {
            Connector::Plain => {
                Manager::from_config(cfg.connect.clone(), tokio_postgres::NoTls, mc)
            }
            Connector::Tls(t) => Manager::from_config(cfg.connect.clone(), t.clone(), mc),
        };
        Pool::builder(manager)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(cfg.timeout))
            .create_timeout(Some(cfg.timeout))
            .recycle_timeout(Some(cfg.timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// A connection of its own (not pooled): the listener's, the migration's. Messages the
    /// server sends on it (notifications) go to `messages`.
    pub(super) async fn connect(
        &self,
        cfg: &tokio_postgres::Config,
        messages: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        match self {
            Connector::Plain => {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(conn, messages));
                Ok(client)
            }
            Connector::Tls(t) => {
                let (client, conn) = cfg.connect(t.clone()).await?;
                tokio::spawn(drive(conn, messages));
                Ok(client)
            }
        }
    }
}

/// Polls a dedicated connection, passing notification payloads on. A full backlog drops the
/// connection: the listener then resynchronises from scratch.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    messages: Option<tokio::sync::mpsc::Sender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if let Some(tx) = &messages
                    && tx.try_send(n.payload().to_owned()).is_err()
                {
                    tracing::warn!("store notifications backed up: resynchronising");
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
