//! User administration: one implementation of every admin operation ([`Users`]), reached from
//! the CLI either through the running server's Unix socket or, when no server runs, by opening
//! the store directly (sled admits one process per data directory).
//!
//! The socket lives in the data directory with mode 0600, so only the account that runs the
//! server can use it. The protocol is one JSON request line and one JSON answer line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::canonical_username;
use crate::auth::session::Sessions;
use crate::config::PasswordPolicy;
use crate::mail::{ComplianceBcc, MailError, TokenMail, TokenReason};
use crate::secret::{SecretError, Secrets};
use crate::store::{Store, StoreError, User};
use crate::tokens::{TokenError, Tokens};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid username: {0}")]
    Username(&'static str),
    #[error("invalid email address '{0}'")]
    Email(String),
    #[error("the password does not meet the policy: {0}")]
    Password(String),
    #[error("invalid full name: {0}")]
    FullName(&'static str),
    #[error("no user '{0}'")]
    NoSuchUser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("admin socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("{0}")]
    Remote(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("invalid rotation period '{0}': use a duration such as 24h, or off")]
    Period(String),
    #[error("invalid login range '{0}': use CIDRs such as 192.0.2.0/24, or none")]
    Range(String),
}

/// What admins see of a user: never a hash, never a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: u64,
    pub password_changed_at: u64,
    pub token_reset_at: u64,
    pub rotate_every_secs: Option<u64>,
    pub next_rotation_at: Option<u64>,
    /// Locked until (Unix seconds; `u64::MAX`: until unlocked), when locked now.
    pub locked_until: Option<u64>,
    pub login_ranges: Vec<String>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            full_name: u.full_name.clone(),
            admin: u.admin,
            disabled: u.disabled,
            created_at: u.created_at,
            password_changed_at: u.password_changed_at,
            token_reset_at: u.token_reset_at,
            rotate_every_secs: u.rotate_every_secs,
            next_rotation_at: u.next_rotation_at,
            locked_until: u
                .lockout
                .locked_until
                .filter(|_| u.lockout.is_locked(crate::now_secs())),
            login_ranges: u.login_ranges.iter().map(ToString::to_string).collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub admin: bool,
    pub password: String,
}

/// A request on the admin socket.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserAdd(NewUser),
    UserList,
    UserShow {
        username: String,
    },
    UserSetDisabled {
        username: String,
        disabled: bool,
    },
    UserPasswd {
        username: String,
        password: String,
    },
    /// `every`: a duration such as "24h", or "off".
    UserSetRotation {
        username: String,
        every: String,
    },
    TokenReset {
        username: String,
    },
    ComplianceGet,
    UserUnlock {
        username: String,
    },
    /// Comma-separated CIDRs, or "none".
    UserSetLoginRanges {
        username: String,
        ranges: String,
    },
    History {
        filter: crate::store::HistoryFilter,
    },
    /// `address`: Some to enable with that address; `disable`: turn off; `redact`: change
    /// the redaction setting.
    ComplianceSet {
        address: Option<String>,
        disable: bool,
        redact: Option<bool>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// `token` is set only by `user add`, for `--show-token`.
    User {
        user: UserView,
        token: Option<String>,
        /// Something the admin should know (a token email that could not be sent, ...).
        note: Option<String>,
    },
    Users {
        users: Vec<UserView>,
    },
    /// A token was rotated and emailed (never shown).
    Rotated {
        user: UserView,
        masked_email: String,
    },
    Compliance {
        setting: ComplianceBcc,
    },
    History {
        rows: Vec<crate::store::HistoryRow>,
    },
    Error {
        message: String,
    },
}

fn validate_username(name: &str) -> Result<String, AdminError> {
    let c = canonical_username(name);
    if c.is_empty() {
        return Err(AdminError::Username("must not be empty"));
    }
    if c.chars().count() > 80 {
        return Err(AdminError::Username("must be at most 80 characters"));
    }
    if c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(AdminError::Username(
            "must not contain spaces or control characters",
        ));
    }
    // RFC 7617 §2: a Basic user-id cannot contain a colon.
    if c.contains(':') {
        return Err(AdminError::Username(
            "must not contain ':' (HTTP Basic splits on it)",
        ));
    }
    Ok(c)
}

/// An email address as lettre (RFC 5321/5322) accepts it.
pub fn validate_email(email: &str) -> Result<String, AdminError> {
    let e = email.trim();
    match e.parse::<lettre::Address>() {
        Ok(a) if e.len() <= 254 && a.domain().contains('.') => Ok(a.to_string()),
        _ => Err(AdminError::Email(e.chars().take(100).collect())),
    }
}

/// Every admin operation on users, whichever way it is reached.
pub struct Users {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    /// The live session table when running inside the server.
    sessions: Option<Arc<Sessions>>,
    token_length: usize,
    policy: PasswordPolicy,
}

impl Users {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        sessions: Option<Arc<Sessions>>,
        token_length: usize,
        policy: PasswordPolicy,
    ) -> Self {
        Self {
            store,
            secrets,
            sessions,
            token_length,
            policy,
        }
    }

    fn find(&self, username: &str) -> Result<User, AdminError> {
        self.store
            .user_by_name(&canonical_username(username))?
            .ok_or_else(|| AdminError::NoSuchUser(username.chars().take(80).collect()))
    }

    fn end_sessions(&self, user_id: &str) -> Result<(), AdminError> {
        match &self.sessions {
            Some(s) => {
                s.revoke_user(user_id)
                    .map_err(|e| AdminError::Remote(e.to_string()))?;
            }
            None => {
                self.store.delete_user_sessions(user_id)?;
            }
        }
        Ok(())
    }

    /// Creates a user with a fresh random token; returns the token (shown once, if asked).
    pub fn add(&self, new: NewUser) -> Result<(UserView, String), AdminError> {
        let username = validate_username(&new.username)?;
        let email = validate_email(&new.email)?;
        if new.full_name.chars().count() > 120 || new.full_name.chars().any(char::is_control) {
            return Err(AdminError::FullName(
                "at most 120 characters, no control characters",
            ));
        }
        self.policy
            .check(&new.password)
            .map_err(AdminError::Password)?;
        let token = self.secrets.generate_token(self.token_length)?;
        let now = crate::now_secs();
        let user = User {
            id: crate::ids::from_number("005", self.store.next_user_number()?),
            username,
            email,
            full_name: new.full_name.trim().to_owned(),
            admin: new.admin,
            disabled: false,
            password_hash: self.secrets.hash_password(&new.password)?,
            token_tag: self.secrets.token_tag(&token),
            token_length: token.len(),
            epoch: 1,
            created_at: now,
            password_changed_at: now,
            token_reset_at: now,
            pending_token: None,
            previous_token: None,
            rotate_every_secs: None,
            next_rotation_at: None,
            lockout: Default::default(),
            login_ranges: Vec::new(),
        };
        self.store.create_user(&user)?;
        self.store.flush()?;
        Ok(((&user).into(), token))
    }

    pub fn list(&self) -> Result<Vec<UserView>, AdminError> {
        Ok(self
            .store
            .list_users()?
            .iter()
            .map(UserView::from)
            .collect())
    }

    pub fn show(&self, username: &str) -> Result<UserView, AdminError> {
        Ok((&self.find(username)?).into())
    }

    /// Disabling ends the user's sessions at once; enabling restores logins.
    pub fn set_disabled(&self, username: &str, disabled: bool) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        let user = self.store.update_user(&user.id, &mut |u| {
            u.disabled = disabled;
            u.epoch += 1;
        })?;
        if disabled {
            self.end_sessions(&user.id)?;
        }
        self.store.flush()?;
        Ok((&user).into())
    }

    /// Clears a lockout (and the failure count).
    pub fn unlock(&self, username: &str) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        let user = self
            .store
            .update_user(&user.id, &mut |u| u.lockout = Default::default())?;
        self.store.flush()?;
        Ok((&user).into())
    }

    /// Sets the networks the user may log in from (empty: anywhere). Cached verifications die.
    pub fn set_login_ranges(
        &self,
        username: &str,
        ranges: Vec<ipnet::IpNet>,
    ) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        let user = self.store.update_user(&user.id, &mut |u| {
            u.login_ranges = ranges.clone();
            u.epoch += 1;
        })?;
        self.store.flush()?;
        Ok((&user).into())
    }

    /// Gives an existing account a new password and token and returns the token. Only for
    /// bootstrapping (the demo): in normal operation tokens reach users by email alone.
    pub fn bootstrap_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<String, AdminError> {
        self.policy.check(password).map_err(AdminError::Password)?;
        let user = self.find(username)?;
        let token = self.secrets.generate_token(self.token_length)?;
        let (hash, tag) = (
            self.secrets.hash_password(password)?,
            self.secrets.token_tag(&token),
        );
        let now = crate::now_secs();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.password_hash = hash.clone();
            u.token_tag = tag;
            u.token_length = token.len();
            u.disabled = false;
            u.password_changed_at = now;
            u.token_reset_at = now;
            u.epoch += 1;
        })?;
        self.end_sessions(&user.id)?;
        self.store.flush()?;
        Ok(token)
    }
}

/// Every admin operation behind one async entry point: the admin socket and the CLI's direct
/// mode call this, the HTTP admin API calls the same `Users` and `Tokens` methods.
pub struct Admin {
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub store: Arc<dyn Store>,
}

/// A synchronous user operation, run on the blocking pool (it may hash a password).
type BlockingOp = Box<dyn FnOnce(&Users) -> Result<Answer, AdminError> + Send>;

fn user_answer(user: UserView) -> Answer {
    Answer::User {
        user,
        token: None,
        note: None,
    }
}

impl Admin {
    /// Creates a user and, when mail is configured, emails the token (reason: account created).
    pub async fn add_user(
        &self,
        new: NewUser,
    ) -> Result<(UserView, String, Option<String>), AdminError> {
        let users = self.users.clone();
        let (view, token) = tokio::task::spawn_blocking(move || users.add(new))
            .await
            .map_err(|_| AdminError::Remote("the user could not be created".into()))??;
        let mut note = None;
        if self.tokens.mailer().is_configured() {
            let user = self
                .store
                .user_by_id(&view.id)?
                .ok_or_else(|| AdminError::NoSuchUser(view.username.clone()))?;
            let mail = TokenMail {
                user: &user,
                token: &token,
                reason: TokenReason::AccountCreated,
                at: crate::now_secs(),
                previous_valid_until: None,
            };
            if let Err(e) = self.tokens.mailer().send_token(&mail).await {
                tracing::warn!(user = %user.username, error = %e, "could not email the new user's token");
                note = Some(format!(
                    "the token email could not be sent ({e}); reset the token once mail works"
                ));
            }
        }
        Ok((view, token, note))
    }

    pub async fn execute(&self, req: Request) -> Answer {
        self.run(req).await.unwrap_or_else(|e| Answer::Error {
            message: e.to_string(),
        })
    }

    async fn run(&self, req: Request) -> Result<Answer, AdminError> {
        let users = self.users.clone();
        let blocking = |f: BlockingOp| async move {
            tokio::task::spawn_blocking(move || f(&users))
                .await
                .map_err(|_| AdminError::Remote("the admin operation failed".into()))?
        };
        match req {
            Request::UserAdd(new) => {
                let (user, token, note) = self.add_user(new).await?;
                Ok(Answer::User {
                    user,
                    token: Some(token),
                    note,
                })
            }
            Request::UserList => {
                blocking(Box::new(|u| Ok(Answer::Users { users: u.list()? }))).await
            }
            Request::UserShow { username } => {
                blocking(Box::new(move |u| Ok(user_answer(u.show(&username)?)))).await
            }
            Request::UserSetDisabled { username, disabled } => {
                blocking(Box::new(move |u| {
                    Ok(user_answer(u.set_disabled(&username, disabled)?))
                }))
                .await
            }
            Request::UserPasswd { username, password } => {
                let user = self.tokens.find(&username)?;
                let r = self.tokens.change_password(&user.id, &password).await?;
                let note = (!self.tokens.mailer().is_configured()).then(|| {
                    "mail is not configured: the password changed, the token did not".to_owned()
                });
                Ok(Answer::User {
                    user: (&r.user).into(),
                    token: None,
                    note,
                })
            }
            Request::UserSetRotation { username, every } => {
                let period = match every.trim() {
                    "off" | "none" => None,
                    s => Some(
                        humantime::parse_duration(s)
                            .map_err(|_| AdminError::Period(s.chars().take(40).collect()))?,
                    ),
                };
                let user = self.tokens.set_rotation(&username, period)?;
                Ok(user_answer((&user).into()))
            }
            Request::TokenReset { username } => {
                let user = self.tokens.find(&username)?;
                let r = self
                    .tokens
                    .rotate(&user.id, TokenReason::AdminRotation)
                    .await?;
                Ok(Answer::Rotated {
                    user: (&r.user).into(),
                    masked_email: r.masked_email,
                })
            }
            Request::UserUnlock { username } => {
                blocking(Box::new(move |u| Ok(user_answer(u.unlock(&username)?)))).await
            }
            Request::UserSetLoginRanges { username, ranges } => {
                let ranges = parse_ranges(&ranges)?;
                blocking(Box::new(move |u| {
                    Ok(user_answer(u.set_login_ranges(&username, ranges)?))
                }))
                .await
            }
            Request::History { filter } => {
                let store = self.store.clone();
                let rows = tokio::task::spawn_blocking(move || store.history_query(&filter))
                    .await
                    .map_err(|_| AdminError::Remote("the history query failed".into()))??;
                Ok(Answer::History { rows })
            }
            Request::ComplianceGet => Ok(Answer::Compliance {
                setting: ComplianceBcc::load(self.store.as_ref())?,
            }),
            Request::ComplianceSet {
                address,
                disable,
                redact,
            } => {
                let mut setting = ComplianceBcc::load(self.store.as_ref())?;
                if let Some(a) = address {
                    setting.enabled = true;
                    setting.address = Some(a.trim().to_owned());
                }
                if disable {
                    setting.enabled = false;
                }
                if let Some(r) = redact {
                    setting.redact_secrets = r;
                }
                setting.save(self.store.as_ref())?;
                Ok(Answer::Compliance { setting })
            }
        }
    }
}

/// "192.0.2.0/24,2001:db8::/32" (bare addresses are single hosts), or "none".
pub fn parse_ranges(s: &str) -> Result<Vec<ipnet::IpNet>, AdminError> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| AdminError::Range(c.chars().take(60).collect()))
        })
        .collect()
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

const MAX_REQUEST_BYTES: usize = 64 * 1024;
// Long enough for an operation that emails a token under the mail timeout.
const SOCKET_IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Binds the admin socket (owner-only) and serves it until the task is dropped.
pub fn serve_socket(
    data_dir: &Path,
    admin: Arc<Admin>,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(data_dir);
    let sock_err = |reason: String| AdminError::Socket {
        path: path.clone(),
        reason,
    };
    // A socket file left by a server that died is stale: we hold the store lock, so no other
    // server can be using it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| sock_err(e.to_string()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| sock_err(e.to_string()))?;
    Ok(tokio::spawn(async move {
        // One admin request at a time is plenty and bounds the work admins can queue.
        let gate = Arc::new(tokio::sync::Semaphore::new(4));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = gate.clone().try_acquire_owned() else {
                continue; // dropped: the client sees the connection close
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = tokio::time::timeout(SOCKET_IO_TIMEOUT, handle(stream, admin)).await
                {
                    tracing::warn!(error = %e, "admin socket request timed out");
                }
            });
        }
    }))
}

async fn handle(stream: UnixStream, admin: Arc<Admin>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES as u64);
    let answer = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => admin.execute(req).await,
            Err(e) => Answer::Error {
                message: format!("bad admin request: {e}"),
            },
        },
        Err(e) => Answer::Error {
            message: format!("cannot read the admin request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&answer).expect("answers serialise");
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to a running server. `Ok(None)` when no server listens on the socket.
pub async fn call_socket(data_dir: &Path, req: &Request) -> Result<Option<Answer>, AdminError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(AdminError::Socket {
                path,
                reason: e.to_string(),
            });
        }
    };
    let sock_err = |reason: String| AdminError::Socket {
        path: path.clone(),
        reason,
    };
    let exchange = async {
        let (r, mut w) = stream.into_split();
        let mut out = serde_json::to_vec(req).expect("requests serialise");
        out.push(b'\n');
        w.write_all(&out).await?;
        let mut line = String::new();
        BufReader::new(r)
            .take(16 << 20)
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(SOCKET_IO_TIMEOUT, exchange)
        .await
        .map_err(|_| sock_err("the server did not answer in time".into()))?
        .map_err(|e| sock_err(e.to_string()))?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| sock_err(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        assert!(validate_email("a@example.com").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "a b@example.com",
            "@example.com",
            "a@.com",
            "<a@example.com>",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_are_canonical_and_colon_free() {
        assert_eq!(
            validate_username("Alice@Example.com").unwrap(),
            "alice@example.com"
        );
        assert!(validate_username("a:b").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username("").is_err());
    }
}
