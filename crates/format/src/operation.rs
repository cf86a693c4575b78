//! [`Operation`]: one insert, update or delete as it travels between replicas.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::codec::{Encoder, Kind};
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

/// Why a server refused an operation, as it tells the device that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectCode {
    /// The collection is read-only for the writer (or not visible to it at all).
    ReadOnly,
    /// The write rule refuses the record's state before or after the operation.
    Forbidden,
    /// The operation writes a field hidden from the writer.
    HiddenField,
    /// The operation writes a readable value into an end-to-end collection, whose values
    /// the server accepts only sealed (docs/e2e.md).
    NotSealed,
    /// The operation's values are sealed under a key that is not a current key of their
    /// scope: one rotated out (a device lost access), or one never published.
    StaleKey,
}

impl RejectCode {
    /// Every code, in code order.
    pub const ALL: [RejectCode; 5] = [
        RejectCode::ReadOnly,
        RejectCode::Forbidden,
        RejectCode::HiddenField,
        RejectCode::NotSealed,
        RejectCode::StaleKey,
    ];

    /// The byte that stands for the code on the wire and on disk.
    pub fn code(self) -> u8 {
        match self {
            RejectCode::ReadOnly => 1,
            RejectCode::Forbidden => 2,
            RejectCode::HiddenField => 3,
            RejectCode::NotSealed => 4,
            RejectCode::StaleKey => 5,
        }
    }

    /// The code written as `code`, if this version knows it.
    pub fn from_code(code: u8) -> Option<RejectCode> {
        RejectCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectCode::ReadOnly => "the collection is read-only for this user",
            RejectCode::Forbidden => "the write rule refuses the record",
            RejectCode::HiddenField => "the operation writes a hidden field",
            RejectCode::NotSealed => {
                "the operation writes a readable value into an end-to-end collection"
            }
            RejectCode::StaleKey => "the operation is sealed under a key that is no longer current",
        })
    }
}

/// Why a record was purged from this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PurgeReason {
    /// A change to the record itself moved it out of what this replica may read (its team
    /// changed, for example).
    RecordChanged,
    /// The access rules, or the user's teams or role, changed.
    AccessChanged,
    /// This replica asked for less (its sync policy narrowed).
    PolicyChanged,
    /// This device was revoked: it may hold nothing of the database any more.
    DeviceRevoked,
}

impl PurgeReason {
    /// Every reason, in code order.
    pub const ALL: [PurgeReason; 4] = [
        PurgeReason::RecordChanged,
        PurgeReason::AccessChanged,
        PurgeReason::PolicyChanged,
        PurgeReason::DeviceRevoked,
    ];

    /// The byte that stands for the reason on the wire.
    pub fn code(self) -> u8 {
        match self {
            PurgeReason::RecordChanged => 1,
            PurgeReason::AccessChanged => 2,
            PurgeReason::PolicyChanged => 3,
            PurgeReason::DeviceRevoked => 4,
        }
    }

    /// The reason written as `code`, if this version knows it.
    pub fn from_code(code: u8) -> Option<PurgeReason> {
        PurgeReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for PurgeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PurgeReason::RecordChanged => "the record changed and left this device's scope",
            PurgeReason::AccessChanged => "the access rules or the user's teams or role changed",
            PurgeReason::PolicyChanged => "this device's sync policy no longer asks for it",
            PurgeReason::DeviceRevoked => "this device was revoked",
        })
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

    /// The digest of this operation's content (see [`OpDigest`]).
    pub fn digest(&self) -> OpDigest {
        // The bytes of `encode_operation`, with room for a typical operation from the start.
        let mut encoder = Encoder::with_capacity(Kind::Operation, 256);
        encoder.operation(self);
        let hash = Sha256::digest(encoder.finish());
        let mut digest = [0; OpDigest::LEN];
        for (d, h) in digest.iter_mut().zip(hash) {
            *d = h;
        }
        OpDigest(digest)
    }
}

/// The first 8 bytes of SHA-256 over an operation's encoding (`encode_operation`): what two
/// replicas compare to learn whether the operation they both know by one id is the same one.
/// Different content under one id means two database files share a node id (one is a copy
/// of the other). Not a security measure: a node can only forge its own operations, so 64
/// bits only have to make an accidental match unlikely.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpDigest(pub [u8; 8]);

impl OpDigest {
    /// Bytes of a digest.
    pub const LEN: usize = 8;
}

impl fmt::Display for OpDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for OpDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpDigest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::value::Value;

    fn op(seq: u64, name: &str) -> Operation {
        Operation {
            id: OpId {
                origin: NodeId(Uuid::from_u128(7)),
                seq,
            },
            lamport: 3,
            wall: Date::from_unix_millis(1_700_000_000_000),
            kind: OpKind::Insert,
            collection: "bugs".into(),
            record: Uuid::from_u128(9),
            fields: [("title".to_owned(), Value::String(name.into()))].into(),
        }
    }

    #[test]
    fn equal_operations_have_equal_digests_and_any_change_shows() {
        assert_eq!(op(1, "a").digest(), op(1, "a").clone().digest());
        assert_ne!(op(1, "a").digest(), op(1, "b").digest());
        assert_ne!(op(1, "a").digest(), op(2, "a").digest());
        let mut later = op(1, "a");
        later.wall = Date::from_unix_millis(1_700_000_000_001);
        assert_ne!(op(1, "a").digest(), later.digest());
    }

    #[test]
    fn a_digest_shows_as_sixteen_hex_digits() {
        let shown = op(1, "a").digest().to_string();
        assert_eq!(shown.len(), 16);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
