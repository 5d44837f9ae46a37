//! The audit trail on sled: records keyed by their sequence number (big-endian, so the tree
//! iterates in chain order), appended under one mutex (sled admits one process per directory).

use super::{SledStore, io};
use crate::store::StoreError;
use crate::store::trail::{ANCHOR_KEY, Anchor, Entry, Filter, Record, next_link};

impl SledStore {
    pub(super) fn audit_write(&self, entry: &Entry) -> Result<Record, StoreError> {
        let _gate = self.write_gate();
        let _one = self.audit_append.lock().unwrap_or_else(|p| p.into_inner());
        let last = match self.audit.last().map_err(io)? {
            Some((_, v)) => Some(Record::decode(&v)?),
            None => None,
        };
        let anchor = match last {
            Some(_) => None,
            None => self.anchor()?,
        };
        let (seq, prev) = next_link(last, anchor);
        let record = Record::seal(entry, seq, crate::clock::now_ms(), &prev);
        self.audit
            .insert(seq.to_be_bytes(), record.encode())
            .map_err(io)?;
        // An administrative change is rare and its record must survive a crash.
        self.audit.flush().map_err(io)?;
        Ok(record)
    }

    pub(super) fn audit_read(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for item in self.audit.iter().rev() {
            let (_, v) = item.map_err(io)?;
            let r = Record::decode(&v)?;
            if filter.since_ms.is_some_and(|s| r.at_ms < s) {
                break; // older records follow
            }
            if filter.matches(&r) {
                out.push(r);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub(super) fn audit_walk(
        &self,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.audit.iter() {
            let (_, v) = item.map_err(io)?;
            if !visit(Record::decode(&v)?) {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn audit_remove_before(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let _gate = self.write_gate();
        let _one = self.audit_append.lock().unwrap_or_else(|p| p.into_inner());
        let mut doomed = Vec::new();
        for item in self.audit.iter() {
            let (k, v) = item.map_err(io)?;
            let r = Record::decode(&v)?;
            if r.at_ms >= older_than_ms {
                break;
            }
            doomed.push((k, r.seq, r.hash));
        }
        let Some((_, seq, hash)) = doomed.last().cloned() else {
            return Ok(0);
        };
        // The anchor first: a crash between the two leaves records the anchor explains.
        self.settings
            .insert(ANCHOR_KEY, Anchor { seq, hash }.encode())
            .map_err(io)?;
        for (k, _, _) in &doomed {
            self.audit.remove(k).map_err(io)?;
        }
        Ok(doomed.len())
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        self.settings
            .get(ANCHOR_KEY)
            .map_err(io)?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Corrupt(format!("audit anchor: {e}")))
            })
            .transpose()
    }
}
