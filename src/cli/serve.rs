//! `tokengate serve`: starts the proxy and keeps it running until SIGTERM or SIGINT, reloading
//! the configuration on SIGHUP. `wait_for_signal` is shared with the demo.

use std::path::Path;

use tokengate::config::Config;
use tokengate::server::Server;

use super::locate::ConfigSource;
use super::{CliError, LogFormat, init_logging};

/// Runs the proxy until it is told to stop, then lets in-flight requests finish.
pub(super) async fn serve(source: &ConfigSource, log_format: LogFormat) -> Result<(), CliError> {
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
    serve_until_stopped(&server, config).await;
    server.shutdown().await;
    Ok(())
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
                match Config::load(path).map_err(CliError::from).and_then(|c| Ok(server.app.reload(&c)?)) {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the previous configuration stays in force"),
                }
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C alone where the signal handlers cannot be installed).
pub(super) async fn wait_for_signal() {
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
