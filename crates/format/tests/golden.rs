//! Golden vectors: fixed items and their exact BlazeBinary bytes, in `tests/golden/*.hex`.
//!
//! The bytes were produced by the encoder once and then checked by hand against the layout in
//! `docs/format.md` (the bug record byte by byte, as in the worked example there; the negative
//! int, both doubles and the string back-references too). They are the format's compatibility
//! contract: if one of these tests fails, the encoding changed, and data written by earlier
//! builds may no longer read. Change a vector only together with the format version.
//!
//! `.hex` files hold hex digits; whitespace is ignored and `#` starts a comment to the end of
//! the line. The fuzz corpus is seeded from them (see `fuzz/README.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use blazedb_format::{
    Date, DecodeError, Fields, NodeId, OpId, OpKind, Operation, Record, RecordState, Uuid, Value,
    decode_operation, decode_operations, decode_record, decode_record_state, decode_value,
    encode_operation, encode_operations, encode_record, encode_record_state, encode_value, fields,
};

macro_rules! golden {
    ($name:literal) => {
        parse_hex(include_str!(concat!("golden/", $name, ".hex")))
    };
}

fn parse_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `encode(item) == golden` and `decode(golden)` re-encodes to `golden` and equals `item`
/// (compared through `same`, which sees a double as its bits).
fn check<T: Debug>(
    item: &T,
    golden: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    same: impl Fn(&T, &T) -> bool,
) {
    assert_eq!(
        hex(&encode(item)),
        hex(golden),
        "encoding of {item:?} changed"
    );
    let decoded = decode(golden).unwrap();
    assert!(
        same(&decoded, item),
        "{} decodes to {decoded:?}, expected {item:?}",
        hex(golden)
    );
}

fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| value_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && value_eq(va, vb))
        }
        _ => a == b,
    }
}

fn check_value(v: &Value, golden: &[u8]) {
    check(v, golden, encode_value, decode_value, value_eq);
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

/// The bug record used across the docs and tests.
fn bug() -> Record {
    Record::new(
        uuid("6f1c2a4e-8d3b-4c5a-9e7f-1a2b3c4d5e6f"),
        fields! {
            "title" => "Crash when opening settings on iPad",
            "status" => "open",
            "teamId" => uuid("0b3c5d7e-1f2a-4b6c-8d9e-0f1a2b3c4d5e"),
            "assignee" => uuid("9a8b7c6d-5e4f-4a3b-2c1d-0e0f1a2b3c4d"),
        },
    )
}

fn node_a() -> NodeId {
    NodeId(uuid("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"))
}

fn node_b() -> NodeId {
    NodeId(uuid("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"))
}

fn op(origin: NodeId, seq: u64, lamport: u64, kind: OpKind, fields: Fields) -> Operation {
    Operation {
        id: OpId { origin, seq },
        lamport,
        wall: Date::from_unix_millis(1_717_171_717_171 + lamport as i64),
        kind,
        collection: "bugs".to_owned(),
        record: bug().id,
        fields,
    }
}

/// Insert of the bug on node A, then B closes it, then A deletes it.
fn bug_history() -> Vec<Operation> {
    vec![
        op(node_a(), 1, 1, OpKind::Insert, bug().fields),
        op(
            node_b(),
            1,
            2,
            OpKind::Update,
            fields! { "status" => "closed" },
        ),
        op(node_a(), 2, 3, OpKind::Delete, Fields::new()),
    ]
}

#[test]
fn a_negative_int_has_its_golden_bytes() {
    check_value(&Value::Int(-1_234_567), &golden!("value_negative_int"));
}

#[test]
fn a_double_that_fits_in_f32_uses_four_bytes() {
    check_value(&Value::Double(1.5), &golden!("value_f32_double"));
}

#[test]
fn a_double_that_needs_f64_uses_eight_bytes() {
    check_value(&Value::Double(0.1), &golden!("value_f64_double"));
}

#[test]
fn a_string_of_64_bytes_or_more_uses_the_long_form() {
    let s = "BlazeDB keeps every document encrypted at rest and in flight, always.";
    assert!(s.len() >= 64);
    check_value(&Value::from(s), &golden!("value_long_string"));
}

#[test]
fn repeated_keys_and_strings_become_back_references() {
    let open = map(&[("status", Value::from("open"))]);
    let v = Value::Array(vec![open.clone(), open, Value::from("open")]);
    check_value(&v, &golden!("value_string_backref"));
}

#[test]
fn a_nested_map_has_its_golden_bytes() {
    let v = map(&[
        ("name", Value::from("Ada")),
        (
            "tags",
            Value::Array(vec![Value::from("a"), Value::from("b")]),
        ),
        (
            "address",
            map(&[("city", Value::from("Zürich")), ("zip", Value::Int(8001))]),
        ),
        ("empty", Value::Map(BTreeMap::new())),
    ]);
    check_value(&v, &golden!("value_nested_map"));
}

#[test]
fn every_scalar_kind_has_its_golden_bytes() {
    let v = Value::Array(vec![
        Value::Null,
        Value::Bool(false),
        Value::Bool(true),
        Value::Int(0),
        Value::Int(127),
        Value::Int(128),
        Value::Int(-1),
        Value::Int(i64::MIN),
        Value::Date(Date::from_unix_millis(1_717_171_717_171)),
        Value::Date(Date::from_unix_millis(-1)),
        Value::Bytes(vec![0x00, 0x01, 0xFE, 0xFF]),
        Value::Uuid(uuid("0b3c5d7e-1f2a-4b6c-8d9e-0f1a2b3c4d5e")),
        Value::Double(-0.0),
        Value::Double(f64::INFINITY),
        Value::Double(f64::NAN),
        Value::from(""),
        Value::from("a\0b"),
        Value::from("日本"),
    ]);
    check_value(&v, &golden!("value_scalars"));
}

#[test]
fn the_bug_record_has_its_golden_bytes() {
    check(
        &bug(),
        &golden!("record_bug"),
        encode_record,
        decode_record,
        |a, b| a == b,
    );
}

#[test]
fn the_insert_of_the_bug_has_its_golden_bytes() {
    let insert = &bug_history()[0];
    check(
        insert,
        &golden!("operation_insert_bug"),
        encode_operation,
        decode_operation,
        |a, b| a == b,
    );
}

#[test]
fn a_batch_of_three_operations_shares_names_and_nodes() {
    check(
        &bug_history(),
        &golden!("batch_bug_history"),
        |ops| encode_operations(ops),
        decode_operations,
        |a, b| a == b,
    );
}

#[test]
fn the_record_state_after_insert_and_update_has_its_golden_bytes() {
    let mut state = RecordState::default();
    for op in &bug_history()[..2] {
        state.apply(op);
    }
    assert_eq!(state.visible_field("status"), Some(&Value::from("closed")));
    check(
        &state,
        &golden!("record_state_bug"),
        encode_record_state,
        decode_record_state,
        |a, b| a == b,
    );
}

#[test]
fn the_record_state_after_the_delete_keeps_only_the_stamps() {
    let mut state = RecordState::default();
    for op in &bug_history() {
        state.apply(op);
    }
    assert!(!state.is_visible());
    check(
        &state,
        &golden!("record_state_deleted"),
        encode_record_state,
        decode_record_state,
        |a, b| a == b,
    );
}
