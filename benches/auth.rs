//! The authentication path's unit costs: a cold login (token check + argon2id verify), a
//! rejection at the token check (no argon2 spent), an unknown user, a cache-hit Basic request,
//! a rejection while a flood of random usernames fills the limiters, and a session lookup (the
//! hot path of every authenticated call). Run with `cargo bench --bench auth`; figures go in
//! BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::admin::{NewUser, Users};
use tokengate::auth::session::Sessions;
use tokengate::auth::{Attempt, Authenticator};
use tokengate::config::Config;
use tokengate::domain::Dialect;
use tokengate::history::History;

struct Fixture {
    _dir: tempfile::TempDir,
    cold: Authenticator,
    cached: Authenticator,
    sessions: Sessions,
    secret: String,
    wrong_token: String,
    sid: String,
}

fn attempt<'a>(username: &'a str, secret: &'a str, dialect: Dialect, ip: IpAddr) -> Attempt<'a> {
    Attempt {
        username,
        secret,
        ip,
        dialect,
        api_version: Some("59.0"),
        client: Some("bench"),
        tls: Some("TLSv1.3"),
        password_only: false,
        relax_ranges: false,
    }
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults();
    cfg.store.path = dir.path().to_owned();
    // The benches measure costs, not the limits: lift them out of the way.
    let lots = NonZeroU32::new(1_000_000_000).unwrap();
    cfg.limits.login_per_ip = lots;
    cfg.limits.login_per_user = lots;
    cfg.limits.argon2_per_second = lots;
    cfg.limits.max_keys = 1_000_000;
    // The benches measure what a rejection costs, not the delay before it is answered.
    cfg.limits.failure_delay = std::time::Duration::ZERO;
    let tokengate::services::DataDir { store, secrets } =
        tokengate::services::DataDir::open(&cfg).unwrap();
    let users = Users::new(
        store.clone(),
        secrets.clone(),
        None,
        cfg.auth.token_length,
        cfg.auth.password_policy.clone(),
        false,
    );
    let (_, token) = users
        .add(NewUser {
            username: "bench@example.com".into(),
            email: "bench@example.com".into(),
            full_name: String::new(),
            admin: false,
            password: "Passw0rd".into(),
            ..Default::default()
        })
        .unwrap();
    let (history, _task) = rt.block_on(async { History::start(store.clone(), &cfg.history) });
    let cached = Authenticator::new(
        store.clone(),
        secrets.clone(),
        &cfg,
        history.clone(),
        None,
        Default::default(),
    )
    .unwrap();
    let mut no_cache = cfg.clone();
    no_cache.auth.credential_cache_size = 0;
    let cold = Authenticator::new(
        store.clone(),
        secrets.clone(),
        &no_cache,
        history,
        None,
        Default::default(),
    )
    .unwrap();
    let sessions = Sessions::new(
        store.clone(),
        secrets,
        tokengate::auth::session::Limits {
            idle: cfg.auth.session_idle_timeout,
            lifetime: cfg.auth.session_lifetime,
            max: cfg.auth.max_sessions,
            max_per_user: cfg.auth.max_sessions_per_user,
        },
        &cfg.server.org.id15,
    );
    let secret = format!("Passw0rd{token}");
    let user = rt
        .block_on(cached.login(&attempt(
            "bench@example.com",
            &secret,
            Dialect::Basic,
            LOCAL,
        )))
        .unwrap()
        .user;
    let sid = sessions.create(&user).unwrap();
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    Fixture {
        _dir: dir,
        cold,
        cached,
        sessions,
        secret,
        wrong_token: format!("Passw0rd{wrong}"),
        sid,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = Arc::new(fixture(&rt));
    let login = |a: &Authenticator, user: &str, secret: &str, dialect: Dialect| {
        rt.block_on(a.login(&attempt(user, black_box(secret), dialect, LOCAL)))
    };

    let mut g = c.benchmark_group("login");
    g.sample_size(20);
    g.bench_function("cold_login_argon2id", |b| {
        b.iter(|| login(&f.cold, "bench@example.com", &f.secret, Dialect::Soap).unwrap())
    });
    g.finish();

    c.bench_function("basic_cache_hit", |b| {
        b.iter(|| login(&f.cached, "bench@example.com", &f.secret, Dialect::Basic).unwrap())
    });
    c.bench_function("token_mismatch_rejection", |b| {
        b.iter(|| login(&f.cold, "bench@example.com", &f.wrong_token, Dialect::Soap).unwrap_err())
    });
    c.bench_function("unknown_user_rejection", |b| {
        b.iter(|| login(&f.cold, "nobody@example.com", &f.secret, Dialect::Soap).unwrap_err())
    });

    // A flood of random usernames from random addresses: every attempt creates limiter keys
    // and walks the dummy record. 100,000 keys are in the limiters before measuring.
    let n = AtomicU64::new(0);
    let flood = |n: &AtomicU64| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 | (i as u32 & 0x00ff_ffff)));
        let user = format!("flood{i}@example.com");
        rt.block_on(f.cold.login(&attempt(
            &user,
            "WrongPassw0rdAAAAAAAAAAAAAAAAAAAAAAAA",
            Dialect::OAuth,
            ip,
        )))
        .unwrap_err()
    };
    for _ in 0..100_000 {
        flood(&n);
    }
    c.bench_function("rejection_under_flood", |b| b.iter(|| flood(&n)));

    c.bench_function("session_lookup", |b| {
        b.iter(|| f.sessions.lookup(black_box(&f.sid), LOCAL).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
