//! Fills a data directory with many users and live sessions, for the scale benchmark in
//! `benches/scale.sh` (RSS and start-up time of a server that holds them).
//!
//!     cargo run --release --example scale -- DATA_DIR USERS SESSIONS [USERS_FILE]
//!
//! Passwords are hashed with cheap argon2 parameters so filling is quick; the stored records
//! have the same size as with the defaults. With USERS_FILE, the credentials of the first 1,000
//! users are written there (mode 0600) in the load tool's format, to send traffic afterwards.

use std::sync::Arc;

use tokengate::admin::{NewUser, Users};
use tokengate::auth::session::Sessions;
use tokengate::config::Config;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, users, sessions, users_file) = match args.as_slice() {
        [_, d, u, s, rest @ ..] if rest.len() <= 1 => (
            d.clone(),
            u.parse::<usize>().expect("USERS"),
            s.parse::<usize>().expect("SESSIONS"),
            rest.first().cloned(),
        ),
        _ => {
            eprintln!("usage: scale DATA_DIR USERS SESSIONS [USERS_FILE]");
            std::process::exit(2);
        }
    };
    let mut cfg = Config::defaults();
    cfg.store.path = dir.into();
    cfg.auth.argon2 = argon2::Params::new(8, 1, 1, None).expect("params");
    cfg.auth.max_sessions = sessions.max(1);
    let tokengate::services::DataDir { store, secrets } =
        tokengate::services::DataDir::open(&cfg).expect("store");
    let ops = Users::new(
        store.clone(),
        secrets.clone(),
        None,
        24,
        cfg.auth.password_policy.clone(),
        false,
    );
    let table = Arc::new(Sessions::new(
        store.clone(),
        secrets,
        tokengate::auth::session::Limits {
            idle: cfg.auth.session_idle_timeout,
            lifetime: cfg.auth.session_lifetime,
            max: cfg.auth.max_sessions,
            max_per_user: cfg.auth.max_sessions.max(1),
            fetch_wait: cfg.store.backend.timeout().unwrap_or_default(),
        },
        &cfg.server.org.id15,
    ));
    let mut ids = Vec::with_capacity(users);
    let mut credentials = Vec::new();
    for i in 0..users {
        let (view, token) = ops
            .add(NewUser {
                username: format!("scale-{i}@example.com"),
                email: format!("scale-{i}@example.com"),
                full_name: format!("Scale User {i}"),
                password: "Passw0rdScale".into(),
                ..Default::default()
            })
            .expect("user");
        if i < 1000 {
            credentials.push(tokengate::loadtest::LoadUser {
                username: view.username.clone(),
                secret: format!("Passw0rdScale{token}"),
            });
        }
        ids.push(view.username);
    }
    if let Some(path) = users_file {
        tokengate::loadtest::UsersFile {
            target: String::new(),
            users: credentials,
        }
        .write(std::path::Path::new(&path))
        .expect("users file");
    }
    for i in 0..sessions {
        let user = store
            .user_by_name(&ids[i % ids.len()])
            .expect("read")
            .expect("user");
        table.create(&user).expect("session");
    }
    store.flush().expect("flush");
    println!("{users} users, {sessions} sessions");
}
