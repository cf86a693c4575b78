//! The BlazeDB data model and its BlazeBinary encoding.
//!
//! This crate is the bottom layer of BlazeDB: the types every other layer shares ([`Value`],
//! [`Record`], [`Operation`], [`Stamp`], [`NodeId`]), the merge rules ([`RecordState`]), the
//! order-preserving [`sort_key`] used by indexes, and the BlazeBinary codec. It does no I/O.
//!
//! ```
//! use blazedb_format::{fields, decode_record, encode_record, Record, Value};
//! use uuid::Uuid;
//!
//! let bug = Record::new(Uuid::nil(), fields! { "title" => "Crash on launch", "priority" => 1 });
//! let bytes = encode_record(&bug);
//! assert_eq!(bytes[0], blazedb_format::MAGIC);
//! assert_eq!(decode_record(&bytes).unwrap(), bug);
//! assert_eq!(bug.get("priority"), Some(&Value::Int(1)));
//! ```

mod codec;
mod ids;
mod merge;
mod operation;
mod sort_key;
mod value;
mod vector;

pub use codec::{
    DecodeError, Decoder, Encoder, Kind, MAGIC, MAX_DECODED_WEIGHT, MAX_DEPTH, VERSION,
    decode_operation, decode_operations, decode_record, decode_record_state, decode_value,
    encode_inserted_record_state, encode_operation, encode_operations, encode_record,
    encode_record_state, encode_value,
};
pub use ids::{NodeId, OpId, Stamp};
pub use merge::{Effect, FieldState, RecordState, SnapshotRecord};
pub use operation::{OpDigest, OpKind, Operation, PurgeReason, RejectCode};
pub use sort_key::{class_prefix, sort_key, write_sort_key};
pub use uuid::Uuid;
pub use value::{Date, Fields, Record, Value, ValueClass, ValueTypeError};
pub use vector::VersionVector;
