//! How the CLI prints what the admin API answers: a user's details, the users table, the
//! compliance setting, and the login history as a table, CSV or JSON.

use std::io::Write as _;

use tokengate::admin::{Answer, UserView};

use super::{CliError, Format};

/// One user's details, as aligned lines or as JSON.
fn print_user(u: &UserView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(u).expect("serialisable"));
        return;
    }
    let when = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    println!("username:          {}", u.username);
    println!("id:                {}", u.id);
    println!("email:             {}", u.email);
    println!("full name:         {}", u.full_name);
    println!("admin:             {}", u.admin);
    println!("disabled:          {}", u.disabled);
    println!("API only:          {}", u.api_only);
    if u.loadtest {
        println!("synthetic:         yes (a load-test user: its token was never emailed)");
    }
    println!("created:           {}", when(u.created_at));
    println!("password changed:  {}", when(u.password_changed_at));
    println!("token reset:       {}", when(u.token_reset_at));
    let named = if u.named_tokens.is_empty() {
        "none".to_owned()
    } else {
        u.named_tokens.join(", ")
    };
    println!("named tokens:      {named}");
    match (u.rotate_every_secs, u.next_rotation_at) {
        (Some(every), Some(next)) => println!(
            "token rotation:    every {}, next at {}",
            humantime::format_duration(std::time::Duration::from_secs(every)),
            when(next)
        ),
        _ => println!("token rotation:    off"),
    }
    match u.locked_until {
        Some(u64::MAX) => println!("locked:            until unlocked by an admin"),
        Some(t) => println!("locked:            until {}", when(t)),
        None => println!("locked:            no"),
    }
    let ranges = if u.login_ranges.is_empty() {
        "anywhere".to_owned()
    } else {
        u.login_ranges.join(", ")
    };
    println!("login ranges:      {ranges}");
    println!(
        "console 2FA:       {}",
        if u.mfa_enrolled {
            "enrolled"
        } else {
            "not enrolled"
        }
    );
}

/// Login history rows in the format `--format` chose.
pub(super) fn print_history(
    rows: &[tokengate::store::HistoryRow],
    format: Format,
) -> Result<(), CliError> {
    use tokengate::history::format_ms;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Csv => print!("{}", tokengate::history::to_csv(rows, true)),
        Format::Table => {
            println!(
                "{:<24} {:<32} {:<15} {:<7} {:<20} {:<16} {:<16} CLIENT",
                "TIME", "USERNAME", "SOURCE IP", "DIALECT", "OUTCOME", "REASON", "TOKEN"
            );
            for r in rows {
                println!(
                    "{:<24} {:<32} {:<15} {:<7} {:<20} {:<16} {:<16} {}",
                    format_ms(r.at_ms),
                    r.username,
                    r.source_ip,
                    r.dialect,
                    r.outcome,
                    r.reason.as_deref().unwrap_or("-"),
                    r.token.as_deref().unwrap_or("-"),
                    r.client.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

/// Prints an admin answer; an error answer becomes the command's error (exit code 1).
pub(super) fn print_answer(answer: Answer, json: bool, show_token: bool) -> Result<(), CliError> {
    match answer {
        Answer::Error { message } => Err(message.into()),
        Answer::Audit { records } => {
            println!("{}", serde_json::to_string_pretty(&records)?);
            Ok(())
        }
        Answer::Verified { verified } => {
            println!("audit trail intact: {} records", verified.records);
            Ok(())
        }
        Answer::AuditBroken { seq, reason } => {
            Err(format!("the audit trail is broken at record {seq}: {reason}").into())
        }
        Answer::History { rows } => print_history(&rows, Format::Table),
        Answer::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Answer::Rotated {
            user,
            masked_email,
            token,
        } => {
            match token {
                Some(name) => println!(
                    "A new security token named {name} for {} was emailed to {masked_email}.",
                    user.username
                ),
                None => println!(
                    "A new security token for {} was emailed to {masked_email}.",
                    user.username
                ),
            }
            Ok(())
        }
        Answer::Tokens { username, tokens } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            let when = |t: Option<u64>| {
                t.map_or("-".to_owned(), |t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
                    )
                    .to_string()
                })
            };
            println!("tokens of {username}:");
            println!(
                "{:<32} {:<11} {:<20} {:<20} {:<20} {:<39} DIALECT",
                "NAME", "STATE", "CREATED", "RESET", "LAST USED", "LAST CLIENT"
            );
            for t in tokens {
                println!(
                    "{:<32} {:<11} {:<20} {:<20} {:<20} {:<39} {}",
                    t.name,
                    t.state,
                    when(Some(t.created_at)),
                    when(Some(t.reset_at)),
                    when(t.last_used_at),
                    t.last_client_ip.as_deref().unwrap_or("-"),
                    t.last_dialect.as_deref().unwrap_or("-"),
                );
            }
            Ok(())
        }
        Answer::Compliance { setting } => {
            println!(
                "compliance BCC:  {}",
                if setting.enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            );
            println!(
                "address:         {}",
                setting.address.as_deref().unwrap_or("-")
            );
            println!("redact secrets:  {}", setting.redact_secrets);
            Ok(())
        }
        Answer::Users { users } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<40} {:<20} {:<6} {:<19} EMAIL",
                    "USERNAME", "ID", "ADMIN", "STATUS"
                );
                for u in users {
                    let mut status = if u.disabled { "disabled" } else { "active" }.to_owned();
                    if u.loadtest {
                        // Made by `tokengate loadtest setup`: a token no email carried.
                        status.push_str(", synthetic");
                    }
                    println!(
                        "{:<40} {:<20} {:<6} {:<19} {}",
                        u.username, u.id, u.admin, status, u.email
                    );
                }
            }
            Ok(())
        }
        Answer::User { user, token, note } => {
            print_user(&user, json);
            if let Some(note) = note {
                eprintln!("tokengate: note: {note}");
            }
            // The token is shown once, as the very last line, only when asked for.
            if let (true, Some(token)) = (show_token, token) {
                println!("{token}");
            }
            std::io::stdout().flush()?;
            Ok(())
        }
    }
}
