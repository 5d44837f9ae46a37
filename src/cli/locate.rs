//! Where the command line finds its configuration and its store, and what it tells the
//! operator about them.
//!
//! The configuration file is the first of: `--config FILE`, the `TOKENGATE_CONFIG` variable,
//! [`SYSTEM_CONFIG`] when that file exists, and otherwise the built-in defaults. Admin commands
//! say on standard error which of these they used, which store (a sled directory, or a
//! PostgreSQL database named without its password) and whether they went through the running
//! server's admin socket or opened the store themselves, so an operator who ran a command in
//! the wrong directory or with the wrong file sees it at once instead of finding an empty
//! `./tokengate-data` later.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tokengate::config::{Backend, Config};

/// The configuration the Debian package installs and the systemd unit names.
pub(super) const SYSTEM_CONFIG: &str = "/etc/tokengate/tokengate.toml";

/// The environment variable that names the configuration file when `--config` is not given.
pub(super) const CONFIG_ENV: &str = "TOKENGATE_CONFIG";

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConfigSource {
    Flag(PathBuf),
    Env(PathBuf),
    System(PathBuf),
    Defaults,
}

impl ConfigSource {
    /// Applies the discovery order to what the command line and environment hold. `system` is
    /// [`SYSTEM_CONFIG`] (a parameter so that the order can be tested without writing to
    /// `/etc`). An empty `TOKENGATE_CONFIG` counts as unset.
    pub(super) fn discover(
        flag: Option<PathBuf>,
        env: Option<OsString>,
        system: &Path,
    ) -> ConfigSource {
        if let Some(p) = flag {
            return ConfigSource::Flag(p);
        }
        if let Some(p) = env.filter(|v| !v.is_empty()) {
            return ConfigSource::Env(PathBuf::from(p));
        }
        if system.is_file() {
            return ConfigSource::System(system.to_owned());
        }
        ConfigSource::Defaults
    }

    /// The file, unless the built-in defaults are used.
    pub(super) fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::System(p) => Some(p),
            ConfigSource::Defaults => None,
        }
    }

    /// One line for the operator: the file and how it was found.
    pub(super) fn describe(&self) -> String {
        match self {
            ConfigSource::Flag(p) => format!("config {} (--config)", p.display()),
            ConfigSource::Env(p) => format!("config {} (from {CONFIG_ENV})", p.display()),
            ConfigSource::System(p) => format!("config {} (the system's)", p.display()),
            ConfigSource::Defaults => format!(
                "config: the built-in defaults (no --config, no {CONFIG_ENV}, no {SYSTEM_CONFIG})"
            ),
        }
    }

    /// Loads the configuration it names (the defaults for [`ConfigSource::Defaults`]).
    pub(super) fn load(&self) -> Result<Config, tokengate::config::ConfigError> {
        match self.path() {
            Some(p) => Config::load(p),
            None => Ok(Config::defaults()),
        }
    }
}

/// The store a configuration names, for the operator: the sled directory as an absolute path,
/// or the PostgreSQL user, host, port and database (never the password, which the URL may
/// carry).
pub(super) fn describe_store(cfg: &Config) -> String {
    let dir = std::path::absolute(&cfg.store.path).unwrap_or_else(|_| cfg.store.path.clone());
    match &cfg.store.backend {
        Backend::Sled => format!("sled store in {}", dir.display()),
        Backend::Postgres(pg) => {
            let c = &pg.connect;
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let host = match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
                    };
                    match c.get_ports().get(i).or(c.get_ports().first()) {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    }
                })
                .collect();
            let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
            let db = c.get_dbname().unwrap_or("(the user's default database)");
            format!(
                "PostgreSQL database {db} on {user}{}",
                if hosts.is_empty() {
                    "the default host".to_owned()
                } else {
                    hosts.join(",")
                }
            )
        }
    }
}

/// Whether the store a configuration names exists already. A PostgreSQL database is always
/// taken to exist: tokengate never creates databases, only its tables in one.
pub(super) fn store_exists(cfg: &Config) -> bool {
    match &cfg.store.backend {
        Backend::Sled => cfg.store.path.join("db").exists(),
        Backend::Postgres(_) => true,
    }
}

/// How an admin command reached the store.
pub(super) enum Route {
    /// Through the running server's admin socket.
    Socket,
    /// Opened by the command itself; `created`: the store did not exist before.
    Direct { created: bool },
}

/// Said once per command (`user set` may make two admin calls).
static STORE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Tells the operator, on standard error, which store an admin command used and how.
pub(super) fn report_store(cfg: &Config, route: Route) {
    if STORE_REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let store = describe_store(cfg);
    let line = match route {
        Route::Socket => format!(
            "{store}, through the running server's admin socket {}",
            tokengate::admin::socket_path(&cfg.store.path).display()
        ),
        Route::Direct { created: false } => {
            format!("{store}, opened directly (no server answers on its admin socket)")
        }
        Route::Direct { created: true } => format!(
            "created a new {store}: none existed there (opened directly; check the config if you expected one)"
        ),
    };
    eprintln!("tokengate: store: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_variable_then_the_system_file_then_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("tokengate.toml");
        let flag = Some(PathBuf::from("a.toml"));
        let env = Some(OsString::from("b.toml"));
        assert_eq!(
            ConfigSource::discover(flag.clone(), env.clone(), &system),
            ConfigSource::Flag("a.toml".into())
        );
        assert_eq!(
            ConfigSource::discover(None, env.clone(), &system),
            ConfigSource::Env("b.toml".into())
        );
        // No system file yet: the defaults; an empty variable counts as unset.
        assert_eq!(
            ConfigSource::discover(None, Some(OsString::new()), &system),
            ConfigSource::Defaults
        );
        std::fs::write(&system, "").unwrap();
        assert_eq!(
            ConfigSource::discover(None, None, &system),
            ConfigSource::System(system.clone())
        );
        assert_eq!(
            ConfigSource::discover(None, Some(OsString::new()), &system),
            ConfigSource::System(system.clone())
        );
        assert_eq!(
            ConfigSource::discover(None, env, &system),
            ConfigSource::Env("b.toml".into())
        );
        // A directory of that name is not a configuration file.
        let as_dir = dir.path().join("dir.toml");
        std::fs::create_dir(&as_dir).unwrap();
        assert_eq!(
            ConfigSource::discover(None, None, &as_dir),
            ConfigSource::Defaults
        );
    }

    #[test]
    fn a_database_is_named_without_its_password() {
        let cfg = Config::from_toml(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://tg:hunter2secret@db.example:6543/tokens?sslmode=disable\"\n",
            Path::new("/etc/tokengate/tokengate.toml"),
        )
        .unwrap();
        let d = describe_store(&cfg);
        assert_eq!(d, "PostgreSQL database tokens on tg@db.example:6543");
        assert!(!d.contains("hunter2"));
        let cfg = Config::from_toml(
            "[store]\npath = \"data\"\n",
            Path::new("/etc/tokengate/tokengate.toml"),
        )
        .unwrap();
        assert_eq!(describe_store(&cfg), "sled store in /etc/tokengate/data");
    }
}
