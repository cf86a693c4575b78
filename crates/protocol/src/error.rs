//! [`ProtocolError`]: everything that can go wrong in framing and message coding.

use blazedb_format::DecodeError;

use crate::message::CloseCode;
use crate::secure::Suite;

/// Why bytes could not be turned into messages, or a message into a frame, or why the secure
/// channel ([`crate::secure`]) failed.
///
/// Most variants mean the **peer** sent something that breaks the protocol
/// ([`ProtocolError::is_malformed_input`]): the connection cannot continue and should be closed
/// with [`ProtocolError::close_code`] (mostly [`CloseCode::ProtocolError`]). The others are a
/// version or suite the two sides do not share, a message *we* were about to send that the
/// protocol does not allow, or a failure on this side.
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
    /// The first handshake message names a secure channel suite this version does not know.
    #[error(
        "unknown secure channel suite {id:#04x} (known: 0x01 Noise_XX_P256_AESGCM_SHA256, \
         0x02 Noise_XX_25519_AESGCM_SHA256)"
    )]
    UnknownSuite { id: u8 },
    /// A handshake message has the wrong length, trailing bytes, a payload, or a public key
    /// that is not a point of the suite's curve.
    #[error("malformed handshake message: {what}")]
    Handshake { what: String },
    /// A handshake message does not authenticate: the two sides built different prologues
    /// (protocol version or database name) or the message was altered on the way.
    #[error(
        "handshake failed: the {message} does not authenticate (the two sides use different \
         protocol versions or database names, or the message was altered)"
    )]
    Unauthenticated { message: &'static str },
    /// A sealed payload is not a well-formed sequence of chunks (see
    /// [`crate::secure::SecureChannel::open`]).
    #[error("malformed sealed payload: {what}")]
    MalformedSealed { what: &'static str },
    /// A sealed chunk failed to decrypt: it was altered, replayed, reordered or dropped, or the
    /// peer's keys are not ours (it did not rekey when we did).
    #[error(
        "a sealed chunk failed to decrypt (altered, replayed, reordered or lost, or the peer's \
         keys differ)"
    )]
    Decrypt,
    /// A compressed payload does not expand to what it announces (corrupt zstd data, not
    /// exactly one zstd frame, a length over the frame limit, or compression nested in
    /// compression).
    #[error("malformed compressed payload: {what}")]
    Decompress { what: String },

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
    /// The peer's handshake uses a suite this side knows but has no static key for.
    #[error(
        "the peer's handshake uses {suite} (suite {id:#04x}), for which this side has no static key",
        id = suite.id()
    )]
    UnsupportedSuite { suite: Suite },
    /// A [`crate::secure::SecureChannel`] was used after it failed; the connection must close.
    #[error("the secure channel failed earlier and cannot be used again: close the connection")]
    ChannelFailed,
    /// Static keys given to [`crate::secure::StaticKeys::from_parts`] (or a key lookup) are
    /// not usable.
    #[error("invalid static keys: {what}")]
    InvalidStaticKeys { what: &'static str },
    /// An enrollment token (typed or pasted by a person) is not one this version can read.
    #[error("invalid enrollment token: {what}")]
    InvalidToken { what: &'static str },
    /// The cryptography failed on this side (random number generator, exhausted nonces).
    #[error("secure channel failure on this side: {what}")]
    Crypto { what: String },
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
            | ProtocolError::Invalid { .. }
            | ProtocolError::UnknownSuite { .. }
            | ProtocolError::Handshake { .. }
            | ProtocolError::Unauthenticated { .. }
            | ProtocolError::MalformedSealed { .. }
            | ProtocolError::Decrypt
            | ProtocolError::Decompress { .. } => true,
            ProtocolError::VersionMismatch { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::Unsendable { .. }
            | ProtocolError::UnsupportedSuite { .. }
            | ProtocolError::ChannelFailed
            | ProtocolError::InvalidStaticKeys { .. }
            | ProtocolError::InvalidToken { .. }
            | ProtocolError::Crypto { .. } => false,
        }
    }

    /// The close code to send the peer before dropping the connection because of this error.
    ///
    /// A handshake that does not authenticate closes with [`CloseCode::Unauthorized`]; a
    /// suite this side has no key for is a mismatch of configuration, like a protocol
    /// version, and closes with [`CloseCode::VersionMismatch`]. Errors on this side
    /// (including using a [`crate::secure::SecureChannel`] that already failed) close with
    /// [`CloseCode::InternalError`]; every other malformed input with
    /// [`CloseCode::ProtocolError`].
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::VersionMismatch { .. } | ProtocolError::UnsupportedSuite { .. } => {
                CloseCode::VersionMismatch
            }
            ProtocolError::Unauthenticated { .. } => CloseCode::Unauthorized,
            ProtocolError::MessageTooLarge { .. }
            | ProtocolError::Unsendable { .. }
            | ProtocolError::ChannelFailed
            | ProtocolError::InvalidStaticKeys { .. }
            | ProtocolError::Crypto { .. } => CloseCode::InternalError,
            ProtocolError::InvalidToken { .. } => CloseCode::Unauthorized,
            _ => CloseCode::ProtocolError,
        }
    }
}
