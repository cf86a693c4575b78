//! [`ProtocolError`]: everything that can go wrong in framing and message coding.

use blazedb_format::DecodeError;

use crate::message::CloseCode;

/// Why bytes could not be turned into messages, or a message into a frame.
///
/// Most variants mean the **peer** sent something that breaks the protocol
/// ([`ProtocolError::is_malformed_input`]): the connection cannot continue and should be closed
/// with [`CloseCode::ProtocolError`]. The others are a version the two sides do not share, or a
/// message *we* were about to send that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    // -- the peer's malformed input -------------------------------------------------------
    /// A frame's payload is not a well-formed BlazeBinary message item.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// A frame header announces more bytes than this side accepts. Nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    /// A frame header announces a zero-length payload (every message is at least 3 bytes).
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The message type byte is not one this version of the protocol knows.
    #[error("unknown message type {code:#04x}")]
    UnknownMessageType { code: u8 },
    /// A `Close` message carries a close code this version of the protocol does not know.
    #[error("unknown close code {code}")]
    UnknownCloseCode { code: u8 },
    /// A message is well-formed BlazeBinary but breaks a protocol rule.
    #[error("invalid message: {what}")]
    Invalid { what: &'static str },

    // -- not malformed input ------------------------------------------------------------
    /// The peer speaks another protocol version (see [`crate::negotiate_version`]).
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    /// A message we were about to send encodes to more bytes than the frame limit allows.
    #[error("message of {len} bytes is too large to send (frame limit {max} bytes)")]
    MessageTooLarge { len: usize, max: u32 },
    /// A message we were about to send breaks a protocol rule, so the peer would refuse it.
    #[error("message cannot be sent: {what}")]
    Unsendable { what: &'static str },
}

impl ProtocolError {
    /// True when the peer sent bytes that break the protocol (a bug or an attack on its side),
    /// false for a version mismatch and for errors about messages we were about to send.
    pub fn is_malformed_input(&self) -> bool {
        match self {
            ProtocolError::Decode(_)
            | ProtocolError::FrameTooLarge { .. }
            | ProtocolError::EmptyFrame
            | ProtocolError::UnknownMessageType { .. }
            | ProtocolError::UnknownCloseCode { .. }
            | ProtocolError::Invalid { .. } => true,
            ProtocolError::VersionMismatch { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::Unsendable { .. } => false,
        }
    }

    /// The close code to send the peer before dropping the connection because of this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::VersionMismatch { .. } => CloseCode::VersionMismatch,
            ProtocolError::MessageTooLarge { .. } | ProtocolError::Unsendable { .. } => {
                CloseCode::InternalError
            }
            _ => CloseCode::ProtocolError,
        }
    }
}
