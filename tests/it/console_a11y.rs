//! The console for keyboard, screen-reader and phone users: every page, as a plain user and as
//! an admin (second factor on), at 1280 and 390 px, checked by axe-core (WCAG 2.2 AA) in
//! Debian's Chromium (`tests/js/a11y.mjs`, whose `PAGES` list names the pages), with no
//! sideways scrolling and a skip link first; a keyboard walk; and the form-error pattern (each
//! error tied to its field, a focused summary, "Error: " in the title, typed values kept and
//! passwords never) checked on the served HTML.

use std::process::Command;
use std::time::Duration;

use crate::console::{chromium, spki_hash};
use crate::support::smtp::SmtpSink;
use crate::support::*;
use tokengate::admin::Request;
use tokengate::audit::{Actor, Channel};

const ADMIN: (&str, &str) = ("chief@example.com", "Chief1pass");
const USER: &str = "ursula@example.com";

/// A server with mail, the second factor owed by admins, 30 users (two pages of Setup →
/// Users), logins in the history and changes in the audit trail.
async fn populated() -> (Upstream, SmtpSink, TestServer) {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        mail_to(c, &sink, "PatronManager");
        c.console.mfa = tokengate::mfa::Policy::Admins;
    })
    .await;
    ts.add_user_with(ADMIN.0, ADMIN.1, true).await;
    let token = ts.add_user(USER).await;
    for i in 0..28 {
        // Long names and addresses: they must wrap on a phone, not widen the page.
        ts.add_user(&format!(
            "integration.user.long.{i:02}@subsidiary-company.example.com"
        ))
        .await;
    }
    ts.soap_login(USER, &format!("{PASSWORD}{token}")).await;
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(USER, "wrong-password-and-token"),
        )
        .await;
    assert_eq!(r.status, http::StatusCode::INTERNAL_SERVER_ERROR);
    ts.history_written().await;
    let actor = Actor::admin(ADMIN.0, "127.0.0.1".parse().unwrap(), Channel::Console);
    ts.app()
        .admin
        .perform(
            &actor,
            Request::ComplianceSet {
                address: Some("compliance@example.org".into()),
                disable: false,
                redact: Some(true),
            },
        )
        .await
        .expect("compliance set");
    // An integration token, so My Settings lists one and its confirmation can be visited.
    ts.app()
        .admin
        .perform(
            &actor,
            Request::TokenAdd {
                username: USER.into(),
                name: "nightly-sync".into(),
            },
        )
        .await
        .expect("named token added");
    (up, sink, ts)
}

fn run_sweep(ts: &TestServer) -> Vec<serde_json::Value> {
    let js = crate::support::js::node_modules();
    let mut cmd = Command::new("node");
    cmd.arg(js.join("a11y.mjs"))
        .env("TG_URL", format!("https://127.0.0.1:{}", ts.addr.port()))
        .env("TG_SPKI", spki_hash(&ts.ca))
        .env("TG_CHROMIUM", chromium())
        .env("TG_USER", USER)
        .env("TG_PASSWORD", PASSWORD)
        .env("TG_ADMIN", ADMIN.0)
        .env("TG_ADMIN_PASSWORD", ADMIN.1)
        .env("TG_SECOND_USER", USER)
        // Screenshots of every page at both widths, when asked for.
        .env(
            "TG_SHOTS",
            std::env::var_os("TG_A11Y_SCREENSHOTS").unwrap_or_default(),
        )
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let (out, killed) = crate::support::process::run_bounded(cmd, None, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !killed,
        "the accessibility sweep failed{}:\n{stdout}\n{}",
        if killed { " (killed after 300 s)" } else { "" },
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_every_console_page_passes_axe_at_desktop_and_phone_width_without_sideways_scroll()
 {
    let (_up, _sink, ts) = populated().await;
    let started = std::time::Instant::now();
    let steps = tokio::task::block_in_place(|| run_sweep(&ts));
    eprintln!(
        "accessibility sweep: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let pages: Vec<_> = steps.iter().filter(|s| s["step"] == "page").collect();
    let mut failures = Vec::new();
    for p in &pages {
        let at = format!(
            "{} ({}, {} px, {})",
            p["name"].as_str().unwrap(),
            p["role"].as_str().unwrap(),
            p["width"],
            p["url"].as_str().unwrap()
        );
        for v in p["violations"].as_array().unwrap() {
            failures.push(format!(
                "{at}: axe {} ({}): {} at {}",
                v["id"].as_str().unwrap(),
                v["impact"].as_str().unwrap_or("?"),
                v["help"].as_str().unwrap(),
                v["targets"]
            ));
        }
        if p["scrollWidth"].as_u64().unwrap() > p["innerWidth"].as_u64().unwrap() {
            failures.push(format!(
                "{at}: scrolls sideways ({} px wide in a {} px window)",
                p["scrollWidth"], p["innerWidth"]
            ));
        }
        if p["skip"] != true {
            failures.push(format!(
                "{at}: the first focusable element is not \"Skip to main content\" to <main id=\"main\" tabindex=\"-1\">"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Pages with a form's error: "Error: " in the title, the summary focused, and each error
    // linked to its field, which is marked invalid and described by the message; a password or
    // a code is never typed back in.
    let with_error: Vec<_> = pages
        .iter()
        .filter(|p| p["name"].as_str().unwrap().contains("with an error"))
        .collect();
    assert_eq!(with_error.len(), 2 * 7, "{with_error:?}");
    for p in &with_error {
        let (name, e) = (p["name"].as_str().unwrap(), &p["errors"]);
        assert!(
            e["title"].as_str().unwrap().starts_with("Error: "),
            "{name}: {e}"
        );
        assert_eq!(
            e["focused"], "alert",
            "{name}: the summary has the focus: {e}"
        );
        let fields = e["fields"].as_array().unwrap();
        let expect = match name {
            "sign-in with an error" => Some("#password"),
            "setup: compliance with an error" => Some("#address"),
            "change password with an error" => Some("#current"),
            "setup: login history with an error" => Some("#hs"),
            "setup: audit trail with an error" => Some("#as"),
            n if n.starts_with("second factor:") => Some("#code"),
            // Errors of the whole form: the summary alone.
            _ => None,
        };
        match expect {
            Some(field) => {
                assert_eq!(fields.len(), 1, "{name}: {e}");
                let f = &fields[0];
                assert_eq!(f["href"], field, "{name}: {e}");
                assert_eq!(f["invalid"], true, "{name}: {e}");
                assert_eq!(f["described"], true, "{name}: {e}");
                assert!(!f["message"].as_str().unwrap().is_empty(), "{name}: {e}");
                if field == "#hs" || field == "#as" {
                    assert_eq!(f["value"], "yesterday-ish", "{name}: kept: {e}");
                }
                if ["#password", "#code", "#current"].contains(&field) {
                    assert_eq!(f["value"], "", "{name}: a secret typed back: {e}");
                }
            }
            None => assert!(fields.is_empty(), "{name}: {e}"),
        }
    }
    // Every page of the list, at both widths, was reached: the sweep cannot pass by seeing
    // nothing (5 second-factor pages on the way in, 23 in `PAGES`).
    let done = steps.iter().find(|s| s["step"] == "done").expect("done");
    assert_eq!(done["checked"], pages.len());
    assert_eq!(pages.len(), 2 * (5 + 23), "{pages:?}");

    // The keyboard: the first Tab reaches the skip link, Enter moves to <main>, the next Tab
    // is in the page's content; Space on "Reset My Security Token" opens its confirmation; a
    // form's error summary has the focus when the page opens.
    let kb = steps
        .iter()
        .find(|s| s["step"] == "keyboard")
        .expect("keyboard");
    assert_eq!(kb["first"]["text"], "Skip to main content", "{kb}");
    assert_eq!(kb["first"]["visible"], true, "shown when focused: {kb}");
    assert_eq!(kb["target"]["tag"], "main", "{kb}");
    assert_eq!(kb["next"]["inMain"], true, "{kb}");
    assert_eq!(kb["reset"]["tag"], "button", "{kb}");
    // Its focus ring: at least 2 px, at least 3:1 against the button and the card around it.
    let ring = &kb["ring"];
    assert_eq!(ring["style"], "solid", "{kb}");
    assert!(ring["width"].as_f64().unwrap() >= 2.0, "{kb}");
    for against in ["againstButton", "againstCard"] {
        assert!(
            ring[against].as_f64().unwrap() >= 3.0,
            "the focus ring's contrast {against}: {kb}"
        );
    }
    assert_eq!(
        kb["confirmation"],
        "/tokengate/console/settings/reset-token"
    );
    assert_eq!(kb["summary"]["role"], "alert", "{kb}");
    assert!(
        kb["summary"]["text"]
            .as_str()
            .unwrap()
            .contains("Invalid username or password"),
        "{kb}"
    );
    assert!(
        kb["summary"]["title"]
            .as_str()
            .unwrap()
            .starts_with("Error: "),
        "{kb}"
    );
}

/// The `<input ...>` tag whose id is `id`.
fn input<'h>(html: &'h str, id: &str) -> &'h str {
    let at = html
        .find(&format!(r#"<input id="{id}""#))
        .unwrap_or_else(|| panic!("no input {id}: {html}"));
    &html[at..at + html[at..].find('>').unwrap()]
}

#[tokio::test]
async fn a_refused_form_ties_its_error_to_the_field_and_keeps_what_was_typed_but_never_a_password()
{
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| mail_to(c, &sink, "PatronManager")).await;
    ts.add_user_with(ADMIN.0, ADMIN.1, true).await;

    // Sign-in: the username typed is kept, the password is not; the error is on the password.
    let bad = crate::console::Browser::sign_in(&ts, ADMIN.0, "Not-the-password-9")
        .await
        .err()
        .unwrap();
    assert_eq!(bad.status, http::StatusCode::UNAUTHORIZED);
    let html = bad.text();
    assert!(html.contains("<title>Error: Sign in · "), "{html}");
    assert!(
        html.contains(r#"<div class="error-summary" role="alert" tabindex="-1" autofocus"#),
        "{html}"
    );
    assert!(
        html.contains(r##"<a href="#password">Invalid username or password"##),
        "{html}"
    );
    let password = input(&html, "password");
    assert!(
        password.contains(r#"aria-invalid="true" aria-describedby="password-error""#),
        "{password}"
    );
    assert!(!password.contains("value="), "{password}");
    assert!(!html.contains("Not-the-password-9"));
    assert!(html.contains(r#"<p id="password-error" class="field-error">"#));
    let username = input(&html, "username");
    assert!(
        username.contains(&format!(r#"value="{}""#, ADMIN.0)),
        "{username}"
    );
    assert!(!username.contains("aria-invalid"), "{username}");

    // Compliance BCC: refused (no address; then one that is not an address), the boxes and
    // the address as they were typed, the error on the address.
    let b = crate::console::Browser::sign_in(&ts, ADMIN.0, ADMIN.1)
        .await
        .unwrap();
    let page = "/setup/compliance";
    let r = b.submit(page, page, &[("enabled", "on")]).await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    let html = r.text();
    assert!(html.contains("<title>Error: Setup: Compliance BCC Email"));
    assert!(html.contains(r##"<a href="#address">An address is required"##));
    assert!(input(&html, "address").contains(r#"aria-invalid="true""#));
    assert!(html.contains(r#"id="enabled" name="enabled" value="on" checked"#));
    assert!(!html.contains(r#"name="redact_secrets" value="on" checked"#));
    let r = b
        .submit(
            page,
            page,
            &[
                ("enabled", "on"),
                ("address", "not an address"),
                ("redact_secrets", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    let html = r.text();
    let address = input(&html, "address");
    assert!(address.contains(r#"value="not an address""#), "{address}");
    assert!(address.contains(r#"aria-invalid="true""#), "{address}");
    assert!(html.contains(r#"name="redact_secrets" value="on" checked"#));
    // Nothing was saved, and a good form shows no error.
    let html = b.get(page).await.text();
    assert!(!html.contains("not an address"));
    assert!(!html.contains("aria-invalid"));
    assert!(!html.contains("<title>Error: "));

    // Change Password: a wrong current password is that field's error, a new password the
    // policy refuses is the new password's (still described by the policy hint); neither
    // password is ever sent back.
    let page = "/settings";
    let action = "/settings/password";
    let wrong = [
        ("current_password", "Not-the-password-9"),
        ("new_password", "Another-pass-8"),
    ];
    let r = b.submit(page, action, &wrong).await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    let html = r.text();
    assert!(html.contains("<title>Error: My Settings"), "{html}");
    assert!(html.contains(r##"<a href="#current">The current password is not right."##));
    let current = input(&html, "current");
    assert!(
        current.contains(r#"aria-invalid="true" aria-describedby="current-error""#),
        "{current}"
    );
    assert!(!input(&html, "new").contains("aria-invalid"));
    let weak = [("current_password", ADMIN.1), ("new_password", "short")];
    let r = b.submit(page, action, &weak).await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    let html = r.text();
    let new = input(&html, "new");
    assert!(
        new.contains(r#"aria-invalid="true" aria-describedby="new-error policy""#),
        "{new}"
    );
    assert!(!input(&html, "current").contains("aria-invalid"));
    for secret in ["Not-the-password-9", "Another-pass-8", ADMIN.1, "short"] {
        assert!(!html.contains(&format!("value=\"{secret}\"")));
    }
}
