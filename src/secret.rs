//! Secrets: password hashing (argon2id), token and session-id generation from the OS CSPRNG,
//! keyed hashes (HMAC-SHA256 under the server key) and constant-time comparison.
//!
//! Nothing here knows about HTTP or storage. Every keyed hash carries a domain label so a
//! token tag can never be confused with a session key or a cache key. A secret that must be
//! read back (a TOTP secret) is sealed with AES-256-GCM under a key derived from the server
//! key, bound to its owner, so the store holds nothing a reader could use.

use std::sync::Mutex;

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hmac};

/// Security tokens use these 62 characters (docs/salesforce-protocol.md §5: "case-sensitive alphanumeric").
const TOKEN_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system's random generator failed")]
    Random,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("a sealed secret could not be opened (another installation's, or altered)")]
    Sealed,
}

/// The largest argon2 parameters tokengate configures or verifies with: a stored hash (from a
/// restored backup, say) cannot make one verification take gigabytes or minutes.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
pub const MAX_ARGON2_ITERATIONS: u32 = 16;
pub const MAX_ARGON2_PARALLELISM: u32 = 16;

/// Checks argon2 parameters against the bounds above; the error names the one out of range.
pub fn check_argon2_params(p: &Params) -> Result<(), String> {
    if p.m_cost() > MAX_ARGON2_MEMORY_KIB {
        return Err(format!(
            "memory {} KiB is above the bound of {MAX_ARGON2_MEMORY_KIB} KiB",
            p.m_cost()
        ));
    }
    if p.t_cost() > MAX_ARGON2_ITERATIONS {
        return Err(format!(
            "{} iterations are above the bound of {MAX_ARGON2_ITERATIONS}",
            p.t_cost()
        ));
    }
    if p.p_cost() > MAX_ARGON2_PARALLELISM {
        return Err(format!(
            "parallelism {} is above the bound of {MAX_ARGON2_PARALLELISM}",
            p.p_cost()
        ));
    }
    Ok(())
}

/// Checks that a stored password hash is an argon2 PHC string whose parameters are within the
/// bounds (a restore refuses a backup with one that is not).
pub fn check_stored_hash(phc: &str) -> Result<(), String> {
    let h = PasswordHash::new(phc).map_err(|_| "not a PHC password hash".to_owned())?;
    Algorithm::try_from(h.algorithm).map_err(|_| "not an argon2 hash".to_owned())?;
    let params = Params::try_from(&h).map_err(|_| "unreadable argon2 parameters".to_owned())?;
    check_argon2_params(&params)?;
    match (h.salt, h.hash) {
        (Some(salt), Some(hash)) if salt.len() <= 86 && hash.len() <= 64 => Ok(()),
        _ => Err("salt or hash missing or too long".to_owned()),
    }
}

/// A 32-byte keyed hash.
pub type Tag = [u8; 32];

/// Domain labels for the keyed hashes.
#[derive(Clone, Copy)]
pub enum Domain {
    Token,
    Session,
    CredentialCache,
    /// Console recovery codes (second factor).
    Recovery,
    /// The key that seals secrets stored for reading back (`Secrets::seal`).
    Seal,
    /// A refresh token family's id (`auth::refresh`).
    RefreshFamily,
    /// A refresh token (`auth::refresh`).
    RefreshToken,
}

impl Domain {
    fn label(self) -> &'static [u8] {
        match self {
            Domain::Token => b"tokengate token v1\0",
            Domain::Session => b"tokengate session v1\0",
            Domain::CredentialCache => b"tokengate cache v1\0",
            Domain::Recovery => b"tokengate recovery v1\0",
            Domain::Seal => b"tokengate seal v1\0",
            Domain::RefreshFamily => b"tokengate refresh family v1\0",
            Domain::RefreshToken => b"tokengate refresh token v1\0",
        }
    }
}

pub struct Secrets {
    key: hmac::Key,
    params: Params,
    rng: SystemRandom,
    /// argon2 working memory (19 MiB each by default), reused across verifications: allocating
    /// it per call costs page faults, and glibc keeps such freed blocks around per thread
    /// arena, which once grew the process to 800 MiB after 64 hashes.
    buffers: Mutex<Vec<Vec<Block>>>,
}

/// Buffers kept for reuse; callers beyond this allocate (and free) their own.
const KEPT_BUFFERS: usize = 4;

impl Secrets {
    /// `server_key` comes from the store (generated once per installation).
    pub fn new(server_key: &[u8; 32], params: Params) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, server_key),
            params,
            rng: SystemRandom::new(),
            buffers: Mutex::new(Vec::new()),
        }
    }

    pub fn random_bytes<const N: usize>(&self) -> Result<[u8; N], SecretError> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| SecretError::Random)?;
        Ok(b)
    }

    /// A fresh security token: `len` characters of A–Z, a–z, 0–9, uniformly distributed
    /// (rejection sampling keeps the modulo from favouring the first characters).
    pub fn generate_token(&self, len: usize) -> Result<String, SecretError> {
        let mut out = String::with_capacity(len);
        while out.len() < len {
            let buf: [u8; 64] = self.random_bytes()?;
            for b in buf {
                if b < 248 && out.len() < len {
                    out.push(TOKEN_ALPHABET[(b % 62) as usize] as char);
                }
            }
        }
        Ok(out)
    }

    /// A random password for accounts created without one (the demo user, for instance).
    pub fn generate_password(&self) -> Result<String, SecretError> {
        // Tokens are already letters and digits, which every password policy accepts.
        let mut p = self.generate_token(14)?;
        p.push('7');
        Ok(p)
    }

    /// The opaque part of a session id: 32 random bytes, URL-safe base64 without padding
    /// (no XML-special characters, docs/salesforce-protocol.md §3.3).
    pub fn generate_session_secret(&self) -> Result<String, SecretError> {
        let b: [u8; 32] = self.random_bytes()?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
    }

    pub fn tag(&self, domain: Domain, parts: &[&[u8]]) -> Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain.label());
        for p in parts {
            // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    pub fn token_tag(&self, token: &str) -> Tag {
        self.tag(Domain::Token, &[token.as_bytes()])
    }

    /// Constant-time check of a presented token against a stored tag.
    pub fn token_matches(&self, token: &str, stored: &Tag) -> bool {
        let computed = self.token_tag(token);
        constant_time_eq(&computed, stored)
    }

    /// The AES-256-GCM key that seals secrets: derived from the server key, so a backup
    /// (which carries the server key) restores secrets that still open.
    fn seal_key(&self) -> aead::LessSafeKey {
        let key = self.tag(Domain::Seal, &[b"aes-256-gcm"]);
        aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &key).expect("a 32-byte AES-256 key"),
        )
    }

    /// Seals `plain` for `owner` (the owner's id is authenticated with it, so a sealed value
    /// copied onto another record does not open there): a random 96-bit nonce, then the
    /// ciphertext and its tag.
    pub fn seal(&self, owner: &str, plain: &[u8]) -> Result<Vec<u8>, SecretError> {
        let nonce: [u8; aead::NONCE_LEN] = self.random_bytes()?;
        let mut out = plain.to_vec();
        self.seal_key()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(owner.as_bytes()),
                &mut out,
            )
            .map_err(|_| SecretError::Sealed)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    /// Opens what [`Secrets::seal`] sealed for `owner`.
    pub fn open(&self, owner: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err(SecretError::Sealed);
        }
        let (nonce, body) = sealed.split_at(aead::NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Sealed)?;
        let mut buf = body.to_vec();
        let plain = self
            .seal_key()
            .open_in_place(nonce, aead::Aad::from(owner.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Sealed)?;
        Ok(plain.to_vec())
    }

    /// Runs argon2 with a working buffer of `blocks` blocks from the reuse pool.
    fn with_blocks<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut buf = self
            .buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        if buf.len() != blocks {
            buf.resize(blocks, Block::default());
        }
        let out = f(&mut buf);
        let mut pool = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < KEPT_BUFFERS {
            pool.push(buf);
        }
        out
    }

    /// An argon2id PHC string for `password`, with a fresh salt.
    pub fn hash_password(&self, password: &str) -> Result<String, SecretError> {
        use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
        let salt: [u8; 16] = self.random_bytes()?;
        let mut out = [0u8; 32];
        let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        self.with_blocks(self.params.block_count(), |blocks| {
            a.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
        })
        .map_err(|e| SecretError::Hash(e.to_string()))?;
        // The PHC string format (argon2's reference encoding, unpadded standard base64).
        Ok(format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost(),
            B64.encode(salt),
            B64.encode(out)
        ))
    }

    /// Verifies with the parameters embedded in the PHC string, so hashes made under older
    /// parameters keep working after a configuration change. CPU-bound (~35 ms): callers run it
    /// on the bounded hashing pool, never on the async executor.
    pub fn verify_password(&self, phc: &str, password: &str) -> bool {
        let Ok(h) = PasswordHash::new(phc) else {
            return false;
        };
        let (Ok(params), Ok(algorithm)) = (Params::try_from(&h), Algorithm::try_from(h.algorithm))
        else {
            return false;
        };
        if check_argon2_params(&params).is_err() || h.hash.is_some_and(|o| o.len() > 64) {
            return false;
        }
        let version = match h.version.map(Version::try_from) {
            None => Version::V0x13,
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
            return false;
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out = vec![0u8; expected.len()];
        let a = Argon2::new(algorithm, version, params.clone());
        let computed = self.with_blocks(params.block_count(), |blocks| {
            a.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        });
        computed.is_ok() && constant_time_eq(&out, expected.as_bytes())
    }
}

/// A comparison whose time does not depend on where the inputs differ (`subtle`); inputs of
/// different lengths differ, and their lengths are not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(&[7u8; 32], Params::new(1024, 1, 1, None).unwrap())
    }

    #[test]
    fn tokens_have_the_requested_length_and_alphabet() {
        let s = secrets();
        for len in [16, 24, 64] {
            let t = s.generate_token(len).unwrap();
            assert_eq!(t.len(), len);
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_ne!(s.generate_token(24).unwrap(), s.generate_token(24).unwrap());
    }

    #[test]
    fn token_tags_verify_only_the_same_token() {
        let s = secrets();
        let tag = s.token_tag("AbCdEfGhIjKlMnOpQrStUvWx");
        assert!(s.token_matches("AbCdEfGhIjKlMnOpQrStUvWx", &tag));
        assert!(!s.token_matches("abCdEfGhIjKlMnOpQrStUvWx", &tag));
        let other = Secrets::new(&[8u8; 32], Params::new(1024, 1, 1, None).unwrap());
        assert!(!other.token_matches("AbCdEfGhIjKlMnOpQrStUvWx", &tag));
    }

    #[test]
    fn domains_and_length_prefixes_separate_tags() {
        let s = secrets();
        assert_ne!(
            s.tag(Domain::Token, &[b"x"]),
            s.tag(Domain::Session, &[b"x"])
        );
        assert_ne!(
            s.tag(Domain::CredentialCache, &[b"ab", b"c"]),
            s.tag(Domain::CredentialCache, &[b"a", b"bc"])
        );
    }

    #[test]
    fn passwords_hash_to_argon2id_and_verify() {
        let s = secrets();
        let phc = s.hash_password("Passw0rd").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(s.verify_password(&phc, "Passw0rd"));
        assert!(!s.verify_password(&phc, "passw0rd"));
        assert!(!s.verify_password("not a phc string", "Passw0rd"));
    }

    #[test]
    fn stored_hashes_with_parameters_beyond_the_bounds_are_refused() {
        let s = secrets();
        let ok = s.hash_password("Passw0rd").unwrap();
        assert!(check_stored_hash(&ok).is_ok());
        let huge = ok.replace("m=1024,t=1,p=1", "m=4194304,t=1,p=1");
        assert!(check_stored_hash(&huge).unwrap_err().contains("memory"));
        assert!(!s.verify_password(&huge, "Passw0rd"), "not even tried");
        let slow = ok.replace("m=1024,t=1,p=1", "m=1024,t=100000,p=1");
        assert!(check_stored_hash(&slow).unwrap_err().contains("iterations"));
        assert!(check_stored_hash("plain text").is_err());
    }

    #[test]
    fn hashes_interoperate_with_the_standard_phc_encoder_and_verifier() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        let s = secrets();
        let params = Params::new(1024, 1, 1, None).unwrap();
        let standard = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let phc = standard
            .hash_password(
                b"Passw0rd",
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(s.verify_password(&phc, "Passw0rd"));
        assert!(!s.verify_password(&phc, "Passw0rD"));
        let ours = s.hash_password("Passw0rd").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(standard.verify_password(b"Passw0rd", &parsed).is_ok());
        // A hash made under other parameters still verifies (parameters come from the string).
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(2048, 2, 1, None).unwrap(),
        )
        .hash_password(
            b"Passw0rd",
            &SaltString::encode_b64(b"fedcba9876543210").unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(s.verify_password(&other, "Passw0rd"));
    }

    #[test]
    fn sealed_secrets_open_only_for_their_owner_and_key() {
        let s = secrets();
        let sealed = s
            .seal("005000000000001AAA", b"twenty bytes secret!")
            .unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"twenty"));
        assert_eq!(
            s.open("005000000000001AAA", &sealed).unwrap(),
            b"twenty bytes secret!"
        );
        assert!(s.open("005000000000002AAA", &sealed).is_err());
        let other = Secrets::new(&[8u8; 32], Params::new(1024, 1, 1, None).unwrap());
        assert!(other.open("005000000000001AAA", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(s.open("005000000000001AAA", &altered).is_err());
        assert!(s.open("005000000000001AAA", &sealed[..10]).is_err());
        assert_ne!(
            sealed,
            s.seal("005000000000001AAA", b"twenty bytes secret!")
                .unwrap()
        );
    }

    #[test]
    fn session_secrets_are_url_safe() {
        let sid = secrets().generate_session_secret().unwrap();
        assert!(sid.len() >= 43);
        assert!(
            sid.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
