//! Fuzzing entry point for the JWT verifier and the JWKS reader (`fuzz/fuzz_targets/jwt.rs`,
//! and `tests/fuzz_corpus.rs` replays the committed seeds). Not a stable API.
//!
//! Input: the first byte picks the entry point. `0`: the rest is a JWKS document; if it
//! is taken, every key has one of the three algorithms and the set is not empty. Else:
//! the rest is a token, verified against the keys of `tests/keys/jwks.json` with `jti`
//! required and a maximum age; if accepted, it has `jti` and `iat`, and a second use of
//! it is refused as a replay.

use super::jwt::{JwtVerifier, KeySet};
use super::AuthError;
use std::time::Duration;

const JWKS: &str = include_str!("../../tests/keys/jwks.json");
const NOW: u64 = 1_700_000_000;

/// Runs one input; panics on a broken invariant.
pub fn jwt(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which == 0 {
        if let Ok(set) = KeySet::from_jwks(text) {
            assert!(!set.keys().is_empty());
        }
        return;
    }
    let v = JwtVerifier::from_keys(KeySet::from_jwks(JWKS).expect("fixture JWKS"))
        .max_age(Duration::from_secs(600))
        .require_jti(true);
    if let Ok(claims) = v.verify(text, NOW) {
        assert!(claims.get("jti").is_some() && claims.iat.is_some());
        assert_eq!(v.verify(text, NOW), Err(AuthError::Replayed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valid_seeds_are_accepted_so_the_fuzzer_starts_past_the_signature() {
        let v = JwtVerifier::from_keys(KeySet::from_jwks(JWKS).unwrap()).max_age(Duration::from_secs(600));
        for seed in [
            &include_bytes!("../../fuzz/corpus/jwt/token-valid-kid")[..],
            include_bytes!("../../fuzz/corpus/jwt/token-valid-no-kid"),
        ] {
            let token = std::str::from_utf8(&seed[1..]).unwrap();
            assert!(v.verify(token, NOW).is_ok(), "{token}");
            jwt(seed);
        }
        let old = include_bytes!("../../fuzz/corpus/jwt/token-old-iat");
        assert_eq!(v.verify(std::str::from_utf8(&old[1..]).unwrap(), NOW), Err(AuthError::TooOld));
    }
}
