//! The audit trail: one record per administrative change, whoever made it and through
//! whichever door (admin API, console, CLI, or tokengate's own scheduled work).
//!
//! Records are append-only and chained: each carries the SHA-256 of the one before it, so a
//! record edited, removed or inserted in the middle breaks the chain, and [`verify`] names the
//! first record where it breaks. The store assigns the sequence number and the previous hash
//! under one lock (one process on sled; an advisory lock on PostgreSQL), so replicas writing at
//! once still build one chain. Retention removes the oldest records and keeps the hash of the
//! last one removed (the anchor), so what remains still verifies.
//!
//! What the chain does not do: someone who can write the database and recompute every hash
//! can rewrite history end to end. Every record is therefore also a structured log line (target
//! `tokengate::audit`) for a log store the database's writers cannot reach.
//!
//! Never a secret: a record says which fields changed and from what to what, and passwords,
//! tokens and second-factor secrets are not fields of what it compares (`admin::UserView`).

use std::fmt;
use std::sync::Arc;

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The previous hash of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Settings key of the last pruned record's sequence number and hash.
pub const ANCHOR_KEY: &str = "audit_anchor";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit trail is broken at record {seq}: {reason}")]
    Broken { seq: u64, reason: String },
}

/// Which door a change came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Api,
    Console,
    Cli,
    /// tokengate's own scheduled work (rotation) and configuration reloads.
    System,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Console => "console",
            Self::Cli => "cli",
            Self::System => "system",
        }
    }
}

/// Who made a change: an admin's username, `cli:<local user>`, or `system`; from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The client's address (API, console), `local` (CLI), or empty (system).
    pub address: String,
    pub channel: Channel,
}

impl Actor {
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            address: String::new(),
            channel: Channel::System,
        }
    }

    /// A signed-in admin on the API or the console.
    pub fn admin(username: &str, ip: std::net::IpAddr, channel: Channel) -> Self {
        Self {
            name: username.to_owned(),
            address: ip.to_string(),
            channel,
        }
    }

    /// The CLI, run by the local account `local_user`.
    pub fn cli(local_user: &str) -> Self {
        Self {
            name: format!("cli:{local_user}"),
            address: "local".into(),
            channel: Channel::Cli,
        }
    }
}

/// One field that changed; `None` where the field did not exist (created, deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A change about to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub actor: Actor,
    /// What was done, e.g. `user.disable`, `compliance_bcc.set`, `config.reload`.
    pub action: &'static str,
    /// What it was done to: a username, a setting, a file.
    pub target: String,
    pub changes: Vec<Change>,
}

/// A record as stored: the entry, its place in the chain and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    pub actor: String,
    pub address: String,
    pub channel: Channel,
    pub action: String,
    pub target: String,
    pub changes: Vec<Change>,
    /// Hex SHA-256 of the record before (`GENESIS` for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this record's fields above and `prev_hash`.
    pub hash: String,
}

/// The fields the hash covers, in a fixed order (serde_json writes struct fields in
/// declaration order, so the bytes are the same on every writer).
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_ms: u64,
    actor: &'a str,
    address: &'a str,
    channel: Channel,
    action: &'a str,
    target: &'a str,
    changes: &'a [Change],
    prev_hash: &'a str,
}

impl Record {
    /// `entry` as record `seq`, chained to `prev_hash`.
    pub fn seal(entry: &Entry, seq: u64, at_ms: u64, prev_hash: &str) -> Self {
        let mut r = Self {
            seq,
            at_ms,
            actor: entry.actor.name.clone(),
            address: entry.actor.address.clone(),
            channel: entry.actor.channel,
            action: entry.action.to_owned(),
            target: entry.target.clone(),
            changes: entry.changes.clone(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        r.hash = r.computed_hash();
        r
    }

    /// The hash the record's contents call for.
    pub fn computed_hash(&self) -> String {
        let bytes = serde_json::to_vec(&Hashed {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            address: &self.address,
            channel: self.channel,
            action: &self.action,
            target: &self.target,
            changes: &self.changes,
            prev_hash: &self.prev_hash,
        })
        .expect("audit records serialise");
        hex(digest::digest(&digest::SHA256, &bytes).as_ref())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("audit records serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))
    }

    /// "field: before → after; …" for tables and logs.
    pub fn describe_changes(&self) -> String {
        describe(&self.changes)
    }
}

/// "field: before → after; …" (`-` where a field did not exist, `""` for an empty value).
fn describe(changes: &[Change]) -> String {
    let show = |v: &Option<String>| match v {
        Some(s) if s.is_empty() => "\"\"".to_owned(),
        Some(s) => s.clone(),
        None => "-".to_owned(),
    };
    changes
        .iter()
        .map(|c| format!("{}: {} → {}", c.field, show(&c.before), show(&c.after)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last record pruned by retention: where the remaining chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl Anchor {
    pub fn load(store: &dyn Store) -> Result<Option<Self>, StoreError> {
        store
            .setting(ANCHOR_KEY)?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Corrupt(format!("audit anchor: {e}")))
            })
            .transpose()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("anchors serialise")
    }
}

/// Which records to return, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    pub since_ms: Option<u64>,
    /// Exact actor name (`alice`, `cli:root`, `system`).
    pub actor: Option<String>,
    /// Exact target (a canonical username, a setting name).
    pub target: Option<String>,
    pub limit: usize,
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

    pub fn matches(&self, r: &Record) -> bool {
        self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.actor.as_deref().is_none_or(|a| r.actor == a)
            && self.target.as_deref().is_none_or(|t| r.target == t)
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
    recorded: prometheus_client::metrics::counter::Counter,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    pub fn new(
        store: Arc<dyn Store>,
        recorded: prometheus_client::metrics::counter::Counter,
    ) -> Self {
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
                    changes = %describe(&entry.changes),
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

/// The next record after `last` (the newest stored record, or else the anchor): its sequence
/// number and previous hash. Both stores append through this.
pub fn next_link(last: Option<Record>, anchor: Option<Anchor>) -> (u64, String) {
    match (last, anchor) {
        (Some(r), _) => (r.seq + 1, r.hash),
        (None, Some(a)) => (a.seq + 1, a.hash),
        (None, None) => (1, GENESIS.to_owned()),
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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
