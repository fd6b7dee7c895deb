//! One-time codes: six uniformly random digits, stored only as SHA-256 over a
//! per-code random salt and the code, compared in constant time.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// Digits in a code.
pub const CODE_DIGITS: usize = 6;
/// Bytes of salt per code.
const SALT_LEN: usize = 16;

/// The operating system's random generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// A fresh code in clear (to send) and what is stored of it.
#[derive(Clone)]
pub struct Issued {
    /// The code, to hand to the notifier and then forget.
    pub code: String,
    /// The salt stored beside the hash.
    pub salt: [u8; SALT_LEN],
    /// SHA-256(salt ‖ code).
    pub hash: [u8; 32],
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { .. }")
    }
}

/// Draws a new code.
pub fn issue(rng: &SystemRandom) -> Result<Issued, RandomError> {
    // Rejection sampling keeps every code equally likely: 4_294_000_000 is the largest
    // multiple of 10^6 below 2^32.
    const LIMIT: u32 = 4_294_000_000;
    let n = loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b).map_err(|_| RandomError)?;
        let v = u32::from_le_bytes(b);
        if v < LIMIT {
            break v % 1_000_000;
        }
    };
    let code = format!("{n:06}");
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt).map_err(|_| RandomError)?;
    let hash = hash(&salt, &code);
    Ok(Issued { code, salt, hash })
}

/// SHA-256(salt ‖ code).
pub fn hash(salt: &[u8], code: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(code.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether `code` matches the stored salt and hash; the hash comparison takes the same
/// time wherever the hashes differ.
pub fn matches(salt: &[u8], stored_hash: &[u8], code: &str) -> bool {
    let computed = hash(salt, code);
    stored_hash.len() == computed.len() && bool::from(computed.ct_eq(stored_hash))
}

/// Random bytes, e.g. for session tokens.
pub fn random_bytes<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| RandomError)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_verify_only_themselves() {
        let rng = SystemRandom::new();
        let a = issue(&rng).unwrap();
        assert_eq!(a.code.len(), CODE_DIGITS);
        assert!(a.code.bytes().all(|b| b.is_ascii_digit()));
        assert!(matches(&a.salt, &a.hash, &a.code));
        let wrong = format!("{:06}", (a.code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(!matches(&a.salt, &a.hash, &wrong));
        assert!(!matches(&a.salt, &a.hash[..31], &a.code));
        assert!(!matches(&[0u8; 16], &a.hash, &a.code), "the salt matters");
        assert_eq!(format!("{a:?}"), "Issued { .. }");
    }

    #[test]
    fn same_code_different_salt_different_hash() {
        let rng = SystemRandom::new();
        let a = issue(&rng).unwrap();
        let b = hash(&random_bytes::<16>(&rng).unwrap(), &a.code);
        assert_ne!(a.hash, b);
    }
}
