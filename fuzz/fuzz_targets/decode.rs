//! Fuzzes every BlazeBinary decoder. The first input byte picks the decoder (modulo 5: value,
//! record, operation, operation batch, record state); the rest is the item's bytes.
//!
//! Besides "never panic", every item that decodes must re-encode canonically:
//! * the re-encoding decodes, and re-encodes to the same bytes (compared as bytes, so NaN
//!   payloads count and NaN != NaN does not get in the way);
//! * if the item repeats no string and no node id, the re-encoding equals the input byte for
//!   byte (the only choices the decoder leaves open are about interning repeats);
//! * if the item holds fewer than 64 strings, the re-encoding is not longer than the input.
//!
//! These are the properties of `crates/format/tests/codec_props.rs`, whose module comment
//! explains the last two.

#![no_main]

use blazedb_format::{
    DecodeError, Fields, NodeId, Operation, RecordState, Value, decode_operation,
    decode_operations, decode_record, decode_record_state, decode_value, encode_operation,
    encode_operations, encode_record, encode_record_state, encode_value,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => check(input, decode_value, encode_value, |c, v| c.value(v)),
        1 => check(input, decode_record, encode_record, |c, r| c.fields(&r.fields)),
        2 => check(input, decode_operation, encode_operation, Census::operation),
        3 => check(input, decode_operations, |ops| encode_operations(ops), |c, ops| {
            ops.iter().for_each(|op| c.operation(op))
        }),
        _ => check(input, decode_record_state, encode_record_state, Census::record_state),
    }
});

fn check<T>(
    input: &[u8],
    decode: fn(&[u8]) -> Result<T, DecodeError>,
    encode: fn(&T) -> Vec<u8>,
    count: fn(&mut Census, &T),
) {
    let Ok(item) = decode(input) else {
        return;
    };
    let bytes = encode(&item);
    let again = match decode(&bytes) {
        Ok(again) => again,
        Err(e) => panic!("re-encoding does not decode: {e}"),
    };
    assert!(encode(&again) == bytes, "re-encoding is not a fixpoint");
    let mut census = Census::default();
    count(&mut census, &item);
    if census.strings.len() < 64 {
        assert!(bytes.len() <= input.len(), "re-encoding is longer than the input");
    }
    if !census.has_repeats() {
        assert!(bytes == input, "a non-canonical input was accepted");
    }
}

/// Every string and node id an item holds.
#[derive(Default)]
struct Census {
    strings: Vec<String>,
    nodes: Vec<NodeId>,
}

impl Census {
    fn value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.strings.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| self.value(i)),
            Value::Map(map) => self.fields(map),
            _ => {}
        }
    }

    fn fields(&mut self, fields: &Fields) {
        for (k, v) in fields {
            self.strings.push(k.clone());
            self.value(v);
        }
    }

    fn operation(&mut self, op: &Operation) {
        self.nodes.push(op.id.origin);
        self.strings.push(op.collection.clone());
        self.fields(&op.fields);
    }

    fn record_state(&mut self, s: &RecordState) {
        self.nodes.extend(s.created.iter().chain(&s.deleted).map(|st| st.node));
        for (k, f) in &s.fields {
            self.strings.push(k.clone());
            self.value(&f.value);
            self.nodes.push(f.stamp.node);
        }
    }

    fn has_repeats(&self) -> bool {
        let mut strings = self.strings.clone();
        strings.sort();
        let mut nodes = self.nodes.clone();
        nodes.sort();
        strings.windows(2).any(|w| w[0] == w[1]) || nodes.windows(2).any(|w| w[0] == w[1])
    }
}
