//! How long a change that ends access takes to reach another replica: two stores (A and B) on
//! one PostgreSQL database, as two replicas have them; A commits a change that moves a user's
//! session epoch on (what a token reset, disable or lock does), and the time until B's session
//! table hears of it (its user observer) is measured, ROUNDS times. Prints p50, p99 and max.
//!
//!   cargo run --release --example replica_latency -- 'postgres://postgres@127.0.0.1:15432/db?sslmode=disable' [ROUNDS]
//!
//! `benches/replicas.sh` starts a private PostgreSQL and runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokengate::config::{PgTls, PostgresConfig};
use tokengate::store::postgres::PgStore;
use tokengate::store::{Store, User, UserChange};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: replica_latency POSTGRES_URL [ROUNDS]");
    let rounds: usize = args.next().map_or(100, |r| r.parse().expect("ROUNDS"));
    let cfg = PostgresConfig {
        connect: url.parse().expect("a postgres:// URL"),
        tls: PgTls::Disable,
        ca: None,
        pool_size: 4,
        timeout: Duration::from_secs(2),
        max_staleness: Duration::from_secs(5),
    };
    let a = PgStore::connect(&cfg).expect("replica A connects");
    let b = PgStore::connect(&cfg).expect("replica B connects");
    let heard = Arc::new(AtomicU64::new(0));
    let h = heard.clone();
    b.observe_users(Arc::new(move |change| {
        if let UserChange::Written(u) = change {
            h.fetch_max(u.session_epoch, Ordering::AcqRel);
        }
    }));
    let id = format!("005{:012}LAT", std::process::id());
    let user = User::new(
        id.clone(),
        format!("latency-{}@example.com", std::process::id()),
        "latency@example.com".into(),
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        [0; 32],
        24,
        tokengate::now_secs(),
    );
    a.create_user(&user).expect("user created");
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let now = a
            .update_user(&id, &mut |u| u.end_access())
            .expect("update")
            .session_epoch;
        while heard.load(Ordering::Acquire) < now {
            assert!(start.elapsed() < Duration::from_secs(5), "B never heard");
            std::thread::sleep(Duration::from_micros(50));
        }
        samples.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    a.delete_user(&id).expect("user deleted");
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "A's change heard by B over {rounds} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (from the start of A's update, commit included)",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}
