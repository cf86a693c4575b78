//! Sealed payloads: the chunks a [`SecureChannel`] seals and opens after a handshake, and
//! rekeying.

use std::fmt;
use std::num::NonZeroU64;

use snow::TransportState;

use super::{Suite, TAG_LEN, fingerprint, local};
use crate::error::{CryptoFault, LocalFailure, Malformed, ProtocolError, SealedFault};
use crate::frame::DEFAULT_MAX_FRAME_LEN;

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

pub(super) const DEFAULT_REKEY_INTERVAL: NonZeroU64 = match NonZeroU64::new(REKEY_INTERVAL) {
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
/// [`LocalFailure::ChannelFailed`], and the connection must close. The one exception is
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
    /// The channel of a completed handshake: no chunk sealed or opened yet.
    pub(super) fn new(
        transport: TransportState,
        suite: Suite,
        remote_static: Vec<u8>,
        handshake_hash: Vec<u8>,
        rekey_interval: NonZeroU64,
    ) -> SecureChannel {
        SecureChannel {
            transport,
            suite,
            remote_static,
            handshake_hash,
            rekey_interval: rekey_interval.get(),
            sealed_chunks: 0,
            opened_chunks: 0,
            failed: false,
        }
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) into a sealed payload of
    /// [`sealed_len`] bytes, at most [`MAX_SEALED_LEN`], for the peer's
    /// [`SecureChannel::open`].
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if self.failed {
            return Err(LocalFailure::ChannelFailed.into());
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(LocalFailure::MessageTooLarge {
                len: sealed_len(plaintext.len()),
                max: DEFAULT_MAX_FRAME_LEN,
            }
            .into());
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
            let header =
                u16::try_from(len).map_err(|_| ProtocolError::crypto(CryptoFault::ChunkTooLong))?;
            let start = sealed.len() + CHUNK_HEADER_LEN;
            sealed.extend_from_slice(&header.to_be_bytes());
            sealed.resize(start + len, 0);
            let out = sealed.get_mut(start..).unwrap_or_default();
            let written = self.transport.write_message(piece, out).map_err(local)?;
            if written != len {
                return Err(ProtocolError::crypto(CryptoFault::UnexpectedLength {
                    what: "sealed chunk",
                    written,
                    expected: len,
                }));
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
    /// ([`Malformed::FrameTooLarge`]), is not a sequence of chunks that ends with exactly
    /// one chunk shorter than a full one ([`Malformed::Sealed`]: empty,
    /// truncated, trailing bytes, a chunk shorter than its tag), or when a chunk does not
    /// decrypt ([`Malformed::Decrypt`]). Nothing of a payload that fails is returned.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if self.failed {
            return Err(LocalFailure::ChannelFailed.into());
        }
        let result = self.open_chunks(sealed);
        self.failed = result.is_err();
        result
    }

    fn open_chunks(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(Malformed::FrameTooLarge {
                len: u32::try_from(sealed.len()).unwrap_or(u32::MAX),
                max: DEFAULT_MAX_FRAME_LEN,
            }
            .into());
        }
        if sealed.is_empty() {
            return Err(malformed_sealed(SealedFault::Empty));
        }
        // Every chunk has at least CHUNK_OVERHEAD bytes, so this is bounded by the input.
        let mut plaintext = Vec::with_capacity(sealed.len());
        let mut rest = sealed;
        loop {
            let Some((header, after)) = rest.split_first_chunk::<CHUNK_HEADER_LEN>() else {
                return Err(malformed_sealed(SealedFault::TruncatedHeader));
            };
            let len = usize::from(u16::from_be_bytes(*header));
            if len == 0 {
                return Err(malformed_sealed(SealedFault::ZeroLengthChunk));
            }
            if len < TAG_LEN {
                return Err(malformed_sealed(SealedFault::ShorterThanTag));
            }
            let Some((ciphertext, after)) = after.split_at_checked(len) else {
                return Err(malformed_sealed(SealedFault::PastTheEnd));
            };
            let start = plaintext.len();
            plaintext.resize(start + len - TAG_LEN, 0);
            let out = plaintext.get_mut(start..).unwrap_or_default();
            let read =
                self.transport
                    .read_message(ciphertext, out)
                    .map_err(|error| match error {
                        snow::Error::Decrypt => Malformed::Decrypt.into(),
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
                    return Err(malformed_sealed(SealedFault::BytesAfterLastChunk));
                }
                return Ok(plaintext);
            }
            if rest.is_empty() {
                return Err(malformed_sealed(SealedFault::EndsWithFullChunk));
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

    /// The Noise handshake hash (see [`Established::handshake_hash`](super::Established::handshake_hash)).
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

fn malformed_sealed(fault: SealedFault) -> ProtocolError {
    Malformed::Sealed(fault).into()
}

fn next_count(count: u64) -> Result<u64, ProtocolError> {
    count
        .checked_add(1)
        .ok_or_else(|| ProtocolError::crypto(CryptoFault::NoncesExhausted))
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
    use crate::message::CloseCode;
    use crate::secure::testing::*;

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
        assert_eq!(err, ProtocolError::Malformed(Malformed::Decrypt));
        assert!(err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        assert_stays_failed(&mut b);
        // Even the next genuine payload is refused: the connection must close.
        let next = a.seal(b"twice").unwrap();
        assert_eq!(
            b.open(&next),
            Err(ProtocolError::Local(LocalFailure::ChannelFailed))
        );
        let err = ProtocolError::Local(LocalFailure::ChannelFailed);
        assert!(!err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::InternalError);
    }

    #[test]
    fn a_reordered_payload_fails() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let first = a.seal(b"first").unwrap();
        let second = a.seal(b"second").unwrap();
        assert_eq!(
            b.open(&second),
            Err(ProtocolError::Malformed(Malformed::Decrypt))
        );
        assert_stays_failed(&mut b);
        drop(first);
    }

    #[test]
    fn a_lost_payload_makes_the_next_one_fail() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let _lost = a.seal(b"lost").unwrap();
        assert_eq!(
            b.open(&a.seal(b"next").unwrap()),
            Err(ProtocolError::Malformed(Malformed::Decrypt))
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
                matches!(err, ProtocolError::Malformed(Malformed::Sealed(_))),
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
            Malformed::FrameTooLarge {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN
            }
            .into()
        );
        assert_stays_failed(&mut b);
    }

    #[test]
    fn seal_refuses_a_plaintext_over_the_limit_without_failing_the_channel() {
        let (mut a, mut b) = channels(Suite::X25519AesGcmSha256);
        let too_long = vec![0; MAX_PLAINTEXT_LEN + 1];
        let err = a.seal(&too_long).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Local(LocalFailure::MessageTooLarge { .. })
            ),
            "{err}"
        );
        assert!(!a.is_failed());
        let longest = a.seal(&too_long[1..]).unwrap();
        assert_eq!(longest.len(), MAX_SEALED_LEN);
        assert_eq!(b.open(&longest).unwrap().len(), MAX_PLAINTEXT_LEN);
    }

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
            Err(ProtocolError::Malformed(Malformed::Decrypt))
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
            Err(ProtocolError::Malformed(Malformed::Decrypt))
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
