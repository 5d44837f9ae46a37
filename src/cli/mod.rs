//! The `tokengate` command line: the clap grammar of every command, `main` (runtime, exit
//! code), configuration loading, logging set-up, and the dispatch of each command to the
//! module that carries it out.

mod demo;
mod history;
mod loadtest;
mod locate;
mod log;
mod output;
mod serve;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tokengate::admin::{self, Answer, Request};
use tokengate::config::Config;
use tokengate::server;

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

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "A TLS reverse proxy with Salesforce-style password+token logins"
)]
struct Cli {
    /// Configuration file (TOML). Without it: the file TOKENGATE_CONFIG names, else
    /// /etc/tokengate/tokengate.toml when it exists, else the built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Zero set-up demo: self-signed certificate, built-in echo upstream, a demo user.
    Demo(DemoArgs),
    /// Manage users (works while the server runs, through its admin socket).
    #[command(subcommand)]
    User(UserCommand),
    /// Security tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Settings stored in the data directory (changeable while the server runs).
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Show the login history, newest first.
    History(HistoryArgs),
    /// Show the audit trail of administrative changes, newest first; `audit verify` checks
    /// its hash chain.
    Audit(AuditArgs),
    /// Load-test a running tokengate (only ever the target you name).
    #[command(subcommand)]
    Loadtest(LoadtestCommand),
    /// Write a consistent snapshot of the data directory to FILE (also while the server runs).
    Backup { file: PathBuf },
    /// Restore a backup into an empty data directory (the server must not be running).
    Restore { file: PathBuf },
    /// Validate a configuration file and exit.
    CheckConfig,
    /// The TLS certificate.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand)]
enum TlsCommand {
    /// The certificate a server with this configuration serves: where it comes from, its
    /// names, issuer, expiry and next renewal (read from the files or the ACME cache).
    Status,
}

#[derive(Args)]
struct TargetArgs {
    /// The tokengate to test, e.g. https://127.0.0.1:8443. `run` takes it several times
    /// (replicas on one database) and spreads its connections over them.
    #[arg(long, required = true)]
    target: Vec<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for the target.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the target's certificate (testing only).
    #[arg(long)]
    insecure: bool,
    /// Where `setup` writes the synthetic users' credentials (mode 0600) and `run` reads them.
    #[arg(long, default_value = "tokengate-loadtest-users.json")]
    users_file: PathBuf,
}

#[derive(Subcommand)]
enum LoadtestCommand {
    /// Create synthetic load-test users through the admin API. The admin's password+token comes
    /// from TOKENGATE_ADMIN_SECRET (or a prompt).
    Setup {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        admin: String,
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// The server's [auth] token_length.
        #[arg(long, default_value_t = 24)]
        token_length: usize,
    },
    /// Delete every load-test user on the target.
    Cleanup {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        admin: String,
    },
    /// Run a scenario and report throughput, statuses and latency percentiles.
    Run {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, value_enum)]
        scenario: tokengate::loadtest::Scenario,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// How long to run, e.g. 30s.
        #[arg(long, default_value = "30s")]
        duration: String,
        /// Total requests per second (default: as fast as the target answers).
        #[arg(long)]
        rate: Option<f64>,
        /// Path of the proxied call (basic, session and plain scenarios).
        #[arg(long, default_value = "/services/data/v59.0/limits")]
        path: String,
        /// OAuth client for login-oauth; its secret comes from TOKENGATE_LOADTEST_CLIENT_SECRET.
        #[arg(long)]
        client_id: Option<String>,
        /// Write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw throughput and latency percentiles over time as SVG.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Args)]
struct HistoryArgs {
    /// A username (case-insensitive) or user id.
    #[arg(long)]
    user: Option<String>,
    /// An RFC 3339 time or a duration ago ("1h").
    #[arg(long)]
    since: Option<String>,
    /// success, superseded_token, bad_credentials, locked, rate_limited, disabled,
    /// outside_login_range.
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCommand>,
    /// Only records since this time (RFC 3339) or this long ago ("24h", "7d").
    #[arg(long)]
    since: Option<String>,
    /// Only changes by this actor (an admin's username, "cli:root", "system").
    #[arg(long)]
    actor: Option<String>,
    /// Only changes to this target (a username, "compliance_bcc", ...).
    #[arg(long)]
    target: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record's hash and link; name the first record where the chain breaks
    /// (exit status 1).
    Verify,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a new token and email it to the user (the old one stops working): the default
    /// token, or with --name one named token (the user's other tokens keep working).
    Reset {
        username: String,
        /// The named token to reset ("default": the default token).
        #[arg(long)]
        name: Option<String>,
    },
    /// Add a named token (one integration's, e.g. "dataloader") and email it to the user.
    Add {
        username: String,
        /// 1 to 32 of a-z, 0-9, '.', '_', '-', starting with a letter or digit; not "default".
        #[arg(long)]
        name: String,
    },
    /// List the user's tokens: name, created, last used, from where, in which dialect (never
    /// a token).
    List {
        username: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a named token: it stops working, and so do the sessions made with it.
    Revoke {
        username: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Show or change the Compliance BCC Email setting.
    ComplianceBcc {
        /// Copy every outbound message to this address.
        #[arg(long, conflicts_with = "disable")]
        enable: Option<String>,
        /// Stop sending compliance copies.
        #[arg(long)]
        disable: bool,
        /// Redact tokens in the compliance copy (true by default).
        #[arg(long)]
        redact: Option<bool>,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Data directory for the demo.
    #[arg(long, default_value = "tokengate-demo")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user with a fresh random security token.
    Add {
        username: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        full_name: String,
        #[arg(long)]
        admin: bool,
        /// An integration's account: logs in through the APIs only, never to the console.
        #[arg(long)]
        api_only: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Print the new token once, as the last line of standard output.
        #[arg(long)]
        show_token: bool,
    },
    /// Delete a user and end the user's sessions (asks first on a terminal).
    Delete {
        username: String,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Make a user an administrator.
    GrantAdmin { username: String },
    /// Take the administrator role from a user.
    RevokeAdmin { username: String },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user.
    Show {
        username: String,
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: logins fail and sessions end at once.
    Disable { username: String },
    /// Enable a disabled user.
    Enable { username: String },
    /// Change a user's settings.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["rotate_every", "login_ranges", "email", "full_name", "api_only"])))]
    Set {
        username: String,
        /// A new email address: the old and the new address are both told.
        #[arg(long)]
        email: Option<String>,
        /// A new full name.
        #[arg(long)]
        full_name: Option<String>,
        /// API only (no console sign-in): true or false.
        #[arg(long)]
        api_only: Option<bool>,
        /// Rotate the token on a schedule ("24h", "7d") or "off".
        #[arg(long)]
        rotate_every: Option<String>,
        /// Networks the user may log in from ("192.0.2.0/24,2001:db8::/32") or "none".
        #[arg(long)]
        login_ranges: Option<String>,
    },
    /// Clear a lockout.
    Unlock { username: String },
    /// Reset the user's console second factor (TOTP and recovery codes): the user enrols
    /// again at the next console sign-in. Ends the user's sessions.
    MfaReset { username: String },
    /// Set a user's password (a new token is emailed when mail is configured).
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
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

/// Runs one command. The small ones are carried out here; the others have modules of their own.
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
