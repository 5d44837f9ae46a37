//! The audit trail as the store keeps it: the records ([`Entry`] in, [`Record`] out), how
//! each is sealed and chained to the one before (SHA-256 over a fixed field order), the
//! retention [`Anchor`], and the [`Filter`] a query passes to [`Store::audit_query`]. Both
//! backends append through [`next_link`] and [`Record::seal`], so they build the same chain.
//! Beside the `Store` trait because the trait's methods take and return these types; the
//! writer, the verifier and the CSV form are `crate::audit`, which re-exports everything here.

use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// The previous hash of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Settings key of the last pruned record's sequence number and hash.
pub const ANCHOR_KEY: &str = "audit_anchor";

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

impl Entry {
    /// "field: before → after; …", as its record will describe it.
    pub fn describe_changes(&self) -> String {
        describe(&self.changes)
    }
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
    pub fn matches(&self, r: &Record) -> bool {
        self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.actor.as_deref().is_none_or(|a| r.actor == a)
            && self.target.as_deref().is_none_or(|t| r.target == t)
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
