//! The `[mail]` section: the transport (SMTP with its security and credentials, `.eml` files,
//! or none), the sender and reply-to mailboxes, and the brand named in subjects.

use std::path::Path;

use super::{existing_file, from_env, invalid, nonzero, resolve};
use crate::config::{ConfigError, MailConfig, MailTransport, SmtpSecurity, file};

pub(in crate::config) fn mail(m: &file::Mail, base: &Path) -> Result<MailConfig, ConfigError> {
    let security = match m.security.as_str() {
        "none" => SmtpSecurity::None,
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::Tls,
        other => {
            return Err(invalid(
                "mail.security",
                format!("'{other}' is not one of none, starttls, tls"),
            ));
        }
    };
    let transport = match m.transport.as_str() {
        "none" => MailTransport::None,
        "file" => {
            let dir = m
                .dir
                .as_deref()
                .ok_or_else(|| invalid("mail.dir", "transport = \"file\" needs a directory"))?;
            MailTransport::File {
                dir: resolve(base, dir),
            }
        }
        "smtp" => {
            if m.host.is_empty() {
                return Err(invalid("mail.host", "must not be empty"));
            }
            let password = match (&m.password, &m.password_env) {
                (Some(p), None) => Some(p.clone()),
                (None, Some(var)) => Some(from_env("mail.password_env", var)?),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "mail.password",
                        "set only one of password and password_env",
                    ));
                }
            };
            let credentials = match (&m.username, password) {
                (Some(u), Some(p)) => Some((u.clone(), p)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(invalid(
                        "mail.password",
                        "mail.username is set but no password",
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "mail.username",
                        "a password is set but no username",
                    ));
                }
            };
            if credentials.is_some() && security == SmtpSecurity::None {
                return Err(invalid(
                    "mail.security",
                    "credentials would travel in clear text; use starttls or tls",
                ));
            }
            let port = m.port.unwrap_or(match security {
                SmtpSecurity::None => 25,
                SmtpSecurity::StartTls => 587,
                SmtpSecurity::Tls => 465,
            });
            let ca = match &m.ca {
                None => None,
                Some(p) => Some(existing_file("mail.ca", resolve(base, p))?),
            };
            MailTransport::Smtp {
                host: m.host.clone(),
                port,
                security,
                credentials,
                ca,
            }
        }
        other => {
            return Err(invalid(
                "mail.transport",
                format!("'{other}' is not one of none, smtp, file"),
            ));
        }
    };
    let mailbox = |key: &str, v: &str| {
        v.parse::<lettre::message::Mailbox>()
            .map_err(|e| invalid(key, format!("'{v}' is not an email address ({e})")))
    };
    if m.brand.is_empty() || m.brand.len() > 80 || m.brand.chars().any(char::is_control) {
        return Err(invalid(
            "mail.brand",
            "must be 1 to 80 printable characters",
        ));
    }
    Ok(MailConfig {
        transport,
        timeout: nonzero("mail.timeout", m.timeout)?,
        from: mailbox("mail.from", &m.from)?,
        reply_to: m
            .reply_to
            .as_deref()
            .map(|r| mailbox("mail.reply_to", r))
            .transpose()?,
        brand: m.brand.clone(),
        compliance_retry_interval: nonzero(
            "mail.compliance_retry_interval",
            m.compliance_retry_interval,
        )?,
    })
}
