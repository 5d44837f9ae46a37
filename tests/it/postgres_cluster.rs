//! The private PostgreSQL the PostgreSQL store's tests run against (`support::postgres`): fresh
//! databases, separate from each other and reachable through their URLs, and an outage — the
//! server stopped, then started again on the same port with the same data.
//!
//! The outage runs on a cluster of the test's own; the shared one is checked to be distinct.

use crate::support::postgres::{Cluster, cluster};

#[test]
fn fresh_databases_and_an_outage() {
    let pg = &Cluster::private();
    assert_ne!(pg.port(), cluster().port(), "not the shared cluster");
    let (a, b) = (pg.database(), pg.database());
    assert_ne!(a, b, "two databases, two names");
    for url in [&a, &b] {
        let name = url
            .strip_prefix(&format!("postgres://postgres@127.0.0.1:{}/", pg.port()))
            .and_then(|rest| rest.strip_suffix("?sslmode=disable"))
            .unwrap_or_else(|| panic!("not a URL of the cluster: {url}"));
        assert_eq!(pg.psql(url, "select 1").unwrap(), "1");
        assert_eq!(pg.psql(url, "select current_database()").unwrap(), name);
        assert_eq!(
            pg.psql(
                url,
                "select count(*) from pg_class where relnamespace = 'public'::regnamespace"
            )
            .unwrap(),
            "0",
            "a fresh database is empty"
        );
    }
    pg.psql(
        &a,
        "create table kept (v text); insert into kept values ('before')",
    )
    .unwrap();
    assert_eq!(
        pg.psql(&b, "select to_regclass('kept') is null").unwrap(),
        "t",
        "the databases are separate"
    );

    pg.stop();
    assert!(pg.psql(&a, "select 1").is_err(), "a stopped server answers");
    pg.start();
    assert_eq!(pg.psql(&a, "select v from kept").unwrap(), "before");
    assert_eq!(pg.psql(&b, "select 1").unwrap(), "1");
}
