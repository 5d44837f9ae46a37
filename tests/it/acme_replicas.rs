//! `[tls] acme` on two replicas sharing one PostgreSQL database (started by the tests, whatever
//! store the rest of the suite runs on): the leader orders once from a real Pebble, the CA's
//! TLS-ALPN-01 validation is answered by the replica that does not lead (the challenge is
//! shared through the store), both serve the issued certificate, and when the leader goes the
//! other takes over without ordering again.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokengate::config::{Backend, PgTls, PostgresConfig};
use tokengate::store::Store;
use tokengate::store::postgres::PgStore;

use crate::acme::{
    ORDER_TIMEOUT, acme_config, client_accepting_anything, client_trusting, end_and_renewal, fetch,
    issuer, orders, served_certificate, tls_status,
};
use crate::support::pebble::{self, Pebble};
use crate::support::{TestServer, Upstream, eventually};

fn postgres_config(url: &str) -> PostgresConfig {
    PostgresConfig {
        connect: url.parse().expect("a PostgreSQL URL"),
        tls: PgTls::Disable,
        ca: None,
        pool_size: 8,
        timeout: Duration::from_secs(2),
        max_staleness: Duration::from_secs(5),
    }
}

/// A replica on `pg` with its certificate from `pebble`, listening on `listen` (else any port).
async fn replica(
    upstream: &Upstream,
    pg: &PostgresConfig,
    pebble: &Pebble,
    listen: Option<std::net::SocketAddr>,
) -> TestServer {
    let (directory, ca) = (pebble.directory(), pebble.https_ca());
    let backend = Backend::Postgres(Box::new(pg.clone()));
    TestServer::start_with(&upstream.url(), move |cfg| {
        cfg.store.backend = backend;
        if let Some(listen) = listen {
            cfg.server.listen = listen;
        }
        cfg.tls.acme = Some(acme_config(cfg, directory, Some(ca)));
    })
    .await
}

/// Where the validator's connections went: to the replica that did not lead, by index.
type Forwarded = Arc<Mutex<Vec<(usize, bool)>>>;

/// Listens on `at` (Pebble's `tlsPort`) and hands each connection to the replica that does
/// not lead at that moment, recording which one it was and whether it led. The stores are
/// held weakly: a stopped replica's store (and its leadership) must go with it.
fn forward_to_follower(
    at: std::net::SocketAddr,
    replicas: Vec<(std::net::SocketAddr, Weak<dyn Store>)>,
) -> (tokio::task::JoinHandle<()>, Forwarded) {
    let forwarded: Forwarded = Arc::default();
    let log = forwarded.clone();
    let task = tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let leads = |i: usize| {
                replicas[i]
                    .1
                    .upgrade()
                    .is_some_and(|s: Arc<dyn Store>| s.leader())
            };
            let Some(i) = (0..replicas.len()).find(|&i| !leads(i)) else {
                continue;
            };
            log.lock().unwrap().push((i, leads(i)));
            let to = replicas[i].0;
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                    )
                    .await;
                }
            });
        }
    });
    (task, forwarded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_order_once_answer_the_challenge_on_the_follower_share_the_certificate_and_survive_the_leader()
 {
    // Pebble's validator dials the forwarder, which picks the replica that does not lead.
    let validation = pebble::free_addr();
    let Some(pebble) = Pebble::start(validation.port()) else {
        return;
    };
    let root = pebble.root().await;
    let connector = client_trusting(&root);
    let upstream = Upstream::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let pg = postgres_config(&url);

    // The test leads while both replicas start, so that neither orders before the other
    // listens; then it lets go and one of them takes over.
    let holder = tokio::task::block_in_place(|| PgStore::connect(&pg).expect("connects"));
    eventually(
        "the test holds the leadership",
        Duration::from_secs(5),
        async || holder.leader(),
    )
    .await;
    let mut replicas = vec![
        replica(&upstream, &pg, &pebble, None).await,
        replica(&upstream, &pg, &pebble, None).await,
    ];
    let (forwarder, forwarded) = forward_to_follower(
        validation,
        replicas
            .iter()
            .map(|r| (r.addr, Arc::downgrade(&r.app().store)))
            .collect(),
    );
    // Neither leads and the store holds no certificate: both serve the placeholder and are
    // not ready (the test client trusts the placeholder).
    for r in &replicas {
        let ready = r.client().get("/tokengate/ready", &[]).await;
        assert_eq!(
            ready.status,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            ready.text()
        );
        assert_eq!(ready.json()["acme"], "pending", "{}", ready.text());
    }
    tokio::task::block_in_place(|| drop(holder));

    // One replica orders; the certificate reaches both, and both are ready.
    let (first, status, body) =
        served_certificate(&connector, &replicas[0], &pebble, ORDER_TIMEOUT).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert!(issuer(&first).contains("Pebble"), "{}", issuer(&first));
    let (second, status, body) =
        served_certificate(&connector, &replicas[1], &pebble, Duration::from_secs(10)).await;
    assert_eq!(first, second, "both replicas serve the one certificate");
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert_eq!(
        pebble.orders(),
        1,
        "one order for both replicas\n{}",
        pebble.logs()
    );
    let leader = replicas
        .iter()
        .position(|r| r.app().store.leader())
        .expect("one replica leads");
    let follower = 1 - leader;
    assert!(
        replicas[leader]
            .metrics()
            .contains("tokengate_acme_orders_total{outcome=\"issued\"} 1")
    );
    assert!(
        replicas[follower]
            .metrics()
            .contains("tokengate_acme_orders_total{outcome=\"issued\"} 0")
    );
    // The validation was answered by the replica that did not order.
    let went = forwarded.lock().unwrap().clone();
    assert!(!went.is_empty(), "Pebble validated through the forwarder");
    assert!(
        went.iter().all(|&(i, led)| i == follower && !led),
        "every validation went to the follower: {went:?}"
    );

    // The account key and the certificate's key are in the database sealed: neither the PEM
    // of the certificate's key nor the PKCS#8 header of a P-256 key (the account's) is there.
    // The challenge was withdrawn once validated.
    let rows = tokio::task::block_in_place(|| {
        crate::support::postgres::cluster().psql(
            &url,
            "SELECT count(*) FILTER (WHERE key LIKE 'account:%' OR key LIKE 'cert:%'),
                    count(*) FILTER (WHERE position('PRIVATE KEY'::bytea IN value) > 0
                                        OR position('\\x308187020100301306072a8648ce3d0201'::bytea IN value) > 0),
                    count(*) FILTER (WHERE key LIKE 'challenge:%')
             FROM tg_acme",
        )
    });
    assert_eq!(
        rows.as_deref(),
        Ok("2|0|0"),
        "the account and the certificate, sealed; no challenge left"
    );

    // `tokengate tls status` on the database shows the shared certificate.
    let store = format!(
        "path = \"{}\"\nbackend = \"postgres\"\nurl = \"{url}\"",
        replicas[0].dir.path().join("cli-data").display()
    );
    let stdout = tls_status(replicas[0].dir.path(), &store, &pebble);
    assert!(
        stdout.contains("shared by the replicas through PostgreSQL"),
        "{stdout}"
    );

    // The leader goes: the other replica leads, keeps serving the certificate, and finds it
    // in the store rather than ordering again.
    replicas.remove(leader).stop().await;
    let survivor = replicas.pop().unwrap();
    eventually(
        "the other replica leads",
        Duration::from_secs(10),
        async || survivor.app().store.leader(),
    )
    .await;
    // Past the new leader's start of the ACME client and its reading of the store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (again, status, body) =
        served_certificate(&connector, &survivor, &pebble, Duration::from_secs(10)).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert_eq!(again, first, "the shared certificate is still served");
    assert_eq!(
        pebble.orders(),
        1,
        "no new order by the new leader\n{}",
        pebble.logs()
    );
    assert!(
        survivor
            .metrics()
            .contains("tokengate_acme_orders_total{outcome=\"failed\"} 0")
    );
    survivor.stop().await;
    forwarder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_does_not_lead_is_ready_on_the_stored_certificate_until_it_ends() {
    // A 24 s certificate, due for renewal 16 s into its life.
    let listen = pebble::free_addr();
    let Some(mut pebble) = Pebble::start_with(listen.port(), Some(Duration::from_secs(24))) else {
        return;
    };
    let connector = client_trusting(&pebble.root().await);
    let upstream = Upstream::start().await;
    let url = tokio::task::block_in_place(|| crate::support::postgres::cluster().database());
    let pg = postgres_config(&url);

    // The first replica leads alone, on the port Pebble validates, and orders; the second
    // starts while it leads and serves the stored certificate.
    let leader = replica(&upstream, &pg, &pebble, Some(listen)).await;
    let (first, _, body) = served_certificate(&connector, &leader, &pebble, ORDER_TIMEOUT).await;
    assert_eq!(body["acme"], "ok", "{body}");
    assert!(leader.app().store.leader());
    let follower = replica(&upstream, &pg, &pebble, None).await;
    let (leaf, status, body) =
        served_certificate(&connector, &follower, &pebble, Duration::from_secs(10)).await;
    assert_eq!(leaf, first);
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert!(!follower.app().store.leader());
    let (end, renewal) = end_and_renewal(&first);

    // The CA goes away: the leader's renewal fails and it says so; the replica that does not
    // lead has nothing to renew and stays ready while the certificate is valid.
    pebble.stop_ca();
    tokio::time::sleep_until(renewal.into()).await;
    eventually("the renewal failed", Duration::from_secs(5), async || {
        orders(&leader, "failed") >= 1
    })
    .await;
    for (ts, word) in [(&leader, "degraded"), (&follower, "ok")] {
        let (leaf, status, body) = fetch(&connector, ts.addr, "/tokengate/ready", None)
            .await
            .expect("the certificate still verifies");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(leaf, first);
        assert_eq!(status, http::StatusCode::OK, "{body}");
        assert_eq!(body["acme"], word, "{body}");
    }

    // Past its end both still serve it (nothing better exists) and neither is ready.
    tokio::time::sleep_until((end + Duration::from_millis(1500)).into()).await;
    let anything = client_accepting_anything();
    for ts in [&leader, &follower] {
        let (leaf, status, body) = fetch(&anything, ts.addr, "/tokengate/ready", None)
            .await
            .expect("the server answers");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(leaf, first, "the ended certificate is what there is");
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["acme"], "expired", "{body}");
    }
    assert!(!follower.app().store.leader());
    follower.stop().await;
    leader.stop().await;
}
