//! The handshake: the prologue, the checks on handshake messages, and one type per phase of
//! each side, up to an [`Established`] handshake that becomes a [`SecureChannel`].

use std::fmt;
use std::num::NonZeroU64;

use snow::{HandshakeState, TransportState};

use super::channel::DEFAULT_REKEY_INTERVAL;
use super::{SecureChannel, StaticKeys, Suite, TAG_LEN, fingerprint, local};
use crate::error::{
    CryptoFault, HandshakeFault, HandshakeMessage, Incompatible, KeyFault, Malformed,
    ProtocolError, Rule, Unauthorized,
};
use crate::message::check_database;

// -------------------------------------------------------------------------------------------
// Prologue and handshake messages
// -------------------------------------------------------------------------------------------

/// The first bytes of every prologue.
pub const PROLOGUE_TAG: &[u8; 12] = b"BlazeDB sync";

/// The prologue both sides hash into the handshake: [`PROLOGUE_TAG`], the protocol version
/// (`u16`, big-endian), the length of the database name (one byte) and the name (UTF-8, 1 to
/// 255 bytes). Sides that build different prologues fail the handshake
/// ([`Unauthorized::Handshake`]). An invalid name is
/// [`LocalFailure::Unsendable`](crate::LocalFailure::Unsendable).
pub fn prologue(version: u16, database: &str) -> Result<Vec<u8>, ProtocolError> {
    check_database(database).map_err(ProtocolError::unsendable)?;
    let len = u8::try_from(database.len())
        .map_err(|_| ProtocolError::unsendable(Rule::DatabaseNameTooLong))?;
    let mut prologue = Vec::with_capacity(PROLOGUE_TAG.len() + 3 + database.len());
    prologue.extend_from_slice(PROLOGUE_TAG);
    prologue.extend_from_slice(&version.to_be_bytes());
    prologue.push(len);
    prologue.extend_from_slice(database.as_bytes());
    Ok(prologue)
}

/// Splits a first handshake message into its suite and its Noise message (the initiator's
/// ephemeral public key), checking everything that can be checked without keys: the suite
/// byte, the exact length, and (P-256) that the key is a point of the curve.
pub fn parse_first(message: &[u8]) -> Result<(Suite, &[u8]), ProtocolError> {
    let Some((&id, noise)) = message.split_first() else {
        return Err(handshake_error(HandshakeFault::Empty {
            message: HandshakeMessage::First,
        }));
    };
    let suite = Suite::from_id(id)?;
    check_len(
        message,
        suite.first_message_len(),
        HandshakeMessage::First,
        suite,
    )?;
    if suite == Suite::P256AesGcmSha256 && p256::PublicKey::from_sec1_bytes(noise).is_err() {
        return Err(handshake_error(HandshakeFault::NotAP256Point));
    }
    Ok((suite, noise))
}

fn check_len(
    bytes: &[u8],
    expected: usize,
    message: HandshakeMessage,
    suite: Suite,
) -> Result<(), ProtocolError> {
    let len = bytes.len();
    let fault = if len == 0 {
        HandshakeFault::Empty { message }
    } else if len < expected {
        HandshakeFault::Truncated {
            message,
            len,
            suite,
            expected,
        }
    } else if len > expected {
        HandshakeFault::TrailingBytes {
            message,
            len,
            suite,
            expected,
        }
    } else {
        return Ok(());
    };
    Err(handshake_error(fault))
}

fn handshake_error(fault: HandshakeFault) -> ProtocolError {
    Malformed::Handshake(fault).into()
}

/// An error of `snow` while reading the peer's handshake message.
fn read_error(error: snow::Error, message: HandshakeMessage) -> ProtocolError {
    match error {
        snow::Error::Decrypt => Unauthorized::Handshake { message }.into(),
        snow::Error::Dh => handshake_error(HandshakeFault::InvalidPublicKey { message }),
        snow::Error::Input => handshake_error(HandshakeFault::Unreadable { message }),
        other => local(other),
    }
}

fn handshake_state(
    keys: &StaticKeys,
    prologue: &[u8],
    initiator: bool,
) -> Result<HandshakeState, ProtocolError> {
    let builder = snow::Builder::new(keys.suite().params()?)
        .prologue(prologue)
        .map_err(local)?
        .local_private_key(keys.private())
        .map_err(local)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(local)
}

/// The next handshake message, with an empty payload: `expected` bytes.
fn write_message(state: &mut HandshakeState, expected: usize) -> Result<Vec<u8>, ProtocolError> {
    // snow wants room for a payload tag even where the payload is not encrypted (message 1).
    let mut message = vec![0_u8; expected + TAG_LEN];
    let written = state.write_message(&[], &mut message).map_err(local)?;
    if written != expected {
        return Err(ProtocolError::crypto(CryptoFault::UnexpectedLength {
            what: "handshake message",
            written,
            expected,
        }));
    }
    message.truncate(written);
    Ok(message)
}

/// Reads the peer's handshake message, which has been checked to have the exact length of a
/// message with an empty payload.
fn read_message(
    state: &mut HandshakeState,
    message: &[u8],
    which: HandshakeMessage,
) -> Result<(), ProtocolError> {
    let mut payload = vec![0_u8; message.len()];
    let len = state
        .read_message(message, &mut payload)
        .map_err(|error| read_error(error, which))?;
    if len != 0 {
        return Err(handshake_error(HandshakeFault::Payload { message: which }));
    }
    Ok(())
}

fn remote_static(state: &HandshakeState) -> Result<Vec<u8>, ProtocolError> {
    state
        .get_remote_static()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| ProtocolError::crypto(CryptoFault::NoPeerStaticKey))
}

// -------------------------------------------------------------------------------------------
// Handshake: initiator
// -------------------------------------------------------------------------------------------

/// The side that connects, before it sends the first handshake message.
pub struct Initiator {
    state: HandshakeState,
    suite: Suite,
}

impl Initiator {
    /// Starts a handshake with `keys` (whose suite it uses) to sync `database` on the
    /// responder with protocol `version`; both go into the [`prologue`].
    pub fn new(
        keys: &StaticKeys,
        database: &str,
        version: u16,
    ) -> Result<Initiator, ProtocolError> {
        let prologue = prologue(version, database)?;
        Ok(Initiator {
            state: handshake_state(keys, &prologue, true)?,
            suite: keys.suite(),
        })
    }

    /// The suite of this handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The first handshake message (`-> e`): the suite id and a fresh ephemeral public key.
    pub fn write_first(mut self) -> Result<(InitiatorAwaitingSecond, Vec<u8>), ProtocolError> {
        let mut message = Vec::with_capacity(self.suite.first_message_len());
        message.push(self.suite.id());
        message.extend(write_message(&mut self.state, self.suite.public_key_len())?);
        let next = InitiatorAwaitingSecond {
            state: self.state,
            suite: self.suite,
        };
        Ok((next, message))
    }
}

/// The initiator after sending the first message, waiting for the second.
pub struct InitiatorAwaitingSecond {
    state: HandshakeState,
    suite: Suite,
}

impl InitiatorAwaitingSecond {
    /// The suite of this handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Reads the second handshake message (`<- e, ee, s, es`), which reveals the responder's
    /// static key.
    pub fn read_second(mut self, message: &[u8]) -> Result<InitiatorReadSecond, ProtocolError> {
        check_len(
            message,
            self.suite.second_message_len(),
            HandshakeMessage::Second,
            self.suite,
        )?;
        read_message(&mut self.state, message, HandshakeMessage::Second)?;
        let remote_static = remote_static(&self.state)?;
        Ok(InitiatorReadSecond {
            state: self.state,
            suite: self.suite,
            remote_static,
        })
    }
}

/// The initiator after reading the second message: it knows the responder's static key and
/// may check it before [`InitiatorReadSecond::write_third`] reveals its own.
pub struct InitiatorReadSecond {
    state: HandshakeState,
    suite: Suite,
    remote_static: Vec<u8>,
}

impl InitiatorReadSecond {
    /// The suite of this handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The responder's static public key, authenticated by the handshake.
    pub fn remote_static(&self) -> &[u8] {
        &self.remote_static
    }

    /// The third handshake message (`-> s, se`), which carries the initiator's static key.
    /// The handshake is then complete on this side.
    pub fn write_third(mut self) -> Result<(Established, Vec<u8>), ProtocolError> {
        let message = write_message(&mut self.state, self.suite.third_message_len())?;
        let established = Established::new(self.state, self.suite, self.remote_static)?;
        Ok((established, message))
    }
}

// -------------------------------------------------------------------------------------------
// Handshake: responder
// -------------------------------------------------------------------------------------------

/// The side that accepts, after reading the first handshake message.
pub struct Responder {
    state: HandshakeState,
    suite: Suite,
}

impl Responder {
    /// Reads the first handshake message ([`parse_first`]) and takes this side's static keys
    /// for its suite from `keys`; a suite `keys` has nothing for is
    /// [`Incompatible::Suite`]. `database` and `version` go into the
    /// [`prologue`]: the database this side serves on this connection, known to both sides
    /// before the handshake (from the address the initiator connected to, for example).
    pub fn read_first<'k>(
        keys: impl FnOnce(Suite) -> Option<&'k StaticKeys>,
        database: &str,
        version: u16,
        message: &[u8],
    ) -> Result<Responder, ProtocolError> {
        let prologue = prologue(version, database)?;
        let (suite, noise) = parse_first(message)?;
        let keys = keys(suite).ok_or(Incompatible::Suite { suite })?;
        if keys.suite() != suite {
            return Err(ProtocolError::invalid_static_keys(
                KeyFault::LookupSuiteMismatch,
            ));
        }
        let mut state = handshake_state(keys, &prologue, false)?;
        read_message(&mut state, noise, HandshakeMessage::First)?;
        Ok(Responder { state, suite })
    }

    /// The suite the initiator chose.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The second handshake message (`<- e, ee, s, es`): a fresh ephemeral key and this
    /// side's static key, encrypted.
    pub fn write_second(mut self) -> Result<(ResponderAwaitingThird, Vec<u8>), ProtocolError> {
        let message = write_message(&mut self.state, self.suite.second_message_len())?;
        let next = ResponderAwaitingThird {
            state: self.state,
            suite: self.suite,
        };
        Ok((next, message))
    }
}

/// The responder after sending the second message, waiting for the third.
pub struct ResponderAwaitingThird {
    state: HandshakeState,
    suite: Suite,
}

impl ResponderAwaitingThird {
    /// The suite of this handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Reads the third handshake message (`-> s, se`), which reveals the initiator's static
    /// key. The handshake is then complete; check [`Established::remote_static`] (is this
    /// key enrolled for the database?) before using the channel.
    pub fn read_third(mut self, message: &[u8]) -> Result<Established, ProtocolError> {
        check_len(
            message,
            self.suite.third_message_len(),
            HandshakeMessage::Third,
            self.suite,
        )?;
        read_message(&mut self.state, message, HandshakeMessage::Third)?;
        let remote_static = remote_static(&self.state)?;
        Established::new(self.state, self.suite, remote_static)
    }
}

// -------------------------------------------------------------------------------------------
// Established handshake
// -------------------------------------------------------------------------------------------

/// A completed handshake (either side), before its channel is used.
pub struct Established {
    transport: TransportState,
    suite: Suite,
    remote_static: Vec<u8>,
    handshake_hash: Vec<u8>,
    rekey_interval: NonZeroU64,
}

impl Established {
    fn new(
        state: HandshakeState,
        suite: Suite,
        remote_static: Vec<u8>,
    ) -> Result<Established, ProtocolError> {
        let handshake_hash = state.get_handshake_hash().to_vec();
        let transport = state.into_transport_mode().map_err(local)?;
        Ok(Established {
            transport,
            suite,
            remote_static,
            handshake_hash,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        })
    }

    /// The suite of this handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The peer's static public key, authenticated by the handshake.
    pub fn remote_static(&self) -> &[u8] {
        &self.remote_static
    }

    /// The Noise handshake hash: the same on both sides and unique to this handshake, for
    /// binding something to the session.
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    /// Rekeys after every `chunks` chunks instead of [`REKEY_INTERVAL`](super::REKEY_INTERVAL). Both sides must use
    /// the same interval, so this is for tests: a peer with another interval fails to decrypt
    /// the first chunk after either side's rekey.
    pub fn with_rekey_interval(mut self, chunks: NonZeroU64) -> Established {
        self.rekey_interval = chunks;
        self
    }

    /// The channel that seals and opens payloads with the handshake's keys.
    pub fn into_channel(self) -> SecureChannel {
        SecureChannel::new(
            self.transport,
            self.suite,
            self.remote_static,
            self.handshake_hash,
            self.rekey_interval,
        )
    }
}

// Debug output names the phase, the suite and the peer's key fingerprint, never key material.

/// `Debug` for the handshake phases that know only their suite.
macro_rules! debug_suite_only {
    ($($phase:ident),*) => {$(
        impl fmt::Debug for $phase {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($phase))
                    .field("suite", &self.suite)
                    .finish_non_exhaustive()
            }
        }
    )*};
}

debug_suite_only!(
    Initiator,
    InitiatorAwaitingSecond,
    Responder,
    ResponderAwaitingThird
);

impl fmt::Debug for InitiatorReadSecond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiatorReadSecond")
            .field("suite", &self.suite)
            .field(
                "remote",
                &format_args!("{}", fingerprint(&self.remote_static)),
            )
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("suite", &self.suite)
            .field(
                "remote",
                &format_args!("{}", fingerprint(&self.remote_static)),
            )
            .field("rekey_interval", &self.rekey_interval)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::error::LocalFailure;
    use crate::message::{CloseCode, PROTOCOL_VERSION};
    use crate::secure::testing::*;

    #[test]
    fn the_prologue_is_the_tag_the_version_and_the_length_prefixed_database_name() {
        let bytes = prologue(1, "bugs").unwrap();
        assert_eq!(bytes, b"BlazeDB sync\x00\x01\x04bugs");
        let long = "x".repeat(255);
        let bytes = prologue(0x1234, &long).unwrap();
        assert_eq!(&bytes[..15], b"BlazeDB sync\x12\x34\xFF");
        assert_eq!(bytes.len(), 15 + 255);
    }

    #[test]
    fn an_empty_or_overlong_database_name_is_refused_before_the_handshake() {
        let keys = keys(Suite::X25519AesGcmSha256);
        for name in [String::new(), "x".repeat(256)] {
            let err = Initiator::new(&keys, &name, 1).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Local(LocalFailure::Unsendable(_))),
                "{err}"
            );
            assert!(!err.is_malformed_input());
            let err = Responder::read_first(|_| Some(&keys), &name, 1, &[2; 33]).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Local(LocalFailure::Unsendable(_))),
                "{err}"
            );
        }
    }

    #[test]
    fn a_full_handshake_with_each_suite_teaches_each_side_the_others_static_key() {
        for suite in Suite::ALL {
            let initiator_keys = keys(suite);
            let responder_keys = keys(suite);
            let (initiator, first) = Initiator::new(&initiator_keys, "bugs", PROTOCOL_VERSION)
                .unwrap()
                .write_first()
                .unwrap();
            assert_eq!(first.len(), suite.first_message_len());
            assert_eq!(first[0], suite.id());
            let responder = Responder::read_first(
                |s| (s == suite).then_some(&responder_keys),
                "bugs",
                PROTOCOL_VERSION,
                &first,
            )
            .unwrap();
            assert_eq!(responder.suite(), suite);
            let (responder, second) = responder.write_second().unwrap();
            assert_eq!(second.len(), suite.second_message_len());
            let initiator = initiator.read_second(&second).unwrap();
            assert_eq!(initiator.remote_static(), responder_keys.public());
            let (initiator, third) = initiator.write_third().unwrap();
            assert_eq!(third.len(), suite.third_message_len());
            let responder = responder.read_third(&third).unwrap();
            assert_eq!(responder.remote_static(), initiator_keys.public());
            assert_eq!(initiator.remote_static(), responder_keys.public());
            assert_eq!(initiator.handshake_hash(), responder.handshake_hash());
            assert_eq!(initiator.handshake_hash().len(), 32);

            let (mut initiator, mut responder) =
                (initiator.into_channel(), responder.into_channel());
            assert_eq!(responder.remote_static(), initiator_keys.public());
            let sealed = initiator.seal(b"Hello").unwrap();
            assert_eq!(sealed.len(), 2 + 5 + 16);
            assert_eq!(responder.open(&sealed).unwrap(), b"Hello");
            let sealed = responder.seal(b"Hello back").unwrap();
            assert_eq!(initiator.open(&sealed).unwrap(), b"Hello back");
        }
    }

    #[test]
    fn the_handshake_messages_have_the_documented_lengths() {
        let p256 = Suite::P256AesGcmSha256;
        let x25519 = Suite::X25519AesGcmSha256;
        assert_eq!(
            (
                p256.first_message_len(),
                p256.second_message_len(),
                p256.third_message_len()
            ),
            (66, 162, 97)
        );
        assert_eq!(
            (
                x25519.first_message_len(),
                x25519.second_message_len(),
                x25519.third_message_len()
            ),
            (33, 96, 64)
        );
    }

    #[test]
    fn a_different_database_name_makes_the_handshake_fail() {
        for suite in Suite::ALL {
            let err = handshake_with(
                &keys(suite),
                &keys(suite),
                ("bugs", PROTOCOL_VERSION),
                ("notes", PROTOCOL_VERSION),
            )
            .unwrap_err();
            assert_eq!(
                err,
                Unauthorized::Handshake {
                    message: HandshakeMessage::Second
                }
                .into()
            );
            assert!(err.is_malformed_input());
            assert_eq!(err.close_code(), CloseCode::Unauthorized);
            assert!(err.to_string().contains("database names"), "{err}");
        }
    }

    #[test]
    fn a_different_protocol_version_makes_the_handshake_fail() {
        let err = handshake_with(
            &keys(Suite::P256AesGcmSha256),
            &keys(Suite::P256AesGcmSha256),
            ("bugs", 1),
            ("bugs", 2),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Unauthorized(Unauthorized::Handshake { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_25519_initiator_gets_a_clear_error_from_a_responder_with_only_p256_keys() {
        let initiator_keys = keys(Suite::X25519AesGcmSha256);
        let responder_keys = keys(Suite::P256AesGcmSha256);
        let err = handshake_with(
            &initiator_keys,
            &responder_keys,
            ("bugs", PROTOCOL_VERSION),
            ("bugs", PROTOCOL_VERSION),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Incompatible::Suite {
                suite: Suite::X25519AesGcmSha256
            }
            .into()
        );
        assert_eq!(
            err.to_string(),
            "the peer's handshake uses Noise_XX_25519_AESGCM_SHA256 (suite 0x02), for which \
             this side has no static key"
        );
        assert!(!err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::VersionMismatch);
    }

    #[test]
    fn a_key_lookup_that_returns_keys_of_another_suite_is_refused() {
        let initiator_keys = keys(Suite::X25519AesGcmSha256);
        let wrong = keys(Suite::P256AesGcmSha256);
        let (_, first) = Initiator::new(&initiator_keys, "bugs", 1)
            .unwrap()
            .write_first()
            .unwrap();
        let err = Responder::read_first(|_| Some(&wrong), "bugs", 1, &first).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Local(LocalFailure::StaticKeys(_))),
            "{err}"
        );
    }

    #[test]
    fn a_man_in_the_middle_is_seen_by_each_end_as_its_own_key_not_the_other_ends() {
        for suite in Suite::ALL {
            let client = keys(suite);
            let server = keys(suite);
            let mallory = keys(suite);
            let prologue = ("bugs", PROTOCOL_VERSION);
            // Mallory answers the client as a responder and calls the server as an initiator.
            let (client_side, mallory_as_responder) =
                handshake_with(&client, &mallory, prologue, prologue).unwrap();
            let (mallory_as_initiator, server_side) =
                handshake_with(&mallory, &server, prologue, prologue).unwrap();
            // Authentication is by static key: the server sees Mallory's key, not the
            // client's, so an enrollment check refuses her; the client sees Mallory's key, not
            // the server's, so a pinned server key refuses her.
            assert_eq!(server_side.remote_static(), mallory.public());
            assert_ne!(server_side.remote_static(), client.public());
            assert_eq!(client_side.remote_static(), mallory.public());
            assert_ne!(client_side.remote_static(), server.public());
            // The two sessions have nothing in common.
            assert_ne!(client_side.handshake_hash(), server_side.handshake_hash());
            let (mut client_channel, mut server_channel) =
                (client_side.into_channel(), server_side.into_channel());
            let sealed = client_channel.seal(b"secret").unwrap();
            assert_eq!(
                server_channel.open(&sealed),
                Err(ProtocolError::Malformed(Malformed::Decrypt))
            );
            drop((mallory_as_responder, mallory_as_initiator));
        }
    }

    #[test]
    fn a_man_in_the_middle_cannot_splice_the_servers_second_message_into_the_clients_handshake() {
        for suite in Suite::ALL {
            let client = keys(suite);
            let server = keys(suite);
            let mallory = keys(suite);
            let (client_hs, _) = Initiator::new(&client, "bugs", 1)
                .unwrap()
                .write_first()
                .unwrap();
            // Mallory forwards her own first message to the server (she cannot reuse the
            // client's: she would lack its ephemeral private key for the rest)...
            let (_, mallory_first) = Initiator::new(&mallory, "bugs", 1)
                .unwrap()
                .write_first()
                .unwrap();
            let lookup = |_| Some(&server);
            let (_, server_second) = Responder::read_first(lookup, "bugs", 1, &mallory_first)
                .unwrap()
                .write_second()
                .unwrap();
            // ...and hands the server's second message to the client: it does not decrypt,
            // because it answers another ephemeral key.
            let err = client_hs.read_second(&server_second).unwrap_err();
            assert!(
                matches!(
                    err,
                    ProtocolError::Unauthorized(Unauthorized::Handshake { .. })
                ),
                "{err}"
            );
            // Forwarding the client's own messages unchanged only makes Mallory a relay: the
            // ends then learn each other's real keys, and she has no key to read anything.
            let (client_hs, client_first) = Initiator::new(&client, "bugs", 1)
                .unwrap()
                .write_first()
                .unwrap();
            let (server_hs, second) = Responder::read_first(lookup, "bugs", 1, &client_first)
                .unwrap()
                .write_second()
                .unwrap();
            let client_hs = client_hs.read_second(&second).unwrap();
            assert_eq!(client_hs.remote_static(), server.public());
            let (_, third) = client_hs.write_third().unwrap();
            assert_eq!(
                server_hs.read_third(&third).unwrap().remote_static(),
                client.public()
            );
        }
    }

    #[test]
    fn the_first_message_parser_refuses_empty_truncated_trailing_and_off_curve_input() {
        let err = parse_first(&[]).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let keys = keys(Suite::P256AesGcmSha256);
        let (_, first) = Initiator::new(&keys, "bugs", 1)
            .unwrap()
            .write_first()
            .unwrap();
        assert_eq!(parse_first(&first).unwrap().0, Suite::P256AesGcmSha256);
        let err = parse_first(&first[..40]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut trailing = first.clone();
        trailing.push(0);
        let err = parse_first(&trailing).unwrap_err();
        assert!(err.to_string().contains("1 bytes after its end"), "{err}");
        let mut off_curve = first.clone();
        off_curve[40] ^= 1;
        let err = parse_first(&off_curve).unwrap_err();
        assert!(err.to_string().contains("not a P-256 point"), "{err}");
        assert!(err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        assert!(parse_first(&[0x01]).is_err());
        assert!(parse_first(&vec![0x02; 70_000]).is_err());
    }

    #[test]
    fn an_altered_second_or_third_message_fails_the_handshake() {
        for suite in Suite::ALL {
            let (a, b) = (keys(suite), keys(suite));
            let (initiator, first) = Initiator::new(&a, "bugs", 1)
                .unwrap()
                .write_first()
                .unwrap();
            let responder = Responder::read_first(|_| Some(&b), "bugs", 1, &first).unwrap();
            let (_, mut second) = responder.write_second().unwrap();
            *second.last_mut().unwrap() ^= 0x80;
            assert!(initiator.read_second(&second).is_err());

            let (initiator, first) = Initiator::new(&a, "bugs", 1)
                .unwrap()
                .write_first()
                .unwrap();
            let responder = Responder::read_first(|_| Some(&b), "bugs", 1, &first).unwrap();
            let (responder, second) = responder.write_second().unwrap();
            let (_, mut third) = initiator
                .read_second(&second)
                .unwrap()
                .write_third()
                .unwrap();
            third[3] ^= 0x01;
            let err = responder.read_third(&third).unwrap_err();
            assert_eq!(
                err,
                Unauthorized::Handshake {
                    message: HandshakeMessage::Third
                }
                .into()
            );
        }
    }

    #[test]
    fn second_and_third_messages_of_the_wrong_length_are_refused() {
        let suite = Suite::X25519AesGcmSha256;
        let (a, b) = (keys(suite), keys(suite));
        let (initiator, first) = Initiator::new(&a, "bugs", 1)
            .unwrap()
            .write_first()
            .unwrap();
        let responder = Responder::read_first(|_| Some(&b), "bugs", 1, &first).unwrap();
        let (_, mut second) = responder.write_second().unwrap();
        second.push(0);
        let err = initiator.read_second(&second).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Malformed(Malformed::Handshake(_))),
            "{err}"
        );
        assert!(err.to_string().contains("after its end"), "{err}");
    }
}
