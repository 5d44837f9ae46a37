//! The command line's grammar: every command, subcommand, flag and its help text, as clap
//! derives it. What each command does is in `super` (the dispatch) and the modules it names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::LogFormat;

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "A TLS reverse proxy with Salesforce-style password+token logins"
)]
pub(super) struct Cli {
    /// Configuration file (TOML). Without it: the file TOKENGATE_CONFIG names, else
    /// /etc/tokengate/tokengate.toml when it exists, else the built-in defaults.
    #[arg(long, global = true)]
    pub(super) config: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
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
pub(super) enum TlsCommand {
    /// The certificate a server with this configuration serves: where it comes from, its
    /// names, issuer, expiry and next renewal (read from the files or the ACME cache).
    Status,
}

#[derive(Args)]
pub(super) struct TargetArgs {
    /// The tokengate to test, e.g. https://127.0.0.1:8443. `run` takes it several times
    /// (replicas on one database) and spreads its connections over them.
    #[arg(long, required = true)]
    pub(super) target: Vec<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for the target.
    #[arg(long, conflicts_with = "insecure")]
    pub(super) ca: Option<PathBuf>,
    /// Do not verify the target's certificate (testing only).
    #[arg(long)]
    pub(super) insecure: bool,
    /// Where `setup` writes the synthetic users' credentials (mode 0600) and `run` reads them.
    #[arg(long, default_value = "tokengate-loadtest-users.json")]
    pub(super) users_file: PathBuf,
}

#[derive(Subcommand)]
pub(super) enum LoadtestCommand {
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
pub(super) struct HistoryArgs {
    /// A username (case-insensitive) or user id.
    #[arg(long)]
    pub(super) user: Option<String>,
    /// An RFC 3339 time or a duration ago ("1h").
    #[arg(long)]
    pub(super) since: Option<String>,
    /// success, superseded_token, bad_credentials, locked, rate_limited, disabled,
    /// outside_login_range.
    #[arg(long)]
    pub(super) outcome: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub(super) limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct AuditArgs {
    #[command(subcommand)]
    pub(super) verify: Option<AuditCommand>,
    /// Only records since this time (RFC 3339) or this long ago ("24h", "7d").
    #[arg(long)]
    pub(super) since: Option<String>,
    /// Only changes by this actor (an admin's username, "cli:root", "system").
    #[arg(long)]
    pub(super) actor: Option<String>,
    /// Only changes to this target (a username, "compliance_bcc", ...).
    #[arg(long)]
    pub(super) target: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub(super) limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Check every record's hash and link; name the first record where the chain breaks
    /// (exit status 1).
    Verify,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
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
pub(super) enum SettingsCommand {
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
pub(super) struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(super) listen: String,
    /// Data directory for the demo.
    #[arg(long, default_value = "tokengate-demo")]
    pub(super) data_dir: PathBuf,
}

#[derive(Subcommand)]
pub(super) enum UserCommand {
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
