//! Random identifiers for connections, nodes and epochs.

use std::sync::Arc;

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` random base62 characters.
pub fn random_base62(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new connection id: `c_` and 12 base62 characters (71 bits).
pub fn connection_id() -> Arc<str> {
    format!("c_{}", random_base62(12)).into()
}
