//! The secure channel: a Noise `XX` handshake that authenticates both nodes by their long-term
//! static keys, then a [`SecureChannel`] that seals and opens payloads.
//!
//! Like the rest of this crate (and like `snow` and `rustls`), this module does no I/O: every
//! step takes bytes and returns bytes, and the transport carries them. The handshake has one
//! type per phase, and each step consumes the previous phase, so steps cannot be repeated,
//! skipped or taken out of order:
//!
//! ```text
//! initiator                                             responder
//! Initiator::new ── write_first ──── message 1 ───────▶ Responder::read_first
//! InitiatorAwaitingSecond                               Responder
//!                 ◀─────────────── message 2 ────────── write_second
//! read_second ──▶ InitiatorReadSecond                   ResponderAwaitingThird
//!   (check remote_static: the responder's key)
//! write_third ───────────────────── message 3 ───────▶ read_third ──▶ Established
//! Established                                             (check remote_static: the
//! into_channel ──▶ SecureChannel                            initiator's key)
//!                                                       into_channel ──▶ SecureChannel
//! ```
//!
//! The wire format (suite ids, prologue bytes, message layouts, sealed chunks, rekeying) is
//! specified in `docs/protocol.md`, section "Secure channel".
//!
//! ```
//! use blazedb_protocol::PROTOCOL_VERSION;
//! use blazedb_protocol::secure::{Initiator, Responder, StaticKeys, Suite};
//!
//! let client_keys = StaticKeys::generate(Suite::default())?;
//! let server_keys = StaticKeys::generate(Suite::default())?;
//!
//! let (client, first) = Initiator::new(&client_keys, "bugs", PROTOCOL_VERSION)?.write_first()?;
//! let server = Responder::read_first(
//!     |suite| (suite == server_keys.suite()).then_some(&server_keys),
//!     "bugs",
//!     PROTOCOL_VERSION,
//!     &first,
//! )?;
//! let (server, second) = server.write_second()?;
//! let client = client.read_second(&second)?;
//! // The client may check the server's key here, before it reveals its own.
//! assert_eq!(client.remote_static(), server_keys.public());
//! let (client, third) = client.write_third()?;
//! let server = server.read_third(&third)?;
//! // The server checks that this key is enrolled for the database.
//! assert_eq!(server.remote_static(), client_keys.public());
//!
//! let (mut client, mut server) = (client.into_channel(), server.into_channel());
//! let sealed = client.seal(b"hello")?;
//! assert_eq!(server.open(&sealed)?, b"hello");
//! // A replayed payload fails, and the channel stays failed: close the connection.
//! assert!(server.open(&sealed).is_err());
//! assert!(server.seal(b"anything").is_err());
//! # Ok::<(), blazedb_protocol::ProtocolError>(())
//! ```
//!
//! The module follows the layers of the protocol: [`Suite`] (the Noise protocols a handshake
//! may use), [`StaticKeys`] (a node's long-term key pair per suite), the handshake (the
//! prologue and one type per phase, up to [`Established`]) and [`SecureChannel`] (sealed
//! payloads and rekeying).

mod channel;
mod handshake;
mod keys;
mod suite;
#[cfg(test)]
mod testing;

pub use channel::{
    CHUNK_HEADER_LEN, MAX_CHUNK_PLAINTEXT_LEN, MAX_NOISE_MESSAGE_LEN, MAX_PLAINTEXT_LEN,
    MAX_SEALED_LEN, REKEY_INTERVAL, SecureChannel, max_plaintext_len, sealed_len,
};
pub use handshake::{
    Established, Initiator, InitiatorAwaitingSecond, InitiatorReadSecond, PROLOGUE_TAG, Responder,
    ResponderAwaitingThird, parse_first, prologue,
};
pub use keys::{PRIVATE_KEY_LEN, StaticKeys, fingerprint};
pub use suite::Suite;

use crate::error::{CryptoFault, ProtocolError};

/// Bytes of the authentication tag that AES-GCM adds to every encrypted Noise message.
pub const TAG_LEN: usize = 16;

/// An error of `snow` that is not the peer's doing.
fn local(error: snow::Error) -> ProtocolError {
    ProtocolError::crypto(CryptoFault::Noise(error.into()))
}
