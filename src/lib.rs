//! tokengate: a TLS reverse proxy that gives any upstream API the Salesforce-style
//! "username + password‖security token" logins (SOAP `login()`, the OAuth 2.0 password grant,
//! HTTP Basic on every call), backed by its own embedded credential store.
//!
//! `docs/architecture.md` draws the request path; each module's own docs say what it owns.

pub mod acme;
pub mod acme_shared;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod ids;
pub mod limit;
pub mod loadtest;
pub mod mail;
pub mod metrics;
pub mod mfa;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod services;
pub mod store;
pub mod stripe;
pub mod svg;
pub mod tls;
pub mod tokens;
pub mod wire;

pub use clock::now_secs;
