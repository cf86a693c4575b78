//! Sealed values and wrapped keys: they round-trip, they refuse anything moved, relabelled
//! or changed, and their decoders refuse garbage without panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_e2e::{
    E2eError, FieldSlot, KeyKind, KeyLabel, ScopeKey, SealedValue, WrappedKey, open_previous_key,
    open_value, p256_public, seal_previous_key, seal_value, unwrap_key, wrap_key, x25519_public,
};
use blazedb_format::{NodeId, Stamp, Uuid, Value};
use proptest::prelude::*;

fn node(n: u8) -> NodeId {
    NodeId(Uuid::from_bytes([n; 16]))
}

fn slot() -> FieldSlot<'static> {
    FieldSlot {
        label: label(),
        record: Uuid::from_bytes([1; 16]),
        field: "title",
        stamp: Stamp {
            lamport: 42,
            node: node(9),
        },
        origin: node(9),
    }
}

fn label() -> KeyLabel<'static> {
    KeyLabel {
        database: "bugs",
        collection: "bugs",
        scope: "ios",
        epoch: 3,
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Value::Array)
    })
}

/// A P-256 private scalar that is valid (random 32 bytes almost always are).
fn p256_pair() -> (Vec<u8>, Vec<u8>) {
    loop {
        let private = ScopeKey::generate().unwrap().as_bytes().to_vec();
        if let Ok(public) = p256_public(&private) {
            return (private, public);
        }
    }
}

fn x25519_pair() -> (Vec<u8>, Vec<u8>) {
    let private = ScopeKey::generate().unwrap().as_bytes().to_vec();
    let public = x25519_public(&private).unwrap();
    (private, public)
}

#[test]
fn a_value_moved_relabelled_or_replayed_does_not_open() {
    let key = ScopeKey::generate().unwrap();
    let s = slot();
    let sealed = seal_value(&key, &s, &Value::from("crash on start")).unwrap();
    assert_eq!(
        open_value(&key, &s, &sealed).unwrap(),
        Value::from("crash on start")
    );
    let moved = [
        FieldSlot {
            label: KeyLabel {
                database: "other",
                ..s.label
            },
            ..s
        },
        FieldSlot {
            label: KeyLabel {
                collection: "reports",
                ..s.label
            },
            ..s
        },
        FieldSlot {
            label: KeyLabel {
                scope: "android",
                ..s.label
            },
            ..s
        },
        FieldSlot {
            label: KeyLabel {
                epoch: 4,
                ..s.label
            },
            ..s
        },
        FieldSlot {
            record: Uuid::from_bytes([2; 16]),
            ..s
        },
        FieldSlot {
            field: "status",
            ..s
        },
        FieldSlot {
            stamp: Stamp {
                lamport: 43,
                ..s.stamp
            },
            ..s
        },
        FieldSlot {
            stamp: Stamp {
                node: node(8),
                ..s.stamp
            },
            ..s
        },
        FieldSlot {
            origin: node(8),
            ..s
        },
    ];
    for other in moved {
        assert_eq!(
            open_value(&key, &other, &sealed),
            Err(E2eError::Tampered { what: "value" }),
            "{other:?}"
        );
    }
    // Another key is named as such; a value relabelled with the other key's id does not
    // open under it either.
    let other_key = ScopeKey::generate().unwrap();
    assert_eq!(
        open_value(&other_key, &s, &sealed),
        Err(E2eError::WrongKey {
            sealed: key.id(),
            given: other_key.id()
        })
    );
    let mut relabelled = sealed.clone();
    relabelled[1..5].copy_from_slice(&other_key.id().0);
    assert_eq!(
        open_value(&other_key, &s, &relabelled),
        Err(E2eError::Tampered { what: "value" })
    );
}

#[test]
fn sealing_is_deterministic_per_write_and_differs_between_writes() {
    let key = ScopeKey::generate().unwrap();
    let s = slot();
    let once = seal_value(&key, &s, &Value::from("same")).unwrap();
    assert_eq!(seal_value(&key, &s, &Value::from("same")).unwrap(), once);
    let later = FieldSlot {
        stamp: Stamp {
            lamport: 43,
            ..s.stamp
        },
        ..s
    };
    let other = seal_value(&key, &later, &Value::from("same")).unwrap();
    assert_ne!(other[5..], once[5..]);
    assert_eq!(
        once.len(),
        blazedb_e2e::SEALED_VALUE_OVERHEAD
            + blazedb_format::encode_value(&Value::from("same")).len()
    );
}

#[test]
fn two_values_swapped_between_records_are_both_refused() {
    let key = ScopeKey::generate().unwrap();
    let a = slot();
    let b = FieldSlot {
        record: Uuid::from_bytes([2; 16]),
        ..a
    };
    let sealed_a = seal_value(&key, &a, &Value::from("a")).unwrap();
    let sealed_b = seal_value(&key, &b, &Value::from("b")).unwrap();
    assert!(open_value(&key, &a, &sealed_b).is_err());
    assert!(open_value(&key, &b, &sealed_a).is_err());
}

#[test]
fn a_scope_key_wrapped_to_a_device_opens_only_there_and_only_under_its_label() {
    for (kind, (private, public), (other_private, _)) in [
        (KeyKind::P256, p256_pair(), p256_pair()),
        (KeyKind::X25519, x25519_pair(), x25519_pair()),
    ] {
        let key = ScopeKey::generate().unwrap();
        let wrapped = wrap_key(&key, &label(), kind, &public).unwrap();
        let encoded = wrapped.encode();
        assert_eq!(encoded.len(), 7 + kind.enc_len() + 48, "{kind:?}");
        let decoded = WrappedKey::decode(&encoded).unwrap();
        assert_eq!(decoded, wrapped);
        let opened = unwrap_key(&decoded, &label(), &private).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
        // Another device, another epoch or another scope: refused.
        assert_eq!(
            unwrap_key(&decoded, &label(), &other_private).map(|_| ()),
            Err(E2eError::Tampered { what: "key" })
        );
        for relabelled in [
            KeyLabel {
                epoch: 4,
                ..label()
            },
            KeyLabel {
                scope: "android",
                ..label()
            },
            KeyLabel {
                collection: "reports",
                ..label()
            },
        ] {
            assert!(unwrap_key(&decoded, &relabelled, &private).is_err());
        }
    }
}

#[test]
fn a_wrong_public_key_is_the_callers_mistake() {
    let key = ScopeKey::generate().unwrap();
    assert!(matches!(
        wrap_key(&key, &label(), KeyKind::P256, &[4; 65]),
        Err(E2eError::InvalidKey { .. })
    ));
    assert!(matches!(
        wrap_key(&key, &label(), KeyKind::X25519, &[1; 31]),
        Err(E2eError::InvalidKey { .. })
    ));
}

#[test]
fn the_previous_key_sealed_under_the_next_opens_with_it_only() {
    let previous = ScopeKey::generate().unwrap();
    let next = ScopeKey::generate().unwrap();
    let sealed = seal_previous_key(&next, &previous, &label()).unwrap();
    assert_eq!(sealed.len(), 60);
    assert_eq!(
        open_previous_key(&next, &sealed, &label())
            .unwrap()
            .as_bytes(),
        previous.as_bytes()
    );
    assert!(open_previous_key(&previous, &sealed, &label()).is_err());
    let other = KeyLabel {
        epoch: 2,
        ..label()
    };
    assert!(open_previous_key(&next, &sealed, &other).is_err());
    assert!(open_previous_key(&next, &sealed[..59], &label()).is_err());
}

#[test]
fn malformed_bytes_get_clear_errors() {
    assert_eq!(
        SealedValue::decode(&[]).unwrap_err().to_string(),
        "malformed sealed value: it is empty"
    );
    assert!(SealedValue::decode(&[1; 40]).is_err());
    assert!(SealedValue::decode(&[2; 20]).is_err());
    assert!(SealedValue::decode(&[2; 21]).is_ok());
    assert_eq!(
        WrappedKey::decode(&[1, 0, 0x30]).unwrap_err().to_string(),
        "malformed wrapped key: unknown KEM (this build reads 0x0010 and 0x0020)"
    );
    let (_, public) = x25519_pair();
    let key = ScopeKey::generate().unwrap();
    let mut encoded = wrap_key(&key, &label(), KeyKind::X25519, &public)
        .unwrap()
        .encode();
    encoded.push(0);
    assert!(WrappedKey::decode(&encoded).is_err());
}

proptest! {
    #[test]
    fn any_value_round_trips(v in value()) {
        let key = ScopeKey::generate().unwrap();
        let sealed = seal_value(&key, &slot(), &v).unwrap();
        prop_assert_eq!(open_value(&key, &slot(), &sealed).unwrap(), v);
    }

    #[test]
    fn any_changed_byte_is_refused(v in value(), at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let key = ScopeKey::generate().unwrap();
        let mut sealed = seal_value(&key, &slot(), &v).unwrap();
        let i = at.index(sealed.len());
        sealed[i] ^= 1 << bit;
        prop_assert!(open_value(&key, &slot(), &sealed).is_err());
    }

    #[test]
    fn decoders_refuse_garbage_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let key = ScopeKey::from_bytes(&[5; 32]).unwrap();
        let _ = SealedValue::decode(&bytes);
        prop_assert!(open_value(&key, &slot(), &bytes).is_err());
        if let Ok(wrapped) = WrappedKey::decode(&bytes) {
            prop_assert_eq!(WrappedKey::decode(&wrapped.encode()).unwrap(), wrapped.clone());
            prop_assert!(unwrap_key(&wrapped, &label(), &[5; 32]).is_err());
        }
    }
}

/// The example of docs/format.md, section 18: key 32 × 0x11.
#[test]
fn the_documented_sealed_value_is_exact() {
    let key = ScopeKey::from_bytes(&[0x11; 32]).unwrap();
    let sealed = seal_value(&key, &slot(), &Value::from("hi")).unwrap();
    let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, DOCUMENTED);
    // The plaintext is the value in BlazeBinary.
    assert_eq!(
        blazedb_format::encode_value(&Value::from("hi")),
        PLAINTEXT.to_vec()
    );
}

const DOCUMENTED: &str = "02342ce08a3d439dcb776a7379d0a79b67a77e50b84a6b94bfee";
const PLAINTEXT: [u8; 5] = [0xb7, 0x11, 0x42, 0x68, 0x69];
