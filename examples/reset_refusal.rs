//! How long a token reset on one replica takes to be enforced by another replica's HTTP path:
//! for each of ROUNDS load-test users, a SOAP login on replica B gives a session that B serves
//! (200), then an admin resets the user's token through replica A's admin API while a client
//! calls B with the session over and over; the clock runs from the moment the reset request is
//! sent to A until B answers 401. Prints p50, p99 and max of that, and of A's own answer.
//!
//!   cargo run --release --example reset_refusal -- https://127.0.0.1:18461 https://127.0.0.1:18462 \
//!       CA.pem USERS.json ADMIN_USERNAME [ROUNDS]      # the admin's password+token in
//!                                                      # TOKENGATE_ADMIN_SECRET
//!
//! The users file is what `tokengate loadtest setup` writes (one user per round: each reset
//! ends that user's token). `benches/replicas.sh` starts the replicas and runs it.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokengate::loadtest::{Conn, Target, UsersFile, basic, request};

/// Past this, B has not enforced the reset: the run fails rather than report a bound.
const GIVE_UP: Duration = Duration::from_secs(5);

/// A SOAP login on `c`; the session id.
async fn login(t: &Target, c: &mut Conn, username: &str, secret: &str) -> String {
    let body = format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{}</username><password>{}</password></login></se:Body></se:Envelope>"#,
        quick_xml::escape::escape(username),
        quick_xml::escape::escape(secret)
    );
    let req = request(
        t,
        Method::POST,
        "/services/Soap/u/59.0",
        &[("content-type", "text/xml")],
        Bytes::from(body),
    );
    let (status, body) = c.send(req).await.expect("B answers the login");
    assert_eq!(status, StatusCode::OK, "login of {username} on B");
    String::from_utf8_lossy(&body)
        .split_once("<sessionId>")
        .and_then(|(_, r)| r.split_once("</sessionId>"))
        .map(|(s, _)| s.to_owned())
        .expect("a session id")
}

/// One call on B with the session; its status.
async fn call(t: &Target, c: &mut Conn, bearer: &str) -> StatusCode {
    let req = request(
        t,
        Method::GET,
        "/services/data/v59.0/sobjects",
        &[("authorization", bearer)],
        Bytes::new(),
    );
    c.send(req).await.expect("B answers").0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(what: &str, mut d: Vec<Duration>) {
    d.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}, {} resets: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        d.len(),
        ms(percentile(&d, 0.50)),
        ms(percentile(&d, 0.99)),
        ms(*d.last().expect("at least one round"))
    );
}

#[tokio::main]
async fn main() {
    let usage = "usage: reset_refusal A_URL B_URL CA USERS_FILE ADMIN_USERNAME [ROUNDS]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a_url, b_url, ca, users, admin] = &args[..5.min(args.len())] else {
        panic!("{usage}");
    };
    let rounds: usize = args.get(5).map_or(100, |r| r.parse().expect("ROUNDS"));
    let admin_secret = std::env::var("TOKENGATE_ADMIN_SECRET").expect("TOKENGATE_ADMIN_SECRET");
    let users = UsersFile::read(Path::new(users))
        .expect("the users file")
        .users;
    assert!(
        users.len() >= rounds,
        "{} users for {rounds} rounds",
        users.len()
    );
    let ca = Some(Path::new(ca.as_str()));
    let a = Target::new(a_url, ca, false).await.expect("replica A");
    let b = Target::new(b_url, ca, false).await.expect("replica B");
    let admin = basic(admin, &admin_secret);
    let (mut on_a, mut on_b) = (
        Conn::open(&a).await.expect("A"),
        Conn::open(&b).await.expect("B"),
    );
    let mut refused = Vec::with_capacity(rounds);
    let mut answered = Vec::with_capacity(rounds);
    for u in &users[..rounds] {
        let sid = login(&b, &mut on_b, &u.username, &u.secret).await;
        let bearer = format!("Bearer {sid}");
        assert_eq!(
            call(&b, &mut on_b, &bearer).await,
            StatusCode::OK,
            "B serves the session"
        );
        let reset = request(
            &a,
            Method::POST,
            &format!("/tokengate/v1/admin/users/{}/token/reset", u.username),
            &[("authorization", &admin)],
            Bytes::new(),
        );
        let started = Instant::now();
        // A's answer on a task of its own, so B is called while A works.
        let mut conn_a = on_a;
        let a_done = tokio::spawn(async move {
            let status = conn_a.send(reset).await.expect("A answers the reset").0;
            (status, started.elapsed(), conn_a)
        });
        loop {
            if call(&b, &mut on_b, &bearer).await == StatusCode::UNAUTHORIZED {
                refused.push(started.elapsed());
                break;
            }
            assert!(
                started.elapsed() < GIVE_UP,
                "B still serves the session after {GIVE_UP:?}"
            );
        }
        let (status, took, conn_a) = a_done.await.expect("the reset task");
        assert_eq!(status, StatusCode::ACCEPTED, "A accepts the reset");
        answered.push(took);
        on_a = conn_a;
    }
    report("A's answer to the reset", answered);
    report("B's first 401 after the reset was sent to A", refused);
}
