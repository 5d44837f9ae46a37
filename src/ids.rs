//! Salesforce-style record ids: a 3-character key prefix (`005` users, `00D` orgs, `00e`
//! profiles), 12 base-62 digits, and the 3-character suffix that makes the id
//! case-insensitively unique (the 18-character form clients read from `userId`),
//! [`OrgId`], the organization id the configuration names, and [`incarnation`], this
//! process's own id. A leaf: it imports no other module of tokengate.

const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Adds the checksum suffix to a 15-character id: each 5-character chunk contributes one
/// character whose bits mark which of its characters are upper case.
pub fn to_18(id15: &str) -> String {
    debug_assert_eq!(id15.len(), 15);
    let mut out = String::with_capacity(18);
    out.push_str(id15);
    for chunk in id15.as_bytes().chunks(5) {
        let mut flags = 0usize;
        for (i, b) in chunk.iter().enumerate() {
            if b.is_ascii_uppercase() {
                flags |= 1 << i;
            }
        }
        out.push(SUFFIX_ALPHABET[flags] as char);
    }
    out
}

/// An 18-character id with `prefix` (3 characters) and `n` as its base-62 number.
pub fn from_number(prefix: &str, mut n: u64) -> String {
    debug_assert_eq!(prefix.len(), 3);
    let mut digits = [b'0'; 12];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let mut id15 = String::with_capacity(15);
    id15.push_str(prefix);
    id15.push_str(std::str::from_utf8(&digits).expect("ascii"));
    to_18(&id15)
}

/// A Salesforce-style organization id: 15 case-sensitive characters and the 18-character form
/// with its case-insensitive checksum suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgId {
    pub id15: String,
    pub id18: String,
}

impl OrgId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (s.len() == 15 || s.len() == 18)
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
            && s.starts_with("00D");
        if !ok {
            return None;
        }
        let id15 = s[..15].to_owned();
        let id18 = to_18(&id15);
        if s.len() == 18 && !s.eq_ignore_ascii_case(&id18) {
            return None;
        }
        Some(Self { id15, id18 })
    }
}

/// This process's id, written into the pending tokens it is delivering: a pending token with
/// another id was left by a process that stopped mid-rotation. Random, never 0 (records
/// written before owners existed carry 0, and count as left behind).
pub fn incarnation() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        loop {
            let id = u64::from_be_bytes(
                ring::rand::generate::<[u8; 8]>(&rng)
                    .expect("the OS random generator works")
                    .expose(),
            );
            if id != 0 {
                return id;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matches_salesforce_examples() {
        assert_eq!(to_18("00D000000000001"), "00D000000000001EAA");
        // From the grouparoo recording: org 00D4S000000oz4e -> 00D4S000000oz4eUAA.
        assert_eq!(to_18("00D4S000000oz4e"), "00D4S000000oz4eUAA");
    }

    #[test]
    fn numbers_become_distinct_ids() {
        assert_eq!(from_number("005", 1), "005000000000001AAA");
        assert_ne!(from_number("005", 62), from_number("005", 1));
        assert_eq!(from_number("005", 62).len(), 18);
    }

    #[test]
    fn org_ids_parse_in_both_forms() {
        let short = OrgId::parse("00D4S000000oz4e").unwrap();
        assert_eq!(short.id15, "00D4S000000oz4e");
        assert_eq!(short.id18, "00D4S000000oz4eUAA");
        // The suffix is case-insensitive; the 15 characters before it are not.
        assert_eq!(OrgId::parse("00D4S000000oz4euaa"), Some(short.clone()));
        assert_eq!(OrgId::parse("00D4S000000oz4eUAA"), Some(short));
        assert_eq!(OrgId::parse("00D4S000000oz4eXAA"), None);
        for bad in [
            "",
            "001000000000001",
            "00D00000000001",
            "00D0000000000010",
            "00D00000000000!",
        ] {
            assert_eq!(OrgId::parse(bad), None, "{bad}");
        }
    }
}
