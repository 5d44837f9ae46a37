//! The integration tests, one binary (one link instead of one per area): each module boots the
//! real server (or the real binary) on loopback with real TLS and attacks or uses it as its
//! clients do. The helpers they share are in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod abuse;
mod access;
mod acme;
mod acme_replicas;
mod allocations;
mod audit;
mod bad_input;
mod cancellation;
mod cli;
mod console;
mod console_a11y;
mod console_flow;
mod crash;
mod forwarding;
mod fuzz_corpora;
mod hardening;
mod http_layer;
mod jsforce;
mod loadtest;
mod login;
mod mail;
mod mfa;
mod module_graph;
mod named_tokens;
mod oauth_flows;
mod ops;
mod postgres_cluster;
mod public_paths;
mod replicas;
mod repository;
mod sessions;
mod tokens;
