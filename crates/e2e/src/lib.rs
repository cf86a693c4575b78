//! BlazeDB end-to-end sealing (docs/e2e.md): what a device does to the values of an e2e
//! collection before they leave it, and how scope keys travel to the devices that may read
//! them, through a server that cannot open either. Pure, like `snow` and rustls: bytes in,
//! bytes out; the only outside input is the operating system's random number generator.
//!
//! - [`seal_value`] / [`open_value`]: one field value under a [`ScopeKey`], AES-256-GCM-SIV,
//!   bound to its [`FieldSlot`] (database, collection, scope, epoch, record id, field, stamp
//!   and origin): a value moved, replayed or relabelled by the server does not open.
//! - [`wrap_key`] / [`unwrap_key`]: a scope key wrapped to one device's static public key
//!   (its Noise key) with HPKE (RFC 9180), labelled by [`KeyLabel`].
//! - [`seal_previous_key`] / [`open_previous_key`]: the key of an epoch sealed under the next
//!   one, so that rotation keeps history readable to members.
//!
//! ```
//! use blazedb_e2e::{FieldSlot, KeyKind, KeyLabel, ScopeKey, open_value, seal_value, unwrap_key, wrap_key};
//! use blazedb_format::{NodeId, Stamp, Uuid, Value};
//!
//! # fn main() -> Result<(), blazedb_e2e::E2eError> {
//! let key = ScopeKey::generate()?;
//! let alice = NodeId(Uuid::now_v7());
//! let label = KeyLabel { database: "bugs", collection: "bugs", scope: "ios", epoch: 1 };
//! let slot = FieldSlot {
//!     label,
//!     record: Uuid::now_v7(),
//!     field: "title",
//!     stamp: Stamp { lamport: 7, node: alice },
//!     origin: alice,
//! };
//! let sealed = seal_value(&key, &slot, &Value::from("crash on start"))?;
//! assert_eq!(open_value(&key, &slot, &sealed)?, Value::from("crash on start"));
//! // Moved to another field, it no longer opens.
//! assert!(open_value(&key, &FieldSlot { field: "status", ..slot }, &sealed).is_err());
//!
//! // The key travels wrapped to Bob's static key (here a fixed X25519 key pair).
//! let bob_private = [7_u8; 32];
//! let bob_public = blazedb_e2e::x25519_public(&bob_private)?;
//! let wrapped = wrap_key(&key, &label, KeyKind::X25519, &bob_public)?;
//! let bobs = unwrap_key(&wrapped, &label, &bob_private)?;
//! assert_eq!(open_value(&bobs, &slot, &sealed)?, Value::from("crash on start"));
//! # Ok(())
//! # }
//! ```

mod error;
mod scope;
mod seal;
mod wrap;

pub use error::{E2eError, Result};
pub use scope::{fields_of_scope, scope_of};
pub use seal::{
    FieldSlot, KeyId, SEALED_VALUE_OVERHEAD, SEALED_VALUE_VERSION, ScopeKey, SealedValue,
    open_value, seal_value,
};
pub use wrap::{
    KeyKind, KeyLabel, WRAPPED_KEY_VERSION, WrappedKey, open_previous_key, seal_previous_key,
    unwrap_key, wrap_key,
};

/// The public key of an X25519 private key (32 bytes each), as HPKE derives it: for tests,
/// examples and devices that keep only the private half.
pub fn x25519_public(private: &[u8]) -> Result<Vec<u8>> {
    public_of::<hpke::kem::X25519HkdfSha256>(private)
}

/// The uncompressed (65-byte) public key of a P-256 private scalar (32 bytes).
pub fn p256_public(private: &[u8]) -> Result<Vec<u8>> {
    public_of::<hpke::kem::DhP256HkdfSha256>(private)
}

fn public_of<K: hpke::Kem>(private: &[u8]) -> Result<Vec<u8>> {
    use hpke::{Deserializable, Serializable};
    let private = K::PrivateKey::from_bytes(private).map_err(|_| E2eError::InvalidKey {
        what: "private key",
        reason: "not a private key of this kind",
    })?;
    Ok(K::sk_to_pk(&private).to_bytes().to_vec())
}
