//! Field values sealed with a scope key: AES-256-GCM-SIV, with associated data that binds
//! the value to where it belongs (docs/format.md, "Sealed field value").
//!
//! ```text
//! 0      1              5                 17
//! +------+--------------+-----------------+---------------------------------+
//! | 0x01 | epoch (u32)  | nonce (12 bytes)| ciphertext ‖ tag (16 bytes)     |
//! +------+--------------+-----------------+---------------------------------+
//! ```
//!
//! The plaintext is the value in BlazeBinary (`encode_value`). GCM-SIV because every device
//! of a scope seals under the same key with random nonces: a repeated nonce must not leak
//! the key (it only reveals that two plaintexts are equal).

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use blazedb_format::{NodeId, Stamp, Uuid, Value, decode_value, encode_value};
use zeroize::Zeroizing;

use crate::error::{E2eError, Result};

/// The format byte of a sealed value.
pub const SEALED_VALUE_VERSION: u8 = 1;
/// Bytes of a sealed value around its ciphertext: version, epoch, nonce and tag.
pub const SEALED_VALUE_OVERHEAD: usize = 1 + 4 + NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Domain separation of the associated data.
const FIELD_AAD_LABEL: &[u8] = b"blazedb/e2e/field/v1";

/// A scope key: 32 secret bytes shared by the devices of one scope (a team's records of one
/// collection, say) for one epoch. Made on a device ([`ScopeKey::generate`]), never by the
/// server; it travels only wrapped ([`crate::wrap_key`]). Zeroed when dropped.
#[derive(Clone)]
pub struct ScopeKey(Zeroizing<[u8; 32]>);

impl ScopeKey {
    /// A new random key, from the operating system's random number generator.
    pub fn generate() -> Result<ScopeKey> {
        let mut key = Zeroizing::new([0_u8; 32]);
        getrandom::fill(key.as_mut_slice()).map_err(|e| E2eError::Random(e.to_string()))?;
        Ok(ScopeKey(key))
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<ScopeKey> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| E2eError::InvalidKey {
            what: "scope key",
            reason: "a scope key is 32 bytes",
        })?;
        Ok(ScopeKey(Zeroizing::new(bytes)))
    }

    /// Its 32 bytes (secret: never log them).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScopeKey(..)")
    }
}

/// Where a value belongs: everything its seal binds it to. A value opened with a different
/// slot than it was sealed with fails, so a server that moves it to another record or
/// field, replays it under another stamp or origin, or relabels its epoch is caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSlot<'a> {
    pub database: &'a str,
    pub collection: &'a str,
    pub record: Uuid,
    pub field: &'a str,
    /// The stamp of the write that set the value.
    pub stamp: Stamp,
    /// The node whose operation carried it.
    pub origin: NodeId,
    /// The epoch of the scope key it is sealed under.
    pub epoch: u32,
}

impl FieldSlot<'_> {
    /// The associated data: a label, then every part, strings with their length first.
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            FIELD_AAD_LABEL.len()
                + 12
                + self.database.len()
                + self.collection.len()
                + self.field.len()
                + 16 * 3
                + 8
                + 4,
        );
        aad.extend_from_slice(FIELD_AAD_LABEL);
        put_str(&mut aad, self.database);
        put_str(&mut aad, self.collection);
        aad.extend_from_slice(self.record.as_bytes());
        put_str(&mut aad, self.field);
        aad.extend_from_slice(&self.stamp.lamport.to_be_bytes());
        aad.extend_from_slice(self.stamp.node.as_bytes());
        aad.extend_from_slice(self.origin.as_bytes());
        aad.extend_from_slice(&self.epoch.to_be_bytes());
        aad
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lengths above 4 GiB cannot occur (values and names are far smaller); saturating keeps
    // the encoding total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A sealed value taken apart (no decryption): what a blind server can read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedValue<'a> {
    /// The epoch of the key it claims to be sealed under (in clear; bound by the seal).
    pub epoch: u32,
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub ciphertext: &'a [u8],
}

impl<'a> SealedValue<'a> {
    /// Reads the layout above; refuses anything shorter or of another version.
    pub fn decode(bytes: &'a [u8]) -> Result<SealedValue<'a>> {
        let malformed = |reason| E2eError::Malformed {
            what: "sealed value",
            reason,
        };
        let (&version, rest) = bytes.split_first().ok_or(malformed("it is empty"))?;
        if version != SEALED_VALUE_VERSION {
            return Err(malformed(
                "unknown version byte (this build reads version 1)",
            ));
        }
        if bytes.len() < SEALED_VALUE_OVERHEAD {
            return Err(malformed("shorter than its version, epoch, nonce and tag"));
        }
        let (epoch, rest) = rest.split_at(4);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let epoch = u32::from_be_bytes(epoch.try_into().map_err(|_| malformed("epoch"))?);
        let nonce = nonce.try_into().map_err(|_| malformed("nonce"))?;
        Ok(SealedValue {
            epoch,
            nonce,
            ciphertext,
        })
    }
}

/// Seals `value` for `slot` under `key` (whose epoch is `slot.epoch`), with a random nonce.
pub fn seal_value(key: &ScopeKey, slot: &FieldSlot<'_>, value: &Value) -> Result<Vec<u8>> {
    let mut nonce = [0_u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| E2eError::Random(e.to_string()))?;
    seal_value_with_nonce(key, slot, value, nonce)
}

/// [`seal_value`] with a given nonce (tests and reproducible examples only: reusing a nonce
/// with the same key reveals whether two plaintexts are equal).
pub fn seal_value_with_nonce(
    key: &ScopeKey,
    slot: &FieldSlot<'_>,
    value: &Value,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let plaintext = Zeroizing::new(encode_value(value));
    let aad = slot.associated_data();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Crypto("AES-256-GCM-SIV refused the value (too long)"))?;
    let mut out = Vec::with_capacity(SEALED_VALUE_OVERHEAD + plaintext.len());
    out.push(SEALED_VALUE_VERSION);
    out.extend_from_slice(&slot.epoch.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens a value sealed by [`seal_value`] for the same `slot` under `key`.
pub fn open_value(key: &ScopeKey, slot: &FieldSlot<'_>, sealed: &[u8]) -> Result<Value> {
    let parts = SealedValue::decode(sealed)?;
    if parts.epoch != slot.epoch {
        return Err(E2eError::WrongEpoch {
            sealed: parts.epoch,
            expected: slot.epoch,
        });
    }
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let aad = slot.associated_data();
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&parts.nonce),
                Payload {
                    msg: parts.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| E2eError::Tampered { what: "value" })?,
    );
    // Authentic bytes that do not decode were sealed by a device of the scope with a
    // broken encoder: still the peer's fault, never a panic.
    decode_value(&plaintext).map_err(|_| E2eError::Malformed {
        what: "sealed value",
        reason: "its plaintext is not a BlazeBinary value",
    })
}
