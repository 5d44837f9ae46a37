//! The database schema: versioned steps, applied at start under an advisory lock so replicas
//! starting together migrate once.

use super::{MIGRATION_LOCK, db, to_i64};
use crate::store::StoreError;

/// The schema, one step per version; a step is never edited once released, only added to.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE tg_users (
        id text PRIMARY KEY,
        username text NOT NULL UNIQUE,
        version bigint NOT NULL,
        next_rotation_at bigint,
        data bytea NOT NULL
    );
    CREATE INDEX tg_users_rotation ON tg_users (next_rotation_at)
        WHERE next_rotation_at IS NOT NULL;
    CREATE TABLE tg_sessions (
        key bytea PRIMARY KEY,
        user_id text NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX tg_sessions_user ON tg_sessions (user_id);
    CREATE TABLE tg_settings (key text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE tg_meta (key text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE tg_outbox (id bigint PRIMARY KEY, message bytea NOT NULL);
    CREATE TABLE tg_history (
        seq bigserial PRIMARY KEY,
        at_ms bigint NOT NULL,
        username text NOT NULL,
        user_id text,
        outcome text NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX tg_history_time ON tg_history (at_ms, seq);
    CREATE SEQUENCE tg_ids;",
    ),
    (
        2,
        "CREATE TABLE tg_login_counts (
        user_id text NOT NULL,
        window_start bigint NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (user_id, window_start)
    );",
    ),
    (
        3,
        // The audit trail: the record (JSON, with its chain hashes) and the columns its
        // filters read. `seq` is assigned by the writer under an advisory lock, not by a
        // sequence: a chain needs no gaps, and a rolled-back insert would leave one.
        "CREATE TABLE tg_audit (
        seq bigint PRIMARY KEY,
        at_ms bigint NOT NULL,
        actor text NOT NULL,
        target text NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX tg_audit_time ON tg_audit (at_ms);",
    ),
    (
        4,
        // Refresh token families (`store::RefreshFamily`): the keyed hash of the family id,
        // the keyed hash of its current token (rotation is a conditional UPDATE on it), and
        // the columns the per-user bound and the pruning read.
        "CREATE TABLE tg_refresh (
        key bytea PRIMARY KEY,
        user_id text NOT NULL,
        current bytea NOT NULL,
        created_at bigint NOT NULL,
        ends_at bigint NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX tg_refresh_user ON tg_refresh (user_id, created_at);
    CREATE INDEX tg_refresh_ends ON tg_refresh (ends_at);",
    ),
    (
        5,
        // `[tls] acme` shared by the replicas (`store::postgres::acme`): the ACME account key
        // and the certificate with its key (both sealed), and the TLS-ALPN-01 challenge the
        // leader is being validated for (not a secret: every validator is shown it).
        "CREATE TABLE tg_acme (
        key text PRIMARY KEY,
        value bytea NOT NULL,
        updated_at bigint NOT NULL
    );",
    ),
];

pub(super) async fn migrate(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tg_schema (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
        )
        .await
        .map_err(db)?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM tg_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if let Some((newest, _)) = MIGRATIONS.last()
        && current > *newest
    {
        return Err(StoreError::Corrupt(format!(
            "the database schema is version {current}, newer than this tokengate knows ({newest}): upgrade tokengate"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        client.batch_execute("BEGIN").await.map_err(db)?;
        let applied = async {
            client.batch_execute(sql).await?;
            client
                .execute(
                    "INSERT INTO tg_schema (version, applied_at) VALUES ($1, $2)",
                    &[version, &to_i64(crate::now_secs())],
                )
                .await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = applied {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(db(e));
        }
        tracing::info!(version, "database schema migrated");
    }
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    Ok(())
}
