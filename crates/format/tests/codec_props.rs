//! Property tests of the BlazeBinary codec, the sort keys and the merge rules.
//!
//! Every property runs 256 cases; set `BLAZEDB_LONG=1` to run 10 000.
//!
//! What "canonical" means here (see `check_reencoding`): for any bytes `b` that decode to `x`,
//!
//! * `encode(x)` decodes to `x` again and re-encodes to exactly the same bytes (a fixpoint);
//! * when `x` repeats no string and no node id, `encode(x) == b` byte for byte. Every choice
//!   the decoder leaves open is about interning: a repeated string may be written literally or
//!   as a back-reference (to any earlier copy), and a repeated node id may be written literally
//!   again. Without repeats there is no such choice, and every other form is checked;
//! * when `x` holds fewer than 64 strings, `encode(x)` is not longer than `b`. The bound is
//!   needed: the encoder interns greedily (a back-reference only when it is strictly shorter;
//!   an empty string, for instance, is always written literally and takes a table slot), so an
//!   input that spends back-references where the encoder writes literals keeps its table
//!   smaller, and past 64 (keys) or 128 (string values) entries its later references can be a
//!   byte shorter than the encoder's. Below 64 strings every table index fits in one varint
//!   byte, the encoder's per-string choice is the shortest possible, and its node table never
//!   holds duplicates, so its output cannot be longer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Debug;

use blazedb_format::{
    Date, DecodeError, Fields, MAGIC, MAX_DEPTH, NodeId, OpId, OpKind, Operation, Record,
    RecordState, Stamp, Uuid, VERSION, Value, decode_operation, decode_operations, decode_record,
    decode_record_state, decode_value, encode_operation, encode_operations, encode_record,
    encode_record_state, encode_value, sort_key,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use proptest::test_runner::TestCaseError;

/// 256 cases normally, 10 000 with `BLAZEDB_LONG=1`.
fn cases() -> u32 {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        10_000
    } else {
        256
    }
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(cases())
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn int() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![
        3 => any::<i64>(),
        3 => -300i64..300,
        2 => select(vec![
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            i64::MAX - 1,
            -1,
            0,
            127,
            128,
            -64,
            -65,
            1 << 53,
            (1 << 53) + 1,
            -(1 << 53) - 1,
            1 << 62,
            i64::MAX - 1023, // 2^63 - 1024: rounds up to 2^63 as a double
        ]),
    ]
}

fn double() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        3 => proptest::num::f64::ANY,
        // Every bit pattern: NaN payloads, signalling NaNs, subnormals.
        2 => any::<u64>().prop_map(f64::from_bits),
        // Values that fit in an f32 (the 4-byte form).
        2 => any::<f32>().prop_map(f64::from),
        1 => (-1000i64..1000).prop_map(|n| n as f64),
        2 => select(vec![
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN
            f64::from_bits(0x7FF8_0000_DEAD_BEEF), // quiet NaN with a payload
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            5e-324,
            0.1,
            1.5,
            9_007_199_254_740_992.0,
            9_223_372_036_854_775_808.0,
            f64::from(f32::MAX),
            f64::from(f32::MIN_POSITIVE) / 2.0,
        ]),
    ]
}

fn character() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        6 => proptest::char::range('a', 'e'),
        1 => Just('\0'),
        2 => any::<char>(),
        1 => select(vec!['é', 'ß', '日', '本', '😀', '\u{7F}', '\u{FFFF}', '\u{10FFFF}', '\u{FEFF}']),
    ]
}

fn text(max_chars: usize) -> impl Strategy<Value = String> + Clone {
    vec(character(), 0..max_chars).prop_map(String::from_iter)
}

/// Strings from a small pool repeat often (exercising back-references); others are random,
/// with NUL and non-ASCII characters, around the 63/64-byte short-string boundary and longer.
fn string() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => select(vec![
            String::new(),
            "a".to_owned(),
            "b".to_owned(),
            "title".to_owned(),
            "status".to_owned(),
            "open".to_owned(),
            "a\0b".to_owned(),
            "日本語".to_owned(),
            "x".repeat(63),
            "y".repeat(64),
        ]),
        4 => text(10),
        1 => text(90),
        1 => (60usize..=66).prop_map(|n| "z".repeat(n)),
    ]
}

fn uuid() -> impl Strategy<Value = Uuid> + Clone {
    prop_oneof![
        3 => any::<[u8; 16]>().prop_map(Uuid::from_bytes),
        1 => select(vec![Uuid::nil(), Uuid::max()]),
    ]
}

fn leaf() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => int().prop_map(Value::Int),
        3 => double().prop_map(Value::Double),
        3 => string().prop_map(Value::String),
        1 => uuid().prop_map(Value::Uuid),
        1 => int().prop_map(|n| Value::Date(Date::from_unix_millis(n))),
        1 => vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
    ]
}

/// Any value, nested at most 6 levels deep (well under [`MAX_DEPTH`]).
fn value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                btree_map(string(), inner, 0..6).prop_map(Value::Map),
            ]
        })
        .boxed()
}

fn fields() -> impl Strategy<Value = Fields> {
    btree_map(string(), value(), 0..7)
}

fn record() -> impl Strategy<Value = Record> {
    (uuid(), fields()).prop_map(|(id, fields)| Record { id, fields })
}

/// Node ids from a pool of three (so node back-references appear) or random.
fn node() -> impl Strategy<Value = NodeId> + Clone {
    prop_oneof![
        3 => (1u8..=3).prop_map(|n| NodeId(Uuid::from_bytes([n; 16]))),
        1 => uuid().prop_map(NodeId),
    ]
}

fn counter() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![3 => 0u64..300, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn stamp() -> impl Strategy<Value = Stamp> + Clone {
    (counter(), node()).prop_map(|(lamport, node)| Stamp { lamport, node })
}

fn op_kind() -> impl Strategy<Value = OpKind> + Clone {
    select(vec![OpKind::Insert, OpKind::Update, OpKind::Delete])
}

fn operation() -> impl Strategy<Value = Operation> {
    let collection = prop_oneof![
        3 => select(vec!["bugs".to_owned(), "users".to_owned(), "title".to_owned(), String::new()]),
        1 => string(),
    ];
    (
        (node(), counter(), counter(), int()),
        op_kind(),
        collection,
        uuid(),
        fields(),
    )
        .prop_map(|((origin, seq, lamport, wall), kind, collection, record, fields)| {
            Operation {
                id: OpId { origin, seq },
                lamport,
                wall: Date::from_unix_millis(wall),
                kind,
                collection,
                record,
                // A delete carries no fields.
                fields: if kind == OpKind::Delete {
                    Fields::new()
                } else {
                    fields
                },
            }
        })
}

fn batch() -> impl Strategy<Value = Vec<Operation>> {
    vec(operation(), 0..6)
}

fn record_state() -> impl Strategy<Value = RecordState> {
    (
        proptest::option::of(stamp()),
        proptest::option::of(stamp()),
        btree_map(string(), (value(), stamp()), 0..6),
    )
        .prop_map(|(created, deleted, fields)| RecordState {
            created,
            deleted,
            fields: fields
                .into_iter()
                .map(|(k, (value, stamp))| (k, blazedb_format::FieldState { value, stamp }))
                .collect(),
        })
}

// ---------------------------------------------------------------------------------------------
// Equality that treats a double as its bits (NaN equals the same NaN; -0.0 differs from 0.0)
// ---------------------------------------------------------------------------------------------

fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| value_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => fields_eq(x, y),
        _ => a == b,
    }
}

fn fields_eq(a: &Fields, b: &Fields) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && value_eq(va, vb))
}

fn record_eq(a: &Record, b: &Record) -> bool {
    a.id == b.id && fields_eq(&a.fields, &b.fields)
}

fn operation_eq(a: &Operation, b: &Operation) -> bool {
    a.id == b.id
        && a.lamport == b.lamport
        && a.wall == b.wall
        && a.kind == b.kind
        && a.collection == b.collection
        && a.record == b.record
        && fields_eq(&a.fields, &b.fields)
}

fn batch_eq(a: &Vec<Operation>, b: &Vec<Operation>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| operation_eq(x, y))
}

fn record_state_eq(a: &RecordState, b: &RecordState) -> bool {
    a.created == b.created
        && a.deleted == b.deleted
        && a.fields.len() == b.fields.len()
        && a.fields.iter().zip(&b.fields).all(|((ka, fa), (kb, fb))| {
            ka == kb && fa.stamp == fb.stamp && value_eq(&fa.value, &fb.value)
        })
}

// ---------------------------------------------------------------------------------------------
// Census: every string and node id an item holds, to know which encoding choices it leaves open
// ---------------------------------------------------------------------------------------------

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

    fn has_repeats(&self) -> bool {
        fn repeats<T: Ord + Clone>(items: &[T]) -> bool {
            let mut sorted = items.to_vec();
            sorted.sort();
            sorted.windows(2).any(|w| w[0] == w[1])
        }
        repeats(&self.strings) || repeats(&self.nodes)
    }
}

fn census_value(v: &Value) -> Census {
    let mut c = Census::default();
    c.value(v);
    c
}

fn census_record(r: &Record) -> Census {
    let mut c = Census::default();
    c.fields(&r.fields);
    c
}

fn census_operation(op: &Operation) -> Census {
    let mut c = Census::default();
    c.operation(op);
    c
}

fn census_batch(ops: &Vec<Operation>) -> Census {
    let mut c = Census::default();
    ops.iter().for_each(|op| c.operation(op));
    c
}

fn census_record_state(s: &RecordState) -> Census {
    let mut c = Census::default();
    c.nodes.extend(s.created.iter().chain(&s.deleted).map(|st| st.node));
    for (k, f) in &s.fields {
        c.strings.push(k.clone());
        c.value(&f.value);
        c.nodes.push(f.stamp.node);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// One top-level item type with its codec functions.
struct Codec<T> {
    name: &'static str,
    encode: fn(&T) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
    eq: fn(&T, &T) -> bool,
    census: fn(&T) -> Census,
}

const VALUE: Codec<Value> = Codec {
    name: "value",
    encode: encode_value,
    decode: decode_value,
    eq: value_eq,
    census: census_value,
};
const RECORD: Codec<Record> = Codec {
    name: "record",
    encode: encode_record,
    decode: decode_record,
    eq: record_eq,
    census: census_record,
};
const OPERATION: Codec<Operation> = Codec {
    name: "operation",
    encode: encode_operation,
    decode: decode_operation,
    eq: operation_eq,
    census: census_operation,
};
const BATCH: Codec<Vec<Operation>> = Codec {
    name: "operation batch",
    encode: |ops| encode_operations(ops),
    decode: decode_operations,
    eq: batch_eq,
    census: census_batch,
};
const RECORD_STATE: Codec<RecordState> = Codec {
    name: "record state",
    encode: encode_record_state,
    decode: decode_record_state,
    eq: record_state_eq,
    census: census_record_state,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `decode(encode(item)) == item`, and decoding a proper prefix or an extension fails.
fn check_round_trip<T: Debug>(codec: &Codec<T>, item: &T) -> Result<(), TestCaseError> {
    let bytes = (codec.encode)(item);
    prop_assert_eq!(bytes[0], MAGIC);
    prop_assert_eq!(bytes[1] >> 4, VERSION);
    let decoded = (codec.decode)(&bytes).map_err(|e| {
        TestCaseError::fail(format!("{}: {e} decoding {} from {item:?}", codec.name, hex(&bytes)))
    })?;
    prop_assert!((codec.eq)(&decoded, item), "{}: {:?} decoded as {:?}", codec.name, item, decoded);
    // One item, one encoding: a cut-off copy or one with a byte appended is not an item.
    prop_assert!((codec.decode)(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert!((codec.decode)(&longer).is_err());
    Ok(())
}

/// If `input` decodes, its re-encoding decodes to the same item and is canonical (see the
/// module comment for exactly what is checked).
fn check_reencoding<T: Debug>(codec: &Codec<T>, input: &[u8]) -> Result<(), TestCaseError> {
    static TRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static OK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static EXACT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let t = TRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if t % 5000 == 4999 { eprintln!("tried {t} ok {:?} exact {:?}", OK, EXACT); }
    let Ok(item) = (codec.decode)(input) else {
        return Ok(());
    };
    OK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !(codec.census)(&item).has_repeats() { EXACT.fetch_add(1, std::sync::atomic::Ordering::Relaxed); }
    let again = (codec.encode)(&item);
    let redecoded = (codec.decode)(&again).map_err(|e| {
        TestCaseError::fail(format!(
            "{}: {e}: re-encoding {} of {} does not decode",
            codec.name,
            hex(&again),
            hex(input)
        ))
    })?;
    prop_assert!((codec.eq)(&redecoded, &item), "{}: {:?} became {:?}", codec.name, item, redecoded);
    prop_assert_eq!(hex(&(codec.encode)(&redecoded)), hex(&again), "{}: not a fixpoint", codec.name);
    let census = (codec.census)(&item);
    if census.strings.len() < 64 {
        prop_assert!(
            again.len() <= input.len(),
            "{}: re-encoding {} is longer than input {}",
            codec.name,
            hex(&again),
            hex(input)
        );
    }
    if !census.has_repeats() {
        prop_assert_eq!(hex(&again), hex(input), "{}: accepted a non-canonical form", codec.name);
    }
    Ok(())
}

/// Feeds `input` to every decoder. A panic fails the test (proptest catches it); every item
/// that decodes must pass [`check_reencoding`].
fn decode_with_every_decoder(input: &[u8]) -> Result<(), TestCaseError> {
    check_reencoding(&VALUE, input)?;
    check_reencoding(&RECORD, input)?;
    check_reencoding(&OPERATION, input)?;
    check_reencoding(&BATCH, input)?;
    check_reencoding(&RECORD_STATE, input)
}

/// A valid encoding of any item type.
fn valid_encoding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        value().prop_map(|v| encode_value(&v)),
        record().prop_map(|r| encode_record(&r)),
        operation().prop_map(|op| encode_operation(&op)),
        batch().prop_map(|ops| encode_operations(&ops)),
        record_state().prop_map(|s| encode_record_state(&s)),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    Extend(Vec<u8>),
    Duplicate(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, mask)| Mutation::Flip(i, mask)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..8).prop_map(Mutation::Extend),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

/// Applies mutations, never touching the two header bytes unless `header` is true.
fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation], header: bool) -> Vec<u8> {
    let keep = if header { 0 } else { 2 };
    for m in mutations {
        let body = bytes.len().saturating_sub(keep);
        // An index into the body, or the position just past its end.
        let at = |i: &Index| keep + i.index(body + 1);
        match m {
            Mutation::Flip(i, mask) if body > 0 => bytes[keep + i.index(body)] ^= mask,
            Mutation::Set(i, b) if body > 0 => bytes[keep + i.index(body)] = *b,
            Mutation::Remove(i) if body > 0 => {
                bytes.remove(keep + i.index(body));
            }
            Mutation::Insert(i, b) => bytes.insert(at(i), *b),
            Mutation::Truncate(i) => bytes.truncate(at(i)),
            Mutation::Extend(tail) => bytes.extend_from_slice(tail),
            Mutation::Duplicate(a, b) => {
                let (x, y) = (at(a), at(b));
                let (start, end) = (x.min(y), x.max(y));
                let copy = bytes[start..end].to_vec();
                let mut rest = bytes.split_off(end);
                bytes.extend_from_slice(&copy);
                bytes.append(&mut rest);
            }
            _ => {}
        }
    }
    bytes
}

/// Bytes behind a valid header for any kind (random bytes rarely start with one).
fn headed_bytes() -> impl Strategy<Value = Vec<u8>> {
    (0u8..=7, vec(any::<u8>(), 0..48)).prop_map(|(kind, body)| {
        let mut bytes = vec![MAGIC, (VERSION << 4) | kind];
        bytes.extend(body);
        bytes
    })
}

/// Values for order tests: mostly a few classes, so that pairs often share one.
fn comparable() -> impl Strategy<Value = Value> {
    let small_number = prop_oneof![
        (-3i64..3).prop_map(Value::Int),
        (-3i64..3).prop_map(|n| Value::Double(n as f64)),
        select(vec![-0.0, 0.5, -0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
            .prop_map(Value::Double),
    ];
    let near_2_53 = ((1i64 << 53) - 2..(1i64 << 53) + 3)
        .prop_flat_map(|n| prop_oneof![Just(Value::Int(n)), Just(Value::Double(n as f64))]);
    let near_i64_max = prop_oneof![
        (i64::MAX - 3..=i64::MAX).prop_map(Value::Int),
        (i64::MIN..i64::MIN + 3).prop_map(Value::Int),
        select(vec![9.223_372_036_854_775_807e18, -9.223_372_036_854_775_807e18])
            .prop_map(Value::Double),
    ];
    let short_text =
        vec(select(vec!['\0', 'a', 'b', '\u{FF}']), 0..3).prop_map(|c| String::from_iter(c));
    let small_leaf = prop_oneof![
        3 => small_number.clone(),
        2 => short_text.clone().prop_map(Value::String),
        1 => vec(select(vec![0u8, 1, 0xFF]), 0..3).prop_map(Value::Bytes),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => (-2i64..2).prop_map(|n| Value::Date(Date::from_unix_millis(n))),
    ];
    let small_nested = small_leaf.prop_recursive(3, 12, 3, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            btree_map(short_text.clone(), inner, 0..3).prop_map(Value::Map),
        ]
    });
    prop_oneof![
        4 => small_nested,
        2 => small_number,
        1 => near_2_53,
        1 => near_i64_max,
        2 => int().prop_map(Value::Int),
        2 => double().prop_map(Value::Double),
        2 => value(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Merge helpers
// ---------------------------------------------------------------------------------------------

fn merge_node(n: usize) -> NodeId {
    NodeId(Uuid::from_bytes([0x10 + n as u8; 16]))
}

/// Operations on one record from 2 or 3 nodes, each with a unique (lamport, node).
fn merge_history() -> impl Strategy<Value = Vec<Operation>> {
    let field_names = select(vec!["a".to_owned(), "b".to_owned(), "c".to_owned(), "d".to_owned()]);
    let small_value = prop_oneof![
        (0i64..4).prop_map(Value::Int),
        Just(Value::Null),
        Just(Value::Double(f64::NAN)),
    ];
    let raw_op = (0u64..10, op_kind(), btree_map(field_names, small_value, 0..3));
    (2usize..=3)
        .prop_flat_map(move |nodes| vec((0..nodes, raw_op.clone()), 1..14))
        .prop_map(|raw| {
            let mut seen = std::collections::BTreeSet::new();
            let mut ops = Vec::new();
            for (n, (lamport, kind, fields)) in raw {
                if !seen.insert((lamport, n)) {
                    continue;
                }
                ops.push(Operation {
                    id: OpId {
                        origin: merge_node(n),
                        seq: ops.len() as u64 + 1,
                    },
                    lamport,
                    wall: Date::from_unix_millis(0),
                    kind,
                    collection: "bugs".to_owned(),
                    record: Uuid::nil(),
                    fields: if kind == OpKind::Delete {
                        Fields::new()
                    } else {
                        fields
                    },
                });
            }
            ops
        })
}

/// The history, with some operations repeated, in a random order.
fn delivery(all: Vec<Operation>) -> impl Strategy<Value = Vec<Operation>> {
    let len = all.len();
    subsequence(all.clone(), 0..=len).prop_flat_map(move |duplicates| {
        let mut ops = all.clone();
        ops.extend(duplicates);
        Just(ops).prop_shuffle()
    })
}

fn merge_all(ops: &[Operation]) -> RecordState {
    let mut state = RecordState::default();
    for op in ops {
        state.apply(op);
    }
    state
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_value_survives_a_round_trip(v in value()) {
        check_round_trip(&VALUE, &v)?;
    }

    #[test]
    fn every_record_survives_a_round_trip(r in record()) {
        check_round_trip(&RECORD, &r)?;
    }

    #[test]
    fn every_operation_survives_a_round_trip(op in operation()) {
        check_round_trip(&OPERATION, &op)?;
    }

    #[test]
    fn every_operation_batch_survives_a_round_trip(ops in batch()) {
        check_round_trip(&BATCH, &ops)?;
    }

    #[test]
    fn every_record_state_survives_a_round_trip(s in record_state()) {
        check_round_trip(&RECORD_STATE, &s)?;
    }

    #[test]
    fn equal_items_encode_to_equal_bytes_and_back(
        v in value(), ops in batch(), s in record_state(),
    ) {
        // Encoding is a function of the item alone: a decoded copy encodes identically.
        let copy = decode_value(&encode_value(&v)).unwrap();
        prop_assert_eq!(encode_value(&copy), encode_value(&v));
        let copy = decode_operations(&encode_operations(&ops)).unwrap();
        prop_assert_eq!(encode_operations(&copy), encode_operations(&ops));
        let copy = decode_record_state(&encode_record_state(&s)).unwrap();
        prop_assert_eq!(encode_record_state(&copy), encode_record_state(&s));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in vec(any::<u8>(), 0..256)) {
        decode_with_every_decoder(&bytes)?;
    }

    #[test]
    fn bytes_behind_a_valid_header_never_panic_the_decoder(bytes in headed_bytes()) {
        decode_with_every_decoder(&bytes)?;
    }

    #[test]
    fn mutated_encodings_never_panic_the_decoder_and_reencode_canonically(
        valid in valid_encoding(),
        mutations in vec(mutation(), 1..4),
        header in proptest::bool::weighted(0.1),
    ) {
        let bytes = mutate(valid, &mutations, header);
        decode_with_every_decoder(&bytes)?;
    }

    #[test]
    fn valid_encodings_are_canonical(valid in valid_encoding()) {
        // Whatever decodes re-encodes to the same bytes (the encoder's own output has all
        // interning choices made the encoder's way, so this is exact).
        for codec_result in [
            decode_value(&valid).map(|v| encode_value(&v)),
            decode_record(&valid).map(|r| encode_record(&r)),
            decode_operation(&valid).map(|op| encode_operation(&op)),
            decode_operations(&valid).map(|ops| encode_operations(&ops)),
            decode_record_state(&valid).map(|s| encode_record_state(&s)),
        ] {
            if let Ok(again) = codec_result {
                prop_assert_eq!(hex(&again), hex(&valid));
            }
        }
    }

    #[test]
    fn sort_keys_order_exactly_like_total_cmp(a in comparable(), b in comparable()) {
        let by_key = sort_key(&a).cmp(&sort_key(&b));
        prop_assert_eq!(by_key, a.total_cmp(&b), "{} vs {}", a, b);
        prop_assert_eq!(sort_key(&a) == sort_key(&b), a.total_eq(&b));
    }

    #[test]
    fn total_cmp_is_reflexive_and_antisymmetric(a in comparable(), b in comparable()) {
        prop_assert_eq!(a.total_cmp(&a), Ordering::Equal, "{}", a);
        prop_assert_eq!(a.total_cmp(&b), b.total_cmp(&a).reverse(), "{} vs {}", a, b);
    }

    #[test]
    fn total_cmp_is_transitive(a in comparable(), b in comparable(), c in comparable()) {
        let mut sorted = [a, b, c];
        sorted.sort_by(Value::total_cmp);
        let [x, y, z] = &sorted;
        // After sorting, x <= y <= z must imply x <= z; and equal neighbours must agree.
        prop_assert_ne!(x.total_cmp(z), Ordering::Greater, "{} {} {}", x, y, z);
        if x.total_eq(y) && y.total_eq(z) {
            prop_assert!(x.total_eq(z), "{} {} {}", x, y, z);
        }
        if x.total_cmp(y) == Ordering::Less || y.total_cmp(z) == Ordering::Less {
            prop_assert_eq!(x.total_cmp(z), Ordering::Less, "{} {} {}", x, y, z);
        }
    }

    #[test]
    fn replicas_that_receive_the_same_operations_in_any_order_converge(
        (first, second) in merge_history()
            .prop_flat_map(|history| (delivery(history.clone()), delivery(history))),
    ) {
        let a = merge_all(&first);
        let b = merge_all(&second);
        prop_assert_eq!(hex(&encode_record_state(&a)), hex(&encode_record_state(&b)));
        // Applying everything again changes nothing (idempotent replay).
        let mut replayed = a.clone();
        for op in &second {
            replayed.apply(op);
        }
        prop_assert_eq!(encode_record_state(&replayed), encode_record_state(&a));
    }

    #[test]
    fn merged_state_matches_the_documented_rules(history in merge_history()) {
        let state = merge_all(&history);
        let newest = |kind: OpKind| history.iter().filter(|o| o.kind == kind).map(Operation::stamp).max();
        let created = newest(OpKind::Insert);
        let deleted = newest(OpKind::Delete);
        prop_assert_eq!(state.created, created);
        prop_assert_eq!(state.deleted, deleted);
        prop_assert_eq!(state.is_visible(), created > deleted);
        if state.is_visible() {
            // Visible fields: the newest write of each field at or after the newest insert.
            let mut expected: BTreeMap<String, (Stamp, Value)> = BTreeMap::new();
            for op in &history {
                if Some(op.stamp()) < created {
                    continue;
                }
                for (k, v) in &op.fields {
                    if expected.get(k).is_none_or(|(s, _)| *s < op.stamp()) {
                        expected.insert(k.clone(), (op.stamp(), v.clone()));
                    }
                }
            }
            let expected: Fields = expected.into_iter().map(|(k, (_, v))| (k, v)).collect();
            let visible = state.visible_fields().unwrap();
            prop_assert!(fields_eq(&visible, &expected), "{:?} vs {:?}", visible, expected);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases the strategies stay away from
// ---------------------------------------------------------------------------------------------

fn nested(depth: usize) -> Value {
    let mut v = Value::Null;
    for i in 0..depth {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            Value::Map(BTreeMap::from([("k".to_owned(), v)]))
        };
    }
    v
}

#[test]
fn nesting_up_to_max_depth_decodes_and_deeper_is_rejected() {
    let deepest = nested(MAX_DEPTH);
    assert_eq!(decode_value(&encode_value(&deepest)).unwrap(), deepest);
    let too_deep = encode_value(&nested(MAX_DEPTH + 1));
    assert!(matches!(decode_value(&too_deep), Err(DecodeError::TooDeep { .. })));
}

#[test]
fn a_huge_nesting_claim_is_rejected_without_recursing_far() {
    // 100 000 array headers, each claiming one item: the decoder must stop at MAX_DEPTH.
    let mut bytes = vec![MAGIC, (VERSION << 4) | 1];
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[0x09, 0x01]);
    }
    bytes.push(0x00);
    assert!(matches!(decode_value(&bytes), Err(DecodeError::TooDeep { .. })));
}
