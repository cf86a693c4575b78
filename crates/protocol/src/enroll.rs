//! One-time enrollment tokens: how a new device proves to a server that an administrator let
//! it in, and how it learns the server's static key before its first handshake.
//!
//! A token is `bzt1_` followed by unpadded base64url of:
//!
//! ```text
//! +----------+--------------+-------+-----------------------------------+
//! | id (16)  | secret (32)  | suite | server static public key          |
//! |          |              | (1)   | (65 bytes P-256 / 32 bytes 25519) |
//! +----------+--------------+-------+-----------------------------------+
//! ```
//!
//! The suite byte and the key are as in the handshake (`secure::Suite::id`, uncompressed
//! SEC 1 for P-256), so a token is 157 characters for P-256 and 113 for X25519.
//!
//! The server stores the id, SHA-256 of the secret, the user and whether the token was used;
//! never the secret. The device checks that the key the server shows in the handshake is the
//! one in the token (so a man in the middle is caught even on first contact), then sends the
//! token in [`crate::Message::Enroll`] inside the secure channel.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{CryptoFault, ProtocolError, TokenFault, Unauthorized};
use crate::secure::{StaticKeys, Suite, fingerprint};

/// The text every token starts with (the format's version).
pub const TOKEN_PREFIX: &str = "bzt1_";
/// Length of a token's id.
pub const TOKEN_ID_LEN: usize = 16;
/// Length of a token's secret.
pub const TOKEN_SECRET_LEN: usize = 32;

/// A parsed enrollment token. `Debug` shows the id and the server's key fingerprint, never
/// the secret.
#[derive(Clone)]
pub struct EnrollmentToken {
    id: [u8; TOKEN_ID_LEN],
    secret: Zeroizing<[u8; TOKEN_SECRET_LEN]>,
    server_suite: Suite,
    server_key: Vec<u8>,
}

fn invalid(fault: TokenFault) -> ProtocolError {
    Unauthorized::Token(fault).into()
}

fn random_failed(error: getrandom::Error) -> ProtocolError {
    ProtocolError::crypto(CryptoFault::Random(error))
}

impl EnrollmentToken {
    /// A fresh token for a server with `server` static keys: random id and secret.
    pub fn generate(server: &StaticKeys) -> Result<EnrollmentToken, ProtocolError> {
        let mut id = [0u8; TOKEN_ID_LEN];
        let mut secret = Zeroizing::new([0u8; TOKEN_SECRET_LEN]);
        getrandom::fill(&mut id).map_err(random_failed)?;
        getrandom::fill(secret.as_mut()).map_err(random_failed)?;
        Ok(EnrollmentToken {
            id,
            secret,
            server_suite: server.suite(),
            server_key: server.public().to_vec(),
        })
    }

    /// Reads a token as an administrator handed it out (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<EnrollmentToken, ProtocolError> {
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(invalid(TokenFault::Prefix))?;
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| invalid(TokenFault::Base64))?,
        );
        let (id, rest) = bytes
            .split_first_chunk::<TOKEN_ID_LEN>()
            .ok_or(invalid(TokenFault::TooShort))?;
        let (secret, rest) = rest
            .split_first_chunk::<TOKEN_SECRET_LEN>()
            .ok_or(invalid(TokenFault::TooShort))?;
        let (&suite, key) = rest.split_first().ok_or(invalid(TokenFault::TooShort))?;
        let server_suite = Suite::from_id(suite).map_err(|_| invalid(TokenFault::UnknownSuite))?;
        if key.len() != server_suite.public_key_len() {
            return Err(invalid(TokenFault::KeyLength));
        }
        Ok(EnrollmentToken {
            id: *id,
            secret: Zeroizing::new(*secret),
            server_suite,
            server_key: key.to_vec(),
        })
    }

    /// The token as text, to hand to the device's owner.
    pub fn encode(&self) -> String {
        let mut bytes = Zeroizing::new(Vec::with_capacity(
            TOKEN_ID_LEN + TOKEN_SECRET_LEN + 1 + self.server_key.len(),
        ));
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(self.secret.as_ref());
        bytes.push(self.server_suite.id());
        bytes.extend_from_slice(&self.server_key);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&*bytes))
    }

    /// The token's id, under which the server stores it.
    pub fn id(&self) -> [u8; TOKEN_ID_LEN] {
        self.id
    }

    /// The id as lowercase hex.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// SHA-256 of the secret: what the server stores and compares.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_ref()).into()
    }

    /// True when this token's secret hashes to `stored` (compared without early exit).
    pub fn secret_matches(&self, stored: &[u8]) -> bool {
        let ours = self.secret_hash();
        stored.len() == ours.len()
            && ours
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The suite of the server's static key.
    pub fn server_suite(&self) -> Suite {
        self.server_suite
    }

    /// The server's static public key: the device refuses a server that shows another.
    pub fn server_key(&self) -> &[u8] {
        &self.server_key
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.id_hex())
            .field("server_key", &fingerprint(&self.server_key))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_token_round_trips_through_text() {
        for suite in Suite::ALL {
            let server = StaticKeys::generate(suite).unwrap();
            let token = EnrollmentToken::generate(&server).unwrap();
            let text = token.encode();
            assert!(text.starts_with(TOKEN_PREFIX));
            let parsed = EnrollmentToken::parse(&format!("  {text}\n")).unwrap();
            assert_eq!(parsed.id(), token.id());
            assert_eq!(parsed.server_key(), server.public());
            assert_eq!(parsed.server_suite(), suite);
            assert!(parsed.secret_matches(&token.secret_hash()));
        }
    }

    #[test]
    fn a_token_has_the_documented_layout_and_length() {
        for (suite, len) in [
            (Suite::P256AesGcmSha256, 157),
            (Suite::X25519AesGcmSha256, 113),
        ] {
            let server = StaticKeys::generate(suite).unwrap();
            let token = EnrollmentToken::generate(&server).unwrap();
            let text = token.encode();
            assert_eq!(text.len(), len, "{suite:?}");
            let bytes = URL_SAFE_NO_PAD.decode(&text[TOKEN_PREFIX.len()..]).unwrap();
            assert_eq!(bytes[..16], token.id());
            assert_eq!(bytes[16..48], token.secret[..]);
            assert_eq!(bytes[48], suite.id());
            assert_eq!(&bytes[49..], server.public());
            assert_eq!(token.id_hex().len(), 32);
        }
    }

    #[test]
    fn a_token_with_padding_or_the_standard_base64_alphabet_is_refused() {
        let server = StaticKeys::generate(Suite::X25519AesGcmSha256).unwrap();
        let text = EnrollmentToken::generate(&server).unwrap().encode();
        // 81 and 114 bytes are multiples of 3: a token never needs padding and its last
        // character carries no unused bits.
        let body = &text[TOKEN_PREFIX.len()..];
        for bad in [
            format!("{text}="),
            format!("{text}=="),
            format!("{TOKEN_PREFIX}+{}", &body[1..]),
            format!("{TOKEN_PREFIX}/{}", &body[1..]),
            format!("{TOKEN_PREFIX}{}", &body[1..]),
            format!("BZT1_{body}"),
        ] {
            let err = EnrollmentToken::parse(&bad).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Unauthorized(Unauthorized::Token(_))),
                "{bad}: {err}"
            );
        }
    }

    /// The example of docs/protocol.md.
    #[test]
    fn the_documented_token_parses() {
        let text = concat!(
            "bzt1_AQEBAQEBAQEBAQEBAQEBAQICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgk",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(text.len(), 113);
        let token = EnrollmentToken::parse(text).unwrap();
        assert_eq!(token.id(), [0x01; 16]);
        assert_eq!(token.id_hex(), "01".repeat(16));
        assert_eq!(
            token.secret_hash(),
            <[u8; 32]>::from(Sha256::digest([0x02; 32]))
        );
        assert_eq!(token.server_suite(), Suite::X25519AesGcmSha256);
        let mut base_point = [0; 32];
        base_point[0] = 9;
        assert_eq!(token.server_key(), base_point);
        assert_eq!(token.encode(), text);
    }

    #[test]
    fn another_tokens_secret_does_not_match() {
        let server = StaticKeys::generate(Suite::default()).unwrap();
        let a = EnrollmentToken::generate(&server).unwrap();
        let b = EnrollmentToken::generate(&server).unwrap();
        assert!(!a.secret_matches(&b.secret_hash()));
        assert!(!a.secret_matches(&[]));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let server = StaticKeys::generate(Suite::default()).unwrap();
        let text = EnrollmentToken::generate(&server).unwrap().encode();
        for bad in [
            "",
            "bzt2_abc",
            "bzt1_***",
            "bzt1_AAAA",
            &text[..text.len() - 4],
            &format!("{text}AA"),
        ] {
            let err = EnrollmentToken::parse(bad).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Unauthorized(Unauthorized::Token(_))),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let server = StaticKeys::generate(Suite::default()).unwrap();
        let token = EnrollmentToken::generate(&server).unwrap();
        let shown = format!("{token:?}");
        let secret_hex: String = token.secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&secret_hex));
        assert!(!shown.contains(&token.encode()[5..]));
    }
}
