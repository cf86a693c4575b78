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

use std::fmt;
use std::num::NonZeroU64;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::{Digest, Sha256};
use snow::{HandshakeState, TransportState};
use zeroize::Zeroizing;

use crate::error::ProtocolError;
use crate::frame::DEFAULT_MAX_FRAME_LEN;
use crate::message::check_database;

/// The first bytes of every prologue.
pub const PROLOGUE_TAG: &[u8; 12] = b"BlazeDB sync";
/// Bytes of a private static key, for every suite.
pub const PRIVATE_KEY_LEN: usize = 32;
/// Bytes of the authentication tag that AES-GCM adds to every encrypted Noise message.
pub const TAG_LEN: usize = 16;
/// The longest Noise message (the Noise specification's limit).
pub const MAX_NOISE_MESSAGE_LEN: usize = 65_535;
/// Bytes before each chunk of a sealed payload: the chunk's length as a big-endian `u16`.
pub const CHUNK_HEADER_LEN: usize = 2;
/// Plaintext bytes one chunk carries at most; every chunk but the last carries exactly this
/// many, the last carries fewer (possibly none).
pub const MAX_CHUNK_PLAINTEXT_LEN: usize = MAX_NOISE_MESSAGE_LEN - TAG_LEN;
/// Longest sealed payload [`SecureChannel::open`] accepts and [`SecureChannel::seal`]
/// produces: the default frame limit, so a sealed payload always fits in one frame.
pub const MAX_SEALED_LEN: usize = DEFAULT_MAX_FRAME_LEN as usize;
/// Longest plaintext [`SecureChannel::seal`] accepts: the longest whose sealed payload is at
/// most [`MAX_SEALED_LEN`] (16 MiB minus 4 608 bytes of chunk overhead).
pub const MAX_PLAINTEXT_LEN: usize = max_plaintext_len(MAX_SEALED_LEN);
/// Each direction rekeys after every this many chunks (Noise `Rekey`, section 11.3 of the
/// specification), so one key encrypts at most about 4 GiB.
pub const REKEY_INTERVAL: u64 = 1 << 16;

const DEFAULT_REKEY_INTERVAL: NonZeroU64 = match NonZeroU64::new(REKEY_INTERVAL) {
    Some(interval) => interval,
    None => NonZeroU64::MIN,
};

/// Bytes one chunk adds to the plaintext it carries: its header and its tag.
const CHUNK_OVERHEAD: usize = CHUNK_HEADER_LEN + TAG_LEN;

/// Length of the sealed payload of a `plaintext_len`-byte plaintext: the plaintext, and
/// [`CHUNK_HEADER_LEN`] + [`TAG_LEN`] bytes for each chunk. There are
/// `plaintext_len / MAX_CHUNK_PLAINTEXT_LEN + 1` chunks, since the last one is never full.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    let chunks = plaintext_len / MAX_CHUNK_PLAINTEXT_LEN + 1;
    plaintext_len.saturating_add(chunks.saturating_mul(CHUNK_OVERHEAD))
}

/// The longest plaintext whose sealed payload has at most `max_sealed` bytes (0 when not
/// even an empty plaintext fits).
pub const fn max_plaintext_len(max_sealed: usize) -> usize {
    if max_sealed < CHUNK_OVERHEAD {
        return 0;
    }
    let room = max_sealed - CHUNK_OVERHEAD;
    let full_chunks = room / (MAX_CHUNK_PLAINTEXT_LEN + CHUNK_OVERHEAD);
    let rest = room % (MAX_CHUNK_PLAINTEXT_LEN + CHUNK_OVERHEAD);
    let last = if rest < MAX_CHUNK_PLAINTEXT_LEN {
        rest
    } else {
        MAX_CHUNK_PLAINTEXT_LEN - 1
    };
    full_chunks * MAX_CHUNK_PLAINTEXT_LEN + last
}

// -------------------------------------------------------------------------------------------
// Suites
// -------------------------------------------------------------------------------------------

/// A Noise protocol the handshake may use. The initiator picks it and names it in the first
/// handshake message by its [`Suite::id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Suite {
    /// `Noise_XX_P256_AESGCM_SHA256`, wire id `0x01`: the default.
    #[default]
    P256AesGcmSha256,
    /// `Noise_XX_25519_AESGCM_SHA256`, wire id `0x02`.
    X25519AesGcmSha256,
}

impl Suite {
    /// Every suite, in id order.
    pub const ALL: [Suite; 2] = [Suite::P256AesGcmSha256, Suite::X25519AesGcmSha256];

    /// The byte that names this suite in the first handshake message.
    pub fn id(self) -> u8 {
        match self {
            Suite::P256AesGcmSha256 => 0x01,
            Suite::X25519AesGcmSha256 => 0x02,
        }
    }

    /// The suite named by `id`; [`ProtocolError::UnknownSuite`] for any other byte.
    pub fn from_id(id: u8) -> Result<Suite, ProtocolError> {
        match id {
            0x01 => Ok(Suite::P256AesGcmSha256),
            0x02 => Ok(Suite::X25519AesGcmSha256),
            _ => Err(ProtocolError::UnknownSuite { id }),
        }
    }

    /// The Noise protocol name, which Noise also hashes into the handshake.
    pub fn noise_name(self) -> &'static str {
        match self {
            Suite::P256AesGcmSha256 => "Noise_XX_P256_AESGCM_SHA256",
            Suite::X25519AesGcmSha256 => "Noise_XX_25519_AESGCM_SHA256",
        }
    }

    /// Bytes of a public key (static or ephemeral): 65 for P-256 (uncompressed SEC 1), 32
    /// for X25519.
    pub fn public_key_len(self) -> usize {
        match self {
            Suite::P256AesGcmSha256 => 65,
            Suite::X25519AesGcmSha256 => 32,
        }
    }

    /// Bytes of the first handshake message: the suite id and the initiator's ephemeral key.
    pub fn first_message_len(self) -> usize {
        1 + self.public_key_len()
    }

    /// Bytes of the second handshake message: the responder's ephemeral key, its encrypted
    /// static key, and the tag of the empty payload.
    pub fn second_message_len(self) -> usize {
        2 * self.public_key_len() + 2 * TAG_LEN
    }

    /// Bytes of the third handshake message: the initiator's encrypted static key and the
    /// tag of the empty payload.
    pub fn third_message_len(self) -> usize {
        self.public_key_len() + 2 * TAG_LEN
    }

    fn params(self) -> Result<snow::params::NoiseParams, ProtocolError> {
        self.noise_name().parse().map_err(local)
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noise_name())
    }
}

// -------------------------------------------------------------------------------------------
// Static keys
// -------------------------------------------------------------------------------------------

/// A node's long-term static key pair for one [`Suite`].
///
/// The private key is wiped from memory when the value is dropped and never appears in
/// `Debug` output, which shows the suite and the public key's [`fingerprint`]. (`snow` keeps
/// its own copy during a handshake and session, which it does not wipe.)
#[derive(Clone)]
pub struct StaticKeys {
    suite: Suite,
    private: Zeroizing<[u8; PRIVATE_KEY_LEN]>,
    public: Vec<u8>,
}

impl StaticKeys {
    /// A new random key pair, from the operating system's random number generator.
    pub fn generate(suite: Suite) -> Result<StaticKeys, ProtocolError> {
        // 32 random bytes are a valid P-256 scalar except with probability about 2^-32, and
        // always a valid X25519 key; a few draws make a failure impossible in practice.
        for _ in 0..8 {
            let mut private = Zeroizing::new([0_u8; PRIVATE_KEY_LEN]);
            getrandom::fill(private.as_mut_slice()).map_err(|error| ProtocolError::Crypto {
                what: format!("the operating system's random number generator failed: {error}"),
            })?;
            if let Ok(public) = derive_public(suite, &private) {
                return Ok(StaticKeys {
                    suite,
                    private,
                    public,
                });
            }
        }
        Err(ProtocolError::Crypto {
            what: "the random number generator keeps producing invalid P-256 keys".to_owned(),
        })
    }

    /// The key pair with this private key; the public key is derived from it.
    pub fn from_private(suite: Suite, private: &[u8]) -> Result<StaticKeys, ProtocolError> {
        let mut key = Zeroizing::new([0_u8; PRIVATE_KEY_LEN]);
        if private.len() != PRIVATE_KEY_LEN {
            return Err(ProtocolError::InvalidStaticKeys {
                what: "the private key is not 32 bytes",
            });
        }
        key.copy_from_slice(private);
        let public = derive_public(suite, &key)?;
        Ok(StaticKeys {
            suite,
            private: key,
            public,
        })
    }

    /// The key pair as stored: checks that `public` belongs to `private`.
    pub fn from_parts(
        suite: Suite,
        private: &[u8],
        public: &[u8],
    ) -> Result<StaticKeys, ProtocolError> {
        let keys = StaticKeys::from_private(suite, private)?;
        if keys.public != public {
            return Err(ProtocolError::InvalidStaticKeys {
                what: "the public key does not belong to the private key",
            });
        }
        Ok(keys)
    }

    /// The suite these keys are for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The public key: 65 bytes (uncompressed SEC 1) for P-256, 32 for X25519.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The private key (32 bytes). Secret: store it only encrypted, never log it.
    pub fn private(&self) -> &[u8] {
        self.private.as_slice()
    }

    /// The [`fingerprint`] of the public key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("suite", &self.suite)
            .field("public", &format_args!("{}", self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// A short name for a public key, for logs and enrolment lists: the first 8 bytes of its
/// SHA-256 hash in lowercase hex (16 characters).
pub fn fingerprint(public_key: &[u8]) -> String {
    let hash = Sha256::digest(public_key);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn derive_public(suite: Suite, private: &[u8; PRIVATE_KEY_LEN]) -> Result<Vec<u8>, ProtocolError> {
    match suite {
        Suite::P256AesGcmSha256 => {
            let secret = p256::SecretKey::from_slice(private).map_err(|_| {
                ProtocolError::InvalidStaticKeys {
                    what: "the private key is not a P-256 scalar (zero, or not below the group order)",
                }
            })?;
            Ok(secret
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec())
        }
        Suite::X25519AesGcmSha256 => Ok(MontgomeryPoint::mul_base_clamped(*private)
            .to_bytes()
            .to_vec()),
    }
}

// -------------------------------------------------------------------------------------------
// Prologue and handshake messages
// -------------------------------------------------------------------------------------------

/// The prologue both sides hash into the handshake: [`PROLOGUE_TAG`], the protocol version
/// (`u16`, big-endian), the length of the database name (one byte) and the name (UTF-8, 1 to
/// 255 bytes). Sides that build different prologues fail the handshake
/// ([`ProtocolError::Unauthenticated`]). An invalid name is [`ProtocolError::Unsendable`].
pub fn prologue(version: u16, database: &str) -> Result<Vec<u8>, ProtocolError> {
    check_database(database).map_err(|what| ProtocolError::Unsendable { what })?;
    let len = u8::try_from(database.len()).map_err(|_| ProtocolError::Unsendable {
        what: "database name is longer than 255 bytes",
    })?;
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
        return Err(handshake_error(
            "the first handshake message is empty".to_owned(),
        ));
    };
    let suite = Suite::from_id(id)?;
    check_len(message, suite.first_message_len(), "first", suite)?;
    if suite == Suite::P256AesGcmSha256 && p256::PublicKey::from_sec1_bytes(noise).is_err() {
        return Err(handshake_error(
            "the first handshake message's ephemeral key is not a P-256 point".to_owned(),
        ));
    }
    Ok((suite, noise))
}

fn check_len(
    message: &[u8],
    expected: usize,
    which: &str,
    suite: Suite,
) -> Result<(), ProtocolError> {
    let len = message.len();
    let what = if len == 0 {
        format!("the {which} handshake message is empty")
    } else if len < expected {
        format!("the {which} handshake message is truncated: {len} bytes, {suite} needs {expected}")
    } else if len > expected {
        format!(
            "the {which} handshake message has {} bytes after its end: {len} bytes, {suite} \
             needs {expected}",
            len - expected
        )
    } else {
        return Ok(());
    };
    Err(handshake_error(what))
}

fn handshake_error(what: String) -> ProtocolError {
    ProtocolError::Handshake { what }
}

/// An error of `snow` that is not the peer's doing.
fn local(error: snow::Error) -> ProtocolError {
    ProtocolError::Crypto {
        what: error.to_string(),
    }
}

/// An error of `snow` while reading the peer's handshake message.
fn read_error(error: snow::Error, message: &'static str) -> ProtocolError {
    match error {
        snow::Error::Decrypt => ProtocolError::Unauthenticated { message },
        snow::Error::Dh => handshake_error(format!("the {message} carries an invalid public key")),
        snow::Error::Input => handshake_error(format!("the {message} is malformed")),
        other => local(other),
    }
}

fn handshake_state(
    keys: &StaticKeys,
    prologue: &[u8],
    initiator: bool,
) -> Result<HandshakeState, ProtocolError> {
    let builder = snow::Builder::new(keys.suite.params()?)
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
        return Err(ProtocolError::Crypto {
            what: format!("handshake message of {written} bytes, expected {expected}"),
        });
    }
    message.truncate(written);
    Ok(message)
}

/// Reads the peer's handshake message, which has been checked to have the exact length of a
/// message with an empty payload.
fn read_message(
    state: &mut HandshakeState,
    message: &[u8],
    which: &'static str,
) -> Result<(), ProtocolError> {
    let mut payload = vec![0_u8; message.len()];
    let len = state
        .read_message(message, &mut payload)
        .map_err(|error| read_error(error, which))?;
    if len != 0 {
        return Err(handshake_error(format!("the {which} carries a payload")));
    }
    Ok(())
}

fn remote_static(state: &HandshakeState) -> Result<Vec<u8>, ProtocolError> {
    state
        .get_remote_static()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| ProtocolError::Crypto {
            what: "the handshake did not learn the peer's static key".to_owned(),
        })
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
            suite: keys.suite,
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
            "second",
            self.suite,
        )?;
        read_message(&mut self.state, message, "second handshake message")?;
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
    /// [`ProtocolError::UnsupportedSuite`]. `database` and `version` go into the
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
        let keys = keys(suite).ok_or(ProtocolError::UnsupportedSuite { suite })?;
        if keys.suite != suite {
            return Err(ProtocolError::InvalidStaticKeys {
                what: "the key lookup returned keys of another suite",
            });
        }
        let mut state = handshake_state(keys, &prologue, false)?;
        read_message(&mut state, noise, "first handshake message")?;
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
        check_len(message, self.suite.third_message_len(), "third", self.suite)?;
        read_message(&mut self.state, message, "third handshake message")?;
        let remote_static = remote_static(&self.state)?;
        Established::new(self.state, self.suite, remote_static)
    }
}

// -------------------------------------------------------------------------------------------
// Established handshake and the channel
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

    /// Rekeys after every `chunks` chunks instead of [`REKEY_INTERVAL`]. Both sides must use
    /// the same interval, so this is for tests: a peer with another interval fails to decrypt
    /// the first chunk after either side's rekey.
    pub fn with_rekey_interval(mut self, chunks: NonZeroU64) -> Established {
        self.rekey_interval = chunks;
        self
    }

    /// The channel that seals and opens payloads with the handshake's keys.
    pub fn into_channel(self) -> SecureChannel {
        SecureChannel {
            transport: self.transport,
            suite: self.suite,
            remote_static: self.remote_static,
            handshake_hash: self.handshake_hash,
            rekey_interval: self.rekey_interval.get(),
            sealed_chunks: 0,
            opened_chunks: 0,
            failed: false,
        }
    }
}

/// Seals and opens payloads after a handshake.
///
/// A **sealed payload** is one or more chunks `[length: u16 big-endian][Noise message]`. The
/// plaintext is cut into pieces of [`MAX_CHUNK_PLAINTEXT_LEN`] bytes; the last piece is
/// always shorter (possibly empty), which marks the end of the payload, so a truncated
/// payload is detected. Each piece is one Noise transport message: AES-GCM with an implicit
/// nonce that counts the chunks of each direction, so a chunk that is altered, replayed,
/// reordered or lost fails to decrypt. Each direction rekeys after every
/// [`REKEY_INTERVAL`] chunks.
///
/// Every error is final: the channel is then **failed**, every later call returns
/// [`ProtocolError::ChannelFailed`], and the connection must close. The one exception is
/// [`SecureChannel::seal`] refusing a plaintext longer than [`MAX_PLAINTEXT_LEN`], which
/// touches nothing.
pub struct SecureChannel {
    transport: TransportState,
    suite: Suite,
    remote_static: Vec<u8>,
    handshake_hash: Vec<u8>,
    rekey_interval: u64,
    sealed_chunks: u64,
    opened_chunks: u64,
    failed: bool,
}

impl SecureChannel {
    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) into a sealed payload of
    /// [`sealed_len`] bytes, at most [`MAX_SEALED_LEN`], for the peer's
    /// [`SecureChannel::open`].
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if self.failed {
            return Err(ProtocolError::ChannelFailed);
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProtocolError::MessageTooLarge {
                len: sealed_len(plaintext.len()),
                max: DEFAULT_MAX_FRAME_LEN,
            });
        }
        let result = self.seal_chunks(plaintext);
        self.failed = result.is_err();
        result
    }

    fn seal_chunks(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut sealed = Vec::with_capacity(sealed_len(plaintext.len()));
        let mut rest = plaintext;
        loop {
            let (piece, after) = rest.split_at(rest.len().min(MAX_CHUNK_PLAINTEXT_LEN));
            let len = piece.len() + TAG_LEN;
            let header = u16::try_from(len).map_err(|_| ProtocolError::Crypto {
                what: "chunk longer than a Noise message".to_owned(),
            })?;
            let start = sealed.len() + CHUNK_HEADER_LEN;
            sealed.extend_from_slice(&header.to_be_bytes());
            sealed.resize(start + len, 0);
            let out = sealed.get_mut(start..).unwrap_or_default();
            let written = self.transport.write_message(piece, out).map_err(local)?;
            if written != len {
                return Err(ProtocolError::Crypto {
                    what: format!("sealed chunk of {written} bytes, expected {len}"),
                });
            }
            self.sealed_chunks = next_count(self.sealed_chunks)?;
            if self.sealed_chunks.is_multiple_of(self.rekey_interval) {
                self.transport.rekey_outgoing();
            }
            rest = after;
            if piece.len() < MAX_CHUNK_PLAINTEXT_LEN {
                return Ok(sealed);
            }
        }
    }

    /// Decrypts a sealed payload from the peer's [`SecureChannel::seal`].
    ///
    /// Fails, and fails the channel, when the payload is longer than [`MAX_SEALED_LEN`]
    /// ([`ProtocolError::FrameTooLarge`]), is not a sequence of chunks that ends with exactly
    /// one chunk shorter than a full one ([`ProtocolError::MalformedSealed`]: empty,
    /// truncated, trailing bytes, a chunk shorter than its tag), or when a chunk does not
    /// decrypt ([`ProtocolError::Decrypt`]). Nothing of a payload that fails is returned.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if self.failed {
            return Err(ProtocolError::ChannelFailed);
        }
        let result = self.open_chunks(sealed);
        self.failed = result.is_err();
        result
    }

    fn open_chunks(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(ProtocolError::FrameTooLarge {
                len: u32::try_from(sealed.len()).unwrap_or(u32::MAX),
                max: DEFAULT_MAX_FRAME_LEN,
            });
        }
        if sealed.is_empty() {
            return Err(malformed_sealed("empty sealed payload"));
        }
        // Every chunk has at least CHUNK_OVERHEAD bytes, so this is bounded by the input.
        let mut plaintext = Vec::with_capacity(sealed.len());
        let mut rest = sealed;
        loop {
            let Some((header, after)) = rest.split_first_chunk::<CHUNK_HEADER_LEN>() else {
                return Err(malformed_sealed("truncated chunk header"));
            };
            let len = usize::from(u16::from_be_bytes(*header));
            if len == 0 {
                return Err(malformed_sealed("zero-length chunk"));
            }
            if len < TAG_LEN {
                return Err(malformed_sealed("chunk shorter than its 16-byte tag"));
            }
            let Some((ciphertext, after)) = after.split_at_checked(len) else {
                return Err(malformed_sealed("chunk runs past the end of the payload"));
            };
            let start = plaintext.len();
            plaintext.resize(start + len - TAG_LEN, 0);
            let out = plaintext.get_mut(start..).unwrap_or_default();
            let read =
                self.transport
                    .read_message(ciphertext, out)
                    .map_err(|error| match error {
                        snow::Error::Decrypt => ProtocolError::Decrypt,
                        other => local(other),
                    })?;
            plaintext.truncate(start + read);
            self.opened_chunks = next_count(self.opened_chunks)?;
            if self.opened_chunks.is_multiple_of(self.rekey_interval) {
                self.transport.rekey_incoming();
            }
            rest = after;
            if read < MAX_CHUNK_PLAINTEXT_LEN {
                if !rest.is_empty() {
                    return Err(malformed_sealed("bytes after the last chunk"));
                }
                return Ok(plaintext);
            }
            if rest.is_empty() {
                return Err(malformed_sealed(
                    "truncated: the payload ends with a full chunk, the last chunk is always shorter",
                ));
            }
        }
    }

    /// The suite of the handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The peer's static public key, authenticated by the handshake.
    pub fn remote_static(&self) -> &[u8] {
        &self.remote_static
    }

    /// The Noise handshake hash (see [`Established::handshake_hash`]).
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    /// Chunks sealed so far (this side's sending nonce).
    pub fn sealed_chunks(&self) -> u64 {
        self.sealed_chunks
    }

    /// Chunks opened so far (this side's receiving nonce).
    pub fn opened_chunks(&self) -> u64 {
        self.opened_chunks
    }

    /// The number of chunks after which each direction rekeys.
    pub fn rekey_interval(&self) -> u64 {
        self.rekey_interval
    }

    /// True once a call failed: the channel refuses everything and the connection must close.
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

fn malformed_sealed(what: &'static str) -> ProtocolError {
    ProtocolError::MalformedSealed { what }
}

fn next_count(count: u64) -> Result<u64, ProtocolError> {
    count.checked_add(1).ok_or_else(|| ProtocolError::Crypto {
        what: "the channel has used up its nonces".to_owned(),
    })
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

impl fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureChannel")
            .field("suite", &self.suite)
            .field(
                "remote",
                &format_args!("{}", fingerprint(&self.remote_static)),
            )
            .field("sealed_chunks", &self.sealed_chunks)
            .field("opened_chunks", &self.opened_chunks)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::message::{CloseCode, PROTOCOL_VERSION};

    fn keys(suite: Suite) -> StaticKeys {
        StaticKeys::generate(suite).unwrap()
    }

    /// Runs a handshake to the end; each side with its own database name and version.
    fn handshake_with(
        initiator_keys: &StaticKeys,
        responder_keys: &StaticKeys,
        initiator_prologue: (&str, u16),
        responder_prologue: (&str, u16),
    ) -> Result<(Established, Established), ProtocolError> {
        let (initiator, first) =
            Initiator::new(initiator_keys, initiator_prologue.0, initiator_prologue.1)?
                .write_first()?;
        let responder = Responder::read_first(
            |suite| (suite == responder_keys.suite()).then_some(responder_keys),
            responder_prologue.0,
            responder_prologue.1,
            &first,
        )?;
        let (responder, second) = responder.write_second()?;
        let initiator = initiator.read_second(&second)?;
        let (initiator, third) = initiator.write_third()?;
        let responder = responder.read_third(&third)?;
        Ok((initiator, responder))
    }

    fn handshake(suite: Suite) -> (Established, Established) {
        handshake_with(
            &keys(suite),
            &keys(suite),
            ("bugs", PROTOCOL_VERSION),
            ("bugs", PROTOCOL_VERSION),
        )
        .unwrap()
    }

    fn channels(suite: Suite) -> (SecureChannel, SecureChannel) {
        let (initiator, responder) = handshake(suite);
        (initiator.into_channel(), responder.into_channel())
    }

    fn channels_with_interval(interval: u64) -> (SecureChannel, SecureChannel) {
        let interval = NonZeroU64::new(interval).unwrap();
        let (initiator, responder) = handshake(Suite::X25519AesGcmSha256);
        (
            initiator.with_rekey_interval(interval).into_channel(),
            responder.with_rekey_interval(interval).into_channel(),
        )
    }

    fn assert_stays_failed(channel: &mut SecureChannel) {
        assert!(channel.is_failed());
        assert_eq!(channel.open(b"\x00\x10"), Err(ProtocolError::ChannelFailed));
        assert_eq!(channel.seal(b""), Err(ProtocolError::ChannelFailed));
        assert_eq!(channel.seal(b"close"), Err(ProtocolError::ChannelFailed));
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    // -- suites, keys, prologue ---------------------------------------------------------------

    #[test]
    fn suites_round_trip_through_their_wire_ids_and_name_their_noise_protocols() {
        assert_eq!(Suite::default(), Suite::P256AesGcmSha256);
        assert_eq!(Suite::P256AesGcmSha256.id(), 0x01);
        assert_eq!(Suite::X25519AesGcmSha256.id(), 0x02);
        assert_eq!(
            Suite::P256AesGcmSha256.noise_name(),
            "Noise_XX_P256_AESGCM_SHA256"
        );
        assert_eq!(
            Suite::X25519AesGcmSha256.to_string(),
            "Noise_XX_25519_AESGCM_SHA256"
        );
        for suite in Suite::ALL {
            assert_eq!(Suite::from_id(suite.id()), Ok(suite));
            suite.params().unwrap();
        }
    }

    #[test]
    fn an_unknown_suite_byte_is_refused_with_an_error_naming_the_byte() {
        for id in [0x00, 0x03, 0x7F, 0xFF] {
            let err = Suite::from_id(id).unwrap_err();
            assert_eq!(err, ProtocolError::UnknownSuite { id });
            assert!(err.to_string().contains(&format!("{id:#04x}")), "{err}");
            assert!(err.is_malformed_input());
            assert_eq!(err.close_code(), CloseCode::ProtocolError);
            let mut message = vec![id];
            message.extend([4; 65]);
            assert_eq!(parse_first(&message), Err(err));
        }
    }

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
            assert!(matches!(err, ProtocolError::Unsendable { .. }), "{err}");
            assert!(!err.is_malformed_input());
            let err = Responder::read_first(|_| Some(&keys), &name, 1, &[2; 33]).unwrap_err();
            assert!(matches!(err, ProtocolError::Unsendable { .. }), "{err}");
        }
    }

    #[test]
    fn static_keys_round_trip_through_their_stored_parts() {
        for suite in Suite::ALL {
            let keys = keys(suite);
            assert_eq!(keys.public().len(), suite.public_key_len());
            assert_eq!(keys.private().len(), PRIVATE_KEY_LEN);
            let again = StaticKeys::from_parts(suite, keys.private(), keys.public()).unwrap();
            assert_eq!(again.public(), keys.public());
            assert_eq!(again.fingerprint(), keys.fingerprint());
            assert_ne!(StaticKeys::generate(suite).unwrap().public(), keys.public());
        }
    }

    #[test]
    fn static_keys_refuse_a_foreign_public_key_a_short_private_key_and_an_invalid_scalar() {
        let a = keys(Suite::P256AesGcmSha256);
        let b = keys(Suite::P256AesGcmSha256);
        let err = StaticKeys::from_parts(a.suite(), a.private(), b.public()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidStaticKeys { .. }),
            "{err}"
        );
        assert!(!err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::InternalError);
        for suite in Suite::ALL {
            assert!(StaticKeys::from_private(suite, &[1; 31]).is_err());
            assert!(StaticKeys::from_private(suite, &[1; 33]).is_err());
        }
        // 0 and anything at or above the group order are not P-256 private keys.
        for scalar in [[0; 32], [0xFF; 32]] {
            let err = StaticKeys::from_private(Suite::P256AesGcmSha256, &scalar).unwrap_err();
            assert!(err.to_string().contains("P-256"), "{err}");
        }
        // Every 32 bytes are an X25519 private key.
        StaticKeys::from_private(Suite::X25519AesGcmSha256, &[0xFF; 32]).unwrap();
    }

    #[test]
    fn debug_output_shows_the_public_key_fingerprint_and_never_the_private_key() {
        let keys = StaticKeys::from_private(Suite::X25519AesGcmSha256, &[0x42; 32]).unwrap();
        let debug = format!("{keys:?}");
        assert!(debug.contains(&keys.fingerprint()), "{debug}");
        assert_eq!(keys.fingerprint().len(), 16);
        assert!(!debug.contains("42, 42") && !debug.to_lowercase().contains("4242"));
        assert!(!debug.contains("private"), "{debug}");
    }

    // -- handshake ------------------------------------------------------------------------------

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
                ProtocolError::Unauthenticated {
                    message: "second handshake message"
                }
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
            matches!(err, ProtocolError::Unauthenticated { .. }),
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
            ProtocolError::UnsupportedSuite {
                suite: Suite::X25519AesGcmSha256
            }
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
            matches!(err, ProtocolError::InvalidStaticKeys { .. }),
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
            // client's, so an enrolment check refuses her; the client sees Mallory's key, not
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
            assert_eq!(server_channel.open(&sealed), Err(ProtocolError::Decrypt));
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
                matches!(err, ProtocolError::Unauthenticated { .. }),
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
                ProtocolError::Unauthenticated {
                    message: "third handshake message"
                }
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
        assert!(matches!(err, ProtocolError::Handshake { .. }), "{err}");
        assert!(err.to_string().contains("after its end"), "{err}");
    }

    // -- sealed payloads ------------------------------------------------------------------------

    #[test]
    fn sealed_lengths_count_one_header_and_tag_per_chunk_and_a_short_last_chunk() {
        assert_eq!(MAX_CHUNK_PLAINTEXT_LEN, 65_519);
        assert_eq!(sealed_len(0), 18);
        assert_eq!(sealed_len(1), 19);
        assert_eq!(sealed_len(65_518), 65_536);
        // A plaintext of exactly one full chunk is followed by an empty last chunk.
        assert_eq!(sealed_len(65_519), 65_537 + 18);
        assert_eq!(MAX_PLAINTEXT_LEN, 16 * 1024 * 1024 - 4608);
        assert!(sealed_len(MAX_PLAINTEXT_LEN) <= MAX_SEALED_LEN);
        assert!(sealed_len(MAX_PLAINTEXT_LEN + 1) > MAX_SEALED_LEN);
        for max in [0, 17, 18, 19, 65_536, 65_537, 65_555, 1 << 20] {
            let p = max_plaintext_len(max);
            if max >= 18 {
                assert!(sealed_len(p) <= max, "{max}");
            }
            assert!(sealed_len(p + 1) > max, "{max}");
        }
    }

    #[test]
    fn plaintexts_around_the_chunk_size_round_trip_with_their_exact_sealed_length() {
        let (mut a, mut b) = channels(Suite::P256AesGcmSha256);
        for len in [
            0,
            1,
            65_518,
            65_519,
            65_520,
            2 * 65_519,
            2 * 65_519 + 1,
            200_000,
        ] {
            let plaintext = text(len);
            let sealed = a.seal(&plaintext).unwrap();
            assert_eq!(sealed.len(), sealed_len(len), "{len}");
            assert_eq!(b.open(&sealed).unwrap(), plaintext, "{len}");
        }
        assert_eq!(a.sealed_chunks(), b.opened_chunks());
    }

    #[test]
    fn a_sealed_ping_has_the_documented_layout() {
        let (mut a, mut b) = channels(Suite::P256AesGcmSha256);
        let payload = crate::message::Message::Ping { nonce: 42 }.encode();
        assert_eq!(payload, [0xB7, 0x16, 0x04, 0x2A]);
        let sealed = a.seal(&payload).unwrap();
        assert_eq!(sealed.len(), 0x16);
        assert_eq!(sealed[..2], [0x00, 0x14]);
        assert_eq!(b.open(&sealed).unwrap(), payload);
        assert_eq!((a.sealed_chunks(), b.opened_chunks()), (1, 1));
    }

    #[test]
    fn a_replayed_payload_fails_and_the_channel_stays_failed() {
        let (mut a, mut b) = channels(Suite::P256AesGcmSha256);
        let sealed = a.seal(b"once").unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"once");
        let err = b.open(&sealed).unwrap_err();
        assert_eq!(err, ProtocolError::Decrypt);
        assert!(err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        assert_stays_failed(&mut b);
        // Even the next genuine payload is refused: the connection must close.
        let next = a.seal(b"twice").unwrap();
        assert_eq!(b.open(&next), Err(ProtocolError::ChannelFailed));
        let err = ProtocolError::ChannelFailed;
        assert!(!err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::InternalError);
    }

    #[test]
    fn a_reordered_payload_fails() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let first = a.seal(b"first").unwrap();
        let second = a.seal(b"second").unwrap();
        assert_eq!(b.open(&second), Err(ProtocolError::Decrypt));
        assert_stays_failed(&mut b);
        drop(first);
    }

    #[test]
    fn a_lost_payload_makes_the_next_one_fail() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let _lost = a.seal(b"lost").unwrap();
        assert_eq!(
            b.open(&a.seal(b"next").unwrap()),
            Err(ProtocolError::Decrypt)
        );
    }

    #[test]
    fn a_single_flipped_bit_anywhere_in_a_sealed_payload_fails() {
        let (mut a, _) = channels(Suite::X25519AesGcmSha256);
        let sealed_len = a.seal(b"a short message of 32 bytes.....").unwrap().len();
        for bit in 0..sealed_len * 8 {
            let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
            let mut sealed = a.seal(b"a short message of 32 bytes.....").unwrap();
            sealed[bit / 8] ^= 1 << (bit % 8);
            let err = b.open(&sealed).unwrap_err();
            assert!(err.is_malformed_input(), "bit {bit}: {err}");
            assert_stays_failed(&mut b);
        }
    }

    #[test]
    fn a_flipped_bit_in_any_chunk_of_a_long_payload_fails() {
        let plaintext = text(3 * MAX_CHUNK_PLAINTEXT_LEN - 5);
        let sealed_len = sealed_len(plaintext.len());
        for position in [
            0,
            1,
            2,
            100,
            65_537,
            65_538,
            65_540,
            2 * 65_537 + 1,
            sealed_len - 1,
        ] {
            let (mut a, mut b) = channels(Suite::P256AesGcmSha256);
            let mut sealed = a.seal(&plaintext).unwrap();
            sealed[position] ^= 0x10;
            assert!(b.open(&sealed).is_err(), "byte {position}");
            assert_stays_failed(&mut b);
        }
    }

    #[test]
    fn truncated_and_padded_payloads_fail() {
        let plaintext = text(2 * MAX_CHUNK_PLAINTEXT_LEN + 10);
        const CHUNK: usize = MAX_CHUNK_PLAINTEXT_LEN + CHUNK_OVERHEAD;
        type Alteration = fn(&mut Vec<u8>);
        let cases: [(&str, Alteration); 7] = [
            ("last chunk dropped", |s| s.truncate(2 * CHUNK)),
            ("one full chunk only", |s| s.truncate(CHUNK)),
            ("last byte dropped", |s| s.truncate(s.len() - 1)),
            ("half a header", |s| s.truncate(CHUNK + 1)),
            ("a trailing byte", |s| s.push(0)),
            ("a zero-length chunk", |s| s.extend([0, 0])),
            ("emptied", |s| s.clear()),
        ];
        for (name, alter) in cases {
            let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
            let mut sealed = a.seal(&plaintext).unwrap();
            alter(&mut sealed);
            let err = b.open(&sealed).unwrap_err();
            assert!(
                matches!(err, ProtocolError::MalformedSealed { .. }),
                "{name}: {err}"
            );
            assert!(err.is_malformed_input());
            assert_eq!(err.close_code(), CloseCode::ProtocolError);
            assert_stays_failed(&mut b);
        }
    }

    #[test]
    fn chunks_shorter_than_their_tag_are_refused() {
        let (_, mut b) = channels(Suite::X25519AesGcmSha256);
        let err = b.open(&[0, 0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed sealed payload: zero-length chunk"
        );
        let (_, mut b) = channels(Suite::X25519AesGcmSha256);
        let err = b.open(&[0, 15, 1, 2, 3]).unwrap_err();
        assert!(
            err.to_string().contains("shorter than its 16-byte tag"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_payload_is_refused_unread() {
        let (_, mut b) = channels(Suite::X25519AesGcmSha256);
        let err = b.open(&vec![0; MAX_SEALED_LEN + 1]).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooLarge {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN
            }
        );
        assert_stays_failed(&mut b);
    }

    #[test]
    fn seal_refuses_a_plaintext_over_the_limit_without_failing_the_channel() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let too_long = vec![0; MAX_PLAINTEXT_LEN + 1];
        let err = a.seal(&too_long).unwrap_err();
        assert!(
            matches!(err, ProtocolError::MessageTooLarge { .. }),
            "{err}"
        );
        assert!(!a.is_failed());
        let longest = a.seal(&too_long[1..]).unwrap();
        assert_eq!(longest.len(), MAX_SEALED_LEN);
        assert_eq!(b.open(&longest).unwrap().len(), MAX_PLAINTEXT_LEN);
    }

    // -- rekeying -------------------------------------------------------------------------------

    #[test]
    fn ten_times_the_rekey_interval_round_trips_in_both_directions() {
        let (mut a, mut b) = channels_with_interval(3);
        for i in 0..30_usize {
            let message = text(i * 3);
            assert_eq!(b.open(&a.seal(&message).unwrap()).unwrap(), message);
            assert_eq!(a.open(&b.seal(&message).unwrap()).unwrap(), message);
        }
        // Multi-chunk payloads cross rekeys in the middle of a payload.
        let long = text(4 * MAX_CHUNK_PLAINTEXT_LEN + 1);
        assert_eq!(b.open(&a.seal(&long).unwrap()).unwrap(), long);
        assert_eq!(a.sealed_chunks(), 35);
        assert_eq!(b.opened_chunks(), 35);
    }

    #[test]
    fn a_peer_that_does_not_rekey_fails_on_the_first_chunk_after_the_interval() {
        let interval = NonZeroU64::new(3).unwrap();
        let (a, b) = handshake(Suite::X25519AesGcmSha256);
        let mut a = a.with_rekey_interval(interval).into_channel();
        let mut b = b.into_channel(); // the default interval: it does not rekey after 3 chunks
        for _ in 0..3 {
            assert_eq!(b.open(&a.seal(b"before").unwrap()).unwrap(), b"before");
        }
        assert_eq!(
            b.open(&a.seal(b"after").unwrap()),
            Err(ProtocolError::Decrypt)
        );
        assert_stays_failed(&mut b);
    }

    #[test]
    fn the_default_interval_rekeys_after_65536_chunks() {
        let (a, b) = handshake(Suite::X25519AesGcmSha256);
        let mut a = a.into_channel();
        // A receiver that would rekey only after twice as many chunks.
        let mut late = b
            .with_rekey_interval(NonZeroU64::new(2 * REKEY_INTERVAL).unwrap())
            .into_channel();
        assert_eq!(a.rekey_interval(), REKEY_INTERVAL);
        for _ in 0..REKEY_INTERVAL {
            late.open(&a.seal(b"").unwrap()).unwrap();
        }
        assert_eq!(
            late.open(&a.seal(b"").unwrap()),
            Err(ProtocolError::Decrypt)
        );
    }

    #[test]
    fn channel_debug_output_names_the_suite_and_the_peers_fingerprint() {
        let (a, b) = channels(Suite::X25519AesGcmSha256);
        let debug = format!("{a:?}");
        assert!(debug.contains("X25519AesGcmSha256"), "{debug}");
        assert!(debug.contains(&fingerprint(a.remote_static())), "{debug}");
        assert_eq!(a.remote_static().len(), 32);
        drop(b);
    }
}
