//! The web console: handler tests for each page and form over real TLS, and end-to-end tests in
//! a real headless Chromium (Debian's chromium driven by playwright-core) that reset a token by
//! clicking, receive it on a real SMTP server, and log in with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::*;
use http::{Method, StatusCode};

const BASE: &str = "/tokengate/console";

/// A browser-like client: keeps the console cookie and the page's CSRF token.
pub(crate) struct Browser<'a> {
    ts: &'a TestServer,
    /// The console cookie, replaced when the server renews the session (after the user's own
    /// password change or token reset), as a browser replaces it.
    cookie: std::sync::Mutex<String>,
}

impl<'a> Browser<'a> {
    pub(crate) async fn sign_in(
        ts: &'a TestServer,
        user: &str,
        password: &str,
    ) -> Result<Browser<'a>, Reply> {
        let r = post_form(
            ts,
            None,
            "/signin",
            &[("username", user), ("password", password)],
        )
        .await;
        if r.status != StatusCode::SEE_OTHER {
            return Err(r);
        }
        let set = r.header("set-cookie").unwrap().to_owned();
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(set.starts_with("__Host-tg_console="));
        Ok(Browser {
            ts,
            cookie: std::sync::Mutex::new(set.split(';').next().unwrap().to_owned()),
        })
    }

    /// Signs in under a policy that owes a second factor, as a browser does: the password,
    /// then enrolment with a code (RFC 6238) from the key the enrolment page shows.
    pub(crate) async fn sign_in_enrolling(
        ts: &'a TestServer,
        user: &str,
        password: &str,
    ) -> Browser<'a> {
        let half = match Browser::sign_in(ts, user, password).await {
            Ok(b) => b,
            Err(r) => panic!("{user}: the password step failed: {}", r.text()),
        };
        let html = half.get("/mfa").await.text();
        let at = html
            .find(r#"id="totp-secret">"#)
            .expect("the enrolment key")
            + 17;
        let secret: String = html[at..]
            .split('<')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let code = totp_rs::Builder::new()
            .with_secret(totp_rs::Secret::try_from_base32(&secret).unwrap())
            .build()
            .unwrap()
            .generate(tokengate::now_secs())
            .to_string();
        let r = half
            .submit_raw("/mfa", "/mfa/enrol", &[("code", &code)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{user}: enrolment: {}", r.text());
        assert!(half.get("/settings").await.status == StatusCode::OK);
        half
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.ts
            .client()
            .get(&format!("{BASE}{path}"), &[("cookie", &self.cookie())])
            .await
    }

    /// Loads `page` for its CSRF token, posts the form and, as a browser does, follows the
    /// 303 See Other it answers to the page that shows the outcome.
    pub(crate) async fn submit(&self, page: &str, action: &str, fields: &[(&str, &str)]) -> Reply {
        let r = self.submit_raw(page, action, fields).await;
        match r.header("location") {
            Some(to) if r.status == StatusCode::SEE_OTHER => {
                let to = to.to_owned();
                self.ts
                    .client()
                    .get(&to, &[("cookie", &self.cookie())])
                    .await
            }
            _ => r,
        }
    }

    /// Loads `page` for its CSRF token, then posts the form; the answer as it came.
    pub(crate) async fn submit_raw(
        &self,
        page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Reply {
        let html = self.get(page).await.text();
        let csrf = csrf_of(&html);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let r = post_form(self.ts, Some(&self.cookie()), action, &all).await;
        if let Some(set) = r.header("set-cookie")
            && let Some(pair) = set.split(';').next()
            && pair.starts_with("__Host-tg_console=")
            && pair.len() > "__Host-tg_console=".len()
        {
            *self.cookie.lock().unwrap() = pair.to_owned();
        }
        r
    }

    pub(crate) fn cookie(&self) -> String {
        self.cookie.lock().unwrap().clone()
    }
}

pub(crate) fn csrf_of(html: &str) -> String {
    let at =
        html.find(r#"name="csrf" value=""#).expect("a CSRF field") + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().unwrap().to_owned()
}

pub(crate) async fn post_form(
    ts: &TestServer,
    cookie: Option<&str>,
    path: &str,
    fields: &[(&str, &str)],
) -> Reply {
    let c = ts.client();
    let mut b = c
        .request(Method::POST, &format!("{BASE}{path}"))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(k) = cookie {
        b = b.header("cookie", k);
    }
    c.call(b, serde_urlencoded::to_string(fields).unwrap())
        .await
}

/// The cells of each row in the body of the page's first table, tags stripped.
pub(crate) fn table_rows(html: &str) -> Vec<Vec<String>> {
    let Some(start) = html.find("<tbody>") else {
        return Vec::new();
    };
    let body = &html[start
        ..html[start..]
            .find("</tbody>")
            .map_or(html.len(), |e| start + e)];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = &cell[cell.find('>').map_or(0, |i| i + 1)..];
                    let inner = &inner[..inner.find("</td>").unwrap_or(inner.len())];
                    // Tags out, text kept (entities stay as the page sent them).
                    let mut text = String::new();
                    let mut in_tag = false;
                    for c in inner.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                })
                .collect()
        })
        .collect()
}

pub(crate) async fn env() -> (Upstream, SmtpSink, TestServer) {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| mail_to(c, &sink, "PatronManager")).await;
    (up, sink, ts)
}

pub(crate) fn inbox(user: &str) -> String {
    format!("{}@example.com", user.replace('@', "."))
}

#[tokio::test]
async fn sign_in_settings_reset_and_password_change_pages_work() {
    let (_up, sink, ts) = env().await;
    let old = ts.add_user("web@example.com").await;
    let r = ts.client().get(&format!("{BASE}/settings"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/tokengate/console/signin"));
    let r = ts.client().get(&format!("{BASE}/signin"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    for h in [
        "content-security-policy",
        "x-frame-options",
        "cache-control",
    ] {
        assert!(r.header(h).is_some(), "{h}");
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(
        r.text()
            .contains(r#"<label for="username">Username</label>"#)
    );

    let bad = Browser::sign_in(&ts, "web@example.com", "WrongPassw0rd")
        .await
        .err()
        .unwrap();
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.text().contains("Invalid username or password"));
    assert!(!bad.text().contains("WrongPassw0rd"));

    let b = Browser::sign_in(&ts, "web@example.com", PASSWORD)
        .await
        .unwrap();
    // The history is written off the request path: wait for the sign-in's row.
    ts.history_written().await;
    let page = b.get("/settings").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("w***@example.com"));
    assert!(html.contains("Reset My Security Token"));
    assert!(
        html.contains("at least 8 characters"),
        "the policy is shown"
    );
    let rows = table_rows(&html);
    assert!(
        rows.iter()
            .any(|r| r[1] == "web@example.com" && r[4] == "console" && r[2] == "success"),
        "the console sign-in is in the user's own history: {rows:?}"
    );
    assert!(
        !html.contains("wrong password"),
        "users do not see internal reasons"
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));

    // Reset: a confirmation page, then the email.
    assert!(
        b.get("/settings/reset-token")
            .await
            .text()
            .contains("Yes, reset my security token")
    );
    let r = b
        .submit("/settings/reset-token", "/settings/reset-token", &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.text()
            .contains("A new security token was emailed to w***@example.com.")
    );
    let token = sink.to(&inbox("web@example.com"))[0].token();
    assert_ne!(token, old);
    ts.soap_login("web@example.com", &format!("{PASSWORD}{token}"))
        .await;

    // Change password: wrong current password, a weak new one, then a good one.
    let r = b
        .submit(
            "/settings",
            "/settings/password",
            &[("current_password", "nope"), ("new_password", "Fresh1pass")],
        )
        .await;
    assert!(r.text().contains("The current password is not right."));
    let r = b
        .submit(
            "/settings",
            "/settings/password",
            &[("current_password", PASSWORD), ("new_password", "short")],
        )
        .await;
    assert!(r.text().contains("at least 8 characters"));
    let r = b
        .submit(
            "/settings",
            "/settings/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "Fresh1pass"),
            ],
        )
        .await;
    assert!(
        r.text()
            .contains("Your password was changed and a new security token was emailed"),
        "{}",
        r.text()
    );
    let newest = sink.to(&inbox("web@example.com"))[1].token();
    ts.soap_login("web@example.com", &format!("Fresh1pass{newest}"))
        .await;

    // Sign out ends the console session.
    let r = b.submit_raw("/settings", "/signout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = b.get("/settings").await;
    assert_eq!(
        r.header("location"),
        Some("/tokengate/console/signin?expired=1")
    );
    let r = ts
        .client()
        .get(&format!("{BASE}/signin?expired=1"), &[])
        .await;
    assert!(
        r.text()
            .contains("Your console session expired. Sign in again.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_csrf_non_admins_and_html_in_user_fields_are_handled() {
    let (_up, _sink, ts) = env().await;
    ts.add_user("plain@example.com").await;
    let b = Browser::sign_in(&ts, "plain@example.com", PASSWORD)
        .await
        .unwrap();
    for fields in [vec![], vec![("csrf", "forged")]] {
        let r = post_form(&ts, Some(&b.cookie()), "/settings/reset-token", &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.text().contains("CSRF"));
    }
    // No cookie at all: back to sign-in, nothing done.
    let r = post_form(&ts, None, "/settings/reset-token", &[("csrf", "x")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    for page in [
        "/setup/users",
        "/setup/compliance",
        "/setup/history",
        "/setup/history.csv",
    ] {
        let r = b.get(page).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{page}");
        assert!(r.text().contains("Setup pages are for administrators."));
    }
    let r = b
        .submit(
            "/settings",
            "/setup/users/plain%40example.com/grant-admin",
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!ts.app().users.show("plain@example.com").unwrap().admin);

    // HTML in a user's name is shown escaped.
    cli(
        &ts,
        &[
            "user",
            "add",
            "xss@example.com",
            "--email",
            "xss@example.com",
            "--full-name",
            "<script>alert(1)</script>",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let x = Browser::sign_in(&ts, "xss@example.com", PASSWORD)
        .await
        .unwrap();
    let html = x.get("/settings").await.text();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
    assert!(!html.contains("<script>alert"));
}

#[tokio::test]
async fn setup_pages_manage_users_compliance_and_history() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let emp_token = ts.add_user("emp@example.com").await;
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();

    let html = b.get("/setup/users?q=emp").await.text();
    assert!(
        html.contains("emp@example.com") && !html.contains(">boss@example.com<"),
        "search filters"
    );
    // Create a user: the token is emailed.
    let r = b
        .submit(
            "/setup/users",
            "/setup/users",
            &[
                ("username", "New@Example.com"),
                ("email", "new@example.com"),
                ("full_name", "New Person"),
                ("password", "Newbie1pass"),
                ("admin", "on"),
            ],
        )
        .await;
    assert!(
        r.text().contains("User new@example.com was created"),
        "{}",
        r.text()
    );
    assert!(ts.app().users.show("new@example.com").unwrap().admin);
    assert_eq!(sink.to("new@example.com").len(), 1);
    let r = b
        .submit(
            "/setup/users",
            "/setup/users",
            &[
                ("username", "bad"),
                ("email", "not-an-email"),
                ("password", "Newbie1pass"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Invalid email address"));

    // Each action says what it did, and did it: checked by a login, a mail, the admin API.
    let emp_login = async |token: &str| {
        ts.client()
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body("emp@example.com", &format!("{PASSWORD}{token}")),
            )
            .await
            .status
    };
    // Each action from emp's page (confirmed where it asks), back to emp's page with what it
    // did; then emp's row in the list: [select, username, full name, email, last login,
    // token last reset, status, admin].
    let act = async |action: &str, check: &str| {
        let r = b
            .submit(
                "/setup/users/emp%40example.com",
                &format!("/setup/users/emp%40example.com/{action}"),
                &[("confirm", "yes")],
            )
            .await;
        assert!(r.text().contains(check), "{action}: {}", r.text());
        table_rows(&b.get("/setup/users?q=emp").await.text())
            .into_iter()
            .find(|row| row[1] == "emp@example.com")
            .expect("emp's row")
    };
    let row = act("disable", "emp@example.com is now disabled.").await;
    assert_eq!(row[6], "disabled");
    assert_eq!(
        emp_login(&emp_token).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let row = act("enable", "emp@example.com is now enabled.").await;
    assert_eq!(row[6], "active");
    assert_eq!(emp_login(&emp_token).await, StatusCode::OK);
    let emp_admin_call = async |token: &str| {
        ts.client()
            .get(
                "/tokengate/v1/admin/users",
                &[(
                    "authorization",
                    &basic("emp@example.com", &format!("{PASSWORD}{token}")),
                )],
            )
            .await
            .status
    };
    assert_eq!(emp_admin_call(&emp_token).await, StatusCode::FORBIDDEN);
    let row = act("grant-admin", "emp@example.com is now an administrator.").await;
    assert_eq!(row[7], "yes");
    assert_eq!(emp_admin_call(&emp_token).await, StatusCode::OK);
    let row = act(
        "revoke-admin",
        "emp@example.com is no longer an administrator.",
    )
    .await;
    assert_eq!(row[7], "no");
    assert_eq!(emp_admin_call(&emp_token).await, StatusCode::FORBIDDEN);
    act(
        "reset-token",
        "A new security token for emp@example.com was emailed to e***@example.com.",
    )
    .await;
    let mails = sink.to("emp.example.com@example.com");
    assert_eq!(mails.len(), 1, "the reset mailed a token");
    let new_token = mails[0].token();
    assert_eq!(
        emp_login(&emp_token).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(emp_login(&new_token).await, StatusCode::OK);
    // Lock emp with wrong passwords, then unlock from the page.
    for guess in 1..=10 {
        ts.client()
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body("emp@example.com", &format!("Wrong{guess}pass{new_token}")),
            )
            .await;
    }
    assert_eq!(
        emp_login(&new_token).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "locked"
    );
    let html = b.get("/setup/users?q=emp").await.text();
    assert!(
        table_rows(&html)
            .iter()
            .any(|r| r[1] == "emp@example.com" && r[6] == "locked"),
        "{html}"
    );
    let row = act("unlock", "emp@example.com was unlocked.").await;
    assert_eq!(row[6], "active");
    assert_eq!(emp_login(&new_token).await, StatusCode::OK);
    let r = b
        .submit(
            "/setup/users",
            "/setup/users/emp%40example.com/rotation",
            &[("every", "24h")],
        )
        .await;
    assert!(r.text().contains("now rotates every 1day"), "{}", r.text());
    assert_eq!(
        ts.app()
            .users
            .show("emp@example.com")
            .unwrap()
            .rotate_every_secs,
        Some(86_400)
    );
    let r = b
        .submit(
            "/setup/users",
            "/setup/users/emp%40example.com/rotation",
            &[("every", "soonish")],
        )
        .await;
    assert!(
        r.text()
            .contains("Invalid rotation period &#x27;soonish&#x27;"),
        "{}",
        r.text()
    );

    let r = b
        .submit(
            "/setup/compliance",
            "/setup/compliance",
            &[
                ("enabled", "on"),
                ("address", "audit@example.org"),
                ("redact_secrets", "on"),
            ],
        )
        .await;
    assert!(r.text().contains("Saved."));
    assert_eq!(
        tokengate::mail::ComplianceBcc::load(ts.app().store.as_ref()).unwrap(),
        tokengate::mail::ComplianceBcc {
            enabled: true,
            address: Some("audit@example.org".into()),
            redact_secrets: true
        }
    );
    let r = b
        .submit(
            "/setup/compliance",
            "/setup/compliance",
            &[("enabled", "on"), ("address", "nope")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let html = b.get("/setup/history?user=boss@example.com").await.text();
        let rows = table_rows(&html);
        if rows.iter().any(|r| r.len() > 5 && r[2] == "success")
            || std::time::Instant::now() > deadline
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        rows.iter()
            .any(|r| r[1] == "boss@example.com" && r[5] == "console" && r[2] == "success"),
        "{rows:?}"
    );
    let html = b.get("/setup/history?outcome=sideways").await.text();
    assert!(html.contains("is not a known outcome"));
    let r = b.get("/setup/history.csv?user=boss@example.com").await;
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(r.text().starts_with(tokengate::history::CSV_HEADER));
}

/// A SOAP login sent by an integration that names itself in its User-Agent.
async fn soap_login_as(ts: &TestServer, client: &str, user: &str, secret: &str) -> StatusCode {
    let c = ts.client();
    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("user-agent", client);
    c.call(b, soap_login_body(user, secret)).await.status
}

/// The `<svg>` of the page whose accessible title element has this id.
fn svg_titled<'h>(html: &'h str, title_id: &str) -> &'h str {
    let at = html
        .find(&format!("<title id=\"{title_id}\">"))
        .unwrap_or_else(|| panic!("no chart titled {title_id}: {html}"));
    let start = html[..at].rfind("<svg").expect("the chart's <svg>");
    let end = at + html[at..].find("</svg>").expect("the chart's </svg>");
    &html[start..end]
}

/// The logins of each outcome the per-period chart draws, summed over its bars (a test that
/// runs across the hour sees two bars).
fn drawn_per_outcome(svg: &str) -> std::collections::BTreeMap<String, u64> {
    let mut sums = std::collections::BTreeMap::new();
    for title in svg.split("<title>").skip(1) {
        let title = &title[..title.find("</title>").unwrap()];
        if let Some((_, count)) = title.split_once(" UTC: ") {
            let (n, outcome) = count.split_once(' ').unwrap();
            *sums.entry(outcome.to_owned()).or_default() += n.parse::<u64>().unwrap();
        }
    }
    sums
}

#[tokio::test]
async fn history_page_opens_with_charts_of_logins_per_hour_and_per_client() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let first = ts.add_user("sync@example.com").await;
    let (loader, nightly) = ("DataLoader/64", "Nightly <script>alert(1)</script>");
    // Both integrations log in with the token...
    for client in [loader, nightly] {
        let status = soap_login_as(
            &ts,
            client,
            "sync@example.com",
            &format!("{PASSWORD}{first}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{client}");
    }
    // ...an admin resets it...
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    let r = b
        .submit(
            "/setup/users/sync%40example.com",
            "/setup/users/sync%40example.com/reset-token",
            &[("confirm", "yes")],
        )
        .await;
    assert!(
        r.text()
            .contains("A new security token for sync@example.com"),
        "{}",
        r.text()
    );
    let second = sink.to(&inbox("sync@example.com"))[0].token();
    // ...DataLoader is given the new one, the nightly job is not.
    let status = soap_login_as(
        &ts,
        loader,
        "sync@example.com",
        &format!("{PASSWORD}{second}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let status = soap_login_as(
            &ts,
            nightly,
            "sync@example.com",
            &format!("{PASSWORD}{first}"),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    ts.history_written().await;

    let r = b.get("/setup/history?user=sync%40example.com").await;
    assert_eq!(r.status, StatusCode::OK);
    let html = r.text();
    // The page opens with the charts, before the table.
    let periods = svg_titled(&html, "tg-periods-title");
    assert!(html.find("<svg").unwrap() < html.find("<table").unwrap());
    assert!(
        periods.contains("<title id=\"tg-periods-title\">Logins per hour by outcome, "),
        "{periods}"
    );
    assert!(periods.contains(r#"role="img""#));
    assert!(periods.contains(">Hour (UTC)</text>"));
    assert_eq!(
        drawn_per_outcome(periods),
        [("bad_credentials".to_owned(), 2), ("success".to_owned(), 3)].into(),
        "{periods}"
    );
    // Per client: the failing one first, with the failures since the reset; the name from the
    // User-Agent is text.
    let clients = svg_titled(&html, "tg-clients-title");
    let nightly_shown = "Nightly &lt;script&gt;alert(1)&lt;/script&gt;";
    for drawn in [
        format!("<title>{nightly_shown}: 1 success</title>"),
        format!("<title>{nightly_shown}: 2 failures</title>"),
        format!(">{nightly_shown}</text>"),
        ">1 ok, 2 failed; failing since ".to_owned(),
        "<title>DataLoader/64: 2 successes</title>".to_owned(),
        ">DataLoader/64</text>".to_owned(),
        ">2 ok, 0 failed</text>".to_owned(),
    ] {
        assert!(clients.contains(&drawn), "{drawn} in {clients}");
    }
    assert!(clients.find(nightly_shown).unwrap() < clients.find("DataLoader/64").unwrap());
    assert!(
        !clients.contains("DataLoader/64: 0 failures"),
        "no empty bars"
    );
    assert!(
        !html.contains("<script>alert(1)"),
        "the User-Agent became markup"
    );

    // The range selector: longer ranges, longer periods; a bad range is the page's error.
    for (range, title) in [
        ("24h", "Logins per hour by outcome"),
        ("7d", "Logins per 3 hours by outcome"),
        ("30d", "Logins per 12 hours by outcome"),
    ] {
        let html = b.get(&format!("/setup/history?range={range}")).await.text();
        assert!(
            html.contains(&format!(r#"<option value="{range}" selected>"#)),
            "{range}"
        );
        let periods = svg_titled(&html, "tg-periods-title");
        assert!(periods.contains(title), "{range}: {periods}");
        // The admin's own console sign-in is in every range.
        assert!(
            drawn_per_outcome(periods)["success"] >= 4,
            "{range}: {periods}"
        );
    }
    // `since` wins over the range; one in the future is an empty chart, not an error.
    let html = b.get("/setup/history?range=30d&since=1h").await.text();
    assert!(svg_titled(&html, "tg-periods-title").contains("Logins per hour by outcome"));
    let html = b
        .get("/setup/history?since=2999-01-01T00:00:00Z")
        .await
        .text();
    assert!(svg_titled(&html, "tg-periods-title").contains(">No logins in this range</text>"));
    assert!(html.contains(r#"<td colspan="7">No logins in this range.</td>"#));
    let r = b.get("/setup/history?range=forever").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .contains("range: &#x27;forever&#x27; is not one of 24h, 7d, 30d"),
        "{}",
        r.text()
    );
    // The CSV covers the page's range.
    let csv = b
        .get("/setup/history.csv?user=sync%40example.com&range=7d")
        .await
        .text();
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_charts_count_the_newest_100000_logins_and_say_when_the_range_holds_more() {
    let (_up, _sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    // 100,010 failed logins over the last 20 hours, one client each of a few.
    let now = tokengate::history::now_ms();
    let rows: Vec<tokengate::store::HistoryRow> = (0..100_010u64)
        .map(|i| tokengate::store::HistoryRow {
            at_ms: now - 20 * 3_600_000 + i * 700,
            username: "bulk@example.com".into(),
            user_id: None,
            source_ip: "192.0.2.1".into(),
            dialect: "soap".into(),
            api_version: None,
            client: Some(format!("client-{}", i % 3)),
            tls: None,
            outcome: "bad_credentials".into(),
            reason: None,
            token: None,
        })
        .collect();
    let store = ts.app().store.clone();
    tokio::task::spawn_blocking(move || {
        for batch in rows.chunks(5_000) {
            store.history_append(batch).unwrap();
        }
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let r = b.get("/setup/history?user=bulk%40example.com").await;
    eprintln!("history page over 100,010 rows: {:?}", started.elapsed());
    assert_eq!(r.status, StatusCode::OK);
    let html = r.text();
    assert!(
        html.contains("The charts count the newest 100,000 logins of this range, back to "),
        "{html}"
    );
    let periods = svg_titled(&html, "tg-periods-title");
    assert!(periods.contains("Only the newest logins of the range are counted."));
    assert_eq!(
        drawn_per_outcome(periods),
        [("bad_credentials".to_owned(), 100_000)].into()
    );
    // A range that holds fewer says nothing of the kind.
    let html = b
        .get("/setup/history?user=bulk%40example.com&since=1h")
        .await
        .text();
    assert!(!html.contains("The charts count the newest"));
    assert!(!svg_titled(&html, "tg-periods-title").contains("Only the newest"));
}

/// Installs Debian's chromium when it is missing (the machine's package manager, as root).
pub(crate) fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        let ok = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok && path.exists(), "could not install Debian's chromium");
    }
    path
}

/// The base64 SHA-256 of the certificate's public key, for Chromium's SPKI allow-list.
pub(crate) fn spki_hash(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
        .arg("sh")
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub(crate) fn run_browser(
    ts: &TestServer,
    phase: &str,
    shots: &Path,
    extra: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let js = crate::support::js::node_modules();
    let mut cmd = Command::new("node");
    cmd.arg(js.join("console.mjs"))
        .env("TG_URL", format!("https://127.0.0.1:{}", ts.addr.port()))
        .env("TG_SPKI", spki_hash(&ts.ca))
        .env("TG_PHASE", phase)
        .env("TG_SHOTS", shots)
        .env("TG_CHROMIUM", chromium())
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    // Node and the Chromium it drives, killed together if they hang.
    let (out, killed) = crate::support::process::run_bounded(cmd, None, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !killed,
        "browser {phase} failed{}:\n{stdout}\n{}",
        if killed { " (killed after 180 s)" } else { "" },
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn step<'v>(steps: &'v [serde_json::Value], name: &str) -> &'v serde_json::Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_user_resets_the_token_and_an_admin_enables_compliance_bcc() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("chief@example.com", "Chief1pass", true)
        .await;
    let first = ts.add_user("ursula@example.com").await;
    // Screenshots go to TG_SCREENSHOTS (the README's come from here) or a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("TG_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();

    let steps = tokio::task::block_in_place(|| {
        run_browser(
            &ts,
            "user",
            &shots,
            &[("TG_USER", "ursula@example.com"), ("TG_PASSWORD", PASSWORD)],
        )
    });
    assert!(
        step(&steps, "wrong-password")["alert"]
            .as_str()
            .unwrap()
            .contains("Invalid username or password")
    );
    assert_eq!(step(&steps, "signed-in")["heading"], "My Settings");
    assert!(
        step(&steps, "reset")["notice"]
            .as_str()
            .unwrap()
            .contains("A new security token was emailed to u***@example.com.")
    );
    // Reloaded after the reset: My Settings again (a GET), the notice gone, no second mail.
    let reloaded = step(&steps, "reloaded");
    assert!(
        reloaded["url"]
            .as_str()
            .unwrap()
            .ends_with("/tokengate/console/settings"),
        "{reloaded}"
    );
    assert_eq!(reloaded["notices"], 0, "{reloaded}");
    let forbidden = step(&steps, "setup-forbidden");
    assert_eq!(forbidden["status"], 403);
    assert_eq!(forbidden["links"], 0);
    // The email reached the SMTP server, and its token works for a SOAP login.
    let mails = sink.to(&inbox("ursula@example.com"));
    assert_eq!(mails.len(), 1);
    let token = mails[0].token();
    assert!(
        mails[0]
            .text()
            .contains("you asked for a new security token")
    );
    ts.soap_login("ursula@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("ursula@example.com", &format!("{PASSWORD}{first}")),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the old token is dead"
    );

    let steps = tokio::task::block_in_place(|| {
        run_browser(
            &ts,
            "admin",
            &shots,
            &[
                ("TG_USER", "ursula@example.com"),
                ("TG_ADMIN", "chief@example.com"),
                ("TG_ADMIN_PASSWORD", "Chief1pass"),
                ("TG_COMPLIANCE", "compliance@example.org"),
            ],
        )
    });
    assert_eq!(step(&steps, "compliance-saved")["notice"], "Saved.");
    assert!(
        step(&steps, "admin-reset")["notice"]
            .as_str()
            .unwrap()
            .contains("was emailed to u***@example.com")
    );
    assert!(step(&steps, "history")["rows"].as_u64().unwrap() >= 1);
    // The charts, with JavaScript off: one of each, at the page's width, with bars and the
    // legend (the failed SOAP login above is a bad_credentials bar).
    // The user's page saves the profile, and the audit trail shows the change: by whom,
    // through which door, what changed (newest first, before the console's token reset).
    let saved = step(&steps, "profile-saved");
    assert!(
        saved["notice"].as_str().unwrap().contains("was saved"),
        "{saved}"
    );
    let audit = step(&steps, "audit");
    assert!(audit["rows"].as_u64().unwrap() >= 2, "{audit}");
    assert_eq!(audit["actor"], "chief@example.com");
    assert_eq!(audit["channel"], "console");
    assert_eq!(audit["action"], "user.update");
    let changes = audit["changes"].as_str().unwrap();
    assert!(
        changes.contains("api_only: false → true") && changes.contains("→ Integration (Formstack)"),
        "{changes}"
    );
    let chart = step(&steps, "chart");
    assert_eq!(
        (chart["hour"].as_u64(), chart["client"].as_u64()),
        (Some(1), Some(1)),
        "{chart}"
    );
    assert!(chart["width"].as_f64().unwrap() > 500.0, "{chart}");
    assert!(chart["height"].as_f64().unwrap() > 100.0, "{chart}");
    assert_eq!(chart["legend"], 1, "{chart}");
    assert!(chart["bars"].as_u64().unwrap() >= 2, "{chart}");
    // The next token email also reached the compliance address, redacted.
    let mails = sink.to(&inbox("ursula@example.com"));
    assert_eq!(mails.len(), 2);
    let newest = mails[1].token();
    let copies = sink
        .wait_for("compliance@example.org", 1, Duration::from_secs(5))
        .await;
    assert_eq!(copies.len(), 1);
    assert!(!copies[0].text().contains(&newest));
    ts.soap_login("ursula@example.com", &format!("{PASSWORD}{newest}"))
        .await;
    for name in [
        "signin",
        "settings",
        "reset-confirm",
        "reset-done",
        "compliance",
        "history",
        "history-chart",
        "history-charts",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_admin_enrols_a_second_factor_signs_in_with_a_code_and_a_replay_is_refused()
{
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.console.mfa = tokengate::mfa::Policy::Admins;
    })
    .await;
    ts.add_user_with("mfa.admin@example.com", "Admin1pass", true)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("TG_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let steps = tokio::task::block_in_place(|| {
        run_browser(
            &ts,
            "mfa",
            &shots,
            &[
                ("TG_ADMIN", "mfa.admin@example.com"),
                ("TG_ADMIN_PASSWORD", "Admin1pass"),
            ],
        )
    });
    let enrolled = step(&steps, "enrolled");
    assert_eq!(enrolled["heading"], "Two-factor authentication is on");
    assert_eq!(enrolled["qr"], 1, "the QR code is drawn inline, no script");
    assert_eq!(enrolled["codes"], 10);
    assert_eq!(enrolled["key"].as_str().unwrap().len(), 32);
    assert_eq!(step(&steps, "signed-in")["heading"], "My Settings");
    let replayed = step(&steps, "replayed");
    assert!(
        replayed["alert"]
            .as_str()
            .unwrap()
            .contains("The code is not right"),
        "{replayed}"
    );
    assert!(
        replayed["url"]
            .as_str()
            .unwrap()
            .ends_with("/tokengate/console/mfa")
    );
    let still = step(&steps, "still-half-signed-in");
    assert!(
        still["url"]
            .as_str()
            .unwrap()
            .ends_with("/tokengate/console/mfa"),
        "{still}"
    );
    assert!(
        ts.app()
            .users
            .show("mfa.admin@example.com")
            .unwrap()
            .mfa_enrolled
    );
    for name in ["mfa-enrol", "mfa-recovery", "mfa-code"] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_markup_in_a_username_is_shown_as_text_on_setup_pages() {
    let (_up, _sink, ts) = env().await;
    let admin = ts
        .add_user_with("chief@example.com", "Chief1pass", true)
        .await;
    // No spaces (usernames allow none; `/` separates attributes, quotes end their values),
    // and the element it would make is easy to look for.
    let markup = r#"<img/id="pwned"/src="x"/onerror="alert(1)">@example.com"#;
    // A user with that name, made through the admin API as an admin would...
    let r = ts
        .client()
        .call(
            ts.client()
                .request(Method::POST, "/tokengate/v1/admin/users")
                .header("content-type", "application/json")
                .header(
                    "authorization",
                    basic("chief@example.com", &format!("Chief1pass{admin}")),
                ),
            serde_json::json!({
                "username": markup,
                "email": "pwned@example.com",
                "password": PASSWORD,
            })
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // ...and a failed login under it, which puts it in the login history.
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(markup, "wrong-password-1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    ts.history_written().await;

    let tmp = tempfile::tempdir().unwrap();
    let steps = tokio::task::block_in_place(|| {
        run_browser(
            &ts,
            "escape",
            tmp.path(),
            &[
                ("TG_ADMIN", "chief@example.com"),
                ("TG_ADMIN_PASSWORD", "Chief1pass"),
                ("TG_MARKUP", markup),
            ],
        )
    });
    for page in ["users", "history"] {
        let s = step(&steps, page);
        assert_eq!(s["injected"], 0, "{page}: the markup became an element");
        assert_eq!(s["shown"], true, "{page}: the name is shown as text: {s}");
        assert_eq!(s["dialogs"], 0, "{page}");
    }
}

/// Every `<form method="post">` action on a page, with the console prefix taken off.
fn post_actions(html: &str) -> Vec<String> {
    html.split("<form")
        .skip(1)
        .filter(|f| {
            f.split('>')
                .next()
                .unwrap_or("")
                .contains(r#"method="post""#)
        })
        .filter_map(|f| {
            let at = f.find(r#"action=""#)? + r#"action=""#.len();
            // As a browser reads the attribute: minijinja writes '/' as "&#x2f;" (and '&' as
            // "&amp;"), so an action rendered from a variable is found too.
            let action = f[at..]
                .split('"')
                .next()?
                .replace("&#x2f;", "/")
                .replace("&amp;", "&");
            Some(action.strip_prefix(BASE).unwrap_or(&action).to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_console_form_needs_the_csrf_token_of_its_own_session() {
    // Every user owes a second factor, so the settings page offers the MFA forms too.
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        mail_to(c, &sink, "PatronManager");
        c.console.mfa = tokengate::mfa::Policy::All;
    })
    .await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user_with("other@example.com", PASSWORD, true).await;
    let token = ts.add_user("target@example.com").await;
    let b = Browser::sign_in_enrolling(&ts, "boss@example.com", PASSWORD).await;
    let other = Browser::sign_in_enrolling(&ts, "other@example.com", PASSWORD).await;
    // A named token of boss's own, so its reset and revoke confirmation pages exist.
    let r = b
        .submit("/settings", "/settings/tokens", &[("name", "loader")])
        .await;
    assert!(
        r.text().contains("The token loader was added"),
        "{}",
        r.text()
    );
    let target = "/setup/users/target%40example.com";
    // Every form of the console, with fields that would make it act.
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/signout".into(), vec![]),
        ("/settings/reset-token".into(), vec![]),
        ("/settings/tokens".into(), vec![("name", "forged")]),
        (
            "/settings/tokens/loader/revoke".into(),
            vec![("confirm", "yes")],
        ),
        (
            "/settings/tokens/loader/reset".into(),
            vec![("confirm", "yes")],
        ),
        ("/settings/mfa".into(), vec![("current_password", PASSWORD)]),
        ("/settings/mfa/confirm".into(), vec![("code", "123456")]),
        (
            "/settings/password".into(),
            vec![
                ("current_password", PASSWORD),
                ("new_password", "Changed1pass"),
            ],
        ),
        (
            "/setup/users".into(),
            vec![
                ("username", "made@example.com"),
                ("email", "made@example.com"),
                ("password", "Made1pass!"),
            ],
        ),
        (
            "/setup/compliance".into(),
            vec![("enabled", "on"), ("address", "leak@example.org")],
        ),
        (format!("{target}/disable"), vec![]),
        (format!("{target}/enable"), vec![]),
        (format!("{target}/unlock"), vec![]),
        (format!("{target}/reset-token"), vec![]),
        (format!("{target}/grant-admin"), vec![]),
        (format!("{target}/revoke-admin"), vec![]),
        (format!("{target}/rotation"), vec![("every", "1h")]),
        (format!("{target}/reset-mfa"), vec![]),
        (
            format!("{target}/profile"),
            vec![("email", "leak@example.org")],
        ),
        (
            format!("{target}/login-ranges"),
            vec![("ranges", "192.0.2.1")],
        ),
        (format!("{target}/delete"), vec![("confirm", "yes")]),
        (
            "/setup/users/bulk".into(),
            vec![
                ("action", "disable"),
                ("user", "target@example.com"),
                ("confirm", "yes"),
            ],
        ),
    ];
    // The table covers every form the pages offer (a new form must join it): the pages of a
    // user with a named token and a second factor, their confirmation pages, and the page a
    // new authenticator is confirmed on (the answer to a real /settings/mfa form).
    let new_key = b
        .submit_raw(
            "/settings",
            "/settings/mfa",
            &[("current_password", PASSWORD)],
        )
        .await;
    assert_eq!(new_key.status, StatusCode::OK, "{}", new_key.text());
    let mut offered = post_actions(&new_key.text());
    assert!(
        offered.contains(&"/settings/mfa/confirm".to_owned()),
        "{offered:?}"
    );
    for page in [
        "/settings",
        "/settings/reset-token",
        "/settings/tokens/loader/reset",
        "/settings/tokens/loader/revoke",
        "/setup/users?q=target",
        "/setup/new-user",
        target,
        "/setup/compliance",
        "/setup/history",
    ] {
        offered.extend(post_actions(&b.get(page).await.text()));
    }
    assert!(offered.len() >= 14, "forms found: {offered:?}");
    for action in &offered {
        assert!(
            forms.iter().any(|(a, _)| a == action),
            "the form {action} is not in the table"
        );
    }
    let other_csrf = csrf_of(&other.get("/settings").await.text());
    let mailed = sink.mails().len();
    for (action, fields) in &forms {
        for csrf in [None, Some("forged"), Some(other_csrf.as_str())] {
            let mut all = fields.clone();
            if let Some(c) = csrf {
                all.push(("csrf", c));
            }
            let r = post_form(&ts, Some(&b.cookie()), action, &all).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{action} with {csrf:?}");
            assert!(
                r.text().contains("invalid or missing CSRF token"),
                "{action}"
            );
        }
    }
    // Nothing happened: the session lives, the user is as before, no user, setting or mail
    // was made, the passwords and the token still work.
    assert_eq!(b.get("/settings").await.status, StatusCode::OK);
    let shown = ts.app().users.show("target@example.com").unwrap();
    assert!(!shown.disabled && !shown.admin, "{shown:?}");
    assert!(ts.app().users.show("made@example.com").is_err());
    assert!(
        !b.get("/setup/compliance")
            .await
            .text()
            .contains("leak@example.org")
    );
    ts.soap_login("target@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert!(
        Browser::sign_in(&ts, "boss@example.com", PASSWORD)
            .await
            .is_ok()
    );
    assert_eq!(sink.mails().len(), mailed, "a forged form sent mail");
    let settings = b.get("/settings").await.text();
    assert!(
        settings.contains("loader"),
        "the named token is still there"
    );
    // The session's own token works.
    let r = b
        .submit(target, &format!("{target}/disable"), &[("confirm", "yes")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(ts.app().users.show("target@example.com").unwrap().disabled);
}

#[tokio::test]
async fn every_console_answer_carries_exactly_the_security_headers() {
    let (_up, _sink, ts) = env().await;
    ts.add_user("plain@example.com").await;
    let b = Browser::sign_in(&ts, "plain@example.com", PASSWORD)
        .await
        .unwrap();
    let expected = [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ];
    let mut answers = vec![
        (
            "sign-in",
            ts.client().get(&format!("{BASE}/signin"), &[]).await,
        ),
        (
            "failed sign-in",
            post_form(
                &ts,
                None,
                "/signin",
                &[("username", "x"), ("password", "y")],
            )
            .await,
        ),
        ("settings", b.get("/settings").await),
        ("confirm", b.get("/settings/reset-token").await),
        ("forbidden setup page", b.get("/setup/users").await),
        (
            "refused form",
            post_form(&ts, Some(&b.cookie()), "/settings/reset-token", &[]).await,
        ),
    ];
    answers.push(("not found", b.get("/nowhere").await));
    for (what, r) in &answers {
        for (name, value) in expected {
            assert_eq!(r.header(name), Some(value), "{what}: {name}");
        }
    }
}

#[tokio::test]
async fn console_sessions_end_after_their_idle_time_and_their_lifetime() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.console.session_idle_timeout = Duration::from_secs(3);
        c.console.session_lifetime = Duration::from_secs(6);
    })
    .await;
    ts.add_user("timed@example.com").await;
    let expired = |r: &Reply| r.header("location") == Some("/tokengate/console/signin?expired=1");

    // Idle: used every second it stays (the clock counts whole seconds, so a 1 s gap is at
    // most 2 of them, under the 3 s idle time); left alone for 4 s, it is over.
    let b = Browser::sign_in(&ts, "timed@example.com", PASSWORD)
        .await
        .unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.get("/settings").await.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        expired(&b.get("/settings").await),
        "idle session still valid"
    );

    // Lifetime: used every second, it still ends 6 s after sign-in.
    let b = Browser::sign_in(&ts, "timed@example.com", PASSWORD)
        .await
        .unwrap();
    let cookie = b.cookie();
    let signed_in = std::time::Instant::now();
    let ended = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = b.get("/settings").await;
        if expired(&r) {
            break signed_in.elapsed();
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(signed_in.elapsed() < Duration::from_secs(9), "never ended");
    };
    assert!(
        ended >= Duration::from_secs(5),
        "ended after {ended:?}, before its lifetime"
    );
    // The cookie's own Max-Age says the same lifetime.
    let r = post_form(
        &ts,
        None,
        "/signin",
        &[("username", "timed@example.com"), ("password", PASSWORD)],
    )
    .await;
    assert!(
        r.header("set-cookie").unwrap().contains("Max-Age=6"),
        "{:?}",
        r.header("set-cookie")
    );
    assert!(!cookie.is_empty());
}

#[tokio::test]
async fn without_mail_creating_a_user_is_refused_in_the_console_and_the_admin_api() {
    // No [mail]: a user made here would have a token nobody ever sees.
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let admin = ts.add_user_with("root@example.com", PASSWORD, true).await;
    let b = Browser::sign_in(&ts, "root@example.com", PASSWORD)
        .await
        .unwrap();
    let r = b
        .submit(
            "/setup/users",
            "/setup/users",
            &[
                ("username", "lost@example.com"),
                ("email", "lost@example.com"),
                ("password", "Newbie1pass"),
            ],
        )
        .await;
    let html = r.text();
    assert!(
        html.contains("Email delivery is not configured")
            && html.contains("no user was created")
            && html.contains("--show-token"),
        "{html}"
    );
    assert!(ts.app().users.show("lost@example.com").is_err());

    let r = ts
        .client()
        .call(
            ts.client()
                .request(Method::POST, "/tokengate/v1/admin/users")
                .header("content-type", "application/json")
                .header(
                    "authorization",
                    basic("root@example.com", &format!("{PASSWORD}{admin}")),
                ),
            serde_json::json!({
                "username": "lost@example.com",
                "email": "lost@example.com",
                "password": PASSWORD,
            })
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["error"], "mail_not_configured");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("no user was created")
    );
    assert!(ts.app().users.show("lost@example.com").is_err());
    ts.stop().await;
}

#[tokio::test]
async fn the_console_shows_times_in_its_configured_zone_with_the_utc_value_on_hover() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.console.time_zone = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    })
    .await;
    ts.add_user("tz@example.com").await;
    let b = Browser::sign_in(&ts, "tz@example.com", PASSWORD)
        .await
        .unwrap();
    ts.history_written().await;
    let html = b.get("/settings").await.text();
    // Tokyo is nine hours ahead of UTC all year: the sign-in's row, and the token's last
    // reset, read in JST; the machine-readable value and the hover title stay UTC.
    let at = html.find("<time datetime=\"").expect("a time") + "<time datetime=\"".len();
    let iso = &html[at..at + 24];
    assert!(iso.ends_with('Z'), "{iso}");
    let utc: jiff::Timestamp = iso.parse().unwrap();
    let tokyo = utc
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .strftime("%-d %b %Y, %H:%M JST")
        .to_string();
    assert!(
        html.contains(&format!(">{tokyo}</time>")),
        "{tokyo}: {html}"
    );
    assert!(!html.contains(" UTC</time>"), "{html}");
}
