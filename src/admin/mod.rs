//! User administration: one implementation of every admin operation ([`Users`], in `users`),
//! reached from the HTTP admin API, the console, and the CLI, either through the running
//! server's Unix socket (`socket`) or, when no server runs, by opening the store directly
//! (sled admits one process per data directory). This file is the one entry point,
//! [`Admin::perform`], that makes every change and records it in the audit trail.

pub mod socket;
mod users;

pub use socket::{Answer, Request, call_socket, serve_socket, socket_path};
pub use users::{NewUser, UserChanges, UserView, Users, validate_email};

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{self, Actor, Audit, Channel, Entry};
use crate::domain::canonical_username;
use crate::mail::{ComplianceBcc, EmailChange, MailError, TokenMail, TokenReason};
use crate::secret::SecretError;
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
