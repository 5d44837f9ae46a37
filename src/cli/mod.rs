//! The `tokengate` command line: `main` (runtime, exit code), configuration loading, logging
//! set-up, and the dispatch of each command to the module that carries it out. The clap
//! grammar of every command is `args`.

mod args;
mod demo;
mod history;
mod loadtest;
mod locate;
mod log;
mod output;
mod serve;
mod users;

use std::process::ExitCode;

use clap::Parser;

use tokengate::admin::{self, Answer, Request};
use tokengate::config::Config;
use tokengate::server;

use args::{
    AuditArgs, AuditCommand, Cli, Command, DemoArgs, Format, HistoryArgs, LoadtestCommand,
    SettingsCommand, TargetArgs, TlsCommand, TokenCommand, UserCommand,
};
use locate::ConfigSource;
use output::print_answer;
use users::admin_call;

/// Whatever ends a command with exit code 1. `main` prints it as `tokengate: {error}`: the
/// CLI's own messages as they are, every other error with its own message (`transparent`).
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A message of the CLI's own: a bad flag value, a missing setting, a refused state.
    #[error("{0}")]
    Message(String),
    #[error(transparent)]
    Config(#[from] tokengate::config::ConfigError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Services(#[from] tokengate::services::ServicesError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Store(#[from] tokengate::store::StoreError),
    #[error(transparent)]
    Backup(#[from] tokengate::backup::BackupError),
    #[error(transparent)]
    Secret(#[from] tokengate::secret::SecretError),
    #[error(transparent)]
    Load(#[from] tokengate::loadtest::LoadError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Uri(#[from] http::uri::InvalidUri),
    #[error(transparent)]
    Addr(#[from] std::net::AddrParseError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        Self::Message(message.to_owned())
    }
}

/// Parses the command line, runs the command on a multi-threaded runtime, and turns the
/// outcome into the exit code: success, or failure with the error on standard error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokengate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration an admin command runs with, after saying on standard error where it
/// came from (the store it names is reported once the command knows how it reaches it).
fn admin_config(source: &ConfigSource) -> Result<Config, CliError> {
    let cfg = source.load()?;
    eprintln!("tokengate: {}", source.describe());
    Ok(cfg)
}

/// Logs to standard error through a buffer (`log`); `RUST_LOG` overrides the configured
/// level. Keep the answer until exit: dropping it writes out what is buffered.
fn init_logging(level: &str, format: LogFormat) -> log::Flusher {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, flusher) = log::buffered_stderr();
    // Colours only for a person at a terminal, never into a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.map_event_format(log::WithRequestId).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .map_event_format(log::WithRequestId)
            .try_init(),
    };
    flusher
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `tokengate tls status`.
async fn tls_status(cfg: &Config) -> Result<(), CliError> {
    use tokengate::tls::CertInfo;
    let time = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    let (source, info, renewal) = if let Some(acme) = &cfg.tls.acme {
        // Replicas on PostgreSQL share the certificate through the database (acme_shared).
        let (source, chain) =
            if matches!(cfg.store.backend, tokengate::config::Backend::Postgres(_)) {
                let data = tokengate::services::DataDir::open(cfg)?;
                let shared = tokengate::acme_shared::Shared {
                    store: data.store,
                    secrets: data.secrets,
                };
                let chain = tokengate::acme_shared::stored_chain(&shared, acme)
                    .map_err(|e| e.to_string())?;
                (
                    format!(
                        "ACME, {} (shared by the replicas through PostgreSQL)",
                        acme.directory
                    ),
                    chain,
                )
            } else {
                (
                    format!("ACME, {} (cache {})", acme.directory, acme.cache.display()),
                    tokengate::acme::cached_chain(acme).await,
                )
            };
        match chain {
            Some(chain) => {
                let info = CertInfo::of(&chain[0])
                    .ok_or_else(|| "the cached certificate does not parse".to_owned())?;
                let due = tokengate::acme::renewal_due(info.not_before, info.not_after);
                let renewal = format!("{} (by tokengate, two thirds into its lifetime)", time(due));
                (source, info, renewal)
            }
            None => {
                println!("source: {source}");
                println!(
                    "certificate: none issued yet for {}; the self-signed placeholder is served until the CA issues one",
                    acme.domains.join(", ")
                );
                return Ok(());
            }
        }
    } else if let Some(cert) = &cfg.tls.cert {
        let info = CertInfo::of_pem_file(cert)
            .ok_or_else(|| format!("{}: no readable certificate", cert.display()))?;
        (
            format!("files, {}", cert.display()),
            info,
            "by you: replace the files and reload".to_owned(),
        )
    } else {
        let cert = cfg.store.path.join("tls").join("cert.pem");
        let Some(info) = CertInfo::of_pem_file(&cert) else {
            println!(
                "source: self-signed, {} (not generated yet: the server makes it at start)",
                cert.display()
            );
            return Ok(());
        };
        let due = info.not_after.saturating_sub(30 * 86_400);
        (
            format!("self-signed, {}", cert.display()),
            info,
            format!(
                "{} (made anew at a start within 30 days of its end)",
                time(due)
            ),
        )
    };
    let now = tokengate::now_secs();
    println!("source: {source}");
    println!("names: {}", info.names.join(", "));
    println!("issuer: {}", info.issuer);
    println!(
        "not after: {} ({})",
        time(info.not_after),
        if info.not_after > now {
            format!("in {} days", (info.not_after - now) / 86_400)
        } else {
            "EXPIRED".to_owned()
        }
    );
    println!("next renewal: {renewal}");
    Ok(())
}

/// Runs one command. The small ones are carried out here; the others have modules of their own.
async fn run(cli: Cli) -> Result<(), CliError> {
    let source = ConfigSource::discover(
        cli.config,
        std::env::var_os(locate::CONFIG_ENV),
        std::path::Path::new(locate::SYSTEM_CONFIG),
    );
    match cli.command {
        Command::Serve => serve::serve(&source, cli.log_format).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::History(args) => history::history(&source, args).await,
        Command::Audit(args) => history::audit(&source, args).await,
        Command::Loadtest(cmd) => loadtest::loadtest(cmd).await,
        Command::Backup { file } => {
            let cfg = admin_config(&source)?;
            let file = std::path::absolute(&file)?;
            match admin_call(
                &cfg,
                Request::Backup {
                    path: file.display().to_string(),
                },
            )
            .await?
            {
                Answer::Error { message } => Err(message.into()),
                Answer::Done { message } => {
                    println!("{message}");
                    Ok(())
                }
                other => print_answer(other, false, false),
            }
        }
        Command::Restore { file } => {
            let cfg = admin_config(&source)?;
            if admin::call_socket(&cfg.store.path, &Request::UserList)
                .await?
                .is_some()
            {
                return Err(format!(
                    "a tokengate server is running on the {}; stop it first",
                    locate::describe_store(&cfg)
                )
                .into());
            }
            let created = !locate::store_exists(&cfg);
            let store = tokengate::services::DataDir::open_store(&cfg)?;
            locate::report_store(&cfg, locate::Route::Direct { created });
            let n = tokengate::backup::restore(store.as_ref(), &file)?;
            // Recorded in the restored trail, after its own records.
            tokengate::audit::Audit::new(store.clone(), Default::default()).record(
                tokengate::audit::Entry {
                    actor: admin::this_account(),
                    action: "restore",
                    target: file.display().to_string(),
                    changes: vec![tokengate::audit::Change {
                        field: "records".into(),
                        before: None,
                        after: Some(n.to_string()),
                    }],
                },
            );
            store.flush()?;
            println!(
                "restored {n} records from {} into {}",
                file.display(),
                cfg.store.path.display()
            );
            Ok(())
        }
        Command::Tls(TlsCommand::Status) => tls_status(&admin_config(&source)?).await,
        Command::CheckConfig => {
            let path = source.path().ok_or_else(|| {
                format!(
                    "check-config needs a configuration file: --config FILE, {} or {}",
                    locate::CONFIG_ENV,
                    locate::SYSTEM_CONFIG
                )
            })?;
            let cfg = Config::load(path)?;
            // The ACME CA is asked for its directory: a URL that parses but leads nowhere is
            // found here rather than by the first order.
            if let Some(acme) = &cfg.tls.acme {
                tokengate::acme::check_directory(acme)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // A database is checked for real: reachable, and its schema brought up to date.
            if let tokengate::config::Backend::Postgres(pg) = &cfg.store.backend {
                let pg = pg.clone();
                let (version, [idle, interval, count, user_timeout]) =
                    tokio::task::spawn_blocking(move || {
                        let store = tokengate::store::postgres::PgStore::connect(&pg)?;
                        Ok::<_, tokengate::store::StoreError>((
                            store.schema_version()?,
                            store.dead_peer_settings()?,
                        ))
                    })
                    .await??;
                println!(
                    "{}: ok (PostgreSQL schema version {version}; the server gives a silent \
                     replica up after tcp_keepalives_idle {idle} s, tcp_keepalives_interval \
                     {interval} s, tcp_keepalives_count {count}, tcp_user_timeout \
                     {user_timeout} ms)",
                    path.display()
                );
            } else {
                println!("{}: ok", path.display());
            }
            Ok(())
        }
        Command::User(cmd) => {
            let cfg = admin_config(&source)?;
            users::user_command(&cfg, cmd).await
        }
        Command::Token(cmd) => {
            let cfg = admin_config(&source)?;
            let (req, json) = match cmd {
                TokenCommand::Reset { username, name } => (
                    Request::TokenReset {
                        username,
                        name: name.filter(|n| n != tokengate::store::DEFAULT_TOKEN_NAME),
                    },
                    false,
                ),
                TokenCommand::Add { username, name } => {
                    (Request::TokenAdd { username, name }, false)
                }
                TokenCommand::List { username, json } => (Request::TokenList { username }, json),
                TokenCommand::Revoke { username, name } => {
                    (Request::TokenRevoke { username, name }, false)
                }
            };
            print_answer(admin_call(&cfg, req).await?, json, false)
        }
        Command::Settings(SettingsCommand::ComplianceBcc {
            enable,
            disable,
            redact,
        }) => {
            let cfg = admin_config(&source)?;
            let req = if enable.is_none() && !disable && redact.is_none() {
                Request::ComplianceGet
            } else {
                Request::ComplianceSet {
                    address: enable,
                    disable,
                    redact,
                }
            };
            print_answer(admin_call(&cfg, req).await?, false, false)
        }
    }
}
