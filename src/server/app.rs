//! The state every request handler shares ([`App`]): the configuration, the services, the
//! bounded resources (body memory, reset slots, limiters), and what may be swapped while the
//! server runs ([`Live`]: the TLS configuration and the OAuth clients, on reload).

use super::*;

/// Everything a request handler needs, shared by all connections.
pub struct App {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
    pub auth: Authenticator,
    pub sessions: Arc<Sessions>,
    /// OAuth refresh token families.
    pub refresh: crate::auth::refresh::RefreshTokens,
    pub upstream: Upstream,
    pub users: Arc<Users>,
    pub history: Arc<History>,
    pub tokens: Arc<Tokens>,
    pub admin: Arc<Admin>,
    pub console: console::Console,
    /// This server's counters and histograms.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Self-service token resets per canonical username and per client address.
    pub reset_per_user: KeyedLimiter<String>,
    pub reset_per_ip: KeyedLimiter<std::net::IpAddr>,
    /// Self-service resets whose rotation runs detached from the answer, at most.
    pub reset_slots: Arc<Semaphore>,
    /// The memory request bodies may take, all requests together.
    pub bodies: Arc<Budget>,
    /// Lower-case host names clients may address (421 otherwise).
    pub hosts: Vec<String>,
    /// `https://host[:port]`: the start of `serverUrl`, `instance_url` and identity URLs.
    pub origin: String,
    /// Where request ids come from (`access`).
    pub request_ids: access::RequestIds,
    /// What a SIGHUP reload replaces.
    pub(super) live: std::sync::RwLock<Arc<Live>>,
    /// `[tls] acme`: the managed certificate both listeners serve (a reload keeps it).
    pub(super) acme: Option<crate::acme::Acme>,
}

/// The reloadable part of the configuration in force.
pub struct Live {
    pub tls: TlsAcceptor,
    pub oauth_clients: Vec<crate::config::OAuthClient>,
}

impl App {
    /// The ACME-managed certificate, with `[tls] acme`.
    pub fn acme(&self) -> Option<&crate::acme::Acme> {
        self.acme.as_ref()
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a new configuration without dropping connections: the TLS certificate and key,
    /// limits, trusted networks, the lockout policy, OAuth clients and mail settings. Every
    /// part is built first; if any fails, nothing changes.
    pub fn reload(&self, new: &Config) -> Result<(), ServerError> {
        let cert = tls::ensure_cert(
            new.tls.cert.as_deref().zip(new.tls.key.as_deref()),
            &new.store.path,
        )?;
        // The ACME state (its account, order and renewal timer) lives from start to stop.
        let acceptor = match &self.acme {
            Some(acme) => TlsAcceptor::from(acme.server_config()),
            None => TlsAcceptor::from(tls::server_config(&cert)?),
        };
        // Validate the mail settings before changing anything.
        Mailer::check(&new.mail)?;
        for (what, changed) in [
            ("server.listen", new.server.listen != self.cfg.server.listen),
            (
                "server.workers",
                new.server.workers != self.cfg.server.workers,
            ),
            ("store.path", new.store.path != self.cfg.store.path),
            ("upstream.url", new.upstream.url != self.cfg.upstream.url),
            ("tls.acme", new.tls.acme != self.cfg.tls.acme),
        ] {
            if changed {
                tracing::warn!(key = what, "this setting changes only with a restart");
            }
        }
        let before = self.reloadable();
        self.tokens.mailer().reload(&new.mail)?;
        self.auth.reload(new);
        self.users.set_allow_synthetic(new.allow_synthetic_users);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live {
            tls: acceptor,
            oauth_clients: new.oauth_clients.clone(),
        });
        if self.acme.is_none()
            && let Some(end) = tls::not_after(&cert.cert)
        {
            self.metrics.certificate_expires(end);
        }
        self.admin.audit.record(crate::audit::Entry {
            actor: crate::audit::Actor::system(),
            action: "config.reload",
            target: "configuration".into(),
            changes: crate::audit::diff(Some(&before), Some(&self.reloadable())),
        });
        Ok(())
    }

    /// The reloadable settings an audit record compares (never a secret: client ids, not
    /// their secrets).
    fn reloadable(&self) -> serde_json::Value {
        let live = self.live();
        let ids: Vec<&str> = live
            .oauth_clients
            .iter()
            .map(|c| c.client_id.as_str())
            .collect();
        serde_json::json!({
            "loadtest.allow_synthetic_users": self.users.allow_synthetic(),
            "oauth.clients": ids.join(","),
            "mail.configured": self.tokens.mailer().is_configured(),
        })
    }

    /// Values for the metrics that their owners hold.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let (ip, user) = self.auth.limits().keys();
        crate::metrics::Gauges {
            argon2_queue_depth: self.auth.hash_pool().depth() as u64,
            active_sessions: self.sessions.len() as u64,
            limiter_keys_ip: ip as u64,
            limiter_keys_user: user as u64,
            history_dropped: self.history.dropped(),
            compliance_queue: self.tokens.mailer().queued() as u64,
        }
    }
}

/// The host names clients may address: the configured ones, the public origin's when
/// `public_url` is unset (the listen address, or localhost), the console listener's
/// address when it is a specific one, and the names of the ACME certificate.
pub(super) fn hosts_of(cfg: &Config, origin: &str) -> Vec<String> {
    let mut hosts = cfg.server.allowed_hosts.clone();
    // The names of an ACME certificate are names clients address.
    for d in cfg.tls.acme.iter().flat_map(|a| &a.domains) {
        if !hosts.contains(d) {
            hosts.push(d.clone());
        }
    }
    if let Some(ip) = cfg
        .console
        .listen
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
    {
        let ip = ip.to_string();
        if !hosts.contains(&ip) {
            hosts.push(ip);
        }
    }
    if let Some(host) = origin.parse::<http::Uri>().ok().and_then(|u| {
        u.host()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    }) && !hosts.contains(&host)
    {
        hosts.push(host);
    }
    hosts
}
