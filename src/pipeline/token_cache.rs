//! Each worker thread remembers the tokens it verified, so a client's next request with the
//! same token skips the signature, the base64 and the JSON and goes straight to the checks
//! that depend on the request.
//!
//! What a hit skips, and why that is safe:
//! - **The signature and the parse**: a remembered token is byte-for-byte one this worker
//!   verified, against the same key set and the same config. Entries are bound to both
//!   snapshots: when either is replaced (a key added, rotated or revoked, a config reload),
//!   the next request on the worker forgets every entry before it looks.
//! - **Nothing that depends on the clock or the request**: `exp`, `nbf`, `iat` and `aud` are
//!   checked again on every hit ([`Verifier::check_claims`]); a token that has expired is
//!   forgotten and verified in full, which refuses it with the usual reason. The route's
//!   scopes, the organization and the impersonation header are checked by
//!   [`super::authorize`] on every request, hit or not: the cache holds a [`Grant`], never a
//!   decision.
//! - Only tokens that verified are remembered; a refused one is verified in full every time.
//!
//! Lookup is by a keyed hash (SipHash with this thread's random key) of the token's last
//! [`HASHED_BYTES`] (its signature, a MAC of everything before it: two tokens that differ
//! there differ anywhere), then a constant-time comparison of the whole token, so neither the
//! table's layout nor the comparison's timing tells a client anything about the tokens
//! remembered.
//!
//! Bounded: at most `[auth] token_cache_entries` tokens per worker, each at most
//! [`MAX_CACHED_TOKEN_BYTES`]. Two generations: new and used tokens go into the young table;
//! when it holds half the entries it becomes the old one and the previous old one is dropped,
//! so tokens in use survive and forgotten ones go within two turns.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};

use subtle::ConstantTimeEq;

use super::authorize::Grant;
use crate::error::GatewayError;
use crate::gateway::Snapshot;
use crate::keys::KeySet;

/// Longer tokens are verified every time: this bounds a cache's memory whatever the clients
/// send (a State Backed token is a few hundred bytes).
pub const MAX_CACHED_TOKEN_BYTES: usize = 4096;

/// How much of a token's end is hashed: HS256's whole signature (43 characters), most of
/// HS384's and HS512's. Tokens that share it share a slot: the comparison tells them apart,
/// and only one that verified replaces the other. SipHash's key keeps a client from choosing
/// a slot.
const HASHED_BYTES: usize = 43;

/// One worker's remembered tokens.
pub struct TokenCache {
    /// The snapshots the entries were verified against. `Weak`: a replaced snapshot is not
    /// kept alive by an idle worker, and its address cannot be reused while this points at it.
    bound: Option<(Weak<Snapshot>, Weak<KeySet>)>,
    /// At most `half` entries each.
    young: Table,
    old: Table,
    half: usize,
    hasher: RandomState,
    /// Lookups since [`TokenCache::take_counts`]: found, or verified in full.
    hits: u64,
    misses: u64,
}

/// Keyed by the token's SipHash; the entry holds the token to compare.
type Table = HashMap<u64, Entry, BuildHasherDefault<Prehashed>>;

struct Entry {
    token: Box<[u8]>,
    grant: Arc<Grant>,
}

/// The keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            bound: None,
            young: Table::default(),
            old: Table::default(),
            half: 0,
            hasher: RandomState::new(),
            hits: 0,
            misses: 0,
        }
    }
}

impl TokenCache {
    /// The [`Grant`] of `token`: remembered, or verified now (and remembered if it verifies).
    pub fn grant(
        &mut self,
        snapshot: &Arc<Snapshot>,
        keys: &Arc<KeySet>,
        token: &str,
        now: u64,
    ) -> Result<Arc<Grant>, GatewayError> {
        let verify = || {
            snapshot
                .verifier
                .verify(keys, token, now)
                .map(|verified| Arc::new(Grant::new(verified)))
        };
        self.bind(snapshot, keys);
        if self.half == 0 || token.len() > MAX_CACHED_TOKEN_BYTES {
            return verify();
        }
        let hash = self
            .hasher
            .hash_one(&token.as_bytes()[token.len().saturating_sub(HASHED_BYTES)..]);
        if let Some(grant) = self.find(hash, token) {
            match snapshot.verifier.check_claims(&grant.claims, now, &mut ()) {
                Ok(()) => {
                    self.hits += 1;
                    return Ok(grant);
                }
                // Expired (or not yet valid): forgotten, and refused below with the reason a
                // full verification gives.
                Err(_) => self.forget(hash),
            }
        }
        self.misses += 1;
        let grant = verify()?;
        self.remember(hash, token, grant.clone());
        Ok(grant)
    }

    /// The hits and misses since the last call (for the metrics, which the cache does not
    /// know: tests run several gateways on one thread).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.hits),
            std::mem::take(&mut self.misses),
        )
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything when the snapshots differ from the ones the entries were made with.
    fn bind(&mut self, snapshot: &Arc<Snapshot>, keys: &Arc<KeySet>) {
        let same = self.bound.as_ref().is_some_and(|(s, k)| {
            std::ptr::eq(s.as_ptr(), Arc::as_ptr(snapshot))
                && std::ptr::eq(k.as_ptr(), Arc::as_ptr(keys))
        });
        if !same {
            self.young = Table::default();
            self.old = Table::default();
            self.half = snapshot.config.auth.token_cache_entries / 2;
            self.bound = Some((Arc::downgrade(snapshot), Arc::downgrade(keys)));
        }
    }

    /// The entry for `token`, moved to the young table if it was in the old one.
    fn find(&mut self, hash: u64, token: &str) -> Option<Arc<Grant>> {
        let same = |entry: &Entry| same_bytes(&entry.token, token.as_bytes());
        if let Some(entry) = self.young.get(&hash) {
            return same(entry).then(|| entry.grant.clone());
        }
        // Another token in the slot stays where it is: only a verified one replaces it.
        if !same(self.old.get(&hash)?) {
            return None;
        }
        let entry = self.old.remove(&hash).expect("just found");
        let grant = entry.grant.clone();
        self.insert_young(hash, entry);
        Some(grant)
    }

    fn forget(&mut self, hash: u64) {
        self.young.remove(&hash);
        self.old.remove(&hash);
    }

    fn remember(&mut self, hash: u64, token: &str, grant: Arc<Grant>) {
        // A different token with the same hash (or an expired entry) is replaced.
        self.old.remove(&hash);
        let entry = Entry {
            token: token.as_bytes().into(),
            grant,
        };
        self.insert_young(hash, entry);
    }

    fn insert_young(&mut self, hash: u64, entry: Entry) {
        if self.young.len() >= self.half && !self.young.contains_key(&hash) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, entry);
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths (which are not
/// secret: a token's length is on the wire). Eight bytes at a time; `subtle` for the verdict.
/// (`subtle`'s own slice comparison fences every byte: ~3,900 instructions for a 290-byte
/// token, against ~200 here.)
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u64, |d, (x, y)| d | u64::from(x ^ y));
    let diff = a_words
        .zip(b_words)
        .fold(tail, |d, (x, y)| d | (word(x) ^ word(y)));
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_is_equality() {
        let text = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        for len in [0, 1, 7, 8, 9, 16, 17, text.len()] {
            let a = &text[..len];
            assert!(same_bytes(a, a));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 0x40;
                assert!(!same_bytes(a, &b), "differs at {i} of {len}");
            }
            assert!(!same_bytes(a, &text[..len.saturating_sub(1)]) || len == 0);
        }
    }
}
