//! Reading a configuration: the file's text through the TOML structs of `file` and the
//! checks of `validate` into a [`Config`], and parse errors that name the key and quote the
//! line at fault.

use std::path::Path;

use super::{Config, ConfigError, file, validate};

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `path` only labels errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: file::ConfigFile =
            toml::from_str(text).map_err(|e| read_error(text, path, &e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base)
    }

    /// The embedded defaults (what `demo` and a missing config start from).
    pub fn defaults() -> Self {
        Self::from_file(file::ConfigFile::default(), Path::new("."))
            .expect("built-in defaults are valid")
    }

    /// Validates the file structs. Relative paths are resolved against `base` (the directory
    /// of the config file), so a config works whatever the current directory is.
    pub fn from_file(f: file::ConfigFile, base: &Path) -> Result<Self, ConfigError> {
        // Sections are checked in this order; the first problem is the one reported.
        let server = validate::server(&f.server)?;
        let tls = validate::tls(&f.tls, base)?;
        let upstream = validate::upstream(&f.upstream, base)?;
        let store = validate::store(&f.store, base)?;
        Ok(Self {
            tls: validate::acme_cache_default(tls, &store.path),
            server,
            upstream,
            store,
            auth: validate::auth(&f.auth)?,
            oauth_clients: validate::oauth(&f.oauth)?,
            refresh_families_per_user: validate::bounded(
                "oauth.max_refresh_families_per_user",
                f.oauth.max_refresh_families_per_user,
                1,
                10_000,
            )?,
            tokens: validate::tokens(&f.tokens)?,
            mail: validate::mail(&f.mail, base)?,
            limits: validate::limits(&f.limits)?,
            lockout: validate::lockout(&f.lockout)?,
            console: validate::console(&f.console)?,
            metrics_listen: validate::metrics(&f.metrics)?,
            history: validate::history(&f.history)?,
            log_level: validate::log(&f.log)?,
            log_access: f.log.access,
            allow_synthetic_users: f.loadtest.allow_synthetic_users,
        })
    }
}

/// A TOML error as a [`ConfigError`]. A duration the file structs could not read is reported
/// like any other bad value, by its key (`config key auth.session_idle_timeout: 'soon' is not a
/// duration such as 15m or 2h (...)`); everything else (syntax, unknown keys, wrong types) by
/// its line, in the TOML reader's words.
fn read_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message();
    // The words of `humantime_serde` and of `file`'s own duration readers.
    if message.starts_with("invalid value: string ")
        && message.contains("expected a duration")
        && let Some((key, value)) = e.span().and_then(|s| string_at(text, s.start))
    {
        return ConfigError::Invalid {
            problem: file::duration_problem(&key, &value),
            key,
        };
    }
    let line = e
        .span()
        .map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        })
        .unwrap_or(0);
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        message: message.replace('\n', " "),
    }
}

/// The dotted key (`auth.session_idle_timeout`) and the value of the string that holds byte
/// `at` of `text`; `None` when the text is not TOML or no string value is there.
fn string_at(text: &str, at: usize) -> Option<(String, String)> {
    use toml::de::{DeTable, DeValue};

    // Every table is searched: a table's own span need not cover the lines under its header.
    fn in_table(table: &DeTable<'_>, at: usize, path: &str) -> Option<(String, String)> {
        table.iter().find_map(|(key, value)| {
            let path = if path.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{path}.{}", key.get_ref())
            };
            match value.get_ref() {
                DeValue::String(s) if value.span().contains(&at) => Some((path, s.to_string())),
                DeValue::Table(table) => in_table(table, at, &path),
                DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item
                    .get_ref()
                {
                    DeValue::Table(table) => in_table(table, at, &format!("{path}[{i}]")),
                    _ => None,
                }),
                _ => None,
            }
        })
    }

    let doc = DeTable::parse(text).ok()?;
    in_table(doc.get_ref(), at, "")
}
