//! What a keep-alive connection remembers of the credential it presented last
//! ([`LastCredential`]): an integration logs in once and sends the same session id, or the
//! same HTTP Basic credentials, on every call of a connection, so the keyed hash that names
//! the credential (the session table's key, the credential cache's key) is computed once per
//! connection instead of once per call.
//!
//! Only that hash is skipped. The session is still looked up and checked, and a Basic
//! credential still goes through the credential cache and the user's current record, on every
//! call: a change made elsewhere (a logout, a disable, a new token) is refused on the very
//! next call of the connection.
//!
//! The presented bytes are compared in full and in constant time (`subtle`), although they
//! are the connection's own: a proxy in front of tokengate may send many clients' calls over
//! one connection (only the lengths of the previous credential's parts could tell, by
//! nanoseconds: a part of another length is told apart sooner). They are zeroed when replaced
//! and when the connection ends (`zeroize`): for Basic they hold the password.

use std::sync::Mutex;

use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

use crate::secret::Tag;

/// Which kind of credential a remembered key names: a session id and a Basic credential
/// with the same bytes are different credentials, with keys in different tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    Basic,
}

/// A connection's last credential and its key (module docs). Held by the connection. An
/// HTTP/1.1 connection's requests come one at a time; an HTTP/2 connection's streams share
/// it, each reading or replacing it whole under the lock.
#[derive(Default)]
pub struct LastCredential(Mutex<Option<Remembered>>);

struct Remembered {
    kind: Kind,
    /// The credential's parts, one after the other, and where each but the last ends.
    presented: Zeroizing<Vec<u8>>,
    split: usize,
    key: Tag,
}

impl LastCredential {
    /// The key remembered for this credential, when it is the one the connection presented
    /// last. `parts`: the credential as it names its key (a session id alone; a Basic
    /// credential's canonical username and secret), each compared in full.
    pub fn key(&self, kind: Kind, parts: [&[u8]; 2]) -> Option<Tag> {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let r = slot.as_ref().filter(|r| r.kind == kind)?;
        let (first, second) = r.presented.split_at(r.split);
        // Both halves are compared whatever the first's outcome (`&` on `Choice`).
        let same = first.ct_eq(parts[0]) & second.ct_eq(parts[1]);
        bool::from(same).then_some(r.key)
    }

    /// Remembers `parts`' key, in place of what was remembered before (whose bytes are
    /// zeroed, and whose buffer is reused: a connection that alternates credentials does not
    /// allocate per call).
    pub fn remember(&self, kind: Kind, parts: [&[u8]; 2], key: Tag) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let r = slot.get_or_insert_with(|| Remembered {
            kind,
            presented: Zeroizing::new(Vec::new()),
            split: 0,
            key,
        });
        r.presented.zeroize();
        // One growth at most, so no copy of a part is left behind in a freed buffer.
        r.presented.reserve(parts[0].len() + parts[1].len());
        r.presented.extend_from_slice(parts[0]);
        r.presented.extend_from_slice(parts[1]);
        r.kind = kind;
        r.split = parts[0].len();
        r.key = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_credential_of_the_same_kind_gets_the_key() {
        let last = LastCredential::default();
        assert_eq!(
            last.key(Kind::Basic, [b"alice", b"pw"]),
            None,
            "nothing yet"
        );
        last.remember(Kind::Basic, [b"alice", b"pwTOKEN"], [7; 32]);
        assert_eq!(last.key(Kind::Basic, [b"alice", b"pwTOKEN"]), Some([7; 32]));
        // The same bytes split elsewhere are another user's credential.
        assert_eq!(last.key(Kind::Basic, [b"alicep", b"wTOKEN"]), None);
        assert_eq!(last.key(Kind::Basic, [b"alice", b"pwTOKEn"]), None);
        assert_eq!(last.key(Kind::Basic, [b"alice", b"pwTOKEN!"]), None);
        assert_eq!(last.key(Kind::Basic, [b"bob", b"pwTOKEN"]), None);
        assert_eq!(last.key(Kind::Session, [b"alice", b"pwTOKEN"]), None);
        last.remember(Kind::Session, [b"00D!sid", b""], [9; 32]);
        assert_eq!(last.key(Kind::Session, [b"00D!sid", b""]), Some([9; 32]));
        assert_eq!(
            last.key(Kind::Basic, [b"alice", b"pwTOKEN"]),
            None,
            "one credential is remembered, the last"
        );
    }
}
