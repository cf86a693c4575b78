//! The BlazeDB sync protocol: messages and their framing, as pure functions over bytes.
//!
//! This crate does no I/O and needs no async runtime (in the style of `rustls` and `snow`):
//! a transport (Unix socket, WebSocket, in-memory pipe) writes the bytes of
//! [`encode_frame`] and feeds whatever it reads, in chunks of any size, to a
//! [`FrameDecoder`], which hands back [`Message`]s. The wire layout is specified in
//! `docs/protocol.md`.
//!
//! * A **frame** is `[length: u32 big-endian][payload]`; the payload is at most
//!   [`DEFAULT_MAX_FRAME_LEN`] (16 MiB) unless configured otherwise, and never empty.
//! * A **payload** is one [`Message`] encoded as a BlazeBinary item of kind
//!   [`blazedb_format::Kind::Message`]: header, message type byte, body.
//! * Every decoding problem is a [`ProtocolError`]; for those caused by the peer,
//!   [`ProtocolError::is_malformed_input`] is true and the connection should end with a
//!   [`Message::Close`] carrying [`ProtocolError::close_code`].
//!
//! ```
//! use blazedb_format::{fields, Date, NodeId, OpId, OpKind, Operation, Uuid, VersionVector};
//! use blazedb_protocol::{encode_frame, FrameDecoder, Message, PROTOCOL_VERSION};
//!
//! let node = NodeId::random();
//! let hello = Message::Hello {
//!     protocol_version: PROTOCOL_VERSION,
//!     node,
//!     database: "bugs".to_owned(),
//!     capabilities: blazedb_protocol::Capabilities::SUPPORTED,
//!     head: 0,
//! };
//! let insert = Operation {
//!     id: OpId { origin: node, seq: 1 },
//!     lamport: 1,
//!     wall: Date::now(),
//!     kind: OpKind::Insert,
//!     collection: "bugs".to_owned(),
//!     record: Uuid::new_v4(),
//!     fields: fields! { "title" => "Crash on launch", "priority" => 1 },
//! };
//! // The peer answered our Hello with its own and asked for our op log after position 0;
//! // it has no operations yet.
//! let pull = Message::Pull { from: 0, vector: VersionVector::new(), checks: Vec::new() };
//! assert_eq!(Message::decode(&pull.encode())?, pull);
//! // Our op log's first entry (position 1) holds the insert: one batch covers (0, 1].
//! let ops = Message::Ops { from: 0, to: 1, ops: vec![insert] };
//!
//! // What one side writes to the connection...
//! let mut stream = encode_frame(&hello);
//! stream.extend(encode_frame(&ops));
//!
//! // ...and the other side reads, here three bytes at a time.
//! let mut decoder = FrameDecoder::default();
//! let mut received = Vec::new();
//! for chunk in stream.chunks(3) {
//!     assert_eq!(decoder.push(chunk), chunk.len());
//!     while let Some(message) = decoder.next_message()? {
//!         received.push(message);
//!     }
//! }
//! assert_eq!(received, [hello, ops]);
//! assert_eq!(decoder.buffered_len(), 0);
//! # Ok::<(), blazedb_protocol::ProtocolError>(())
//! ```
//!
//! How two nodes use these messages (`Hello`, then `Pull`, a stream of `Ops` with contiguous
//! op-log ranges, `Ack`; a `Snapshot` in parts, each answered by `SnapshotAck`, when the
//! `Pull` starts before a compacted op log) is the session described in `docs/protocol.md`;
//! this crate keeps no connection state, the sync engine does.
//!
//! [`secure`] is the secure channel: a Noise `XX` handshake that authenticates both nodes by
//! their static keys, then a [`secure::SecureChannel`] that seals payloads before framing and
//! opens them after. It is pure too; wiring it into the transports comes with remote sync.

pub mod enroll;
mod error;
mod frame;
pub mod fuzz;
pub mod membership;
pub use membership::RecordKey;
mod message;
mod name;
pub mod secure;

pub use error::{
    CryptoFault, DecompressFault, HandshakeFault, HandshakeMessage, Incompatible, KeyFault,
    LocalFailure, Malformed, NoiseError, ProtocolError, Rule, SealedFault, TokenFault,
    Unauthorized,
};
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, FrameDecoder, encode_frame, try_encode_frame,
};
pub use message::{
    Capabilities, CloseCode, CollectionInfo, DEFAULT_COMPRESSION_THRESHOLD, KeyEnvelope,
    MAX_CLOSE_REASON_LEN, MAX_DECOMPRESSED_LEN, MAX_POLICY_FILTER_LEN, MAX_PULL_CHECKS,
    MAX_REJECT_REASON_LEN, MAX_TOKEN_LEN, Message, OpCheck, PROTOCOL_VERSION, PreviousKey,
    Rejection, negotiate_version,
};
pub use name::{DatabaseName, InvalidDatabaseName, MAX_DATABASE_NAME_LEN};
