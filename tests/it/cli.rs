//! The real `tokengate` binary: configuration errors, the admin commands with and without a
//! running server on the same data directory, and sessions surviving a process restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::process::{self, Serve};
use crate::support::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

fn write_config(dir: &Path, upstream: &str) -> PathBuf {
    let path = dir.join("tokengate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
org_id = "00D5e000000AbCd"

[upstream]
url = "{upstream}"

[store]
path = "data"

[[oauth.clients]]
client_id = "{CLIENT_ID}"
client_secret_env = "TG_TEST_CLIENT_SECRET"
"#
        ),
    )
    .unwrap();
    path
}

fn tokengate(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    process::run(
        config,
        args,
        stdin,
        &[("TG_TEST_CLIENT_SECRET", CLIENT_SECRET)],
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Adds a user and returns the token printed on the last line.
fn add_user(config: &Path, name: &str) -> String {
    let o = tokengate(
        config,
        &[
            "user",
            "add",
            name,
            "--email",
            "x@example.com",
            "--password-stdin",
            "--show-token",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let token = out.lines().last().unwrap().to_owned();
    assert_eq!(token.len(), 24, "{out}");
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
    token
}

fn serve(config: &Path) -> Serve {
    Serve::start(config, &[], &[("TG_TEST_CLIENT_SECRET", CLIENT_SECRET)])
}

fn client(dir: &Path, addr: SocketAddr) -> HttpsClient {
    HttpsClient::new(&dir.join("data/tls/cert.pem"), addr, false)
}

async fn soap_status(c: &HttpsClient, user: &str, secret: &str) -> (StatusCode, String) {
    let r = c
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(user, secret),
        )
        .await;
    (r.status, r.text())
}

/// The SOAP login fault every refused login gets.
fn assert_login_refused((status, body): (StatusCode, String)) {
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        extract(&body, "sf:exceptionCode").as_deref(),
        Some("INVALID_LOGIN"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_with_and_without_a_running_server() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());

    // No server yet: the CLI opens the store itself.
    let alice = add_user(&config, "Alice@Example.com");
    let o = tokengate(
        &config,
        &[
            "user",
            "add",
            "alice@example.com",
            "--email",
            "a@example.com",
            "--password-stdin",
            "--show-token",
        ],
        Some("Passw0rd\n"),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let server = serve(&config);
    let c = client(dir.path(), server.addr);
    let (status, _) = soap_status(&c, "alice@example.com", &format!("{PASSWORD}{alice}")).await;
    assert_eq!(status, StatusCode::OK);

    // With the server running, commands go through its admin socket and take effect at once.
    let bob = add_user(&config, "bob@example.com");
    let (status, xml) = soap_status(&c, "bob@example.com", &format!("{PASSWORD}{bob}")).await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    let sid = extract(&xml, "sessionId").unwrap();
    assert!(sid.starts_with("00D5e000000AbCd!"));

    let carol = add_user(&config, "carol@example.com");
    assert_ne!(carol, bob);

    let o = tokengate(&config, &["user", "list"], None);
    assert!(o.status.success());
    let list = stdout(&o);
    for name in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        assert!(list.contains(name), "{list}");
    }
    let o = tokengate(
        &config,
        &["user", "show", "BOB@example.com", "--json"],
        None,
    );
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["username"], "bob@example.com");
    assert!(shown.get("password_hash").is_none() && !stdout(&o).contains("argon2"));

    let o = tokengate(&config, &["user", "disable", "bob@example.com"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = c.get_with_session("/services/data/v59.0/", &sid).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "disabling ended the session"
    );
    let (status, _) = soap_status(&c, "bob@example.com", &format!("{PASSWORD}{bob}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let o = tokengate(&config, &["user", "enable", "bob@example.com"], None);
    assert!(o.status.success());
    let (status, _) = soap_status(&c, "bob@example.com", &format!("{PASSWORD}{bob}")).await;
    assert_eq!(status, StatusCode::OK);

    let o = tokengate(
        &config,
        &["user", "passwd", "alice@example.com", "--password-stdin"],
        Some("Changed1pass\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (status, _) = soap_status(&c, "alice@example.com", &format!("Changed1pass{alice}")).await;
    assert_eq!(status, StatusCode::OK);

    // Clear errors and a non-zero exit for bad admin input.
    for (args, stdin, needle) in [
        (
            vec!["user", "passwd", "alice@example.com", "--password-stdin"],
            Some("short\n"),
            "policy",
        ),
        (vec!["user", "show", "nobody@example.com"], None, "no user"),
        (
            vec![
                "user",
                "add",
                "dan",
                "--email",
                "not-an-address",
                "--password-stdin",
            ],
            Some("Passw0rd\n"),
            "email",
        ),
        (
            vec!["user", "add", "dan", "--email", "d@example.com"],
            None,
            "--password-stdin",
        ),
    ] {
        let o = tokengate(&config, &args, stdin);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    server.stop();

    // After the server stopped, the CLI opens the store directly again.
    let o = tokengate(&config, &["user", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("carol@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_of_the_process() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let token = add_user(&config, "restart@example.com");
    let server = serve(&config);
    let c = client(dir.path(), server.addr);
    let r = c
        .oauth_login("restart@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sid = r.json()["access_token"].as_str().unwrap().to_owned();
    server.stop();

    let server = serve(&config);
    let c = client(dir.path(), server.addr);
    let r = c.get_with_session("/services/data/v59.0/", &sid).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(up.last().headers["x-tokengate-user"], "restart@example.com");
    server.stop();
}

#[test]
fn configuration_errors_stop_the_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let o = tokengate(&missing, &["serve"], None);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("missing.toml"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    for (text, needle) in [
        ("[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n", "bogus"),
        ("[server]\nlisten = \"not an address\"\n", "server.listen"),
        (
            "[auth]\nsession_idle_timeout = \"forever-ish\"\n",
            "auth.session_idle_timeout",
        ),
        (
            "[tls]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
            "tls.cert",
        ),
        (
            "[[oauth.clients]]\nclient_id = \"x\"\nclient_secret_env = \"TG_UNSET_VARIABLE_FOR_TEST\"\n",
            "TG_UNSET_VARIABLE_FOR_TEST",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for cmd in [&["serve"][..], &["check-config"][..]] {
            let o = tokengate(&path, cmd, None);
            assert!(!o.status.success(), "{text}");
            let err = stderr(&o);
            assert!(err.contains(needle), "{text}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let o = tokengate(&good, &["check-config"], None);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_shipped_config_passes_check_config_as_shipped_from_the_repository_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // No environment: every secret it could name is unset, as on a fresh installation.
    let mut cmd = Command::new(BIN);
    cmd.current_dir(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["--config", "config/tokengate.toml", "check-config"]);
    let (o, killed) = process::run_bounded(cmd, None, process::COMMAND_TIMEOUT);
    assert!(!killed);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "config/tokengate.toml: ok");
    // Its paths are where the systemd unit and the package put things, whatever directory it
    // is checked from, not next to the file in the repository.
    let cfg = tokengate::config::Config::load(&root.join("config/tokengate.toml")).unwrap();
    assert_eq!(cfg.store.path, Path::new("/var/lib/tokengate"));
    let unit = std::fs::read_to_string(root.join("config/tokengate.service")).unwrap();
    assert!(unit.contains("StateDirectory=tokengate\n"), "{unit}");
    assert!(
        unit.contains("ExecStart=tokengate --config /etc/tokengate/tokengate.toml serve"),
        "{unit}"
    );
}

/// Runs the binary with exactly these arguments (no `--config` added), in `cwd`, with
/// `TOKENGATE_CONFIG` set to `env_config` or removed.
fn tokengate_in(
    cwd: &Path,
    env_config: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TOKENGATE_CONFIG")
        .env("TG_TEST_CLIENT_SECRET", CLIENT_SECRET);
    if let Some(p) = env_config {
        cmd.env("TOKENGATE_CONFIG", p);
    }
    let (o, killed) = process::run_bounded(cmd, stdin, process::COMMAND_TIMEOUT);
    assert!(!killed, "tokengate {args:?}");
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_say_which_config_and_store_they_used_and_when_they_made_one() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "path = \"data\"\n",
        &format!("path = \"data\"\n{}", store_backend_toml()),
    );
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let add = |cwd: &Path, env: Option<&Path>, extra: &[&str], name: &str| {
        let mut args = extra.to_vec();
        args.extend([
            "user",
            "add",
            name,
            "--email",
            "who@example.com",
            "--password-stdin",
            "--show-token",
        ]);
        tokengate_in(cwd, env, &args, Some(&format!("{PASSWORD}\n")))
    };
    let store = if on_postgres() {
        "store: PostgreSQL database ".to_owned()
    } else {
        format!("store: sled store in {}", data.display())
    };

    // TOKENGATE_CONFIG names the file; the first command on a store that did not exist says
    // it made one.
    let o = add(dir.path(), Some(&config), &[], "first@example.com");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "tokengate: config {} (from TOKENGATE_CONFIG)",
            config.display()
        )),
        "{err}"
    );
    if on_postgres() {
        // A database is never made by tokengate; it is named without a password.
        assert!(
            err.contains("store: PostgreSQL database ") && err.contains("@127.0.0.1:"),
            "{err}"
        );
        assert!(err.contains("opened directly"), "{err}");
    } else {
        assert!(
            err.contains(&format!(
                "store: created a new sled store in {}",
                data.display()
            )),
            "{err}"
        );
    }
    // The second says it opened the existing one; --config wins over the variable.
    let elsewhere = dir.path().join("nothing-here.toml");
    let o = add(
        dir.path(),
        Some(&elsewhere),
        &["--config", config.to_str().unwrap()],
        "second@example.com",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "tokengate: config {} (--config)",
            config.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&store) && err.contains("opened directly") && !err.contains("created"),
        "{err}"
    );
    assert_eq!(err.matches("store:").count(), 1, "said once: {err}");

    // With the server running: through its admin socket, which is named.
    let server = serve(&config);
    let o = tokengate_in(dir.path(), Some(&config), &["user", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&store)
            && err.contains(&format!(
                "through the running server's admin socket {}",
                data.join("admin.sock").display()
            )),
        "{err}"
    );
    assert!(stdout(&o).contains("second@example.com"));
    // `user set` makes two admin calls and says so once.
    let o = tokengate_in(
        dir.path(),
        Some(&config),
        &[
            "user",
            "set",
            "first@example.com",
            "--rotate-every",
            "off",
            "--login-ranges",
            "none",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("store:").count(), 1, "{}", stderr(&o));
    server.stop();

    // Nothing names a file: the built-in defaults, and their store in the current directory,
    // which the command says it made (unless this machine has a system-wide configuration,
    // which would then be used instead).
    if !Path::new("/etc/tokengate/tokengate.toml").exists() {
        let cwd = tempfile::tempdir().unwrap();
        let o = add(cwd.path(), None, &[], "third@example.com");
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("tokengate: config: the built-in defaults (no --config, no TOKENGATE_CONFIG, no /etc/tokengate/tokengate.toml)"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "store: created a new sled store in {}",
                cwd.path().join("tokengate-data").display()
            )),
            "{err}"
        );
        // check-config has nothing to check and says where it looked.
        let o = tokengate_in(cwd.path(), None, &["check-config"], None);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("TOKENGATE_CONFIG or /etc/tokengate/tokengate.toml"),
            "{}",
            stderr(&o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mail_user_add_needs_show_token_and_token_reset_is_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let add_unshown = |name: &str| {
        tokengate(
            &config,
            &[
                "user",
                "add",
                name,
                "--email",
                "n@example.com",
                "--password-stdin",
            ],
            Some(&format!("{PASSWORD}\n")),
        )
    };
    let refused = |o: &Output| {
        assert!(!o.status.success(), "{}", stdout(o));
        let err = stderr(o);
        assert!(
            err.contains("no mail transport is configured")
                && err.contains("Configure [mail]")
                && err.contains("--show-token")
                && err.contains("nothing was created"),
            "{err}"
        );
    };
    // No server: refused before the store is even opened, so not even an empty one is left.
    refused(&add_unshown("nobody@example.com"));
    assert!(!dir.path().join("data").exists(), "nothing was created");

    let token = add_user(&config, "shown@example.com");
    let o = tokengate(&config, &["token", "reset", "shown@example.com"], None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the current token stays valid")
            && stderr(&o).contains("configure [mail]"),
        "{}",
        stderr(&o)
    );

    // Server running: its own check, the same words, through the admin socket.
    let server = serve(&config);
    refused(&add_unshown("nobody@example.com"));
    let o = tokengate(&config, &["token", "reset", "shown@example.com"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("configure [mail]"), "{}", stderr(&o));
    let o = tokengate(&config, &["user", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("nobody@example.com"), "{}", stdout(&o));
    let c = client(dir.path(), server.addr);
    let (status, _) = soap_status(&c, "shown@example.com", &format!("{PASSWORD}{token}")).await;
    assert_eq!(status, StatusCode::OK, "the token shown once still works");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reset_and_compliance_settings_work_from_the_cli_with_and_without_a_server() {
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[mail]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout = \"3s\"\nfrom = \"ops <ops@tokengate.test>\"\nbrand = \"PatronManager\"\n",
        sink.addr.port()
    ));
    std::fs::write(&config, text).unwrap();
    let first = add_user(&config, "ivy@example.com");
    let inbox = "x@example.com";
    assert_eq!(
        sink.to(inbox)[0].token(),
        first,
        "the new user's token was emailed"
    );
    // Without --show-token the token is emailed and never printed.
    let o = tokengate(
        &config,
        &[
            "user",
            "add",
            "quiet@example.com",
            "--email",
            "quiet@example.com",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mailed = sink.to("quiet@example.com")[0].token();
    assert!(
        !stdout(&o).contains(&mailed) && !stderr(&o).contains(&mailed),
        "{}",
        stdout(&o)
    );

    // No server: the CLI sends the mail itself.
    let o = tokengate(
        &config,
        &[
            "settings",
            "compliance-bcc",
            "--enable",
            "audit@example.org",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("enabled"));
    let o = tokengate(&config, &["token", "reset", "ivy@example.com"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("x***@example.com"), "{}", stdout(&o));
    assert!(!stdout(&o).contains(&sink.to(inbox)[1].token()));
    assert_eq!(sink.to("audit@example.org").len(), 1);

    let server = serve(&config);
    let c = client(dir.path(), server.addr);
    let second = sink.to(inbox)[1].token();
    assert_eq!(
        soap_status(&c, "ivy@example.com", &format!("{PASSWORD}{second}"))
            .await
            .0,
        StatusCode::OK
    );

    // Server running: through the socket.
    let o = tokengate(
        &config,
        &["settings", "compliance-bcc", "--redact", "false"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("redact secrets:  false"),
        "{}",
        stdout(&o)
    );
    let o = tokengate(&config, &["token", "reset", "ivy@example.com"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let third = sink.to(inbox)[2].token();
    assert_eq!(
        soap_status(&c, "ivy@example.com", &format!("{PASSWORD}{third}"))
            .await
            .0,
        StatusCode::OK
    );
    assert_login_refused(soap_status(&c, "ivy@example.com", &format!("{PASSWORD}{second}")).await);
    let copies = sink
        .wait_for("audit@example.org", 2, Duration::from_secs(5))
        .await;
    assert!(
        copies[1].text().contains(&third),
        "verbatim after --redact false"
    );

    let o = tokengate(
        &config,
        &["user", "set", "ivy@example.com", "--rotate-every", "24h"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tokengate(
        &config,
        &[
            "user",
            "set",
            "ivy@example.com",
            "--rotate-every",
            "sometimes",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sometimes"), "{}", stderr(&o));

    // SMTP down: a clear message and a non-zero exit; the current token keeps working.
    sink.stop();
    let o = tokengate(&config, &["token", "reset", "ivy@example.com"], None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("could not be emailed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        soap_status(&c, "ivy@example.com", &format!("{PASSWORD}{third}"))
            .await
            .0,
        StatusCode::OK
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_login_ranges_and_history_from_the_cli() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[lockout]\nmax_failures = 2\n");
    std::fs::write(&config, text).unwrap();
    let token = add_user(&config, "jo@example.com");
    let server = serve(&config);
    let c = client(dir.path(), server.addr);
    let good = format!("{PASSWORD}{token}");
    soap_status(&c, "jo@example.com", &format!("Wrong1pass{token}")).await;
    soap_status(&c, "jo@example.com", &format!("Wrong2pass{token}")).await;
    // Locked: answered like a wrong password (the caller's secret is the right one, but a
    // SOAP login does not tell).
    assert_login_refused(soap_status(&c, "jo@example.com", &good).await);
    let o = tokengate(&config, &["user", "show", "jo@example.com"], None);
    assert!(
        stdout(&o).contains("locked:            until"),
        "{}",
        stdout(&o)
    );
    let o = tokengate(&config, &["user", "unlock", "jo@example.com"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        soap_status(&c, "jo@example.com", &good).await.0,
        StatusCode::OK
    );

    let o = tokengate(
        &config,
        &[
            "user",
            "set",
            "jo@example.com",
            "--login-ranges",
            "10.0.0.0/8",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_login_refused(soap_status(&c, "jo@example.com", &good).await);
    let o = tokengate(
        &config,
        &["user", "set", "jo@example.com", "--login-ranges", "none"],
        None,
    );
    assert!(o.status.success());
    assert_eq!(
        soap_status(&c, "jo@example.com", &good).await.0,
        StatusCode::OK
    );
    let o = tokengate(
        &config,
        &[
            "user",
            "set",
            "jo@example.com",
            "--login-ranges",
            "10.0.0.0/99",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("10.0.0.0/99"), "{}", stderr(&o));

    // The six logins above, once the server's history writer has stored them.
    let history = || {
        let o = tokengate(
            &config,
            &["history", "--user", "JO@example.com", "--format", "json"],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
    };
    eventually("six history rows", Duration::from_secs(10), async || {
        history().len() >= 6
    })
    .await;
    let rows = history();
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "success",
            "outside_login_range",
            "success",
            "locked",
            "bad_credentials",
            "bad_credentials"
        ]
    );
    let o = tokengate(
        &config,
        &["history", "--outcome", "locked", "--format", "csv"],
        None,
    );
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    let o = tokengate(&config, &["history", "--since", "1h", "--limit", "2"], None);
    assert_eq!(
        stdout(&o).lines().count(),
        3,
        "a header and two rows: {}",
        stdout(&o)
    );
    let o = tokengate(&config, &["history", "--outcome", "sideways"], None);
    assert!(!o.status.success());
    server.stop();

    // Without a server, the history is read from the store directly.
    let o = tokengate(&config, &["history", "--user", "jo@example.com"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 7);
}

#[tokio::test]
async fn with_no_server_running_the_cli_still_cannot_take_the_last_enabled_admin_away() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    // The CLI opens the store itself: the rule is the store's, not the server's.
    add_user(&config, "root@example.com");
    let ok = |args: &[&str]| {
        let o = tokengate(&config, args, None);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ok(&["user", "grant-admin", "root@example.com"]);
    for args in [
        &["user", "disable", "root@example.com"][..],
        &["user", "revoke-admin", "root@example.com"],
        &["user", "delete", "root@example.com", "--yes"],
    ] {
        let o = tokengate(&config, args, None);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("would leave no enabled administrator"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // With a second enabled admin, the first may go.
    add_user(&config, "second@example.com");
    ok(&["user", "grant-admin", "second@example.com"]);
    ok(&["user", "revoke-admin", "root@example.com"]);
}
