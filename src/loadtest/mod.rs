//! `tokengate loadtest`: the load tool ops run against the auth path before putting tokengate in
//! front of an API. `setup` creates synthetic users through the admin API, `cleanup` removes
//! them, and `run` drives one scenario over a fixed number of keep-alive HTTP/1.1 connections
//! over TLS, recording every latency in an HDR histogram (`report`).
//!
//! The tool only talks to the target it is given; it stops by itself at the end of the
//! duration, and every request has a timeout.
//!
//! The files: `target` (where the target is, how its certificate is trusted, connections and
//! requests), `users` (the synthetic users and their credentials file), `run` (scenarios and
//! the workers that drive them), `report` (what a run measured) and `chart` (its SVG).

mod chart;
pub mod report;
mod run;
mod target;
mod users;

use http::StatusCode;

pub use run::{RunOptions, Scenario, run};
pub use target::{Conn, Target, basic, request};
pub use users::{LOADTEST_DOMAIN, LoadUser, UsersFile, cleanup, default_users_file, setup};

/// Everything that can stop a setup, cleanup or run (errors of single requests during a run are
/// counted in its report instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "invalid target URL '{0}': use https://host:port (or http://host:port for --scenario plain)"
    )]
    Target(String),
    #[error("{0} sends credentials: its target must be https://")]
    PlainHttp(String),
    #[error("cannot read the CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the admin API answered {status}: {body}")]
    Admin { status: StatusCode, body: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("users file {path}: {reason}")]
    UsersFile { path: String, reason: String },
    #[error("scenario {0} needs load-test users: run `tokengate loadtest setup` first")]
    NoUsers(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
}
