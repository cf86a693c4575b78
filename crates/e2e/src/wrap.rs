//! Scope keys wrapped to one device's static public key with HPKE (RFC 9180, base mode), and
//! a previous epoch's key sealed under the next one (docs/format.md, "Wrapped scope key").
//!
//! ```text
//! 0      1            3          5             5+E         7+E
//! +------+------------+----------+-------------+-----------+---------------------+
//! | 0x01 | KEM id u16 | E (u16)  | enc (E)     | C (u16)   | ciphertext (C = 48) |
//! +------+------------+----------+-------------+-----------+---------------------+
//! ```
//!
//! The KEM is the device's Noise static key kind (DHKEM(P-256) 0x0010 with E = 65, or
//! DHKEM(X25519) 0x0020 with E = 32), with HKDF-SHA256 and AES-256-GCM. HPKE's `info`
//! names the key (database, collection, scope, epoch): a wrapped key relabelled by the
//! server does not open.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::error::{E2eError, Result};
use crate::seal::ScopeKey;

/// The format byte of a wrapped key.
pub const WRAPPED_KEY_VERSION: u8 = 1;
const KEY_INFO_LABEL: &[u8] = b"blazedb/e2e/scope-key/v1";
const PREVIOUS_KEY_LABEL: &[u8] = b"blazedb/e2e/previous-key/v1";
/// A wrapped 32-byte key: the key and AES-256-GCM's tag.
const WRAPPED_LEN: usize = 32 + 16;

/// The kind of a device's static key, which decides the HPKE KEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// P-256, 65-byte uncompressed public keys: DHKEM(P-256, HKDF-SHA256).
    P256,
    /// X25519, 32-byte public keys: DHKEM(X25519, HKDF-SHA256).
    X25519,
}

impl KeyKind {
    /// The KEM id of RFC 9180.
    pub fn kem_id(self) -> u16 {
        match self {
            KeyKind::P256 => 0x0010,
            KeyKind::X25519 => 0x0020,
        }
    }

    fn from_kem_id(id: u16) -> Option<KeyKind> {
        match id {
            0x0010 => Some(KeyKind::P256),
            0x0020 => Some(KeyKind::X25519),
            _ => None,
        }
    }

    /// Bytes of the encapsulated key (a public key of this kind).
    pub fn enc_len(self) -> usize {
        match self {
            KeyKind::P256 => 65,
            KeyKind::X25519 => 32,
        }
    }
}

/// Which key a wrapped key is: bound into HPKE's `info` and into a sealed previous key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLabel<'a> {
    pub database: &'a str,
    pub collection: &'a str,
    /// The scope of the rules the key serves (a team, say).
    pub scope: &'a str,
    pub epoch: u32,
}

impl KeyLabel<'_> {
    fn encode(&self, label: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(label.len() + 16 + self.database.len() + 64);
        out.extend_from_slice(label);
        for part in [self.database, self.collection, self.scope] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out
    }
}

/// A scope key wrapped to one device: only that device's static private key opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub kind: KeyKind,
    /// HPKE's encapsulated key.
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// The layout above.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 + self.enc.len() + self.ciphertext.len());
        out.push(WRAPPED_KEY_VERSION);
        out.extend_from_slice(&self.kind.kem_id().to_be_bytes());
        for part in [&self.enc, &self.ciphertext] {
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Reads the layout above: a known version and KEM, lengths that fit that KEM, nothing
    /// after.
    pub fn decode(bytes: &[u8]) -> Result<WrappedKey> {
        let malformed = |reason| E2eError::Malformed {
            what: "wrapped key",
            reason,
        };
        let mut reader = Reader(bytes);
        if reader.take(1).ok_or(malformed("it is empty"))? != [WRAPPED_KEY_VERSION] {
            return Err(malformed(
                "unknown version byte (this build reads version 1)",
            ));
        }
        let kind = reader
            .u16()
            .and_then(KeyKind::from_kem_id)
            .ok_or(malformed(
                "unknown KEM (this build reads 0x0010 and 0x0020)",
            ))?;
        let enc = reader
            .u16()
            .and_then(|len| reader.take(usize::from(len)))
            .ok_or(malformed("truncated encapsulated key"))?;
        if enc.len() != kind.enc_len() {
            return Err(malformed(
                "encapsulated key of the wrong length for its KEM",
            ));
        }
        let ciphertext = reader
            .u16()
            .and_then(|len| reader.take(usize::from(len)))
            .ok_or(malformed("truncated ciphertext"))?;
        if ciphertext.len() != WRAPPED_LEN {
            return Err(malformed("a wrapped scope key is 48 bytes of ciphertext"));
        }
        if !reader.0.is_empty() {
            return Err(malformed("bytes after the ciphertext"));
        }
        Ok(WrappedKey {
            kind,
            enc: enc.to_vec(),
            ciphertext: ciphertext.to_vec(),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
    }
}

/// Wraps `key` (labelled `label`) to the device whose static public key is
/// `recipient_public`, of kind `kind`.
pub fn wrap_key(
    key: &ScopeKey,
    label: &KeyLabel<'_>,
    kind: KeyKind,
    recipient_public: &[u8],
) -> Result<WrappedKey> {
    let info = label.encode(KEY_INFO_LABEL);
    let mut rng = OsRng::new()?;
    let (enc, ciphertext) = match kind {
        KeyKind::P256 => seal::<DhP256HkdfSha256>(recipient_public, &info, key, &mut rng),
        KeyKind::X25519 => seal::<X25519HkdfSha256>(recipient_public, &info, key, &mut rng),
    }?;
    if rng.failed {
        return Err(E2eError::Random("it ran dry".into()));
    }
    Ok(WrappedKey {
        kind,
        enc,
        ciphertext,
    })
}

fn seal<K: Kem>(
    recipient_public: &[u8],
    info: &[u8],
    key: &ScopeKey,
    rng: &mut OsRng,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let public = K::PublicKey::from_bytes(recipient_public).map_err(|_| E2eError::InvalidKey {
        what: "recipient public key",
        reason: "not a public key of this kind (P-256: 65 bytes uncompressed; X25519: 32)",
    })?;
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, K, _>(
        &OpModeS::Base,
        &public,
        info,
        key.as_bytes(),
        &[],
        rng,
    )
    .map_err(|_| E2eError::Crypto("HPKE refused to wrap the key"))?;
    Ok((enc.to_bytes().to_vec(), ciphertext))
}

/// Opens a key wrapped to us, with our static private key; `label` must be the one it was
/// wrapped under.
pub fn unwrap_key(
    wrapped: &WrappedKey,
    label: &KeyLabel<'_>,
    recipient_private: &[u8],
) -> Result<ScopeKey> {
    let info = label.encode(KEY_INFO_LABEL);
    let plaintext = match wrapped.kind {
        KeyKind::P256 => open::<DhP256HkdfSha256>(wrapped, &info, recipient_private),
        KeyKind::X25519 => open::<X25519HkdfSha256>(wrapped, &info, recipient_private),
    }?;
    ScopeKey::from_bytes(&plaintext)
}

fn open<K: Kem>(
    wrapped: &WrappedKey,
    info: &[u8],
    recipient_private: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let private =
        K::PrivateKey::from_bytes(recipient_private).map_err(|_| E2eError::InvalidKey {
            what: "private key",
            reason: "not a private key of the wrapped key's kind",
        })?;
    let enc = K::EncappedKey::from_bytes(&wrapped.enc).map_err(|_| E2eError::Malformed {
        what: "wrapped key",
        reason: "its encapsulated key is not a point of its curve",
    })?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(
        &OpModeR::Base,
        &private,
        &enc,
        info,
        &wrapped.ciphertext,
        &[],
    )
    .map(Zeroizing::new)
    .map_err(|_| E2eError::Tampered { what: "key" })
}

/// Seals `previous` (the key of epoch `previous_label.epoch`) under `next`, so that a
/// member holding only the next key still reads history: 12-byte nonce, then ciphertext
/// and tag (60 bytes).
pub fn seal_previous_key(
    next: &ScopeKey,
    previous: &ScopeKey,
    previous_label: &KeyLabel<'_>,
) -> Result<Vec<u8>> {
    let mut nonce = [0_u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| E2eError::Random(e.to_string()))?;
    let aad = previous_label.encode(PREVIOUS_KEY_LABEL);
    let ciphertext = Aes256GcmSiv::new(next.as_bytes().into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: previous.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Crypto("AES-256-GCM-SIV refused the key"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens what [`seal_previous_key`] made, with the next epoch's key.
pub fn open_previous_key(
    next: &ScopeKey,
    sealed: &[u8],
    previous_label: &KeyLabel<'_>,
) -> Result<ScopeKey> {
    if sealed.len() != 12 + WRAPPED_LEN {
        return Err(E2eError::Malformed {
            what: "sealed previous key",
            reason: "a sealed previous key is 60 bytes",
        });
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let aad = previous_label.encode(PREVIOUS_KEY_LABEL);
    let plaintext = Zeroizing::new(
        Aes256GcmSiv::new(next.as_bytes().into())
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| E2eError::Tampered {
                what: "previous key",
            })?,
    );
    ScopeKey::from_bytes(&plaintext)
}

/// HPKE's random source: bytes drawn from the operating system up front, so that a failing
/// generator is an error, not a panic inside the KEM. Encapsulation takes 32 bytes (one
/// ephemeral key); more is drawn on demand, and a failure then is reported by `failed`
/// (the output is discarded).
struct OsRng {
    pool: [u8; 64],
    used: usize,
    failed: bool,
}

impl OsRng {
    fn new() -> Result<OsRng> {
        let mut pool = [0_u8; 64];
        getrandom::fill(&mut pool).map_err(|e| E2eError::Random(e.to_string()))?;
        Ok(OsRng {
            pool,
            used: 0,
            failed: false,
        })
    }
}

impl Drop for OsRng {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pool);
    }
}

impl hpke::rand_core::RngCore for OsRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0_u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0_u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let left = self.pool.get(self.used..).unwrap_or_default();
        if dest.len() <= left.len() {
            let end = self.used + dest.len();
            dest.copy_from_slice(self.pool.get(self.used..end).unwrap_or_default());
            self.used = end;
        } else if getrandom::fill(dest).is_err() {
            self.failed = true;
        }
    }
}

impl hpke::rand_core::CryptoRng for OsRng {}
