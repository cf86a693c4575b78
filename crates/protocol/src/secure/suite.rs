//! The Noise protocols a handshake may use, and their message sizes.

use std::fmt;

use super::{TAG_LEN, local};
use crate::error::{Malformed, ProtocolError};

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

    /// The suite named by `id`; [`Malformed::UnknownSuite`] for any other byte.
    pub fn from_id(id: u8) -> Result<Suite, ProtocolError> {
        match id {
            0x01 => Ok(Suite::P256AesGcmSha256),
            0x02 => Ok(Suite::X25519AesGcmSha256),
            _ => Err(Malformed::UnknownSuite { id }.into()),
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

    pub(super) fn params(self) -> Result<snow::params::NoiseParams, ProtocolError> {
        self.noise_name().parse().map_err(local)
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noise_name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::message::CloseCode;
    use crate::secure::parse_first;

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
            assert_eq!(err, Malformed::UnknownSuite { id }.into());
            assert!(err.to_string().contains(&format!("{id:#04x}")), "{err}");
            assert!(err.is_malformed_input());
            assert_eq!(err.close_code(), CloseCode::ProtocolError);
            let mut message = vec![id];
            message.extend([4; 65]);
            assert_eq!(parse_first(&message), Err(err));
        }
    }
}
