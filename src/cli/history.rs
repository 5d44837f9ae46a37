//! `tokengate history`: turns the command-line filters into a history query and prints the
//! answer.

use tokengate::admin::{Answer, Request};

use super::locate::ConfigSource;
use super::output::{print_answer, print_history};
use super::users::admin_call;
use super::{CliError, HistoryArgs, admin_config};

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
