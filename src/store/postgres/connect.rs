//! Connections: plain or TLS by rustls as `sslmode` says, dead-peer detection on both ends of
//! every connection, the pool, and the dedicated connections (the listener's, the migration's)
//! whose messages are polled here.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::AsyncMessage;

use crate::config::{PgTls, PostgresConfig};
use crate::store::StoreError;

/// Dead-peer detection. Leadership is an advisory lock held by the leader's listener
/// connection: the database releases it only when it ends that connection, which it does at
/// once when the leader's process dies (its OS closes the socket) but, when the leader's host
/// dies or drops off the network, only when TCP gives the peer up, after about two hours by the
/// OS defaults. With these, a silent peer is given up after `IDLE + COUNT × INTERVAL` (11 s),
/// or `USER_TIMEOUT` (10 s) after data it did not acknowledge (RFC 9293 §3.8.3 (user timeout),
/// RFC 1122 §4.2.3.6 (keep-alives)).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_COUNT: u32 = 3;
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// `cfg` with dead-peer detection on both ends: tokengate's sockets (keepalives and
/// `TCP_USER_TIMEOUT`) and the server's (the same settings, sent as the connection's options;
/// `tcp_user_timeout` needs PostgreSQL 12 or later). Options the URL already carries come after
/// ours, so an operator's own values win.
pub(super) fn detecting_dead_peers(mut cfg: tokio_postgres::Config) -> tokio_postgres::Config {
    cfg.keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_COUNT)
        .tcp_user_timeout(USER_TIMEOUT);
    let ours = format!(
        "-c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={} \
         -c tcp_user_timeout={}",
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_COUNT,
        USER_TIMEOUT.as_millis()
    );
    let options = match cfg.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    cfg.options(&options);
    cfg
}

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
