//! `tokengate user …` (and the admin calls every other command shares): building the admin
//! request, reading a password, and sending the request to the running server's admin socket
//! or, with no server running, straight to the store.

use std::io::{BufRead as _, IsTerminal as _};

use tokengate::admin::{self, Answer, NewUser, Request};
use tokengate::config::Config;
use tokengate::services::ServicesError;

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

/// Runs an admin request through the running server's socket, or directly on the store when
/// no server runs on this data directory.
pub(super) async fn admin_call(cfg: &Config, req: Request) -> Result<Answer, CliError> {
    if let Some(answer) = admin::call_socket(&cfg.store.path, &req).await? {
        return Ok(answer);
    }
    let admin = tokengate::services::offline_admin(cfg).map_err(|e| match e {
        ServicesError::Store(tokengate::store::StoreError::Locked { path }) => format!(
            "the data directory {path} is locked by a running tokengate whose admin socket does not answer"
        ),
        other => other.to_string(),
    })?;
    let answer = admin.execute(req).await;
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
        UserCommand::Set {
            username,
            rotate_every,
            login_ranges,
        } => {
            let mut last = None;
            if let Some(every) = rotate_every {
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
