//! Feeds arbitrary bytes to the end-to-end decoders: `SealedValue::decode`,
//! `WrappedKey::decode`, `open_value`, `unwrap_key`, `open_previous_key` and `fields_of_scope`
//! must never panic
//! and never accept bytes that were not sealed with the key (a fixed key here, so nothing
//! the fuzzer makes can be authentic); a wrapped key that decodes re-encodes to the same
//! bytes.
#![no_main]

use blazedb_e2e::{
    FieldSlot, KeyLabel, ScopeKey, SealedValue, WrappedKey, fields_of_scope, open_previous_key,
    open_value, scope_of, unwrap_key,
};
use blazedb_format::{NodeId, Stamp, Uuid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ScopeKey::from_bytes(&[5; 32]).expect("32 bytes");
    let node = NodeId(Uuid::from_bytes([9; 16]));
    let label = KeyLabel {
        database: "bugs",
        collection: "bugs",
        scope: "ios",
        epoch: 1,
    };
    let slot = FieldSlot {
        label,
        record: Uuid::from_bytes([1; 16]),
        field: "title",
        stamp: Stamp { lamport: 1, node },
        origin: node,
    };
    let _ = SealedValue::decode(data);
    assert!(open_value(&key, &slot, data).is_err());
    assert!(open_previous_key(&key, data, &label).is_err());
    // Scopes come from the server in key messages: any text parses or is refused.
    if let Ok(scope) = std::str::from_utf8(data) {
        let routing: std::collections::BTreeSet<String> =
            ["area".to_owned(), "teamId".to_owned()].into();
        if let Some(fields) = fields_of_scope(&routing, scope) {
            let again = scope_of(&routing, |f| fields.get(f));
            assert_eq!(fields_of_scope(&routing, &again), Some(fields));
        }
    }
    if let Ok(wrapped) = WrappedKey::decode(data) {
        assert_eq!(wrapped.encode(), data);
        let _ = unwrap_key(&wrapped, &label, &[5; 32]);
    }
});
