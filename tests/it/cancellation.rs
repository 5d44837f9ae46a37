//! Login futures cancelled at random points (a client that goes away mid-login: hyper drops the
//! request's future) give back everything they took: at quiescence the argon2 queue is empty,
//! no verification is left in flight and no failure is waiting out its delay. A property test
//! over random mixes of users, secrets and cancellation times.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokengate::admin::{NewUser, Users};
use tokengate::auth::{Attempt, Authenticator};
use tokengate::config::Config;
use tokengate::domain::Dialect;
use tokengate::history::History;

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Arc<Authenticator>,
    token: String,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults();
    cfg.store.path = dir.path().to_owned();
    // Cheap hashes, one at a time, a short queue: waiting, admission refusals and the failure
    // delay all happen within a case.
    cfg.auth.argon2 = argon2::Params::new(8192, 2, 1, None).unwrap();
    cfg.auth.hashing_concurrency = std::num::NonZeroUsize::new(1).unwrap();
    cfg.auth.hashing_queue = 8;
    cfg.auth.hashing_queue_timeout = Duration::from_millis(200);
    cfg.limits.failure_delay = Duration::from_millis(15);
    cfg.limits.login_per_ip = NonZeroU32::new(1_000_000).unwrap();
    cfg.limits.login_per_user = NonZeroU32::new(1_000_000).unwrap();
    cfg.limits.argon2_per_second = NonZeroU32::new(1_000_000).unwrap();
    cfg.lockout.max_failures = 0;
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
            username: "cancel@example.com".into(),
            email: "cancel@example.com".into(),
            password: "Passw0rd".into(),
            ..Default::default()
        })
        .unwrap();
    let (history, _task) = rt.block_on(async { History::start(store.clone(), &cfg.history) });
    let auth = Arc::new(
        Authenticator::new(store, secrets, &cfg, history, None, Default::default()).unwrap(),
    );
    Fixture {
        _dir: dir,
        auth,
        token,
    }
}

/// One login of the case: who, with what, and after how long its client goes away.
#[derive(Debug, Clone)]
struct Login {
    user: u8,
    secret: u8,
    dialect: u8,
    cancel_after_us: Option<u64>,
}

fn login() -> impl Strategy<Value = Login> {
    (0u8..3, 0u8..4, 0u8..3, proptest::option::of(0u64..40_000)).prop_map(
        |(user, secret, dialect, cancel_after_us)| Login {
            user,
            secret,
            dialect,
            cancel_after_us,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn logins_cancelled_anywhere_leave_no_place_taken(logins in proptest::collection::vec(login(), 1..24)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let f = fixture(&rt);
        rt.block_on(async {
            let mut tasks = Vec::new();
            for l in logins {
                let auth = f.auth.clone();
                let username = ["cancel@example.com", "nobody@example.com", "CANCEL@example.com"]
                    [l.user as usize]
                    .to_owned();
                // Right, wrong token, wrong password, the password alone.
                let secret = match l.secret {
                    0 => format!("Passw0rd{}", f.token),
                    1 => format!("Passw0rd{}", "A".repeat(24)),
                    2 => format!("Wr0ngpass{}", f.token),
                    _ => "Passw0rd".to_owned(),
                };
                let dialect = [Dialect::Soap, Dialect::Basic, Dialect::Console][l.dialect as usize];
                let task = tokio::spawn(async move {
                    let attempt = Attempt {
                        username: &username,
                        secret: &secret,
                        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        dialect,
                        api_version: None,
                        client: None,
                        tls: None,
                        password_only: dialect == Dialect::Console,
                        relax_ranges: false,
                    };
                    let _ = auth.login(&attempt).await;
                });
                tasks.push((task, l.cancel_after_us));
            }
            let mut joins = Vec::new();
            for (task, cancel) in tasks {
                joins.push(tokio::spawn(async move {
                    if let Some(us) = cancel {
                        tokio::time::sleep(Duration::from_micros(us)).await;
                        task.abort();
                    }
                    let _ = task.await;
                }));
            }
            for j in joins {
                j.await.unwrap();
            }
            // Hashes already handed to the blocking pool finish on their own; wait for them.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while f.auth.hash_pool().depth() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        prop_assert_eq!(f.auth.hash_pool().depth(), 0, "the argon2 queue");
        prop_assert_eq!(f.auth.inflight(), 0, "verifications in flight");
        prop_assert_eq!(f.auth.limits().delayed_failures(), 0, "failures waiting out the delay");
    }
}
