//! Unit tests of the parent module.

use super::*;

#[test]
fn the_borrowed_canonical_form_equals_the_owned_one() {
    for name in [
        "user@example.com",
        "User@Example.com",
        " user@example.com",
        "user@example.com\t",
        "ÉLODIE@example.com",
        "ǅ@example.com",
        "",
    ] {
        assert_eq!(canonical_cow(name), canonical_username(name), "{name:?}");
    }
    assert!(matches!(
        canonical_cow("user@example.com"),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[tokio::test]
async fn a_caller_dropped_while_waiting_gives_its_place_back() {
    let pool = Arc::new(HashPool::new(1, 4, Duration::from_secs(5), Arc::default()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let p = pool.clone();
    let holder = tokio::spawn(async move { p.run(move || rx.recv().is_ok()).await });
    while pool.depth() == 0 {
        tokio::task::yield_now().await;
    }
    // Two callers queue behind the holder, then go away.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let p = pool.clone();
            tokio::spawn(async move { p.run(|| ()).await })
        })
        .collect();
    while pool.depth() < 3 {
        tokio::task::yield_now().await;
    }
    for w in waiters {
        w.abort();
        let _ = w.await;
    }
    assert_eq!(pool.depth(), 1, "only the holder remains");
    tx.send(()).unwrap();
    assert!(holder.await.unwrap().unwrap());
    assert_eq!(pool.depth(), 0);
}

#[tokio::test]
async fn the_pool_refuses_work_beyond_its_queue() {
    let pool = Arc::new(HashPool::new(1, 0, Duration::from_secs(5), Arc::default()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let p = pool.clone();
    let first = tokio::spawn(async move { p.run(move || rx.recv().is_ok()).await });
    while pool.depth() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(pool.run(|| ()).await, Err(AuthError::Busy)));
    tx.send(()).unwrap();
    assert!(first.await.unwrap().unwrap());
    assert!(pool.run(|| 5).await.is_ok());
}

#[test]
fn usernames_compare_case_insensitively() {
    assert_eq!(
        canonical_username(" Alice@Example.COM"),
        "alice@example.com"
    );
}
