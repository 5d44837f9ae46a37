//! The admin socket: the CLI's way into a running server. It lives in the data directory with
//! mode 0600, so only the account that runs the server can use it. The protocol is one JSON
//! request line ([`Request`]) and one JSON answer line ([`Answer`]), both bounded in size and
//! time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{
    Admin, AdminError, BlockingOp, NewUser, UserChanges, UserView, local_account, parse_ranges,
    user_answer,
};
use crate::audit::Actor;
use crate::mail::{ComplianceBcc, TokenReason};

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
    /// `name`: a named token; none: the default token.
    TokenReset {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Adds a named token (one integration's) and emails it.
    TokenAdd {
        username: String,
        name: String,
    },
    /// The user's tokens, the default one first (never a token).
    TokenList {
        username: String,
    },
    /// Removes a named token.
    TokenRevoke {
        username: String,
        name: String,
    },
    ComplianceGet,
    UserUnlock {
        username: String,
    },
    /// The user enrols a new console second factor at the next sign-in.
    UserMfaReset {
        username: String,
    },
    UserDelete {
        username: String,
    },
    /// Write a backup to this (absolute) path.
    Backup {
        path: String,
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
    UserSetAdmin {
        username: String,
        admin: bool,
    },
    /// Email address, full name, API only.
    UserSet {
        username: String,
        changes: UserChanges,
    },
    Audit {
        filter: crate::audit::Filter,
    },
    AuditVerify,
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
    /// A token was rotated and emailed (never shown). `token`: the named token's name; none:
    /// the default token.
    Rotated {
        user: UserView,
        masked_email: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A user's tokens (`token list`): names and uses, never a token.
    Tokens {
        username: String,
        tokens: Vec<crate::tokens::named::NamedTokenView>,
    },
    Compliance {
        setting: ComplianceBcc,
    },
    History {
        rows: Vec<crate::store::HistoryRow>,
    },
    Done {
        message: String,
    },
    Audit {
        records: Vec<crate::audit::Record>,
    },
    Verified {
        verified: crate::audit::Verified,
    },
    /// `audit verify` found the chain broken at record `seq`.
    AuditBroken {
        seq: u64,
        reason: String,
    },
    Error {
        message: String,
    },
}

impl Admin {
    pub(super) async fn run(&self, actor: &Actor, req: Request) -> Result<Answer, AdminError> {
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
            Request::TokenReset { username, name } => {
                let user = self.tokens.find(&username)?;
                let r = match &name {
                    Some(n) => {
                        self.tokens
                            .reset_named(&user.id, n, TokenReason::AdminRotation)
                            .await?
                    }
                    None => {
                        self.tokens
                            .rotate(&user.id, TokenReason::AdminRotation)
                            .await?
                    }
                };
                Ok(Answer::Rotated {
                    user: (&r.user).into(),
                    masked_email: r.masked_email,
                    token: name,
                })
            }
            Request::TokenAdd { username, name } => {
                crate::tokens::named::validate_name(&name)?;
                if !self.tokens.mailer().is_configured() {
                    return Err(AdminError::UndeliverableToken);
                }
                let user = self.tokens.find(&username)?;
                let r = self.tokens.add_named(&user.id, &name).await?;
                Ok(Answer::Rotated {
                    user: (&r.user).into(),
                    masked_email: r.masked_email,
                    token: Some(name),
                })
            }
            Request::TokenList { username } => {
                let user = self.tokens.find(&username)?;
                Ok(Answer::Tokens {
                    username: user.username.clone(),
                    tokens: crate::tokens::named::list_with_default(&user),
                })
            }
            Request::TokenRevoke { username, name } => {
                let user = self.tokens.find(&username)?;
                let user = self.tokens.revoke_named(&user.id, &name).await?;
                Ok(user_answer((&user).into()))
            }
            Request::Backup { path } => {
                let store = self.store.clone();
                let n = tokio::task::spawn_blocking(move || {
                    crate::backup::backup(store.as_ref(), Path::new(&path)).map(|n| (n, path))
                })
                .await
                .map_err(|_| AdminError::Remote("the backup failed".into()))?
                .map_err(|e| AdminError::Remote(e.to_string()))?;
                Ok(Answer::Done {
                    message: format!("wrote {} records to {}", n.0, n.1),
                })
            }
            Request::UserDelete { username } => {
                blocking(Box::new(move |u| {
                    u.delete(&username)?;
                    Ok(Answer::Users { users: Vec::new() })
                }))
                .await
            }
            Request::UserSetAdmin { username, admin } => {
                blocking(Box::new(move |u| {
                    Ok(user_answer(u.set_admin(&username, admin)?))
                }))
                .await
            }
            Request::UserSet { username, changes } => {
                if changes.is_empty() {
                    return Err(AdminError::Invalid(
                        "nothing to change: give an email address, a full name or api-only",
                    ));
                }
                let (user, moved) = {
                    let users = self.users.clone();
                    tokio::task::spawn_blocking(move || users.update(&username, &changes))
                        .await
                        .map_err(|_| AdminError::Remote("the user could not be changed".into()))??
                };
                let note = match moved {
                    Some((record, old)) => self.tell_email_change(actor, record, old).await,
                    None => None,
                };
                Ok(Answer::User {
                    user,
                    token: None,
                    note,
                })
            }
            Request::Audit { filter } => {
                let audit = self.audit.clone();
                let records = tokio::task::spawn_blocking(move || audit.query(&filter))
                    .await
                    .map_err(|_| AdminError::Remote("the audit query failed".into()))??;
                Ok(Answer::Audit { records })
            }
            Request::AuditVerify => {
                let store = self.store.clone();
                let verified =
                    tokio::task::spawn_blocking(move || crate::audit::verify(store.as_ref()))
                        .await
                        .map_err(|_| AdminError::Remote("the audit check failed".into()))?;
                match verified {
                    Ok(verified) => Ok(Answer::Verified { verified }),
                    Err(crate::audit::AuditError::Broken { seq, reason }) => {
                        Ok(Answer::AuditBroken { seq, reason })
                    }
                    Err(crate::audit::AuditError::Store(e)) => Err(e.into()),
                }
            }
            Request::UserUnlock { username } => {
                blocking(Box::new(move |u| Ok(user_answer(u.unlock(&username)?)))).await
            }
            Request::UserMfaReset { username } => {
                blocking(Box::new(move |u| Ok(user_answer(u.reset_mfa(&username)?)))).await
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
    // The audit trail names the local account on the other end, as the kernel reports it
    // (SO_PEERCRED), not as the client claims.
    let actor = match stream.peer_cred() {
        Ok(c) => Actor::cli(&local_account(c.uid())),
        Err(_) => Actor::cli("unknown"),
    };
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES as u64);
    let answer = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => admin.execute(&actor, req).await,
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
