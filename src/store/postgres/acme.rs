//! `[tls] acme` state shared by the replicas on PostgreSQL (`tg_acme`): one row per entry
//! (the account key, a certificate, a published TLS-ALPN-01 challenge), written with a
//! notification in the same statement so every other replica hears of it on commit. What the
//! entries hold, and their sealing, is `acme_shared`'s business; here they are opaque bytes.

use super::{CHANNEL, PgStore, db, to_i64};
use crate::store::StoreError;

impl PgStore {
    pub(super) fn acme_read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.query(move |c| async move {
            let row = c
                .query_opt("SELECT value FROM tg_acme WHERE key = $1", &[&key])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    /// Writes (or, with `None`, deletes) `key` and tells the other replicas `a:<me>:<key>`.
    pub(super) fn acme_write(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.map(<[u8]>::to_vec));
        let payload = format!("a:{}:{key}", self.inner.me);
        let now = to_i64(crate::now_secs());
        self.query(move |c| async move {
            match value {
                Some(value) => c
                    .execute(
                        "WITH w AS (
                            INSERT INTO tg_acme (key, value, updated_at) VALUES ($1, $2, $3)
                            ON CONFLICT (key) DO UPDATE
                                SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
                            RETURNING 1)
                         SELECT pg_notify($4, $5) FROM w",
                        &[&key, &value, &now, &CHANNEL, &payload],
                    )
                    .await
                    .map_err(db)?,
                None => c
                    .execute(
                        "WITH d AS (DELETE FROM tg_acme WHERE key = $1 RETURNING 1)
                         SELECT pg_notify($2, $3) FROM d",
                        &[&key, &CHANNEL, &payload],
                    )
                    .await
                    .map_err(db)?,
            };
            Ok(())
        })
    }
}
