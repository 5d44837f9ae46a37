//! `tokengate loadtest …`: turns the command-line arguments into calls of the library's load
//! tool (`tokengate::loadtest`) and writes its reports (text, JSON, SVG chart).

use std::io::IsTerminal as _;

use super::{CliError, LoadtestCommand, TargetArgs};

/// The targets named on the command line (one or more replicas), warning loudly when their
/// certificates go unchecked.
async fn load_targets(t: &TargetArgs) -> Result<Vec<tokengate::loadtest::Target>, CliError> {
    if t.insecure {
        eprintln!("tokengate: WARNING: --insecure: the target's certificate is NOT verified");
    }
    let mut out = Vec::with_capacity(t.target.len());
    for url in &t.target {
        out.push(tokengate::loadtest::Target::new(url, t.ca.as_deref(), t.insecure).await?);
    }
    Ok(out)
}

/// The target that `setup` and `cleanup` talk to: the first (replicas share their users).
async fn load_target(t: &TargetArgs) -> Result<tokengate::loadtest::Target, CliError> {
    let mut all = load_targets(t).await?;
    Ok(all.swap_remove(0))
}

/// The admin's password+token for `setup`/`cleanup`: the environment, else a hidden prompt.
fn admin_secret() -> Result<String, CliError> {
    match std::env::var("TOKENGATE_ADMIN_SECRET") {
        Ok(s) if !s.is_empty() => Ok(s),
        _ if std::io::stdin().is_terminal() => {
            Ok(rpassword::prompt_password("Admin password+token: ")?)
        }
        _ => {
            Err("set TOKENGATE_ADMIN_SECRET to the admin's password with the token appended".into())
        }
    }
}

/// Carries out one `tokengate loadtest` command.
pub(super) async fn loadtest(cmd: LoadtestCommand) -> Result<(), CliError> {
    use tokengate::loadtest::{self as lt, report};
    match cmd {
        LoadtestCommand::Setup {
            target,
            admin,
            users,
            token_length,
        } => {
            let t = load_target(&target).await?;
            let secret = admin_secret()?;
            let n = lt::setup(&t, &admin, &secret, users, token_length, &target.users_file).await?;
            println!(
                "created {n} load-test users; credentials in {} (mode 0600)",
                target.users_file.display()
            );
            Ok(())
        }
        LoadtestCommand::Cleanup { target, admin } => {
            let t = load_target(&target).await?;
            let secret = admin_secret()?;
            let n = lt::cleanup(&t, &admin, &secret).await?;
            println!("deleted {n} load-test users");
            Ok(())
        }
        LoadtestCommand::Run {
            target,
            scenario,
            connections,
            duration,
            rate,
            path,
            client_id,
            json,
            chart,
            quiet,
        } => {
            let t = load_targets(&target).await?;
            let duration = humantime::parse_duration(&duration)
                .map_err(|_| format!("--duration: '{duration}' is not a duration such as 30s"))?;
            if duration > std::time::Duration::from_secs(3600) {
                return Err("--duration: at most 1h".into());
            }
            let needs_users = !matches!(scenario, lt::Scenario::Flood | lt::Scenario::Plain);
            let users = if needs_users {
                lt::UsersFile::read(&target.users_file)?.users
            } else {
                Vec::new()
            };
            let oauth_client = match client_id {
                Some(id) => Some((
                    id,
                    std::env::var("TOKENGATE_LOADTEST_CLIENT_SECRET")
                        .map_err(|_| "set TOKENGATE_LOADTEST_CLIENT_SECRET for --client-id")?,
                )),
                None => None,
            };
            let results = lt::run(
                &t,
                lt::RunOptions {
                    scenario,
                    connections,
                    duration,
                    rate,
                    path,
                    users,
                    oauth_client,
                    progress: !quiet,
                },
            )
            .await?;
            for (name, s) in &results {
                print!("{}", s.text(name));
            }
            if let Some(p) = json {
                let v: serde_json::Map<String, serde_json::Value> = results
                    .iter()
                    .map(|(n, s)| (n.clone(), serde_json::to_value(s).expect("serialisable")))
                    .collect();
                std::fs::write(&p, serde_json::to_string_pretty(&v)?)
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            if let Some(p) = chart {
                let title = format!(
                    "tokengate loadtest: {:?}, {connections} connections",
                    scenario
                );
                std::fs::write(&p, report::svg_chart(&title, &results))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            Ok(())
        }
    }
}
