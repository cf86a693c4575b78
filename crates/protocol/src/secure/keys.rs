//! A node's long-term static key pair for one suite, and key fingerprints.

use std::fmt;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::Suite;
use crate::error::{CryptoFault, KeyFault, ProtocolError};

/// Bytes of a private static key, for every suite.
pub const PRIVATE_KEY_LEN: usize = 32;

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
            getrandom::fill(private.as_mut_slice())
                .map_err(|error| ProtocolError::crypto(CryptoFault::Random(error)))?;
            if let Ok(public) = derive_public(suite, &private) {
                return Ok(StaticKeys {
                    suite,
                    private,
                    public,
                });
            }
        }
        Err(ProtocolError::crypto(CryptoFault::NoValidKey))
    }

    /// The key pair with this private key; the public key is derived from it.
    pub fn from_private(suite: Suite, private: &[u8]) -> Result<StaticKeys, ProtocolError> {
        let mut key = Zeroizing::new([0_u8; PRIVATE_KEY_LEN]);
        if private.len() != PRIVATE_KEY_LEN {
            return Err(ProtocolError::invalid_static_keys(
                KeyFault::PrivateKeyLength,
            ));
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
            return Err(ProtocolError::invalid_static_keys(
                KeyFault::PublicKeyMismatch,
            ));
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

/// A short name for a public key, for logs and enrollment lists: the first 8 bytes of its
/// SHA-256 hash in lowercase hex (16 characters).
pub fn fingerprint(public_key: &[u8]) -> String {
    let hash = Sha256::digest(public_key);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn derive_public(suite: Suite, private: &[u8; PRIVATE_KEY_LEN]) -> Result<Vec<u8>, ProtocolError> {
    match suite {
        Suite::P256AesGcmSha256 => {
            let secret = p256::SecretKey::from_slice(private)
                .map_err(|_| ProtocolError::invalid_static_keys(KeyFault::NotAP256Scalar))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::error::LocalFailure;
    use crate::message::CloseCode;
    use crate::secure::testing::keys;

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
            matches!(err, ProtocolError::Local(LocalFailure::StaticKeys(_))),
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
    fn p256_public_keys_are_uncompressed_sec1_points_of_the_big_endian_private_scalar() {
        // d = 1: the public key is the generator G, 04 || Gx || Gy (SEC 2, secp256r1).
        let mut one = [0; 32];
        one[31] = 1;
        let keys = StaticKeys::from_private(Suite::P256AesGcmSha256, &one).unwrap();
        let public = keys.public();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 0x04);
        assert_eq!(
            public[1..9],
            [0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47],
            "Gx, big-endian"
        );
        assert_eq!(
            public[33..41],
            [0x4F, 0xE3, 0x42, 0xE2, 0xFE, 0x1A, 0x7F, 0x9B],
            "Gy, big-endian"
        );
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
}
