//! The real jsforce client (npm `jsforce` 3.10.16, pinned in `tests/js/package.json`) against the
//! real server over TLS: SOAP `login()` and the OAuth 2.0 password grant, a REST query proxied to
//! the upstream after each, `identity()`, both logouts, refresh tokens (jsforce's
//! `OAuth2.refreshToken()` and its automatic refresh of an ended session, with rotation and
//! reuse detection), and a wrong password.
//!
//! The Node side lives in `tests/js/flow.mjs`; it prints one JSON line per step. The test installs
//! the Node dependencies itself (`npm ci`) when they are missing and fails, never skips, when Node
//! or npm is unavailable.
//!
//! TLS: verification stays on. jsforce 3.10.16 sends through node-fetch v2, i.e. Node's `https`
//! module, whose default trust store `NODE_EXTRA_CA_CERTS` extends. The variable is read once at
//! Node start-up, so it is set on the child's environment, never from inside the script.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const USERNAME: &str = "JSForce.User@Example.com";
/// What tokengate stores and forwards for `USERNAME` (usernames are case-insensitive).
const CANONICAL_USERNAME: &str = "jsforce.user@example.com";
const NODE_TIMEOUT: Duration = Duration::from_secs(120);
const INVALID_LOGIN: &str =
    "INVALID_LOGIN: Invalid username, password, security token; or user locked out.";

/// What a finished child process left behind.
struct Output {
    status: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn dump(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it and its children after `timeout`. Blocking: call
/// from `spawn_blocking`.
fn run(cmd: Command, timeout: Duration) -> Output {
    let (out, killed) = crate::support::process::run_bounded(cmd, None, timeout);
    Output {
        status: if killed {
            format!("killed after {timeout:?} (timeout)")
        } else {
            out.status.to_string()
        },
        success: !killed && out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsforce_logs_in_with_soap_and_oauth_and_queries_through_the_proxy() {
    tokio::task::spawn_blocking(crate::support::js::node_modules)
        .await
        .unwrap();

    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        cfg.oauth_clients[0].refresh_tokens = true;
    })
    .await;
    let token = ts.add_user(USERNAME).await;

    let mut cmd = Command::new("node");
    cmd.arg(crate::support::js::dir().join("flow.mjs"))
        .current_dir(crate::support::js::dir())
        .env("NODE_EXTRA_CA_CERTS", &ts.ca)
        .env("TG_URL", &ts.origin)
        .env("TG_USER", USERNAME)
        .env("TG_SECRET", format!("{PASSWORD}{token}"))
        .env("TG_CLIENT_ID", CLIENT_ID)
        .env("TG_CLIENT_SECRET", CLIENT_SECRET);
    // jsforce sends everything through these proxies if set (it ignores NO_PROXY), and TLS
    // verification must not be switched off from outside.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NODE_TLS_REJECT_UNAUTHORIZED",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::task::spawn_blocking(move || run(cmd, NODE_TIMEOUT))
        .await
        .unwrap();
    // Always shown with --nocapture; libtest shows it for a failing test anyway.
    println!("{}", out.dump());
    assert!(out.success, "the jsforce flow failed (node output above)");

    // One JSON object per step; anything else on stdout would be jsforce logging.
    let steps: HashMap<String, serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}"));
            (v["step"].as_str().unwrap_or_default().to_owned(), v)
        })
        .collect();
    for name in [
        "soap.login",
        "soap.query",
        "soap.logout",
        "soap.session_dead_after_logout",
        "oauth.login",
        "oauth.query",
        "oauth.identity",
        "oauth.logout",
        "oauth.token_dead_after_revoke",
        "refresh.login",
        "refresh.rotate",
        "refresh.automatic",
        "refresh.reuse_refused",
        "refresh.family_revoked",
        "soap.wrong_password",
        "oauth.wrong_password",
        "done",
    ] {
        let step = steps
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` step reported (node output above)"));
        assert_eq!(step["ok"], true, "step `{name}`: {step}");
    }

    // What jsforce derived from the login answers.
    for name in ["soap.login", "oauth.login"] {
        let step = &steps[name];
        assert_eq!(step["instanceUrl"], ts.origin.as_str(), "{step}");
        assert_eq!(
            step["userInfo"]["organizationId"],
            ts.cfg.server.org.id18.as_str(),
            "{step}"
        );
    }
    let user_id = steps["soap.login"]["userInfo"]["id"]
        .as_str()
        .expect("a user id")
        .to_owned();
    assert_eq!(steps["oauth.login"]["userInfo"]["id"], user_id.as_str());
    assert_eq!(steps["oauth.identity"]["user_id"], user_id.as_str());
    assert_eq!(steps["soap.query"]["totalSize"], 1);
    assert_eq!(steps["oauth.query"]["totalSize"], 1);
    assert_eq!(steps["refresh.rotate"]["totalSize"], 1);
    assert_eq!(steps["refresh.automatic"]["totalSize"], 1);

    // A wrong password surfaces as Salesforce's generic faults.
    assert_eq!(steps["soap.wrong_password"]["error"], INVALID_LOGIN);
    assert_eq!(steps["oauth.wrong_password"]["errorName"], "invalid_grant");
    assert_eq!(
        steps["oauth.wrong_password"]["error"],
        "authentication failure"
    );

    // The upstream saw every query, as the canonical user and without the client's credentials:
    // one per login flow, one with the refreshed token, one after jsforce's automatic refresh
    // (the call with the ended session was refused, not forwarded).
    let queries: Vec<Recorded> = up
        .requests()
        .into_iter()
        .filter(|r| r.uri.starts_with("/services/data/v59.0/query"))
        .collect();
    assert_eq!(
        queries.len(),
        4,
        "one query per flow; the upstream saw {:?}",
        up.requests().iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    for q in &queries {
        assert_eq!(q.method, http::Method::GET, "{q:?}");
        assert!(
            q.uri
                .contains("q=SELECT%20Id%2C%20Name%20FROM%20Account%20LIMIT%205"),
            "{q:?}"
        );
        assert_eq!(
            q.headers
                .get("x-tokengate-user")
                .and_then(|v| v.to_str().ok()),
            Some(CANONICAL_USERNAME),
            "{q:?}"
        );
        let forwarded_id = q
            .headers
            .get("x-tokengate-user-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no x-tokengate-user-id: {q:?}"));
        assert_eq!(forwarded_id, user_id, "the upstream is told who called");
        assert!(q.headers.get("authorization").is_none(), "{q:?}");
        assert!(q.headers.get("x-sfdc-session").is_none(), "{q:?}");
    }

    ts.stop().await;
    up.stop();
}
