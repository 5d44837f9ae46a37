//! The login pipeline shared by every dialect: one [`Authenticator::authenticate`] that turns
//! a username and a "password‖token" secret into a user or a generic failure, plus the
//! session table (`session`).
//!
//! Order of checks (DESIGN.md §3.1–3.2): the token is checked first with a keyed hash in
//! constant time, and argon2id runs for the password only when the token matched, on a
//! bounded pool off the async executor. Unknown and disabled users walk the same steps against
//! a dummy record whose token can never match, so neither timing nor answer tells them apart
//! from a wrong token.

pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::secret::Secrets;
use crate::store::{Store, StoreError, User};

/// Why a login failed. For the login history and logs only: every reason gets the same answer
/// on the wire (DESIGN.md §3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownUser,
    Disabled,
    WrongToken,
    WrongPassword,
    Malformed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownUser => "unknown user",
            Reason::Disabled => "disabled",
            Reason::WrongToken => "wrong token",
            Reason::WrongPassword => "wrong password",
            Reason::Malformed => "malformed credentials",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials ({})", .0.as_str())]
    Rejected(Reason),
    #[error("password verification is saturated; retry shortly")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Usernames are case-insensitive, like Salesforce's; this is the stored form.
pub fn canonical_username(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Admission control for argon2: at most `permits` verifications run at once on the blocking
/// pool, at most `queue` wait, and none waits longer than `queue_timeout` (DESIGN.md §3.2).
pub struct HashPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Permits plus queue places: the most callers admitted at once.
    admitted: usize,
    queue_timeout: Duration,
}

impl HashPool {
    pub fn new(permits: usize, queue: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            admitted: permits + queue,
            queue_timeout,
        }
    }

    /// Number of callers waiting for or holding a permit.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.admitted {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthError::Busy);
        }
        let acquired =
            tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await;
        let result = match acquired {
            Ok(Ok(permit)) => tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(|_| AuthError::Busy),
            _ => Err(AuthError::Busy),
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    pool: HashPool,
    /// The dummy record, serialised: unknown and disabled users decode it, so their path costs
    /// what decoding a real record costs.
    dummy: Vec<u8>,
    max_secret_bytes: usize,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        cfg: &AuthConfig,
    ) -> Result<Self, crate::secret::SecretError> {
        // The dummy's token tag is a random value no token hashes to, and its password hash
        // is real, so a dummy walk costs what a wrong token for a real user costs.
        let dummy = User {
            id: String::new(),
            username: String::new(),
            email: String::new(),
            full_name: String::new(),
            admin: false,
            disabled: true,
            password_hash: secrets.hash_password(&secrets.generate_password()?)?,
            token_tag: secrets.random_bytes()?,
            token_length: cfg.token_length,
            epoch: 0,
            created_at: 0,
            password_changed_at: 0,
            token_reset_at: 0,
            pending_token: None,
            previous_token: None,
            rotate_every_secs: None,
            next_rotation_at: None,
        };
        Ok(Self {
            store,
            secrets,
            pool: HashPool::new(
                cfg.hashing_concurrency.get(),
                cfg.hashing_queue,
                cfg.hashing_queue_timeout,
            ),
            dummy: serde_json::to_vec(&dummy).expect("records serialise"),
            max_secret_bytes: cfg.max_secret_bytes,
        })
    }

    fn dummy_user(&self) -> User {
        serde_json::from_slice(&self.dummy).expect("the dummy record decodes")
    }

    pub fn hash_pool(&self) -> &HashPool {
        &self.pool
    }

    /// Verifies `username` + `secret` (the password with the token appended).
    pub async fn authenticate(&self, username: &str, secret: &str) -> Result<Verified, AuthError> {
        if username.is_empty()
            || username.len() > 256
            || secret.is_empty()
            || secret.len() > self.max_secret_bytes
        {
            return Err(AuthError::Rejected(Reason::Malformed));
        }
        let (user, substitute) = self.lookup(username)?;
        let reject = |r: Reason| Err(AuthError::Rejected(substitute.unwrap_or(r)));

        // The current token, then the superseded one while its grace window lasts.
        let now = crate::now_secs();
        let candidates = std::iter::once((user.token_tag, user.token_length, false)).chain(
            user.previous_token
                .as_ref()
                .filter(|p| p.at > now)
                .map(|p| (p.tag, p.length, true)),
        );
        let mut matched = None;
        for (tag, length, superseded) in candidates {
            let split = secret
                .len()
                .checked_sub(length)
                .filter(|&i| i > 0 && secret.is_char_boundary(i));
            if let Some(at) = split
                && self.secrets.token_matches(&secret[at..], &tag)
            {
                matched = Some((at, superseded));
                break;
            }
        }
        let Some((at, superseded)) = matched else {
            return reject(Reason::WrongToken);
        };
        if let Some(r) = substitute {
            // Unreachable in practice (the dummy tag matches no token), kept as a guard.
            return Err(AuthError::Rejected(r));
        }
        if self.check_password(&user, &secret[..at]).await? {
            if superseded {
                tracing::warn!(user = %user.username, "login with a superseded token during its grace window");
            }
            Ok(Verified { user, superseded })
        } else {
            reject(Reason::WrongPassword)
        }
    }

    /// Verifies a password alone, with no token: for the self-service token reset, which must
    /// work for a user who lost the token. Always spends one argon2 verification, known user
    /// or not.
    pub async fn verify_password_only(
        &self,
        username: &str,
        password: &str,
    ) -> Result<User, AuthError> {
        if username.is_empty() || username.len() > 256 || password.len() > self.max_secret_bytes {
            return Err(AuthError::Rejected(Reason::Malformed));
        }
        let (user, substitute) = self.lookup(username)?;
        let ok = self.check_password(&user, password).await?;
        match (substitute, ok) {
            (Some(r), _) => Err(AuthError::Rejected(r)),
            (None, true) => Ok(user),
            (None, false) => Err(AuthError::Rejected(Reason::WrongPassword)),
        }
    }

    /// The user, or the dummy and the reason it stands in.
    fn lookup(&self, username: &str) -> Result<(User, Option<Reason>), AuthError> {
        Ok(
            match self.store.user_by_name(&canonical_username(username))? {
                Some(u) if !u.disabled => (u, None),
                Some(_) => (self.dummy_user(), Some(Reason::Disabled)),
                None => (self.dummy_user(), Some(Reason::UnknownUser)),
            },
        )
    }

    async fn check_password(&self, user: &User, password: &str) -> Result<bool, AuthError> {
        if password.is_empty() {
            return Ok(false);
        }
        let secrets = self.secrets.clone();
        let phc = user.password_hash.clone();
        let password = password.to_owned();
        self.pool
            .run(move || secrets.verify_password(&phc, &password))
            .await
    }
}

/// A successful verification.
#[derive(Debug)]
pub struct Verified {
    pub user: User,
    /// The login used the previous token during its grace window.
    pub superseded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_refuses_work_beyond_its_queue() {
        let pool = Arc::new(HashPool::new(1, 0, Duration::from_secs(5)));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let first = tokio::spawn(async move { p.run(move || rx.recv().is_ok()).await });
        while pool.depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| ()).await, Err(AuthError::Busy)));
        tx.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert!(pool.run(|| 5).await.is_ok());
    }

    #[test]
    fn usernames_compare_case_insensitively() {
        assert_eq!(
            canonical_username(" Alice@Example.COM"),
            "alice@example.com"
        );
    }
}
