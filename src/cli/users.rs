//! `tokengate user …` (and the admin calls every other command shares): building the admin
//! request, reading a password, and sending the request to the running server's admin socket
//! or, with no server running, straight to the store.

use std::io::{BufRead as _, IsTerminal as _};

use tokengate::admin::{self, AdminError, Answer, NewUser, Request, UserChanges};
use tokengate::config::{Config, MailTransport};
use tokengate::services::ServicesError;

use super::locate::{self, Route};
use super::output::print_answer;
use super::{CliError, UserCommand};

/// Reads a password: the first line of stdin with `--password-stdin`, else a hidden prompt.
fn read_password(from_stdin: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_owned();
        if pw.is_empty() {
            return Err("no password on standard input".into());
        }
        return Ok(pw);
    }
    if !std::io::stdin().is_terminal() {
        return Err("no terminal to ask for a password on; use --password-stdin".into());
    }
    let pw = rpassword::prompt_password("Password: ")?;
    let again = rpassword::prompt_password("Password (again): ")?;
    if pw != again {
        return Err("the passwords do not match".into());
    }
    Ok(pw)
}

/// Asks a yes/no question on the terminal; no terminal: no.
fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err("standard input is not a terminal: pass --yes to confirm".into());
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Runs an admin request through the running server's socket, or directly on the store when
/// no server runs on this data directory.
pub(super) async fn admin_call(cfg: &Config, req: Request) -> Result<Answer, CliError> {
    if let Some(answer) = admin::call_socket(&cfg.store.path, &req).await? {
        locate::report_store(cfg, Route::Socket);
        return Ok(answer);
    }
    // The server's own check, made before the store is opened, so a refused `user add`
    // leaves nothing behind, not even a new empty store.
    if let Request::UserAdd(new) = &req
        && !new.token_reaches_caller()
        && matches!(cfg.mail.transport, MailTransport::None)
    {
        return Err(AdminError::Undeliverable.to_string().into());
    }
    if let Request::TokenAdd { .. } = &req
        && matches!(cfg.mail.transport, MailTransport::None)
    {
        return Err(AdminError::UndeliverableToken.to_string().into());
    }
    let created = !locate::store_exists(cfg);
    let admin = tokengate::services::offline_admin(cfg).map_err(|e| match e {
        ServicesError::Store(tokengate::store::StoreError::Locked { path }) => format!(
            "the data directory {path} is locked by a running tokengate whose admin socket does not answer"
        ),
        other => other.to_string(),
    })?;
    locate::report_store(cfg, Route::Direct { created });
    let answer = admin.execute(&admin::this_account(), req).await;
    admin.store.flush()?;
    Ok(answer)
}

/// Carries out one `tokengate user` command and prints the answer.
pub(super) async fn user_command(cfg: &Config, cmd: UserCommand) -> Result<(), CliError> {
    let (req, json, show_token) = match cmd {
        UserCommand::Add {
            username,
            email,
            full_name,
            admin,
            api_only,
            password_stdin,
            show_token,
        } => {
            let password = read_password(password_stdin)?;
            (
                Request::UserAdd(NewUser {
                    username,
                    email,
                    full_name,
                    admin,
                    password,
                    api_only,
                    // Printed here: the token needs no mail to reach the admin.
                    show_token,
                    ..Default::default()
                }),
                false,
                show_token,
            )
        }
        UserCommand::List { json } => (Request::UserList, json, false),
        UserCommand::Show { username, json } => (Request::UserShow { username }, json, false),
        UserCommand::Disable { username } => (
            Request::UserSetDisabled {
                username,
                disabled: true,
            },
            false,
            false,
        ),
        UserCommand::Enable { username } => (
            Request::UserSetDisabled {
                username,
                disabled: false,
            },
            false,
            false,
        ),
        UserCommand::Delete { username, yes } => {
            if !yes && !confirm(&format!("Delete user {username} and end its sessions?"))? {
                return Err("not deleted".into());
            }
            match admin_call(
                cfg,
                Request::UserDelete {
                    username: username.clone(),
                },
            )
            .await?
            {
                Answer::Users { .. } => {
                    println!("deleted {username}");
                    return Ok(());
                }
                other => return print_answer(other, false, false),
            }
        }
        UserCommand::GrantAdmin { username } => (
            Request::UserSetAdmin {
                username,
                admin: true,
            },
            false,
            false,
        ),
        UserCommand::RevokeAdmin { username } => (
            Request::UserSetAdmin {
                username,
                admin: false,
            },
            false,
            false,
        ),
        UserCommand::Set {
            username,
            email,
            full_name,
            api_only,
            rotate_every,
            login_ranges,
        } => {
            let mut last = None;
            let changes = UserChanges {
                email,
                full_name,
                api_only,
            };
            if !changes.is_empty() {
                let req = Request::UserSet {
                    username: username.clone(),
                    changes,
                };
                last = Some(admin_call(cfg, req).await?);
            }
            if let Some(every) = rotate_every
                && !matches!(last, Some(Answer::Error { .. }))
            {
                let req = Request::UserSetRotation {
                    username: username.clone(),
                    every,
                };
                last = Some(admin_call(cfg, req).await?);
            }
            if let Some(ranges) = login_ranges
                && !matches!(last, Some(Answer::Error { .. }))
            {
                last =
                    Some(admin_call(cfg, Request::UserSetLoginRanges { username, ranges }).await?);
            }
            return print_answer(last.expect("clap requires one change"), false, false);
        }
        UserCommand::Unlock { username } => (Request::UserUnlock { username }, false, false),
        UserCommand::MfaReset { username } => (Request::UserMfaReset { username }, false, false),
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            (Request::UserPasswd { username, password }, false, false)
        }
    };
    print_answer(admin_call(cfg, req).await?, json, show_token)
}
