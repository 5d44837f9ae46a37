//! `tokengate loadtest` end to end: the real binary sets up synthetic users through the admin
//! API of a real server, runs every scenario against it (short runs), writes JSON and SVG, and
//! cleans up.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// Runs `tokengate loadtest ARGS` to its end, or kills it (and its process group) after
/// [`process::COMMAND_TIMEOUT`]. The test's server runs on the same runtime, so the wait is on
/// a blocking section (the tests use the multi-thread runtime).
fn loadtest(args: &[&str], admin_secret: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("loadtest")
        .args(args)
        .env("TOKENGATE_ADMIN_SECRET", admin_secret)
        .env("TOKENGATE_LOADTEST_CLIENT_SECRET", CLIENT_SECRET);
    bounded(cmd)
}

/// Runs `cmd` under [`process::COMMAND_TIMEOUT`]; a run that had to be killed fails the test.
fn bounded(cmd: Command) -> Output {
    // The program and its arguments: its environment carries the admin's secret.
    let what = format!(
        "{:?} {:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let (out, killed) =
        tokio::task::block_in_place(|| process::run_bounded(cmd, None, process::COMMAND_TIMEOUT));
    assert!(
        !killed,
        "{what} was killed after {:?}",
        process::COMMAND_TIMEOUT
    );
    out
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_on_a_server_that_refuses_synthetic_users_says_how_to_allow_them() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let admin_token = ts.add_user_with("ops@example.com", PASSWORD, true).await;
    let dir = tempfile::tempdir().unwrap();
    let target = format!("https://127.0.0.1:{}", ts.addr.port());
    let o = loadtest(
        &[
            "setup",
            "--target",
            &target,
            "--ca",
            ts.ca.to_str().unwrap(),
            "--users-file",
            dir.path().join("u.json").to_str().unwrap(),
            "--admin",
            "ops@example.com",
            "--users",
            "2",
        ],
        &format!("{PASSWORD}{admin_token}"),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("allow_synthetic_users = true"),
        "the message says what to set: {err}"
    );
    // No user was made.
    let list = ts.app().users.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_sets_up_runs_every_scenario_and_cleans_up() {
    let up = Upstream::start().await;
    // The login scenarios measure the argon2 path: without the credential cache.
    // The flood scenario must not stop the later admin calls from this same address.
    let ts = TestServer::start_with(&up.url(), |c| {
        c.auth.credential_cache_size = 0;
        c.limits.login_per_ip = std::num::NonZeroU32::new(1_000_000).unwrap();
        c.allow_synthetic_users = true;
    })
    .await;
    let admin_token = ts.add_user_with("ops@example.com", PASSWORD, true).await;
    let secret = format!("{PASSWORD}{admin_token}");
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.json");
    let target = format!("https://127.0.0.1:{}", ts.addr.port());
    let ca = ts.ca.display().to_string();
    let common = [
        "--target",
        target.as_str(),
        "--ca",
        ca.as_str(),
        "--users-file",
        users_file.to_str().unwrap(),
    ];

    let out = ok(&loadtest(
        &[
            &["setup"][..],
            &common,
            &["--admin", "ops@example.com", "--users", "6"],
        ]
        .concat(),
        &secret,
    ));
    assert!(out.contains("created 6 load-test users"), "{out}");
    let mode = std::fs::metadata(&users_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner can read the credentials");
    let file = read_json(&users_file);
    assert_eq!(file["users"].as_array().unwrap().len(), 6);
    let listed = ts.app().users.list().unwrap();
    assert_eq!(listed.iter().filter(|u| u.loadtest).count(), 6);

    for (scenario, extra) in [
        ("basic", vec![]),
        ("session", vec![]),
        ("login-soap", vec![]),
        ("login-oauth", vec!["--client-id", CLIENT_ID]),
        ("flood", vec![]),
        ("mixed", vec![]),
    ] {
        let json = dir.path().join(format!("{scenario}.json"));
        let chart = dir.path().join(format!("{scenario}.svg"));
        let args = [
            &["run"][..],
            &common,
            &[
                "--scenario",
                scenario,
                "--connections",
                "4",
                "--duration",
                "2s",
                "--quiet",
            ],
            &[
                "--json",
                json.to_str().unwrap(),
                "--chart",
                chart.to_str().unwrap(),
            ],
            &extra,
        ]
        .concat();
        let out = ok(&loadtest(&args, &secret));
        assert!(
            out.contains("requests/s") && out.contains("p99.9"),
            "{scenario}: {out}"
        );
        let v = read_json(&json);
        let runs: Vec<(&String, &serde_json::Value)> = v.as_object().unwrap().iter().collect();
        assert_eq!(
            runs.len(),
            if scenario == "mixed" { 2 } else { 1 },
            "{scenario}: {v}"
        );
        for (name, s) in runs {
            assert!(
                s["requests"].as_u64().unwrap() > 0,
                "{scenario}/{name}: {s}"
            );
            let statuses = s["statuses"].as_object().unwrap();
            let expected = match name.as_str() {
                "flood" => "500",
                _ => "200",
            };
            assert_eq!(
                statuses.keys().collect::<Vec<_>>(),
                [expected],
                "{scenario}/{name}: {s}"
            );
            assert!(
                s["latency_us"]["p99"].as_u64().unwrap()
                    >= s["latency_us"]["p50"].as_u64().unwrap()
            );
        }
        assert!(
            std::fs::read_to_string(&chart)
                .unwrap()
                .contains("<polyline")
        );
    }

    let out = ok(&loadtest(
        &[&["cleanup"][..], &common, &["--admin", "ops@example.com"]].concat(),
        &secret,
    ));
    assert!(out.contains("deleted 6 load-test users"), "{out}");
    assert!(ts.app().users.list().unwrap().iter().all(|u| !u.loadtest));

    // Clear errors: no users file, an untrusted certificate, a wrong admin secret.
    let o = loadtest(
        &[
            "run",
            "--target",
            &target,
            "--ca",
            &ca,
            "--users-file",
            "/nonexistent.json",
            "--scenario",
            "basic",
            "--duration",
            "1s",
        ],
        &secret,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.json"));
    let o = loadtest(
        &[
            "run",
            "--target",
            &target,
            "--scenario",
            "plain",
            "--duration",
            "1s",
            "--connections",
            "1",
            "--quiet",
        ],
        &secret,
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("errors   ")
            && !String::from_utf8_lossy(&o.stdout).contains("errors   none")
    );
    let o = loadtest(
        &[
            &["setup"][..],
            &common,
            &["--admin", "ops@example.com", "--users", "1"],
        ]
        .concat(),
        "wrong",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_targets_measure_an_upstream_directly_but_never_carry_credentials() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("direct.json");
    let o = loadtest(
        &[
            "run",
            "--target",
            &up.url(),
            "--scenario",
            "plain",
            "--duration",
            "1s",
            "--connections",
            "2",
            "--rate",
            "100",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ],
        "unused",
    );
    ok(&o);
    let plain = &read_json(&json)["plain"];
    assert!(plain["requests"].as_u64().unwrap() > 0, "{plain}");
    assert_eq!(plain["statuses"]["200"], plain["requests"], "{plain}");
    assert!(!up.requests().is_empty());

    let users = dir.path().join("users.json");
    std::fs::write(
        &users,
        r#"{"target":"","users":[{"username":"u@example.com","secret":"Passw0rdTOKEN"}]}"#,
    )
    .unwrap();
    for scenario in ["session", "basic", "login-soap", "flood"] {
        let o = loadtest(
            &[
                "run",
                "--target",
                &up.url(),
                "--scenario",
                scenario,
                "--users-file",
                users.to_str().unwrap(),
                "--duration",
                "1s",
            ],
            "unused",
        );
        assert!(!o.status.success(), "{scenario} ran over plain HTTP");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("must be https://"), "{scenario}: {err}");
    }
    // Nothing but the plain run's requests reached the upstream: no credentials went out.
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.headers.contains_key("authorization") && r.body.is_empty())
    );
}

/// A self-signed certificate made the way operators make one: the openssl binary, P-256,
/// which marks it `CA:TRUE`.
fn openssl_self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",
            "30",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let out = bounded(openssl);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_pins_an_openssl_self_signed_certificate_and_still_refuses_another() {
    use http_body_util::Full;
    use tokengate::loadtest::{Conn, Target};

    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_self_signed(dir.path(), "served");
    let (stranger, _) = openssl_self_signed(dir.path(), "stranger");
    let mut show = Command::new("openssl");
    show.args(["x509", "-noout", "-text", "-in"]).arg(&cert);
    let text = String::from_utf8(bounded(show).stdout).unwrap();
    assert!(text.contains("CA:TRUE"), "the case this pins down: {text}");
    let ts = TestServer::start_with(&up.url(), |c| {
        c.tls.cert = Some(cert.clone());
        c.tls.key = Some(key.clone());
    })
    .await;
    let health = || {
        http::Request::get("/tokengate/health")
            .header("host", format!("127.0.0.1:{}", ts.addr.port()))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{}", ts.addr.port());

    let target = Target::new(&url, Some(&cert), false).await.unwrap();
    let mut conn = Conn::open(&target)
        .await
        .unwrap_or_else(|e| panic!("the pinned certificate is refused: {e}"));
    let (status, _) = conn.send(health()).await.unwrap();
    assert_eq!(status, http::StatusCode::OK);

    // Another self-signed certificate is no trust anchor for this one.
    let target = Target::new(&url, Some(&stranger), false).await.unwrap();
    let refused = Conn::open(&target)
        .await
        .err()
        .expect("a stranger's file is refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    // The load tool itself, end to end, with the server's certificate file.
    let report = dir.path().join("run.json");
    ok(&loadtest(
        &[
            "run",
            "--target",
            &url,
            "--ca",
            cert.to_str().unwrap(),
            "--scenario",
            "plain",
            "--duration",
            "1s",
            "--connections",
            "1",
            "--quiet",
            "--json",
            report.to_str().unwrap(),
        ],
        "",
    ));
    let report = read_json(&report);
    let plain = &report["plain"];
    assert!(plain["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(
        plain["errors"]
            .as_object()
            .is_none_or(|e| e.keys().all(|k| !k.contains("certificate"))),
        "{report}"
    );
}
