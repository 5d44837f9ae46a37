//! Unit tests of the configuration: defaults, parse errors and validation messages.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/tokengate/tokengate.toml"))
}

#[test]
fn defaults_are_valid_and_match_the_documented_values() {
    let c = Config::defaults();
    assert_eq!(c.auth.token_length, 24);
    assert_eq!(c.auth.session_idle_timeout, Duration::from_secs(7200));
    assert_eq!(c.auth.argon2.m_cost(), 19_456);
    assert_eq!(c.auth.argon2.t_cost(), 2);
    assert_eq!(c.auth.argon2.p_cost(), 1);
    assert_eq!(c.server.org.id18, "00D000000000001EAA");
    assert_eq!(c.server.workers, super::Workers::Shared);
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("listen_port"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        ("[server]\nlisten = \"nope\"", "server.listen"),
        ("[server]\norg_id = \"001\"", "server.org_id"),
        ("[server]\nworkers = \"many\"", "server.workers"),
        ("[server]\npublic_url = \"http://x\"", "server.public_url"),
        (
            "[server]\npublic_url = \"https://my-api.example.com\"",
            "server.public_url",
        ),
        ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
        (
            "[auth]\nsession_idle_timeout = \"soon\"",
            "auth.session_idle_timeout",
        ),
        ("[auth]\ntoken_length = 3", "auth.token_length"),
        ("[auth]\nargon2_memory_kib = 1", "auth.argon2"),
        (
            "[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"",
            "tls.cert",
        ),
        (
            "[[oauth.clients]]\nclient_id = \"a\"",
            "oauth.clients[0].client_secret",
        ),
        ("[log]\nlevel = \"info,,=[\"", "log.level"),
        (
            "[console]\ntime_zone = \"Mars/Olympus\"",
            "console.time_zone",
        ),
        ("[mail]\ntransport = \"pigeon\"", "mail.transport"),
        ("[mail]\ntransport = \"file\"", "mail.dir"),
        ("[mail]\nfrom = \"not an address\"", "mail.from"),
        (
            "[mail]\ntransport = \"smtp\"\nsecurity = \"none\"\nusername = \"u\"\npassword = \"p\"",
            "mail.security",
        ),
        (
            "[tokens]\ngrace_period = \"a while\"",
            "tokens.grace_period",
        ),
        (
            "[tokens]\nreset_per_user_per_hour = 0",
            "tokens.reset_per_user_per_hour",
        ),
        (
            "[tokens]\nmax_named_per_user = 101",
            "tokens.max_named_per_user",
        ),
        (
            "[auth]\ntrusted_networks = [\"10.0.0.0/33\"]",
            "auth.trusted_networks",
        ),
        (
            "[server]\ntrusted_proxies = [\"proxy\"]",
            "server.trusted_proxies",
        ),
        (
            "[lockout]\nlockout_period = \"never\"",
            "lockout.lockout_period",
        ),
        ("[limits]\nlogin_per_user = 0", "limits.login_per_user"),
        ("[history]\nmax_age = \"old\"", "history.max_age"),
        ("[metrics]\nlisten = \"0.0.0.0:9464\"", "metrics.listen"),
        (
            "[server]\ndrain_timeout = \"never\"",
            "server.drain_timeout",
        ),
    ] {
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.contains(key), "{text:?} gave {msg}");
    }
}

#[test]
fn oauth_client_secret_can_come_from_the_environment() {
    // SAFETY of the test: the variable name is unique to this test.
    let var = "TOKENGATE_TEST_OAUTH_SECRET_4711";
    let missing = parse(&format!(
        "[[oauth.clients]]\nclient_id = \"a\"\nclient_secret_env = \"{var}\""
    ))
    .unwrap_err()
    .to_string();
    assert!(missing.contains(var), "{missing}");
}

#[test]
fn public_url_is_normalised_to_an_origin() {
    let c = parse("[server]\npublic_url = \"https://proxy.example.com:8443/\"").unwrap();
    assert_eq!(
        c.server.public_url.as_deref(),
        Some("https://proxy.example.com:8443")
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let c = parse("[store]\npath = \"data\"").unwrap();
    assert_eq!(c.store.path, Path::new("/etc/tokengate/data"));
}

#[test]
fn unreadable_durations_name_their_key_and_say_what_a_duration_is() {
    for (text, key, value) in [
        (
            "[auth]\nsession_idle_timeout = \"soon\"",
            "auth.session_idle_timeout",
            "soon",
        ),
        (
            "[tokens]\ngrace_period = \" a while\"",
            "tokens.grace_period",
            " a while",
        ),
        (
            "[limits]\nfailure_delay = \"2 fortnights\"",
            "limits.failure_delay",
            "2 fortnights",
        ),
        (
            "[lockout]\nlockout_period = \" never \"",
            "lockout.lockout_period",
            "never",
        ),
        (
            "[console]\nsession_lifetime = \"8\"",
            "console.session_lifetime",
            "8",
        ),
    ] {
        let problem = humantime::parse_duration(value).unwrap_err();
        assert_eq!(
            parse(text).unwrap_err().to_string(),
            format!("config key {key}: '{value}' is not a duration such as 15m or 2h ({problem})"),
        );
    }
    // Not a string at all: the TOML reader's words, with the line.
    let msg = parse("[server]\n\ndrain_timeout = 30\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn zero_durations_are_refused_except_where_zero_means_off() {
    for (text, key) in [
        ("[server]\nidle_timeout = \"0s\"", "server.idle_timeout"),
        ("[history]\nmax_age = \"0\"", "history.max_age"),
        ("[tokens]\ngrace_period = \"0ms\"", "tokens.grace_period"),
        (
            "[lockout]\nlockout_period = \"0s\"",
            "lockout.lockout_period",
        ),
    ] {
        assert_eq!(
            parse(text).unwrap_err().to_string(),
            format!("config key {key}: must be longer than zero"),
        );
    }
    let c = parse(
        "[tokens]\ngrace_period = \" 0 \"\n[limits]\nfailure_delay = \"0s\"\n\
         [lockout]\nlockout_period = \" forever \"",
    )
    .unwrap();
    assert_eq!(c.tokens.grace_period, Duration::ZERO);
    assert_eq!(c.limits.failure_delay, Duration::ZERO);
    assert_eq!(c.lockout.period, None);
    let msg = parse("[limits]\nfailure_delay = \"11s\"")
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "config key limits.failure_delay: must be at most 10s");
}

#[test]
fn the_defaults_are_the_documented_duration_strings() {
    let written = "\
        [server]\nheader_read_timeout = \"10s\"\ntls_handshake_timeout = \"10s\"\n\
        body_read_timeout = \"30s\"\ndrain_timeout = \"30s\"\nidle_timeout = \"60s\"\n\
        [upstream]\nconnect_timeout = \"5s\"\nresponse_timeout = \"60s\"\n\
        pool_idle_timeout = \"90s\"\nbody_idle_timeout = \"60s\"\n\
        [auth]\nsession_idle_timeout = \"2h\"\nsession_lifetime = \"2h\"\n\
        hashing_queue_timeout = \"2s\"\ncredential_cache_ttl = \"5m\"\n\
        [tokens]\ngrace_period = \"0s\"\nrotation_check_interval = \"30s\"\n\
        [mail]\ntimeout = \"30s\"\ncompliance_retry_interval = \"60s\"\n\
        [limits]\nlogin_per_ip_period = \"1m\"\nlogin_per_user_period = \"1h\"\n\
        housekeeping_interval = \"60s\"\nfailure_delay = \"250ms\"\n\
        [lockout]\nwindow = \"15m\"\nlockout_period = \"15m\"\n\
        [history]\nmax_age = \"90d\"\n\
        [console]\nsession_idle_timeout = \"30m\"\nsession_lifetime = \"8h\"\n";
    let c = Config::from_toml(written, Path::new("./tokengate.toml")).unwrap();
    assert_eq!(format!("{c:?}"), format!("{:?}", Config::defaults()));
}

#[test]
fn acme_settings_are_validated_and_defaulted() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tokengate.toml");
    let parse_here = |text: &str| Config::from_toml(text, &base);
    let c = parse_here(
        "[store]\npath = \"data\"\n[tls]\nacme = { domains = [\"API.example.com\"], contact = \"mailto:ops@example.com\" }\n",
    )
    .unwrap();
    let a = c.tls.acme.unwrap();
    assert_eq!(a.domains, ["api.example.com"]);
    assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
    assert_eq!(a.cache, dir.path().join("data").join("acme"));
    assert_eq!(a.ca_roots, None);
    assert_eq!(a.order_timeout, Duration::from_secs(300));
    let c = parse_here(
        "[tls]\nacme = { domains = [\"a.example.com\"], directory = \"staging\", cache = \"/var/acme\", order_timeout = \"90s\" }\n",
    )
    .unwrap();
    let a = c.tls.acme.unwrap();
    assert_eq!(a.order_timeout, Duration::from_secs(90));
    assert_eq!(a.directory, LETS_ENCRYPT_STAGING);
    assert_eq!(a.cache, Path::new("/var/acme"));
    assert_eq!(a.contact, None);

    let not_pem = dir.path().join("roots.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (acme, key, says) in [
        ("domains = []", "tls.acme.domains", "at least one"),
        (
            "domains = [\"*.example.com\"]",
            "tls.acme.domains[0]",
            "DNS-01",
        ),
        (
            "domains = [\"a.example.com\", \"bad name\"]",
            "tls.acme.domains[1]",
            "not a DNS name",
        ),
        (
            "domains = [\"10.0.0.1\"]",
            "tls.acme.domains[0]",
            "not a DNS name",
        ),
        (
            "domains = [\"a.example.com\", \"A.example.com\"]",
            "tls.acme.domains[1]",
            "twice",
        ),
        (
            "domains = [\"a.example.com\"], contact = \"ops@example.com\"",
            "tls.acme.contact",
            "mailto:",
        ),
        (
            "domains = [\"a.example.com\"], directory = \"http://ca.example/dir\"",
            "tls.acme.directory",
            "https://",
        ),
        (
            "domains = [\"a.example.com\"], ca_roots = \"/nonexistent.pem\"",
            "tls.acme.ca_roots",
            "does not exist",
        ),
        (
            "domains = [\"a.example.com\"], ca_roots = \"roots.pem\"",
            "tls.acme.ca_roots",
            "no CERTIFICATE",
        ),
        (
            "domains = [\"a.example.com\"], order_timeout = \"0s\"",
            "tls.acme.order_timeout",
            "longer than zero",
        ),
        (
            "domains = [\"a.example.com\"], email = \"x\"",
            "email",
            "unknown field",
        ),
    ] {
        let e = parse_here(&format!("[tls]\nacme = {{ {acme} }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{acme}: {e}");
    }
    // Files and ACME at once: refused, whichever is meant.
    let e = parse_here(
        "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nacme = { domains = [\"a.example.com\"] }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tls.acme") && e.contains("not both"), "{e}");
}

#[test]
fn postgres_store_settings_are_validated_and_name_their_key_without_quoting_a_password() {
    let pg = |rest: &str| format!("[store]\nbackend = \"postgres\"\n{rest}");
    let url = "url = \"postgres://tg@db.internal:5432/tg\"";
    for (text, key, says) in [
        (
            "[store]\nbackend = \"mysql\"".to_owned(),
            "store.backend",
            "neither",
        ),
        (pg(""), "store.url", "exactly one of url and url_env"),
        (
            pg(&format!("{url}\nurl_env = \"TG_DB_URL\"")),
            "store.url",
            "exactly one of url and url_env",
        ),
        (
            pg("url = \"mysql://db.internal/tg\""),
            "store.url",
            "postgres://",
        ),
        (
            pg("url = \"postgres://db.internal/tg?sslmode=prefer\""),
            "store.url",
            "sslmode=prefer is not supported",
        ),
        (
            pg("url_env = \"TOKENGATE_TEST_UNSET_PG_URL_4711\""),
            "store.url_env",
            "TOKENGATE_TEST_UNSET_PG_URL_4711 is not set",
        ),
        (pg(&format!("{url}\npool_size = 0")), "store.pool_size", ""),
        (
            pg(&format!("{url}\npool_size = 1025")),
            "store.pool_size",
            "",
        ),
        (
            pg(&format!("{url}\ntimeout = \"5ms\"")),
            "store.timeout",
            "",
        ),
        (pg(&format!("{url}\ntimeout = \"2m\"")), "store.timeout", ""),
        (
            pg(&format!("{url}\nmax_staleness = \"50ms\"")),
            "store.max_staleness",
            "",
        ),
        (
            pg(&format!("{url}\ntimeout = \"soon\"")),
            "store.timeout",
            "",
        ),
        (
            "[store]\nurl = \"postgres://db.internal/tg\"".to_owned(),
            "store.url",
            "is for backend = \"postgres\"",
        ),
        (
            "[store]\nurl_env = \"TG_DB_URL\"".to_owned(),
            "store.url_env",
            "is for backend = \"postgres\"",
        ),
        (
            "[store]\nca = \"db-ca.pem\"".to_owned(),
            "store.ca",
            "is for backend = \"postgres\"",
        ),
    ] {
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.contains(key) && msg.contains(says),
            "{text:?} gave {msg}"
        );
    }

    // A URL that holds a password and is wrong: the message names the key, not the URL.
    let msg = parse(&pg(
        "url = \"postgres://tg:Sup3rSecretPw@db.internal:notaport/tg?sslmode=disable\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(msg.contains("store.url"), "{msg}");
    assert!(!msg.contains("Sup3rSecretPw"), "{msg}");
    let msg = parse(&pg(
        "url = \"postgres://tg:Sup3rSecretPw@db/tg?sslmode=allow\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(!msg.contains("Sup3rSecretPw"), "{msg}");

    // A valid one: verify-full unless the URL says otherwise, the CA beside the file, the
    // shipped bounds by default.
    let c = parse(&pg(&format!("{url}\nca = \"db-ca.pem\""))).unwrap();
    let Backend::Postgres(p) = &c.store.backend else {
        panic!("a PostgreSQL backend");
    };
    assert_eq!(p.tls, PgTls::VerifyFull);
    assert_eq!(p.ca.as_deref(), Some(Path::new("/etc/tokengate/db-ca.pem")));
    assert_eq!(p.connect.get_dbname(), Some("tg"));
    assert_eq!(p.connect.get_user(), Some("tg"));
    assert_eq!(
        (p.pool_size, p.timeout, p.max_staleness),
        (16, Duration::from_secs(2), Duration::from_secs(5))
    );
    let c = parse(&pg(
        "url = \"postgresql://db.internal/tg?sslmode=require&connect_timeout=3\"\npool_size = 4\ntimeout = \"500ms\"\nmax_staleness = \"1s\"",
    ))
    .unwrap();
    let Backend::Postgres(p) = &c.store.backend else {
        panic!("a PostgreSQL backend");
    };
    assert_eq!(p.tls, PgTls::Require);
    assert_eq!(
        p.connect.get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );
    assert_eq!(
        (p.pool_size, p.timeout, p.max_staleness),
        (4, Duration::from_millis(500), Duration::from_secs(1))
    );
}
