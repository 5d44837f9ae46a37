//! The `[oauth]` section: the connected-app clients (id, secret, callback URLs, permitted
//! users, IP relaxation, session timeout).

use super::{from_env, invalid, nonzero};
use crate::config::{ConfigError, OAuthClient, file};

pub(in crate::config) fn oauth(o: &file::OAuth) -> Result<Vec<OAuthClient>, ConfigError> {
    let mut clients = Vec::with_capacity(o.clients.len());
    for (i, c) in o.clients.iter().enumerate() {
        let key = format!("oauth.clients[{i}]");
        if c.client_id.is_empty() || c.client_id.len() > 256 {
            return Err(invalid(
                &format!("{key}.client_id"),
                "must be 1 to 256 characters",
            ));
        }
        if clients
            .iter()
            .any(|o: &OAuthClient| o.client_id == c.client_id)
        {
            return Err(invalid(
                &format!("{key}.client_id"),
                format!("'{}' is listed twice", c.client_id),
            ));
        }
        let secret = match (&c.client_secret, &c.client_secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => from_env(&format!("{key}.client_secret_env"), var)?,
            _ => {
                return Err(invalid(
                    &format!("{key}.client_secret"),
                    "set exactly one of client_secret and client_secret_env",
                ));
            }
        };
        if secret.len() < 8 {
            return Err(invalid(
                &format!("{key}.client_secret"),
                "must be at least 8 characters",
            ));
        }
        let lifetime = nonzero(
            &format!("{key}.refresh_token_lifetime"),
            c.refresh_token_lifetime.unwrap_or(o.refresh_token_lifetime),
        )?;
        let idle = nonzero(
            &format!("{key}.refresh_token_idle"),
            c.refresh_token_idle.unwrap_or(o.refresh_token_idle),
        )?;
        if idle > lifetime {
            return Err(invalid(
                &format!("{key}.refresh_token_idle"),
                "must not be longer than refresh_token_lifetime",
            ));
        }
        let username = |k: &str, u: &str| {
            let u = crate::domain::canonical_username(u);
            if u.is_empty() || u.len() > 256 {
                Err(invalid(
                    &format!("{key}.{k}"),
                    "a username is 1 to 256 characters",
                ))
            } else {
                Ok(u)
            }
        };
        let run_as = c
            .run_as
            .as_deref()
            .map(|u| username("run_as", u))
            .transpose()?;
        if c.allow_interactive_run_as && run_as.is_none() {
            return Err(invalid(
                &format!("{key}.allow_interactive_run_as"),
                "needs run_as",
            ));
        }
        let permitted_users = match &c.permitted_users {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    &format!("{key}.permitted_users"),
                    "lists nobody: leave it out to permit every user",
                ));
            }
            Some(list) => Some(
                list.iter()
                    .map(|u| username("permitted_users", u))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let relax_ip = match c.ip_relaxation.as_deref() {
            None | Some("enforce") => false,
            Some("relax") => true,
            Some(other) => {
                return Err(invalid(
                    &format!("{key}.ip_relaxation"),
                    format!("'{other}' is not enforce or relax"),
                ));
            }
        };
        let session_idle_timeout = c
            .session_idle_timeout
            .map(|d| nonzero(&format!("{key}.session_idle_timeout"), d))
            .transpose()?;
        clients.push(OAuthClient {
            client_id: c.client_id.clone(),
            client_secret: secret,
            refresh_tokens: c.refresh_tokens,
            refresh_token_lifetime: lifetime,
            refresh_token_idle: idle,
            run_as,
            allow_interactive_run_as: c.allow_interactive_run_as,
            permitted_users,
            relax_ip,
            session_idle_timeout,
        });
    }
    Ok(clients)
}
