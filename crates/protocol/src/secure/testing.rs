//! Helpers the secure channel's tests share.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroU64;

use super::{Established, Initiator, Responder, SecureChannel, StaticKeys, Suite};
use crate::error::ProtocolError;
use crate::message::PROTOCOL_VERSION;

pub(crate) fn keys(suite: Suite) -> StaticKeys {
    StaticKeys::generate(suite).unwrap()
}

/// Runs a handshake to the end; each side with its own database name and version.
pub(crate) fn handshake_with(
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

pub(crate) fn handshake(suite: Suite) -> (Established, Established) {
    handshake_with(
        &keys(suite),
        &keys(suite),
        ("bugs", PROTOCOL_VERSION),
        ("bugs", PROTOCOL_VERSION),
    )
    .unwrap()
}

pub(crate) fn channels(suite: Suite) -> (SecureChannel, SecureChannel) {
    let (initiator, responder) = handshake(suite);
    (initiator.into_channel(), responder.into_channel())
}

pub(crate) fn channels_with_interval(interval: u64) -> (SecureChannel, SecureChannel) {
    let interval = NonZeroU64::new(interval).unwrap();
    let (initiator, responder) = handshake(Suite::X25519AesGcmSha256);
    (
        initiator.with_rekey_interval(interval).into_channel(),
        responder.with_rekey_interval(interval).into_channel(),
    )
}

pub(crate) fn assert_stays_failed(channel: &mut SecureChannel) {
    crate::fuzz::check_stays_failed(channel);
}

pub(crate) fn text(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}
