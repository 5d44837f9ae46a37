//! Salesforce-style record ids: a 3-character key prefix (`005` users, `00D` orgs, `00e`
//! profiles), 12 base-62 digits, and the 3-character suffix that makes the id
//! case-insensitively unique (the 18-character form clients read from `userId`).

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
}
