//! Field values sealed with a scope key: AES-256-GCM-SIV, with associated data that binds
//! the value to where it belongs (docs/format.md, "Sealed field value").
//!
//! ```text
//! 0      1                  5
//! +------+------------------+---------------------------------+
//! | 0x02 | key id (4 bytes) | ciphertext ‖ tag (16 bytes)     |
//! +------+------------------+---------------------------------+
//! ```
//!
//! The plaintext is the value in BlazeBinary (`encode_value`). The nonce is not sent: it is
//! derived from the associated data, which is unique to each write (its stamp), so sealing
//! is deterministic. GCM-SIV because every device of a scope seals under one key: even a
//! repeated nonce would only reveal that two plaintexts are equal, never the key.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use blazedb_format::{NodeId, Stamp, Uuid, Value, decode_value, encode_value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{E2eError, Result};
use crate::wrap::KeyLabel;

/// The format byte of a sealed value.
pub const SEALED_VALUE_VERSION: u8 = 2;
/// Bytes of a sealed value around its ciphertext: version, key id and tag.
pub const SEALED_VALUE_OVERHEAD: usize = 1 + 4 + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Domain separation of the associated data.
const FIELD_AAD_LABEL: &[u8] = b"blazedb/e2e/field/v2";
/// Domain separation of key ids.
const KEY_ID_LABEL: &[u8] = b"blazedb/e2e/key-id/v1";

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

/// A short public name of a [`ScopeKey`]: the first 4 bytes of the SHA-256 of a label and
/// the key. A sealed value carries it in clear, so that a device finds the key to open it
/// with, whichever scope or epoch the record is in now; two keys made at once for one
/// scope (by two devices) have different ids. It names a key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl ScopeKey {
    /// The key's public [`KeyId`].
    pub fn id(&self) -> KeyId {
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(self.0.as_slice())
            .finalize();
        let digest: [u8; 32] = digest.into();
        let (id, _) = digest.split_first_chunk::<4>().unwrap_or((&[0; 4], &[]));
        KeyId(*id)
    }
}

/// Where a value belongs: everything its seal binds it to. A value opened with a different
/// slot than it was sealed with fails, so a server that moves it to another record or
/// field, replays it under another stamp or origin, or relabels its scope or epoch is
/// caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSlot<'a> {
    /// The key's label: database, collection, scope and epoch.
    pub label: KeyLabel<'a>,
    pub record: Uuid,
    pub field: &'a str,
    /// The stamp of the write that set the value.
    pub stamp: Stamp,
    /// The node whose operation carried it.
    pub origin: NodeId,
}

impl FieldSlot<'_> {
    /// The associated data: a label, then every part, strings with their length first.
    fn associated_data(&self) -> Vec<u8> {
        let label = &self.label;
        let mut aad = Vec::with_capacity(
            FIELD_AAD_LABEL.len()
                + 16
                + label.database.len()
                + label.collection.len()
                + label.scope.len()
                + self.field.len()
                + 16 * 3
                + 8
                + 4,
        );
        aad.extend_from_slice(FIELD_AAD_LABEL);
        put_str(&mut aad, label.database);
        put_str(&mut aad, label.collection);
        put_str(&mut aad, label.scope);
        aad.extend_from_slice(&label.epoch.to_be_bytes());
        aad.extend_from_slice(self.record.as_bytes());
        put_str(&mut aad, self.field);
        aad.extend_from_slice(&self.stamp.lamport.to_be_bytes());
        aad.extend_from_slice(self.stamp.node.as_bytes());
        aad.extend_from_slice(self.origin.as_bytes());
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

/// The nonce of a slot: the first 12 bytes of the SHA-256 of its associated data. Every
/// write has its own slot (its stamp differs), so nonces differ between writes; the same
/// write sealed twice (sent again after a lost connection) gives the same bytes, which a
/// server needs to recognise it as the same operation.
fn nonce_of(aad: &[u8]) -> [u8; NONCE_LEN] {
    let digest: [u8; 32] = Sha256::digest(aad).into();
    let (nonce, _) = digest
        .split_first_chunk::<NONCE_LEN>()
        .unwrap_or((&[0; NONCE_LEN], &[]));
    *nonce
}

/// A sealed value taken apart (no decryption): what a blind server can read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedValue<'a> {
    /// The key it claims to be sealed under (in clear; a wrong one does not open).
    pub key: KeyId,
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
                "unknown version byte (this build reads version 2)",
            ));
        }
        if bytes.len() < SEALED_VALUE_OVERHEAD {
            return Err(malformed("shorter than its version, key id and tag"));
        }
        let (key, ciphertext) = rest.split_at(4);
        let key = KeyId(key.try_into().map_err(|_| malformed("key id"))?);
        Ok(SealedValue { key, ciphertext })
    }

    /// Whether `bytes` have the layout of a sealed value (what a server checks before it
    /// accepts a value in an end-to-end collection).
    pub fn is_sealed(bytes: &[u8]) -> bool {
        SealedValue::decode(bytes).is_ok()
    }
}

/// Seals `value` for `slot` under `key` (the key of `slot.label`). Deterministic: the same
/// key, slot and value give the same bytes.
pub fn seal_value(key: &ScopeKey, slot: &FieldSlot<'_>, value: &Value) -> Result<Vec<u8>> {
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let plaintext = Zeroizing::new(encode_value(value));
    let aad = slot.associated_data();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce_of(&aad)),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Crypto("AES-256-GCM-SIV refused the value (too long)"))?;
    let mut out = Vec::with_capacity(SEALED_VALUE_OVERHEAD + plaintext.len());
    out.push(SEALED_VALUE_VERSION);
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens a value sealed by [`seal_value`] for the same `slot` under `key`.
pub fn open_value(key: &ScopeKey, slot: &FieldSlot<'_>, sealed: &[u8]) -> Result<Value> {
    let parts = SealedValue::decode(sealed)?;
    if parts.key != key.id() {
        return Err(E2eError::WrongKey {
            sealed: parts.key,
            given: key.id(),
        });
    }
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let aad = slot.associated_data();
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce_of(&aad)),
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
