//! The authentication path's unit costs: a cold login (token check + argon2id verify), a
//! rejection at the token check (no argon2 spent), and a session lookup (the hot path of every
//! authenticated call). Run with `cargo bench --bench auth`; figures go in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::admin::{NewUser, Users};
use tokengate::auth::Authenticator;
use tokengate::auth::session::Sessions;
use tokengate::config::Config;

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
    sessions: Sessions,
    secret: String,
    wrong_token: String,
    sid: String,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults();
    cfg.store.path = dir.path().to_owned();
    let (store, secrets) = tokengate::server::open_store(&cfg).unwrap();
    let users = Users::new(
        store.clone(),
        secrets.clone(),
        None,
        cfg.auth.token_length,
        cfg.auth.password_policy.clone(),
    );
    let (_, token) = users
        .add(NewUser {
            username: "bench@example.com".into(),
            email: "bench@example.com".into(),
            full_name: String::new(),
            admin: false,
            password: "Passw0rd".into(),
        })
        .unwrap();
    let auth = Authenticator::new(store.clone(), secrets.clone(), &cfg.auth).unwrap();
    let sessions = Sessions::new(
        store.clone(),
        secrets,
        cfg.auth.session_idle_timeout,
        cfg.auth.session_lifetime,
        cfg.auth.max_sessions,
        &cfg.server.org.id15,
    );
    let user = rt
        .block_on(auth.authenticate("bench@example.com", &format!("Passw0rd{token}")))
        .unwrap()
        .user;
    let sid = sessions.create(&user).unwrap();
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    Fixture {
        _dir: dir,
        auth,
        sessions,
        secret: format!("Passw0rd{token}"),
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

    let mut g = c.benchmark_group("login");
    g.sample_size(20);
    g.bench_function("cold_login_argon2id", |b| {
        b.iter(|| {
            rt.block_on(
                f.auth
                    .authenticate("bench@example.com", black_box(&f.secret)),
            )
            .unwrap()
        })
    });
    g.finish();

    c.bench_function("token_mismatch_rejection", |b| {
        b.iter(|| {
            rt.block_on(
                f.auth
                    .authenticate("bench@example.com", black_box(&f.wrong_token)),
            )
            .unwrap_err()
        })
    });
    c.bench_function("unknown_user_rejection", |b| {
        b.iter(|| {
            rt.block_on(
                f.auth
                    .authenticate("nobody@example.com", black_box(&f.secret)),
            )
            .unwrap_err()
        })
    });
    c.bench_function("session_lookup", |b| {
        b.iter(|| f.sessions.lookup(black_box(&f.sid)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
