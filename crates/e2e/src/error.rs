//! [`E2eError`]: what can go wrong sealing, opening, wrapping and unwrapping.

use crate::seal::KeyId;

/// Why a value or key could not be sealed or opened. Bad input from the server or a peer
/// (`Malformed`, `Tampered`, `WrongKey`) is told apart from the caller's mistakes
/// (`InvalidKey`) and from local failures (`Random`, `Crypto`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// The bytes are not a sealed value or wrapped key of this format.
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    /// Authentication failed: the wrong key, or bytes that were changed or moved (to another
    /// database, collection, record, scope, epoch, record, field, stamp or origin, or another recipient).
    #[error(
        "the sealed {what} does not open: it was sealed under another key, or changed, or \
         moved from where it was sealed (database, collection, record, field, stamp, origin, \
         epoch or recipient)"
    )]
    Tampered { what: &'static str },
    /// A value that names another key than the one given to open it.
    #[error("the value was sealed under key {sealed}, not key {given}")]
    WrongKey { sealed: KeyId, given: KeyId },
    /// A key of the wrong length or not on the curve (the caller's mistake).
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        what: &'static str,
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// The cipher refused to seal (internal: lengths beyond what it allows).
    #[error("sealing failed: {0}")]
    Crypto(&'static str),
}

pub type Result<T, E = E2eError> = std::result::Result<T, E>;
