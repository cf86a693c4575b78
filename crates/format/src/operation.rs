//! [`Operation`]: one insert, update or delete as it travels between replicas.

use uuid::Uuid;

use crate::ids::{OpId, Stamp};
use crate::value::{Date, Fields};

/// What an operation does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Creates (or re-creates) the record with exactly these fields.
    Insert,
    /// Sets these fields; other fields keep their values.
    Update,
    /// Deletes the record.
    Delete,
}

impl OpKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            OpKind::Insert => 1,
            OpKind::Update => 2,
            OpKind::Delete => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(OpKind::Insert),
            2 => Some(OpKind::Update),
            3 => Some(OpKind::Delete),
            _ => None,
        }
    }
}

/// One change, as written to the op log and sent to other replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Unique id: origin node and its sequence number.
    pub id: OpId,
    /// Lamport time of the change on its origin.
    pub lamport: u64,
    /// Wall-clock time on the origin when the change was made (informational: lag, telemetry;
    /// never used to order writes).
    pub wall: Date,
    pub kind: OpKind,
    pub collection: String,
    pub record: Uuid,
    /// For inserts all fields, for updates only the changed ones, for deletes none.
    pub fields: Fields,
}

impl Operation {
    /// The stamp every field write of this operation carries.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            lamport: self.lamport,
            node: self.id.origin,
        }
    }
}
