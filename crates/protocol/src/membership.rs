//! [`MembershipDigest`]: a small summary of a set of record ids, so that a device and a server
//! can find which records one holds and the other does not without listing them all.
//!
//! Keys are `(collection, id)` pairs ([`RecordKey`]). Selective sync needs it (docs/access.md,
//! "How reads are enforced"; docs/protocol.md, "Selective sync"). When a session starts (and
//! when filtering starts on an open connection), the server summarises the records the device
//! may see and the device the records it holds. Only the buckets whose hashes differ need
//! their ids exchanged. Matching summaries cost a few bytes, and a difference of `d`
//! records costs about `d` buckets of ids.
//!
//! A bucket's hash is the XOR of the 64-bit hashes of its ids, so adding or removing one id
//! costs one XOR: a server can keep a device's summary up to date while the session lasts.
//! XOR sums can be made to collide on purpose, but a device that lies about what it holds
//! gains nothing: what it may see is decided by what the server sends, never by this summary.

use blazedb_format::Uuid;
use sha2::{Digest, Sha256};

/// The most buckets a summary may have: 2^`MAX_LEVEL`.
pub const MAX_LEVEL: u8 = 12;

/// About how many ids a bucket holds at the level [`MembershipDigest::level_for`] picks.
const IDS_PER_BUCKET: usize = 16;

/// One record, named as everywhere in the protocol: its collection and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub collection: String,
    pub id: Uuid,
}

impl RecordKey {
    pub fn new(collection: impl Into<String>, id: Uuid) -> RecordKey {
        RecordKey {
            collection: collection.into(),
            id,
        }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

/// The 64-bit hash of one record key: the first 8 bytes of the SHA-256 of the collection
/// name's length (8 bytes, big-endian), the name and the id. Record ids are UUIDv7, whose first bytes are a timestamp, so keys are hashed
/// before bucketing, to spread them evenly.
pub fn key_hash(key: &RecordKey) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((key.collection.len() as u64).to_be_bytes());
    hasher.update(key.collection.as_bytes());
    hasher.update(key.id.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let (first, _) = digest.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
    u64::from_be_bytes(*first)
}

/// A summary of a set of record keys: 2^`level` buckets, each the XOR of the hashes
/// ([`key_hash`]) of the ids that fall in it (by the hash's top `level` bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipDigest {
    level: u8,
    buckets: Vec<u64>,
}

/// Two summaries of different levels cannot be compared bucket by bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("membership summaries of levels {ours} and {theirs} cannot be compared")]
pub struct LevelMismatch {
    pub ours: u8,
    pub theirs: u8,
}

impl MembershipDigest {
    /// The level for a set of about `count` ids: enough buckets for about 16 ids each, at
    /// most 2^[`MAX_LEVEL`].
    pub fn level_for(count: usize) -> u8 {
        let buckets = count.div_ceil(IDS_PER_BUCKET).max(1);
        let level = usize::BITS - (buckets - 1).leading_zeros();
        u8::try_from(level).map_or(MAX_LEVEL, |l| l.min(MAX_LEVEL))
    }

    /// An empty summary of 2^`level` buckets (`level` at most [`MAX_LEVEL`]).
    pub fn empty(level: u8) -> MembershipDigest {
        let level = level.min(MAX_LEVEL);
        MembershipDigest {
            level,
            buckets: vec![0; 1 << level],
        }
    }

    /// The summary of `ids` at `level`.
    pub fn of<'a>(level: u8, keys: impl IntoIterator<Item = &'a RecordKey>) -> MembershipDigest {
        let mut digest = MembershipDigest::empty(level);
        for key in keys {
            digest.toggle(key);
        }
        digest
    }

    /// The summary's level: it has 2^level buckets.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// The bucket hashes, in bucket order.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// The bucket `key` falls in at this summary's level.
    pub fn bucket_of(&self, key: &RecordKey) -> usize {
        bucket(key_hash(key), self.level)
    }

    /// The bucket `key` falls in at `level` (at most [`MAX_LEVEL`]).
    pub fn bucket_at(level: u8, key: &RecordKey) -> usize {
        bucket(key_hash(key), level.min(MAX_LEVEL))
    }

    /// A summary made of bucket hashes received from a peer; `None` unless there are
    /// exactly 2^`level` of them and `level` is at most [`MAX_LEVEL`].
    pub fn from_buckets(level: u8, buckets: Vec<u64>) -> Option<MembershipDigest> {
        (level <= MAX_LEVEL && buckets.len() == 1 << level)
            .then_some(MembershipDigest { level, buckets })
    }

    /// Adds `id` if it is not counted, removes it if it is: the set must know which (XOR
    /// cannot tell). Adding an id twice cancels it out.
    pub fn toggle(&mut self, key: &RecordKey) {
        let hash = key_hash(key);
        if let Some(slot) = self.buckets.get_mut(bucket(hash, self.level)) {
            *slot ^= hash;
        }
    }

    /// The buckets whose hashes differ between the two summaries, in order: every id that
    /// one set holds and the other does not falls in one of them (unless hashes collide,
    /// about 2^-64 per bucket for ids that are not chosen to collide).
    pub fn differing(&self, other: &MembershipDigest) -> Result<Vec<usize>, LevelMismatch> {
        if self.level != other.level {
            return Err(LevelMismatch {
                ours: self.level,
                theirs: other.level,
            });
        }
        Ok(self
            .buckets
            .iter()
            .zip(&other.buckets)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(n, _)| n)
            .collect())
    }
}

/// The bucket of a hash at `level`: its top `level` bits.
fn bucket(hash: u64, level: u8) -> usize {
    if level == 0 {
        0
    } else {
        usize::try_from(hash >> (64 - u32::from(level))).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn key(seed: u128) -> RecordKey {
        RecordKey::new("bugs", Uuid::from_u128(seed))
    }

    fn ids(seeds: &BTreeSet<u128>) -> Vec<RecordKey> {
        seeds.iter().map(|s| key(*s)).collect()
    }

    #[test]
    fn one_id_in_two_collections_is_two_keys() {
        let id = Uuid::from_u128(7);
        let a = MembershipDigest::of(0, &[RecordKey::new("bugs", id)]);
        let b = MembershipDigest::of(0, &[RecordKey::new("comments", id)]);
        assert_ne!(a, b);
        let both = MembershipDigest::of(
            0,
            &[RecordKey::new("bugs", id), RecordKey::new("comments", id)],
        );
        assert_ne!(both, MembershipDigest::empty(0));
    }

    #[test]
    fn received_buckets_must_fit_the_level() {
        assert!(MembershipDigest::from_buckets(2, vec![0; 4]).is_some());
        assert!(MembershipDigest::from_buckets(2, vec![0; 3]).is_none());
        assert!(
            MembershipDigest::from_buckets(MAX_LEVEL + 1, vec![0; 1 << (MAX_LEVEL + 1)]).is_none()
        );
    }

    #[test]
    fn the_level_gives_about_sixteen_ids_a_bucket_up_to_the_cap() {
        assert_eq!(MembershipDigest::level_for(0), 0);
        assert_eq!(MembershipDigest::level_for(16), 0);
        assert_eq!(MembershipDigest::level_for(17), 1);
        assert_eq!(MembershipDigest::level_for(1_000), 6);
        assert_eq!(MembershipDigest::level_for(usize::MAX), MAX_LEVEL);
        assert_eq!(MembershipDigest::empty(40).level(), MAX_LEVEL);
    }

    #[test]
    fn summaries_of_different_levels_are_not_compared() {
        let a = MembershipDigest::empty(2);
        let b = MembershipDigest::empty(3);
        assert_eq!(a.differing(&b), Err(LevelMismatch { ours: 2, theirs: 3 }));
    }

    proptest! {
        #[test]
        fn the_order_ids_come_in_does_not_matter(
            seeds in proptest::collection::btree_set(any::<u128>(), 0..200),
            level in 0..=MAX_LEVEL,
        ) {
            let ids = ids(&seeds);
            let forward = MembershipDigest::of(level, &ids);
            let backward = MembershipDigest::of(level, ids.iter().rev());
            prop_assert_eq!(forward, backward);
        }

        #[test]
        fn removing_what_was_added_gives_back_the_summary(
            seeds in proptest::collection::btree_set(any::<u128>(), 0..100),
            extra in any::<u128>(),
            level in 0..=8u8,
        ) {
            let ids = ids(&seeds);
            let before = MembershipDigest::of(level, &ids);
            let mut after = before.clone();
            after.toggle(&key(extra));
            prop_assert_ne!(&after, &before);
            after.toggle(&key(extra));
            prop_assert_eq!(after, before);
        }

        /// What one side holds and the other does not is found in the differing buckets,
        /// and buckets that do not differ hold the same ids on both sides.
        #[test]
        fn differing_buckets_hold_exactly_the_difference(
            common in proptest::collection::btree_set(any::<u128>(), 0..300),
            only_a in proptest::collection::btree_set(any::<u128>(), 0..20),
            only_b in proptest::collection::btree_set(any::<u128>(), 0..20),
        ) {
            let a: BTreeSet<u128> = common.union(&only_a).copied().collect();
            let b: BTreeSet<u128> = common.union(&only_b).copied().collect();
            let level = MembershipDigest::level_for(a.len().max(b.len()));
            let da = MembershipDigest::of(level, &ids(&a));
            let db = MembershipDigest::of(level, &ids(&b));
            let differing: BTreeSet<usize> = da.differing(&db).unwrap().into_iter().collect();
            for seed in a.symmetric_difference(&b) {
                prop_assert!(differing.contains(&da.bucket_of(&key(*seed))));
            }
            for seed in a.intersection(&b) {
                let n = da.bucket_of(&key(*seed));
                if !differing.contains(&n) {
                    continue;
                }
                // A differing bucket must hold some id of the difference.
                prop_assert!(a.symmetric_difference(&b).any(|s| da.bucket_of(&key(*s)) == n));
            }
            prop_assert!(differing.len() <= a.symmetric_difference(&b).count());
        }
    }
}
