//! Notices: messages that tell a user something happened to the account (locked, email
//! address changed). They carry no secret, so their Compliance BCC copies are never redacted.

use std::sync::Arc;

use super::{MailError, Mailer, rfc3339};
use crate::store::User;

/// An account that a failed login just locked, for the email that tells its owner.
#[derive(Debug)]
pub struct LockNotice {
    pub user: User,
    /// When it locked (Unix seconds).
    pub at: u64,
    /// The address the failed login that locked it came from.
    pub ip: std::net::IpAddr,
    /// Locked until (Unix seconds); `u64::MAX`: until an administrator unlocks it.
    pub until: u64,
}

/// Lock notices waiting to be sent at most; beyond, a notice is dropped with an error log.
pub const LOCK_NOTICE_QUEUE: usize = 1000;

/// Sends queued lock notices one at a time until the queue's senders are gone.
pub async fn send_lock_notices(
    mailer: Arc<Mailer>,
    mut queue: tokio::sync::mpsc::Receiver<LockNotice>,
) {
    while let Some(n) = queue.recv().await {
        match mailer.send_lock_notice(&n).await {
            Ok(()) => tracing::info!(user = %n.user.username, "lock notice emailed"),
            Err(MailError::NotConfigured) => {}
            Err(e) => {
                tracing::warn!(user = %n.user.username, error = %e, "lock notice could not be emailed")
            }
        }
    }
}

pub(super) fn render_lock(brand: &str, n: &LockNotice) -> (String, String, String) {
    let name = if n.user.full_name.is_empty() {
        &n.user.username
    } else {
        &n.user.full_name
    };
    let until = if n.until == u64::MAX {
        "until an administrator unlocks it".to_owned()
    } else {
        format!("until {} (UTC)", rfc3339(n.until))
    };
    let subject = format!("Your {brand} account was locked");
    let text = format!(
        "Hello {name},\n\n\
Your {brand} account {username} was locked at {when} (UTC) after too many failed logins; \
the last one came from the address {ip}. It stays locked {until}.\n\n\
While it is locked, nobody can log in with it, and sessions that were open have ended.\n\n\
If the failed logins were yours (an integration with an old password or security token, \
perhaps), correct them and log in again once the lock ends. If they were not yours, \
someone may be guessing your password: tell your administrator, and change your password \
once you can log in.\n\n\
-- {brand}\n",
        username = n.user.username,
        when = rfc3339(n.at),
        ip = n.ip,
    );
    let e = |s: &str| quick_xml::escape::escape(s).into_owned();
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\">\
<p>Hello {name},</p>\
<p>Your {brand} account <strong>{username}</strong> was locked at {when} (UTC) after too many \
failed logins; the last one came from the address {ip}. It stays locked {until}.</p>\
<p>While it is locked, nobody can log in with it, and sessions that were open have ended.</p>\
<p>If the failed logins were yours (an integration with an old password or security token, \
perhaps), correct them and log in again once the lock ends. If they were not yours, someone \
may be guessing your password: tell your administrator, and change your password once you \
can log in.</p>\
<p>-- {brand}</p></body></html>",
        name = e(name),
        brand = e(brand),
        username = e(&n.user.username),
        when = rfc3339(n.at),
        ip = n.ip,
        until = e(&until),
    );
    (subject, text, html)
}

/// A user whose email address an admin changed, for the two messages that say so.
#[derive(Debug)]
pub struct EmailChange {
    /// The record after the change (its `email` is the new address).
    pub user: User,
    pub old: String,
    /// Who changed it (an admin's username, `cli:<local user>`).
    pub by: String,
    pub at: u64,
}

/// `to_old`: the message for the old address (which says where mail goes from now on).
pub(super) fn render_email_change(
    brand: &str,
    n: &EmailChange,
    to_old: bool,
) -> (String, String, String) {
    let name = if n.user.full_name.is_empty() {
        &n.user.username
    } else {
        &n.user.full_name
    };
    let subject = format!("The email address of your {brand} account changed");
    let what = if to_old {
        format!(
            "From now on, security tokens and notices for it go to {new}, not to this address.",
            new = n.user.email
        )
    } else {
        format!(
            "This is the new address: security tokens and notices for it come here from now on \
             (they went to {old} before).",
            old = n.old
        )
    };
    let text = format!(
        "Hello {name},\n\n\
The email address of your {brand} account {username} was changed at {when} (UTC) by {by}. \
{what}\n\n\
If you did not ask for this, tell your administrator at once: whoever controls the new \
address receives the account's security tokens.\n\n\
-- {brand}\n",
        username = n.user.username,
        when = rfc3339(n.at),
        by = n.by,
    );
    let e = |s: &str| quick_xml::escape::escape(s).into_owned();
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\">\
<p>Hello {name},</p>\
<p>The email address of your {brand} account <strong>{username}</strong> was changed at \
{when} (UTC) by {by}. {what}</p>\
<p>If you did not ask for this, tell your administrator at once: whoever controls the new \
address receives the account's security tokens.</p>\
<p>-- {brand}</p></body></html>",
        name = e(name),
        brand = e(brand),
        username = e(&n.user.username),
        when = rfc3339(n.at),
        by = e(&n.by),
        what = e(&what),
    );
    (subject, text, html)
}
