//! Token mail over a real SMTP server (aiosmtpd, started by the test support) in each of the
//! three security modes tokengate speaks — plaintext, STARTTLS and implicit TLS — with AUTH,
//! a private CA (`[mail] ca`), the password from the environment (`password_env`), and a wrong
//! password, which must leave the old token valid.

use std::time::Duration;

use crate::support::real_smtp::{RealSmtp, Security};
use crate::support::*;
use http::{Method, StatusCode};

const SMTP_USER: &str = "tokengate";
const SMTP_PASSWORD: &str = "Smtp-Passw0rd";

fn transport(
    smtp: &RealSmtp,
    security: Security,
    password: Option<&str>,
) -> tokengate::config::MailTransport {
    tokengate::config::MailTransport::Smtp {
        host: "127.0.0.1".into(),
        port: smtp.port,
        security: match security {
            Security::None => tokengate::config::SmtpSecurity::None,
            Security::StartTls => tokengate::config::SmtpSecurity::StartTls,
            Security::Tls => tokengate::config::SmtpSecurity::Tls,
        },
        credentials: password.map(|p| (SMTP_USER.to_owned(), p.to_owned())),
        ca: Some(smtp.ca.clone()),
    }
}

async fn admin_reset(ts: &TestServer, admin: &str, user: &str) -> Reply {
    let c = ts.client();
    let b = c
        .request(
            Method::POST,
            &format!("/tokengate/v1/admin/users/{user}/token/reset"),
        )
        .header("authorization", admin);
    c.call(b, "").await
}

async fn soap_ok(ts: &TestServer, user: &str, secret: &str) -> bool {
    ts.client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(user, secret),
        )
        .await
        .status
        == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mail_goes_out_in_every_security_mode() {
    for (security, auth) in [
        (Security::None, None),
        (Security::StartTls, Some(SMTP_PASSWORD)),
        (Security::Tls, Some(SMTP_PASSWORD)),
    ] {
        let smtp = RealSmtp::start(security, auth.map(|p| (SMTP_USER, p)));
        let up = Upstream::start().await;
        let ts = TestServer::start_with(&up.url(), |c| {
            c.mail.transport = transport(&smtp, security, auth);
            c.mail.timeout = Duration::from_secs(10);
            c.mail.from = "tokengate <noreply@tokengate.test>".parse().unwrap();
        })
        .await;
        let admin = ts.add_user_with("admin@example.com", PASSWORD, true).await;
        let admin = basic("admin@example.com", &format!("{PASSWORD}{admin}"));
        ts.add_user("mailed@example.com").await;
        let r = admin_reset(&ts, &admin, "mailed@example.com").await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{security:?}: {}", r.text());
        let mails = smtp
            .wait_for("mailed.example.com@example.com", 1, Duration::from_secs(10))
            .await;
        assert_eq!(mails.len(), 1, "{security:?}");
        let token = mails[0].token();
        assert!(
            soap_ok(&ts, "mailed@example.com", &format!("{PASSWORD}{token}")).await,
            "{security:?}: the mailed token works"
        );
        ts.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_smtp_password_is_a_delivery_failure_and_the_old_token_stays() {
    let smtp = RealSmtp::start(Security::StartTls, Some((SMTP_USER, SMTP_PASSWORD)));
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.mail.transport = transport(&smtp, Security::StartTls, Some("Not-the-passw0rd"));
        c.mail.timeout = Duration::from_secs(10);
    })
    .await;
    let admin = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin}"));
    let old = ts.add_user("stuck@example.com").await;
    let r = admin_reset(&ts, &admin, "stuck@example.com").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["error"], "mail_delivery_failed");
    assert!(!r.text().contains("Not-the-passw0rd"));
    assert!(smtp.to("stuck.example.com@example.com").is_empty());
    assert!(soap_ok(&ts, "stuck@example.com", &format!("{PASSWORD}{old}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_password_can_come_from_the_environment() {
    let smtp = RealSmtp::start(Security::Tls, Some((SMTP_USER, SMTP_PASSWORD)));
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "{}"
[store]
path = "data"
[mail]
transport = "smtp"
host = "127.0.0.1"
port = {}
security = "tls"
username = "{SMTP_USER}"
password_env = "TG_TEST_SMTP_PASSWORD"
ca = "{}"
timeout = "10s"
from = "tokengate <noreply@tokengate.test>"
"#,
            up.url(),
            smtp.port,
            smtp.ca.display()
        ),
    )
    .unwrap();
    // `user add` on the store directly: the account's token goes out by mail.
    let o = tokio::task::block_in_place(|| {
        process::run(
            &config,
            &[
                "user",
                "add",
                "envmail@example.com",
                "--email",
                "env@example.com",
                "--password-stdin",
            ],
            Some(&format!("{PASSWORD}\n")),
            &[("TG_TEST_SMTP_PASSWORD", SMTP_PASSWORD)],
        )
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mails = smtp
        .wait_for("env@example.com", 1, Duration::from_secs(10))
        .await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].text().contains("Your new security token"));
    // Without the variable, the configuration is refused, naming it.
    let o = tokio::task::block_in_place(|| process::run(&config, &["check-config"], None, &[]));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("TG_TEST_SMTP_PASSWORD"));
}
