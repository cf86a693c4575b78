//! Identities and clocks: node ids, operation ids and Lamport stamps.

use std::fmt;

use uuid::Uuid;

/// The identity of one database replica (a "node" in a sync topology).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub Uuid);

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        NodeId(Uuid::new_v4())
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Globally unique id of an operation: the node that made it and that node's sequence number
/// for it (1, 2, 3, … without gaps), so a version vector per origin can describe what a
/// replica has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    pub origin: NodeId,
    pub seq: u64,
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.origin, self.seq)
    }
}

/// A Lamport timestamp made unique by the node that issued it. Stamps are totally ordered by
/// (lamport, node); the greater stamp wins a last-writer-wins register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub lamport: u64,
    pub node: NodeId,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lamport, self.node)
    }
}
