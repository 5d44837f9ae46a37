//! The authentication path's unit costs: a cold login (token check + argon2id verify), a
//! rejection at the token check (no argon2 spent), an unknown user, a cache-hit Basic request,
//! a rejection while a flood of random usernames fills the limiters, and a session lookup (the
//! hot path of every authenticated call); and the token check and a cold login for users who
//! hold 1 and 20 named tokens (every candidate is checked, padded to `max_named_per_user`
//! slots, so the two should cost the same). Run with `cargo bench --bench auth`; figures go
//! in BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::admin::{NewUser, Users};
use tokengate::auth::last::LastCredential;
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
    /// (username, password+its last named token, password+a wrong token) for users with 1
    /// and 20 named tokens.
    named: Vec<(String, String, String)>,
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
    // Users holding 1 and 20 named tokens, written as a committed `token add` leaves them
    // (without the mail, which is not what is measured).
    let mut named = Vec::new();
    for n in [1usize, 20] {
        let username = format!("named{n}@example.com");
        let (view, _) = users
            .add(NewUser {
                username: username.clone(),
                email: username.clone(),
                password: "Passw0rd".into(),
                ..Default::default()
            })
            .unwrap();
        let tokens: Vec<String> = (0..n)
            .map(|_| secrets.generate_token(cfg.auth.token_length).unwrap())
            .collect();
        store
            .update_user(&view.id, &mut |u| {
                for (i, t) in tokens.iter().enumerate() {
                    let serial = u.next_named_serial();
                    u.named_tokens.push(tokengate::store::NamedToken {
                        name: format!("integration{i}"),
                        serial,
                        tag: Some(secrets.token_tag(t)),
                        length: t.len(),
                        created_at: 0,
                        reset_at: 0,
                        pending: None,
                        unconfirmed: None,
                        // Recent: the login does not write its use to the store.
                        last_used_at: Some(u64::MAX / 2),
                        last_client_ip: Some(LOCAL.to_string()),
                        last_dialect: Some("soap".into()),
                    });
                }
            })
            .unwrap();
        let last = tokens.last().unwrap();
        named.push((
            username,
            format!("Passw0rd{last}"),
            format!("Passw0rd{}", "Z".repeat(last.len())),
        ));
    }
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
            fetch_wait: cfg.store.backend.timeout().unwrap_or_default(),
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
        named,
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
    // The forwarding path's case: a keep-alive connection presenting the same credential it
    // presented last (`auth::last`), which skips the cache key's keyed hash.
    let last = LastCredential::default();
    c.bench_function("basic_cache_hit_same_connection", |b| {
        b.iter(|| {
            let a = attempt(
                "bench@example.com",
                black_box(&f.secret),
                Dialect::Basic,
                LOCAL,
            );
            rt.block_on(f.cached.login_on(&a, Some(&last))).unwrap()
        })
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

    // Named tokens: the token check alone (a wrong token, no argon2), then a whole cold login
    // with the user's last named token.
    let mut g = c.benchmark_group("named_tokens");
    for (user, _, wrong) in &f.named {
        let n = user.trim_start_matches("named").split('@').next().unwrap();
        g.bench_function(format!("token_mismatch_{n}_named"), |b| {
            b.iter(|| login(&f.cold, user, wrong, Dialect::Soap).unwrap_err())
        });
    }
    g.sample_size(20);
    for (user, good, _) in &f.named {
        let n = user.trim_start_matches("named").split('@').next().unwrap();
        g.bench_function(format!("cold_login_{n}_named"), |b| {
            b.iter(|| login(&f.cold, user, good, Dialect::Soap).unwrap())
        });
    }
    g.finish();

    c.bench_function("session_lookup", |b| {
        b.iter(|| f.sessions.lookup(black_box(&f.sid), LOCAL).unwrap())
    });
    c.bench_function("session_lookup_same_connection", |b| {
        b.iter(|| {
            f.sessions
                .lookup_on(black_box(&f.sid), LOCAL, &last)
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
