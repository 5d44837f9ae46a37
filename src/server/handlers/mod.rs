//! The handlers of the requests tokengate answers itself or forwards, one file per kind:
//! SOAP (`soap`), the OAuth endpoints (`oauth`), the identity URLs (`identity`), forwarded
//! calls (`forward`) and health checks (`health`); the JSON API and the console have modules
//! of their own. Each handler parses with `wire`, decides with `auth`, and answers in its
//! caller's dialect. What they share is below.

pub mod forward;
pub mod health;
pub mod identity;
pub mod oauth;
pub mod soap;

use super::App;
use crate::store::User;
use crate::wire::{oauth as oauth_wire, soap as soap_wire};

pub(crate) fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn user_info<'a>(app: &'a App, user: &'a User) -> soap_wire::UserInfo<'a> {
    soap_wire::UserInfo {
        org: &app.cfg.server.org,
        org_name: &app.cfg.server.org_name,
        user_id: &user.id,
        username: &user.username,
        full_name: &user.full_name,
        email: &user.email,
        session_seconds_valid: app.sessions.idle_timeout_secs(),
    }
}

fn identity_of<'a>(app: &'a App, user: &'a User) -> oauth_wire::Identity<'a> {
    oauth_wire::Identity {
        origin: &app.origin,
        org18: &app.cfg.server.org.id18,
        user_id: &user.id,
        username: &user.username,
        full_name: &user.full_name,
        email: &user.email,
        last_modified: user.password_changed_at.max(user.token_reset_at),
    }
}
