//! Outbound email: lettre transports (async SMTP, or `.eml` files for the demo), the token
//! message templates, and the Compliance BCC copy with its retry queue.
//!
//! The user's message is sent first and its acceptance by the SMTP server is what makes a new
//! token valid (the caller's rule, `tokens`). The compliance copy follows; when it fails it is
//! queued and retried later and never undoes the user's rotation. Redacted copies are queued in
//! the store so they survive a restart; verbatim copies (`redact_secrets = false`) are queued in
//! memory only, because the store never holds a token.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::message::{Mailbox, Message, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::config::{MailConfig, MailTransport, SmtpSecurity};
/// Why a token was issued (named in the message) is shared vocabulary: the metrics count
/// rotations by it without importing this module.
pub use crate::domain::TokenReason;
use crate::store::{Store, StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(
        "email delivery is not configured ([mail] transport = \"none\"); configure [mail] in the configuration file so tokens can be emailed"
    )]
    NotConfigured,
    #[error("invalid email address: {0}")]
    Address(String),
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("the SMTP server did not accept the message: {0}")]
    Rejected(String),
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot write the message file: {0}")]
    File(String),
    #[error("invalid SMTP configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The admin setting that copies every outbound message to a compliance mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceBcc {
    pub enabled: bool,
    pub address: Option<String>,
    /// When true (the default), the copy shows only the token's last 4 characters.
    #[serde(default = "default_true")]
    pub redact_secrets: bool,
}

fn default_true() -> bool {
    true
}

const COMPLIANCE_KEY: &str = "compliance_bcc";

impl ComplianceBcc {
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        Ok(match store.setting(COMPLIANCE_KEY)? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt(format!("compliance setting: {e}")))?,
            None => Self {
                enabled: false,
                address: None,
                redact_secrets: true,
            },
        })
    }

    /// Validates and stores the setting.
    pub fn save(&self, store: &dyn Store) -> Result<(), MailError> {
        if self.enabled {
            let a = self.address.as_deref().unwrap_or_default();
            a.parse::<Address>()
                .map_err(|_| MailError::Address(a.chars().take(100).collect()))?;
        }
        store.put_setting(
            COMPLIANCE_KEY,
            &serde_json::to_vec(self).expect("serialisable"),
        )?;
        store.flush()?;
        Ok(())
    }
}

/// The token message's content.
pub struct TokenMail<'a> {
    pub user: &'a User,
    pub token: &'a str,
    pub reason: TokenReason,
    pub at: u64,
    /// When the previous token stops working, if a grace window applies.
    pub previous_valid_until: Option<u64>,
    /// The named token (one integration's) this message carries; `None`: the default token.
    pub named: Option<&'a str>,
}

/// `a***@example.com`: enough for a user to recognise the address, not enough to harvest it.
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn redact(token: &str) -> String {
    let keep = token.len().saturating_sub(4);
    format!("{}{}", "*".repeat(keep), &token[keep..])
}

fn render(brand: &str, m: &TokenMail<'_>, redacted: bool) -> (String, String, String) {
    let name = if m.user.full_name.is_empty() {
        &m.user.username
    } else {
        &m.user.full_name
    };
    let token = if redacted {
        redact(m.token)
    } else {
        m.token.to_owned()
    };
    let previous = match (m.named, m.previous_valid_until) {
        (Some(n), _) => format!(
            "It is your token for the integration \"{n}\": use it there only. Its previous value, \
             if it had one, no longer works; your other tokens are unchanged."
        ),
        (None, Some(t)) => format!(
            "Your previous token keeps working until {} (UTC), then stops.",
            rfc3339(t)
        ),
        (None, None) => "Your previous token no longer works.".to_owned(),
    };
    let subject = match m.named {
        Some(n) => format!("Your new security token for {n}"),
        None => format!("Your new {brand} security token"),
    };
    let when = rfc3339(m.at);
    let text = format!(
        "Hello {name},\n\n\
A new {brand} security token was generated for the username {username} at {when} (UTC), \
because {reason}.\n\n\
Your new security token:\n\n    {token}\n\n\
Append it to your password in every application that logs in with your username and \
password (Data Loader, Formstack, any API client). For example, if your password is \
\"mypassword\" and your token is \"XXXXXXXXXX\", enter \"mypasswordXXXXXXXXXX\" in the \
password field. {previous}\n\n\
If you did not ask for a new token, tell your administrator at once: someone may know your \
password. Change your password and reset your token.\n\n\
-- {brand}\n",
        username = m.user.username,
        reason = m.reason.describe(),
    );
    let e = |s: &str| quick_xml::escape::escape(s).into_owned();
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\">\
<p>Hello {name},</p>\
<p>A new {brand} security token was generated for the username <strong>{username}</strong> at \
{when} (UTC), because {reason}.</p>\
<p>Your new security token:</p>\
<p style=\"font-family:monospace;font-size:1.3em\">{token}</p>\
<p>Append it to your password in every application that logs in with your username and \
password (Data Loader, Formstack, any API client). For example, if your password is \
<code>mypassword</code> and your token is <code>XXXXXXXXXX</code>, enter \
<code>mypasswordXXXXXXXXXX</code> in the password field. {previous}</p>\
<p>If you did not ask for a new token, tell your administrator at once: someone may know your \
password. Change your password and reset your token.</p>\
<p>-- {brand}</p></body></html>",
        name = e(name),
        brand = e(brand),
        username = e(&m.user.username),
        reason = e(m.reason.describe()),
        token = e(&token),
        previous = e(&previous),
    );
    (subject, text, html)
}

enum Transport {
    None,
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(PathBuf),
}

/// A compliance copy waiting for another attempt.
#[derive(Serialize, Deserialize)]
struct Queued {
    to: String,
    raw: String,
    attempts: u32,
}

/// Copies kept in memory (verbatim ones) are bounded; beyond the bound the oldest is dropped
/// with an error log.
const MEMORY_QUEUE_BOUND: usize = 1000;
/// After this many failed attempts a copy is abandoned, with an error log.
const MAX_ATTEMPTS: u32 = 48;

/// The transport and settings in force; replaced whole by a reload.
struct Active {
    transport: Transport,
    cfg: MailConfig,
}

pub struct Mailer {
    active: std::sync::RwLock<Arc<Active>>,
    store: Arc<dyn Store>,
    memory_queue: Mutex<VecDeque<Queued>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Active {
    fn new(cfg: &MailConfig) -> Result<Self, MailError> {
        let transport = match &cfg.transport {
            MailTransport::None => Transport::None,
            MailTransport::File { dir } => Transport::File(dir.clone()),
            MailTransport::Smtp {
                host,
                port,
                security,
                credentials,
                ca,
            } => {
                let cfg_err = |e: lettre::transport::smtp::Error| MailError::Config(e.to_string());
                let tls = || -> Result<TlsParameters, MailError> {
                    let mut b = TlsParameters::builder(host.clone());
                    if let Some(path) = ca {
                        let pem = std::fs::read(path)
                            .map_err(|e| MailError::Config(format!("{}: {e}", path.display())))?;
                        b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(cfg_err)?);
                    }
                    b.build_rustls().map_err(cfg_err)
                };
                let builder =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str());
                let mut b = match security {
                    SmtpSecurity::None => builder.tls(Tls::None),
                    SmtpSecurity::StartTls => builder.tls(Tls::Required(tls()?)),
                    SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
                };
                b = b.port(*port).timeout(Some(cfg.timeout));
                if let Some((u, p)) = credentials {
                    b = b.credentials(Credentials::new(u.clone(), p.clone()));
                }
                Transport::Smtp(b.build())
            }
        };
        Ok(Self {
            transport,
            cfg: cfg.clone(),
        })
    }
}

impl Mailer {
    /// The server's metrics, which mail counts into (and token rotations, whose success is a
    /// mail accepted).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn new(
        cfg: &MailConfig,
        store: Arc<dyn Store>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, MailError> {
        Ok(Self {
            active: std::sync::RwLock::new(Arc::new(Active::new(cfg)?)),
            store,
            memory_queue: Mutex::new(VecDeque::new()),
            metrics,
        })
    }

    /// Whether `cfg` would make a mailer (checked before a reload changes anything).
    pub fn check(cfg: &MailConfig) -> Result<(), MailError> {
        Active::new(cfg).map(drop)
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies reloaded mail settings; queued compliance copies are kept.
    pub fn reload(&self, cfg: &MailConfig) -> Result<(), MailError> {
        let next = Arc::new(Active::new(cfg)?);
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    pub fn is_configured(&self) -> bool {
        !matches!(self.active().transport, Transport::None)
    }

    pub fn brand(&self) -> String {
        self.active().cfg.brand.clone()
    }

    fn build(
        &self,
        to: &Mailbox,
        subject: &str,
        text: String,
        html: String,
    ) -> Result<Message, MailError> {
        let a = self.active();
        let mut b = Message::builder()
            .from(a.cfg.from.clone())
            .to(to.clone())
            .subject(subject);
        if let Some(r) = &a.cfg.reply_to {
            b = b.reply_to(r.clone());
        }
        b.multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| MailError::Build(e.to_string()))
    }

    /// Delivers raw message bytes to `to`, bounded by the configured timeout as a whole
    /// (lettre's own timeout covers only the connect).
    async fn deliver(&self, to: &Address, raw: &[u8]) -> Result<(), MailError> {
        let a = self.active();
        match &a.transport {
            Transport::None => Err(MailError::NotConfigured),
            Transport::Smtp(smtp) => {
                let envelope = Envelope::new(Some(a.cfg.from.email.clone()), vec![to.clone()])
                    .map_err(|e| MailError::Build(e.to_string()))?;
                match tokio::time::timeout(a.cfg.timeout, smtp.send_raw(&envelope, raw)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(MailError::Rejected(e.to_string())),
                    Err(_) => Err(MailError::Timeout(a.cfg.timeout)),
                }
            }
            Transport::File(dir) => {
                use std::io::Write as _;
                use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
                let id = self.store.next_id()?;
                let path = dir.join(format!(
                    "{}-{id}-{}.eml",
                    crate::now_secs(),
                    to.to_string().replace(['/', '\\'], "_")
                ));
                let write = || -> std::io::Result<()> {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)?;
                    f.write_all(raw)?;
                    f.sync_all()
                };
                write().map_err(|e| MailError::File(format!("{}: {e}", path.display())))
            }
        }
    }

    /// Sends a token message to its user; returns once the server accepted it. Then sends the
    /// compliance copy when the setting is on; a failed copy is queued for retry.
    pub async fn send_token(&self, m: &TokenMail<'_>) -> Result<(), MailError> {
        if m.user.loadtest {
            // Synthetic users of `tokengate loadtest`: their mail goes nowhere by design.
            tracing::debug!(user = %m.user.username, "token email for a load-test user not sent");
            return Ok(());
        }
        let brand = self.active().cfg.brand.clone();
        self.send_to_user(m.user, &|redacted| render(&brand, m, redacted), true)
            .await
    }

    /// Tells a user the account was locked (with its Compliance BCC copy, like every message).
    pub async fn send_lock_notice(&self, n: &LockNotice) -> Result<(), MailError> {
        if n.user.loadtest {
            return Ok(());
        }
        let brand = self.active().cfg.brand.clone();
        self.send_to_user(&n.user, &|_| notice::render_lock(&brand, n), false)
            .await
    }

    /// Tells a user their email address changed: first at the old address, then at the new
    /// one (so the owner of the old mailbox hears of it even if the new one is an attacker's).
    /// Both go out whatever happens to the other; the first failure is returned.
    pub async fn send_email_change(&self, n: &EmailChange) -> Result<(), MailError> {
        if n.user.loadtest {
            return Ok(());
        }
        let brand = self.active().cfg.brand.clone();
        let mut at_old = n.user.clone();
        at_old.email = n.old.clone();
        let old = self
            .send_to_user(
                &at_old,
                &|_| notice::render_email_change(&brand, n, true),
                false,
            )
            .await;
        let new = self
            .send_to_user(
                &n.user,
                &|_| notice::render_email_change(&brand, n, false),
                false,
            )
            .await;
        old.and(new)
    }

    /// Sends one message to `user`, then its compliance copy when the setting is on.
    /// `content(redacted)` renders it; `has_secret` says whether the unredacted form carries
    /// one (a copy that carries none can wait in the store for a retry).
    async fn send_to_user(
        &self,
        user: &User,
        content: &(dyn Fn(bool) -> (String, String, String) + Sync),
        has_secret: bool,
    ) -> Result<(), MailError> {
        if !self.is_configured() {
            return Err(MailError::NotConfigured);
        }
        let to: Mailbox = {
            let addr: Address = user
                .email
                .parse()
                .map_err(|_| MailError::Address(user.email.chars().take(100).collect()))?;
            let name = if user.full_name.is_empty() {
                None
            } else {
                Some(user.full_name.clone())
            };
            Mailbox::new(name, addr)
        };
        let (subject, text, html) = content(false);
        let message = self.build(&to, &subject, text, html)?;
        let sent = self.deliver(&to.email, &message.formatted()).await;
        self.metrics
            .email(crate::metrics::MailKind::User, sent.is_ok());
        sent?;

        let compliance = match ComplianceBcc::load(self.store.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the compliance setting; no compliance copy sent");
                return Ok(());
            }
        };
        if let (true, Some(address)) = (compliance.enabled, compliance.address.as_deref()) {
            let Ok(bcc) = address.parse::<Address>() else {
                tracing::error!("the compliance address is invalid; no compliance copy sent");
                return Ok(());
            };
            // The copy carries the user's own headers (To: the user), like a Bcc, and goes to
            // the compliance mailbox only by its envelope.
            let (subject, text, html) = content(compliance.redact_secrets);
            let copy = self.build(&to, &subject, text, html)?.formatted();
            let sent = self.deliver(&bcc, &copy).await;
            self.metrics
                .email(crate::metrics::MailKind::Compliance, sent.is_ok());
            if let Err(e) = sent {
                tracing::warn!(error = %e, "compliance copy failed; queued for retry");
                self.enqueue(
                    Queued {
                        to: bcc.to_string(),
                        raw: String::from_utf8_lossy(&copy).into_owned(),
                        attempts: 1,
                    },
                    compliance.redact_secrets || !has_secret,
                );
            }
        }
        Ok(())
    }

    fn enqueue(&self, q: Queued, persist: bool) {
        if persist {
            let stored = self.store.next_id().and_then(|id| {
                self.store
                    .outbox_put(id, &serde_json::to_vec(&q).expect("serialisable"))
            });
            if let Err(e) = stored {
                tracing::error!(error = %e, "cannot queue the compliance copy; it is lost");
            }
            return;
        }
        let mut mq = self.memory_queue.lock().expect("not poisoned");
        if mq.len() >= MEMORY_QUEUE_BOUND {
            mq.pop_front();
            tracing::error!("compliance retry queue full; the oldest copy was dropped");
        }
        mq.push_back(q);
    }

    /// Number of compliance copies waiting for a retry.
    pub fn queued(&self) -> usize {
        let stored = self.store.outbox().map(|o| o.len()).unwrap_or(0);
        stored + self.memory_queue.lock().expect("not poisoned").len()
    }

    /// One retry pass over the queued compliance copies.
    pub async fn retry_queued(&self) {
        // The stored queue is shared by every replica on one database: the leader retries it.
        if self.store.leader() {
            self.retry_stored().await;
        }
        // Copies held in memory (they carry a secret, so no store may hold them) are this
        // replica's alone: no other replica can send them, whatever the leadership.
        self.retry_in_memory().await;
    }

    async fn retry_stored(&self) {
        let stored = match self.store.outbox() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the compliance retry queue");
                Vec::new()
            }
        };
        for (id, bytes) in stored {
            let Ok(mut q) = serde_json::from_slice::<Queued>(&bytes) else {
                let _ = self.store.outbox_delete(id);
                continue;
            };
            match self.retry_one(&q).await {
                Ok(()) => {
                    let _ = self.store.outbox_delete(id);
                }
                Err(e) => {
                    q.attempts += 1;
                    if q.attempts >= MAX_ATTEMPTS {
                        tracing::error!(error = %e, attempts = q.attempts, "compliance copy abandoned");
                        let _ = self.store.outbox_delete(id);
                    } else {
                        let _ = self
                            .store
                            .outbox_put(id, &serde_json::to_vec(&q).expect("serialisable"));
                    }
                }
            }
        }
    }

    async fn retry_in_memory(&self) {
        let pending: Vec<Queued> = self
            .memory_queue
            .lock()
            .expect("not poisoned")
            .drain(..)
            .collect();
        for mut q in pending {
            if let Err(e) = self.retry_one(&q).await {
                q.attempts += 1;
                if q.attempts >= MAX_ATTEMPTS {
                    tracing::error!(error = %e, attempts = q.attempts, "compliance copy abandoned");
                } else {
                    self.enqueue(q, false);
                }
            }
        }
    }

    async fn retry_one(&self, q: &Queued) -> Result<(), MailError> {
        let to: Address = q.to.parse().map_err(|_| MailError::Address(q.to.clone()))?;
        let sent = self.deliver(&to, q.raw.as_bytes()).await;
        self.metrics
            .email(crate::metrics::MailKind::Compliance, sent.is_ok());
        sent
    }

    pub fn retry_interval(&self) -> Duration {
        self.active().cfg.compliance_retry_interval
    }
}

mod notice;
pub use notice::{EmailChange, LOCK_NOTICE_QUEUE, LockNotice, send_lock_notices};

#[cfg(test)]
mod tests;
