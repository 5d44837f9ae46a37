//! The console's second factor (`[console] mfa`) over real TLS: enrolment with the secret the
//! page shows (codes computed here with totp-rs, as an authenticator app would), replayed
//! codes, lockout by wrong codes, recovery codes, an admin's reset, what a half-signed-in
//! browser may reach, the policy's three values, and `[console] listen`.

use http::{Method, StatusCode};
use tokengate::mfa::Policy;

use crate::support::*;

const BASE: &str = "/tokengate/console";

/// A browser: the console cookie, replaced whenever the server sets a new one.
struct Browser<'a> {
    client: HttpsClient,
    ts: &'a TestServer,
    cookie: String,
}

impl<'a> Browser<'a> {
    fn new(ts: &'a TestServer) -> Self {
        Self {
            client: ts.client(),
            ts,
            cookie: String::new(),
        }
    }

    fn keep_cookie(&mut self, r: &Reply) {
        if let Some(set) = r.header("set-cookie") {
            let pair = set.split(';').next().unwrap();
            assert!(pair.starts_with("__Host-tg_console="), "{set}");
            self.cookie = pair.to_owned();
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let r = self
            .client
            .get(&format!("{BASE}{path}"), &[("cookie", &self.cookie)])
            .await;
        self.keep_cookie(&r);
        r
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let b = self
            .client
            .request(Method::POST, &format!("{BASE}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &self.cookie);
        let r = self
            .client
            .call(b, serde_urlencoded::to_string(fields).unwrap())
            .await;
        self.keep_cookie(&r);
        r
    }

    /// Posts a form with the CSRF token of the page at `page`.
    async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Reply {
        let html = self.get(page).await.text();
        let csrf = csrf_of(&html);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    /// The password step: answers where it sends the browser.
    async fn password(&mut self, user: &str) -> String {
        let r = self
            .post("/signin", &[("username", user), ("password", PASSWORD)])
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
        r.header("location").unwrap().to_owned()
    }

    /// Enrols from the enrolment page the browser is on; returns the secret and the recovery
    /// codes shown.
    async fn enrol(&mut self) -> (String, Vec<String>) {
        let html = self.get("/mfa").await.text();
        let secret = secret_of(&html);
        let code = code_at(&secret, now());
        let r = self.submit("/mfa", "/mfa/enrol", &[("code", &code)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let codes = recovery_codes_of(&r.text());
        assert_eq!(codes.len(), 10, "{}", r.text());
        (secret, codes)
    }

    /// Posts a code on the code page; true when it signed the browser in.
    async fn code(&mut self, code: &str) -> bool {
        let r = self.submit("/mfa", "/mfa", &[("code", code)]).await;
        match r.status {
            StatusCode::SEE_OTHER => {
                assert_eq!(r.header("location"), Some(&*format!("{BASE}/settings")));
                true
            }
            StatusCode::BAD_REQUEST => {
                assert!(r.text().contains("The code is not right"), "{}", r.text());
                false
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }

    async fn signed_in(&mut self) -> bool {
        let r = self.get("/settings").await;
        r.status == StatusCode::OK
    }

    async fn sign_out(&mut self) {
        let r = self.submit("/settings", "/signout", &[]).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        self.cookie.clear();
    }

    fn server(&self) -> &TestServer {
        self.ts
    }
}

fn now() -> u64 {
    tokengate::now_secs()
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// The key as the enrolment page shows it (groups of four), without the spaces.
fn secret_of(html: &str) -> String {
    let at = html
        .find(r#"id="totp-secret">"#)
        .expect("the key on the page")
        + 17;
    html[at..]
        .split('<')
        .next()
        .unwrap()
        .split_whitespace()
        .collect()
}

fn recovery_codes_of(html: &str) -> Vec<String> {
    let Some(at) = html.find(r#"<ol class="recovery""#) else {
        return Vec::new();
    };
    let list = &html[at..html[at..].find("</ol>").unwrap() + at];
    list.split("<code>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap().to_owned())
        .collect()
}

/// The code an authenticator app shows at `time` for the base32 `secret` (RFC 6238 defaults).
fn code_at(secret: &str, time: u64) -> String {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap()
        .generate(time)
        .to_string()
}

async fn server_with(
    policy: Policy,
    tweak: impl FnOnce(&mut tokengate::config::Config),
) -> (Upstream, TestServer) {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.console.mfa = policy;
        tweak(c);
    })
    .await;
    (up, ts)
}

async fn history_reasons(ts: &TestServer, user: &str) -> Vec<String> {
    ts.history_written().await;
    let filter = tokengate::store::HistoryFilter {
        user: Some(user.into()),
        limit: 100,
        ..Default::default()
    };
    ts.app()
        .store
        .history_query(&filter)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_enrols_at_first_sign_in_then_signs_in_with_a_code_and_a_replayed_code_is_refused()
{
    let (_up, ts) = server_with(Policy::Admins, |_| {}).await;
    ts.add_user_with("root@example.com", PASSWORD, true).await;
    let mut b = Browser::new(&ts);
    assert_eq!(b.password("root@example.com").await, format!("{BASE}/mfa"));

    // Half signed in: the enrolment page, and nothing else.
    let page = b.get("/mfa").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("<svg") && html.contains("</svg>"), "{html}");
    let secret = secret_of(&html);
    assert_eq!(secret.len(), 32, "160 bits in base32");
    // The otpauth URI (HTML-escaped on the page): issuer = the org name, account = username.
    let uri = html.replace("&#x2f;", "/").replace("&amp;", "&");
    assert!(
        uri.contains(&format!(
            "otpauth://totp/tokengate:root%40example.com?secret={secret}&issuer=tokengate"
        )),
        "{html}"
    );
    for path in ["/settings", "/setup/users", "/settings/reset-token", "/"] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(
            r.header("location"),
            Some(&*format!("{BASE}/mfa")),
            "{path}"
        );
    }
    let r = b
        .submit(
            "/mfa",
            "/setup/users",
            &[
                ("username", "x"),
                ("email", "x@example.com"),
                ("password", "Passw0rdX"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        ts.app().users.show("x").is_err(),
        "no user created half signed in"
    );
    // The console cookie opens no API call, half signed in or not.
    let sid = b.cookie.split_once('=').unwrap().1.to_owned();
    let api = ts
        .client()
        .get(
            "/tokengate/v1/admin/users",
            &[
                ("cookie", &b.cookie),
                ("authorization", &format!("Bearer {sid}")),
            ],
        )
        .await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.text());
    // The enrolment secret is not active until confirmed: not enrolled yet.
    assert!(
        !ts.app()
            .users
            .show("root@example.com")
            .unwrap()
            .mfa_enrolled
    );

    // A wrong confirmation code is refused; the right one enrols and shows recovery codes.
    let wrong = code_at(&secret, now() + 300);
    let r = b.submit("/mfa", "/mfa/enrol", &[("code", &wrong)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let code = code_at(&secret, now());
    let r = b.submit("/mfa", "/mfa/enrol", &[("code", &code)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let codes = recovery_codes_of(&r.text());
    assert_eq!(codes.len(), 10);
    assert!(
        ts.app()
            .users
            .show("root@example.com")
            .unwrap()
            .mfa_enrolled
    );
    assert!(b.signed_in().await);
    b.sign_out().await;

    // The next sign-in asks for a code: the enrolment's own code (same step) is a replay.
    assert_eq!(b.password("root@example.com").await, format!("{BASE}/mfa"));
    assert!(b.get("/mfa").await.text().contains("Verification code"));
    assert!(!b.code(&code).await, "the enrolment's code, replayed");
    assert!(!b.signed_in().await);
    // The next step's code (one step of drift is accepted) signs in, once.
    let next = code_at(&secret, now() + 30);
    assert!(b.code(&next).await);
    assert!(b.signed_in().await);
    b.sign_out().await;
    b.password("root@example.com").await;
    assert!(!b.code(&next).await, "a replayed code");
    assert!(!b.signed_in().await);
    let reasons = history_reasons(&ts, "root@example.com").await;
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "replayed verification code")
            .count(),
        2,
        "{reasons:?}"
    );
    // Neither the secret nor a code is stored in the clear.
    assert_not_stored(&ts, &[&secret, &codes[0], &codes[0].replace('-', "")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_count_toward_lockout_and_a_new_password_step_does_not_clear_them() {
    let (_up, ts) = server_with(Policy::All, |c| {
        c.lockout.max_failures = 3;
        // Every password step verified afresh (a cached one never touched the count).
        c.auth.credential_cache_size = 0;
    })
    .await;
    ts.add_user("ann@example.com").await;
    let mut b = Browser::new(&ts);
    b.password("ann@example.com").await;
    let (secret, _) = b.enrol().await;
    b.sign_out().await;

    b.password("ann@example.com").await;
    assert!(!b.code("000000").await);
    assert!(!b.code("111111").await);
    // Signing in again with the password does not wipe the two failures.
    b.password("ann@example.com").await;
    assert!(!b.code("222222").await);
    let view = ts.app().users.show("ann@example.com").unwrap();
    assert!(
        view.locked_until.is_some(),
        "three wrong codes lock the account"
    );
    // Locked: the half-finished sign-in is over, and even the right code does not open it.
    let right = code_at(&secret, now() + 30);
    assert!(!b.signed_in().await);
    let r = b.get("/mfa").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = b
        .post(
            "/signin",
            &[("username", "ann@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a lock answers like a wrong password"
    );
    let reasons = history_reasons(&ts, "ann@example.com").await;
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "wrong verification code")
            .count(),
        3,
        "{reasons:?}"
    );
    // Unlocked, the right code works and clears the count.
    cli(&ts, &["user", "unlock", "ann@example.com"], None);
    b.password("ann@example.com").await;
    assert!(b.code(&right).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_code_signs_in_once() {
    let (_up, ts) = server_with(Policy::All, |_| {}).await;
    ts.add_user("bob@example.com").await;
    let mut b = Browser::new(&ts);
    b.password("bob@example.com").await;
    let (_, codes) = b.enrol().await;
    b.sign_out().await;

    b.password("bob@example.com").await;
    // As a person types it: upper case, no hyphen.
    assert!(b.code(&codes[3].replace('-', "").to_uppercase()).await);
    assert!(
        b.get("/settings")
            .await
            .text()
            .contains("9 recovery codes left")
    );
    b.sign_out().await;
    b.password("bob@example.com").await;
    assert!(!b.code(&codes[3]).await, "a used recovery code");
    assert!(b.code(&codes[4]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_reset_ends_the_users_sessions_and_the_user_enrols_again() {
    let (_up, ts) = server_with(Policy::Admins, |_| {}).await;
    let admin_token = ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user_with("eve@example.com", PASSWORD, true).await;
    let mut eve = Browser::new(&ts);
    eve.password("eve@example.com").await;
    let (old, _) = eve.enrol().await;
    assert!(eve.signed_in().await);

    // The admin API.
    let c = ts.client();
    let b = c
        .request(
            Method::POST,
            "/tokengate/v1/admin/users/eve@example.com/mfa/reset",
        )
        .header(
            "authorization",
            basic("boss@example.com", &format!("{PASSWORD}{admin_token}")),
        );
    let r = c.call(b, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["user"]["mfa_enrolled"], false);
    let wrong_method = c
        .get(
            "/tokengate/v1/admin/users/eve@example.com/mfa/reset",
            &[(
                "authorization",
                &basic("boss@example.com", &format!("{PASSWORD}{admin_token}")),
            )],
        )
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let nobody = c
        .call(
            c.request(
                Method::POST,
                "/tokengate/v1/admin/users/nobody@example.com/mfa/reset",
            )
            .header(
                "authorization",
                basic("boss@example.com", &format!("{PASSWORD}{admin_token}")),
            ),
            "",
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{}", nobody.text());
    assert_eq!(nobody.json()["error"], "not_found");

    // Eve's console session ended; her next sign-in enrols a new secret.
    assert!(!eve.signed_in().await);
    assert_eq!(eve.password("eve@example.com").await, format!("{BASE}/mfa"));
    let (new, _) = eve.enrol().await;
    assert_ne!(old, new);

    // The CLI, through the admin socket.
    let out = cli(&ts, &["user", "mfa-reset", "eve@example.com"], None);
    assert!(out.contains("console 2FA:       not enrolled"), "{out}");
    assert!(!eve.signed_in().await);
    eve.password("eve@example.com").await;
    eve.enrol().await;

    // Setup → Users, by an admin signed in with a second factor.
    let mut boss = Browser::new(&ts);
    boss.password("boss@example.com").await;
    boss.enrol().await;
    // The action is on eve's page; the form answers 303 back to it, which says what was done.
    let page = boss.get("/setup/users/eve%40example.com").await.text();
    assert!(
        page.contains("/setup/users/eve%40example.com/reset-mfa"),
        "{page}"
    );
    let r = boss
        .submit(
            "/setup/users/eve%40example.com",
            "/setup/users/eve%40example.com/reset-mfa",
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let to = r.header("location").unwrap();
    let r = boss.get(to.strip_prefix(BASE).unwrap()).await;
    assert!(
        r.text().contains("two-factor authentication was reset"),
        "{}",
        r.text()
    );
    assert!(!ts.app().users.show("eve@example.com").unwrap().mfa_enrolled);
    assert!(!eve.signed_in().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_user_re_enrols_from_settings_with_a_code_or_the_password() {
    let (_up, ts) = server_with(Policy::All, |_| {}).await;
    ts.add_user("cat@example.com").await;
    let mut b = Browser::new(&ts);
    b.password("cat@example.com").await;
    let (old, old_codes) = b.enrol().await;

    // A wrong password starts nothing.
    let r = b
        .submit(
            "/settings",
            "/settings/mfa",
            &[("current_password", "Wrong1Passw0rd")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The password: a new key is shown; the old one stays in force until confirmed.
    let r = b
        .submit(
            "/settings",
            "/settings/mfa",
            &[("current_password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new = secret_of(&r.text());
    assert_ne!(new, old);
    let code = code_at(&new, now());
    let html = r.text();
    let csrf = csrf_of(&html);
    let r = b
        .post("/settings/mfa/confirm", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let codes = recovery_codes_of(&r.text());
    assert_eq!(codes.len(), 10);
    assert!(b.signed_in().await, "re-enrolling keeps the user signed in");
    b.sign_out().await;

    // The old key and the old recovery codes are gone; the new ones work.
    b.password("cat@example.com").await;
    assert!(!b.code(&code_at(&old, now() + 30)).await);
    assert!(!b.code(&old_codes[0]).await);
    assert!(b.code(&code_at(&new, now() + 30)).await);

    // A current code proves it too.
    let r = b
        .submit(
            "/settings",
            "/settings/mfa",
            &[("code", &code_at(&new, now() - 30))],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a step already passed");
    let r = b
        .submit("/settings", "/settings/mfa", &[("code", &codes[0])])
        .await;
    assert_eq!(r.status, StatusCode::OK, "a recovery code proves it too");
    assert!(r.text().contains(r#"id="totp-secret""#));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_names_who_owes_a_second_factor() {
    assert_eq!(
        tokengate::config::Config::defaults().console.mfa,
        Policy::Admins,
        "the shipped default"
    );
    for (policy, admin_owes, user_owes) in [
        (Policy::Off, false, false),
        (Policy::Admins, true, false),
        (Policy::All, true, true),
    ] {
        let (_up, ts) = server_with(policy, |_| {}).await;
        ts.add_user_with("adm@example.com", PASSWORD, true).await;
        ts.add_user("usr@example.com").await;
        for (user, owes) in [
            ("adm@example.com", admin_owes),
            ("usr@example.com", user_owes),
        ] {
            let mut b = Browser::new(&ts);
            let to = b.password(user).await;
            let expected = if owes { "/mfa" } else { "/settings" };
            assert_eq!(to, format!("{BASE}{expected}"), "{policy:?} {user}");
            assert_eq!(b.signed_in().await, !owes, "{policy:?} {user}");
            // The settings page offers re-enrolment only where a factor is owed.
            if !owes {
                let html = b.get("/settings").await.text();
                assert!(!html.contains("Two-factor authentication"));
            }
        }
        ts.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_made_admin_while_signed_in_must_sign_in_again_with_a_second_factor() {
    let (_up, ts) = server_with(Policy::Admins, |_| {}).await;
    ts.add_user("fay@example.com").await;
    let mut b = Browser::new(&ts);
    assert_eq!(
        b.password("fay@example.com").await,
        format!("{BASE}/settings")
    );
    assert!(b.signed_in().await);
    cli(&ts, &["user", "grant-admin", "fay@example.com"], None);
    let r = b.get("/setup/users").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header("location").unwrap().ends_with("/signin?expired=1"));
    assert_eq!(b.password("fay@example.com").await, format!("{BASE}/mfa"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_finished_sign_in_expires_and_is_bound_to_its_browser() {
    let (_up, ts) = server_with(Policy::All, |_| {}).await;
    ts.add_user("dan@example.com").await;
    let mut b = Browser::new(&ts);
    b.password("dan@example.com").await;
    let (secret, _) = b.enrol().await;
    b.sign_out().await;
    b.password("dan@example.com").await;
    // Another browser (no cookie) cannot post the code; a forged CSRF token is refused.
    let mut other = Browser::new(b.server());
    let r = other
        .post("/mfa", &[("csrf", "x"), ("code", "123456")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header("location").unwrap().ends_with("/signin"));
    let r = b
        .post(
            "/mfa",
            &[("csrf", "forged"), ("code", &code_at(&secret, now() + 30))],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Sign-out ends it.
    let html = b.get("/mfa").await.text();
    let r = b.post("/signout", &[("csrf", &csrf_of(&html))]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = b.get("/mfa").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header("location").unwrap().contains("/signin"));
    // The cookie of a half-finished sign-in lasts five minutes.
    let r = ts
        .client()
        .post(
            &format!("{BASE}/signin"),
            "application/x-www-form-urlencoded",
            serde_urlencoded::to_string([("username", "dan@example.com"), ("password", PASSWORD)])
                .unwrap(),
        )
        .await;
    assert!(
        r.header("set-cookie").unwrap().contains("Max-Age=300"),
        "{:?}",
        r.header("set-cookie")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_console_listen_the_console_and_admin_api_move_to_their_own_listener() {
    let (_up, ts) = server_with(Policy::Off, |c| {
        c.console.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin_token = ts.add_user_with("ops@example.com", PASSWORD, true).await;
    let auth = basic("ops@example.com", &format!("{PASSWORD}{admin_token}"));
    let console_addr = ts.server.as_ref().unwrap().console_addr.expect("bound");
    assert_ne!(console_addr, ts.addr);
    let public = ts.client();
    let private = HttpsClient::new(&ts.ca, console_addr, false);

    // The public listener: 404 under both prefixes, each in its own dialect.
    let r = public.get(&format!("{BASE}/signin"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let r = public.get(BASE, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = public
        .get("/tokengate/v1/admin/users", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "not_found");
    let r = public
        .call(
            public
                .request(
                    Method::POST,
                    "/tokengate/v1/admin/users/ops@example.com/mfa/reset/",
                )
                .header("authorization", &auth),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // ... and the rest as before: logins, forwarding, the self-service API.
    let sid = ts
        .soap_login("ops@example.com", &format!("{PASSWORD}{admin_token}"))
        .await;
    assert_eq!(
        public
            .get_with_session("/services/data/v59.0/", &sid)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        public.get("/tokengate/health", &[]).await.status,
        StatusCode::OK
    );

    // The console listener: the console (its stylesheet too) and the admin API, nothing else.
    let r = private.get(&format!("{BASE}/signin"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Sign in"));
    assert_eq!(
        private.get(&format!("{BASE}/style.css"), &[]).await.status,
        StatusCode::OK
    );
    let r = private
        .get("/tokengate/v1/admin/users", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = private
        .request(Method::POST, &format!("{BASE}/signin"))
        .header("content-type", "application/x-www-form-urlencoded");
    let r = private
        .call(
            b,
            serde_urlencoded::to_string([("username", "ops@example.com"), ("password", PASSWORD)])
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    for path in [
        "/services/data/v59.0/",
        "/tokengate/health",
        "/tokengate/v1/password",
    ] {
        let r = private.get_with_session(path, &sid).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = private
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("ops@example.com", "x"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.text().contains("Envelope") || r.header("content-type").unwrap().contains("xml"),
        "{}",
        r.text()
    );
}
