//! User administration: one implementation of every admin operation ([`Users`]), reached from
//! the HTTP admin API, the console, and the CLI, either through the running server's Unix
//! socket (`socket`) or, when no server runs, by opening the store directly (sled admits one
//! process per data directory).

pub mod socket;

pub use socket::{Answer, Request, call_socket, serve_socket, socket_path};

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor, Audit, Channel, Entry};
use crate::auth::session::Sessions;
use crate::config::PasswordPolicy;
use crate::domain::canonical_username;
use crate::mail::{ComplianceBcc, EmailChange, MailError, TokenMail, TokenReason};
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
    Store(StoreError),
    /// The change would leave no enabled administrator: disabling, demoting or deleting the
    /// last one (checked by the store under one lock, so concurrent changes cannot both pass).
    #[error(
        "refused: this would leave no enabled administrator; make another user an administrator first"
    )]
    LastAdmin,
    /// An administrator disabling, demoting or deleting their own account.
    #[error(
        "refused: administrators cannot disable, demote or delete their own account; ask another administrator"
    )]
    SelfDemotion,
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
    #[error("{0}")]
    Synthetic(&'static str),
    /// A request that cannot be carried out as asked (nothing to change, ...).
    #[error("{0}")]
    Invalid(&'static str),
    /// A user whose token nobody would ever see: no mail transport, and the caller does not
    /// show it. The words are the CLI's (the admin socket's only client); the admin API and
    /// the console say it in their own.
    #[error(
        "no mail transport is configured ([mail] transport = \"none\"), so nobody would ever see the new user's security token; nothing was created. Configure [mail] in the configuration file to email it, or pass --show-token to print it once"
    )]
    Undeliverable,
    /// A named token nobody would ever see: no mail transport.
    #[error(
        "no mail transport is configured ([mail] transport = \"none\"), so nobody would ever see the new token; nothing was added. Configure [mail] in the configuration file"
    )]
    UndeliverableToken,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LastAdmin => Self::LastAdmin,
            e => Self::Store(e),
        }
    }
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
    pub loadtest: bool,
    /// Logs in through the APIs only, never to the console.
    #[serde(default)]
    pub api_only: bool,
    /// Whether the user has confirmed a console second factor (`mfa`).
    #[serde(default)]
    pub mfa_enrolled: bool,
    /// The names of the user's named tokens (one per integration), never a token.
    #[serde(default)]
    pub named_tokens: Vec<String>,
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
            loadtest: u.loadtest,
            api_only: u.api_only,
            mfa_enrolled: u.mfa.enrolled(),
            named_tokens: u.named_tokens.iter().map(|t| t.name.clone()).collect(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub admin: bool,
    pub password: String,
    /// A synthetic load-test user (its token emails go nowhere).
    #[serde(default)]
    pub loadtest: bool,
    /// Load-test users only: the token, generated by the load tool, so that no token ever
    /// travels in an HTTP response.
    #[serde(default)]
    pub token: Option<String>,
    /// An integration's account: APIs only, no console.
    #[serde(default)]
    pub api_only: bool,
    /// The caller shows the new token to the admin once (the CLI's `--show-token`), so it
    /// needs no mail to be delivered.
    #[serde(default)]
    pub show_token: bool,
}

impl NewUser {
    /// Whether the new user's token reaches someone without mail: shown to the admin, or
    /// chosen by the caller (a load-test user).
    pub fn token_reaches_caller(&self) -> bool {
        self.show_token || self.token.is_some()
    }
}

/// Profile fields an admin may change (`tokengate user set`, `PATCH
/// /tokengate/v1/admin/users/{username}`, the console's user page); `None`: unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChanges {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub api_only: Option<bool>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.full_name.is_none() && self.api_only.is_none()
    }
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

/// A display name: at most 120 characters, no control characters; trimmed.
fn validate_full_name(name: &str) -> Result<String, AdminError> {
    if name.chars().count() > 120 || name.chars().any(char::is_control) {
        return Err(AdminError::FullName(
            "at most 120 characters, no control characters",
        ));
    }
    Ok(name.trim().to_owned())
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
    /// `[loadtest] allow_synthetic_users` (reloadable).
    allow_synthetic: std::sync::atomic::AtomicBool,
}

const SYNTHETIC_OFF: &str = "synthetic load-test users are refused on this server; set [loadtest] allow_synthetic_users = true on a test server to allow them";
const SYNTHETIC_ADMIN: &str = "a synthetic load-test user cannot be an administrator";

impl Users {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        sessions: Option<Arc<Sessions>>,
        token_length: usize,
        policy: PasswordPolicy,
        allow_synthetic: bool,
    ) -> Self {
        Self {
            store,
            secrets,
            sessions,
            token_length,
            policy,
            allow_synthetic: allow_synthetic.into(),
        }
    }

    /// `[loadtest] allow_synthetic_users` in force.
    pub fn allow_synthetic(&self) -> bool {
        self.allow_synthetic
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies a reloaded `[loadtest] allow_synthetic_users`.
    pub fn set_allow_synthetic(&self, allow: bool) {
        self.allow_synthetic
            .store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    fn find(&self, username: &str) -> Result<Arc<User>, AdminError> {
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
        let full_name = validate_full_name(&new.full_name)?;
        self.policy
            .check(&new.password)
            .map_err(AdminError::Password)?;
        // A synthetic user's token is chosen by the caller and never emailed, so no Compliance
        // BCC copy ever shows it: only on a server that allows them, and never an admin.
        if new.loadtest {
            if !self
                .allow_synthetic
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(AdminError::Synthetic(SYNTHETIC_OFF));
            }
            if new.admin {
                return Err(AdminError::Synthetic(SYNTHETIC_ADMIN));
            }
        }
        let token = match new.token {
            None => self.secrets.generate_token(self.token_length)?,
            Some(_) if !new.loadtest => return Err(AdminError::Token(TokenError::Supplied)),
            Some(t)
                if (16..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                t
            }
            Some(_) => return Err(AdminError::Token(TokenError::Supplied)),
        };
        let now = crate::now_secs();
        let mut user = User::new(
            crate::ids::from_number("005", self.store.next_user_number()?),
            username,
            email,
            self.secrets.hash_password(&new.password)?,
            self.secrets.token_tag(&token),
            token.len(),
            now,
        );
        user.full_name = full_name;
        user.admin = new.admin;
        user.loadtest = new.loadtest;
        user.api_only = new.api_only;
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
        Ok(self.find(username)?.as_ref().into())
    }

    /// Disabling ends the user's sessions at once; enabling restores logins.
    pub fn set_disabled(&self, username: &str, disabled: bool) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        let user = self.store.update_user(&user.id, &mut |u| {
            u.disabled = disabled;
            u.end_access();
        })?;
        if disabled {
            self.end_sessions(&user.id)?;
        }
        self.store.flush()?;
        Ok((&user).into())
    }

    /// Removes a user and the user's sessions.
    pub fn delete(&self, username: &str) -> Result<(), AdminError> {
        let user = self.find(username)?;
        if let Some(s) = &self.sessions {
            s.revoke_user(&user.id)
                .map_err(|e| AdminError::Remote(e.to_string()))?;
        }
        self.store.delete_user(&user.id)?;
        self.store.flush()?;
        Ok(())
    }

    /// Grants or revokes the admin flag.
    pub fn set_admin(&self, username: &str, admin: bool) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        if admin && user.loadtest {
            return Err(AdminError::Synthetic(SYNTHETIC_ADMIN));
        }
        // Sessions need not end: every admin check reads the flag from the current record.
        let user = self.store.update_user(&user.id, &mut |u| u.admin = admin)?;
        self.store.flush()?;
        Ok((&user).into())
    }

    /// Changes profile fields. Returns the new view and, when the email address changed, the
    /// record and the old address (the caller tells both addresses). A new address ends
    /// cached verifications (a token reset after it must not race a cached one); becoming
    /// API only ends the user's console sessions on their next use.
    pub fn update(
        &self,
        username: &str,
        changes: &UserChanges,
    ) -> Result<(UserView, Option<(User, String)>), AdminError> {
        let email = changes.email.as_deref().map(validate_email).transpose()?;
        let full_name = changes
            .full_name
            .as_deref()
            .map(validate_full_name)
            .transpose()?;
        let user = self.find(username)?;
        let old_email = user.email.clone();
        let user = self.store.update_user(&user.id, &mut |u| {
            if let Some(e) = &email
                && *e != u.email
            {
                u.email = e.clone();
                u.epoch += 1;
            }
            if let Some(n) = &full_name {
                u.full_name = n.clone();
            }
            if let Some(a) = changes.api_only {
                u.api_only = a;
            }
        })?;
        self.store.flush()?;
        let moved = (user.email != old_email).then(|| (user.clone(), old_email));
        Ok(((&user).into(), moved))
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

    /// Resets the user's console second factor: secret, pending enrolment and recovery codes
    /// go, and the user enrols afresh at the next console sign-in. Ends the user's sessions
    /// (console and API): whoever holds the old factor may be the reason for the reset.
    pub fn reset_mfa(&self, username: &str) -> Result<UserView, AdminError> {
        let user = self.find(username)?;
        let user = self.store.update_user(&user.id, &mut |u| {
            u.mfa = Default::default();
            u.end_access();
        })?;
        self.end_sessions(&user.id)?;
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
            u.end_access();
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
            u.end_access();
        })?;
        self.end_sessions(&user.id)?;
        self.store.flush()?;
        Ok(token)
    }
}

/// Every admin operation behind one async entry point, [`Admin::perform`]: the admin socket,
/// the CLI's direct mode, the HTTP admin API and the console all call it, so every change is
/// made — and recorded in the audit trail — in one place.
pub struct Admin {
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub store: Arc<dyn Store>,
    pub audit: Arc<Audit>,
}

/// A synchronous user operation, run on the blocking pool (it may hash a password).
pub(crate) type BlockingOp = Box<dyn FnOnce(&Users) -> Result<Answer, AdminError> + Send>;

pub(crate) fn user_answer(user: UserView) -> Answer {
    Answer::User {
        user,
        token: None,
        note: None,
    }
}

/// What an audited request changes, to compare before and after.
enum Subject {
    User(String),
    Compliance,
    File(String),
}

impl Subject {
    fn name(&self) -> String {
        match self {
            Self::User(u) => u.clone(),
            Self::Compliance => "compliance_bcc".into(),
            Self::File(p) => p.clone(),
        }
    }
}

impl Request {
    /// The user a request would disable, demote or delete, if it is one of those.
    fn takes_away(&self) -> Option<&str> {
        match self {
            Self::UserSetDisabled {
                username,
                disabled: true,
            }
            | Self::UserSetAdmin {
                username,
                admin: false,
            }
            | Self::UserDelete { username } => Some(username),
            _ => None,
        }
    }

    /// The audit action and subject of a request that changes something; `None` for reads.
    fn audited(&self) -> Option<(&'static str, Subject)> {
        let user = |u: &str| Subject::User(canonical_username(u));
        Some(match self {
            Self::UserAdd(n) => ("user.create", user(&n.username)),
            Self::UserDelete { username } => ("user.delete", user(username)),
            Self::UserSetDisabled { username, disabled } => (
                if *disabled {
                    "user.disable"
                } else {
                    "user.enable"
                },
                user(username),
            ),
            Self::UserUnlock { username } => ("user.unlock", user(username)),
            Self::UserMfaReset { username } => ("user.mfa_reset", user(username)),
            Self::UserSetAdmin { username, admin } => (
                if *admin {
                    "user.admin.grant"
                } else {
                    "user.admin.revoke"
                },
                user(username),
            ),
            Self::UserSet { username, .. } => ("user.update", user(username)),
            Self::UserPasswd { username, .. } => ("user.password", user(username)),
            Self::UserSetRotation { username, .. } => ("user.rotation", user(username)),
            Self::UserSetLoginRanges { username, .. } => ("user.login_ranges", user(username)),
            Self::TokenReset {
                username,
                name: None,
            } => ("user.token_reset", user(username)),
            Self::TokenReset {
                username,
                name: Some(_),
            } => ("token.reset", user(username)),
            Self::TokenAdd { username, .. } => ("token.add", user(username)),
            Self::TokenRevoke { username, .. } => ("token.revoke", user(username)),
            Self::ComplianceSet { .. } => ("compliance_bcc.set", Subject::Compliance),
            Self::Backup { path } => ("backup", Subject::File(path.clone())),
            Self::UserList
            | Self::UserShow { .. }
            | Self::TokenList { .. }
            | Self::History { .. }
            | Self::ComplianceGet
            | Self::Audit { .. }
            | Self::AuditVerify => return None,
        })
    }
}

impl Admin {
    /// Runs one admin request for `actor`; a change that succeeds is recorded in the audit
    /// trail with what it changed (the subject's fields before and after; never a secret).
    pub async fn perform(&self, actor: &Actor, req: Request) -> Result<Answer, AdminError> {
        // An admin does not lock themselves out (the console and the admin API act as a
        // user; the CLI acts as a local account, `cli:<account>`, which no user is named).
        if matches!(actor.channel, Channel::Api | Channel::Console)
            && req
                .takes_away()
                .is_some_and(|u| canonical_username(u) == canonical_username(&actor.name))
        {
            return Err(AdminError::SelfDemotion);
        }
        let audited = req.audited();
        let before = match &audited {
            Some((_, s)) => self.snapshot(s)?,
            None => None,
        };
        let answer = self.run(actor, req).await?;
        if let Some((action, subject)) = audited {
            let after = match &subject {
                Subject::File(p) => Some(serde_json::json!({ "path": p })),
                s => self.snapshot(s).unwrap_or(None),
            };
            let mut changes = audit::diff(before.as_ref(), after.as_ref());
            // Secrets are never compared, but that they changed is what the record is for
            // (the timestamps that say so have a resolution of a second).
            match (&answer, action) {
                (
                    Answer::Rotated {
                        masked_email,
                        token,
                        ..
                    },
                    _,
                ) => changes.push(audit::Change {
                    field: match token {
                        Some(name) => format!("token {name}"),
                        None => "token".into(),
                    },
                    before: None,
                    after: Some(format!("emailed to {masked_email}")),
                }),
                (_, "user.password") => changes.push(audit::Change {
                    field: "password".into(),
                    before: None,
                    after: Some("changed".into()),
                }),
                _ => {}
            }
            self.audit.record(Entry {
                actor: actor.clone(),
                action,
                target: subject.name(),
                changes,
            });
        }
        Ok(answer)
    }

    /// [`Self::perform`], with the error as an answer (the admin socket's protocol).
    pub async fn execute(&self, actor: &Actor, req: Request) -> Answer {
        self.perform(actor, req)
            .await
            .unwrap_or_else(|e| Answer::Error {
                message: e.to_string(),
            })
    }

    /// The subject as the audit trail compares it.
    fn snapshot(&self, subject: &Subject) -> Result<Option<serde_json::Value>, AdminError> {
        Ok(match subject {
            Subject::User(name) => self.store.user_by_name(name)?.map(|u| {
                let mut v = serde_json::to_value(UserView::from(u.as_ref())).expect("serialises");
                // Derived from the time of asking, not a change anyone made.
                if let Some(o) = v.as_object_mut() {
                    o.remove("locked_until");
                    o.insert(
                        "locked".into(),
                        u.lockout.is_locked(crate::now_secs()).into(),
                    );
                }
                v
            }),
            Subject::Compliance => Some(
                serde_json::to_value(ComplianceBcc::load(self.store.as_ref())?)
                    .expect("serialises"),
            ),
            Subject::File(_) => None,
        })
    }

    /// Tells the old and then the new address that a user's email address changed; a note
    /// for the admin when either could not be sent.
    async fn tell_email_change(&self, actor: &Actor, user: User, old: String) -> Option<String> {
        if !self.tokens.mailer().is_configured() {
            return Some("mail is not configured: neither address was told of the change".into());
        }
        let notice = EmailChange {
            user,
            old,
            by: actor.name.clone(),
            at: crate::now_secs(),
        };
        match self.tokens.mailer().send_email_change(&notice).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(user = %notice.user.username, error = %e, "email change notice not sent");
                Some(format!(
                    "the change notice could not be emailed to both addresses ({e})"
                ))
            }
        }
    }

    /// Creates a user and emails the token (reason: account created), unless the caller shows
    /// it or chose it; refused when neither mail nor the caller can deliver it.
    pub async fn add_user(
        &self,
        new: NewUser,
    ) -> Result<(UserView, String, Option<String>), AdminError> {
        // Refused before anything is written: a user nobody can log in as, since nobody has
        // the token, is worse than no user. A transport that is configured but fails is
        // different: the user exists and a reset once mail works delivers a token.
        if !new.token_reaches_caller() && !self.tokens.mailer().is_configured() {
            return Err(AdminError::Undeliverable);
        }
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
                named: None,
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
}

/// The name of local account `uid` (the CLI's actor in the audit trail), or `uid:N` when it
/// has none.
pub fn local_account(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

/// The CLI's actor when it opens the store itself: the account running it.
pub fn this_account() -> Actor {
    Actor::cli(&local_account(nix::unistd::getuid().as_raw()))
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
