//! Replay protection: where the `jti` of each accepted token is recorded until the token
//! expires, so that the same token is refused the second time.
//!
//! [`JwtVerifier::require_jti`](super::JwtVerifier::require_jti) calls
//! [`ReplayStore::claim`] last, once every other check has passed: forged, expired or
//! otherwise invalid tokens never use up an id. [`SeenSet`] is the local store, bounded
//! by expiry and by a capacity; `wsloop::redis::RedisReplayStore` (feature `redis`) is
//! shared by every node using the same Redis.

use super::AuthError;
use ring::digest::{digest, SHA256};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

/// Records used token ids.
pub trait ReplayStore: Send + Sync + fmt::Debug {
    /// Records `jti` as used until `until_unix` (seconds since the epoch), at `now_unix`.
    /// `Ok` the first time; [`AuthError::Replayed`] when it is already recorded and not
    /// past its time; a 503 error ([`AuthError::ReplayCheckUnavailable`],
    /// [`AuthError::ReplayCacheFull`]) when the store cannot tell, and then the token is
    /// refused: the check fails closed.
    fn claim(&self, jti: &str, until_unix: u64, now_unix: u64) -> Result<(), AuthError>;
}

/// The ids seen by this process, each kept until its token's expiry and then forgotten.
///
/// Ids are stored as their SHA-256 digest: an entry costs the same (about 100 bytes
/// with the two indexes) whatever the length of the `jti`, so the capacity bounds the
/// memory. When the set holds `capacity` ids whose tokens have not expired, a new id is
/// refused with [`AuthError::ReplayCacheFull`] (503, `Retry-After: 1`): forgetting an id
/// early would let its token be replayed, so the safe side is to refuse new tokens until
/// old ones expire. Size `capacity` for the tokens accepted per token lifetime.
pub struct SeenSet {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Digest to expiry.
    by_id: HashMap<[u8; 32], u64>,
    /// (expiry, digest), earliest first: what to forget next.
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

impl SeenSet {
    /// An empty set that holds at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        SeenSet { capacity, inner: Mutex::new(Seen::default()) }
    }

    /// Ids held now, expired ones not yet forgotten included.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_id.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayStore for SeenSet {
    fn claim(&self, jti: &str, until_unix: u64, now_unix: u64) -> Result<(), AuthError> {
        let id: [u8; 32] = digest(&SHA256, jti.as_bytes()).as_ref().try_into().expect("SHA-256 is 32 bytes");
        let mut seen = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what has expired: each id is removed once, so this is amortised O(log n).
        while let Some(&(until, old)) = seen.by_expiry.first() {
            if until > now_unix {
                break;
            }
            seen.by_expiry.pop_first();
            seen.by_id.remove(&old);
        }
        if seen.by_id.contains_key(&id) {
            return Err(AuthError::Replayed);
        }
        if seen.by_id.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        seen.by_id.insert(id, until_unix);
        seen.by_expiry.insert((until_unix, id));
        Ok(())
    }
}

impl fmt::Debug for SeenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeenSet").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_refused_until_its_expiry_then_forgotten() {
        let s = SeenSet::new(10);
        assert_eq!(s.claim("a", 100, 10), Ok(()));
        assert_eq!(s.claim("a", 100, 11), Err(AuthError::Replayed));
        assert_eq!(s.claim("a", 100, 99), Err(AuthError::Replayed));
        assert_eq!(s.claim("b", 50, 11), Ok(()));
        assert_eq!(s.len(), 2);
        // At 100 both have expired: forgotten, and "a" may be recorded again.
        assert_eq!(s.claim("a", 200, 100), Ok(()));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_set_refuses_new_ids_and_never_forgets_a_live_one() {
        let s = SeenSet::new(3);
        for id in ["a", "b", "c"] {
            assert_eq!(s.claim(id, 100, 0), Ok(()));
        }
        assert_eq!(s.claim("d", 100, 1), Err(AuthError::ReplayCacheFull));
        assert_eq!(AuthError::ReplayCacheFull.status(), 503);
        // The refused id was not recorded, the live ones were not dropped to make room.
        for id in ["a", "b", "c"] {
            assert_eq!(s.claim(id, 100, 2), Err(AuthError::Replayed), "{id}");
        }
        assert_eq!(s.len(), 3);
        // Once they expire there is room again.
        assert_eq!(s.claim("d", 200, 100), Ok(()));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn long_ids_cost_one_digest() {
        let s = SeenSet::new(2);
        let long = "x".repeat(6000);
        assert_eq!(s.claim(&long, 10, 0), Ok(()));
        assert_eq!(s.claim(&long, 10, 0), Err(AuthError::Replayed));
        assert_eq!(s.claim(&long[..5999], 10, 0), Ok(()));
    }
}
