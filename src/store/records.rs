//! The records the store keeps: users (with their tokens, second factor, lockout state and
//! login ranges), sessions, OAuth refresh-token families, login-history rows, and the
//! observers told of each committed change. Plain serde structs; which bytes each backend
//! writes for them is the backend's business.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::Identity;
use crate::secret::Tag;

/// A user account. `username` is canonical (lower case): usernames are case-insensitive, as
/// Salesforce's are.
#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub admin: bool,
    pub disabled: bool,
    /// argon2id PHC string.
    pub password_hash: String,
    /// HMAC-SHA256 of the current token under the server key.
    pub token_tag: Tag,
    /// Length of the current token: the secret is split at `len - token_length`
    /// (stored per user, never guessed).
    pub token_length: usize,
    /// Bumped by every credential or status change; cached verifications that carry an older
    /// epoch are dead.
    pub epoch: u64,
    /// Bumped by every change that must end the user's sessions (disable, password change,
    /// token reset unless sessions are kept, lock, login-range change); a session carries the
    /// value at login and dies on its first use after the user's moved on. Apart from `epoch`
    /// only so that `[tokens] revoke_sessions_on_reset = false` can keep sessions across a
    /// token reset while cached verifications of the old token still die.
    #[serde(default)]
    pub session_epoch: u64,
    pub created_at: u64,
    pub password_changed_at: u64,
    pub token_reset_at: u64,
    /// A token whose email is on its way: never valid until the SMTP server has accepted the
    /// message, then it replaces `token_tag`.
    #[serde(default)]
    pub pending_token: Option<TokenRecord>,
    /// The superseded token during its grace window.
    #[serde(default)]
    pub previous_token: Option<TokenRecord>,
    /// A pending token left by a process that stopped between writing it and committing it:
    /// its email may have gone out, so it is valid beside the current token until the next
    /// successful rotation (a crash never strands a user with a mailed token that fails).
    #[serde(default)]
    pub unconfirmed_token: Option<TokenRecord>,
    /// Scheduled rotation period in seconds, if any.
    #[serde(default)]
    pub rotate_every_secs: Option<u64>,
    /// When the next scheduled rotation is due (Unix seconds).
    #[serde(default)]
    pub next_rotation_at: Option<u64>,
    #[serde(default)]
    pub lockout: LockoutState,
    /// Networks logins are accepted from; empty: anywhere.
    #[serde(default)]
    pub login_ranges: Vec<ipnet::IpNet>,
    /// A synthetic user made by `tokengate loadtest setup`: its token emails go nowhere.
    #[serde(default)]
    pub loadtest: bool,
    /// An "API only" user (an integration's account): logs in through the APIs, never to the
    /// console.
    #[serde(default)]
    pub api_only: bool,
    /// The console's second factor (`mfa`).
    #[serde(default)]
    pub mfa: MfaRecord,
    /// Tokens held besides the default one, one per integration (`tokens::named`), in the
    /// order they were added.
    #[serde(default)]
    pub named_tokens: Vec<NamedToken>,
    /// The last serial given to a named token's value (serials are never reused, so a
    /// session or cached verification made with a value that was reset or revoked never
    /// matches a later one).
    #[serde(default)]
    pub named_token_serial: u64,
    /// This record's identity on a forwarded call, made at its first HTTP Basic call and
    /// shared by the later ones ([`User::identity`]). Never stored.
    #[serde(skip)]
    identity: IdentityCell,
}

/// A record's identity header values, made once. A copy of the record starts without them,
/// so a record changed from a copy can never carry its original's.
#[derive(Default)]
struct IdentityCell(std::sync::OnceLock<Identity>);

impl Clone for IdentityCell {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The name the default token goes by wherever tokens are named (history, access log, lists):
/// reserved, no named token may take it.
pub const DEFAULT_TOKEN_NAME: &str = "default";

/// A named security token: one integration's token (Data Loader, a nightly sync), reset and
/// revoked on its own. Stored, like the default token, only as a keyed hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedToken {
    /// `[a-z0-9][a-z0-9._-]{0,31}`, unique per user, never "default".
    pub name: String,
    /// Given anew (from `User::named_token_serial`) at every commit of a new value: sessions
    /// and cached verifications carry it and die when it changes or the token goes.
    pub serial: u64,
    /// HMAC-SHA256 of the current value under the server key; `None` while the first value's
    /// email is on its way (`token add` not yet committed): only a value left pending by a
    /// crashed process is then valid.
    pub tag: Option<Tag>,
    pub length: usize,
    pub created_at: u64,
    /// When the current value was committed (Unix seconds).
    pub reset_at: u64,
    /// A value whose email is on its way (as `User::pending_token`).
    #[serde(default)]
    pub pending: Option<TokenRecord>,
    /// A value left pending by a crashed process (as `User::unconfirmed_token`).
    #[serde(default)]
    pub unconfirmed: Option<TokenRecord>,
    /// The last verification with this token (Unix seconds; written at most once a minute).
    #[serde(default)]
    pub last_used_at: Option<u64>,
    #[serde(default)]
    pub last_client_ip: Option<String>,
    #[serde(default)]
    pub last_dialect: Option<String>,
}

impl User {
    /// Who a forwarded call made with this user's credentials acts for: header values made
    /// at the first call and shared (a reference count) by every later one, as a session's
    /// are — HTTP Basic calls send the same credentials call after call.
    pub fn identity(&self) -> Identity {
        self.identity
            .0
            .get_or_init(|| Identity::new(&self.username, &self.id))
            .clone()
    }

    /// The named token called `name`.
    pub fn named_token(&self, name: &str) -> Option<&NamedToken> {
        self.named_tokens.iter().find(|t| t.name == name)
    }

    /// Gives out the next serial for a named token's new value.
    pub fn next_named_serial(&mut self) -> u64 {
        self.named_token_serial += 1;
        self.named_token_serial
    }
}

/// A user's console second factor. Secrets are sealed (`Secrets::seal`), recovery codes kept
/// as keyed hashes: the store holds nothing that opens the console.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MfaRecord {
    /// The confirmed TOTP secret: the user is enrolled once it is set.
    #[serde(default)]
    pub secret: Option<Vec<u8>>,
    /// A secret shown for enrolment and not yet confirmed by a code: never accepted.
    #[serde(default)]
    pub pending: Option<Vec<u8>>,
    /// Keyed hashes of the recovery codes not used yet.
    #[serde(default)]
    pub recovery: Vec<Tag>,
    /// The last TOTP time step accepted: a code of that step or an earlier one is refused
    /// (RFC 6238 §5.2: a verifier must not accept the same code twice).
    #[serde(default)]
    pub last_step: u64,
    /// When the current secret was confirmed (Unix seconds; 0: not enrolled).
    #[serde(default)]
    pub enrolled_at: u64,
}

impl MfaRecord {
    pub fn enrolled(&self) -> bool {
        self.secret.is_some()
    }
}

/// Failed-login accounting (docs/salesforce-protocol.md §5).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockoutState {
    /// Distinct failures counted in the current window.
    pub failures: u32,
    pub window_started_at: u64,
    /// Locked until this time (Unix seconds); `u64::MAX`: until an admin unlocks.
    pub locked_until: Option<u64>,
}

impl LockoutState {
    pub fn is_locked(&self, now: u64) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }
}

/// One login attempt in the login history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryRow {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The username as the client sent it (truncated).
    pub username: String,
    pub user_id: Option<String>,
    pub source_ip: String,
    pub dialect: String,
    pub api_version: Option<String>,
    /// User-Agent, SOAP CallOptions client or OAuth client_id.
    pub client: Option<String>,
    pub tls: Option<String>,
    pub outcome: String,
    /// The internal reason (unknown user, wrong password, wrong token): for admins only.
    pub reason: Option<String>,
    /// Which token a successful login used: "default" or a named token's name; none for a
    /// password alone (a trusted network, the console) and for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Which history rows to return, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryFilter {
    /// Canonical username or user id.
    pub user: Option<String>,
    pub since_ms: Option<u64>,
    pub outcome: Option<String>,
    pub limit: usize,
}

impl HistoryFilter {
    pub fn matches(&self, r: &HistoryRow) -> bool {
        self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.outcome.as_deref().is_none_or(|o| r.outcome == o)
            && self
                .user
                .as_deref()
                .is_none_or(|u| r.username.to_lowercase() == u || r.user_id.as_deref() == Some(u))
    }
}

/// A token other than the current one, by its keyed hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub tag: Tag,
    pub length: usize,
    /// Pending tokens: when it was created. Previous tokens: until when it stays valid.
    pub at: u64,
    /// Pending tokens: the process that is delivering it (see `tokens::Tokens`), so that a
    /// later process recognises one whose delivery was cut short by a crash. 0 elsewhere.
    #[serde(default)]
    pub owner: u64,
}

impl User {
    /// A new, enabled, non-admin account with the given credentials; every other field starts
    /// empty (no pending token, no schedule, no lock, logins from anywhere).
    pub fn new(
        id: String,
        username: String,
        email: String,
        password_hash: String,
        token_tag: Tag,
        token_length: usize,
        now: u64,
    ) -> Self {
        Self {
            id,
            username,
            email,
            full_name: String::new(),
            admin: false,
            disabled: false,
            password_hash,
            token_tag,
            token_length,
            epoch: 1,
            session_epoch: 1,
            created_at: now,
            password_changed_at: now,
            token_reset_at: now,
            pending_token: None,
            previous_token: None,
            unconfirmed_token: None,
            rotate_every_secs: None,
            next_rotation_at: None,
            lockout: LockoutState::default(),
            login_ranges: Vec::new(),
            loadtest: false,
            api_only: false,
            mfa: MfaRecord::default(),
            named_tokens: Vec::new(),
            named_token_serial: 0,
            identity: IdentityCell::default(),
        }
    }
}

impl User {
    /// Ends cached verifications and sessions at once: every change of credentials or status
    /// that must end access calls this.
    /// An administrator who can act: the admin flag, and not disabled (a lockout passes).
    pub fn is_active_admin(&self) -> bool {
        self.admin && !self.disabled
    }

    pub fn end_access(&mut self) {
        self.epoch += 1;
        self.session_epoch += 1;
    }

    /// A stored record as the current code reads it: records written before `session_epoch`
    /// existed take it from `epoch`, which sessions of that time carried.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut u: User =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("user: {e}")))?;
        if u.session_epoch == 0 {
            u.session_epoch = u.epoch;
        }
        Ok(u)
    }

    /// Whether the user may log in, or use a session, from `ip` (no ranges: from anywhere).
    /// The unspecified address stands for a client that could not be identified behind a
    /// trusted proxy: it is in no range.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        ranges_allow(&self.login_ranges, ip)
    }
}

/// Whether `ip` is inside `ranges` (empty: everywhere); see [`User::allows`].
pub fn ranges_allow(ranges: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    ranges.is_empty() || (!ip.is_unspecified() && ranges.iter().any(|n| n.contains(&ip)))
}

/// A committed change to a user record, as observers hear of it.
#[derive(Debug, Clone, Copy)]
pub enum UserChange<'a> {
    Written(&'a User),
    Deleted { id: &'a str },
}

/// Called after every committed change to a user record, in the writing thread: keeps
/// in-memory state that must follow users (the session table's epochs) current without a
/// store read on the request path.
pub type UserObserver = Arc<dyn Fn(UserChange<'_>) + Send + Sync>;

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("admin", &self.admin)
            .field("disabled", &self.disabled)
            .field("epoch", &self.epoch)
            .field("session_epoch", &self.session_epoch)
            .finish_non_exhaustive()
    }
}

/// A change to the persisted sessions made elsewhere (another replica), as observers hear of
/// it.
#[derive(Debug, Clone, Copy)]
pub enum SessionChange<'a> {
    /// The session was ended (logout, revocation, eviction).
    Ended(&'a Tag),
    /// Changes may have been missed: forget every session held in memory (they are read from
    /// the store again on their next use).
    Unknown,
}

/// Called for every [`SessionChange`].
pub type SessionObserver = Arc<dyn Fn(SessionChange<'_>) + Send + Sync>;

/// Called with the key of an ACME entry another process wrote or deleted
/// ([`Store::put_acme_entry`]); [`ACME_ALL`] when changes may have been missed.
pub type AcmeObserver = Arc<dyn Fn(&str) + Send + Sync>;

/// The key an [`AcmeObserver`] is called with when every entry must be read again.
pub const ACME_ALL: &str = "*";

/// A session as persisted, keyed by the keyed hash of its id (the id itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: String,
    pub username: String,
    pub epoch: u64,
    pub created_at: u64,
    pub last_seen: u64,
    /// The serial of the named token the session was logged in with (0: the default token or
    /// none): the session ends when that token is reset or revoked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub token_serial: u64,
    /// That token's name, for the access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The session's own policy (its OAuth client's), kept with it so a restart or another
    /// replica applies the same; records written before it have the defaults.
    #[serde(default, skip_serializing_if = "SessionPolicy::is_default")]
    pub policy: SessionPolicy,
}

/// What a session's OAuth client decided for it (`[[oauth.clients]]`): its own idle timeout,
/// and whether the user's login ranges apply to its use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPolicy {
    /// Idle timeout in seconds; `None`: `[auth] session_idle_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
    /// The user's login ranges are not enforced (`ip_relaxation = "relax"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relax_ranges: bool,
}

impl SessionPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A refresh token family (RFC 6749 §6): the chain of refresh tokens one login started, each
/// use replacing the token with a new one (RFC 9700 §4.14.2). Stored under the keyed hash of
/// the family's id; `current` is the keyed hash of the one token that may be used next. No
/// token is stored. Families are not backed up (`backup`): they are credentials, and a
/// restored family would make tokens rotated away since usable again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshFamily {
    pub user_id: String,
    pub username: String,
    pub client_id: String,
    /// The user's session epoch at the login: a disable, password change, token reset, lock
    /// or login-range change moves it on and ends the family, as it ends sessions.
    pub epoch: u64,
    pub created_at: u64,
    /// The family ends then however used (the client's lifetime, from the login).
    pub expires_at: u64,
    /// ... or then, unless used before (every rotation moves it on by the client's idle time).
    pub idle_until: u64,
    pub current: Tag,
    /// The serial of the named token's value the login presented (0: the default token): the
    /// family ends when that value is reset or revoked, which moves no epoch.
    #[serde(default)]
    pub token_serial: u64,
}

impl RefreshFamily {
    /// When the family ends if nobody uses it.
    pub fn ends_at(&self) -> u64 {
        self.expires_at.min(self.idle_until)
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
