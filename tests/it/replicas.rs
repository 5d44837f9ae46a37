//! The PostgreSQL backend: the `Store` contract on both backends, and several replicas on one
//! database behaving as one tokengate (sessions, changes that end access, lockout, history,
//! backup and restore between backends). Every test gets a fresh database in the private
//! cluster the support code starts.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokengate::config::{Backend, PgTls, PostgresConfig};
use tokengate::store::postgres::PgStore;
use tokengate::store::sled::SledStore;
use tokengate::store::{HistoryFilter, HistoryRow, SessionRecord, Store, StoreError, User};

use crate::support::*;

/// The backend of a fresh database in the shared test cluster.
fn postgres() -> Backend {
    backend(crate::support::postgres::cluster().database())
}

fn backend(url: String) -> Backend {
    Backend::Postgres(Box::new(PostgresConfig {
        connect: url.parse().expect("a PostgreSQL URL"),
        tls: PgTls::Disable,
        ca: None,
        pool_size: 8,
        timeout: Duration::from_secs(2),
        max_staleness: Duration::from_secs(5),
    }))
}

fn open_pg(backend: &Backend) -> PgStore {
    let Backend::Postgres(cfg) = backend else {
        unreachable!("a postgres backend")
    };
    PgStore::connect(cfg).expect("connects and migrates")
}

fn user(n: u32) -> User {
    let mut u = User::new(
        format!("005{n:012}AAA"),
        format!("user{n}@example.com"),
        format!("user{n}@example.com"),
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        [n as u8; 32],
        24,
        1_700_000_000,
    );
    u.rotate_every_secs = Some(60);
    u
}

fn row(at_ms: u64, username: &str, outcome: &str) -> HistoryRow {
    HistoryRow {
        at_ms,
        username: username.into(),
        user_id: None,
        source_ip: "192.0.2.1".into(),
        dialect: "soap".into(),
        api_version: None,
        client: None,
        tls: None,
        outcome: outcome.into(),
        reason: None,
        token: None,
    }
}

/// Every method of the `Store` trait, with the answers both backends must give.
fn conformance(store: Arc<dyn Store>) {
    assert!(store.is_empty().unwrap());
    let key = store.server_key(&mut || [7; 32]).unwrap();
    assert_eq!(store.server_key(&mut || [9; 32]).unwrap(), key, "one key");

    let mut a = user(1);
    a.next_rotation_at = Some(100);
    store.create_user(&a).unwrap();
    store.create_user(&user(2)).unwrap();
    assert!(matches!(
        store.create_user(&a),
        Err(StoreError::UserExists(_))
    ));
    assert_eq!(
        store.user_by_name("user1@example.com").unwrap().unwrap().id,
        a.id
    );
    assert_eq!(
        store.user_by_id(&a.id).unwrap().unwrap().username,
        a.username
    );
    assert!(store.user_by_name("nobody@example.com").unwrap().is_none());
    assert_eq!(store.due_rotations(99).unwrap(), Vec::<String>::new());
    assert_eq!(store.due_rotations(100).unwrap(), vec![a.id.clone()]);

    // Concurrent read-modify-write updates never lose one another.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    store
                        .update_user(&a.id, &mut |u| u.lockout.failures += 1)
                        .unwrap();
                }
            });
        }
    });
    let a_now = store.user_by_id(&a.id).unwrap().unwrap();
    assert_eq!(a_now.lockout.failures, 100);
    store
        .update_user(&a.id, &mut |u| u.next_rotation_at = Some(500))
        .unwrap();
    assert!(store.due_rotations(100).unwrap().is_empty());
    assert!(matches!(
        store.update_user("005nosuchuserAAA", &mut |_| {}),
        Err(StoreError::NoSuchUser(_))
    ));
    let mut names = Vec::new();
    store
        .for_each_user(&mut |u| names.push(u.username))
        .unwrap();
    assert_eq!(names, ["user1@example.com", "user2@example.com"]);

    let rec = |user_id: &str| SessionRecord {
        user_id: user_id.into(),
        username: "x".into(),
        epoch: 1,
        created_at: 10,
        last_seen: 20,
        policy: Default::default(),
        token_serial: 0,
        token: None,
    };
    store.put_session(&[1; 32], &rec(&a.id)).unwrap();
    store.put_session(&[2; 32], &rec(&a.id)).unwrap();
    store.put_session(&[3; 32], &rec("005other")).unwrap();
    let mut later = rec(&a.id);
    later.last_seen = 30;
    store.put_session(&[1; 32], &later).unwrap();
    assert_eq!(store.session(&[1; 32]).unwrap().unwrap().last_seen, 30);
    store.delete_session(&[2; 32]).unwrap();
    assert!(store.session(&[2; 32]).unwrap().is_none());
    // Idle timers written back in a batch: forward only, and an ended session stays ended.
    let seen_at = |user_id: &str, last_seen: u64| SessionRecord {
        last_seen,
        ..rec(user_id)
    };
    store
        .touch_sessions(&[
            ([1; 32], seen_at(&a.id, 25)),
            ([2; 32], seen_at(&a.id, 40)),
            ([3; 32], seen_at("005other", 50)),
        ])
        .unwrap();
    assert_eq!(store.session(&[1; 32]).unwrap().unwrap().last_seen, 30);
    assert!(store.session(&[2; 32]).unwrap().is_none());
    assert_eq!(store.session(&[3; 32]).unwrap().unwrap().last_seen, 50);
    let mut seen = 0;
    store.for_each_session(&mut |_, _| seen += 1).unwrap();
    assert_eq!(seen, 2);
    assert_eq!(store.delete_user_sessions(&a.id).unwrap(), 1);

    store.put_setting("compliance_bcc", b"{}").unwrap();
    store.put_setting("compliance_bcc", b"{\"a\":1}").unwrap();
    assert_eq!(
        store.setting("compliance_bcc").unwrap().as_deref(),
        Some(&b"{\"a\":1}"[..])
    );
    assert!(store.setting("absent").unwrap().is_none());

    let (i, j) = (store.next_id().unwrap(), store.next_id().unwrap());
    assert_ne!(i, j);
    store.outbox_put(i, b"one").unwrap();
    store.outbox_put(j, b"two").unwrap();
    store.outbox_delete(i).unwrap();
    assert_eq!(store.outbox().unwrap(), vec![(j, b"two".to_vec())]);

    store
        .history_append(&[
            row(1_000, "User1@example.com", "success"),
            row(2_000, "user2@example.com", "failure"),
            row(3_000, "user1@example.com", "failure"),
        ])
        .unwrap();
    let q = |user: Option<&str>, outcome: Option<&str>, since: Option<u64>| {
        store
            .history_query(&HistoryFilter {
                user: user.map(str::to_owned),
                since_ms: since,
                outcome: outcome.map(str::to_owned),
                limit: 10,
            })
            .unwrap()
            .iter()
            .map(|r| r.at_ms)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(None, None, None), [3_000, 2_000, 1_000]);
    assert_eq!(q(Some("user1@example.com"), None, None), [3_000, 1_000]);
    assert_eq!(q(None, Some("failure"), Some(2_500)), [3_000]);
    assert_eq!(store.history_prune(1_500, 10).unwrap(), 1);
    assert_eq!(store.history_prune(0, 1).unwrap(), 1);
    assert_eq!(q(None, None, None), [3_000]);

    assert!(store.delete_user(&user(2).id).unwrap());
    assert!(!store.delete_user(&user(2).id).unwrap());
    assert!(store.user_by_name("user2@example.com").unwrap().is_none());
    assert!(!store.is_empty().unwrap());

    contract_roles(store.as_ref());
    contract_user_numbers_and_observers(store.as_ref(), &a.id);
    contract_login_counts(store.as_ref());
    contract_session_batches_and_pruning(store.as_ref(), &a.id);
    contract_audit_trail(store.as_ref());
    contract_acme_entries(store.as_ref());
    store.flush().unwrap();
}

/// `shared`, `fresh` and `leader`: a single node's store is none of the first and both of the
/// others; a shared store is shared, and the only process on its database is soon fresh (it
/// hears the change channel) and leads (it holds the leadership lock).
fn contract_roles(store: &dyn Store) {
    if !store.shared() {
        assert!(store.fresh() && store.leader());
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(store.fresh() && store.leader()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the only replica on a database hears its channel and leads"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `next_user_number` and `next_id` are unique under concurrency and increase, and
/// `observe_users` hears every committed write and delete; `list_users` is in username order.
fn contract_user_numbers_and_observers(store: &dyn Store, a_id: &str) {
    let numbers: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..25)
                        .map(|_| (store.next_user_number().unwrap(), store.next_id().unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for mine in &numbers {
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "each caller's numbers increase: {mine:?}"
        );
    }
    let mut all: Vec<u64> = numbers.iter().flatten().map(|n| n.0).collect();
    let mut ids: Vec<u64> = numbers.iter().flatten().map(|n| n.1).collect();
    let highest = *all.iter().max().unwrap();
    all.sort_unstable();
    all.dedup();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        (all.len(), ids.len()),
        (100, 100),
        "never the same number twice"
    );
    assert!(
        store.next_user_number().unwrap() > highest,
        "a later number is higher than every earlier one"
    );

    let heard: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let h = heard.clone();
    store.observe_users(Arc::new(move |change| {
        h.lock().unwrap().push(match change {
            tokengate::store::UserChange::Written(u) => {
                format!("written {} {}", u.id, u.email)
            }
            tokengate::store::UserChange::Deleted { id } => format!("deleted {id}"),
        })
    }));
    store
        .update_user(a_id, &mut |u| u.email = "seven@example.com".into())
        .unwrap();
    let mut third = user(3);
    third.username = "aaa-first@example.com".into();
    store.create_user(&third).unwrap();
    assert!(store.delete_user(&third.id).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let want = [
        format!("written {a_id} seven@example.com"),
        format!("deleted {}", third.id),
    ];
    while !want.iter().all(|w| heard.lock().unwrap().contains(w)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the observer hears the update and the delete: {:?}",
            heard.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    store.create_user(&third).unwrap();
    let names: Vec<String> = store
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["aaa-first@example.com", "user1@example.com"]);
    assert!(store.delete_user(&third.id).unwrap());
}

/// `count_login`: on a shared store an exact count per user and window however many callers
/// count at once; a single node's store keeps none (the process's own limiter is the limit).
fn contract_login_counts(store: &dyn Store) {
    if !store.shared() {
        assert_eq!(store.count_login("005a", 60).unwrap(), None);
        return;
    }
    let mut counts: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..25)
                        .map(|_| store.count_login("005a", 60).unwrap().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<_>>(),
        "each login counted once"
    );
    assert_eq!(
        store.count_login("005a", 120).unwrap(),
        Some(1),
        "a new window"
    );
    assert_eq!(
        store.count_login("005b", 60).unwrap(),
        Some(1),
        "another user"
    );
    assert_eq!(store.count_login("005a", 60).unwrap(), Some(101));
}

/// `touch_sessions` in one large batch and under concurrent writers (a stored timer only moves
/// forward); `prune_sessions` removes exactly the sessions past either bound on a shared
/// store, and nothing on a single node's (its own sweep ends its sessions).
fn contract_session_batches_and_pruning(store: &dyn Store, a_id: &str) {
    // Only this function's sessions from here on.
    store.delete_session(&[3; 32]).unwrap();
    let rec = |n: u64| SessionRecord {
        user_id: a_id.into(),
        username: "x".into(),
        epoch: 1,
        created_at: 100 + n,
        last_seen: 1_000,
        policy: Default::default(),
        token_serial: 0,
        token: None,
    };
    let key = |n: u64| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&n.to_be_bytes());
        k[31] = 0xEE;
        k
    };
    for n in 0..300 {
        store.put_session(&key(n), &rec(n)).unwrap();
    }
    let batch = |t: u64| -> Vec<_> {
        (0..300)
            .map(|n| {
                let mut r = rec(n);
                r.last_seen = 2_000 + t * 10 + n % 7;
                (key(n), r)
            })
            .collect()
    };
    // Four writers putting back the same sessions at once, each a different time (as replicas
    // on a shared store do): the latest stays, whichever commits last.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || store.touch_sessions(&batch(t)).unwrap());
        }
    });
    for n in 0..300 {
        assert_eq!(
            store.session(&key(n)).unwrap().unwrap().last_seen,
            2_030 + n % 7,
            "session {n} keeps the latest timer"
        );
    }
    // Idle before 2 033 (n % 7 < 3) or created before 110 (n < 10).
    let doomed = (0..300u64).filter(|n| n % 7 < 3 || *n < 10).count();
    let pruned = store.prune_sessions(2_033, 110).unwrap();
    let left = (0..300).filter(|n| store.session(&key(*n)).unwrap().is_some());
    if store.shared() {
        assert_eq!(pruned, doomed);
        assert!(left.clone().all(|n| n % 7 >= 3 && n >= 10));
        assert_eq!(left.count(), 300 - doomed);
    } else {
        assert_eq!(pruned, 0);
        assert_eq!(left.count(), 300);
    }
    store.delete_user_sessions(a_id).unwrap();
    assert!((0..300).all(|n| store.session(&key(n)).unwrap().is_none()));
}

/// The audit trail: appends from several writers at once make one chain, queries filter and
/// bound, a scan stops when told, and pruning leaves an anchor the rest still verifies from.
fn contract_audit_trail(store: &dyn Store) {
    use tokengate::audit::{Actor, Entry, Filter};
    let entry = |actor: &str, target: &str| Entry {
        actor: Actor {
            name: actor.into(),
            address: "local".into(),
            channel: tokengate::audit::Channel::Cli,
        },
        action: "user.update",
        target: target.into(),
        changes: vec![],
    };
    let first = store.audit_append(&entry("cli:root", "early")).unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, tokengate::audit::GENESIS);
    std::thread::sleep(Duration::from_millis(5));
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..10 {
                    store
                        .audit_append(&entry(&format!("admin{t}"), &format!("u{i}")))
                        .unwrap();
                }
            });
        }
    });
    let v = tokengate::audit::verify(store).expect("one unbroken chain");
    assert_eq!(
        (v.records, v.first_seq, v.last_seq),
        (41, Some(1), Some(41))
    );
    let query = |actor: Option<&str>, target: Option<&str>, since_ms, limit| {
        store
            .audit_query(&Filter {
                since_ms,
                actor: actor.map(str::to_owned),
                target: target.map(str::to_owned),
                limit,
            })
            .unwrap()
    };
    let all = query(None, None, None, 100);
    assert_eq!(all.len(), 41);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(query(None, None, None, 5).len(), 5);
    assert_eq!(query(None, None, None, 5)[0].seq, 41);
    let admin2 = query(Some("admin2"), None, None, 100);
    assert_eq!(admin2.len(), 10);
    assert!(admin2.iter().all(|r| r.actor == "admin2"));
    assert_eq!(query(Some("admin2"), Some("u3"), None, 100).len(), 1);
    assert_eq!(query(None, Some("u3"), None, 100).len(), 4);
    let later = first.at_ms + 1;
    assert!(
        query(None, None, Some(later), 100)
            .iter()
            .all(|r| r.seq > 1)
    );
    assert_eq!(query(None, None, Some(later), 100).len(), 40);
    let mut scanned = Vec::new();
    store
        .audit_scan(&mut |r| {
            scanned.push(r.seq);
            scanned.len() < 7
        })
        .unwrap();
    assert_eq!(
        scanned,
        (1..=7).collect::<Vec<_>>(),
        "in order, until told to stop"
    );

    // Retention: the first record goes, its hash stays as the anchor, and the chain goes on.
    assert_eq!(store.audit_prune(first.at_ms).unwrap(), 0, "nothing older");
    assert_eq!(store.audit_prune(later).unwrap(), 1);
    let anchor = tokengate::audit::Anchor::load(store).unwrap().unwrap();
    assert_eq!((anchor.seq, anchor.hash.as_str()), (1, first.hash.as_str()));
    let next = store.audit_append(&entry("system", "after")).unwrap();
    assert_eq!(next.seq, 42);
    let v = tokengate::audit::verify(store).expect("still verifies");
    assert_eq!((v.records, v.first_seq, v.anchored), (41, Some(2), true));
    assert_eq!(store.audit_prune(next.at_ms + 1).unwrap(), 41);
    let last = store.audit_append(&entry("system", "alone")).unwrap();
    assert_eq!(last.seq, 43, "numbering goes on from the anchor");
    assert_eq!(last.prev_hash, next.hash);
    tokengate::audit::verify(store).expect("verifies from the anchor");
}

/// ACME entries: kept, replaced and deleted by a shared store; a single node's store keeps
/// none and says so.
fn contract_acme_entries(store: &dyn Store) {
    if !store.shared() {
        assert_eq!(store.acme_entry("certificate").unwrap(), None);
        assert!(store.put_acme_entry("certificate", Some(b"x")).is_err());
        return;
    }
    assert_eq!(store.acme_entry("certificate").unwrap(), None);
    store.put_acme_entry("certificate", Some(b"one")).unwrap();
    store.put_acme_entry("certificate", Some(b"two")).unwrap();
    assert_eq!(
        store.acme_entry("certificate").unwrap().as_deref(),
        Some(&b"two"[..])
    );
    store.put_acme_entry("certificate", None).unwrap();
    assert_eq!(store.acme_entry("certificate").unwrap(), None);
}

/// The observers of the `Store` trait that hear other processes: on a shared store, changes
/// committed by another process on the database (users written and deleted, sessions ended one
/// by one and all of a user's, ACME entries written and deleted); on a single node's store
/// there is no other process, and registering them is all there is (`observe_users` hears the
/// process's own writes, in `conformance`).
#[test]
fn the_observers_of_a_shared_store_hear_what_another_process_commits() {
    let backend = postgres();
    let (a, b) = (open_pg(&backend), open_pg(&backend));
    let heard: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (h1, h2, h3) = (heard.clone(), heard.clone(), heard.clone());
    b.observe_users(Arc::new(move |change| {
        h1.lock().unwrap().push(match change {
            tokengate::store::UserChange::Written(u) => format!("user {} {}", u.id, u.email),
            tokengate::store::UserChange::Deleted { id } => format!("deleted {id}"),
        })
    }));
    b.observe_sessions(Arc::new(move |change| {
        h2.lock().unwrap().push(match change {
            tokengate::store::SessionChange::Ended(key) => format!("ended {}", key[0]),
            tokengate::store::SessionChange::Unknown => "unknown".into(),
        })
    }));
    b.observe_acme(Arc::new(move |key| {
        h3.lock().unwrap().push(format!("acme {key}"))
    }));
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !heard.lock().unwrap().iter().any(|h| h == want) {
            assert!(
                std::time::Instant::now() < deadline,
                "B hears {want:?}: {:?}",
                heard.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let u = user(1);
    a.create_user(&u).unwrap();
    a.update_user(&u.id, &mut |u| u.email = "new@example.com".into())
        .unwrap();
    wait_for(&format!("user {} new@example.com", u.id));
    let rec = SessionRecord {
        user_id: u.id.clone(),
        username: u.username.clone(),
        epoch: 1,
        created_at: 10,
        last_seen: 20,
        policy: Default::default(),
        token_serial: 0,
        token: None,
    };
    for k in 1..=3u8 {
        a.put_session(&[k; 32], &rec).unwrap();
    }
    a.delete_session(&[1; 32]).unwrap();
    wait_for("ended 1");
    assert_eq!(a.delete_user_sessions(&u.id).unwrap(), 2);
    wait_for("ended 2");
    wait_for("ended 3");
    a.put_acme_entry("certificate", Some(b"pem")).unwrap();
    wait_for("acme certificate");
    heard.lock().unwrap().clear();
    a.put_acme_entry("certificate", None).unwrap();
    wait_for("acme certificate");
    assert!(a.delete_user(&u.id).unwrap());
    wait_for(&format!("deleted {}", u.id));
    // Its own changes reach B's observers only through the database: a session B ends is
    // not told back to B as another's.
    heard.lock().unwrap().clear();
    b.put_session(&[9; 32], &rec).unwrap();
    b.delete_session(&[9; 32]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !heard.lock().unwrap().iter().any(|h| h == "ended 9"),
        "{:?}",
        heard.lock().unwrap()
    );
}

/// Copies every record of `from` into `to` (what backup then restore does).
fn copy(from: &dyn Store, to: &dyn Store) -> u64 {
    let mut records = Vec::new();
    from.export(&mut |t, k, v| {
        records.push((t.to_owned(), k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    for (t, k, v) in &records {
        to.import(t, k, v).unwrap();
    }
    records.len() as u64
}

#[test]
fn the_store_contract_holds_on_sled_and_on_postgres_and_records_move_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
    conformance(sled.clone());
    let pg: Arc<dyn Store> = Arc::new(open_pg(&postgres()));
    conformance(pg.clone());

    // sled → PostgreSQL → sled: the same records come back.
    let target: Arc<dyn Store> = Arc::new(open_pg(&postgres()));
    let n = copy(sled.as_ref(), target.as_ref());
    assert!(n > 0);
    let dir2 = tempfile::tempdir().unwrap();
    let back: Arc<dyn Store> = Arc::new(SledStore::open(&dir2.path().join("db"), 8 << 20).unwrap());
    copy(target.as_ref(), back.as_ref());
    let u = back.user_by_name("user1@example.com").unwrap().unwrap();
    assert_eq!(u.lockout.failures, 100);
    assert_eq!(
        back.user_by_id(&u.id).unwrap().unwrap().username,
        u.username
    );
    // Both backends write the same collections, in the same order.
    let trees = |s: &dyn Store| {
        let mut t: Vec<String> = Vec::new();
        s.export(&mut |tree, _, _| {
            if t.last().map(String::as_str) != Some(tree) {
                t.push(tree.to_owned());
            }
            Ok(())
        })
        .unwrap();
        t
    };
    assert_eq!(trees(target.as_ref()), trees(sled.as_ref()));
    assert_eq!(
        back.server_key(&mut || [0; 32]).unwrap(),
        sled.server_key(&mut || [0; 32]).unwrap()
    );
    assert_eq!(back.outbox().unwrap(), sled.outbox().unwrap());
}

#[test]
fn replicas_starting_together_migrate_the_schema_once() {
    let backend = postgres();
    let stores: Vec<PgStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| open_pg(&backend))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for s in &stores {
        assert_eq!(
            s.schema_version().unwrap(),
            tokengate::store::postgres::MIGRATIONS.last().unwrap().0
        );
    }
}

/// Two replicas on one database, each with its own data directory (certificate, socket).
async fn replicas(upstream: &str) -> (TestServer, TestServer) {
    let mut r = replicas_with(2, upstream, |_| {}).await;
    let b = r.pop().unwrap();
    (r.pop().unwrap(), b)
}

/// `n` replicas on one fresh database, each configured further by `tweak`.
async fn replicas_with(
    n: usize,
    upstream: &str,
    tweak: impl Fn(&mut tokengate::config::Config),
) -> Vec<TestServer> {
    let backend = tokio::task::block_in_place(postgres);
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        let b = backend.clone();
        replicas.push(
            TestServer::start_with(upstream, |cfg| {
                cfg.store.backend = b;
                tweak(cfg);
            })
            .await,
        );
    }
    replicas
}

async fn data_status(ts: &TestServer, sid: &str) -> StatusCode {
    ts.client()
        .get_with_session("/services/data/v59.0/sobjects", sid)
        .await
        .status
}

/// A user added on `ts`, as its store holds the record (fixture setup, as `add_user`).
async fn added_user(ts: &TestServer, name: &str) -> Arc<User> {
    ts.add_user(name).await;
    ts.app().store.user_by_name(name).unwrap().unwrap()
}

/// `n` sessions of `user`, made on `ts` in-process (fixture setup: a login each).
fn sessions_of(ts: &TestServer, user: &User, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| ts.app().sessions.create(user).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_replica_works_on_another_until_it_is_ended_anywhere() {
    let up = Upstream::start().await;
    let (a, b) = replicas(&up.url()).await;
    let token = a.add_user("ann@example.com").await;
    let secret = format!("{PASSWORD}{token}");

    // Made on A, used on B (read from the database once).
    let sid = a.soap_login("ann@example.com", &secret).await;
    assert_eq!(data_status(&b, &sid).await, StatusCode::OK);
    assert_eq!(data_status(&a, &sid).await, StatusCode::OK);

    // A logout on B ends it on A within a second.
    let r = b
        .client()
        .post(
            "/services/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={sid}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(
        "the logout reaches replica A",
        Duration::from_secs(1),
        async || data_status(&a, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;

    // A disable on A ends B's sessions within a second; enabling does not revive them.
    let sid = b.soap_login("ann@example.com", &secret).await;
    assert_eq!(data_status(&a, &sid).await, StatusCode::OK);
    cli(&a, &["user", "disable", "ann@example.com"], None);
    eventually(
        "the disable reaches replica B",
        Duration::from_secs(1),
        async || data_status(&b, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    cli(&a, &["user", "enable", "ann@example.com"], None);
    assert_eq!(data_status(&b, &sid).await, StatusCode::UNAUTHORIZED);

    // A login-range change on B ends A's sessions; logins from outside fail on A at once.
    let sid = a.soap_login("ann@example.com", &secret).await;
    assert_eq!(data_status(&b, &sid).await, StatusCode::OK);
    b.app()
        .users
        .set_login_ranges("ann@example.com", vec!["10.0.0.0/8".parse().unwrap()])
        .unwrap();
    eventually(
        "the range change reaches replica A",
        Duration::from_secs(1),
        async || data_status(&a, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    let outside = a
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("ann@example.com", &secret),
        )
        .await;
    assert_eq!(outside.status, StatusCode::INTERNAL_SERVER_ERROR);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_every_replica_count_toward_one_lockout_and_history_is_shared() {
    let up = Upstream::start().await;
    let (a, b) = replicas(&up.url()).await;
    let token = a.add_user("bob@example.com").await;
    let threshold = a.cfg.lockout.max_failures;
    // Alternate replicas: each sees half the failures (each a different wrong password), the
    // database all of them.
    for i in 0..threshold {
        let ts = if i % 2 == 0 { &a } else { &b };
        let r = ts
            .client()
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body("bob@example.com", &format!("wrong{i}{token}")),
            )
            .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Basic with the right credentials is told of the lock, on either replica (the last
    // failure's replica at once, the other as soon as it hears of it).
    let right = format!("{PASSWORD}{token}");
    for ts in [&b, &a] {
        eventually(
            "the lock holds on every replica",
            Duration::from_secs(1),
            async || {
                ts.client()
                    .get(
                        "/services/data/v59.0/sobjects",
                        &[("authorization", &basic("bob@example.com", &right))],
                    )
                    .await
                    .status
                    == StatusCode::LOCKED
            },
        )
        .await;
    }
    // The history on A lists the attempts made on B.
    a.history_written().await;
    b.history_written().await;
    let rows = a
        .app()
        .store
        .history_query(&HistoryFilter {
            user: Some("bob@example.com".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let count = |o: &str| rows.iter().filter(|r| r.outcome == o).count() as u32;
    assert_eq!(count("bad_credentials"), threshold, "{rows:?}");
    assert!(count("locked") >= 2, "{rows:?}");
    assert_eq!(count("success"), 0, "{rows:?}");
    a.stop().await;
    b.stop().await;
}

/// Signs `username` (password [`PASSWORD`]) in to `ts`'s console: the cookie to send.
async fn console_sign_in(ts: &TestServer, username: &str) -> String {
    let r = ts
        .client()
        .post(
            "/tokengate/console/signin",
            "application/x-www-form-urlencoded",
            serde_urlencoded::to_string([("username", username), ("password", PASSWORD)]).unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let cookie = r.header("set-cookie").expect("a session cookie");
    cookie.split(';').next().unwrap().to_owned()
}

/// The console's My Settings page, with the session `cookie`.
async fn console_settings(ts: &TestServer, cookie: &str) -> Reply {
    ts.client()
        .get("/tokengate/console/settings", &[("cookie", cookie)])
        .await
}

async fn soap(ts: &TestServer, username: &str, secret: &str) -> Reply {
    ts.client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(username, secret),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_logins_fail_in_time_sessions_fail_closed_and_all_heals() {
    // A cluster of this test's own: stopping it must not disturb the others.
    let pg = tokio::task::block_in_place(crate::support::postgres::Cluster::private);
    let mut backend = backend(tokio::task::block_in_place(|| pg.database()));
    if let Backend::Postgres(c) = &mut backend {
        c.timeout = Duration::from_millis(800);
        c.max_staleness = Duration::from_secs(2);
    }
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), move |cfg| cfg.store.backend = backend).await;
    let token = ts.add_user("cy@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let sid = ts.soap_login("cy@example.com", &secret).await;
    assert_eq!(data_status(&ts, &sid).await, StatusCode::OK);
    let console = console_sign_in(&ts, "cy@example.com").await;
    assert_eq!(console_settings(&ts, &console).await.status, StatusCode::OK);

    tokio::task::block_in_place(|| pg.stop());
    // A login needs the database (its limits, its history, the session it would issue): it is
    // answered as unavailable within the timeout, and issues nothing.
    let started = std::time::Instant::now();
    let r = soap(&ts, "cy@example.com", &secret).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(r.text().contains("SERVER_UNAVAILABLE"), "{}", r.text());
    assert!(!r.text().contains("sessionId"), "{}", r.text());
    // A history row recorded now cannot be written yet; the writer keeps it.
    ts.app().history.record(row(
        tokengate::history::now_ms(),
        "during-outage",
        "success",
    ));
    // Past max_staleness the cached session is no longer trusted: refused as unavailable.
    eventually(
        "the session fails closed",
        Duration::from_secs(6),
        async || data_status(&ts, &sid).await == StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    // The console says so too, and keeps its cookie: an outage signs nobody out.
    let page = console_settings(&ts, &console).await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.text()
    );
    assert!(page.text().contains("still signed in"), "{}", page.text());
    assert!(page.header("set-cookie").is_none());

    tokio::task::block_in_place(|| pg.start());
    // Back: the replica reconnects by itself; the session and new logins work again.
    eventually(
        "the session works again",
        Duration::from_secs(15),
        async || data_status(&ts, &sid).await == StatusCode::OK,
    )
    .await;
    let sid = ts.soap_login("cy@example.com", &secret).await;
    assert_eq!(data_status(&ts, &sid).await, StatusCode::OK);
    assert_eq!(console_settings(&ts, &console).await.status, StatusCode::OK);
    // What the history writer could not write during the outage was kept and written since.
    ts.history_written().await;
    let rows = ts
        .app()
        .store
        .history_query(&HistoryFilter {
            user: Some("during-outage".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the row recorded during the outage was written"
    );
    assert_eq!(ts.app().history.dropped(), 0);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_due_while_three_replicas_run_is_emailed_once_and_another_leader_takes_over() {
    let sink = crate::support::smtp::SmtpSink::start().await;
    let up = Upstream::start().await;
    let mut replicas = replicas_with(3, &up.url(), |cfg| {
        mail_to(cfg, &sink, "Acme");
        cfg.tokens.rotation_check_interval = Duration::from_millis(200);
    })
    .await;
    replicas[0].add_user("dee@example.com").await;
    let user = replicas[0]
        .app()
        .store
        .user_by_name("dee@example.com")
        .unwrap()
        .unwrap();
    let (id, rcpt) = (user.id.clone(), user.email.clone());
    let rcpt = rcpt.as_str();
    // Through any replica (the test keeps no store of its own: a store held here would keep
    // a stopped leader's connection, and its leadership, alive).
    let due = |r: &TestServer| {
        r.app()
            .store
            .update_user(&id, &mut |u| {
                u.rotate_every_secs = Some(86_400);
                u.next_rotation_at = Some(tokengate::now_secs() - 1);
            })
            .unwrap();
    };
    let before = sink.to(rcpt).len();
    due(&replicas[0]);
    sink.wait_for(rcpt, before + 1, Duration::from_secs(5))
        .await;
    // Every replica checked the schedule several times meanwhile; only the leader rotated.
    // This waits for time, not for an event: the passes that must do nothing show nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        sink.to(rcpt).len(),
        before + 1,
        "one email for one rotation"
    );

    // The leader goes away: another replica takes the scheduled work over.
    let leader = replicas
        .iter()
        .position(|r| r.app().store.leader())
        .expect("one replica leads");
    assert_eq!(
        replicas.iter().filter(|r| r.app().store.leader()).count(),
        1,
        "exactly one leader"
    );
    replicas.remove(leader).stop().await;
    due(&replicas[0]);
    sink.wait_for(rcpt, before + 2, Duration::from_secs(10))
        .await;
    // Waits for time, not for an event (as above): no second replica rotates it too.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(sink.to(rcpt).len(), before + 2);
    for r in replicas {
        r.stop().await;
    }
}

/// A replica's configuration file in `dir` (its own data directory), on the database at `url`.
fn replica_config(dir: &std::path::Path, upstream: &str, url: &str) -> std::path::PathBuf {
    let path = dir.join("tokengate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n[store]\npath = \"data\"\nbackend = \"postgres\"\nurl = \"{url}\"\n[limits]\nfailure_delay = \"0s\"\n"
        ),
    )
    .unwrap();
    path
}

/// `replica_config` that also mails through the test sink and checks for due rotations every
/// 200 ms, with `extra` TOML after.
fn mailing_replica_config(
    dir: &std::path::Path,
    upstream: &str,
    url: &str,
    smtp_port: u16,
    extra: &str,
) -> std::path::PathBuf {
    let path = replica_config(dir, upstream, url);
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(&format!(
        "[mail]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\ntimeout = \"2s\"\nfrom = \"Acme <noreply@tokengate.test>\"\n[tokens]\nrotation_check_interval = \"200ms\"\n{extra}"
    ));
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_replica_processes_share_sessions_and_hear_the_cli_and_survive_each_other() {
    use crate::support::process::{self, Serve};
    let up = Upstream::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfgs: Vec<_> = dirs
        .iter()
        .map(|d| replica_config(d.path(), &up.url(), &url))
        .collect();
    // The CLI works on the database directly while no replica runs...
    let token = tokio::task::block_in_place(|| {
        let out = process::run(&cfgs[2], &["check-config"], None, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let newest = tokengate::store::postgres::MIGRATIONS.last().unwrap().0;
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("PostgreSQL schema version {newest}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        process::add_user(&cfgs[2], "eve@example.com", PASSWORD, false)
    });
    let mut a = Serve::start(&cfgs[0], &[], &[]);
    let b = Serve::start(&cfgs[1], &[], &[]);
    let client = |dir: &tempfile::TempDir, server: &Serve| {
        HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false)
    };
    let (ca, cb) = (client(&dirs[0], &a), client(&dirs[1], &b));
    let login = ca
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("eve@example.com", &format!("{PASSWORD}{token}")),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let sid = extract(&login.text(), "sessionId").unwrap();
    let call = async |c: &HttpsClient| {
        c.get_with_session("/services/data/v59.0/sobjects", &sid)
            .await
            .status
    };
    assert_eq!(call(&cb).await, StatusCode::OK, "made on A, used on B");

    // A killed outright: B goes on serving the session.
    a.child.kill().unwrap();
    a.wait(Duration::from_secs(10));
    assert_eq!(call(&cb).await, StatusCode::OK);

    // ...and while replicas run: a disable from the CLI (no replica's socket in its data
    // directory) reaches B through the database within a second.
    tokio::task::block_in_place(|| {
        let out = process::run(&cfgs[2], &["user", "disable", "eve@example.com"], None, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    eventually(
        "the CLI's disable reaches replica B",
        Duration::from_secs(1),
        async || call(&cb).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    let log = b.stop();
    assert!(!log.contains(&sid), "no session id in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_spreads_its_connections_over_several_replicas() {
    let up = Upstream::start().await;
    let replicas = replicas_with(2, &up.url(), |cfg| cfg.allow_synthetic_users = true).await;
    let token = replicas[0]
        .add_user_with("ops@example.com", PASSWORD, true)
        .await;
    let dir = tempfile::tempdir().unwrap();
    // One file that trusts both replicas' self-signed certificates.
    let ca = dir.path().join("ca.pem");
    let pems: Vec<String> = replicas
        .iter()
        .map(|r| std::fs::read_to_string(&r.ca).unwrap())
        .collect();
    std::fs::write(&ca, pems.concat()).unwrap();
    let users = dir.path().join("users.json");
    let targets: Vec<String> = replicas
        .iter()
        .map(|r| format!("https://127.0.0.1:{}", r.addr.port()))
        .collect();
    let json = dir.path().join("run.json");
    // Bounded: killed with its process group past the command timeout, failing the test.
    let run = |args: Vec<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
        cmd.arg("loadtest")
            .args(&args)
            .env("TOKENGATE_ADMIN_SECRET", format!("{PASSWORD}{token}"));
        let (out, killed) = tokio::task::block_in_place(|| {
            crate::support::process::run_bounded(
                cmd,
                None,
                crate::support::process::COMMAND_TIMEOUT,
            )
        });
        assert!(!killed, "tokengate loadtest {args:?} was killed");
        out
    };
    let (ca_s, users_s) = (ca.to_str().unwrap(), users.to_str().unwrap());
    let setup = run(vec![
        "setup",
        "--target",
        &targets[0],
        "--ca",
        ca_s,
        "--users-file",
        users_s,
        "--admin",
        "ops@example.com",
        "--users",
        "4",
    ]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let out = run(vec![
        "run",
        "--target",
        &targets[0],
        "--target",
        &targets[1],
        "--ca",
        ca_s,
        "--users-file",
        users_s,
        "--scenario",
        "session",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(
        report["session"]["requests"].as_u64().unwrap() > 0,
        "{report}"
    );
    // Users made through replica A log in on both; both forwarded calls.
    for r in &replicas {
        let m = r.metrics();
        assert!(
            metric(&m, "tokengate_upstream_requests_total{status=\"2xx\"}") > 0,
            "every replica carried traffic"
        );
    }
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_sign_in_on_one_replica_works_on_another_until_signed_out_on_either() {
    const CONSOLE: &str = "/tokengate/console";
    let up = Upstream::start().await;
    let (a, b) = replicas(&up.url()).await;
    a.add_user("fay@example.com").await;
    let form = |fields: &[(&str, &str)]| serde_urlencoded::to_string(fields).unwrap();
    let signed_in = a
        .client()
        .post(
            &format!("{CONSOLE}/signin"),
            "application/x-www-form-urlencoded",
            form(&[("username", "fay@example.com"), ("password", PASSWORD)]),
        )
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.text()
    );
    let cookie = signed_in
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let settings = async |ts: &TestServer| {
        ts.client()
            .get(&format!("{CONSOLE}/settings"), &[("cookie", &cookie)])
            .await
    };
    let csrf = |html: &str| {
        let at = html.find(r#"name="csrf" value=""#).expect("a form") + 19;
        html[at..].split('"').next().unwrap().to_owned()
    };
    // Signed in on A, served by B, with the same CSRF token on both.
    let on_b = settings(&b).await;
    assert_eq!(on_b.status, StatusCode::OK, "{}", on_b.text());
    let on_a = settings(&a).await;
    assert_eq!(on_a.status, StatusCode::OK);
    assert_eq!(csrf(&on_a.text()), csrf(&on_b.text()));

    // Signed out on B: A sends the browser to sign in again within a second.
    let c = b.client();
    let out = c
        .call(
            c.request(http::Method::POST, &format!("{CONSOLE}/signout"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &cookie),
            form(&[("csrf", &csrf(&on_b.text()))]),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    eventually(
        "the sign-out reaches replica A",
        Duration::from_secs(1),
        async || settings(&a).await.status == StatusCode::SEE_OTHER,
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_spread_over_replicas_meet_one_per_user_limit() {
    let up = Upstream::start().await;
    let replicas = replicas_with(2, &up.url(), |cfg| {
        // Four logins a day per user; each replica alone would allow four.
        cfg.limits.login_per_user = std::num::NonZeroU32::new(4).unwrap();
        cfg.limits.login_per_user_period = Duration::from_secs(86_400);
    })
    .await;
    let token = replicas[0].add_user("gus@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = soap(&replicas[i % 2], "gus@example.com", &secret).await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR
        ],
        "three logins on each replica, four allowed in all"
    );
    let refused = soap(&replicas[1], "gus@example.com", &secret).await;
    assert!(
        refused.text().contains("LOGIN_RATE_EXCEEDED")
            || refused.text().contains("REQUEST_LIMIT_EXCEEDED"),
        "{}",
        refused.text()
    );
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_moves_from_sled_to_postgres_by_backup_and_restore() {
    use crate::support::process::{self, Serve};
    let up = Upstream::start().await;
    let (sled_dir, pg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sled_cfg = sled_dir.path().join("tokengate.toml");
    std::fs::write(
        &sled_cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[store]\npath = \"data\"\n[limits]\nfailure_delay = \"0s\"\n",
            up.url()
        ),
    )
    .unwrap();
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let pg_cfg = replica_config(pg_dir.path(), &up.url(), &url);
    let backup = sled_dir.path().join("backup.tgb");
    let backup_s = backup.to_str().unwrap();
    let token = tokio::task::block_in_place(|| {
        let token = process::add_user(&sled_cfg, "hal@example.com", PASSWORD, false);
        for (cfg, args, ok) in [
            (&sled_cfg, ["backup", backup_s], true),
            (&pg_cfg, ["restore", backup_s], true),
            // Into a database that is no longer empty: refused, nothing written.
            (&pg_cfg, ["restore", backup_s], false),
        ] {
            let out = process::run(cfg, &args, None, &[]);
            assert_eq!(
                out.status.success(),
                ok,
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        token
    });
    // The user and the installation's key came along: the same password+token logs in.
    let server = Serve::start(&pg_cfg, &[], &[]);
    let client = HttpsClient::new(&pg_dir.path().join("data/tls/cert.pem"), server.addr, false);
    let r = client
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("hal@example.com", &format!("{PASSWORD}{token}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    server.stop();
}

#[test]
fn connections_to_the_database_are_encrypted_and_verified_as_sslmode_says() {
    let pg = crate::support::postgres::Cluster::private();
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    pg.require_tls(&key.cert.pem(), &key.signing_key.serialize_pem());
    let url = pg.database();
    let base = url.split('?').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("right.pem"), key.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("wrong.pem"), other.cert.pem()).unwrap();
    // Through the configuration file, as an operator writes it.
    let connect = |mode: &str, ca: Option<&str>| {
        let text = format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{base}?sslmode={mode}\"\ntimeout = \"2s\"\n{}",
            ca.map(|c| format!("ca = \"{c}\"\n")).unwrap_or_default()
        );
        let cfg = tokengate::config::Config::from_toml(&text, &dir.path().join("t.toml"))
            .expect("a valid configuration");
        let Backend::Postgres(pg) = &cfg.store.backend else {
            unreachable!("postgres")
        };
        PgStore::connect(pg).map(|s| s.schema_version().unwrap())
    };
    // The server takes no plain connections; `require` encrypts without checking the
    // certificate; `verify-full` checks it against the CA file, and refuses a stranger's.
    assert!(connect("disable", None).is_err());
    assert!(connect("require", None).is_ok());
    assert!(connect("verify-full", Some("right.pem")).is_ok());
    assert!(connect("verify-full", Some("wrong.pem")).is_err());
    // Without a CA file, the system's roots: a self-signed certificate is refused.
    assert!(connect("verify-full", None).is_err());
}

#[test]
fn sessions_nobody_holds_are_pruned_from_the_database_past_their_timeouts() {
    let store = open_pg(&postgres());
    let rec = |created_at: u64, last_seen: u64| SessionRecord {
        user_id: "005x".into(),
        username: "x".into(),
        epoch: 1,
        created_at,
        last_seen,
        policy: Default::default(),
        token_serial: 0,
        token: None,
    };
    store.put_session(&[1; 32], &rec(1_000, 1_000)).unwrap(); // idle too long
    store.put_session(&[2; 32], &rec(100, 5_000)).unwrap(); // too old
    store.put_session(&[3; 32], &rec(1_000, 5_000)).unwrap(); // live
    assert_eq!(store.prune_sessions(2_000, 500).unwrap(), 2);
    assert!(store.session(&[1; 32]).unwrap().is_none());
    assert!(store.session(&[2; 32]).unwrap().is_none());
    assert!(store.session(&[3; 32]).unwrap().is_some());
}

/// The refresh token family methods of the `Store` trait, with the answers both backends must
/// give: the per-user bound, rotation as a compare-and-swap with exactly one winner among
/// racers, deletion and pruning.
fn refresh_conformance(store: Arc<dyn Store>) {
    use tokengate::store::RefreshFamily;
    let family = |user: &str, created_at: u64, current: u8| RefreshFamily {
        user_id: user.into(),
        username: format!("{user}@example.com"),
        client_id: "c".into(),
        epoch: 1,
        created_at,
        expires_at: created_at + 1000,
        idle_until: created_at + 100,
        current: [current; 32],
        token_serial: 0,
    };
    let key = |n: u8| [n; 32];
    // Five families for user a, bound 3: the two oldest end, whatever order they came in.
    for (n, created) in [(1u8, 10u64), (2, 50), (3, 20), (4, 40), (5, 30)] {
        store
            .refresh_insert(&key(n), &family("a", created, n), 3)
            .unwrap();
    }
    store
        .refresh_insert(&key(9), &family("b", 5, 9), 3)
        .unwrap();
    let live = |n: u8| store.refresh_family(&key(n)).unwrap().is_some();
    assert_eq!(
        [1, 2, 3, 4, 5, 9].map(live),
        [false, true, false, true, true, true],
        "the oldest of a's families ended; b's is untouched"
    );
    assert_eq!(
        store.refresh_family(&key(2)).unwrap().unwrap(),
        family("a", 50, 2)
    );

    // Rotation: only from the current token.
    let next = RefreshFamily {
        current: [42; 32],
        idle_until: 170,
        ..family("a", 50, 2)
    };
    assert!(!store.refresh_rotate(&key(2), &[7; 32], &next).unwrap());
    assert!(store.refresh_rotate(&key(2), &[2; 32], &next).unwrap());
    assert!(
        !store.refresh_rotate(&key(2), &[2; 32], &next).unwrap(),
        "used"
    );
    assert_eq!(store.refresh_family(&key(2)).unwrap().unwrap(), next);
    assert!(
        !store.refresh_rotate(&key(77), &[2; 32], &next).unwrap(),
        "gone"
    );

    // Racing rotations of one token: exactly one wins.
    let wins = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let (store, wins) = (&store, &wins);
            s.spawn(move || {
                let mine = RefreshFamily {
                    current: [100 + i; 32],
                    ..family("a", 40, 4)
                };
                if store.refresh_rotate(&key(4), &[4; 32], &mine).unwrap() {
                    wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(wins.into_inner(), 1);

    assert!(store.refresh_delete(&key(5)).unwrap());
    assert!(!store.refresh_delete(&key(5)).unwrap());
    assert!(!live(5));
    // Families end at the earlier of their lifetime and idle end: b's (5 + 100) and a's
    // rotated one (170) have, at 171; a's family 4 (40 + 100) too.
    assert_eq!(store.refresh_prune(104).unwrap(), 0);
    assert_eq!(store.refresh_prune(171).unwrap(), 3);
    assert!(!live(9) && !live(2) && !live(4));
    // A family's index entry went with it: a new family for a is bounded by the live ones.
    for n in 10..14u8 {
        store
            .refresh_insert(&key(n), &family("a", 200 + u64::from(n), n), 3)
            .unwrap();
    }
    assert_eq!([10, 11, 12, 13].map(live), [false, true, true, true]);
    // Families are credentials: a backup does not carry them.
    store
        .export(&mut |tree, _, _| {
            assert!(!tree.contains("refresh"), "{tree} exported");
            Ok(())
        })
        .unwrap();
}

#[test]
fn refresh_token_families_behave_alike_on_sled_and_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
    refresh_conformance(sled);
    let pg: Arc<dyn Store> = Arc::new(open_pg(&postgres()));
    refresh_conformance(pg);
}

#[test]
fn a_version_3_database_migrates_to_the_newest_schema_and_keeps_its_records() {
    let cluster = crate::support::postgres::cluster();
    let url = cluster.database();
    // The database as tokengate with schema version 3 left it, with a setting stored.
    let mut sql = String::from(
        "CREATE TABLE tg_schema (version integer PRIMARY KEY, applied_at bigint NOT NULL);\n",
    );
    for (version, step) in tokengate::store::postgres::MIGRATIONS
        .iter()
        .filter(|(v, _)| *v <= 3)
    {
        sql.push_str(step);
        sql.push_str(&format!(
            ";\nINSERT INTO tg_schema VALUES ({version}, 0);\n"
        ));
    }
    sql.push_str("INSERT INTO tg_settings VALUES ('kept', 'yes'::bytea);\n");
    cluster.psql(&url, &sql).expect("a version 3 schema");
    let store = open_pg(&backend(url));
    assert_eq!(
        store.schema_version().unwrap(),
        tokengate::store::postgres::MIGRATIONS.last().unwrap().0
    );
    assert_eq!(store.setting("kept").unwrap().as_deref(), Some(&b"yes"[..]));
    let family = tokengate::store::RefreshFamily {
        user_id: "005000000000001AAA".into(),
        username: "u@example.com".into(),
        client_id: "c".into(),
        epoch: 1,
        created_at: 1,
        expires_at: 10,
        idle_until: 5,
        current: [1; 32],
        token_serial: 7,
    };
    store.refresh_insert(&[3; 32], &family, 100).unwrap();
    assert_eq!(store.refresh_family(&[3; 32]).unwrap(), Some(family));
}

/// A refresh token request to `ts` through the test client, with `refresh_tokens` on.
async fn refresh_on(ts: &TestServer, refresh_token: &str) -> Reply {
    let form = serde_urlencoded::to_string([
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ])
    .unwrap();
    ts.client()
        .post(
            "/services/oauth2/token",
            "application/x-www-form-urlencoded",
            form,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_with_one_refresh_token_revoke_its_family() {
    let up = Upstream::start().await;
    let mut r = replicas_with(2, &up.url(), |cfg| {
        cfg.oauth_clients[0].refresh_tokens = true;
    })
    .await;
    let (b, a) = (r.pop().unwrap(), r.pop().unwrap());
    let token = a.add_user("race@example.com").await;
    let login = a
        .client()
        .oauth_login("race@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let first = login.json()["refresh_token"].as_str().unwrap().to_owned();
    // Rotated on A, the next token works on B: one family in the database.
    let on_a = refresh_on(&a, &first).await;
    assert_eq!(on_a.status, StatusCode::OK, "{}", on_a.text());
    let second = on_a.json()["refresh_token"].as_str().unwrap().to_owned();

    // The same token on both replicas at once: at most one wins, the other is a reuse.
    let (x, y) = tokio::join!(refresh_on(&a, &second), refresh_on(&b, &second));
    let won: Vec<&Reply> = [&x, &y]
        .into_iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert!(won.len() <= 1, "both replicas rotated one token");
    let refused = [&x, &y]
        .into_iter()
        .find(|r| r.status != StatusCode::OK)
        .expect("one was refused");
    assert_eq!(
        refused.json()["error"],
        "invalid_grant",
        "{}",
        refused.text()
    );
    // The family is gone: the winner's new token is refused on either replica.
    if let Some(w) = won.first() {
        let third = w.json()["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(refresh_on(&a, &third).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(refresh_on(&b, &third).await.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_token_revoked_on_one_replica_ends_its_sessions_and_cache_on_another() {
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let mut r = replicas_with(2, &up.url(), |c| mail_to(c, &sink, "PatronManager")).await;
    let (b, a) = (r.pop().unwrap(), r.pop().unwrap());
    let admin_token = a.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let token = a.add_user("ann@example.com").await;
    // The named token is made and revoked through A's admin API, as an administrator would.
    let r = a
        .client()
        .api(
            &admin,
            http::Method::POST,
            "admin/users/ann@example.com/tokens",
            Some(serde_json::json!({ "name": "dataloader" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let named = sink
        .wait_for("ann.example.com@example.com", 1, Duration::from_secs(5))
        .await[0]
        .token();
    let (default, named) = (format!("{PASSWORD}{token}"), format!("{PASSWORD}{named}"));

    // The new token reaches B (its commit follows the mail) within a second.
    eventually(
        "the new named token reaches replica B",
        Duration::from_secs(1),
        async || soap(&b, "ann@example.com", &named).await.status == StatusCode::OK,
    )
    .await;
    // Logged in on B with each token; the named one also cached for Basic on B.
    let sid_named = b.soap_login("ann@example.com", &named).await;
    let sid_default = b.soap_login("ann@example.com", &default).await;
    let basic_on_b = async || {
        b.client()
            .get(
                "/services/data/v59.0/sobjects",
                &[("authorization", &basic("ann@example.com", &named))],
            )
            .await
            .status
    };
    // B answers the named credential from its cache (the hit counter proves the entry).
    assert_basic_cached(&b, "ann@example.com", &named).await;

    let r = a
        .client()
        .api(
            &admin,
            http::Method::DELETE,
            "admin/users/ann@example.com/tokens/dataloader",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(
        "the revocation reaches replica B's sessions",
        Duration::from_secs(1),
        async || data_status(&b, &sid_named).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    eventually(
        "the revocation reaches replica B's credential cache",
        Duration::from_secs(1),
        async || basic_on_b().await == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(data_status(&b, &sid_default).await, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_first_used_on_another_replica_at_once_are_all_accepted() {
    let up = Upstream::start().await;
    let (a, b) = replicas(&up.url()).await;
    let user = added_user(&a, "ann@example.com").await;
    // Many more than the reads B makes at once: as after a resynchronisation, when every
    // client's next call is a first use.
    let sids = sessions_of(&a, &user, 48);
    // One HTTP/2 connection, opened beforehand, so the calls arrive together.
    let client = Arc::new(b.h2_client());
    assert_eq!(
        client
            .get("/services/data/v59.0/sobjects", &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let mut calls = tokio::task::JoinSet::new();
    for sid in sids {
        let client = client.clone();
        calls.spawn(async move {
            client
                .get_with_session("/services/data/v59.0/sobjects", &sid)
                .await
                .status
        });
    }
    let statuses: Vec<StatusCode> = calls.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every valid session is accepted: {statuses:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_session_table_is_full_serves_sessions_made_elsewhere() {
    let up = Upstream::start().await;
    let backend = tokio::task::block_in_place(postgres);
    let on = |max: usize| {
        let b = backend.clone();
        move |cfg: &mut tokengate::config::Config| {
            cfg.store.backend = b;
            cfg.auth.max_sessions = max;
            cfg.auth.max_sessions_per_user = 100;
        }
    };
    let a = TestServer::start_with(&up.url(), on(100)).await;
    // B holds four sessions at most: three times fewer than its clients use.
    let b = TestServer::start_with(&up.url(), on(4)).await;
    let user = added_user(&a, "fay@example.com").await;
    let sids = sessions_of(&a, &user, 12);
    // Round and round: each use on B finds the table full of the others.
    for round in 0..2 {
        for (i, sid) in sids.iter().enumerate() {
            assert_eq!(
                data_status(&b, sid).await,
                StatusCode::OK,
                "session {i}, round {round}: served though B's table is full"
            );
            assert!(b.app().sessions.len() <= 4, "B's table keeps its bound");
        }
    }
    // What B made room for is still ended anywhere: a session B dropped from its table and
    // then ended on A is refused when B reads it again; the others stay valid on A.
    assert!(a.app().sessions.revoke(&sids[0]));
    assert_eq!(data_status(&b, &sids[0]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(data_status(&a, &sids[1]).await, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

/// Two replicas mailing through `sink`, and which of them leads (once one does).
async fn mailing_replicas(up: &Upstream, sink: &crate::support::smtp::SmtpSink) -> Vec<TestServer> {
    let r = replicas_with(2, &up.url(), |c| mail_to(c, sink, "Acme")).await;
    eventually("one replica leads", Duration::from_secs(5), async || {
        r.iter().filter(|r| r.app().store.leader()).count() == 1
    })
    .await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verbatim_compliance_copy_that_failed_on_a_replica_that_does_not_lead_is_retried_there() {
    use crate::support::smtp::Behaviour;
    use tokengate::mail::{ComplianceBcc, TokenReason};
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let r = mailing_replicas(&up, &sink).await;
    let follower = r.iter().find(|r| !r.app().store.leader()).unwrap();
    follower.add_user("ann@example.com").await;
    ComplianceBcc {
        enabled: true,
        address: Some("audit@example.org".into()),
        redact_secrets: false,
    }
    .save(follower.app().store.as_ref())
    .unwrap();
    sink.set(Behaviour {
        refuse_rcpt: vec!["audit@example.org".into()],
        ..Behaviour::default()
    });
    let user = follower.app().tokens.find("ann@example.com").unwrap();
    follower
        .app()
        .tokens
        .rotate(&user.id, TokenReason::AdminRotation)
        .await
        .unwrap();
    let token = sink.wait_for(&user.email, 1, Duration::from_secs(5)).await[0].token();
    assert!(sink.to("audit@example.org").is_empty());
    // The copy carries the token, so it waits in the follower's memory: the follower sends it.
    sink.set(Behaviour::default());
    let copies = sink
        .wait_for("audit@example.org", 1, Duration::from_secs(5))
        .await;
    assert!(copies[0].carries(&token), "the verbatim copy went out");
    for r in r {
        r.stop().await;
    }
}

/// Stops every replica on the database at `url` hearing the change channel (each listener's
/// connection is ended and no new connection to the database is let in) while the connections
/// already pooled keep working: the replicas go stale yet can still read. `false` lets
/// connections in again.
fn cut_change_channel(url: &str, cut: bool) {
    let pg = crate::support::postgres::cluster();
    let name = url
        .rsplit('/')
        .next()
        .and_then(|rest| rest.split('?').next())
        .unwrap();
    let admin = url.replace(&format!("/{name}?"), "/postgres?");
    pg.psql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {}", !cut),
    )
    .unwrap();
    if cut {
        // In a call of its own, after the ban has committed: sent in one batch with it, the
        // two ran as one transaction, and a listener that reconnected at once after being
        // ended could get in before the ban took effect (the replica then never went stale).
        pg.psql(
            &admin,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND application_name = '{}'",
                tokengate::store::postgres::LISTENER_APPLICATION_NAME
            ),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_hear_the_channel_honours_a_logout_made_on_another() {
    const CONSOLE: &str = "/tokengate/console";
    let up = Upstream::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut b = backend(url.clone());
        if let Backend::Postgres(c) = &mut b {
            c.max_staleness = Duration::from_secs(1);
        }
        servers.push(TestServer::start_with(&up.url(), |cfg| cfg.store.backend = b).await);
    }
    let (b, a) = (servers.pop().unwrap(), servers.pop().unwrap());
    let token = a.add_user("gil@example.com").await;
    let sid = a
        .soap_login("gil@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(data_status(&b, &sid).await, StatusCode::OK);
    let form = |fields: &[(&str, &str)]| serde_urlencoded::to_string(fields).unwrap();
    let signed_in = a
        .client()
        .post(
            &format!("{CONSOLE}/signin"),
            "application/x-www-form-urlencoded",
            form(&[("username", "gil@example.com"), ("password", PASSWORD)]),
        )
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let cookie = signed_in.header("set-cookie").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let settings = async |ts: &TestServer| {
        ts.client()
            .get(&format!("{CONSOLE}/settings"), &[("cookie", &cookie)])
            .await
    };
    let on_b = settings(&b).await;
    assert_eq!(on_b.status, StatusCode::OK);
    let at = on_b.text().find(r#"name="csrf" value=""#).unwrap() + 19;
    let csrf = on_b.text()[at..].split('"').next().unwrap().to_owned();

    tokio::task::block_in_place(|| cut_change_channel(&url, true));
    eventually("B goes stale", Duration::from_secs(5), async || {
        !b.app().store.fresh()
    })
    .await;
    // Ended on A; B hears nothing of it, but, stale, asks the database on every use.
    let r = a
        .client()
        .post(
            "/services/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={sid}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(data_status(&b, &sid).await, StatusCode::UNAUTHORIZED);
    let c = a.client();
    let out = c
        .call(
            c.request(http::Method::POST, &format!("{CONSOLE}/signout"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &cookie),
            form(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(settings(&b).await.status, StatusCode::SEE_OTHER);

    tokio::task::block_in_place(|| cut_change_channel(&url, false));
    eventually(
        "B hears the channel again",
        Duration::from_secs(5),
        async || b.app().store.fresh(),
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[test]
fn the_database_gives_up_a_silent_replica_within_seconds_so_leadership_moves_on() {
    // A leader whose host dies holds its lock until the server ends its connection: the server
    // applies keepalives and a user timeout of seconds to every connection of ours.
    let store = open_pg(&postgres());
    assert_eq!(
        store.dead_peer_settings().unwrap(),
        ["5", "2", "3", "10000"].map(String::from)
    );
    // An operator's own options in the URL win over ours.
    let url = crate::support::postgres::cluster().database();
    let store = open_pg(&backend(format!(
        "{url}&options=-c%20tcp_keepalives_idle%3D7"
    )));
    assert_eq!(store.dead_peer_settings().unwrap()[0], "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timers_are_written_back_at_most_once_per_tenth_of_the_idle_timeout() {
    let up = Upstream::start().await;
    // 400 s: a session is written back once its timer has moved by more than 40 s.
    let mut r = replicas_with(2, &up.url(), |c| {
        c.auth.session_idle_timeout = Duration::from_secs(400)
    })
    .await;
    let (b, a) = (r.pop().unwrap(), r.pop().unwrap());
    let user = added_user(&a, "hal@example.com").await;
    let sids = sessions_of(&a, &user, 3);
    // The sessions as last written `ago` seconds back (by A, say): B reads them so on first
    // use, and its use moves their timers on by that much.
    let store = b.app().store.clone();
    let last_used = |ago: u64| {
        let mut recs = Vec::new();
        store
            .for_each_session(&mut |k, r| {
                if r.user_id == user.id {
                    recs.push((k, r))
                }
            })
            .unwrap();
        let before = tokengate::now_secs() - ago;
        for (key, mut rec) in recs {
            rec.last_seen = before;
            rec.created_at = before;
            store.put_session(&key, &rec).unwrap();
        }
        before
    };
    let stored = || {
        let mut seen = Vec::new();
        store
            .for_each_session(&mut |_, r| seen.push(r.last_seen))
            .unwrap();
        seen
    };
    let sweep = || tokio::task::block_in_place(|| b.app().sessions.sweep());

    // Moved by 35 s: not yet written.
    let before = tokio::task::block_in_place(|| last_used(35));
    for sid in &sids {
        assert_eq!(data_status(&b, sid).await, StatusCode::OK);
    }
    sweep();
    assert_eq!(tokio::task::block_in_place(stored), vec![before; 3]);

    // Three new sessions, moved by 45 s: all written back by one sweep.
    tokio::task::block_in_place(|| {
        for sid in &sids {
            b.app().sessions.revoke(sid);
        }
    });
    let sids = sessions_of(&a, &user, 3);
    let before = tokio::task::block_in_place(|| last_used(45));
    for sid in &sids {
        assert_eq!(data_status(&b, sid).await, StatusCode::OK);
    }
    sweep();
    let now = tokengate::now_secs();
    let seen = tokio::task::block_in_place(stored);
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| *s > before + 40 && *s <= now),
        "{seen:?}, before {before}, now {now}"
    );
    a.stop().await;
    b.stop().await;
}

#[test]
fn a_restore_is_refused_on_a_database_a_replica_has_started_on_and_changes_nothing() {
    let store = open_pg(&postgres());
    assert!(store.is_empty().unwrap());
    // What a replica's first start writes: the server key, which it then holds in memory.
    let key = store.server_key(&mut || [7; 32]).unwrap();
    assert!(!store.is_empty().unwrap(), "a server key is a record");
    let dir = tempfile::tempdir().unwrap();
    let other = Arc::new(SledStore::open(&dir.path().join("db"), 1 << 20).unwrap());
    other.server_key(&mut || [9; 32]).unwrap();
    other.create_user(&user(1)).unwrap();
    let file = dir.path().join("backup.tgb");
    tokengate::backup::backup(other.as_ref(), &file).unwrap();
    assert!(matches!(
        tokengate::backup::restore(&store, &file),
        Err(tokengate::backup::BackupError::NotEmpty)
    ));
    assert_eq!(store.server_key(&mut || [8; 32]).unwrap(), key);
    assert!(store.user_by_name("user1@example.com").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reset_on_one_replica_is_enforced_on_another_within_a_second() {
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let (b, a) = {
        let mut r = mailing_replicas(&up, &sink).await;
        (r.pop().unwrap(), r.pop().unwrap())
    };
    let admin_token = a.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let old = a.add_user("ivy@example.com").await;
    let old = format!("{PASSWORD}{old}");
    // On B: a session, and the credentials verified and cached for Basic (the hit counter
    // proves the entry, so B's refusal after the reset proves the entry was killed).
    let sid = b.soap_login("ivy@example.com", &old).await;
    assert_basic_cached(&b, "ivy@example.com", &old).await;
    let basic_on_b = async |secret: &str| {
        b.client()
            .get(
                "/services/data/v59.0/sobjects",
                &[("authorization", &basic("ivy@example.com", secret))],
            )
            .await
            .status
    };
    assert_eq!(basic_on_b(&old).await, StatusCode::OK);
    assert_eq!(data_status(&b, &sid).await, StatusCode::OK);

    let r = a
        .client()
        .api(
            &admin,
            http::Method::POST,
            "admin/users/ivy@example.com/token/reset",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let new = sink
        .wait_for("ivy.example.com@example.com", 1, Duration::from_secs(5))
        .await[0]
        .token();
    eventually(
        "B refuses the session the reset ended",
        Duration::from_secs(1),
        async || data_status(&b, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    eventually(
        "B refuses the old token it had cached",
        Duration::from_secs(1),
        async || basic_on_b(&old).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        basic_on_b(&format!("{PASSWORD}{new}")).await,
        StatusCode::OK
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliance_bcc_set_on_one_replica_is_used_by_another() {
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let (b, a) = {
        let mut r = mailing_replicas(&up, &sink).await;
        (r.pop().unwrap(), r.pop().unwrap())
    };
    let admin_token = a.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    a.add_user("joe@example.com").await;
    let set_on_a = async |enabled: bool| {
        let r = a
            .client()
            .api(
                &admin,
                http::Method::PUT,
                "admin/settings/compliance-bcc",
                Some(serde_json::json!({
                    "enabled": enabled,
                    "address": "audit@example.org",
                    "redact_secrets": true,
                })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    };
    let reset_on_b = async || {
        let r = b
            .client()
            .api(
                &admin,
                http::Method::POST,
                "admin/users/joe@example.com/token/reset",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    };
    let rcpt = "joe.example.com@example.com";

    set_on_a(true).await;
    reset_on_b().await;
    let token = sink.wait_for(rcpt, 1, Duration::from_secs(5)).await[0].token();
    let copies = sink
        .wait_for("audit@example.org", 1, Duration::from_secs(5))
        .await;
    assert!(
        copies[0].header("to").unwrap().contains(rcpt),
        "the user's own message"
    );
    assert!(!copies[0].carries(&token), "the copy is redacted");

    // Turned off on A: B's next reset mail has no copy.
    set_on_a(false).await;
    reset_on_b().await;
    sink.wait_for(rcpt, 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.to("audit@example.org").len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_process_killed_outright_hands_scheduled_rotations_to_another() {
    use crate::support::process::{self, Serve};
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfgs: Vec<_> = dirs
        .iter()
        .map(|d| mailing_replica_config(d.path(), &up.url(), &url, sink.addr.port(), ""))
        .collect();
    const LEADS: &str = "now runs the scheduled jobs";
    let mut a = Serve::start(&cfgs[0], &[], &[]);
    eventually("A leads", Duration::from_secs(5), async || {
        a.log().contains(LEADS)
    })
    .await;
    let b = Serve::start(&cfgs[1], &[], &[]);
    tokio::task::block_in_place(|| process::add_user(&cfgs[1], "kim@example.com", PASSWORD, false));
    let rcpt = "kim.example.com@example.com";
    // A rotation made due in the database (by a store of the test's own, closed at once: it
    // must not be there to take the leadership over).
    let due = || {
        tokio::task::block_in_place(|| {
            let store = open_pg(&backend(url.clone()));
            let id = store
                .user_by_name("kim@example.com")
                .unwrap()
                .unwrap()
                .id
                .clone();
            store
                .update_user(&id, &mut |u| {
                    u.rotate_every_secs = Some(86_400);
                    u.next_rotation_at = Some(tokengate::now_secs() - 1);
                })
                .unwrap();
        })
    };
    let rotated = || {
        tokio::task::block_in_place(|| {
            let store = open_pg(&backend(url.clone()));
            let u = store.user_by_name("kim@example.com").unwrap().unwrap();
            u.next_rotation_at
                .is_some_and(|at| at > tokengate::now_secs())
        })
    };
    let before = sink.to(rcpt).len();
    due();
    sink.wait_for(rcpt, before + 1, Duration::from_secs(5))
        .await;
    // Committed (the mail goes out before the commit: a leader killed in between leaves the
    // rotation to be made again, by design).
    eventually(
        "A commits the rotation",
        Duration::from_secs(5),
        async || rotated(),
    )
    .await;

    // The leader killed outright (no shutdown, no goodbye to the database): its connection
    // closes with the process, and B takes the scheduled work over.
    a.child.kill().unwrap();
    a.wait(Duration::from_secs(10));
    eventually("B leads", Duration::from_secs(5), async || {
        b.log().contains(LEADS)
    })
    .await;
    due();
    sink.wait_for(rcpt, before + 2, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(sink.to(rcpt).len(), before + 2, "one email per rotation");
    b.stop();
}

/// One answer under load: when its request started and ended, and what it was.
struct Answer {
    started: std::time::Instant,
    ended: std::time::Instant,
    status: StatusCode,
    issued: bool,
    /// Refused as unavailable in the dialect's own way (SOAP's fault, REST's 503).
    unavailable: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_under_load_gets_every_answer_in_time_issues_nothing_and_heals() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    let pg = Arc::new(tokio::task::block_in_place(
        crate::support::postgres::Cluster::private,
    ));
    let mut backend = backend(tokio::task::block_in_place(|| pg.database()));
    let (timeout, staleness) = (Duration::from_millis(800), Duration::from_secs(2));
    if let Backend::Postgres(c) = &mut backend {
        c.timeout = timeout;
        c.max_staleness = staleness;
    }
    let up = Upstream::start().await;
    let ts =
        Arc::new(TestServer::start_with(&up.url(), move |cfg| cfg.store.backend = backend).await);
    let token = ts.add_user("lu@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let sid = ts.soap_login("lu@example.com", &secret).await;

    // Two clients logging in and two calling with the session, all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (ts, stop, secret, sid) = (ts.clone(), stop.clone(), secret.clone(), sid.clone());
        load.spawn(async move {
            let mut answers = Vec::new();
            let client = ts.client();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = if worker % 2 == 0 {
                    client
                        .post(
                            "/services/Soap/u/59.0",
                            "text/xml",
                            soap_login_body("lu@example.com", &secret),
                        )
                        .await
                } else {
                    client
                        .get_with_session("/services/data/v59.0/sobjects", &sid)
                        .await
                };
                let (status, text) = (r.status, r.text());
                answers.push(Answer {
                    started,
                    ended: Instant::now(),
                    status,
                    issued: text.contains("sessionId>"),
                    unavailable: text.contains("SERVER_UNAVAILABLE")
                        || status == StatusCode::SERVICE_UNAVAILABLE,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (worker % 2 == 0, answers)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| pg.pause());
    // From here on nothing answers (a request that started before may still have been served
    // just before the signal landed).
    let paused = Instant::now();
    tokio::time::sleep(staleness + Duration::from_secs(3)).await;
    let resumed = Instant::now();
    tokio::task::block_in_place(|| pg.resume());
    eventually(
        "the session works again",
        Duration::from_secs(15),
        async || data_status(&ts, &sid).await == StatusCode::OK,
    )
    .await;
    assert_eq!(
        soap(&ts, "lu@example.com", &secret).await.status,
        StatusCode::OK
    );
    stop.store(true, Ordering::Relaxed);
    let results = load.join_all().await;

    // Every answer within the timeout and a margin for a loaded machine (a first use may wait
    // one timeout for a read slot and another for the read).
    let bound = timeout * 2 + Duration::from_millis(1_500);
    let frozen = |a: &Answer| a.started >= paused && a.ended <= resumed;
    let mut during = (0, 0);
    for (login, answers) in &results {
        for a in answers {
            let took = a.ended - a.started;
            assert!(took <= bound, "an answer took {took:?} (bound {bound:?})");
            assert!(
                a.status == StatusCode::OK || a.unavailable,
                "an answer other than success or unavailable: {}",
                a.status
            );
            if !frozen(a) {
                continue;
            }
            if *login {
                during.0 += 1;
                assert!(!a.issued, "no session is issued while the database hangs");
            } else if a.started >= paused + staleness + Duration::from_millis(600) {
                during.1 += 1;
                assert_eq!(
                    a.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "fails closed once stale"
                );
            }
        }
    }
    assert!(
        during.0 > 0 && during.1 > 0,
        "load while frozen: {during:?}"
    );
    // Nothing committed was lost: the user and the session are there.
    let store = &ts.app().store;
    assert!(store.user_by_name("lu@example.com").unwrap().is_some());
    let ts = Arc::into_inner(ts).expect("the load is over");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_act_as_one_on_resets_ranges_lockout_compliance_copies_and_rotation()
 {
    use crate::support::process::{self, Serve};
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    const MAX_FAILURES: usize = 4;
    let cfgs: Vec<_> = dirs
        .iter()
        .map(|d| {
            let lockout = format!("[lockout]\nmax_failures = {MAX_FAILURES}\n");
            mailing_replica_config(d.path(), &up.url(), &url, sink.addr.port(), &lockout)
        })
        .collect();
    let (admin_token, ivy_token, bob_token) = tokio::task::block_in_place(|| {
        let add = |name: &str, admin: bool| process::add_user(&cfgs[0], name, PASSWORD, admin);
        let tokens = (
            add("admin@example.com", true),
            add("ivy@example.com", false),
            add("bob@example.com", false),
        );
        add("joe@example.com", false);
        tokens
    });
    let replicas: Vec<Serve> = cfgs.iter().map(|c| Serve::start(c, &[], &[])).collect();
    let clients: Vec<HttpsClient> = dirs
        .iter()
        .zip(&replicas)
        .map(|(d, r)| HttpsClient::new(&d.path().join("data/tls/cert.pem"), r.addr, false))
        .collect();
    let (a, b) = (&clients[0], &clients[1]);
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let soap = async |c: &HttpsClient, user: &str, secret: &str| {
        c.post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(user, secret),
        )
        .await
    };
    let login = async |c: &HttpsClient, user: &str, secret: &str| {
        let r = soap(c, user, secret).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        extract(&r.text(), "sessionId").unwrap()
    };
    let call = async |c: &HttpsClient, sid: &str| {
        c.get_with_session("/services/data/v59.0/sobjects", sid)
            .await
            .status
    };
    let basic_call = async |c: &HttpsClient, user: &str, secret: &str| {
        c.get(
            "/services/data/v59.0/sobjects",
            &[("authorization", &basic(user, secret))],
        )
        .await
        .status
    };
    let admin_api =
        async |c: &HttpsClient,
               method: http::Method,
               path: &str,
               body: Option<serde_json::Value>| { c.api(&admin, method, path, body).await };
    let mut logged = Vec::new();

    // A token reset through A's admin API: B refuses the session and the old token within a
    // second, and the mailed token works on B.
    let ivy = "ivy@example.com";
    let old = format!("{PASSWORD}{ivy_token}");
    let sid = login(b, ivy, &old).await;
    logged.push(sid.clone());
    assert_eq!(call(b, &sid).await, StatusCode::OK);
    assert_eq!(basic_call(b, ivy, &old).await, StatusCode::OK);
    let ivy_rcpt = "ivy.example.com@example.com";
    let mailed = sink.to(ivy_rcpt).len();
    let r = admin_api(
        a,
        http::Method::POST,
        "admin/users/ivy@example.com/token/reset",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    eventually(
        "B refuses the session a reset on A ended",
        Duration::from_secs(1),
        async || call(b, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    eventually(
        "B refuses the old token",
        Duration::from_secs(1),
        async || basic_call(b, ivy, &old).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    let new = sink
        .wait_for(ivy_rcpt, mailed + 1, Duration::from_secs(5))
        .await
        .last()
        .unwrap()
        .token();
    let secret = format!("{PASSWORD}{new}");
    assert_eq!(basic_call(b, ivy, &secret).await, StatusCode::OK);

    // A login-range change on A (one the test's address is outside of): B ends the session
    // within a second and refuses new logins from here.
    let sid = login(b, ivy, &secret).await;
    logged.push(sid.clone());
    assert_eq!(call(b, &sid).await, StatusCode::OK);
    let r = admin_api(
        a,
        http::Method::PUT,
        "admin/users/ivy@example.com/login-ranges",
        Some(serde_json::json!({"ranges": ["10.0.0.0/8"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(
        "B ends the session outside the new ranges",
        Duration::from_secs(1),
        async || call(b, &sid).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        soap(b, ivy, &secret).await.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a login from outside the ranges fails on B"
    );

    // Lockout: failures spread over the three replicas (two, one and one: none of them sees
    // the threshold) lock the account on all of them.
    let bob = "bob@example.com";
    for i in 0..MAX_FAILURES {
        let r = soap(&clients[i % 3], bob, &format!("wrong{i}{bob_token}")).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let right = format!("{PASSWORD}{bob_token}");
    for c in &clients {
        eventually(
            "the lock holds on every replica",
            Duration::from_secs(1),
            async || basic_call(c, bob, &right).await == StatusCode::LOCKED,
        )
        .await;
    }

    // The Compliance BCC set on A is what B's reset mail follows; turned off on A, B sends
    // no copy.
    let set_bcc_on_a = async |enabled: bool| {
        let r = admin_api(
            a,
            http::Method::PUT,
            "admin/settings/compliance-bcc",
            Some(serde_json::json!({
                "enabled": enabled,
                "address": "audit@example.org",
                "redact_secrets": true,
            })),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    };
    let joe_rcpt = "joe.example.com@example.com";
    let reset_joe_on_b = async || {
        let before = sink.to(joe_rcpt).len();
        let r = admin_api(
            b,
            http::Method::POST,
            "admin/users/joe@example.com/token/reset",
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        sink.wait_for(joe_rcpt, before + 1, Duration::from_secs(5))
            .await
            .last()
            .unwrap()
            .token()
    };
    set_bcc_on_a(true).await;
    let token = reset_joe_on_b().await;
    let copies = sink
        .wait_for("audit@example.org", 1, Duration::from_secs(5))
        .await;
    assert!(copies[0].header("to").unwrap().contains(joe_rcpt));
    assert!(!copies[0].carries(&token), "the copy is redacted");
    set_bcc_on_a(false).await;
    reset_joe_on_b().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.to("audit@example.org").len(), 1, "no copy once off");

    // Rotations due while the three run are made and mailed once each: twenty users due at
    // once keep the leader rotating for longer than the others' 200 ms checks, so a replica
    // that rotated without leading would mail someone twice. (Made due by a store of the
    // test's own, closed at once; the replicas already hold the leadership between them.)
    let due: Vec<String> = tokio::task::block_in_place(|| {
        let store = open_pg(&backend(url.clone()));
        (100..120)
            .map(|n| {
                let mut u = user(n);
                u.rotate_every_secs = Some(86_400);
                u.next_rotation_at = Some(tokengate::now_secs() - 1);
                store.create_user(&u).unwrap();
                u.email
            })
            .collect()
    });
    for rcpt in &due {
        sink.wait_for(rcpt, 1, Duration::from_secs(10)).await;
    }
    // Every replica checked the schedule several times meanwhile.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for rcpt in &due {
        assert_eq!(
            sink.to(rcpt).len(),
            1,
            "one email for one rotation of {rcpt}"
        );
    }
    let leaders = replicas
        .iter()
        .filter(|r| r.log().contains("now runs the scheduled jobs"))
        .count();
    assert_eq!(leaders, 1, "one replica took the scheduled jobs");

    for r in replicas {
        let log = r.stop();
        for sid in &logged {
            assert!(!log.contains(sid.as_str()), "no session id in a log");
        }
        assert!(!log.contains(&new), "no token in a log");
    }
}
