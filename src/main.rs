//! The `tokengate` command line: parse, load the configuration, dispatch.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tokengate::admin::{self, Answer, NewUser, Request, UserView};
use tokengate::config::{Config, OAuthClient};
use tokengate::server::{self, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "A TLS reverse proxy with Salesforce-style password+token logins"
)]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults are used.
    #[arg(long, global = true, env = "TOKENGATE_CONFIG")]
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
    /// Load-test a running tokengate (only ever the target you name).
    #[command(subcommand)]
    Loadtest(LoadtestCommand),
    /// Write a consistent snapshot of the data directory to FILE (also while the server runs).
    Backup { file: PathBuf },
    /// Restore a backup into an empty data directory (the server must not be running).
    Restore { file: PathBuf },
    /// Validate a configuration file and exit.
    CheckConfig,
}

#[derive(Args)]
struct TargetArgs {
    /// The tokengate to test, e.g. https://127.0.0.1:8443
    #[arg(long)]
    target: String,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a new token and email it to the user (the old one stops working).
    Reset { username: String },
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
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Print the new token once, as the last line of standard output.
        #[arg(long)]
        show_token: bool,
    },
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
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["rotate_every", "login_ranges"])))]
    Set {
        username: String,
        /// Rotate the token on a schedule ("24h", "7d") or "off".
        #[arg(long)]
        rotate_every: Option<String>,
        /// Networks the user may log in from ("192.0.2.0/24,2001:db8::/32") or "none".
        #[arg(long)]
        login_ranges: Option<String>,
    },
    /// Clear a lockout.
    Unlock { username: String },
    /// Set a user's password (a new token is emailed when mail is configured).
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> ExitCode {
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

fn load_config(path: Option<&Path>) -> Result<Config, BoxError> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::defaults(),
    })
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve => {
            let cfg = load_config(cli.config.as_deref())?;
            init_logging(&cfg.log_level, cli.log_format);
            let server = Server::start(cfg).await?;
            if server.cert.generated {
                eprintln!(
                    "tokengate: using a self-signed certificate for localhost/127.0.0.1: {}",
                    server.cert.cert.display()
                );
            }
            eprintln!(
                "tokengate: listening on {} ({})",
                server.addr, server.origin
            );
            serve_until_stopped(&server, cli.config.as_deref()).await;
            server.shutdown().await;
            Ok(())
        }
        Command::Demo(args) => demo(args).await,
        Command::History(args) => {
            let cfg = load_config(cli.config.as_deref())?;
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
        Command::Loadtest(cmd) => loadtest(cmd).await,
        Command::Backup { file } => {
            let cfg = load_config(cli.config.as_deref())?;
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
            let cfg = load_config(cli.config.as_deref())?;
            if admin::call_socket(&cfg.store.path, &Request::UserList)
                .await?
                .is_some()
            {
                return Err(
                    "a tokengate server is running on this data directory; stop it first".into(),
                );
            }
            let (store, _) = server::open_store(&cfg)?;
            let n = tokengate::backup::restore(store.as_ref(), &file)?;
            println!(
                "restored {n} records from {} into {}",
                file.display(),
                cfg.store.path.display()
            );
            Ok(())
        }
        Command::CheckConfig => {
            let path = cli.config.ok_or("check-config needs --config FILE")?;
            Config::load(&path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
        Command::User(cmd) => {
            let cfg = load_config(cli.config.as_deref())?;
            user_command(&cfg, cmd).await
        }
        Command::Token(TokenCommand::Reset { username }) => {
            let cfg = load_config(cli.config.as_deref())?;
            print_answer(
                admin_call(&cfg, Request::TokenReset { username }).await?,
                false,
                false,
            )
        }
        Command::Settings(SettingsCommand::ComplianceBcc {
            enable,
            disable,
            redact,
        }) => {
            let cfg = load_config(cli.config.as_deref())?;
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

async fn load_target(t: &TargetArgs) -> Result<tokengate::loadtest::Target, BoxError> {
    if t.insecure {
        eprintln!("tokengate: WARNING: --insecure: the target's certificate is NOT verified");
    }
    Ok(tokengate::loadtest::Target::new(&t.target, t.ca.as_deref(), t.insecure).await?)
}

fn admin_secret() -> Result<String, BoxError> {
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

async fn loadtest(cmd: LoadtestCommand) -> Result<(), BoxError> {
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
            let t = load_target(&target).await?;
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

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the configuration file, keeping the old
/// configuration when the new one is invalid.
async fn serve_until_stopped(server: &Server, config: Option<&Path>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        wait_for_signal().await;
        return;
    };
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping: finishing in-flight requests");
                return;
            }
            _ = hup.recv() => {
                let Some(path) = config else {
                    tracing::warn!("SIGHUP: no --config file to reload");
                    continue;
                };
                match Config::load(path).map_err(BoxError::from).and_then(|c| Ok(server.app.reload(&c)?)) {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the previous configuration stays in force"),
                }
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Reads a password: the first line of stdin with `--password-stdin`, else a hidden prompt.
fn read_password(from_stdin: bool) -> Result<String, BoxError> {
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
async fn admin_call(cfg: &Config, req: Request) -> Result<Answer, BoxError> {
    if let Some(answer) = admin::call_socket(&cfg.store.path, &req).await? {
        return Ok(answer);
    }
    let admin = server::open_admin(cfg).map_err(|e| match e {
        server::ServerError::Store(tokengate::store::StoreError::Locked { path }) => format!(
            "the data directory {path} is locked by a running tokengate whose admin socket does not answer"
        ),
        other => other.to_string(),
    })?;
    let answer = admin.execute(req).await;
    admin.store.flush()?;
    Ok(answer)
}

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
    if u.loadtest {
        println!("synthetic:         yes (a load-test user: its token was never emailed)");
    }
    println!("created:           {}", when(u.created_at));
    println!("password changed:  {}", when(u.password_changed_at));
    println!("token reset:       {}", when(u.token_reset_at));
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
}

async fn user_command(cfg: &Config, cmd: UserCommand) -> Result<(), BoxError> {
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

fn print_history(rows: &[tokengate::store::HistoryRow], format: Format) -> Result<(), BoxError> {
    use tokengate::history::format_ms;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Csv => print!("{}", tokengate::history::to_csv(rows, true)),
        Format::Table => {
            println!(
                "{:<24} {:<32} {:<15} {:<7} {:<20} {:<16} CLIENT",
                "TIME", "USERNAME", "SOURCE IP", "DIALECT", "OUTCOME", "REASON"
            );
            for r in rows {
                println!(
                    "{:<24} {:<32} {:<15} {:<7} {:<20} {:<16} {}",
                    format_ms(r.at_ms),
                    r.username,
                    r.source_ip,
                    r.dialect,
                    r.outcome,
                    r.reason.as_deref().unwrap_or("-"),
                    r.client.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn print_answer(answer: Answer, json: bool, show_token: bool) -> Result<(), BoxError> {
    match answer {
        Answer::Error { message } => Err(message.into()),
        Answer::History { rows } => print_history(&rows, Format::Table),
        Answer::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Answer::Rotated { user, masked_email } => {
            println!(
                "A new security token for {} was emailed to {masked_email}.",
                user.username
            );
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

const DEMO_USER: &str = "demo@example.com";
const DEMO_CLIENT_ID: &str = "tokengate-demo";

async fn demo(args: DemoArgs) -> Result<(), BoxError> {
    let mut cfg = Config::defaults();
    init_logging("info", LogFormat::Text);
    let upstream = tokengate::demo::start_echo_upstream().await?;
    cfg.upstream.url = format!("http://{upstream}").parse()?;
    cfg.store.path = std::env::current_dir()?.join(&args.data_dir);
    cfg.server.listen = args
        .listen
        .parse()
        .map_err(|_| format!("--listen: '{}' is not an address", args.listen))?;
    // The demo is reached by either name of the local machine.
    cfg.server.allowed_hosts = vec!["localhost".into(), "127.0.0.1".into()];
    // Token emails become .eml files in the demo's data directory.
    cfg.mail.transport = tokengate::config::MailTransport::File {
        dir: cfg.store.path.join("mail"),
    };
    cfg.mail.brand = "tokengate demo".into();
    let client_secret = hex_secret()?;
    cfg.oauth_clients = vec![OAuthClient {
        client_id: DEMO_CLIENT_ID.into(),
        client_secret: client_secret.clone(),
    }];
    let server = match Server::start(cfg.clone()).await {
        Ok(s) => s,
        Err(server::ServerError::Bind { .. }) => {
            // The default port is taken: any free port will do for a demo.
            cfg.server.listen = "127.0.0.1:0".parse()?;
            Server::start(cfg).await?
        }
        Err(e) => return Err(e.into()),
    };
    let users = server.app.users.clone();
    let password = server.app.secrets.generate_password()?;
    let token = tokio::task::spawn_blocking({
        let password = password.clone();
        move || -> Result<String, BoxError> {
            match users.add(NewUser {
                username: DEMO_USER.into(),
                email: DEMO_USER.into(),
                full_name: "Demo User".into(),
                admin: true,
                password: password.clone(),
                ..Default::default()
            }) {
                Ok((_, token)) => Ok(token),
                Err(admin::AdminError::Store(tokengate::store::StoreError::UserExists(_))) => {
                    Ok(users.bootstrap_credentials(DEMO_USER, &password)?)
                }
                Err(e) => Err(e.into()),
            }
        }
    })
    .await??;
    print_demo(&server, &upstream, &password, &token, &client_secret);
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

fn hex_secret() -> Result<String, BoxError> {
    let bytes = ring::rand::generate::<[u8; 16]>(&ring::rand::SystemRandom::new())
        .map_err(|_| "the OS random generator failed")?
        .expose();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn print_demo(
    server: &Server,
    upstream: &std::net::SocketAddr,
    password: &str,
    token: &str,
    client_secret: &str,
) {
    let url = &server.origin;
    let ca = server.cert.cert.display();
    let mail = server.app.cfg.store.path.join("mail").display().to_string();
    let secret = format!("{password}{token}");
    println!(
        r#"
tokengate demo is running at {url}
  upstream (built-in echo): http://{upstream}
  certificate:              {ca}

  username:        {DEMO_USER}
  password:        {password}
  security token:  {token}
  OAuth client:    client_id={DEMO_CLIENT_ID}  client_secret={client_secret}

Log in with SOAP login() (password and token appended, as Salesforce clients send it):

  curl --cacert {ca} {url}/services/Soap/u/59.0 \
    -H 'Content-Type: text/xml; charset=UTF-8' -H 'SOAPAction: login' \
    -d '<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{DEMO_USER}</username><password>{secret}</password></login></se:Body></se:Envelope>'

Log in with the OAuth 2.0 password grant and keep the session:

  SID=$(curl -s --cacert {ca} {url}/services/oauth2/token \
    -d grant_type=password -d client_id={DEMO_CLIENT_ID} -d client_secret={client_secret} \
    --data-urlencode username={DEMO_USER} --data-urlencode password={secret} \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'); echo "$SID"

Call the upstream through tokengate with the session:

  curl --cacert {ca} -H "Authorization: Bearer $SID" '{url}/services/data/v59.0/query?q=SELECT+Id+FROM+Account'

Or with HTTP Basic on every call (legacy tools):

  curl --cacert {ca} -u '{DEMO_USER}:{secret}' {url}/services/data/v59.0/sobjects

Reset the token (self-service, with the password alone); the new one arrives by email,
written as a file into {mail}:

  curl --cacert {ca} -X POST -u '{DEMO_USER}:{password}' {url}/tokengate/v1/token/reset

Press Ctrl-C to stop."#
    );
    let _ = std::io::stdout().flush();
}
