//! The vocabulary every layer shares, and nothing else: how a client logged in ([`Dialect`]),
//! what came of it ([`Outcome`]), why a login failed ([`Reason`]), why a token was issued
//! ([`TokenReason`]), the stored form of a username, and the values of the identity headers
//! the upstream gets ([`Identity`]). A leaf: it imports no other module of tokengate, so
//! `auth`, `history`, `mail`, `metrics` and `store` can all use it without importing each
//! other.

use serde::{Deserialize, Serialize};

/// How the client logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Soap,
    OAuth,
    /// HTTP Basic on a call: verified per call, no session.
    Basic,
    Console,
    /// The self-service token reset's password check.
    Reset,
    /// The current password a password change must present.
    Password,
}

impl Dialect {
    pub const ALL: [Dialect; 6] = [
        Dialect::Soap,
        Dialect::OAuth,
        Dialect::Basic,
        Dialect::Console,
        Dialect::Reset,
        Dialect::Password,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Soap => "soap",
            Dialect::OAuth => "oauth",
            Dialect::Basic => "basic",
            Dialect::Console => "console",
            Dialect::Reset => "reset",
            Dialect::Password => "password",
        }
    }
}

/// What came of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Success with the previous token during its grace window.
    SupersededToken,
    BadCredentials,
    Locked,
    RateLimited,
    Disabled,
    OutsideLoginRange,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::SupersededToken => "superseded_token",
            Outcome::BadCredentials => "bad_credentials",
            Outcome::Locked => "locked",
            Outcome::RateLimited => "rate_limited",
            Outcome::Disabled => "disabled",
            Outcome::OutsideLoginRange => "outside_login_range",
        }
    }

    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::SupersededToken,
        Outcome::BadCredentials,
        Outcome::Locked,
        Outcome::RateLimited,
        Outcome::Disabled,
        Outcome::OutsideLoginRange,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Why a login failed. For the login history and logs only: every reason gets the same answer
/// on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownUser,
    Disabled,
    WrongToken,
    WrongPassword,
    Malformed,
    OutsideLoginRange,
    /// The console's second factor: a code that is not the user's.
    WrongCode,
    /// The console's second factor: a right code whose time step was already used.
    ReplayedCode,
    /// An OAuth refresh token used a second time: its family was revoked.
    RefreshTokenReused,
    /// An OAuth login by a user the client's `permitted_users` does not list.
    NotPermittedForClient,
    /// The client_credentials grant's `run_as` user is unknown, disabled, or not API-only.
    RunAsRefused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownUser => "unknown user",
            Reason::Disabled => "disabled",
            Reason::WrongToken => "wrong token",
            Reason::WrongPassword => "wrong password",
            Reason::Malformed => "malformed credentials",
            Reason::OutsideLoginRange => "outside login range",
            Reason::WrongCode => "wrong verification code",
            Reason::ReplayedCode => "replayed verification code",
            Reason::RefreshTokenReused => "refresh token reused; its family was revoked",
            Reason::NotPermittedForClient => "not permitted for this OAuth client",
            Reason::RunAsRefused => "client credentials user not usable",
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Reason::Disabled => Outcome::Disabled,
            Reason::OutsideLoginRange => Outcome::OutsideLoginRange,
            _ => Outcome::BadCredentials,
        }
    }
}

/// Why a token was issued; named in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenReason {
    AccountCreated,
    Requested,
    AdminRotation,
    PasswordChange,
    Scheduled,
    /// A named token (one integration's) was added.
    IntegrationAdded,
}

impl TokenReason {
    pub fn describe(self) -> &'static str {
        match self {
            TokenReason::AccountCreated => "your account was created",
            TokenReason::Requested => "you asked for a new security token",
            TokenReason::AdminRotation => "an administrator reset your security token",
            TokenReason::PasswordChange => "your password was changed",
            TokenReason::Scheduled => "your account's token is rotated on a schedule",
            TokenReason::IntegrationAdded => "a token was added for one of your integrations",
        }
    }
}

/// Usernames are case-insensitive, like Salesforce's; this is the stored form.
pub fn canonical_username(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Who a forwarded request acts for, as the upstream reads it: the values of
/// `X-Tokengate-User` and `X-Tokengate-User-Id`. Made once per session (at login, or when a
/// replica first sees the session) or per user record (at its first HTTP Basic call), and
/// cloned per request, which only counts a reference: the authenticated-call path builds no
/// header value of its own.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `None` for a name that is not a valid header value (the header is then not sent).
    pub username: Option<http::HeaderValue>,
    pub user_id: Option<http::HeaderValue>,
}

impl Identity {
    /// Values whose clones share one copy (a session's, a user record's).
    pub fn new(username: &str, user_id: &str) -> Self {
        Self {
            username: shared_value(username.to_owned()),
            user_id: shared_value(user_id.to_owned()),
        }
    }
}

/// A header value whose clones share one reference-counted copy of `text` (a value made from
/// a `Vec` would allocate again at its first clone).
pub fn shared_value(text: String) -> Option<http::HeaderValue> {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)).ok()
}
