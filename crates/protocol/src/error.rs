//! [`ProtocolError`]: everything that can go wrong in framing, message coding and the secure
//! channel, grouped by cause.
//!
//! The groups and the close code each leads to are in [`ProtocolError`]'s documentation.

use std::fmt;

use blazedb_format::DecodeError;

use crate::message::{
    CloseCode, MAX_CLOSE_REASON_LEN, MAX_DATABASE_NAME_LEN, MAX_PULL_CHECKS, MAX_TOKEN_LEN,
};
use crate::secure::Suite;

/// Why bytes could not be turned into messages, or a message into a frame, or why the secure
/// channel ([`crate::secure`]) failed.
///
/// The group decides what happens to the connection, so [`ProtocolError::close_code`] is one
/// code per group:
///
/// | group | whose doing | close code |
/// |---|---|---|
/// | [`Malformed`] | the peer's bytes break the protocol | [`CloseCode::ProtocolError`] |
/// | [`Unauthorized`] | credentials that do not hold (a handshake that does not authenticate, an unreadable enrollment token) | [`CloseCode::Unauthorized`] |
/// | [`Incompatible`] | a version or suite the two sides do not share | [`CloseCode::VersionMismatch`] |
/// | [`LocalFailure`] | this side: a message it may not send, unusable keys, failed cryptography | [`CloseCode::InternalError`] |
///
/// Each group names its causes with types, not text, so a caller (or a test) can tell which
/// rule was broken without reading a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer sent bytes that break the protocol (a bug or an attack on its side).
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// Credentials do not hold: the peer's handshake, or an enrollment token.
    #[error(transparent)]
    Unauthorized(#[from] Unauthorized),
    /// The two sides share no protocol version or secure channel suite.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
    /// This side failed, or was about to send something the protocol does not allow.
    #[error(transparent)]
    Local(#[from] LocalFailure),
}

impl From<DecodeError> for ProtocolError {
    fn from(error: DecodeError) -> Self {
        ProtocolError::Malformed(Malformed::Decode(error))
    }
}

impl ProtocolError {
    /// True when the peer's bytes are to blame: they break the protocol ([`Malformed`]) or a
    /// handshake message does not authenticate. False for a version or suite mismatch, an
    /// enrollment token that cannot be read, and failures on this side.
    pub fn is_malformed_input(&self) -> bool {
        matches!(
            self,
            ProtocolError::Malformed(_)
                | ProtocolError::Unauthorized(Unauthorized::Handshake { .. })
        )
    }

    /// The close code to send the peer before dropping the connection because of this error:
    /// one per group (see [`ProtocolError`]).
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::Malformed(_) => CloseCode::ProtocolError,
            ProtocolError::Unauthorized(_) => CloseCode::Unauthorized,
            ProtocolError::Incompatible(_) => CloseCode::VersionMismatch,
            ProtocolError::Local(_) => CloseCode::InternalError,
        }
    }

    /// A received message breaks `rule`.
    pub(crate) fn invalid(rule: Rule) -> ProtocolError {
        Malformed::Invalid(rule).into()
    }

    /// A message this side was about to send breaks `rule`.
    pub(crate) fn unsendable(rule: Rule) -> ProtocolError {
        LocalFailure::Unsendable(rule).into()
    }

    /// The cryptography failed on this side.
    pub(crate) fn crypto(fault: CryptoFault) -> ProtocolError {
        LocalFailure::Crypto(fault).into()
    }

    /// Static keys are not usable.
    pub(crate) fn invalid_static_keys(fault: KeyFault) -> ProtocolError {
        LocalFailure::StaticKeys(fault).into()
    }
}

/// The peer's bytes break the protocol: close with [`CloseCode::ProtocolError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
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
    /// An `Ack` carries a rejection code this version of the protocol does not know.
    #[error("unknown rejection code {code}")]
    UnknownRejectCode { code: u8 },
    /// A `Purge` message carries a reason this version of the protocol does not know.
    #[error("unknown purge reason {code}")]
    UnknownPurgeReason { code: u8 },
    /// A message is well-formed BlazeBinary but breaks a protocol rule.
    #[error("invalid message: {0}")]
    Invalid(Rule),
    /// The first handshake message names a secure channel suite this version does not know.
    #[error(
        "unknown secure channel suite {id:#04x} (known: 0x01 Noise_XX_P256_AESGCM_SHA256, \
         0x02 Noise_XX_25519_AESGCM_SHA256)"
    )]
    UnknownSuite { id: u8 },
    /// A handshake message has the wrong length, trailing bytes, a payload, or a public key
    /// that is not a point of the suite's curve.
    #[error("malformed handshake message: {0}")]
    Handshake(HandshakeFault),
    /// A sealed payload is not a well-formed sequence of chunks (see
    /// [`crate::secure::SecureChannel::open`]).
    #[error("malformed sealed payload: {0}")]
    Sealed(SealedFault),
    /// A sealed chunk failed to decrypt: it was altered, replayed, reordered or dropped, or the
    /// peer's keys are not ours (it did not rekey when we did).
    #[error(
        "a sealed chunk failed to decrypt (altered, replayed, reordered or lost, or the peer's \
         keys differ)"
    )]
    Decrypt,
    /// A compressed payload does not expand to what it announces.
    #[error("malformed compressed payload: {0}")]
    Decompress(DecompressFault),
}

/// Credentials that do not hold: close with [`CloseCode::Unauthorized`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unauthorized {
    /// A handshake message does not authenticate: the two sides built different prologues
    /// (protocol version or database name) or the message was altered on the way.
    #[error(
        "handshake failed: the {message} does not authenticate (the two sides use different \
         protocol versions or database names, or the message was altered)"
    )]
    Handshake { message: HandshakeMessage },
    /// An enrollment token (typed or pasted by a person, or sent in `Enroll`) is not one this
    /// version can read.
    #[error("invalid enrollment token: {0}")]
    Token(TokenFault),
}

/// A version or suite the two sides do not share: close with [`CloseCode::VersionMismatch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatible {
    /// The peer speaks another protocol version (see [`crate::negotiate_version`]).
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks {theirs}")]
    Version { ours: u16, theirs: u16 },
    /// The peer's handshake uses a suite this side knows but has no static key for.
    #[error(
        "the peer's handshake uses {suite} (suite {id:#04x}), for which this side has no static key",
        id = suite.id()
    )]
    Suite { suite: Suite },
}

/// A failure on this side: close with [`CloseCode::InternalError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalFailure {
    /// A message we were about to send encodes to more bytes than the frame limit allows.
    #[error("message of {len} bytes is too large to send (frame limit {max} bytes)")]
    MessageTooLarge { len: usize, max: u32 },
    /// A message we were about to send breaks a protocol rule, so the peer would refuse it.
    #[error("message cannot be sent: {0}")]
    Unsendable(Rule),
    /// A [`crate::secure::SecureChannel`] was used after it failed; the connection must close.
    #[error("the secure channel failed earlier and cannot be used again: close the connection")]
    ChannelFailed,
    /// Static keys given to [`crate::secure::StaticKeys::from_parts`] (or a key lookup) are
    /// not usable.
    #[error("invalid static keys: {0}")]
    StaticKeys(KeyFault),
    /// The cryptography failed on this side.
    #[error("secure channel failure on this side: {0}")]
    Crypto(CryptoFault),
}

/// A rule of a message beyond its byte layout, broken by a message received
/// ([`Malformed::Invalid`]) or one about to be sent ([`LocalFailure::Unsendable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// `Hello.protocol_version` above 65535.
    ProtocolVersionTooLarge,
    /// A database name of 0 bytes.
    DatabaseNameEmpty,
    /// A database name over [`MAX_DATABASE_NAME_LEN`] bytes.
    DatabaseNameTooLong,
    /// A close reason over [`MAX_CLOSE_REASON_LEN`] bytes.
    CloseReasonTooLong,
    /// An enrollment token of 0 bytes.
    TokenEmpty,
    /// An enrollment token over [`MAX_TOKEN_LEN`] bytes.
    TokenTooLong,
    /// An `Ops` range with `from >= to`.
    EmptyOpsRange,
    /// A version vector whose entries are not in strictly increasing node order.
    VectorOutOfOrder,
    /// A version vector entry with sequence number 0.
    VectorSeqZero,
    /// A `Pull` with more than [`MAX_PULL_CHECKS`] operation checks.
    TooManyChecks,
    /// An operation check with sequence number 0.
    CheckSeqZero,
    /// A snapshot part number of 0.
    SnapshotPartZero,
    /// A snapshot part number above 2^32 − 1.
    SnapshotPartTooLarge,
    /// A snapshot part holding more records than its `total`.
    SnapshotOverTotal,
    /// A snapshot vector flag other than 0 and 1.
    SnapshotVectorFlag,
    /// A membership summary level above [`crate::membership::MAX_LEVEL`].
    DigestLevelTooHigh,
    /// A `Reconcile` whose bucket count is not 2^level.
    DigestBucketCount,
    /// A `Held` bucket number not below 2^level.
    HeldBucketOutOfRange,
    /// `Held` bucket numbers not in strictly increasing order.
    HeldBucketsOutOfOrder,
    /// A rejection reason over [`crate::MAX_REJECT_REASON_LEN`] bytes.
    RejectReasonTooLong,
    /// A rejection of an operation with sequence number 0.
    RejectSeqZero,
    /// A `Policy` filter over [`crate::MAX_POLICY_FILTER_LEN`] bytes.
    PolicyFilterTooLong,
    /// A `Collections` entry whose mode byte is neither 0 (smart) nor 1 (sealed).
    CollectionModeUnknown,
    /// A key epoch above `u32::MAX`.
    KeyEpochTooLarge,
    /// A key id presence byte other than 0 (none, in a `KeyTask` only) or 1.
    KeyPresenceUnknown,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::ProtocolVersionTooLarge => {
                f.write_str("protocol version does not fit in 16 bits")
            }
            Rule::DatabaseNameEmpty => f.write_str("database name is empty"),
            Rule::DatabaseNameTooLong => write!(
                f,
                "database name is longer than {MAX_DATABASE_NAME_LEN} bytes"
            ),
            Rule::CloseReasonTooLong => {
                write!(
                    f,
                    "close reason is longer than {MAX_CLOSE_REASON_LEN} bytes"
                )
            }
            Rule::TokenEmpty => f.write_str("enrollment token is empty"),
            Rule::TokenTooLong => {
                write!(f, "enrollment token is longer than {MAX_TOKEN_LEN} bytes")
            }
            Rule::EmptyOpsRange => {
                f.write_str("ops range is empty or reversed (from must be less than to)")
            }
            Rule::VectorOutOfOrder => {
                f.write_str("version vector entries are not in strictly increasing node order")
            }
            Rule::VectorSeqZero => f.write_str("version vector entry has sequence number 0"),
            Rule::TooManyChecks => write!(
                f,
                "a Pull carries more than {MAX_PULL_CHECKS} operation checks"
            ),
            Rule::CheckSeqZero => f.write_str("an operation check has sequence number 0"),
            Rule::SnapshotPartZero => {
                f.write_str("snapshot part number is 0 (parts are numbered from 1)")
            }
            Rule::SnapshotPartTooLarge => {
                f.write_str("snapshot part number does not fit in 32 bits")
            }
            Rule::SnapshotOverTotal => {
                f.write_str("snapshot part holds more records than its total")
            }
            Rule::SnapshotVectorFlag => f.write_str("snapshot vector flag is neither 0 nor 1"),
            Rule::DigestLevelTooHigh => write!(
                f,
                "membership summary level is above {}",
                crate::membership::MAX_LEVEL
            ),
            Rule::DigestBucketCount => {
                f.write_str("membership summary does not have 2^level buckets")
            }
            Rule::RejectReasonTooLong => write!(
                f,
                "rejection reason is longer than {} bytes",
                crate::MAX_REJECT_REASON_LEN
            ),
            Rule::RejectSeqZero => f.write_str("rejected operation has sequence number 0"),
            Rule::PolicyFilterTooLong => write!(
                f,
                "policy filter is longer than {} bytes",
                crate::MAX_POLICY_FILTER_LEN
            ),
            Rule::KeyEpochTooLarge => f.write_str("key epoch does not fit in 32 bits"),
            Rule::KeyPresenceUnknown => f.write_str("key id presence byte is neither 0 nor 1"),
            Rule::CollectionModeUnknown => {
                f.write_str("collection mode is neither 0 (smart) nor 1 (sealed)")
            }
            Rule::HeldBucketOutOfRange => f.write_str("Held bucket number is not below 2^level"),
            Rule::HeldBucketsOutOfOrder => {
                f.write_str("Held bucket numbers are not in strictly increasing order")
            }
        }
    }
}

/// One of the three messages of the Noise XX handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeMessage {
    /// Initiator → responder: suite byte and ephemeral key.
    First,
    /// Responder → initiator.
    Second,
    /// Initiator → responder.
    Third,
}

impl fmt::Display for HandshakeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeMessage::First => "first handshake message",
            HandshakeMessage::Second => "second handshake message",
            HandshakeMessage::Third => "third handshake message",
        })
    }
}

/// What is wrong with a handshake message ([`Malformed::Handshake`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFault {
    /// The message has no bytes.
    #[error("the {message} is empty")]
    Empty { message: HandshakeMessage },
    /// The message is shorter than the suite's message.
    #[error("the {message} is truncated: {len} bytes, {suite} needs {expected}")]
    Truncated {
        message: HandshakeMessage,
        len: usize,
        suite: Suite,
        expected: usize,
    },
    /// The message is longer than the suite's message.
    #[error(
        "the {message} has {} bytes after its end: {len} bytes, {suite} needs {expected}",
        len - expected
    )]
    TrailingBytes {
        message: HandshakeMessage,
        len: usize,
        suite: Suite,
        expected: usize,
    },
    /// The first message's ephemeral key is not a point of the P-256 curve.
    #[error("the first handshake message's ephemeral key is not a P-256 point")]
    NotAP256Point,
    /// A public key in the message is not valid for the suite's Diffie-Hellman function.
    #[error("the {message} carries an invalid public key")]
    InvalidPublicKey { message: HandshakeMessage },
    /// Noise could not read the message.
    #[error("the {message} is malformed")]
    Unreadable { message: HandshakeMessage },
    /// The message carries a payload (BlazeDB's handshake messages carry none).
    #[error("the {message} carries a payload")]
    Payload { message: HandshakeMessage },
}

/// What is wrong with a sealed payload's chunks ([`Malformed::Sealed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SealedFault {
    #[error("empty sealed payload")]
    Empty,
    #[error("truncated chunk header")]
    TruncatedHeader,
    #[error("zero-length chunk")]
    ZeroLengthChunk,
    #[error("chunk shorter than its 16-byte tag")]
    ShorterThanTag,
    #[error("chunk runs past the end of the payload")]
    PastTheEnd,
    #[error("bytes after the last chunk")]
    BytesAfterLastChunk,
    #[error("truncated: the payload ends with a full chunk, the last chunk is always shorter")]
    EndsWithFullChunk,
}

/// What is wrong with a compressed payload ([`Malformed::Decompress`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressFault {
    /// The announced plain length is over the frame limit.
    #[error("announced length exceeds the frame limit")]
    AnnouncedTooLong,
    /// The data is not exactly one zstd frame (a skippable frame, several frames, bytes after).
    #[error("the payload is not exactly one zstd frame")]
    NotOneFrame,
    /// zstd refused the frame; `reason` is zstd's name for the error.
    #[error("{reason}")]
    Corrupt { reason: &'static str },
    /// The frame expanded to another length than announced.
    #[error("expanded to {expanded} bytes, {announced} announced")]
    LengthMismatch { expanded: usize, announced: usize },
    /// The plain payload is itself compressed.
    #[error("a compressed payload holds another compressed payload")]
    Nested,
}

/// Why an enrollment token cannot be read ([`Unauthorized::Token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFault {
    #[error("it does not start with bzt1_")]
    Prefix,
    #[error("it is not valid base64url")]
    Base64,
    #[error("it is too short")]
    TooShort,
    #[error("unknown key suite")]
    UnknownSuite,
    #[error("the server key has the wrong length for its suite")]
    KeyLength,
}

/// Why static keys are not usable ([`LocalFailure::StaticKeys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFault {
    #[error("the private key is not 32 bytes")]
    PrivateKeyLength,
    #[error("the public key does not belong to the private key")]
    PublicKeyMismatch,
    #[error("the private key is not a P-256 scalar (zero, or not below the group order)")]
    NotAP256Scalar,
    #[error("the key lookup returned keys of another suite")]
    LookupSuiteMismatch,
}

/// How the cryptography failed on this side ([`LocalFailure::Crypto`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoFault {
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(getrandom::Error),
    /// `snow` failed for a reason that is not the peer's input.
    #[error("{0}")]
    Noise(NoiseError),
    /// A Noise message came out another length than the protocol fixes.
    #[error("{what} of {written} bytes, expected {expected}")]
    UnexpectedLength {
        what: &'static str,
        written: usize,
        expected: usize,
    },
    /// A chunk is longer than one Noise message can be.
    #[error("chunk longer than a Noise message")]
    ChunkTooLong,
    /// The handshake ended without the peer's static key.
    #[error("the handshake did not learn the peer's static key")]
    NoPeerStaticKey,
    /// The random number generator kept producing bytes that are not a valid private key.
    #[error("the random number generator keeps producing invalid P-256 keys")]
    NoValidKey,
    /// The channel sealed or opened 2^64 chunks.
    #[error("the channel has used up its nonces")]
    NoncesExhausted,
}

/// A `snow` error, kept as its text: `snow::Error` is neither `Clone` nor `Eq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseError(String);

impl From<snow::Error> for NoiseError {
    fn from(error: snow::Error) -> Self {
        NoiseError(error.to_string())
    }
}

impl fmt::Display for NoiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_closes_with_its_own_code() {
        let cases: [(ProtocolError, CloseCode, bool); 8] = [
            (Malformed::EmptyFrame.into(), CloseCode::ProtocolError, true),
            (
                Malformed::Invalid(Rule::EmptyOpsRange).into(),
                CloseCode::ProtocolError,
                true,
            ),
            (
                Unauthorized::Handshake {
                    message: HandshakeMessage::Second,
                }
                .into(),
                CloseCode::Unauthorized,
                true,
            ),
            (
                Unauthorized::Token(TokenFault::Prefix).into(),
                CloseCode::Unauthorized,
                false,
            ),
            (
                Incompatible::Version { ours: 2, theirs: 3 }.into(),
                CloseCode::VersionMismatch,
                false,
            ),
            (
                Incompatible::Suite {
                    suite: Suite::X25519AesGcmSha256,
                }
                .into(),
                CloseCode::VersionMismatch,
                false,
            ),
            (
                LocalFailure::Unsendable(Rule::EmptyOpsRange).into(),
                CloseCode::InternalError,
                false,
            ),
            (
                ProtocolError::crypto(CryptoFault::NoncesExhausted),
                CloseCode::InternalError,
                false,
            ),
        ];
        for (error, code, peer) in cases {
            assert_eq!(error.close_code(), code, "{error}");
            assert_eq!(error.is_malformed_input(), peer, "{error}");
        }
    }

    #[test]
    fn a_broken_rule_reads_the_same_received_or_about_to_be_sent() {
        let rule = Rule::TooManyChecks;
        assert_eq!(
            rule.to_string(),
            format!("a Pull carries more than {MAX_PULL_CHECKS} operation checks")
        );
        assert_eq!(
            ProtocolError::invalid(rule).to_string(),
            format!("invalid message: {rule}")
        );
        assert_eq!(
            ProtocolError::unsendable(rule).to_string(),
            format!("message cannot be sent: {rule}")
        );
    }

    #[test]
    fn handshake_faults_name_the_message_and_the_lengths() {
        let fault = HandshakeFault::TrailingBytes {
            message: HandshakeMessage::Third,
            len: 70,
            suite: Suite::X25519AesGcmSha256,
            expected: 64,
        };
        let text = ProtocolError::from(Malformed::Handshake(fault)).to_string();
        assert!(
            text.starts_with("malformed handshake message: the third handshake message has 6 bytes after its end: 70 bytes"),
            "{text}"
        );
    }
}
