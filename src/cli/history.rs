//! `tokengate history`: turns the command-line filters into a history query and prints the
//! answer.

use tokengate::admin::{Answer, Request};

use super::locate::ConfigSource;
use super::output::{print_answer, print_history};
use super::users::admin_call;
use super::{AuditArgs, AuditCommand, CliError, Format, HistoryArgs, admin_config};

/// Prints the login history the filters select, newest first.
pub(super) async fn history(source: &ConfigSource, args: HistoryArgs) -> Result<(), CliError> {
    let cfg = admin_config(source)?;
    let filter = tokengate::history::filter(
        args.user.as_deref(),
        args.since.as_deref(),
        args.outcome.as_deref(),
        args.limit.clamp(1, 1_000_000),
    )
    .map_err(|e| format!("--{e}"))?;
    match admin_call(&cfg, Request::History { filter }).await? {
        Answer::History { rows } => print_history(&rows, args.format),
        other => print_answer(other, false, false),
    }
}

/// `tokengate audit`: prints the records the filters select, newest first; `audit verify`
/// checks the chain and fails when it is broken.
pub(super) async fn audit(source: &ConfigSource, args: AuditArgs) -> Result<(), CliError> {
    let cfg = admin_config(source)?;
    if let Some(AuditCommand::Verify) = args.verify {
        return match admin_call(&cfg, Request::AuditVerify).await? {
            Answer::Verified { verified } => {
                match (verified.first_seq, verified.last_seq) {
                    (Some(a), Some(b)) => println!(
                        "audit trail intact: {} records ({a} to {b}{})",
                        verified.records,
                        if verified.anchored {
                            "; older records removed by retention"
                        } else {
                            ""
                        }
                    ),
                    _ => println!("audit trail intact: no records"),
                }
                Ok(())
            }
            Answer::AuditBroken { seq, reason } => Err(CliError::from(format!(
                "the audit trail is broken at record {seq}: {reason}"
            ))),
            other => print_answer(other, false, false),
        };
    }
    let mut filter = tokengate::audit::Filter::from_query(
        |k| match k {
            "since" => args.since.as_deref(),
            "actor" => args.actor.as_deref(),
            "target" => args.target.as_deref(),
            _ => None,
        },
        100,
    )
    .map_err(|e| format!("--{e}"))?;
    // The CLI may ask for more than a page of the API.
    filter.limit = args.limit.clamp(1, 1_000_000);
    let records = match admin_call(&cfg, Request::Audit { filter }).await? {
        Answer::Audit { records } => records,
        other => return print_answer(other, false, false),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Format::Csv => print!("{}", tokengate::audit::to_csv(&records)),
        Format::Table => {
            println!(
                "{:<6} {:<24} {:<20} {:<8} {:<20} {:<24} CHANGES",
                "SEQ", "TIME", "ACTOR", "CHANNEL", "ACTION", "TARGET"
            );
            for r in &records {
                println!(
                    "{:<6} {:<24} {:<20} {:<8} {:<20} {:<24} {}",
                    r.seq,
                    tokengate::history::format_ms(r.at_ms),
                    r.actor,
                    r.channel.as_str(),
                    r.action,
                    r.target,
                    r.describe_changes()
                );
            }
        }
    }
    Ok(())
}
