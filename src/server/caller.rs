//! Who is calling, decided in one place for every route.
//!
//! A request presents at most one credential ([`Credential`]): a session id (in
//! `Authorization: Bearer|OAuth`, `X-SFDC-Session`, a SOAP `SessionHeader`, or an identity
//! URL's `oauth_token`), HTTP Basic `username:password+token`, a malformed `Authorization`,
//! or nothing. [`identify`] checks it against the user's current state and answers a
//! [`Caller`] or the [`Refusal`] every route renders in its own dialect:
//!
//! - a session must exist, be within its idle time and lifetime, belong to a user whose
//!   session epoch has not moved on (disable, lock, password or token change, login-range
//!   change), and be used from inside the user's login ranges (`Sessions::lookup`);
//! - Basic credentials are a login ([`crate::auth::Authenticator::login`]): rate limits,
//!   lockout, the credential cache, the login history.
//!
//! A session is checked without reading the user record (the forwarding hot path); routes
//! that need the record ask [`Caller::user`], which reads it and applies the same rule.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::refusal::Refusal;
use super::{App, Client};
use crate::auth::Attempt;
use crate::auth::last::LastCredential;
use crate::auth::session::Session;
use crate::domain::{Dialect, Identity};
use crate::store::User;
use crate::wire::credentials::{self, HeaderCredential};

/// What a request presents to prove who it is.
#[derive(Debug)]
pub enum Credential<'a> {
    Session(Cow<'a, str>),
    Basic(credentials::Basic),
    /// An `Authorization` header that is neither Basic nor a session.
    Malformed,
    None,
}

impl<'a> Credential<'a> {
    /// The credential in a request's headers.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        match credentials::from_headers(headers) {
            Some(HeaderCredential::Session(sid)) => Credential::Session(Cow::Borrowed(sid)),
            Some(HeaderCredential::Basic(basic)) => Credential::Basic(basic),
            Some(HeaderCredential::Malformed) => Credential::Malformed,
            None => Credential::None,
        }
    }

    /// A session id found outside the headers (a SOAP `SessionHeader`, an `oauth_token`)
    /// wins over the headers' credential.
    pub fn or_session(self, sid: Option<String>) -> Credential<'a> {
        match sid {
            Some(sid) => Credential::Session(Cow::Owned(sid)),
            None => self,
        }
    }
}

/// How Basic credentials are verified on this route: as which login dialect, with what
/// context for the history.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub dialect: Dialect,
    pub api_version: Option<&'a str>,
    pub client: Option<&'a str>,
    /// The password alone, with no token (the self-service reset).
    pub password_only: bool,
}

impl Login<'_> {
    pub const BASIC: Login<'static> = Login {
        dialect: Dialect::Basic,
        api_version: None,
        client: None,
        password_only: false,
    };
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// A session id alone: proves nothing of the password.
    Session,
    /// Basic credentials verified in this request (the password, and the token unless from a
    /// trusted network).
    Password,
}

/// A caller whose credential holds.
pub enum Caller {
    Session(Arc<Session>),
    Password(Arc<User>),
}

impl Caller {
    pub fn proof(&self) -> Proof {
        match self {
            Caller::Session(_) => Proof::Session,
            Caller::Password(_) => Proof::Password,
        }
    }

    pub fn user_id(&self) -> &str {
        match self {
            Caller::Session(s) => &s.user_id,
            Caller::Password(u) => &u.id,
        }
    }

    /// Who a forwarded request acts for: a session's identity headers were made at login,
    /// a Basic caller's at the first call with the user's record as it is now.
    pub fn identity(&self) -> Identity {
        match self {
            Caller::Session(s) => s.identity.clone(),
            Caller::Password(u) => u.identity(),
        }
    }

    pub fn username(&self) -> &str {
        match self {
            Caller::Session(s) => &s.username,
            Caller::Password(u) => &u.username,
        }
    }

    /// The caller's user record, as it is now: a session's user must still be enabled and
    /// in the session's epoch (a change since the lookup ends it here too).
    pub fn user(&self, app: &App) -> Result<Arc<User>, Refusal> {
        match self {
            Caller::Password(u) => Ok(u.clone()),
            // The address was checked by the session lookup.
            Caller::Session(s) => session_user(app, &s.user_id, s.epoch, None),
        }
    }
}

/// The user a session (an API session or a console sign-in) was opened for, while the session
/// still holds for them: enabled, in the same session epoch, and — when `ip` is given — calling
/// from inside their login ranges.
pub fn session_user(
    app: &App,
    user_id: &str,
    epoch: u64,
    ip: Option<IpAddr>,
) -> Result<Arc<User>, Refusal> {
    match app.store.user_by_id(user_id) {
        Ok(Some(u))
            if !u.disabled && u.session_epoch == epoch && ip.is_none_or(|ip| u.allows(ip)) =>
        {
            super::access::note_user(&u);
            Ok(u)
        }
        Ok(_) => Err(Refusal::InvalidSession),
        Err(e) => Err(Refusal::store(&e)),
    }
}

/// Proves that `password` is `user`'s current password, verified like a login (dialect
/// `password`, the password alone): a wrong one counts toward lockout and is in the login
/// history. The one way a signed-in user proves the password again before changing it or
/// their second factor (the API's password change, the console's, a new authenticator).
/// `Err(Refusal::BadCredentials)` when it is not `user`'s (wrong, locked, another user's);
/// any other refusal (rate limited, busy) as it is.
pub async fn reprove_password(
    app: &App,
    user: &User,
    password: &str,
    peer: Client,
    client: Option<&str>,
) -> Result<(), Refusal> {
    let attempt = Attempt {
        username: &user.username,
        secret: password,
        ip: peer.ip,
        dialect: Dialect::Password,
        api_version: None,
        client,
        tls: peer.tls,
        password_only: true,
        relax_ranges: false,
    };
    match app.auth.login(&attempt).await.map_err(Refusal::from) {
        Ok(v) if v.user.id == user.id => Ok(()),
        Ok(_) | Err(Refusal::Locked { .. }) => Err(Refusal::BadCredentials),
        Err(r) => Err(r),
    }
}

/// Checks a credential against the user's current state (module docs).
pub async fn identify<'a>(
    app: &App,
    credential: Credential<'_>,
    peer: Client,
    login: impl FnOnce() -> Login<'a>,
) -> Result<Caller, Refusal> {
    identify_on(app, credential, peer, login, None).await
}

/// [`identify`] for a request on a connection that remembers its last credential
/// ([`LastCredential`]: the forwarding path, where a client sends the same session id or the
/// same Basic credentials call after call).
pub async fn identify_on<'a>(
    app: &App,
    credential: Credential<'_>,
    peer: Client,
    login: impl FnOnce() -> Login<'a>,
    last: Option<&LastCredential>,
) -> Result<Caller, Refusal> {
    match credential {
        Credential::Session(sid) => match match last {
            Some(last) => app.sessions.lookup_on(&sid, peer.ip, last),
            None => app.sessions.lookup(&sid, peer.ip),
        } {
            Ok(Some(s)) => {
                super::access::note_session(&s);
                Ok(Caller::Session(s))
            }
            Ok(None) => Err(Refusal::InvalidSession),
            Err(e) => Err(Refusal::store(&e)),
        },
        Credential::Basic(basic) => {
            let (username, secret) = (basic.username(), basic.secret());
            let login = login();
            let attempt = Attempt {
                username,
                secret,
                ip: peer.ip,
                dialect: login.dialect,
                api_version: login.api_version,
                client: login.client,
                tls: peer.tls,
                password_only: login.password_only,
                relax_ranges: false,
            };
            let result = app.auth.login_on(&attempt, last).await;
            // Successes are in the login history; failures are worth a log line too.
            if result.is_err() {
                super::access::log_login(login.dialect.as_str(), username, &result, login.client);
            }
            result
                .map(|v| {
                    super::access::note_login(&v.user, &v.token);
                    Caller::Password(v.user)
                })
                .map_err(Refusal::from)
        }
        Credential::Malformed => Err(Refusal::MalformedAuthorization),
        Credential::None => Err(Refusal::InvalidSession),
    }
}
