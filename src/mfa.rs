//! The console's second factor: who must use it ([`Policy`]), TOTP codes (RFC 6238 with the
//! parameters every authenticator app defaults to: HMAC-SHA-1, 6 digits, 30-second steps, one
//! step either side accepted for clock drift) computed by `totp-rs`, what an authenticator
//! needs to enrol (the base32 secret, the `otpauth://` URI and its QR code, drawn as SVG by
//! `qrcode`), and one-time recovery codes.
//!
//! Nothing here touches the store: the console reads and writes [`crate::store::MfaRecord`]
//! through `Store::update_user`, where single use is decided atomically. Secrets are sealed
//! for their owner by `Secrets::seal` before they are stored; recovery codes are kept as keyed
//! hashes (`Domain::Recovery`), like tokens.

use totp_rs::{Algorithm, Builder};

use crate::secret::{Domain, SecretError, Secrets, Tag, constant_time_eq};
use crate::store::User;

#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("the TOTP parameters were refused: {0}")]
    Totp(String),
    #[error("the QR code could not be drawn: {0}")]
    Qr(String),
}

/// `[console] mfa`: which users must present a second factor to sign in to the console. The
/// setting's values belong to the configuration (which imports nothing of this module); which
/// users it covers is decided here.
pub use crate::config::MfaPolicy as Policy;

impl Policy {
    /// Whether `user` must present a second factor at the console.
    pub fn applies_to(self, user: &User) -> bool {
        match self {
            Policy::Off => false,
            Policy::Admins => user.admin,
            Policy::All => true,
        }
    }
}

/// RFC 4226 §4 asks for at least 128 bits and recommends 160.
pub const SECRET_BYTES: usize = 20;
/// RFC 6238 §4: the time step, in seconds.
pub const STEP_SECS: u64 = 30;
pub const DIGITS: u8 = 6;
/// RFC 6238 §5.2 recommends at most one step of network delay either side.
pub const SKEW_STEPS: u16 = 1;
/// Recovery codes given at each enrolment.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (two groups of five, 50 bits).
const RECOVERY_LEN: usize = 10;
/// Crockford's base32 alphabet, lower case: no i, l, o or u to misread.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A TOTP secret in the clear, held only while a page is drawn or a code checked. No `Debug`,
/// no `Display`: it cannot end up in a log line by accident.
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    pub fn generate(secrets: &Secrets) -> Result<Self, MfaError> {
        Ok(Self(secrets.random_bytes::<SECRET_BYTES>()?.to_vec()))
    }

    /// The secret sealed for `owner` (a user id), as the store keeps it.
    pub fn seal(&self, secrets: &Secrets, owner: &str) -> Result<Vec<u8>, MfaError> {
        Ok(secrets.seal(owner, &self.0)?)
    }

    pub fn open(secrets: &Secrets, owner: &str, sealed: &[u8]) -> Result<Self, MfaError> {
        Ok(Self(secrets.open(owner, sealed)?))
    }

    fn totp(&self, issuer: &str, account: &str) -> Result<totp_rs::Totp, MfaError> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_skew(SKEW_STEPS)
            .with_step_duration(STEP_SECS)
            .with_secret(self.0.clone())
            .with_issuer(Some(label(issuer)))
            .with_account_name(label(account))
            .build()
            .map_err(|e| MfaError::Totp(e.to_string()))
    }

    /// The secret as an authenticator app's manual entry asks for it (RFC 4648 base32).
    pub fn base32(&self) -> String {
        totp_rs::Secret::from(self.0.clone()).to_base32()
    }

    /// The `otpauth://totp/ISSUER:ACCOUNT?secret=...&issuer=ISSUER` URI a QR code carries.
    pub fn uri(&self, issuer: &str, account: &str) -> Result<String, MfaError> {
        self.totp(issuer, account)?
            .to_url()
            .map_err(|e| MfaError::Totp(e.to_string()))
    }

    /// The time step a code is valid for at `now` (Unix seconds), within one step either
    /// side; `None` for a wrong code or one that is not six digits. The caller refuses a step
    /// already used.
    pub fn check(&self, code: &str, now: u64) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // The account and issuer play no part in the code.
        self.totp("tokengate", "user").ok()?.check(&code, now)
    }
}

/// An issuer or account name as the otpauth URI's label allows it: no colon (the separator
/// between the two), no control characters.
fn label(s: &str) -> String {
    let l: String = s
        .chars()
        .map(|c| if c == ':' || c.is_control() { ' ' } else { c })
        .collect();
    let l = l.trim();
    if l.is_empty() {
        "tokengate".to_owned()
    } else {
        l.to_owned()
    }
}

/// The QR code of `uri` as an inline SVG element (drawn here, no external service).
pub fn qr_svg(uri: &str) -> Result<String, MfaError> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| MfaError::Qr(e.to_string()))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    // Inline in HTML the XML declaration has no place.
    Ok(match svg.find("<svg") {
        Some(at) => svg[at..].to_owned(),
        None => svg,
    })
}

/// Fresh recovery codes, as shown to their owner once (`xxxxx-xxxxx`), and the keyed hashes
/// the store keeps of them.
pub fn recovery_codes(secrets: &Secrets, owner: &str) -> Result<(Vec<String>, Vec<Tag>), MfaError> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    let mut tags = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let raw: [u8; RECOVERY_LEN] = secrets.random_bytes()?;
        // 256 is a multiple of 32: every character equally likely.
        let chars: String = raw
            .iter()
            .map(|b| RECOVERY_ALPHABET[usize::from(b % 32)] as char)
            .collect();
        let code = format!("{}-{}", &chars[..5], &chars[5..]);
        tags.push(recovery_tag(secrets, owner, &code).expect("a code just made reads back"));
        codes.push(code);
    }
    Ok((codes, tags))
}

/// The keyed hash of a recovery code as typed (any case, with or without the hyphen and
/// spaces), bound to its owner; `None` when it cannot be one.
pub fn recovery_tag(secrets: &Secrets, owner: &str, typed: &str) -> Option<Tag> {
    let norm: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if norm.len() != RECOVERY_LEN || !norm.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)) {
        return None;
    }
    Some(secrets.tag(Domain::Recovery, &[owner.as_bytes(), norm.as_bytes()]))
}

/// The index of the stored recovery code `tag` matches, compared in constant time with each.
pub fn find_recovery(stored: &[Tag], tag: &Tag) -> Option<usize> {
    let mut found = None;
    for (i, t) in stored.iter().enumerate() {
        if constant_time_eq(t, tag) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(&[7u8; 32], argon2::Params::new(1024, 1, 1, None).unwrap())
    }

    /// RFC 6238 Appendix B's SHA-1 secret ("12345678901234567890"), its 8-digit values cut to
    /// the last six digits (RFC 4226 §5.3: the code is the value modulo 10^digits).
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let s = TotpSecret(b"12345678901234567890".to_vec());
        for (time, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            let six = &eight[2..];
            assert_eq!(s.check(six, time), Some(time / 30), "at {time}");
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_and_no_more() {
        let s = TotpSecret(b"12345678901234567890".to_vec());
        let code = "005924"; // step 41152263 (T = 1234567890)
        let step = 1_234_567_890 / 30;
        assert_eq!(s.check(code, 1_234_567_890 - 30), Some(step));
        assert_eq!(s.check(code, 1_234_567_890 + 30), Some(step));
        assert_eq!(s.check(code, 1_234_567_890 - 60), None);
        assert_eq!(s.check(code, 1_234_567_890 + 60), None);
        assert_eq!(s.check("005 924", 1_234_567_890), Some(step));
        for bad in ["", "00592", "0059245", "00592a", "١٢٣٤٥٦"] {
            assert_eq!(s.check(bad, 1_234_567_890), None, "{bad:?}");
        }
    }

    #[test]
    fn the_uri_names_issuer_and_account_and_carries_the_base32_secret() {
        let s = TotpSecret(b"12345678901234567890".to_vec());
        assert_eq!(s.base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = s.uri("Acme: Corp", "alice@example.com").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Acme%20%20Corp:alice%40example.com?"),
            "{uri}"
        );
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.contains("issuer=Acme%20%20Corp"), "{uri}");
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("GEZDGNBV"));
    }

    #[test]
    fn generated_secrets_are_160_bits_and_seal_for_their_owner() {
        let sec = secrets();
        let a = TotpSecret::generate(&sec).unwrap();
        assert_eq!(a.0.len(), 20);
        assert_ne!(a.0, TotpSecret::generate(&sec).unwrap().0);
        let sealed = a.seal(&sec, "005A").unwrap();
        assert_eq!(TotpSecret::open(&sec, "005A", &sealed).unwrap().0, a.0);
        assert!(TotpSecret::open(&sec, "005B", &sealed).is_err());
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_match_only_as_their_owners() {
        let sec = secrets();
        let (codes, tags) = recovery_codes(&sec, "005A").unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(code.len(), 11);
            let t = recovery_tag(&sec, "005A", code).unwrap();
            assert_eq!(find_recovery(&tags, &t), Some(i));
            // As typed: upper case, no hyphen, spaces.
            let typed = format!(" {} ", code.replace('-', "").to_uppercase());
            assert_eq!(recovery_tag(&sec, "005A", &typed), Some(t));
            let other = recovery_tag(&sec, "005B", code).unwrap();
            assert_eq!(find_recovery(&tags, &other), None);
        }
        assert_eq!(recovery_tag(&sec, "005A", "12345"), None);
        assert_eq!(recovery_tag(&sec, "005A", "iiiii-lllll"), None);
    }

    #[test]
    fn the_policy_reads_its_three_values() {
        let mut u = User::new(
            "005A".into(),
            "a".into(),
            "a@example.com".into(),
            String::new(),
            [0; 32],
            24,
            0,
        );
        assert!(!Policy::parse("admins").unwrap().applies_to(&u));
        assert!(Policy::parse("all").unwrap().applies_to(&u));
        u.admin = true;
        assert!(Policy::Admins.applies_to(&u));
        assert!(!Policy::Off.applies_to(&u));
        assert_eq!(Policy::parse("yes"), None);
    }
}
