//! The audit trail on PostgreSQL (`tg_audit`). Appends from every replica go through one
//! transaction-scoped advisory lock, so the chain has one order: read the newest record (or the
//! retention anchor), seal the next, insert it, commit.

use super::{PgStore, db, to_i64};
use crate::store::StoreError;
use crate::store::trail::{ANCHOR_KEY, Anchor, Entry, Filter, Record, next_link};

/// The advisory lock key of audit appends ("tgaudit" in ASCII).
const AUDIT_LOCK: i64 = 0x0074_6761_7564_6974;

impl PgStore {
    pub(super) fn audit_write(&self, entry: &Entry) -> Result<Record, StoreError> {
        let entry = entry.clone();
        self.query(move |mut c| async move {
            let tx = c.transaction().await.map_err(db)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(db)?;
            let last = tx
                .query_opt("SELECT data FROM tg_audit ORDER BY seq DESC LIMIT 1", &[])
                .await
                .map_err(db)?
                .map(|r| Record::decode(&r.get::<_, Vec<u8>>(0)))
                .transpose()?;
            let anchor = match last {
                Some(_) => None,
                None => tx
                    .query_opt(
                        "SELECT value FROM tg_settings WHERE key = $1",
                        &[&ANCHOR_KEY],
                    )
                    .await
                    .map_err(db)?
                    .map(|r| {
                        serde_json::from_slice::<Anchor>(&r.get::<_, Vec<u8>>(0))
                            .map_err(|e| StoreError::Corrupt(format!("audit anchor: {e}")))
                    })
                    .transpose()?,
            };
            let (seq, prev) = next_link(last, anchor);
            let record = Record::seal(&entry, seq, crate::clock::now_ms(), &prev);
            insert(&tx, &record).await?;
            tx.commit().await.map_err(db)?;
            Ok(record)
        })
    }

    /// A record from a backup, as it was (restore into an empty store; like sled's import,
    /// it replaces a record of the same number).
    pub(super) fn audit_import(&self, r: &Record) -> Result<(), StoreError> {
        let (seq, at, actor, target, data) = (
            to_i64(r.seq),
            to_i64(r.at_ms),
            r.actor.clone(),
            r.target.clone(),
            r.encode(),
        );
        self.query(move |c| async move {
            c.execute(
                "INSERT INTO tg_audit (seq, at_ms, actor, target, data) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (seq) DO UPDATE SET at_ms = EXCLUDED.at_ms, actor = EXCLUDED.actor,
                   target = EXCLUDED.target, data = EXCLUDED.data",
                &[&seq, &at, &actor, &target, &data],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    pub(super) fn audit_read(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let since = to_i64(filter.since_ms.unwrap_or(0));
        let (actor, target) = (filter.actor.clone(), filter.target.clone());
        let limit = to_i64(filter.limit as u64);
        let rows = self.query(move |c| async move {
            c.query(
                "SELECT data FROM tg_audit WHERE at_ms >= $1
                   AND ($2::text IS NULL OR actor = $2)
                   AND ($3::text IS NULL OR target = $3)
                 ORDER BY seq DESC LIMIT $4",
                &[&since, &actor, &target, &limit],
            )
            .await
            .map_err(db)
        })?;
        rows.iter()
            .map(|r| Record::decode(&r.get::<_, Vec<u8>>(0)))
            .collect()
    }

    pub(super) fn audit_walk(
        &self,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), StoreError> {
        // In pages, so a long trail is never held in memory at once.
        const PAGE: i64 = 1000;
        let mut after = 0i64;
        loop {
            let rows = self.query(move |c| async move {
                c.query(
                    "SELECT seq, data FROM tg_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &PAGE],
                )
                .await
                .map_err(db)
            })?;
            for r in &rows {
                after = r.get(0);
                if !visit(Record::decode(&r.get::<_, Vec<u8>>(1))?) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    pub(super) fn audit_remove_before(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let cutoff = to_i64(older_than_ms);
        self.query(move |mut c| async move {
            let tx = c.transaction().await.map_err(db)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .await
                .map_err(db)?;
            let Some(last) = tx
                .query_opt(
                    "SELECT data FROM tg_audit WHERE at_ms < $1 ORDER BY seq DESC LIMIT 1",
                    &[&cutoff],
                )
                .await
                .map_err(db)?
            else {
                return Ok(0);
            };
            let last = Record::decode(&last.get::<_, Vec<u8>>(0))?;
            let anchor = Anchor {
                seq: last.seq,
                hash: last.hash,
            }
            .encode();
            tx.execute(
                "INSERT INTO tg_settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&ANCHOR_KEY, &anchor],
            )
            .await
            .map_err(db)?;
            let removed = tx
                .execute("DELETE FROM tg_audit WHERE seq <= $1", &[&to_i64(last.seq)])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(removed as usize)
        })
    }
}

async fn insert(c: &impl deadpool_postgres::GenericClient, r: &Record) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO tg_audit (seq, at_ms, actor, target, data) VALUES ($1, $2, $3, $4, $5)",
        &[
            &to_i64(r.seq),
            &to_i64(r.at_ms),
            &r.actor,
            &r.target,
            &r.encode(),
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}
