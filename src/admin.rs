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
use crate::secret::{SecretError, Secrets};
use crate::store::{Store, StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid username: {0}")]
    Username(&'static str),
    #[error("invalid email address '{0}'")]
    Email(String),
    #[error("the password does not meet the policy: {0}")]
    Password(&'static str),
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
    UserShow { username: String },
    UserSetDisabled { username: String, disabled: bool },
    UserPasswd { username: String, password: String },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// `token` is set only by `user add`, for `--show-token`.
    User {
        user: UserView,
        token: Option<String>,
    },
    Users {
        users: Vec<UserView>,
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

/// A pragmatic address check (one '@', a dotted domain, no spaces, RFC 5321 lengths).
pub fn validate_email(email: &str) -> Result<String, AdminError> {
    let e = email.trim();
    let bad = || AdminError::Email(e.chars().take(100).collect());
    let (local, domain) = e.rsplit_once('@').ok_or_else(bad)?;
    let ok = !local.is_empty()
        && local.len() <= 64
        && e.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !local.contains('@')
        && e.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[],;\"\\".contains(c));
    if ok { Ok(e.to_owned()) } else { Err(bad()) }
}

/// The default password policy: at least 8 characters, with letters and digits (the
/// Salesforce default, reference §5).
pub fn check_password_policy(pw: &str) -> Result<(), AdminError> {
    if pw.chars().count() < 8 {
        return Err(AdminError::Password("at least 8 characters"));
    }
    if pw.len() > 1024 {
        return Err(AdminError::Password("at most 1024 bytes"));
    }
    if !pw.chars().any(char::is_alphabetic) || !pw.chars().any(|c| c.is_ascii_digit()) {
        return Err(AdminError::Password("must mix letters and digits"));
    }
    Ok(())
}

/// Every admin operation on users, whichever way it is reached.
pub struct Users {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    /// The live session table when running inside the server.
    sessions: Option<Arc<Sessions>>,
    token_length: usize,
}

impl Users {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        sessions: Option<Arc<Sessions>>,
        token_length: usize,
    ) -> Self {
        Self {
            store,
            secrets,
            sessions,
            token_length,
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
        check_password_policy(&new.password)?;
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

    /// Sets a new password; the user's sessions end (their credentials changed).
    pub fn passwd(&self, username: &str, password: &str) -> Result<UserView, AdminError> {
        check_password_policy(password)?;
        let user = self.find(username)?;
        let hash = self.secrets.hash_password(password)?;
        let now = crate::now_secs();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.password_hash = hash.clone();
            u.password_changed_at = now;
            u.epoch += 1;
        })?;
        self.end_sessions(&user.id)?;
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
        check_password_policy(password)?;
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

    /// Runs one socket request. Password hashing is CPU-bound, so callers run this on the
    /// blocking pool.
    pub fn execute(&self, req: Request) -> Answer {
        let result = match req {
            Request::UserAdd(new) => self.add(new).map(|(user, token)| Answer::User {
                user,
                token: Some(token),
            }),
            Request::UserList => self.list().map(|users| Answer::Users { users }),
            Request::UserShow { username } => self
                .show(&username)
                .map(|user| Answer::User { user, token: None }),
            Request::UserSetDisabled { username, disabled } => self
                .set_disabled(&username, disabled)
                .map(|user| Answer::User { user, token: None }),
            Request::UserPasswd { username, password } => self
                .passwd(&username, &password)
                .map(|user| Answer::User { user, token: None }),
        };
        result.unwrap_or_else(|e| Answer::Error {
            message: e.to_string(),
        })
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

const MAX_REQUEST_BYTES: usize = 64 * 1024;
const SOCKET_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the admin socket (owner-only) and serves it until the task is dropped.
pub fn serve_socket(
    data_dir: &Path,
    users: Arc<Users>,
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
            let users = users.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = tokio::time::timeout(SOCKET_IO_TIMEOUT, handle(stream, users)).await
                {
                    tracing::warn!(error = %e, "admin socket request timed out");
                }
            });
        }
    }))
}

async fn handle(stream: UnixStream, users: Arc<Users>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES as u64);
    let answer = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => tokio::task::spawn_blocking(move || users.execute(req))
                .await
                .unwrap_or_else(|_| Answer::Error {
                    message: "the admin operation failed".into(),
                }),
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
    fn password_policy_wants_eight_characters_with_letters_and_digits() {
        assert!(check_password_policy("abcdefg1").is_ok());
        assert!(check_password_policy("abc1").is_err());
        assert!(check_password_policy("abcdefgh").is_err());
        assert!(check_password_policy("12345678").is_err());
    }

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
