//! The audit trail: one record per administrative change, whoever made it and through
//! whichever door (admin API, console, CLI, or tokengate's own scheduled work).
//!
//! Records are append-only and chained: each carries the SHA-256 of the one before it, so a
//! record edited, removed or inserted in the middle breaks the chain, and [`verify`] names the
//! first record where it breaks. The store assigns the sequence number and the previous hash
//! under one lock (one process on sled; an advisory lock on PostgreSQL), so replicas writing at
//! once still build one chain. Retention removes the oldest records and keeps the hash of the
//! last one removed (the anchor), so what remains still verifies. The record types and the
//! chain's arithmetic are `store::trail`, re-exported here.
//!
//! What the chain does not do: someone who can write the database and recompute every hash
//! can rewrite history end to end. Every record is therefore also a structured log line (target
//! `tokengate::audit`) for a log store the database's writers cannot reach.
//!
//! Never a secret: a record says which fields changed and from what to what, and passwords,
//! tokens and second-factor secrets are not fields of what it compares (`admin::UserView`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The records, their chain and the query filter are the store's types (its trait takes and
/// returns them); this module writes, verifies and exports them.
pub use crate::store::trail::{
    ANCHOR_KEY, Actor, Anchor, Change, Channel, Entry, Filter, GENESIS, Record, next_link,
};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit trail is broken at record {seq}: {reason}")]
    Broken { seq: u64, reason: String },
}

impl Filter {
    /// The filter a query string or form asks for (`since`, `actor`, `target`, `limit`; empty
    /// values ignored), for the admin API and the console alike; the error names the field.
    pub fn from_query<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        default_limit: usize,
    ) -> Result<Self, &'static str> {
        let get = |k: &str| get(k).map(str::trim).filter(|v| !v.is_empty());
        let since_ms = match get("since") {
            None => None,
            Some(s) => Some(crate::history::parse_since(s).ok_or(
                "since must be an RFC 3339 time (2026-01-31T00:00:00Z) or a duration (24h, 7d)",
            )?),
        };
        let limit = match get("limit").map(str::parse::<usize>) {
            None => default_limit,
            Some(Ok(n)) if (1..=100_000).contains(&n) => n,
            Some(_) => return Err("limit must be 1 to 100000"),
        };
        Ok(Self {
            since_ms,
            actor: get("actor").map(str::to_owned),
            target: get("target").map(crate::domain::canonical_username),
            limit,
        })
    }
}

/// The fields of `before` and `after` (JSON objects) that differ, in `after`'s field order
/// (then fields only `before` has). Values are shown as their JSON text, strings unquoted.
pub fn diff(before: Option<&serde_json::Value>, after: Option<&serde_json::Value>) -> Vec<Change> {
    use serde_json::Value;
    let empty = serde_json::Map::new();
    let obj = |v: Option<&Value>| v.and_then(Value::as_object).unwrap_or(&empty).clone();
    let (b, a) = (obj(before), obj(after));
    let text = |v: Option<&Value>| {
        v.map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => "none".to_owned(),
            other => other.to_string(),
        })
    };
    let mut out = Vec::new();
    for (k, v) in &a {
        if b.get(k) != Some(v) {
            out.push(Change {
                field: k.clone(),
                before: text(b.get(k)),
                after: text(Some(v)),
            });
        }
    }
    for (k, v) in &b {
        if !a.contains_key(k) {
            out.push(Change {
                field: k.clone(),
                before: text(Some(v)),
                after: None,
            });
        }
    }
    out
}

/// Appends to the store's trail, logs each record for a SIEM and counts it.
pub struct Audit {
    store: Arc<dyn Store>,
    recorded: crate::metrics::Count,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    pub fn new(store: Arc<dyn Store>, recorded: crate::metrics::Count) -> Self {
        Self { store, recorded }
    }

    /// Records `entry`. The change it describes has already been made: a record that cannot
    /// be stored is still logged in full (at error level), so it reaches the log store.
    pub fn record(&self, entry: Entry) -> Option<Record> {
        match self.store.audit_append(&entry) {
            Ok(r) => {
                self.recorded.inc();
                tracing::info!(
                    target: "tokengate::audit",
                    seq = r.seq,
                    actor = %r.actor,
                    address = %r.address,
                    channel = r.channel.as_str(),
                    action = %r.action,
                    target_name = %r.target,
                    changes = %r.describe_changes(),
                    hash = %r.hash,
                    "audit"
                );
                Some(r)
            }
            Err(e) => {
                tracing::error!(
                    target: "tokengate::audit",
                    actor = %entry.actor.name,
                    address = %entry.actor.address,
                    channel = entry.actor.channel.as_str(),
                    action = entry.action,
                    target_name = %entry.target,
                    changes = %entry.describe_changes(),
                    error = %e,
                    "audit record could not be stored"
                );
                None
            }
        }
    }

    pub fn query(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        self.store.audit_query(filter)
    }

    /// Removes records older than `older_than_ms` (the leader's retention pass).
    pub fn prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        self.store.audit_prune(older_than_ms)
    }
}

/// What [`verify`] found on an intact trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records before `first_seq` were removed by retention; the chain starts at the anchor.
    pub anchored: bool,
}

/// Walks the whole trail in order and checks every record's hash and link; the error names
/// the first record where the chain breaks.
pub fn verify(store: &dyn Store) -> Result<Verified, AuditError> {
    let anchor = Anchor::load(store)?;
    let mut prev: Option<(u64, String)> = None;
    let mut out = Verified {
        records: 0,
        first_seq: None,
        last_seq: None,
        anchored: false,
    };
    let mut broken: Option<AuditError> = None;
    store.audit_scan(&mut |r: Record| {
        let fail = |reason: String| AuditError::Broken { seq: r.seq, reason };
        let expected_prev = match &prev {
            Some((seq, hash)) => {
                if r.seq != seq + 1 {
                    broken = Some(fail(format!(
                        "record {} follows record {seq}: records in between are missing",
                        r.seq
                    )));
                    return false;
                }
                hash.clone()
            }
            None if r.seq == 1 => GENESIS.to_owned(),
            None => match &anchor {
                Some(a) if a.seq + 1 == r.seq => {
                    out.anchored = true;
                    a.hash.clone()
                }
                // Pruned up to the anchor, but a crash left older records: they chain on
                // their own, and the anchor must match where the chain passes it.
                Some(a) if a.seq >= r.seq => r.prev_hash.clone(),
                _ => {
                    broken = Some(fail(format!(
                        "the trail starts at record {} and no retention anchor explains the \
                         missing records before it",
                        r.seq
                    )));
                    return false;
                }
            },
        };
        if r.prev_hash != expected_prev {
            broken = Some(fail("its previous-record hash does not match".into()));
            return false;
        }
        if r.computed_hash() != r.hash {
            broken = Some(fail("its contents do not match its hash".into()));
            return false;
        }
        if let Some(a) = &anchor
            && a.seq == r.seq
            && a.hash != r.hash
        {
            broken = Some(fail("it does not match the retention anchor".into()));
            return false;
        }
        out.records += 1;
        out.first_seq.get_or_insert(r.seq);
        out.last_seq = Some(r.seq);
        prev = Some((r.seq, r.hash));
        true
    })?;
    match broken {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Records as CSV (RFC 4180), the columns of the console's table.
pub fn to_csv(records: &[Record]) -> String {
    crate::history::csv_table(
        &[
            "seq", "time", "actor", "address", "channel", "action", "target", "changes", "hash",
        ],
        records.iter().map(|r| {
            vec![
                r.seq.to_string(),
                crate::history::format_ms(r.at_ms),
                r.actor.clone(),
                r.address.clone(),
                r.channel.as_str().to_owned(),
                r.action.clone(),
                r.target.clone(),
                r.describe_changes(),
                r.hash.clone(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests;
