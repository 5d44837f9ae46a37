//! `tokengate serve`: starts the proxy and keeps it running until SIGTERM or SIGINT, reloading
//! the configuration on SIGHUP. `Signals` is shared with the demo.

use std::path::Path;

use tokio::signal::unix::{Signal, SignalKind, signal};

use tokengate::config::Config;
use tokengate::server::Server;

use super::locate::ConfigSource;
use super::{CliError, LogFormat, init_logging};

/// Runs the proxy until it is told to stop, then lets in-flight requests finish.
pub(super) async fn serve(source: &ConfigSource, log_format: LogFormat) -> Result<(), CliError> {
    // The handlers are installed before anything is printed: a supervisor that sends SIGTERM or
    // SIGHUP as soon as the process speaks (or the moment it reads "listening on") must get a
    // graceful stop or a reload, never the signal's default action, which kills the process.
    let signals = Signals::install();
    let cfg = source.load()?;
    let _log = init_logging(&cfg.log_level, log_format);
    tracing::info!(store = %super::locate::describe_store(&cfg), "{}", source.describe());
    let config = source.path();
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
    serve_until_stopped(&server, config, signals).await;
    server.shutdown().await;
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, listened for from the moment this is made.
pub(super) struct Signals {
    term: Option<(Signal, Signal)>,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs the handlers now (tokio's `signal()` replaces the default action at once, not
    /// when first polled). Where they cannot be installed, Ctrl-C alone stops the process.
    pub(super) fn install() -> Self {
        let term = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => None,
        };
        Self {
            term,
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Waits for SIGTERM or SIGINT.
    pub(super) async fn stopped(&mut self) {
        match &mut self.term {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the configuration file, keeping the old
/// configuration when the new one is invalid.
async fn serve_until_stopped(server: &Server, config: Option<&Path>, mut signals: Signals) {
    let Some(mut hup) = signals.hup.take() else {
        signals.stopped().await;
        return;
    };
    loop {
        tokio::select! {
            _ = signals.stopped() => {
                tracing::info!("stopping: finishing in-flight requests");
                return;
            }
            _ = hup.recv() => {
                let Some(path) = config else {
                    tracing::warn!("SIGHUP: no --config file to reload");
                    continue;
                };
                match Config::load(path).map_err(CliError::from).and_then(|c| Ok(server.app.reload(&c)?)) {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the previous configuration stays in force"),
                }
            }
        }
    }
}
