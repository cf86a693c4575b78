//! Version vectors: which operations a replica has, per origin node.

use std::collections::BTreeMap;

use crate::ids::{NodeId, OpId};

/// For each origin node, the highest sequence number of that node's operations a replica has.
///
/// Sync delivers each origin's operations in sequence order without gaps (every op log holds
/// them that way), so "highest" also means "all of them up to here": `contains(op)` is exact.
/// Origins with nothing are absent (never stored as 0), so equal vectors compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// An empty vector: no operations at all.
    pub fn new() -> Self {
        VersionVector(BTreeMap::new())
    }

    /// Highest sequence number of `origin`'s operations (0 for none).
    pub fn get(&self, origin: NodeId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Does the replica have this operation?
    pub fn contains(&self, op: OpId) -> bool {
        op.seq <= self.get(op.origin)
    }

    /// Raises `origin`'s entry to at least `seq` (0 changes nothing).
    pub fn observe(&mut self, origin: NodeId, seq: u64) {
        if seq > 0 {
            let entry = self.0.entry(origin).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// Records that the replica has `op` (and, by the no-gaps rule, every earlier op of its origin).
    pub fn observe_op(&mut self, op: OpId) {
        self.observe(op.origin, op.seq);
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&origin, &seq) in &other.0 {
            self.observe(origin, seq);
        }
    }

    /// Entries in node id order, each with a sequence number ≥ 1.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(&n, &s)| (n, s))
    }

    /// Number of origins with at least one operation.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no origin has an operation.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of operations described (the sum of all entries).
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (origin, seq) in iter {
            v.observe(origin, seq);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn node(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    #[test]
    fn contains_means_every_op_up_to_the_entry() {
        let v: VersionVector = [(node(1), 3)].into_iter().collect();
        assert!(v.contains(OpId {
            origin: node(1),
            seq: 1
        }));
        assert!(v.contains(OpId {
            origin: node(1),
            seq: 3
        }));
        assert!(!v.contains(OpId {
            origin: node(1),
            seq: 4
        }));
        assert!(!v.contains(OpId {
            origin: node(2),
            seq: 1
        }));
    }

    #[test]
    fn zero_entries_are_not_stored_so_equal_vectors_compare_equal() {
        let a: VersionVector = [(node(1), 0), (node(2), 5)].into_iter().collect();
        let b: VersionVector = [(node(2), 5)].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn merge_takes_the_pointwise_maximum() {
        let mut a: VersionVector = [(node(1), 3), (node(2), 1)].into_iter().collect();
        let b: VersionVector = [(node(2), 4), (node(3), 2)].into_iter().collect();
        a.merge(&b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [(node(1), 3), (node(2), 4), (node(3), 2)]
        );
        assert_eq!(a.total(), 9);
    }
}
