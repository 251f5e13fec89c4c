//! Bearer tokens: 32 random bytes from the OS, written as 64 lowercase hex characters.
//!
//! Invariants:
//! * only [`hash`] of a token is ever stored or compared; the clear token exists once,
//!   when a cluster is created, on the admin's stdout;
//! * nothing here logs, and no type here derives `Debug` over a token.

use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new random token. Panics only when the OS has no randomness, in which case
/// issuing a predictable credential would be worse than stopping.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)] // see the doc comment: no randomness, no tokens
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    let mut out = String::with_capacity(64);
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// SHA-256 of the token's bytes: what the database keeps and lookups compare.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| HEX.contains(&c)));
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
    }
}
