//! [`Message`]: what two nodes say to each other, and its BlazeBinary encoding.
//!
//! A message is one BlazeBinary item of kind [`Kind::Message`]: the two-byte header, one
//! message type byte, then the body of that type. The layout is specified in
//! `docs/protocol.md`; keep the two in step.

use std::fmt;

use blazedb_format::{
    Decoder, Encoder, Kind, NodeId, OpDigest, OpId, Operation, PurgeReason, RejectCode,
    SnapshotRecord, VersionVector,
};

use crate::membership::{MAX_LEVEL, RecordKey};

use crate::error::{DecompressFault, Incompatible, Malformed, ProtocolError, Rule};

/// The protocol version this code speaks (sent in [`Message::Hello`]).
pub const PROTOCOL_VERSION: u16 = 3;
pub use crate::name::MAX_DATABASE_NAME_LEN;
/// Longest reason a [`Message::Close`] may carry, in bytes of UTF-8.
pub const MAX_CLOSE_REASON_LEN: usize = 1024;
/// Longest reason a [`Rejection`] may carry, in bytes of UTF-8.
pub const MAX_REJECT_REASON_LEN: usize = 1024;
/// Longest enrollment token a [`Message::Enroll`] may carry, in bytes of UTF-8.
pub const MAX_TOKEN_LEN: usize = 512;
/// Largest message a compressed payload may expand to: the frame limit, so compression never
/// lets a peer make this side hold more than an uncompressed frame could.
pub const MAX_DECOMPRESSED_LEN: usize = crate::frame::DEFAULT_MAX_FRAME_LEN as usize;
/// Messages whose encoding is at least this many bytes are compressed by
/// [`Message::encode_for`] when the peer accepts [`Capabilities::ZSTD`].
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;
/// The zstd level used for compressed payloads: fast, since batches are compressed on the
/// sync path of every write.
const ZSTD_LEVEL: i32 = 1;

/// Not a message of its own: a zstd-compressed encoding of another message.
const TYPE_COMPRESSED: u8 = 0x7f;
/// The first bytes of a zstd frame (its magic number, 0xFD2FB528 little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The fewest bytes one encoded operation can take: node back-reference (1), seq (1),
/// Lamport (1), wall clock (1), kind (1), collection back-reference (1), record id (16),
/// field count (1). Bounds the capacity reserved for a batch by the bytes actually present.
const MIN_OPERATION_LEN: usize = 23;

/// The fewest bytes one version vector entry of a [`Message::Pull`] can take: node reference
/// (1) and sequence number (1). Bounds the entry count by the bytes actually present.
const MIN_VECTOR_ENTRY_LEN: usize = 2;

/// Most [`OpCheck`]s one [`Message::Pull`] may carry: the sender sends two (the receiver's
/// operation it has last, and its own last), the rest is room for later versions.
pub const MAX_PULL_CHECKS: usize = 4;

/// The fewest bytes one [`OpCheck`] can take: node reference (1), sequence number (1) and
/// digest (8).
const MIN_OP_CHECK_LEN: usize = 2 + OpDigest::LEN;

/// The fewest bytes one record of a [`Message::Snapshot`] can take: collection back-reference
/// (1), record id (16), record state flags (1) and register count (1). Bounds the record count
/// by the bytes actually present.
const MIN_SNAPSHOT_RECORD_LEN: usize = 19;

/// Optional protocol features a node supports, sent in [`Message::Hello`]. A feature is used
/// on a connection only when both sides announce it; unknown bits are kept and ignored, so a
/// newer peer can announce features this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// No optional features.
    pub const NONE: Capabilities = Capabilities(0);
    /// The node decodes zstd-compressed payloads ([`Message::encode_for`]).
    pub const ZSTD: Capabilities = Capabilities(1);
    /// Everything this version of the code supports.
    pub const SUPPORTED: Capabilities = Capabilities::ZSTD;

    /// True when every feature of `other` is in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features both sides support.
    pub fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.contains(Capabilities::ZSTD) {
            names.push("zstd".to_owned());
        }
        let unknown = self.0 & !Capabilities::SUPPORTED.0;
        if unknown != 0 {
            names.push(format!("{unknown:#x}"));
        }
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// Declares [`Message`] from one entry per message: its doc, type byte, fields, how many bytes
/// to reserve for its encoding, the rules a decoder checks beyond the byte layout
/// (`validate`), and its body's encoding and decoding. The enum and every per-type `match`
/// are generated from the entries, so a new message is one entry here (and its section in
/// docs/protocol.md).
///
/// In `validate`, `reserve` and `encode`, the fields are bound by reference; `decode` binds
/// each field with `let` and the entry's message is built from them.
macro_rules! messages {
    ($(
        $(#[$attr:meta])*
        $name:ident = $code:literal as $code_const:ident {
            $( $(#[$field_attr:meta])* $field:ident : $ty:ty ),+ $(,)?
        }
        reserve $reserve:block
        validate $validate:block
        encode($e:ident) $encode:block
        decode($d:ident) { $($decode:tt)* }
    )+) => {
        // Message type codes (first body byte); see docs/protocol.md.
        $( const $code_const: u8 = $code; )+

        /// One message of the sync protocol.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $( $(#[$attr])* $name { $( $(#[$field_attr])* $field: $ty ),+ }, )+
        }

        impl Message {
            /// The type code written as the first body byte.
            pub fn type_code(&self) -> u8 {
                match self { $( Message::$name { .. } => $code_const, )+ }
            }

            /// A short name of the message type, for logs.
            pub fn type_name(&self) -> &'static str {
                match self { $( Message::$name { .. } => stringify!($name), )+ }
            }

            /// The first rule beyond the byte layout this message breaks.
            fn check_rules(&self) -> Result<(), Rule> {
                match self {
                    $( #[allow(unused_variables)] Message::$name { $($field),+ } => $validate, )+
                }
            }

            /// About how many bytes the encoding takes, to reserve them at once.
            fn encoded_len_hint(&self) -> usize {
                match self {
                    $( #[allow(unused_variables)] Message::$name { $($field),+ } => $reserve, )+
                }
            }

            /// Writes the type byte and the body.
            fn encode_body<'a>(&'a self, encoder: &mut Encoder<'a>) {
                encoder.byte(self.type_code());
                match self {
                    $( Message::$name { $($field),+ } => {
                        let $e = &mut *encoder;
                        $encode
                    } )+
                }
            }

            /// Reads the body of a message of type `code`.
            fn decode_body(code: u8, decoder: &mut Decoder<'_>) -> Result<Message, ProtocolError> {
                Ok(match code {
                    $( $code_const => {
                        let $d = &mut *decoder;
                        $($decode)*
                        Message::$name { $($field),+ }
                    } )+
                    code => return Err(Malformed::UnknownMessageType { code }.into()),
                })
            }
        }
    };
}

messages! {
    /// The first message each side sends: who it is and which database it wants to sync.
    /// Versions must match exactly (see [`crate::negotiate_version`]).
    Hello = 0x01 as TYPE_HELLO {
        protocol_version: u16,
        node: NodeId,
        /// Name of the database on the receiving side; 1 to [`MAX_DATABASE_NAME_LEN`] bytes (a
        /// [`crate::DatabaseName`] on every node that hosts one).
        database: String,
        /// The optional features the sender supports.
        capabilities: Capabilities,
        /// The sender's op-log head (its newest position) when it said hello, so the peer
        /// can report catch-up progress. Informational.
        head: u64,
    }
    reserve { 48 + database.len() }
    validate { check_database(database) }
    encode(e) {
        e.varint(u64::from(*protocol_version));
        e.node(*node);
        e.key(database);
        e.varint(capabilities.0);
        e.varint(*head);
    }
    decode(d) {
        let protocol_version =
            u16::try_from(d.varint()?).map_err(|_| invalid(Rule::ProtocolVersionTooLarge))?;
        let node = d.node()?;
        let database = d.key()?;
        check_database(database).map_err(invalid)?;
        let database = database.to_owned();
        let capabilities = Capabilities(d.varint()?);
        let head = d.varint()?;
    }

    /// The operations in the sender's op log at the positions in the half-open range
    /// `(from, to]` that the receiver may lack, in op-log order.
    ///
    /// The sender may leave out operations it knows the receiver has, so `ops` can be empty:
    /// such a message only moves the receiver's cursor to `to`. The ranges of one stream are
    /// contiguous: each `from` is the previous `to` (the first is the [`Message::Pull`]'s
    /// `from`). `from < to` always; a decoder refuses anything else.
    Ops = 0x02 as TYPE_OPS {
        /// Exclusive start of the range: the `to` of the previous `Ops` of this stream.
        from: u64,
        /// Inclusive end of the range: the receiver's cursor once it has applied this batch.
        to: u64,
        ops: Vec<Operation>,
    }
    reserve { 64 * ops.len() + 24 }
    validate { check_range(*from, *to) }
    encode(e) {
        e.varint(*from);
        e.varint(*to);
        e.varint(ops.len() as u64);
        for op in ops {
            e.operation(op);
        }
    }
    decode(d) {
        let from = d.varint()?;
        let to = d.varint()?;
        check_range(from, to).map_err(invalid)?;
        let count = d.length(MIN_OPERATION_LEN)?;
        let mut ops = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            ops.push(d.operation()?);
        }
    }

    /// Acknowledges the `to` of an [`Message::Ops`] received, or the `position` of a snapshot
    /// whose last [`Message::Snapshot`] part was applied: the receiver has durably applied the
    /// sender's op log up to and including `position` (its cursor into the sender's log,
    /// stored with the operations). Informational for the sender (status, lag); correctness
    /// never depends on it.
    Ack = 0x03 as TYPE_ACK {
        position: u64,
        /// The operations of the acknowledged range that the receiver refused (a server
        /// enforcing access rules), each with its code and reason; every other operation
        /// of the range was accepted. A refusal never holds back what follows it.
        rejected: Vec<Rejection>,
    }
    reserve { 16 + rejected.iter().map(|r| 32 + r.reason.len()).sum::<usize>() }
    validate { check_rejections(rejected) }
    encode(e) {
        e.varint(*position);
        e.varint(rejected.len() as u64);
        for rejection in rejected {
            e.node(rejection.op.origin);
            e.varint(rejection.op.seq);
            e.byte(rejection.code.code());
            e.key(&rejection.reason);
        }
    }
    decode(d) {
        let position = d.varint()?;
        let count = d.length(MIN_REJECTION_LEN)?;
        let mut rejected = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let origin = d.node()?;
            let seq = d.varint()?;
            let code = d.byte()?;
            let code = RejectCode::from_code(code).ok_or(Malformed::UnknownRejectCode { code })?;
            let reason = d.key()?.to_owned();
            rejected.push(Rejection { op: OpId { origin, seq }, code, reason });
        }
        check_rejections(&rejected).map_err(invalid)?;
    }

    /// Asks the peer to answer with a [`Message::Pong`] carrying the same nonce.
    Ping = 0x04 as TYPE_PING {
        nonce: u64,
    }
    reserve { 16 }
    validate { Ok(()) }
    encode(e) { e.varint(*nonce); }
    decode(d) { let nonce = d.varint()?; }

    /// The answer to a [`Message::Ping`].
    Pong = 0x05 as TYPE_PONG {
        nonce: u64,
    }
    reserve { 16 }
    validate { Ok(()) }
    encode(e) { e.varint(*nonce); }
    decode(d) { let nonce = d.varint()?; }

    /// The last message before the sender closes the connection.
    Close = 0x06 as TYPE_CLOSE {
        code: CloseCode,
        /// Human-readable detail; at most [`MAX_CLOSE_REASON_LEN`] bytes.
        reason: String,
    }
    reserve { 8 + reason.len() }
    validate { check_reason(reason) }
    encode(e) {
        e.byte(code.code());
        e.key(reason);
    }
    decode(d) {
        let code = d.byte()?;
        let code = CloseCode::from_code(code).ok_or(Malformed::UnknownCloseCode { code })?;
        let reason = d.key()?;
        check_reason(reason).map_err(invalid)?;
        let reason = reason.to_owned();
    }

    /// "Send me your op log after position `from`, and keep streaming new entries as they are
    /// written; I already have every operation `vector` describes, so you may leave those
    /// out." A later `Pull` on the same connection replaces an earlier one (a receiver that
    /// detected a gap asks again this way).
    Pull = 0x07 as TYPE_PULL {
        /// Exclusive start: the receiver's durable cursor into the sender's op log (the `to`
        /// of the last [`Message::Ops`] it applied from this peer; 0 at first).
        from: u64,
        /// The operations the receiver has: all of each origin's, up to the entry's sequence
        /// number.
        vector: VersionVector,
        /// Digests of operations the sender has, for the receiver to compare with its own
        /// (at most [`MAX_PULL_CHECKS`]): a different digest under one id means one of two
        /// database files that share a node id is a copy (see docs/protocol.md, "Copied
        /// databases").
        checks: Vec<OpCheck>,
    }
    reserve { 18 * vector.len() + 24 }
    // A VersionVector holds only entries with seq >= 1, in node order.
    validate { check_checks(checks) }
    encode(e) {
        e.varint(*from);
        write_vector(e, vector);
        e.varint(checks.len() as u64);
        for check in checks {
            e.node(check.node);
            e.varint(check.seq);
            e.raw(&check.digest.0);
        }
    }
    decode(d) {
        let from = d.varint()?;
        let vector = read_vector(d)?;
        let count = d.length(MIN_OP_CHECK_LEN)?;
        if count > MAX_PULL_CHECKS {
            return Err(invalid(Rule::TooManyChecks));
        }
        let mut checks = Vec::with_capacity(count);
        for _ in 0..count {
            let node = d.node()?;
            let seq = d.varint()?;
            if seq == 0 {
                return Err(invalid(Rule::CheckSeqZero));
            }
            let mut digest = [0; OpDigest::LEN];
            digest.copy_from_slice(d.raw(OpDigest::LEN)?);
            checks.push(OpCheck {
                node,
                seq,
                digest: OpDigest(digest),
            });
        }
    }

    /// Sent by a device whose static key the server does not know yet, as its first message
    /// after the secure-channel handshake: a one-time enrollment token an administrator
    /// created. The server binds the device's static key to the token's user, or closes
    /// the connection with [`CloseCode::Unauthorized`].
    Enroll = 0x08 as TYPE_ENROLL {
        /// The token as the administrator handed it out; 1 to [`MAX_TOKEN_LEN`] bytes.
        token: String,
    }
    reserve { 8 + token.len() }
    validate { check_token(token) }
    encode(e) { e.key(token); }
    decode(d) {
        let token = d.key()?;
        check_token(token).map_err(invalid)?;
        let token = token.to_owned();
    }

    /// Part of a snapshot: the sender's records as full replicated states, sent instead of
    /// `Ops` when the receiver's `Pull.from` is before the start of the sender's (compacted)
    /// op log.
    ///
    /// A decoder checks each part alone (part number, `records.len() <= total`), never
    /// against the other parts of the snapshot; the session rules are in `docs/protocol.md`.
    Snapshot = 0x09 as TYPE_SNAPSHOT {
        /// The sender's op-log position the snapshot stands for: the receiver's cursor once
        /// it has applied the last part, and the `from` of the `Ops` that follow.
        position: u64,
        /// 1, 2, 3, ... in order within one snapshot.
        part: u32,
        /// Records in the whole snapshot (for progress); the same in every part, except that
        /// a sender that finds more records while reading them may raise it in a later part.
        /// At least `records.len()`.
        total: u64,
        records: Vec<SnapshotRecord>,
        /// In the last part only: the operations the snapshot includes (per origin, all up
        /// to the sequence number), which the receiver then counts as merged.
        vector: Option<VersionVector>,
    }
    reserve { 64 * records.len() + 18 * vector.as_ref().map_or(0, VersionVector::len) + 40 }
    validate { check_snapshot(*part, *total, records.len()) }
    encode(e) {
        e.varint(*position);
        e.varint(u64::from(*part));
        e.varint(*total);
        e.varint(records.len() as u64);
        for record in records {
            e.key(&record.collection);
            e.uuid(&record.id);
            e.record_state(&record.state);
        }
        match vector {
            None => e.byte(0),
            Some(vector) => {
                e.byte(1);
                write_vector(e, vector);
            }
        }
    }
    decode(d) {
        let position = d.varint()?;
        let part = read_part(d)?;
        let total = d.varint()?;
        let count = d.length(MIN_SNAPSHOT_RECORD_LEN)?;
        // Checked before reading the records, so a part cannot make this side decode more
        // records than it claims to be part of.
        check_snapshot(part, total, count).map_err(invalid)?;
        let mut records = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let collection = d.key()?.to_owned();
            let id = d.uuid()?;
            let state = d.record_state()?;
            records.push(SnapshotRecord {
                collection,
                id,
                state,
            });
        }
        let vector = match d.byte()? {
            0 => None,
            1 => Some(read_vector(d)?),
            _ => return Err(invalid(Rule::SnapshotVectorFlag)),
        };
    }

    /// The receiver has durably applied snapshot part `part` (flow control: the sender keeps
    /// at most a window of unacknowledged parts in flight). `part >= 1`.
    SnapshotAck = 0x0a as TYPE_SNAPSHOT_ACK {
        part: u32,
    }
    reserve { 16 }
    validate { check_part(*part) }
    encode(e) { e.varint(u64::from(*part)); }
    decode(d) { let part = read_part(d)?; }

    /// Sent by a side that filters what it sends (a server enforcing access rules): the
    /// summary of the records the receiver may read, as [`crate::membership`] describes,
    /// at the start of a session and whenever what the receiver may read changes. The
    /// receiver answers with [`Message::Held`].
    Reconcile = 0x0b as TYPE_RECONCILE {
        /// The summary has 2^`level` buckets; at most [`MAX_LEVEL`].
        level: u8,
        /// The bucket hashes, in bucket order: exactly 2^`level` of them.
        buckets: Vec<u64>,
    }
    reserve { 8 + 8 * buckets.len() }
    validate { check_digest(*level, buckets.len()) }
    encode(e) {
        e.byte(*level);
        for bucket in buckets {
            e.raw(&bucket.to_be_bytes());
        }
    }
    decode(d) {
        let level = d.byte()?;
        if level > MAX_LEVEL {
            return Err(invalid(Rule::DigestLevelTooHigh));
        }
        let mut buckets = Vec::with_capacity(1 << level);
        for _ in 0..1usize << level {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(d.raw(8)?);
            buckets.push(u64::from_be_bytes(bytes));
        }
    }

    /// The answer to a [`Message::Reconcile`]: the buckets whose hashes differ from the
    /// sender's own summary at that level, and every record the sender holds in them.
    Held = 0x0c as TYPE_HELD {
        /// The level of the summary answered.
        level: u8,
        /// The differing buckets, in increasing order, each below 2^`level`.
        buckets: Vec<u32>,
        /// The records the sender holds in those buckets.
        records: Vec<RecordKey>,
    }
    reserve { 8 + 4 * buckets.len() + 24 * records.len() }
    validate { check_held(*level, buckets) }
    encode(e) {
        e.byte(*level);
        e.varint(buckets.len() as u64);
        for bucket in buckets {
            e.varint(u64::from(*bucket));
        }
        write_keys(e, records);
    }
    decode(d) {
        let level = d.byte()?;
        let count = d.length(1)?;
        let mut buckets = Vec::with_capacity(count.min(1 << MAX_LEVEL));
        for _ in 0..count {
            let bucket = u32::try_from(d.varint()?).map_err(|_| invalid(Rule::HeldBucketOutOfRange))?;
            buckets.push(bucket);
        }
        check_held(level, &buckets).map_err(invalid)?;
        let records = read_keys(d)?;
    }

    /// Records that entered the receiver's scope, as full replicated states (the fields it
    /// may not read removed): the receiver joins them into its copies, like snapshot
    /// records. They move no cursor.
    Records = 0x0d as TYPE_RECORDS {
        records: Vec<SnapshotRecord>,
    }
    reserve { 64 * records.len() + 8 }
    validate { Ok(()) }
    encode(e) {
        e.varint(records.len() as u64);
        for record in records {
            e.key(&record.collection);
            e.uuid(&record.id);
            e.record_state_compact(&record.state);
        }
    }
    decode(d) {
        let count = d.length(MIN_SNAPSHOT_RECORD_LEN)?;
        let mut records = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let collection = d.key()?.to_owned();
            let id = d.uuid()?;
            let state = d.record_state_compact()?;
            records.push(SnapshotRecord {
                collection,
                id,
                state,
            });
        }
    }

    /// What the sender asks for (a device's sync policy): only these collections (all
    /// when `only` is empty), not those in `except`, records matching `filter` (a filter of
    /// `blazedb query --where`, as JSON text; empty: all), without the fields in
    /// `exclude_fields`. The receiver sends only what both this and its own rules allow,
    /// from now on and as a difference from what it sent before. Sent after `Hello`, before
    /// the first `Pull`, and again whenever the policy changes; an empty policy asks for
    /// everything.
    Policy = 0x0f as TYPE_POLICY {
        only: Vec<String>,
        except: Vec<String>,
        filter: String,
        exclude_fields: Vec<String>,
    }
    reserve { 16 + filter.len() + 24 * (only.len() + except.len() + exclude_fields.len()) }
    validate { check_policy(filter) }
    encode(e) {
        write_names(e, only);
        write_names(e, except);
        e.key(filter);
        write_names(e, exclude_fields);
    }
    decode(d) {
        let only = read_names(d)?;
        let except = read_names(d)?;
        let filter = d.key()?.to_owned();
        check_policy(&filter).map_err(invalid)?;
        let exclude_fields = read_names(d)?;
    }

    /// Records that left the receiver's scope: it removes its copies without a tombstone or
    /// an op-log entry (they still exist elsewhere), and tells its application why.
    Purge = 0x0e as TYPE_PURGE {
        reason: PurgeReason,
        records: Vec<RecordKey>,
    }
    reserve { 8 + 24 * records.len() }
    validate { Ok(()) }
    encode(e) {
        e.byte(reason.code());
        write_keys(e, records);
    }
    decode(d) {
        let code = d.byte()?;
        let reason = PurgeReason::from_code(code).ok_or(Malformed::UnknownPurgeReason { code })?;
        let records = read_keys(d)?;
    }

    /// Sent by a server to a device before its `Hello`, and only then: how each declared
    /// collection travels. A device seals the values of every `sealed` collection before
    /// they leave it (docs/e2e.md), keeping only the `routing_fields` in clear. Collections
    /// not listed are smart. A device remembers what it learns and never sends plaintext of
    /// a collection once it knows it sealed, whatever a later message says.
    Collections = 0x10 as TYPE_COLLECTIONS {
        collections: Vec<CollectionInfo>,
    }
    reserve { 8 + 32 * collections.len() }
    validate { Ok(()) }
    encode(e) {
        e.varint(collections.len() as u64);
        for collection in collections {
            e.key(&collection.name);
            e.byte(u8::from(collection.sealed));
            write_names(e, &collection.routing_fields);
        }
    }
    decode(d) {
        let count = d.length(3)?;
        let mut collections = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let name = d.key()?.to_owned();
            let sealed = match d.byte()? {
                0 => false,
                1 => true,
                _ => return Err(invalid(Rule::CollectionModeUnknown)),
            };
            let routing_fields = read_names(d)?;
            collections.push(CollectionInfo { name, sealed, routing_fields });
        }
    }

    /// Scope keys of end-to-end collections, wrapped to devices (docs/e2e.md), both ways. A
    /// device publishes the keys it made or wrapped for others; the server stores them (it
    /// cannot open them) and delivers each device those wrapped to its static key, at the
    /// start of a session (before its `Hello`) and as they arrive. `previous` carries older
    /// keys sealed under newer ones, so that a member holding only the newest key reads
    /// history.
    Keys = 0x11 as TYPE_KEYS {
        keys: Vec<KeyEnvelope>,
        previous: Vec<PreviousKey>,
    }
    reserve { 16 + 200 * keys.len() + 100 * previous.len() }
    validate { Ok(()) }
    encode(e) {
        e.varint(keys.len() as u64);
        for key in keys {
            write_key_label(e, &key.collection, &key.scope, key.epoch, &key.key);
            e.bytes(&key.recipient);
            e.bytes(&key.wrapped);
        }
        e.varint(previous.len() as u64);
        for p in previous {
            write_key_label(e, &p.collection, &p.scope, p.epoch, &p.key);
            e.raw(&p.under);
            e.bytes(&p.sealed);
        }
    }
    decode(d) {
        // The smallest envelope: two one-byte strings, epoch, presence byte, key id, and two
        // empty byte strings (10 bytes); the smallest previous key, 13.
        let count = d.length(10)?;
        let mut keys = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let (collection, scope, epoch, key) = read_key_label(d)?;
            let recipient = d.bytes()?.to_vec();
            let wrapped = d.bytes()?.to_vec();
            keys.push(KeyEnvelope { collection, scope, epoch, key, recipient, wrapped });
        }
        let count = d.length(13)?;
        let mut previous = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let (collection, scope, epoch, key) = read_key_label(d)?;
            let under = key_id(d)?;
            let sealed = d.bytes()?.to_vec();
            previous.push(PreviousKey { collection, scope, epoch, key, under, sealed });
        }
    }

    /// Sent by a server to a device that holds a scope key: wrap key `key` (of the label
    /// given) to each of `recipients` (devices the rules let read the scope that lack it),
    /// or, when `key` is `None`, make the scope's key of `epoch` (a rotation: a device lost
    /// access), wrap it to `recipients`, and seal the scope's current keys under it. The
    /// device answers with [`Message::Keys`].
    KeyTask = 0x12 as TYPE_KEY_TASK {
        collection: String,
        scope: String,
        epoch: u32,
        key: Option<[u8; 4]>,
        /// Static public keys (65 bytes: P-256; 32: X25519).
        recipients: Vec<Vec<u8>>,
    }
    reserve { 24 + collection.len() + scope.len() + 72 * recipients.len() }
    validate { Ok(()) }
    encode(e) {
        match key {
            Some(key) => write_key_label(e, collection, scope, *epoch, key),
            None => {
                e.key(collection);
                e.key(scope);
                e.varint(u64::from(*epoch));
                e.byte(0);
            }
        }
        e.varint(recipients.len() as u64);
        for recipient in recipients {
            e.bytes(recipient);
        }
    }
    decode(d) {
        let collection = d.key()?.to_owned();
        let scope = d.key()?.to_owned();
        let epoch = u32::try_from(d.varint()?).map_err(|_| invalid(Rule::KeyEpochTooLarge))?;
        let key = match d.byte()? {
            0 => None,
            1 => Some(key_id_bytes(d)?),
            _ => return Err(invalid(Rule::KeyPresenceUnknown)),
        };
        let count = d.length(1)?;
        let mut recipients = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            recipients.push(d.bytes()?.to_vec());
        }
    }
}

/// One scope key wrapped to one device, in a [`Message::Keys`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyEnvelope {
    pub collection: String,
    pub scope: String,
    pub epoch: u32,
    /// The key's id (what sealed values name).
    pub key: [u8; 4],
    /// The static public key of the device it is wrapped to.
    pub recipient: Vec<u8>,
    /// The wrapped key (HPKE; docs/format.md, "Wrapped scope key").
    pub wrapped: Vec<u8>,
}

/// An older scope key sealed under a newer one, in a [`Message::Keys`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PreviousKey {
    /// The older key's label and id.
    pub collection: String,
    pub scope: String,
    pub epoch: u32,
    pub key: [u8; 4],
    /// The id of the newer key it is sealed under.
    pub under: [u8; 4],
    pub sealed: Vec<u8>,
}

fn write_key_label<'a>(
    e: &mut Encoder<'a>,
    collection: &'a str,
    scope: &'a str,
    epoch: u32,
    key: &[u8; 4],
) {
    e.key(collection);
    e.key(scope);
    e.varint(u64::from(epoch));
    e.byte(1);
    e.raw(key);
}

fn read_key_label(d: &mut Decoder<'_>) -> Result<(String, String, u32, [u8; 4]), ProtocolError> {
    let collection = d.key()?.to_owned();
    let scope = d.key()?.to_owned();
    let epoch = u32::try_from(d.varint()?).map_err(|_| invalid(Rule::KeyEpochTooLarge))?;
    if d.byte()? != 1 {
        return Err(invalid(Rule::KeyPresenceUnknown));
    }
    Ok((collection, scope, epoch, key_id_bytes(d)?))
}

fn key_id_bytes(d: &mut Decoder<'_>) -> Result<[u8; 4], ProtocolError> {
    key_id(d)
}

fn key_id(d: &mut Decoder<'_>) -> Result<[u8; 4], ProtocolError> {
    let raw = d.raw(4)?;
    let mut id = [0; 4];
    id.copy_from_slice(raw);
    Ok(id)
}

/// How one collection travels, in a [`Message::Collections`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectionInfo {
    pub name: String,
    /// End to end: values are sealed on the devices and the server cannot read them.
    pub sealed: bool,
    /// The fields a sealed collection keeps in clear (for the server's rules and routing).
    pub routing_fields: Vec<String>,
}

/// One operation a receiver refused, in a [`Message::Ack`]: which, why (a code the
/// device's application can act on), and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rejection {
    pub op: OpId,
    pub code: RejectCode,
    /// At most [`MAX_REJECT_REASON_LEN`] bytes.
    pub reason: String,
}

/// "The operation `seq` of node `node` that I have has digest `digest`", in a
/// [`Message::Pull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpCheck {
    pub node: NodeId,
    /// At least 1.
    pub seq: u64,
    pub digest: OpDigest,
}

/// Why a connection is closed, carried by [`Message::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// The sender is done; nothing went wrong.
    Normal,
    /// The sender is shutting down or restarting; reconnecting later is expected to work.
    GoingAway,
    /// The peer broke the protocol (malformed frame or message, or a message out of place).
    ProtocolError,
    /// The two sides speak different protocol versions.
    VersionMismatch,
    /// The peer is not allowed to sync this database.
    Unauthorized,
    /// The database named in the `Hello` does not exist here.
    UnknownDatabase,
    /// The sender failed on its own side (storage error, bug).
    InternalError,
    /// Two database files share a node id (one is a copy of the other): an operation differs
    /// from the one with the same id here. Reconnecting does not help; the copy needs a new
    /// identity (`blazedb reidentify`).
    CopiedDatabase,
    /// The server's administrator revoked this device: it may hold nothing of the database
    /// any more (its client removes the synced records, by default). Reconnecting does not
    /// help.
    Revoked,
}

impl CloseCode {
    /// Every close code, in code order.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::VersionMismatch,
        CloseCode::Unauthorized,
        CloseCode::UnknownDatabase,
        CloseCode::InternalError,
        CloseCode::CopiedDatabase,
        CloseCode::Revoked,
    ];

    /// True when reconnecting cannot help: the peer refused this node or this database (or
    /// speaks another version), or one of two database files that share a node id is a copy.
    /// A client stops retrying after such a close, sent or received; after the others
    /// (`Normal`, `GoingAway`, `ProtocolError`, `InternalError`) it reconnects with backoff.
    pub fn stops_retrying(self) -> bool {
        matches!(
            self,
            CloseCode::Unauthorized
                | CloseCode::UnknownDatabase
                | CloseCode::VersionMismatch
                | CloseCode::CopiedDatabase
                | CloseCode::Revoked
        )
    }

    /// The WebSocket close code (RFC 6455) of the close frame that follows a sealed `Close`
    /// with this code: 1000 for `Normal`, 1001 for `GoingAway`, 1002 (protocol error) for
    /// `ProtocolError` and `VersionMismatch`, 1011 (internal error) for `InternalError`,
    /// and 1008 (policy violation) for the refusals, `Unauthorized`, `UnknownDatabase` and
    /// `CopiedDatabase`. Informative only: the sealed `Close` says what happened.
    pub fn websocket_close_code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError | CloseCode::VersionMismatch => 1002,
            CloseCode::Unauthorized
            | CloseCode::UnknownDatabase
            | CloseCode::CopiedDatabase
            | CloseCode::Revoked => 1008,
            CloseCode::InternalError => 1011,
        }
    }

    /// The byte written on the wire.
    pub fn code(self) -> u8 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::GoingAway => 1,
            CloseCode::ProtocolError => 2,
            CloseCode::VersionMismatch => 3,
            CloseCode::Unauthorized => 4,
            CloseCode::UnknownDatabase => 5,
            CloseCode::InternalError => 6,
            CloseCode::CopiedDatabase => 7,
            CloseCode::Revoked => 8,
        }
    }

    /// The close code written as `code`, if this version of the protocol knows it.
    pub fn from_code(code: u8) -> Option<CloseCode> {
        Some(match code {
            0 => CloseCode::Normal,
            1 => CloseCode::GoingAway,
            2 => CloseCode::ProtocolError,
            3 => CloseCode::VersionMismatch,
            4 => CloseCode::Unauthorized,
            5 => CloseCode::UnknownDatabase,
            6 => CloseCode::InternalError,
            7 => CloseCode::CopiedDatabase,
            8 => CloseCode::Revoked,
            _ => return None,
        })
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseCode::Normal => "normal close",
            CloseCode::GoingAway => "going away",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::VersionMismatch => "protocol version mismatch",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::UnknownDatabase => "unknown database",
            CloseCode::InternalError => "internal error",
            CloseCode::CopiedDatabase => "copied database",
            CloseCode::Revoked => "device revoked",
        })
    }
}

/// Checks the version a peer sent in its [`Message::Hello`] and returns the version the
/// connection uses. For now the rule is exact equality with [`PROTOCOL_VERSION`]; on a
/// mismatch, send `Close` with [`ProtocolError::close_code`] (that is,
/// [`CloseCode::VersionMismatch`]) and drop the connection.
pub fn negotiate_version(theirs: u16) -> Result<u16, ProtocolError> {
    if theirs == PROTOCOL_VERSION {
        Ok(PROTOCOL_VERSION)
    } else {
        Err(Incompatible::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        }
        .into())
    }
}

/// The wire allows any name of 1 to 255 bytes: a name that is not a valid
/// [`crate::DatabaseName`] is no database anywhere, and is answered `UnknownDatabase`.
pub(crate) fn check_database(name: &str) -> Result<(), Rule> {
    if name.is_empty() {
        Err(Rule::DatabaseNameEmpty)
    } else if name.len() > MAX_DATABASE_NAME_LEN {
        Err(Rule::DatabaseNameTooLong)
    } else {
        Ok(())
    }
}

fn check_reason(reason: &str) -> Result<(), Rule> {
    if reason.len() > MAX_CLOSE_REASON_LEN {
        Err(Rule::CloseReasonTooLong)
    } else {
        Ok(())
    }
}

fn check_token(token: &str) -> Result<(), Rule> {
    if token.is_empty() {
        Err(Rule::TokenEmpty)
    } else if token.len() > MAX_TOKEN_LEN {
        Err(Rule::TokenTooLong)
    } else {
        Ok(())
    }
}

fn check_range(from: u64, to: u64) -> Result<(), Rule> {
    if from < to {
        Ok(())
    } else {
        Err(Rule::EmptyOpsRange)
    }
}

fn check_part(part: u32) -> Result<(), Rule> {
    if part == 0 {
        Err(Rule::SnapshotPartZero)
    } else {
        Ok(())
    }
}

fn check_snapshot(part: u32, total: u64, records: usize) -> Result<(), Rule> {
    check_part(part)?;
    if records as u64 > total {
        Err(Rule::SnapshotOverTotal)
    } else {
        Ok(())
    }
}

fn check_checks(checks: &[OpCheck]) -> Result<(), Rule> {
    if checks.len() > MAX_PULL_CHECKS {
        Err(Rule::TooManyChecks)
    } else if checks.iter().any(|c| c.seq == 0) {
        Err(Rule::CheckSeqZero)
    } else {
        Ok(())
    }
}

fn invalid(rule: Rule) -> ProtocolError {
    ProtocolError::invalid(rule)
}

fn decompress_error(fault: DecompressFault) -> ProtocolError {
    Malformed::Decompress(fault).into()
}

/// A version vector as `Pull` and `Snapshot` carry it: entry count, then node and sequence
/// number per entry, in node order (the order of [`VersionVector::iter`]).
fn write_vector(e: &mut Encoder<'_>, vector: &VersionVector) {
    e.varint(vector.len() as u64);
    for (node, seq) in vector.iter() {
        e.node(node);
        e.varint(seq);
    }
}

/// Reads what [`write_vector`] writes, refusing a non-canonical vector: entries out of node
/// order or repeated, or with sequence number 0 (which a `VersionVector` cannot hold).
fn read_vector(d: &mut Decoder<'_>) -> Result<VersionVector, ProtocolError> {
    let count = d.length(MIN_VECTOR_ENTRY_LEN)?;
    let mut vector = VersionVector::new();
    let mut previous: Option<NodeId> = None;
    for _ in 0..count {
        let node = d.node()?;
        let seq = d.varint()?;
        if previous.is_some_and(|p| p >= node) {
            return Err(invalid(Rule::VectorOutOfOrder));
        }
        if seq == 0 {
            return Err(invalid(Rule::VectorSeqZero));
        }
        vector.observe(node, seq);
        previous = Some(node);
    }
    Ok(vector)
}

/// The fewest bytes one [`Rejection`] can take: node reference (1), sequence number (1),
/// code (1), reason (1).
const MIN_REJECTION_LEN: usize = 4;

fn check_rejections(rejected: &[Rejection]) -> Result<(), Rule> {
    if rejected
        .iter()
        .any(|r| r.reason.len() > MAX_REJECT_REASON_LEN)
    {
        Err(Rule::RejectReasonTooLong)
    } else if rejected.iter().any(|r| r.op.seq == 0) {
        Err(Rule::RejectSeqZero)
    } else {
        Ok(())
    }
}

/// The fewest bytes one [`RecordKey`] can take: collection back-reference (1), id (16).
const MIN_RECORD_KEY_LEN: usize = 17;

fn check_digest(level: u8, buckets: usize) -> Result<(), Rule> {
    if level > MAX_LEVEL {
        Err(Rule::DigestLevelTooHigh)
    } else if buckets != 1 << level {
        Err(Rule::DigestBucketCount)
    } else {
        Ok(())
    }
}

fn check_held(level: u8, buckets: &[u32]) -> Result<(), Rule> {
    if level > MAX_LEVEL {
        return Err(Rule::DigestLevelTooHigh);
    }
    if buckets.iter().any(|b| u64::from(*b) >= 1 << level) {
        return Err(Rule::HeldBucketOutOfRange);
    }
    if buckets.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
        return Err(Rule::HeldBucketsOutOfOrder);
    }
    Ok(())
}

/// Longest filter a [`Message::Policy`] may carry, in bytes.
pub const MAX_POLICY_FILTER_LEN: usize = 16 * 1024;

fn check_policy(filter: &str) -> Result<(), Rule> {
    if filter.len() > MAX_POLICY_FILTER_LEN {
        Err(Rule::PolicyFilterTooLong)
    } else {
        Ok(())
    }
}

fn write_names<'a>(e: &mut Encoder<'a>, names: &'a [String]) {
    e.varint(names.len() as u64);
    for name in names {
        e.key(name);
    }
}

fn read_names(d: &mut Decoder<'_>) -> Result<Vec<String>, ProtocolError> {
    let count = d.length(1)?;
    let mut names = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        names.push(d.key()?.to_owned());
    }
    Ok(names)
}

fn write_keys<'a>(e: &mut Encoder<'a>, keys: &'a [RecordKey]) {
    e.varint(keys.len() as u64);
    for key in keys {
        e.key(&key.collection);
        e.uuid(&key.id);
    }
}

fn read_keys(d: &mut Decoder<'_>) -> Result<Vec<RecordKey>, ProtocolError> {
    let count = d.length(MIN_RECORD_KEY_LEN)?;
    let mut keys = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let collection = d.key()?.to_owned();
        let id = d.uuid()?;
        keys.push(RecordKey { collection, id });
    }
    Ok(keys)
}

/// A snapshot part number: a varint in `1..=u32::MAX`.
fn read_part(d: &mut Decoder<'_>) -> Result<u32, ProtocolError> {
    let part = u32::try_from(d.varint()?).map_err(|_| invalid(Rule::SnapshotPartTooLarge))?;
    check_part(part).map_err(invalid)?;
    Ok(part)
}

impl Message {
    /// An `Ack` of everything up to `position`, refusing nothing.
    pub fn ack(position: u64) -> Message {
        Message::Ack {
            position,
            rejected: Vec::new(),
        }
    }

    /// A `Close` message; a reason longer than [`MAX_CLOSE_REASON_LEN`] bytes is cut at the
    /// last character boundary that fits, so the message is always sendable.
    pub fn close(code: CloseCode, reason: impl Into<String>) -> Message {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON_LEN {
            let mut end = MAX_CLOSE_REASON_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Message::Close { code, reason }
    }

    /// Checks the rules a decoder enforces beyond the byte layout (database name and close
    /// reason lengths, `Ops` range, snapshot part numbers and counts), so a message can be
    /// checked before it is sent: a broken rule is [`LocalFailure::Unsendable`](crate::LocalFailure::Unsendable).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        self.check_rules().map_err(ProtocolError::unsendable)
    }

    /// The message as a BlazeBinary item (a frame's payload). Does not check
    /// [`Message::validate`] (an `Ops` with `from >= to` is encoded as it is, and the peer
    /// refuses it); [`crate::try_encode_frame`] does.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(Kind::Message, self.encoded_len_hint());
        self.encode_body(&mut e);
        e.finish()
    }

    /// The message as a payload for a peer that supports `peer`: compressed with zstd when
    /// the peer accepts [`Capabilities::ZSTD`], the encoding is at least `threshold` bytes,
    /// and compression makes it smaller; otherwise [`Message::encode`].
    ///
    /// A compressed payload is a message item with type `0x7f`: the length of the plain
    /// encoding as a varint, then one zstd frame holding it. [`Message::decode`] reads both
    /// forms.
    pub fn encode_for(&self, peer: Capabilities, threshold: usize) -> Vec<u8> {
        Message::compress_encoded(self.encode(), peer, threshold)
    }

    /// [`Message::encode_for`] for a message already encoded with [`Message::encode`] (a
    /// sender that measures messages by their encoding encodes once).
    pub fn compress_encoded(plain: Vec<u8>, peer: Capabilities, threshold: usize) -> Vec<u8> {
        if !peer.contains(Capabilities::ZSTD) || plain.len() < threshold {
            return plain;
        }
        let Ok(compressed) = zstd::bulk::compress(&plain, ZSTD_LEVEL) else {
            return plain;
        };
        let mut e = Encoder::with_capacity(Kind::Message, compressed.len() + 16);
        e.byte(TYPE_COMPRESSED);
        e.varint(plain.len() as u64);
        let mut out = e.finish();
        out.extend_from_slice(&compressed);
        if out.len() < plain.len() { out } else { plain }
    }

    /// The length of the plain encoding `payload` holds, without decompressing it: a
    /// compressed payload's announced length (at most [`MAX_DECOMPRESSED_LEN`] for a payload
    /// [`Message::decode`] accepts), otherwise the payload's own length. A receiver takes this
    /// much of its memory budget before it decodes.
    pub fn plain_len(payload: &[u8]) -> usize {
        match compressed_header(payload) {
            None | Some(Err(_)) => payload.len(),
            Some(Ok((len, _))) => usize::try_from(len)
                .map_or(MAX_DECOMPRESSED_LEN, |len| len.min(MAX_DECOMPRESSED_LEN)),
        }
    }

    /// Decodes one message from a frame's payload: the whole payload must be one valid
    /// message, with no trailing bytes.
    pub fn decode(payload: &[u8]) -> Result<Message, ProtocolError> {
        Message::decode_weighed(payload).map(|(message, _)| message)
    }

    /// Like [`Message::decode`], also returning about how much memory the decoded message
    /// takes ([`blazedb_format::Decoder::weight`], at most
    /// [`blazedb_format::MAX_DECODED_WEIGHT`]): what a receiver counts against its budget
    /// for the peer.
    pub fn decode_weighed(payload: &[u8]) -> Result<(Message, usize), ProtocolError> {
        if let Some(header) = compressed_header(payload) {
            let (len, offset) = header?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_DECOMPRESSED_LEN)
                .ok_or(decompress_error(DecompressFault::AnnouncedTooLong))?;
            let frame = payload.get(offset..).unwrap_or_default();
            // Exactly one zstd frame: not a skippable frame, not several frames (which zstd
            // would decompress one after the other), nothing after it.
            let one_frame = frame.starts_with(&ZSTD_MAGIC)
                && zstd::zstd_safe::find_frame_compressed_size(frame) == Ok(frame.len());
            if !one_frame {
                return Err(decompress_error(DecompressFault::NotOneFrame));
            }
            // Decompressing into a buffer of the announced capacity: a frame that expands
            // to more is refused by zstd, not allocated.
            let mut plain = Vec::with_capacity(len);
            zstd::zstd_safe::decompress(&mut plain, frame).map_err(|code| {
                decompress_error(DecompressFault::Corrupt {
                    reason: zstd::zstd_safe::get_error_name(code),
                })
            })?;
            if plain.len() != len {
                return Err(decompress_error(DecompressFault::LengthMismatch {
                    expanded: plain.len(),
                    announced: len,
                }));
            }
            if plain.get(2) == Some(&TYPE_COMPRESSED) {
                return Err(decompress_error(DecompressFault::Nested));
            }
            return Message::decode_weighed(&plain);
        }
        let mut d = Decoder::new(payload, Kind::Message)?;
        d.limit_weight(blazedb_format::MAX_DECODED_WEIGHT);
        let code = d.byte()?;
        let message = Message::decode_body(code, &mut d)?;
        let weight = d.weight().saturating_add(std::mem::size_of::<Message>());
        d.finish()?;
        Ok((message, weight))
    }
}

/// For a compressed payload (message type `0x7f`), the announced length of the plain
/// encoding it holds and where its zstd frame starts; `None` for a plain payload.
fn compressed_header(payload: &[u8]) -> Option<Result<(u64, usize), ProtocolError>> {
    if payload.get(2) != Some(&TYPE_COMPRESSED) {
        return None;
    }
    Some((|| {
        let mut d = Decoder::new(payload, Kind::Message)?;
        d.byte()?;
        let len = d.varint()?;
        Ok((len, d.offset()))
    })())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use blazedb_format::{
        Date, DecodeError, FieldState, Fields, MAGIC, OpId, OpKind, RecordState, Stamp, Uuid,
        VERSION, Value, encode_value,
    };

    use super::*;
    use crate::error::LocalFailure;

    fn node(n: u8) -> NodeId {
        NodeId(Uuid::from_bytes([n; 16]))
    }

    fn op(seq: u64, kind: OpKind, fields: &[(&str, Value)]) -> Operation {
        Operation {
            id: OpId {
                origin: node(1),
                seq,
            },
            lamport: seq + 10,
            wall: Date::from_unix_millis(1_700_000_000_000 + seq as i64),
            kind,
            collection: "bugs".to_owned(),
            record: Uuid::from_bytes([seq as u8; 16]),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<Fields>(),
        }
    }

    fn round_trip(message: &Message) -> Vec<u8> {
        let bytes = message.encode();
        assert_eq!(bytes[0], MAGIC);
        assert_eq!(bytes[1], (VERSION << 4) | 6, "kind must be Message");
        assert_eq!(bytes[2], message.type_code());
        assert_eq!(&Message::decode(&bytes).unwrap(), message);
        bytes
    }

    fn header(type_code: u8) -> Vec<u8> {
        vec![MAGIC, (VERSION << 4) | 6, type_code]
    }

    #[test]
    fn a_hello_round_trips() {
        let bytes = round_trip(&Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node: node(7),
            database: "bugs.blazedb".to_owned(),
            capabilities: Capabilities::NONE,
            head: 0,
        });
        // header, type, version, node (0 + 16 bytes), key (len << 1, 12 bytes),
        // capabilities, head
        assert_eq!(bytes.len(), 3 + 1 + 17 + 1 + 12 + 1 + 1);
        assert_eq!(&bytes[bytes.len() - 2..], [0, 0]);
    }

    #[test]
    fn a_hello_with_the_largest_version_and_longest_name_round_trips() {
        round_trip(&Message::Hello {
            protocol_version: u16::MAX,
            node: node(0),
            database: "é".repeat(127) + "x",
            capabilities: Capabilities::NONE,
            head: 0,
        });
    }

    #[test]
    fn an_ops_batch_round_trips() {
        round_trip(&Message::Ops {
            from: 7,
            to: 300,
            ops: vec![
                op(
                    1,
                    OpKind::Insert,
                    &[("title", "Crash".into()), ("priority", Value::Int(1))],
                ),
                op(2, OpKind::Update, &[("title", "Crash on launch".into())]),
                op(3, OpKind::Delete, &[]),
            ],
        });
    }

    #[test]
    fn an_empty_ops_batch_round_trips() {
        let bytes = round_trip(&Message::Ops {
            from: 4,
            to: 5,
            ops: vec![],
        });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_OPS, 4, 5, 0]);
        let bytes = round_trip(&Message::Ops {
            from: 0,
            to: 300,
            ops: vec![],
        });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_OPS, 0, 0xAC, 0x02, 0]);
        round_trip(&Message::Ops {
            from: u64::MAX - 1,
            to: u64::MAX,
            ops: vec![],
        });
    }

    #[test]
    fn an_ops_batch_with_an_empty_or_reversed_range_is_refused() {
        for (from, to) in [(0, 0), (5, 5), (6, 5), (u64::MAX, u64::MAX), (u64::MAX, 0)] {
            let message = Message::Ops {
                from,
                to,
                ops: vec![op(1, OpKind::Delete, &[])],
            };
            assert_eq!(
                Message::decode(&message.encode()),
                Err(ProtocolError::from(Malformed::Invalid(Rule::EmptyOpsRange))),
                "({from}, {to}]"
            );
            assert_eq!(
                message.validate(),
                Err(ProtocolError::from(LocalFailure::Unsendable(
                    Rule::EmptyOpsRange
                )))
            );
        }
    }

    #[test]
    fn operations_in_a_batch_share_the_string_and_node_tables() {
        let one = op(1, OpKind::Update, &[("title", "a".into())]);
        let single = Message::Ops {
            from: 0,
            to: 1,
            ops: vec![one.clone()],
        }
        .encode();
        let mut two = one.clone();
        two.id.seq = 2;
        let pair = Message::Ops {
            from: 0,
            to: 1,
            ops: vec![one, two],
        }
        .encode();
        // The second operation refers back to the node, "bugs", "title" and "a".
        let second_len = pair.len() - single.len();
        // header (2), type, from, to, count
        let first_len = single.len() - 6;
        assert!(
            second_len + 16 + 4 + 5 <= first_len,
            "{second_len} vs {first_len}"
        );
    }

    #[test]
    fn an_ack_round_trips() {
        round_trip(&Message::ack(0));
        round_trip(&Message::ack(u64::MAX));
    }

    #[test]
    fn a_ping_and_a_pong_round_trip() {
        let ping = round_trip(&Message::Ping { nonce: 42 });
        assert_eq!(ping, [MAGIC, 0x16, 0x04, 42]);
        round_trip(&Message::Pong { nonce: 42 });
        round_trip(&Message::Ping { nonce: u64::MAX });
        round_trip(&Message::Pong { nonce: 0 });
    }

    #[test]
    fn a_close_round_trips_with_every_code() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
            round_trip(&Message::Close {
                code,
                reason: format!("closing: {code}"),
            });
        }
        round_trip(&Message::Close {
            code: CloseCode::Normal,
            reason: String::new(),
        });
        round_trip(&Message::Close {
            code: CloseCode::Normal,
            reason: "r".repeat(MAX_CLOSE_REASON_LEN),
        });
    }

    #[test]
    fn close_cuts_a_long_reason_at_a_character_boundary() {
        let message = Message::close(CloseCode::InternalError, "ß".repeat(1000));
        let Message::Close { reason, .. } = &message else {
            panic!("not a close");
        };
        assert_eq!(reason.len(), MAX_CLOSE_REASON_LEN);
        assert!(message.validate().is_ok());
        let odd = Message::close(CloseCode::InternalError, format!("x{}", "ß".repeat(1000)));
        let Message::Close { reason, .. } = &odd else {
            panic!("not a close");
        };
        assert_eq!(reason.len(), MAX_CLOSE_REASON_LEN - 1);
        round_trip(&odd);
    }

    #[test]
    fn key_messages_of_the_smallest_entries_round_trip() {
        // Repeated strings are written once and referred to after: the second entry of each
        // list is as small as an entry gets (found by the `frames` fuzz target).
        let envelope = KeyEnvelope {
            collection: String::new(),
            scope: String::new(),
            epoch: 0,
            key: [0; 4],
            recipient: Vec::new(),
            wrapped: Vec::new(),
        };
        let previous = PreviousKey {
            collection: String::new(),
            scope: String::new(),
            epoch: 0,
            key: [0; 4],
            under: [0; 4],
            sealed: Vec::new(),
        };
        round_trip(&Message::Keys {
            keys: vec![envelope.clone(), envelope.clone(), envelope],
            previous: vec![previous.clone(), previous.clone(), previous],
        });
        round_trip(&Message::KeyTask {
            collection: String::new(),
            scope: String::new(),
            epoch: 0,
            key: Some([0; 4]),
            recipients: vec![Vec::new(), Vec::new()],
        });
        round_trip(&Message::Collections {
            collections: vec![
                CollectionInfo {
                    name: String::new(),
                    sealed: false,
                    routing_fields: Vec::new(),
                };
                3
            ],
        });
    }

    #[test]
    fn an_unknown_message_type_is_refused() {
        // 0x7f is taken too (compressed payloads), but is not a message of its own.
        for code in [0x00, 0x13, 0x7E, 0x80, 0xFF] {
            let mut bytes = header(code);
            bytes.push(0);
            assert_eq!(
                Message::decode(&bytes),
                Err(ProtocolError::from(Malformed::UnknownMessageType { code }))
            );
        }
    }

    #[test]
    fn each_close_code_is_followed_by_its_documented_websocket_close_code() {
        let codes: Vec<(u8, u16)> = CloseCode::ALL
            .into_iter()
            .map(|c| (c.code(), c.websocket_close_code()))
            .collect();
        assert_eq!(
            codes,
            [
                (0, 1000),
                (1, 1001),
                (2, 1002),
                (3, 1002),
                (4, 1008),
                (5, 1008),
                (6, 1011),
                (7, 1008),
                (8, 1008)
            ]
        );
    }

    #[test]
    fn only_refusals_and_copies_stop_retrying() {
        let final_codes: Vec<CloseCode> = CloseCode::ALL
            .into_iter()
            .filter(|c| c.stops_retrying())
            .collect();
        assert_eq!(
            final_codes,
            [
                CloseCode::VersionMismatch,
                CloseCode::Unauthorized,
                CloseCode::UnknownDatabase,
                CloseCode::CopiedDatabase,
                CloseCode::Revoked
            ]
        );
    }

    #[test]
    fn an_unknown_close_code_is_refused() {
        let mut bytes = header(TYPE_CLOSE);
        bytes.extend([9, 0]);
        assert_eq!(
            Message::decode(&bytes),
            Err(ProtocolError::from(Malformed::UnknownCloseCode { code: 9 }))
        );
    }

    #[test]
    fn trailing_bytes_after_a_message_are_refused() {
        let mut bytes = Message::ack(5).encode();
        bytes.push(0);
        assert_eq!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::TrailingBytes { count: 1 }
            )))
        );
    }

    #[test]
    fn a_truncated_message_is_refused() {
        let bytes = Message::Hello {
            protocol_version: 1,
            node: node(1),
            database: "db".to_owned(),
            capabilities: Capabilities::NONE,
            head: 0,
        }
        .encode();
        for len in 0..bytes.len() {
            let err = Message::decode(&bytes[..len]).unwrap_err();
            assert!(err.is_malformed_input(), "{err}");
        }
    }

    #[test]
    fn a_hello_with_an_empty_or_too_long_database_name_is_refused() {
        for database in [String::new(), "d".repeat(MAX_DATABASE_NAME_LEN + 1)] {
            let message = Message::Hello {
                protocol_version: 1,
                node: node(1),
                database,
                capabilities: Capabilities::NONE,
                head: 0,
            };
            assert!(matches!(
                Message::decode(&message.encode()),
                Err(ProtocolError::Malformed(Malformed::Invalid(_)))
            ));
            assert!(matches!(
                message.validate(),
                Err(ProtocolError::Local(LocalFailure::Unsendable(_)))
            ));
        }
    }

    #[test]
    fn a_hello_whose_version_does_not_fit_in_16_bits_is_refused() {
        let mut bytes = header(TYPE_HELLO);
        bytes.extend([0x80, 0x80, 0x04]); // 65536
        bytes.push(0);
        bytes.extend([1; 16]);
        bytes.extend([4, b'd', b'b']);
        assert_eq!(
            Message::decode(&bytes),
            Err(ProtocolError::from(Malformed::Invalid(
                Rule::ProtocolVersionTooLarge
            )))
        );
    }

    #[test]
    fn a_close_with_a_too_long_reason_is_refused() {
        let message = Message::Close {
            code: CloseCode::Normal,
            reason: "r".repeat(MAX_CLOSE_REASON_LEN + 1),
        };
        assert!(matches!(
            Message::decode(&message.encode()),
            Err(ProtocolError::Malformed(Malformed::Invalid(_)))
        ));
        assert!(message.validate().is_err());
    }

    #[test]
    fn an_ops_batch_claiming_more_operations_than_it_holds_is_refused() {
        let mut bytes = header(TYPE_OPS);
        bytes.extend([0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::LengthTooLarge { .. }
            )))
        ));
    }

    fn vector(entries: &[(u8, u64)]) -> VersionVector {
        entries.iter().map(|&(n, seq)| (node(n), seq)).collect()
    }

    /// A Pull body written by hand: `from`, the entry count, then each (node, seq) as a
    /// node literal (0 and 16 bytes) or, for `None`, a reference to node table entry 0.
    fn pull_bytes(from: u8, entries: &[(Option<u8>, u8)]) -> Vec<u8> {
        let mut bytes = header(TYPE_PULL);
        bytes.extend([from, entries.len() as u8]);
        for &(n, seq) in entries {
            match n {
                Some(n) => {
                    bytes.push(0);
                    bytes.extend([n; 16]);
                }
                None => bytes.push(1),
            }
            bytes.push(seq);
        }
        // No operation checks.
        bytes.push(0);
        bytes
    }

    #[test]
    fn a_pull_round_trips() {
        let bytes = round_trip(&Message::Pull {
            from: 0,
            vector: VersionVector::new(),
            checks: Vec::new(),
        });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_PULL, 0, 0, 0]);
        let bytes = round_trip(&Message::Pull {
            from: 9,
            vector: vector(&[(2, 1), (1, 7)]),
            checks: Vec::new(),
        });
        assert_eq!(bytes, pull_bytes(9, &[(Some(1), 7), (Some(2), 1)]));
        round_trip(&Message::Pull {
            from: u64::MAX,
            vector: vector(&[(0, u64::MAX), (0xFF, 1), (3, 300)]),
            checks: Vec::new(),
        });
        let many: VersionVector = (0..=u16::MAX)
            .map(|n| {
                let mut id = [0; 16];
                id[..2].copy_from_slice(&n.to_be_bytes());
                (NodeId(Uuid::from_bytes(id)), u64::from(n) + 1)
            })
            .collect();
        round_trip(&Message::Pull {
            from: 1,
            vector: many,
            checks: Vec::new(),
        });
    }

    #[test]
    fn a_pulls_operation_checks_follow_the_vector_and_refer_to_its_nodes() {
        let check = |n: u8, seq: u64| OpCheck {
            node: node(n),
            seq,
            digest: OpDigest([n; 8]),
        };
        let message = Message::Pull {
            from: 9,
            vector: vector(&[(1, 7)]),
            checks: vec![check(1, 7), check(2, 300)],
        };
        let bytes = round_trip(&message);
        let mut expected = pull_bytes(9, &[(Some(1), 7)]);
        expected.pop();
        // Two checks: node 1 is a reference to the node table, node 2 a literal.
        expected.extend([2, 1, 7]);
        expected.extend([1; 8]);
        expected.push(0);
        expected.extend([2; 16]);
        expected.extend([0xAC, 0x02]);
        expected.extend([2; 8]);
        assert_eq!(bytes, expected);

        let five = Message::Pull {
            from: 0,
            vector: VersionVector::new(),
            checks: (1..=5).map(|n| check(n, 1)).collect(),
        };
        let invalid = |rule| ProtocolError::from(LocalFailure::Unsendable(rule));
        assert_eq!(five.validate(), Err(invalid(Rule::TooManyChecks)));
        assert_eq!(
            Message::decode(&five.encode()),
            Err(ProtocolError::from(Malformed::Invalid(Rule::TooManyChecks)))
        );
        let zero = Message::Pull {
            from: 0,
            vector: VersionVector::new(),
            checks: vec![check(1, 0)],
        };
        assert_eq!(zero.validate(), Err(invalid(Rule::CheckSeqZero)));
        assert_eq!(
            Message::decode(&zero.encode()),
            Err(ProtocolError::from(Malformed::Invalid(Rule::CheckSeqZero)))
        );
        // Cut anywhere in a check: refused, never read past the end.
        for len in (bytes.len() - 27)..bytes.len() {
            assert!(Message::decode(&bytes[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn a_pull_whose_vector_is_not_strictly_increasing_is_refused() {
        let unordered = Rule::VectorOutOfOrder;
        for entries in [
            &[(Some(2), 1), (Some(1), 1)][..],
            &[(Some(1), 1), (Some(1), 2)],
            &[(Some(1), 3), (Some(2), 1), (Some(2), 1)],
            // A reference to a node already in the vector is a repeat too.
            &[(Some(1), 1), (None, 2)],
        ] {
            assert_eq!(
                Message::decode(&pull_bytes(0, entries)),
                Err(ProtocolError::from(Malformed::Invalid(unordered))),
                "{entries:?}"
            );
        }
        assert!(Message::decode(&pull_bytes(0, &[(Some(1), 1), (Some(2), 1)])).is_ok());
    }

    #[test]
    fn a_pull_with_a_zero_sequence_number_is_refused() {
        for entries in [&[(Some(1), 0)][..], &[(Some(1), 4), (Some(2), 0)]] {
            assert_eq!(
                Message::decode(&pull_bytes(3, entries)),
                Err(ProtocolError::from(Malformed::Invalid(Rule::VectorSeqZero)))
            );
        }
    }

    #[test]
    fn a_pull_claiming_more_entries_than_it_holds_is_refused() {
        let mut bytes = header(TYPE_PULL);
        bytes.extend([0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::LengthTooLarge { .. }
            )))
        ));
        // Two entries claimed, one present.
        let mut bytes = pull_bytes(0, &[(Some(1), 1)]);
        bytes[4] = 2;
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(_)))
        ));
    }

    #[test]
    fn a_truncated_pull_or_ops_is_refused() {
        let pull = Message::Pull {
            from: 300,
            vector: vector(&[(1, 7), (2, 300)]),
            checks: Vec::new(),
        }
        .encode();
        let ops = Message::Ops {
            from: 300,
            to: 301,
            ops: vec![op(1, OpKind::Delete, &[])],
        }
        .encode();
        for bytes in [pull, ops] {
            for len in 0..bytes.len() {
                let err = Message::decode(&bytes[..len]).unwrap_err();
                assert!(err.is_malformed_input(), "{err}");
            }
        }
    }

    #[test]
    fn type_codes_and_names_are_distinct() {
        let messages = [
            Message::Hello {
                protocol_version: 1,
                node: node(1),
                database: "db".to_owned(),
                capabilities: Capabilities::NONE,
                head: 0,
            },
            Message::Ops {
                from: 0,
                to: 1,
                ops: vec![],
            },
            Message::ack(1),
            Message::Ping { nonce: 1 },
            Message::Pong { nonce: 1 },
            Message::close(CloseCode::Normal, ""),
            Message::Pull {
                from: 0,
                vector: VersionVector::new(),
                checks: Vec::new(),
            },
            Message::Enroll {
                token: "t".to_owned(),
            },
            Message::Snapshot {
                position: 0,
                part: 1,
                total: 0,
                records: vec![],
                vector: None,
            },
            Message::SnapshotAck { part: 1 },
            Message::Reconcile {
                level: 0,
                buckets: vec![0],
            },
            Message::Held {
                level: 0,
                buckets: vec![0],
                records: vec![],
            },
            Message::Records { records: vec![] },
            Message::Purge {
                reason: PurgeReason::AccessChanged,
                records: vec![],
            },
            Message::Policy {
                only: vec![],
                except: vec![],
                filter: String::new(),
                exclude_fields: vec![],
            },
            Message::Collections {
                collections: vec![CollectionInfo {
                    name: "bugs".to_owned(),
                    sealed: true,
                    routing_fields: vec!["teamId".to_owned()],
                }],
            },
            Message::Keys {
                keys: vec![KeyEnvelope {
                    collection: "bugs".to_owned(),
                    scope: "ios".to_owned(),
                    epoch: 2,
                    key: [1, 2, 3, 4],
                    recipient: vec![9; 32],
                    wrapped: vec![7; 87],
                }],
                previous: vec![PreviousKey {
                    collection: "bugs".to_owned(),
                    scope: "ios".to_owned(),
                    epoch: 1,
                    key: [5, 6, 7, 8],
                    under: [1, 2, 3, 4],
                    sealed: vec![3; 60],
                }],
            },
            Message::KeyTask {
                collection: "bugs".to_owned(),
                scope: "ios".to_owned(),
                epoch: 3,
                key: None,
                recipients: vec![vec![4; 65]],
            },
        ];
        for (i, message) in messages.iter().enumerate() {
            assert_eq!(usize::from(message.type_code()), i + 1);
            round_trip(message);
        }
        let mut names: Vec<_> = messages.iter().map(Message::type_name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), messages.len());
    }

    #[test]
    fn another_kind_of_blazebinary_item_is_not_a_message() {
        let value = encode_value(&Value::Int(1));
        assert!(matches!(
            Message::decode(&value),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::WrongKind { .. }
            )))
        ));
    }

    #[test]
    fn a_back_reference_to_a_string_never_written_is_refused() {
        let mut bytes = header(TYPE_CLOSE);
        bytes.extend([0, 1]); // Normal, reference to string 0 (the table is empty)
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::BadReference { .. }
            )))
        ));
    }

    #[test]
    fn the_version_must_match_exactly() {
        assert_eq!(negotiate_version(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
        let err = negotiate_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::VersionMismatch);
        assert!(!err.is_malformed_input());
        assert_eq!(
            err.to_string(),
            "protocol version mismatch: we speak version 3, the peer speaks 4"
        );
    }

    // -- Hello: capabilities and head ------------------------------------------------------

    #[test]
    fn a_hello_carries_the_capabilities_and_the_head_after_the_database() {
        let message = Message::Hello {
            protocol_version: 1,
            node: node(0x11),
            database: "bugs".to_owned(),
            capabilities: Capabilities::ZSTD,
            head: 300,
        };
        let bytes = round_trip(&message);
        let mut expected = header(TYPE_HELLO);
        expected.extend([0x01, 0x00]);
        expected.extend([0x11; 16]);
        expected.extend([0x08, b'b', b'u', b'g', b's']);
        expected.extend([0x01, 0xAC, 0x02]);
        assert_eq!(bytes, expected);
        for head in [0, 1, 127, 128, u64::MAX - 1, u64::MAX] {
            round_trip(&Message::Hello {
                protocol_version: 1,
                node: node(3),
                database: "db".to_owned(),
                capabilities: Capabilities::SUPPORTED,
                head,
            });
        }
    }

    #[test]
    fn unknown_capability_bits_are_kept_through_a_round_trip_and_ignored() {
        for bits in [1 << 1, 1 << 63, u64::MAX, u64::MAX - 1, (1 << 40) | 1] {
            let capabilities = Capabilities(bits);
            let message = Message::Hello {
                protocol_version: 1,
                node: node(1),
                database: "db".to_owned(),
                capabilities,
                head: 9,
            };
            let decoded = Message::decode(&round_trip(&message)).unwrap();
            let Message::Hello {
                capabilities: got, ..
            } = decoded
            else {
                panic!("not a hello");
            };
            assert_eq!(got, capabilities, "{bits:#x}");
            // What a connection uses is what both sides know.
            assert_eq!(
                got.intersection(Capabilities::SUPPORTED)
                    .contains(Capabilities::ZSTD),
                bits & 1 == 1
            );
        }
    }

    #[test]
    fn capabilities_show_their_names_and_unknown_bits() {
        assert_eq!(Capabilities::NONE.to_string(), "none");
        assert_eq!(Capabilities::ZSTD.to_string(), "zstd");
        assert_eq!(Capabilities(0x101).to_string(), "zstd, 0x100");
        assert_eq!(Capabilities(0x100).to_string(), "0x100");
        assert!(Capabilities::SUPPORTED.contains(Capabilities::NONE));
        assert!(!Capabilities::NONE.contains(Capabilities::ZSTD));
    }

    #[test]
    fn a_hello_truncated_before_its_capabilities_or_head_is_refused() {
        let bytes = Message::Hello {
            protocol_version: 1,
            node: node(1),
            database: "db".to_owned(),
            capabilities: Capabilities(1 << 20),
            head: 1 << 40,
        }
        .encode();
        // Without the head, or without both: the layout of protocol version 1 before
        // capabilities existed is not accepted.
        let end_of_database = 3 + 1 + 17 + 3;
        for len in [end_of_database, end_of_database + 3, bytes.len() - 1] {
            assert!(matches!(
                Message::decode(&bytes[..len]),
                Err(ProtocolError::Malformed(Malformed::Decode(
                    DecodeError::UnexpectedEnd { .. }
                )))
            ));
        }
    }

    // -- Enroll ---------------------------------------------------------------------------

    #[test]
    fn an_enroll_round_trips() {
        let bytes = round_trip(&Message::Enroll {
            token: "bzt1_abc".to_owned(),
        });
        let mut expected = header(TYPE_ENROLL);
        expected.push(8 << 1);
        expected.extend(b"bzt1_abc");
        assert_eq!(bytes, expected);
        round_trip(&Message::Enroll {
            token: "t".repeat(MAX_TOKEN_LEN),
        });
        round_trip(&Message::Enroll {
            token: "é".repeat(MAX_TOKEN_LEN / 2),
        });
    }

    #[test]
    fn a_real_enrollment_token_fits_in_an_enroll() {
        for suite in crate::secure::Suite::ALL {
            let server = crate::secure::StaticKeys::generate(suite).unwrap();
            let token = crate::enroll::EnrollmentToken::generate(&server)
                .unwrap()
                .encode();
            assert!(token.len() <= MAX_TOKEN_LEN, "{}", token.len());
            round_trip(&Message::Enroll { token });
        }
    }

    #[test]
    fn an_enroll_with_an_empty_or_too_long_token_is_refused() {
        for (token, what) in [
            (String::new(), Rule::TokenEmpty),
            ("t".repeat(MAX_TOKEN_LEN + 1), Rule::TokenTooLong),
            ("é".repeat(MAX_TOKEN_LEN / 2) + "x", Rule::TokenTooLong),
        ] {
            let message = Message::Enroll { token };
            assert_eq!(
                Message::decode(&message.encode()),
                Err(ProtocolError::from(Malformed::Invalid(what)))
            );
            assert_eq!(
                message.validate(),
                Err(ProtocolError::from(LocalFailure::Unsendable(what)))
            );
            assert!(matches!(
                crate::try_encode_frame(&message, crate::DEFAULT_MAX_FRAME_LEN),
                Err(ProtocolError::Local(LocalFailure::Unsendable(_)))
            ));
        }
    }

    // -- Snapshot and SnapshotAck -----------------------------------------------------------

    fn stamp(lamport: u64, n: u8) -> Stamp {
        Stamp {
            lamport,
            node: node(n),
        }
    }

    /// A record of collection "bugs" with id `[n; 16]` and the given state parts.
    fn snapshot_record(
        n: u8,
        created: Option<Stamp>,
        deleted: Option<Stamp>,
        fields: &[(&str, Value, Stamp)],
    ) -> SnapshotRecord {
        SnapshotRecord {
            collection: "bugs".to_owned(),
            id: Uuid::from_bytes([n; 16]),
            state: RecordState {
                created,
                deleted,
                fields: fields
                    .iter()
                    .map(|(k, value, stamp)| {
                        (
                            (*k).to_owned(),
                            FieldState {
                                value: value.clone(),
                                stamp: *stamp,
                            },
                        )
                    })
                    .collect(),
            },
        }
    }

    /// The snapshot of docs/protocol.md: one visible record and the vector (last part).
    fn documented_snapshot() -> Message {
        Message::Snapshot {
            position: 300,
            part: 1,
            total: 1,
            records: vec![snapshot_record(
                0x22,
                Some(stamp(9, 0x11)),
                None,
                &[("title", "Crash".into(), stamp(9, 0x11))],
            )],
            vector: Some(vector(&[(0x11, 3)])),
        }
    }

    /// A snapshot part written by hand up to its record count: position 5, then `part`,
    /// `total` and `count` as varints.
    fn snapshot_bytes(part: u64, total: u64, count: u64) -> Vec<u8> {
        let mut e = Encoder::new(Kind::Message);
        e.byte(TYPE_SNAPSHOT);
        e.varint(5);
        e.varint(part);
        e.varint(total);
        e.varint(count);
        e.finish()
    }

    #[test]
    fn a_snapshot_round_trips() {
        round_trip(&documented_snapshot());
        let bytes = round_trip(&Message::Snapshot {
            position: 0,
            part: 1,
            total: 0,
            records: vec![],
            vector: None,
        });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_SNAPSHOT, 0, 1, 0, 0, 0]);
        let bytes = round_trip(&Message::Snapshot {
            position: 7,
            part: 2,
            total: 9,
            records: vec![],
            vector: Some(VersionVector::new()),
        });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_SNAPSHOT, 7, 2, 9, 0, 1, 0]);
        // Tombstones, resurrected records, registers of several nodes, and the extremes.
        round_trip(&Message::Snapshot {
            position: u64::MAX,
            part: u32::MAX,
            total: u64::MAX,
            records: vec![
                snapshot_record(1, Some(stamp(1, 1)), Some(stamp(2, 2)), &[]),
                snapshot_record(2, None, Some(stamp(u64::MAX, 3)), &[]),
                snapshot_record(3, None, None, &[("a", Value::Null, stamp(0, 0))]),
                snapshot_record(
                    4,
                    Some(stamp(5, 2)),
                    Some(stamp(4, 1)),
                    &[
                        ("priority", Value::Int(-1), stamp(6, 3)),
                        ("title", "Crash on launch".into(), stamp(5, 2)),
                    ],
                ),
            ],
            vector: Some(vector(&[(1, 2), (2, 5), (3, u64::MAX), (4, 1)])),
        });
    }

    #[test]
    fn records_and_the_vector_of_a_snapshot_share_the_string_and_node_tables() {
        let bytes = documented_snapshot().encode();
        // The register's stamp and the vector refer back to node 1111…11 of `created`.
        assert_eq!(
            bytes.windows(16).filter(|w| *w == [0x11; 16]).count(),
            1,
            "{bytes:02x?}"
        );
        let Message::Snapshot { records, .. } = documented_snapshot() else {
            panic!("not a snapshot");
        };
        let two = Message::Snapshot {
            position: 300,
            part: 1,
            total: 2,
            records: vec![records[0].clone(), records[0].clone()],
            vector: None,
        }
        .encode();
        // The second copy writes "bugs", "title", "Crash" and the node as references.
        let one = Message::Snapshot {
            position: 300,
            part: 1,
            total: 2,
            records,
            vector: None,
        }
        .encode();
        let second_len = two.len() - one.len();
        assert!(second_len <= 16 + 11, "{second_len}");
    }

    #[test]
    fn a_snapshot_ack_round_trips() {
        let bytes = round_trip(&Message::SnapshotAck { part: 1 });
        assert_eq!(bytes, [MAGIC, 0x16, TYPE_SNAPSHOT_ACK, 1]);
        round_trip(&Message::SnapshotAck { part: 300 });
        round_trip(&Message::SnapshotAck { part: u32::MAX });
    }

    /// The examples in docs/protocol.md, byte for byte.
    #[test]
    fn the_documented_snapshot_frames_are_exact() {
        let mut snapshot = vec![0, 0, 0, 0x43, 0xB7, 0x16, 0x09];
        snapshot.extend([0xAC, 0x02, 0x01, 0x01, 0x01]); // position 300, part 1, total 1, 1 record
        snapshot.extend([0x08, b'b', b'u', b'g', b's']);
        snapshot.extend([0x22; 16]);
        snapshot.extend([0x01, 0x09, 0x00]); // flags: created; created: Lamport 9, node (new)
        snapshot.extend([0x11; 16]);
        snapshot.extend([0x01, 0x0A, b't', b'i', b't', b'l', b'e']); // 1 register, "title"
        snapshot.extend([0x45, b'C', b'r', b'a', b's', b'h', 0x09, 0x01]); // "Crash", stamp 9@#0
        snapshot.extend([0x01, 0x01, 0x01, 0x03]); // vector: 1 entry, node #0, seq 3
        assert_eq!(crate::encode_frame(&documented_snapshot()), snapshot);
        assert_eq!(
            crate::encode_frame(&Message::SnapshotAck { part: 1 }),
            [0, 0, 0, 4, 0xB7, 0x16, 0x0A, 0x01]
        );
    }

    #[test]
    fn a_snapshot_or_snapshot_ack_numbered_0_is_refused() {
        for message in [
            Message::SnapshotAck { part: 0 },
            Message::Snapshot {
                position: 1,
                part: 0,
                total: 0,
                records: vec![],
                vector: None,
            },
        ] {
            assert_eq!(
                Message::decode(&message.encode()),
                Err(ProtocolError::from(Malformed::Invalid(
                    Rule::SnapshotPartZero
                )))
            );
            assert_eq!(
                message.validate(),
                Err(ProtocolError::from(LocalFailure::Unsendable(
                    Rule::SnapshotPartZero
                )))
            );
            assert!(matches!(
                crate::try_encode_frame(&message, crate::DEFAULT_MAX_FRAME_LEN),
                Err(ProtocolError::Local(LocalFailure::Unsendable(_)))
            ));
        }
    }

    #[test]
    fn a_part_number_above_32_bits_is_refused() {
        let too_big = Rule::SnapshotPartTooLarge;
        for part in [u64::from(u32::MAX) + 1, 1 << 40, u64::MAX] {
            let mut snapshot = snapshot_bytes(part, 0, 0);
            snapshot.push(0);
            let mut e = Encoder::new(Kind::Message);
            e.byte(TYPE_SNAPSHOT_ACK);
            e.varint(part);
            for bytes in [snapshot, e.finish()] {
                assert_eq!(
                    Message::decode(&bytes),
                    Err(ProtocolError::from(Malformed::Invalid(too_big))),
                    "{part}"
                );
            }
        }
        let mut largest = snapshot_bytes(u64::from(u32::MAX), 0, 0);
        largest.push(0);
        assert!(Message::decode(&largest).is_ok());
    }

    #[test]
    fn a_snapshot_vector_flag_other_than_0_or_1_is_refused() {
        for flag in [2, 3, 0x80, 0xFF] {
            let mut bytes = snapshot_bytes(1, 0, 0);
            bytes.extend([flag, 0]);
            assert_eq!(
                Message::decode(&bytes),
                Err(ProtocolError::from(Malformed::Invalid(
                    Rule::SnapshotVectorFlag
                ))),
                "{flag}"
            );
        }
        // Without a flag at all the part is truncated.
        assert!(matches!(
            Message::decode(&snapshot_bytes(1, 0, 0)),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::UnexpectedEnd { .. }
            )))
        ));
    }

    #[test]
    fn a_snapshot_claiming_more_records_than_it_holds_is_refused() {
        // A count that would abort the test if anything were allocated for it.
        let mut bytes = snapshot_bytes(1, u64::MAX, u64::MAX >> 1);
        bytes.push(0);
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::LengthTooLarge { .. }
            )))
        ));
        // One more record than the bytes hold, even at the smallest record size.
        let mut smallest = snapshot_bytes(1, 2, 1);
        smallest.extend([0x00]); // collection ""
        smallest.extend([0x33; 16]);
        smallest.extend([0x00, 0x00]); // no stamps, no registers
        smallest.push(0);
        // After the count (header, type, position, part, total, count): one record, the flag.
        assert_eq!(smallest.len() - 7, MIN_SNAPSHOT_RECORD_LEN + 1);
        assert!(Message::decode(&smallest).is_ok());
        let mut two = smallest.clone();
        two[6] = 2;
        assert!(matches!(
            Message::decode(&two),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::LengthTooLarge { .. }
            )))
        ));
    }

    #[test]
    fn a_snapshot_part_with_more_records_than_its_total_is_refused() {
        let message = Message::Snapshot {
            position: 3,
            part: 1,
            total: 1,
            records: vec![
                snapshot_record(1, None, Some(stamp(1, 1)), &[]),
                snapshot_record(2, None, Some(stamp(1, 1)), &[]),
            ],
            vector: None,
        };
        assert_eq!(
            Message::decode(&message.encode()),
            Err(ProtocolError::from(Malformed::Invalid(
                Rule::SnapshotOverTotal
            )))
        );
        assert_eq!(
            message.validate(),
            Err(ProtocolError::from(LocalFailure::Unsendable(
                Rule::SnapshotOverTotal
            )))
        );
        // As many records as the total, or fewer (a later part holds the rest), are fine.
        for total in [2, 3, u64::MAX] {
            let Message::Snapshot { records, .. } = &message else {
                panic!("not a snapshot");
            };
            round_trip(&Message::Snapshot {
                position: 3,
                part: 1,
                total,
                records: records.clone(),
                vector: None,
            });
        }
    }

    #[test]
    fn a_snapshot_vector_is_checked_like_a_pull_vector() {
        let Message::Snapshot { records, .. } = documented_snapshot() else {
            panic!("not a snapshot");
        };
        let with = |vector: VersionVector| Message::Snapshot {
            position: 300,
            part: 2,
            total: 9,
            records: records.clone(),
            vector: Some(vector),
        };
        let good = with(vector(&[(0x11, 3), (0x22, 1)])).encode();
        assert!(Message::decode(&good).is_ok());
        // The entries swapped: 2222…22 (written in full) before 1111…11 (a reference).
        let mut swapped = with(vector(&[(0x11, 3)])).encode();
        let entries = swapped.len() - 3;
        swapped.truncate(entries);
        swapped.push(2);
        swapped.push(0);
        swapped.extend([0x22; 16]);
        swapped.extend([1, 1, 3]);
        assert_eq!(
            Message::decode(&swapped),
            Err(ProtocolError::from(Malformed::Invalid(
                Rule::VectorOutOfOrder
            )))
        );
        let mut zero = with(vector(&[(0x11, 3)])).encode();
        *zero.last_mut().unwrap() = 0;
        assert_eq!(
            Message::decode(&zero),
            Err(ProtocolError::from(Malformed::Invalid(Rule::VectorSeqZero)))
        );
    }

    #[test]
    fn a_truncated_or_overlong_snapshot_or_snapshot_ack_is_refused() {
        for message in [documented_snapshot(), Message::SnapshotAck { part: 300 }] {
            let bytes = message.encode();
            for len in 0..bytes.len() {
                let err = Message::decode(&bytes[..len]).unwrap_err();
                assert!(err.is_malformed_input(), "{err}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert_eq!(
                Message::decode(&trailing),
                Err(ProtocolError::Malformed(Malformed::Decode(
                    DecodeError::TrailingBytes { count: 1 }
                )))
            );
        }
    }

    // -- Compressed payloads --------------------------------------------------------------

    /// An `Ops` batch of `count` similar operations: compresses well, like real batches.
    fn big_batch(count: u64) -> Message {
        Message::Ops {
            from: 10,
            to: 10 + count,
            ops: (1..=count)
                .map(|seq| {
                    op(
                        seq,
                        OpKind::Insert,
                        &[
                            ("title", format!("Crash number {seq} on launch").into()),
                            ("priority", Value::Int((seq % 3) as i64)),
                            ("status", "open".into()),
                        ],
                    )
                })
                .collect(),
        }
    }

    /// A compressed payload written by hand: header, 0x7f, `announced`, then `frame`.
    fn compressed_payload(announced: u64, frame: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(Kind::Message);
        e.byte(TYPE_COMPRESSED);
        e.varint(announced);
        let mut out = e.finish();
        out.extend_from_slice(frame);
        out
    }

    fn is_decompress_error(result: &Result<Message, ProtocolError>) -> bool {
        matches!(
            result,
            Err(ProtocolError::Malformed(Malformed::Decompress(_)))
        )
    }

    #[test]
    fn a_big_ops_batch_is_compressed_for_a_peer_that_accepts_zstd_and_decodes_the_same() {
        let message = big_batch(200);
        let plain = message.encode();
        let sent = message.encode_for(Capabilities::ZSTD, DEFAULT_COMPRESSION_THRESHOLD);
        assert!(
            sent.len() * 4 < plain.len(),
            "{} of {} bytes",
            sent.len(),
            plain.len()
        );
        assert_eq!(Message::decode(&sent).unwrap(), message);
        // The layout: header, 0x7f, the plain length, one zstd frame of the plain encoding.
        assert_eq!(&sent[..3], [MAGIC, 0x16, TYPE_COMPRESSED]);
        let mut d = Decoder::new(&sent, Kind::Message).unwrap();
        d.byte().unwrap();
        assert_eq!(d.varint().unwrap(), plain.len() as u64);
        let frame = &sent[d.offset()..];
        assert_eq!(&frame[..4], ZSTD_MAGIC, "zstd magic number");
        assert_eq!(zstd::bulk::decompress(frame, plain.len()).unwrap(), plain);
        // Unknown bits beside ZSTD change nothing.
        assert_eq!(
            message.encode_for(Capabilities(u64::MAX), DEFAULT_COMPRESSION_THRESHOLD),
            sent
        );
    }

    #[test]
    fn a_big_snapshot_part_is_compressed_for_a_peer_that_accepts_zstd_and_decodes_the_same() {
        let records = (1..=200u64)
            .map(|n| {
                let written = stamp(n + 10, 1);
                snapshot_record(
                    n as u8,
                    Some(written),
                    (n % 5 == 0).then(|| stamp(n + 11, 2)),
                    &[
                        (
                            "title",
                            format!("Crash number {n} on launch").into(),
                            written,
                        ),
                        ("status", "open".into(), written),
                    ],
                )
            })
            .collect::<Vec<_>>();
        let message = Message::Snapshot {
            position: 1520,
            part: 3,
            total: 2000,
            records,
            vector: Some(vector(&[(1, 210), (2, 40)])),
        };
        let plain = message.encode();
        let sent = message.encode_for(Capabilities::ZSTD, DEFAULT_COMPRESSION_THRESHOLD);
        assert_eq!(sent[2], TYPE_COMPRESSED);
        assert!(
            sent.len() * 2 < plain.len(),
            "{} of {} bytes",
            sent.len(),
            plain.len()
        );
        assert_eq!(Message::decode(&sent).unwrap(), message);
        assert_eq!(message.encode_for(Capabilities::NONE, 0), plain);
    }

    #[test]
    fn nothing_is_compressed_for_a_peer_without_zstd() {
        let message = big_batch(200);
        for peer in [Capabilities::NONE, Capabilities(u64::MAX - 1)] {
            assert_eq!(message.encode_for(peer, 0), message.encode());
            assert_eq!(
                message.encode_for(peer, DEFAULT_COMPRESSION_THRESHOLD),
                message.encode()
            );
        }
    }

    #[test]
    fn a_message_below_the_threshold_is_not_compressed() {
        let message = big_batch(2);
        let plain = message.encode();
        assert!(
            plain.len() < DEFAULT_COMPRESSION_THRESHOLD,
            "{}",
            plain.len()
        );
        assert_eq!(
            message.encode_for(Capabilities::ZSTD, DEFAULT_COMPRESSION_THRESHOLD),
            plain
        );
        // At exactly the threshold it is (this batch compresses).
        let big = big_batch(40);
        let len = big.encode().len();
        assert_eq!(big.encode_for(Capabilities::ZSTD, len)[2], TYPE_COMPRESSED);
        assert_eq!(big.encode_for(Capabilities::ZSTD, len + 1), big.encode());
    }

    #[test]
    fn a_message_that_compression_does_not_shrink_is_sent_plain() {
        // Pseudo-random bytes do not compress; the zstd frame would only add its overhead.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let message = Message::Ops {
            from: 0,
            to: 1,
            ops: vec![op(1, OpKind::Insert, &[("blob", Value::Bytes(noise))])],
        };
        assert_eq!(message.encode_for(Capabilities::ZSTD, 0), message.encode());
        // Nor is a message so small that the frame overhead outweighs any gain.
        let ping = Message::Ping { nonce: 1 };
        assert_eq!(ping.encode_for(Capabilities::ZSTD, 0), ping.encode());
    }

    /// A zstd frame built by hand (one raw block, no compression), as any zstd encoder may
    /// produce: magic, frame header (single segment, 1-byte content size), block header
    /// (last block, raw, `len` bytes), the bytes. The example of docs/protocol.md.
    fn raw_zstd_frame(content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 256);
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x20, content.len() as u8];
        let block = 1 | (content.len() as u32) << 3;
        frame.extend(&block.to_le_bytes()[..3]);
        frame.extend(content);
        frame
    }

    #[test]
    fn the_documented_compressed_ping_decodes() {
        let plain = Message::Ping { nonce: 42 }.encode();
        let payload = compressed_payload(4, &raw_zstd_frame(&plain));
        assert_eq!(
            payload,
            [
                0xB7, 0x16, 0x7F, 0x04, 0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x04, 0x21, 0x00, 0x00, 0xB7,
                0x16, 0x04, 0x2A
            ]
        );
        assert_eq!(Message::decode(&payload), Ok(Message::Ping { nonce: 42 }));
    }

    #[test]
    fn the_plain_length_is_known_before_decompressing() {
        let batch = big_batch(200);
        let plain = batch.encode();
        let compressed = batch.encode_for(Capabilities::ZSTD, 1024);
        assert!(compressed.len() < plain.len());
        assert_eq!(Message::plain_len(&compressed), plain.len());
        assert_eq!(Message::plain_len(&plain), plain.len());
        assert_eq!(
            Message::compress_encoded(plain.clone(), Capabilities::ZSTD, 1024),
            compressed
        );
        // A lie beyond the limit counts as the limit (decode refuses it anyway).
        let lie = compressed_payload(u64::MAX >> 1, &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(Message::plain_len(&lie), MAX_DECOMPRESSED_LEN);
    }

    #[test]
    fn a_compressed_payload_announcing_more_than_16_mib_is_refused_before_decompressing() {
        let frame = zstd::bulk::compress(&big_batch(3).encode(), 1).unwrap();
        // Lengths that would abort the test if anything were allocated for them.
        for announced in [
            MAX_DECOMPRESSED_LEN as u64 + 1,
            1 << 40,
            u64::MAX >> 1,
            u64::MAX,
        ] {
            assert_eq!(
                Message::decode(&compressed_payload(announced, &frame)),
                Err(ProtocolError::from(Malformed::Decompress(
                    DecompressFault::AnnouncedTooLong
                ))),
                "{announced}"
            );
        }
    }

    #[test]
    fn a_corrupt_zstd_frame_is_refused() {
        let plain = big_batch(50).encode();
        let sent = big_batch(50).encode_for(Capabilities::ZSTD, 0);
        let start = sent.len() - zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap().len();
        let mut bad_magic = sent.clone();
        bad_magic[start] ^= 0xFF;
        let mut trailing = sent.clone();
        trailing.extend([0xDE, 0xAD, 0xBE, 0xEF, 0x00]);
        for payload in [
            bad_magic,
            sent[..sent.len() - 1].to_vec(),
            sent[..start + 6].to_vec(),
            trailing,
            // No frame at all, or garbage instead of one.
            compressed_payload(plain.len() as u64, &[]),
            compressed_payload(0, &[]),
            compressed_payload(plain.len() as u64, b"not zstd"),
        ] {
            let result = Message::decode(&payload);
            assert!(is_decompress_error(&result), "{result:?}");
            let err = result.unwrap_err();
            assert!(err.is_malformed_input());
            assert_eq!(err.close_code(), CloseCode::ProtocolError);
        }
    }

    #[test]
    fn a_compressed_payload_must_hold_exactly_one_zstd_frame() {
        let plain = Message::Ping { nonce: 42 }.encode();
        let frame = raw_zstd_frame(&plain);
        let empty = raw_zstd_frame(&[]);
        // A skippable frame (magic 0x184D2A50): zstd would skip it.
        let skippable = [0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3];
        let cases = [
            ([&frame[..], &empty[..]].concat(), 4),
            ([&empty[..], &frame[..]].concat(), 4),
            ([&frame[..], &frame[..]].concat(), 8),
            ([&skippable[..], &frame[..]].concat(), 4),
            ([&frame[..], &skippable[..]].concat(), 4),
            (skippable.to_vec(), 0),
        ];
        for (frames, announced) in cases {
            assert_eq!(
                Message::decode(&compressed_payload(announced, &frames)),
                Err(ProtocolError::from(Malformed::Decompress(
                    DecompressFault::NotOneFrame
                ))),
                "{frames:02x?}"
            );
        }
        assert_eq!(
            Message::decode(&compressed_payload(4, &frame)),
            Ok(Message::Ping { nonce: 42 })
        );
    }

    #[test]
    fn a_compressed_payload_whose_length_does_not_match_is_refused() {
        let plain = big_batch(50).encode();
        let frame = zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap();
        let len = plain.len() as u64;
        // Longer than announced: zstd stops at the announced length.
        for announced in [0, 1, len / 2, len - 1] {
            let result = Message::decode(&compressed_payload(announced, &frame));
            assert!(is_decompress_error(&result), "{announced}: {result:?}");
        }
        // Shorter than announced.
        assert_eq!(
            Message::decode(&compressed_payload(len + 1, &frame)),
            Err(ProtocolError::from(Malformed::Decompress(
                DecompressFault::LengthMismatch {
                    expanded: plain.len(),
                    announced: plain.len() + 1
                }
            )))
        );
        assert!(Message::decode(&compressed_payload(len, &frame)).is_ok());
    }

    #[test]
    fn a_compressed_payload_inside_a_compressed_payload_is_refused() {
        let inner = big_batch(50).encode_for(Capabilities::ZSTD, 0);
        assert_eq!(inner[2], TYPE_COMPRESSED);
        let frame = zstd::bulk::compress(&inner, ZSTD_LEVEL).unwrap();
        assert_eq!(
            Message::decode(&compressed_payload(inner.len() as u64, &frame)),
            Err(ProtocolError::from(Malformed::Decompress(
                DecompressFault::Nested
            )))
        );
    }

    #[test]
    fn the_expanded_message_is_checked_like_any_other() {
        // A reversed Ops range, a trailing byte, another kind of item: the same errors as
        // without compression.
        let reversed = Message::Ops {
            from: 5,
            to: 5,
            ops: vec![],
        }
        .encode();
        let mut trailing = Message::ack(1).encode();
        trailing.push(0);
        let value = encode_value(&Value::Int(1));
        for plain in [reversed, trailing, value] {
            let frame = zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap();
            let expected = Message::decode(&plain).unwrap_err();
            assert_eq!(
                Message::decode(&compressed_payload(plain.len() as u64, &frame)),
                Err(expected)
            );
        }
    }

    #[test]
    fn a_zstd_bomb_is_refused() {
        // 100 MB of zeros compress to a few kilobytes.
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        // Claimed as small, as the largest allowed, or as what it really is: all refused,
        // and never expanded past the announced length.
        for announced in [100, 4096, MAX_DECOMPRESSED_LEN as u64, 100 << 20] {
            let result = Message::decode(&compressed_payload(announced, &bomb));
            assert!(is_decompress_error(&result), "{announced}: {result:?}");
        }
    }
}
