//! Property tests of the secure channel: sealed payloads round-trip, and no input from the
//! peer (handshake messages, sealed payloads) makes a side panic or accept it.
//!
//! Every property runs 256 cases (each runs at least one handshake); set `BLAZEDB_LONG=1` to
//! run 10 000.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::num::NonZeroU64;
use std::sync::OnceLock;

use blazedb_protocol::secure::{
    Initiator, MAX_CHUNK_PLAINTEXT_LEN, Responder, SecureChannel, StaticKeys, Suite, parse_first,
    sealed_len,
};
use blazedb_protocol::{Incompatible, LocalFailure, PROTOCOL_VERSION, ProtocolError, fuzz};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

fn cases() -> u32 {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        10_000
    } else {
        256
    }
}

/// One key pair per suite and side, generated once for the whole test binary.
fn keys(suite: Suite) -> &'static (StaticKeys, StaticKeys) {
    static KEYS: OnceLock<Vec<(StaticKeys, StaticKeys)>> = OnceLock::new();
    let all = KEYS.get_or_init(|| {
        Suite::ALL
            .iter()
            .map(|&s| {
                (
                    StaticKeys::generate(s).unwrap(),
                    StaticKeys::generate(s).unwrap(),
                )
            })
            .collect()
    });
    &all[Suite::ALL.iter().position(|&s| s == suite).unwrap()]
}

fn channels(suite: Suite, rekey_interval: u64) -> (SecureChannel, SecureChannel) {
    let (a, b) = keys(suite);
    let interval = NonZeroU64::new(rekey_interval).unwrap();
    let (initiator, first) = Initiator::new(a, "bugs", PROTOCOL_VERSION)
        .unwrap()
        .write_first()
        .unwrap();
    let (responder, second) = Responder::read_first(|_| Some(b), "bugs", PROTOCOL_VERSION, &first)
        .unwrap()
        .write_second()
        .unwrap();
    let (initiator, third) = initiator
        .read_second(&second)
        .unwrap()
        .write_third()
        .unwrap();
    let responder = responder.read_third(&third).unwrap();
    (
        initiator.with_rekey_interval(interval).into_channel(),
        responder.with_rekey_interval(interval).into_channel(),
    )
}

fn suite() -> impl Strategy<Value = Suite> {
    select(Suite::ALL.to_vec())
}

/// Lengths from 0 to 200 000 bytes, often on or next to a chunk boundary.
fn plaintext_len() -> impl Strategy<Value = usize> {
    let full = MAX_CHUNK_PLAINTEXT_LEN;
    prop_oneof![
        2 => 0..200_000_usize,
        1 => 0..64_usize,
        1 => select(vec![full - 1, full, full + 1, 2 * full - 1, 2 * full, 2 * full + 1, 3 * full]),
    ]
}

fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    (plaintext_len(), any::<u8>()).prop_map(|(len, seed)| {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    })
}

fn assert_stays_failed(channel: &mut SecureChannel) {
    assert!(channel.is_failed());
    assert_eq!(
        channel.open(&[0, 16]),
        Err(LocalFailure::ChannelFailed.into())
    );
    assert_eq!(
        channel.seal(b"close"),
        Err(LocalFailure::ChannelFailed.into())
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_plaintexts_round_trip_through_seal_and_open(
        suite in suite(),
        rekey_interval in prop_oneof![Just(1_u64 << 16), 1_u64..5],
        messages in vec((any::<bool>(), plaintext()), 1..5),
    ) {
        let (mut a, mut b) = channels(suite, rekey_interval);
        for (from_initiator, plaintext) in messages {
            let (sender, receiver) = if from_initiator { (&mut a, &mut b) } else { (&mut b, &mut a) };
            let sealed = sender.seal(&plaintext).unwrap();
            prop_assert_eq!(sealed.len(), sealed_len(plaintext.len()));
            prop_assert_eq!(receiver.open(&sealed).unwrap(), plaintext);
        }
        prop_assert_eq!(a.sealed_chunks(), b.opened_chunks());
        prop_assert_eq!(b.sealed_chunks(), a.opened_chunks());
    }

    #[test]
    fn arbitrary_bytes_never_open_and_leave_the_channel_failed(
        suite in suite(),
        bytes in prop_oneof![
            vec(any::<u8>(), 0..100),
            // A plausible header for the bytes that follow.
            vec(any::<u8>(), 16..300).prop_map(|mut v| {
                let len = u16::try_from(v.len() - 2).unwrap();
                v[..2].copy_from_slice(&len.to_be_bytes());
                v
            }),
        ],
    ) {
        let (_, mut b) = channels(suite, 1 << 16);
        let err = b.open(&bytes).unwrap_err();
        prop_assert!(err.is_malformed_input(), "{}", err);
        assert_stays_failed(&mut b);
    }

    #[test]
    fn an_altered_sealed_payload_never_opens(
        suite in suite(),
        plaintext in plaintext(),
        position in any::<prop::sample::Index>(),
        mask in 1..=255_u8,
    ) {
        let (mut a, mut b) = channels(suite, 2);
        let mut sealed = a.seal(&plaintext).unwrap();
        let at = position.index(sealed.len());
        sealed[at] ^= mask;
        let err = b.open(&sealed).unwrap_err();
        prop_assert!(err.is_malformed_input(), "{}", err);
        assert_stays_failed(&mut b);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_handshake_parsers(
        suite in suite(),
        id in prop_oneof![Just(1_u8), Just(2_u8), any::<u8>()],
        body in vec(any::<u8>(), 0..200),
        exact in any::<bool>(),
    ) {
        let mut message = vec![id];
        message.extend(&body);
        if exact && let Ok(suite) = Suite::from_id(id) {
            message.resize(suite.first_message_len(), 0x04);
        }
        match parse_first(&message) {
            Ok((suite, noise)) => {
                prop_assert_eq!(message.len(), suite.first_message_len());
                prop_assert_eq!(noise.len(), suite.public_key_len());
            }
            Err(err) => prop_assert!(err.is_malformed_input(), "{}", err),
        }
        let (a, b) = keys(suite);
        let lookup = |s: Suite| (s == suite).then_some(b);
        match Responder::read_first(lookup, "bugs", PROTOCOL_VERSION, &message) {
            Ok(responder) => {
                responder.write_second().unwrap();
            }
            Err(ProtocolError::Incompatible(Incompatible::Suite { suite: other })) => prop_assert_ne!(other, suite),
            Err(err) => prop_assert!(err.is_malformed_input(), "{}", err),
        }
        // Forged second and third messages, at every length including the exact ones.
        let (initiator, first) = Initiator::new(a, "bugs", PROTOCOL_VERSION)
            .unwrap()
            .write_first()
            .unwrap();
        let mut second = body.clone();
        if exact {
            second.resize(suite.second_message_len(), 0x04);
        }
        let err = initiator.read_second(&second).unwrap_err();
        prop_assert!(err.is_malformed_input(), "{}", err);
        let (_, responder_second) = Responder::read_first(lookup, "bugs", PROTOCOL_VERSION, &first)
            .unwrap()
            .write_second()
            .unwrap();
        let (initiator, _) = Initiator::new(a, "bugs", PROTOCOL_VERSION)
            .unwrap()
            .write_first()
            .unwrap();
        // The initiator above never sent the first message this second one answers.
        prop_assert!(initiator.read_second(&responder_second).is_err());
        let (initiator, first) = Initiator::new(a, "bugs", PROTOCOL_VERSION)
            .unwrap()
            .write_first()
            .unwrap();
        let (responder, second) = Responder::read_first(lookup, "bugs", PROTOCOL_VERSION, &first)
            .unwrap()
            .write_second()
            .unwrap();
        initiator.read_second(&second).unwrap();
        let mut third = body;
        if exact {
            third.resize(suite.third_message_len(), 0x04);
        }
        let err = responder.read_third(&third).unwrap_err();
        prop_assert!(err.is_malformed_input(), "{}", err);
    }

    /// The body of the `handshake` fuzz target, on random and structured inputs.
    #[test]
    fn the_handshake_fuzz_target_holds_on_random_inputs(
        selector in any::<u8>(),
        input in prop_oneof![
            vec(any::<u8>(), 0..120),
            // Step 5 with a short plaintext and a mask that is often all zeros.
            (vec(0..2_u8, 9), vec(prop_oneof![3 => Just(0_u8), 1 => any::<u8>()], 0..40))
                .prop_map(|(head, mask)| [head, mask].concat()),
        ],
    ) {
        let mut data = vec![selector];
        data.extend(input);
        fuzz::handshake(&data);
    }
}
