//! Bodies of fuzz targets, kept here so that they build and run with the crate's own tests
//! (the cargo-fuzz crate only calls them).

use std::num::NonZeroU64;
use std::sync::OnceLock;

use crate::enroll::EnrollmentToken;
use crate::error::{LocalFailure, ProtocolError, Unauthorized};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, encode_frame};
use crate::message::{Capabilities, Message, PROTOCOL_VERSION};
use crate::secure::{
    Initiator, InitiatorReadSecond, MAX_CHUNK_PLAINTEXT_LEN, REKEY_INTERVAL, Responder,
    ResponderAwaitingThird, SecureChannel, StaticKeys, Suite, parse_first,
};

/// Pushes `data` into a [`FrameDecoder`] in chunks and checks every decoded message.
///
/// The first byte chooses the chunk size (1 to 64 bytes, low six bits) and the frame limit
/// (bit 6: 256 bytes, so partial pushes and oversized frames are reached quickly; otherwise
/// [`DEFAULT_MAX_FRAME_LEN`]); the rest is the byte stream, whose payloads may be plain or
/// compressed (type `0x7f`). Panics when:
///
/// * a decoded message breaks [`Message::validate`];
/// * re-encoding a decoded message and decoding that again does not give the same bytes
///   back (the encoding is canonical, so this is a round trip; comparing bytes rather than
///   messages keeps NaN doubles comparable);
/// * the frame of a decoded message does not decode to it through a fresh decoder;
/// * the message sent to a peer that accepts zstd ([`Message::encode_for`] with
///   [`Capabilities::ZSTD`] and a threshold of 0, so compressed whenever that is smaller)
///   does not decode to the same bytes;
/// * an error is not about malformed input, or is not repeated by the next call;
/// * the decoder stalls: it takes no bytes although it returns no message.
pub fn frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x3F) + 1;
    let max = if first & 0x40 == 0 {
        DEFAULT_MAX_FRAME_LEN
    } else {
        256
    };
    let mut decoder = FrameDecoder::new(max);
    for mut piece in stream.chunks(chunk) {
        loop {
            let taken = decoder.push(piece);
            piece = piece.get(taken..).unwrap_or_default();
            let mut decoded = false;
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        check_round_trip(&message);
                        decoded = true;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        assert!(error.is_malformed_input(), "unexpected error: {error}");
                        assert_eq!(decoder.next_message(), Err(error), "errors are final");
                        return;
                    }
                }
            }
            if piece.is_empty() {
                break;
            }
            assert!(taken > 0 || decoded, "decoder stalled with a full buffer");
        }
    }
}

fn check_round_trip(message: &Message) {
    assert!(
        message.validate().is_ok(),
        "decoded an invalid {}",
        message.type_name()
    );
    let payload = message.encode();
    let again = Message::decode(&payload);
    assert!(
        again.is_ok(),
        "re-encoded {} does not decode: {again:?}",
        message.type_name()
    );
    if let Ok(again) = again {
        assert!(
            again.encode() == payload,
            "{} does not round trip",
            message.type_name()
        );
    }
    let compressed = message.encode_for(Capabilities::ZSTD, 0);
    match Message::decode(&compressed) {
        Ok(expanded) => assert!(
            expanded.encode() == payload,
            "{} does not round trip through compression",
            message.type_name()
        ),
        Err(error) => panic!(
            "{} sent to a zstd peer does not decode: {error}",
            message.type_name()
        ),
    }
    // The re-encoding can be a little longer than the frame it came from (see the codec's
    // notes on string interning), so the check uses the largest limit.
    let frame = encode_frame(message);
    let mut decoder = FrameDecoder::new(u32::MAX);
    assert_eq!(decoder.push(&frame), frame.len());
    match decoder.next_message() {
        Ok(Some(framed)) => assert!(framed.encode() == payload, "framing changed a message"),
        other => panic!("a frame of a valid message does not decode: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Enrollment tokens
// ---------------------------------------------------------------------------------------------

/// Feeds `data`, as text (invalid UTF-8 replaced), to [`EnrollmentToken::parse`]. Panics when
/// parsing panics, when an error is not [`Unauthorized::Token`], or when a token that
/// parses
///
/// * does not re-encode to the input without its surrounding whitespace (a token has one
///   spelling: base64url without padding, and its lengths never leave unused bits);
/// * re-encodes to text that does not parse to the same id, secret, suite and server key;
/// * shows its secret in `Debug`.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let token = match EnrollmentToken::parse(&text) {
        Ok(token) => token,
        Err(ProtocolError::Unauthorized(Unauthorized::Token(_))) => return,
        Err(error) => panic!("a token was refused with another error: {error}"),
    };
    let encoded = token.encode();
    assert_eq!(encoded, text.trim(), "a token has another spelling");
    let again = match EnrollmentToken::parse(&encoded) {
        Ok(again) => again,
        Err(error) => panic!("a re-encoded token does not parse: {error}"),
    };
    assert_eq!(again.id(), token.id());
    assert_eq!(again.secret_hash(), token.secret_hash());
    assert_eq!(again.server_suite(), token.server_suite());
    assert_eq!(again.server_key(), token.server_key());
    assert_eq!(
        token.server_key().len(),
        token.server_suite().public_key_len()
    );
    let shown = format!("{token:?}");
    let body = encoded
        .get(crate::enroll::TOKEN_PREFIX.len()..)
        .unwrap_or_default();
    assert!(!shown.contains(body), "Debug shows the token");
}

// ---------------------------------------------------------------------------------------------
// The secure channel
// ---------------------------------------------------------------------------------------------

/// Fixed static keys for fuzzing (one pair per suite and side), derived once.
fn fuzz_keys(suite: Suite) -> &'static (StaticKeys, StaticKeys) {
    static KEYS: OnceLock<[(StaticKeys, StaticKeys); 2]> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        Suite::ALL.map(|suite| {
            let key = |byte: u8| match StaticKeys::from_private(suite, &[byte; 32]) {
                Ok(keys) => keys,
                Err(error) => panic!("fixed fuzz key: {error}"),
            };
            (key(0x11), key(0x22))
        })
    });
    match suite {
        Suite::P256AesGcmSha256 => &keys[0],
        _ => &keys[1],
    }
}

const FUZZ_DATABASE: &str = "fuzz";

fn fuzz_lookup(suite: Suite) -> Option<&'static StaticKeys> {
    Some(&fuzz_keys(suite).1)
}

/// Runs a real handshake up to the responder waiting for the third message.
fn fuzz_first_two(suite: Suite) -> (InitiatorReadSecond, ResponderAwaitingThird) {
    let (initiator_keys, _) = fuzz_keys(suite);
    let steps = || -> Result<_, ProtocolError> {
        let (initiator, first) =
            Initiator::new(initiator_keys, FUZZ_DATABASE, PROTOCOL_VERSION)?.write_first()?;
        let responder =
            Responder::read_first(fuzz_lookup, FUZZ_DATABASE, PROTOCOL_VERSION, &first)?;
        let (responder, second) = responder.write_second()?;
        Ok((initiator.read_second(&second)?, responder))
    };
    match steps() {
        Ok(pair) => pair,
        Err(error) => panic!("a real handshake failed: {error}"),
    }
}

/// A pair of channels after a real handshake: (initiator's, responder's).
fn fuzz_channels(suite: Suite, rekey_interval: u64) -> (SecureChannel, SecureChannel) {
    let (initiator, responder) = fuzz_first_two(suite);
    let interval = NonZeroU64::new(rekey_interval).unwrap_or(NonZeroU64::MIN);
    let steps = || -> Result<_, ProtocolError> {
        let (initiator, third) = initiator.write_third()?;
        let responder = responder.read_third(&third)?;
        Ok((
            initiator.with_rekey_interval(interval).into_channel(),
            responder.with_rekey_interval(interval).into_channel(),
        ))
    };
    match steps() {
        Ok(pair) => pair,
        Err(error) => panic!("a real handshake failed: {error}"),
    }
}

/// Checks an error from reading the peer's bytes: it blames the peer, and a channel that
/// returned it stays failed.
fn check_peer_error(error: &ProtocolError) {
    assert!(
        error.is_malformed_input(),
        "not blamed on the peer: {error}"
    );
}

/// Feeds arbitrary bytes to every step of the secure channel that reads the peer's bytes.
///
/// The first byte picks the step (low three bits) and the suite (bit 7: P-256, otherwise
/// X25519); the rest is the input:
///
/// * 0: [`parse_first`]: on success the input has the suite's exact first message length;
/// * 1: [`Responder::read_first`] with keys for both suites: on success `write_second`
///   works (the parser caught every bad key);
/// * 2: `read_second` of an initiator that sent a real first message;
/// * 3: `read_third` of a responder after a real first and second message;
/// * 4: [`SecureChannel::open`] after a real handshake;
/// * 5 to 7: a real sealed payload with the input XORed into it from an offset, possibly
///   truncated, and opened: it opens (to the same plaintext) exactly when nothing changed.
///
/// Panics when a step panics, succeeds where the peer cannot have produced the input
/// (steps 2 to 4: only the real peer has the keys), fails with an error that does not
/// blame the peer, or when a failed channel does not stay failed.
pub fn handshake(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let suite = if selector & 0x80 == 0 {
        Suite::X25519AesGcmSha256
    } else {
        Suite::P256AesGcmSha256
    };
    match selector & 0x07 {
        0 => match parse_first(input) {
            Ok((suite, noise)) => {
                assert_eq!(input.len(), suite.first_message_len());
                assert_eq!(input.first(), Some(&suite.id()));
                assert_eq!(noise.len(), suite.public_key_len());
            }
            Err(error) => check_peer_error(&error),
        },
        1 => match Responder::read_first(fuzz_lookup, FUZZ_DATABASE, PROTOCOL_VERSION, input) {
            Ok(responder) => {
                let suite = responder.suite();
                match responder.write_second() {
                    Ok((_, second)) => assert_eq!(second.len(), suite.second_message_len()),
                    Err(error) => panic!("accepted a first message it cannot answer: {error}"),
                }
            }
            Err(error) => check_peer_error(&error),
        },
        2 => {
            let (initiator_keys, _) = fuzz_keys(suite);
            let initiator = Initiator::new(initiator_keys, FUZZ_DATABASE, PROTOCOL_VERSION)
                .and_then(Initiator::write_first);
            let (initiator, _) = match initiator {
                Ok(pair) => pair,
                Err(error) => panic!("a real handshake failed: {error}"),
            };
            match initiator.read_second(input) {
                Ok(_) => panic!("a forged second message was accepted"),
                Err(error) => check_peer_error(&error),
            }
        }
        3 => {
            let (_, responder) = fuzz_first_two(suite);
            match responder.read_third(input) {
                Ok(_) => panic!("a forged third message was accepted"),
                Err(error) => check_peer_error(&error),
            }
        }
        4 => {
            let (_, mut responder) = fuzz_channels(suite, REKEY_INTERVAL);
            match responder.open(input) {
                Ok(_) => panic!("a forged sealed payload was opened"),
                Err(error) => check_peer_error(&error),
            }
            check_stays_failed(&mut responder);
        }
        _ => altered_payload(suite, input),
    }
}

/// Step 5 of [`handshake`]: `input` is `[len: 3 bytes][offset: 3 bytes][cut: 3 bytes][mask]`.
fn altered_payload(suite: Suite, input: &[u8]) {
    let number = |range: std::ops::Range<usize>| {
        input
            .get(range)
            .unwrap_or_default()
            .iter()
            .fold(0_usize, |n, &b| n << 8 | usize::from(b))
    };
    // Up to 3 chunks (a few more than two full ones), with a rekey after every 2 chunks.
    let len = number(0..3) % (2 * MAX_CHUNK_PLAINTEXT_LEN + 64);
    let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut initiator, mut responder) = fuzz_channels(suite, 2);
    let sealed = match initiator.seal(&plaintext) {
        Ok(sealed) => sealed,
        Err(error) => panic!("seal failed: {error}"),
    };
    let offset = number(3..6) % (sealed.len() + 1);
    let cut = number(6..9) % (sealed.len() + 2);
    let mask = input.get(9..).unwrap_or_default();
    let mut altered = sealed.clone();
    for (byte, m) in altered.iter_mut().skip(offset).zip(mask) {
        *byte ^= m;
    }
    // `cut` beyond the end keeps everything.
    altered.truncate(cut);
    match responder.open(&altered) {
        Ok(opened) => {
            assert!(altered == sealed, "an altered payload was opened");
            assert!(
                opened == plaintext,
                "the payload opened to another plaintext"
            );
            // The channel goes on in both directions.
            let reply = responder.seal(b"ok").unwrap_or_default();
            assert_eq!(initiator.open(&reply).ok().as_deref(), Some(&b"ok"[..]));
        }
        Err(error) => {
            assert!(altered != sealed, "the real payload failed: {error}");
            check_peer_error(&error);
            check_stays_failed(&mut responder);
        }
    }
}

/// A failed channel refuses to open and to seal anything, even an empty plaintext.
pub(crate) fn check_stays_failed(channel: &mut SecureChannel) {
    assert!(channel.is_failed());
    for result in [
        channel.open(b"\x00\x10"),
        channel.seal(b""),
        channel.seal(b"close"),
    ] {
        assert_eq!(
            result,
            Err(ProtocolError::Local(LocalFailure::ChannelFailed))
        );
    }
}
