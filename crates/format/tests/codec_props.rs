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
    Date, DecodeError, Effect, Fields, MAGIC, MAX_DEPTH, NodeId, OpId, OpKind, Operation, Record,
    RecordState, Stamp, Uuid, VERSION, Value, decode_operation, decode_operations, decode_record,
    decode_record_state, decode_value, encode_inserted_record_state, encode_operation,
    encode_operations, encode_record, encode_record_state, encode_value, sort_key,
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
        2 => 0i64..128,
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
        1 => Just(f64::NAN),
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
        .prop_map(
            |((origin, seq, lamport, wall), kind, collection, record, fields)| {
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
            },
        )
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
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && value_eq(va, vb))
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

fn batch_eq(a: &[Operation], b: &[Operation]) -> bool {
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

fn census_batch(ops: &[Operation]) -> Census {
    let mut c = Census::default();
    ops.iter().for_each(|op| c.operation(op));
    c
}

fn census_record_state(s: &RecordState) -> Census {
    let mut c = Census::default();
    c.nodes
        .extend(s.created.iter().chain(&s.deleted).map(|st| st.node));
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
    eq: |a, b| batch_eq(a, b),
    census: |ops| census_batch(ops),
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
        TestCaseError::fail(format!(
            "{}: {e} decoding {} from {item:?}",
            codec.name,
            hex(&bytes)
        ))
    })?;
    prop_assert!(
        (codec.eq)(&decoded, item),
        "{}: {:?} decoded as {:?}",
        codec.name,
        item,
        decoded
    );
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
    let Ok(item) = (codec.decode)(input) else {
        return Ok(());
    };
    let again = (codec.encode)(&item);
    let redecoded = (codec.decode)(&again).map_err(|e| {
        TestCaseError::fail(format!(
            "{}: {e}: re-encoding {} of {} does not decode",
            codec.name,
            hex(&again),
            hex(input)
        ))
    })?;
    prop_assert!(
        (codec.eq)(&redecoded, &item),
        "{}: {:?} became {:?}",
        codec.name,
        item,
        redecoded
    );
    prop_assert_eq!(
        hex(&(codec.encode)(&redecoded)),
        hex(&again),
        "{}: not a fixpoint",
        codec.name
    );
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
        prop_assert_eq!(
            hex(&again),
            hex(input),
            "{}: accepted a non-canonical form",
            codec.name
        );
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
    let body = prop_oneof![3 => vec(any::<u8>(), 0..4), 1 => vec(any::<u8>(), 0..48)];
    (prop_oneof![4 => 1u8..=5, 1 => 0u8..=15], body).prop_map(|(kind, body)| {
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
        select(vec![
            -0.0,
            0.5,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY
        ])
        .prop_map(Value::Double),
    ];
    let near_2_53 = ((1i64 << 53) - 2..(1i64 << 53) + 3)
        .prop_flat_map(|n| prop_oneof![Just(Value::Int(n)), Just(Value::Double(n as f64))]);
    let near_i64_max = prop_oneof![
        (i64::MAX - 3..=i64::MAX).prop_map(Value::Int),
        (i64::MIN..i64::MIN + 3).prop_map(Value::Int),
        select(vec![i64::MAX as f64, -i64::MAX as f64]).prop_map(Value::Double),
    ];
    let short_text = vec(select(vec!['\0', 'a', 'b', '\u{FF}']), 0..3).prop_map(String::from_iter);
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
// A second BlazeBinary writer, written from the layout in docs/format.md, that picks among
// every form the layout can express (overlong varints, long forms of small ints, short strings
// and f32-sized doubles, unsorted or duplicate keys, any back-reference, repeated node
// literals) and notes when its choice is not the canonical one.
// ---------------------------------------------------------------------------------------------

/// Every non-canonical form the sloppy writer can take.
const NON_CANONICAL_FORMS: [&str; 11] = [
    "overlong varint",
    "short string in the long form",
    "small int in the long form",
    "f32-sized double in 8 bytes",
    "NaN in 4 bytes",
    "keys out of order",
    "a key repeated",
    "unknown flag bit",
    "a delete with fields",
    "unknown operation kind",
    "even node reference",
];

struct Sloppy<'c> {
    out: Vec<u8>,
    choices: &'c [u8],
    next: usize,
    /// The one non-canonical form this writer may take (one at a time, so that each is seen
    /// alone by the decoder).
    focus: Option<&'static str>,
    strings: Vec<String>,
    nodes: Vec<NodeId>,
    /// The non-canonical choices taken; the decoder must reject the bytes iff this is not empty.
    non_canonical: Vec<&'static str>,
}

impl<'c> Sloppy<'c> {
    fn new(kind: u8, choices: &'c [u8], focus: Option<&'static str>) -> Self {
        Sloppy {
            out: vec![MAGIC, (VERSION << 4) | kind],
            choices,
            next: 0,
            focus,
            strings: Vec::new(),
            nodes: Vec::new(),
            non_canonical: Vec::new(),
        }
    }

    fn choice(&mut self) -> u8 {
        let c = self
            .choices
            .get(self.next % self.choices.len().max(1))
            .copied()
            .unwrap_or(0);
        self.next += 1;
        c
    }

    /// Takes the non-canonical form `what` half the time if it is the one in focus.
    fn sloppy(&mut self, what: &'static str) -> bool {
        let take = self.focus == Some(what) && self.choice().is_multiple_of(2);
        if take {
            self.non_canonical.push(what);
        }
        take
    }

    fn varint(&mut self, mut v: u64) {
        let overlong = varint_bytes(v) < 10 && self.sloppy("overlong varint");
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        if overlong {
            self.out.push((v as u8) | 0x80);
            self.out.push(0);
        } else {
            self.out.push(v as u8);
        }
    }

    fn signed(&mut self, n: i64) {
        self.varint(((n << 1) ^ (n >> 63)) as u64);
    }

    /// Index of an earlier table entry equal to `s`, picked at random among them.
    fn earlier_string(&mut self, s: &str) -> Option<u64> {
        let matches: Vec<usize> = (0..self.strings.len())
            .filter(|&i| self.strings[i] == s)
            .collect();
        if matches.is_empty() {
            return None;
        }
        let pick = usize::from(self.choice()) % matches.len();
        Some(matches[pick] as u64)
    }

    fn key(&mut self, s: &str) {
        if self.choice().is_multiple_of(2)
            && let Some(index) = self.earlier_string(s)
        {
            self.varint((index << 1) | 1);
            return;
        }
        self.varint((s.len() as u64) << 1);
        self.out.extend_from_slice(s.as_bytes());
        self.strings.push(s.to_owned());
    }

    fn string(&mut self, s: &str) {
        if self.choice().is_multiple_of(2)
            && let Some(index) = self.earlier_string(s)
        {
            self.out.push(0x0C);
            self.varint(index);
            return;
        }
        if s.len() >= 64 || self.sloppy("short string in the long form") {
            self.out.push(0x0B);
            self.varint(s.len() as u64);
        } else {
            self.out.push(0x40 + s.len() as u8);
        }
        self.out.extend_from_slice(s.as_bytes());
        self.strings.push(s.to_owned());
    }

    fn node(&mut self, node: NodeId) {
        let earlier: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i] == node)
            .collect();
        if !earlier.is_empty() && !self.choice().is_multiple_of(4) {
            let index = earlier[usize::from(self.choice()) % earlier.len()] as u64;
            if index > 0 && self.sloppy("even node reference") {
                self.varint(index << 1);
            } else {
                self.varint((index << 1) | 1);
            }
        } else {
            // A node written out again is allowed (it takes a new table slot).
            self.varint(0);
            self.out.extend_from_slice(node.as_bytes());
            self.nodes.push(node);
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.out.push(0x00),
            Value::Bool(b) => self.out.push(if *b { 0x02 } else { 0x01 }),
            Value::Int(n)
                if (0..=127).contains(n) && !self.sloppy("small int in the long form") =>
            {
                self.out.push(0x80 + *n as u8);
            }
            Value::Int(n) => {
                self.out.push(0x03);
                self.signed(*n);
            }
            Value::Double(d) => {
                let fits = !d.is_nan() && f64::from(*d as f32).to_bits() == d.to_bits();
                let four_bytes = if fits {
                    !self.sloppy("f32-sized double in 8 bytes")
                } else {
                    d.is_nan() && self.sloppy("NaN in 4 bytes")
                };
                if four_bytes {
                    self.out.push(0x05);
                    self.out.extend_from_slice(&(*d as f32).to_le_bytes());
                } else {
                    self.out.push(0x04);
                    self.out.extend_from_slice(&d.to_le_bytes());
                }
            }
            Value::String(s) => self.string(s),
            Value::Uuid(u) => {
                self.out.push(0x06);
                self.out.extend_from_slice(u.as_bytes());
            }
            Value::Date(d) => {
                self.out.push(0x07);
                self.signed(d.unix_millis());
            }
            Value::Bytes(b) => {
                self.out.push(0x08);
                self.varint(b.len() as u64);
                self.out.extend_from_slice(b);
            }
            Value::Array(items) => {
                self.out.push(0x09);
                self.varint(items.len() as u64);
                items.iter().for_each(|i| self.value(i));
            }
            Value::Map(map) => {
                self.out.push(0x0A);
                self.fields(map);
            }
        }
    }

    /// Field entries, possibly with two neighbours swapped or one entry repeated.
    fn entries<T>(&mut self, entries: &[(&String, T)], mut write: impl FnMut(&mut Self, &T)) {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        if entries.len() >= 2 && self.sloppy("keys out of order") {
            let i = usize::from(self.choice()) % (entries.len() - 1);
            order.swap(i, i + 1);
        }
        if !entries.is_empty() && self.sloppy("a key repeated") {
            let i = usize::from(self.choice()) % entries.len();
            order.insert(i, i);
        }
        self.varint(order.len() as u64);
        for i in order {
            let (k, item) = &entries[i];
            self.key(k);
            write(self, item);
        }
    }

    fn fields(&mut self, fields: &Fields) {
        let entries: Vec<(&String, &Value)> = fields.iter().collect();
        self.entries(&entries, |w, v| w.value(v));
    }

    fn stamp(&mut self, stamp: Stamp) {
        self.varint(stamp.lamport);
        self.node(stamp.node);
    }

    fn operation(&mut self, op: &Operation) {
        self.node(op.id.origin);
        self.varint(op.id.seq);
        self.varint(op.lamport);
        self.signed(op.wall.unix_millis());
        let code = match op.kind {
            OpKind::Insert => 1,
            OpKind::Update => 2,
            OpKind::Delete => 3,
        };
        if self.sloppy("unknown operation kind") {
            let bad = [0, 4, 0x80, 0xFF][usize::from(self.choice() % 4)];
            self.out.push(bad);
        } else {
            self.out.push(code);
        }
        self.key(&op.collection);
        self.out.extend_from_slice(op.record.as_bytes());
        if op.kind == OpKind::Delete && self.sloppy("a delete with fields") {
            self.fields(&BTreeMap::from([("x".to_owned(), Value::Null)]));
        } else {
            self.fields(&op.fields);
        }
    }

    fn record_state(&mut self, s: &RecordState) {
        let mut flags = u8::from(s.created.is_some()) | (u8::from(s.deleted.is_some()) << 1);
        if self.sloppy("unknown flag bit") {
            flags |= 0x04 << (self.choice() % 6);
        }
        self.out.push(flags);
        s.created
            .into_iter()
            .chain(s.deleted)
            .for_each(|st| self.stamp(st));
        let entries: Vec<(&String, &blazedb_format::FieldState)> = s.fields.iter().collect();
        self.entries(&entries, |w, f| {
            w.value(&f.value);
            w.stamp(f.stamp);
        });
    }
}

fn varint_bytes(v: u64) -> usize {
    (1..10).find(|&n| v >> (7 * n) == 0).unwrap_or(10)
}

/// An item of any top-level kind.
#[derive(Debug, Clone)]
enum Item {
    Value(Value),
    Record(Record),
    Operation(Operation),
    Batch(Vec<Operation>),
    RecordState(RecordState),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        value().prop_map(Item::Value),
        record().prop_map(Item::Record),
        operation().prop_map(Item::Operation),
        batch().prop_map(Item::Batch),
        record_state().prop_map(Item::RecordState),
    ]
}

/// Writes `item` with the sloppy writer; returns the bytes and the non-canonical choices.
fn write_sloppily(
    item: &Item,
    choices: &[u8],
    focus: Option<&'static str>,
) -> (Vec<u8>, Vec<&'static str>) {
    let mut w;
    match item {
        Item::Value(v) => {
            w = Sloppy::new(1, choices, focus);
            w.value(v);
        }
        Item::Record(r) => {
            w = Sloppy::new(2, choices, focus);
            w.out.extend_from_slice(r.id.as_bytes());
            w.fields(&r.fields);
        }
        Item::Operation(op) => {
            w = Sloppy::new(3, choices, focus);
            w.operation(op);
        }
        Item::Batch(ops) => {
            w = Sloppy::new(4, choices, focus);
            w.varint(ops.len() as u64);
            ops.iter().for_each(|op| w.operation(op));
        }
        Item::RecordState(s) => {
            w = Sloppy::new(5, choices, focus);
            w.record_state(s);
        }
    }
    (w.out, w.non_canonical)
}

/// Decodes `bytes` as `item`'s kind: `Ok(true)` when it decodes to `item`.
fn decodes_to(item: &Item, bytes: &[u8]) -> Result<bool, DecodeError> {
    Ok(match item {
        Item::Value(v) => value_eq(&decode_value(bytes)?, v),
        Item::Record(r) => record_eq(&decode_record(bytes)?, r),
        Item::Operation(op) => operation_eq(&decode_operation(bytes)?, op),
        Item::Batch(ops) => batch_eq(&decode_operations(bytes)?, ops),
        Item::RecordState(s) => record_state_eq(&decode_record_state(bytes)?, s),
    })
}

/// The exact comparison of an i64 and an f64 (NaN above everything), without `total_cmp`.
fn int_vs_double(n: i64, d: f64) -> Ordering {
    if d.is_nan() || d >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if d < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    // |d| <= 2^63 here, so its integer part converts to i128 exactly.
    let whole = d.trunc();
    i128::from(n)
        .cmp(&(whole as i128))
        .then_with(|| 0.0f64.partial_cmp(&(d - whole)).unwrap_or(Ordering::Equal))
}

// ---------------------------------------------------------------------------------------------
// Merge helpers
// ---------------------------------------------------------------------------------------------

fn merge_node(n: usize) -> NodeId {
    NodeId(Uuid::from_bytes([0x10 + n as u8; 16]))
}

/// Operations on one record from 2 or 3 nodes, each with a unique (lamport, node).
fn merge_history() -> impl Strategy<Value = Vec<Operation>> {
    let field_names = select(vec![
        "a".to_owned(),
        "b".to_owned(),
        "c".to_owned(),
        "d".to_owned(),
    ]);
    let small_value = prop_oneof![
        (0i64..4).prop_map(Value::Int),
        Just(Value::Null),
        Just(Value::Double(f64::NAN)),
    ];
    let raw_op = (
        0u64..10,
        op_kind(),
        btree_map(field_names, small_value, 0..3),
    );
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

/// Three overlapping parts of one history (each operation goes to any of them, or none), as
/// three replicas may have seen it. Stamps stay unique across the parts.
fn history_parts() -> impl Strategy<Value = [Vec<Operation>; 3]> {
    merge_history()
        .prop_flat_map(|history| {
            let n = history.len();
            (Just(history), vec(0u8..8, n))
        })
        .prop_map(|(history, masks)| {
            let part = |bit: u8| -> Vec<Operation> {
                history
                    .iter()
                    .zip(&masks)
                    .filter(|(_, m)| *m & (1 << bit) != 0)
                    .map(|(op, _)| op.clone())
                    .collect()
            };
            [part(0), part(1), part(2)]
        })
}

fn joined(a: &RecordState, b: &RecordState) -> RecordState {
    let mut out = a.clone();
    out.join(b);
    out
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_inserted_state_encodes_the_same_without_being_built(f in fields(), s in stamp()) {
        prop_assert_eq!(
            encode_inserted_record_state(&f, s),
            encode_record_state(&RecordState::inserted(f.clone(), s))
        );
    }

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
        let reencodings = [
            decode_value(&valid).map(|v| encode_value(&v)),
            decode_record(&valid).map(|r| encode_record(&r)),
            decode_operation(&valid).map(|op| encode_operation(&op)),
            decode_operations(&valid).map(|ops| encode_operations(&ops)),
            decode_record_state(&valid).map(|s| encode_record_state(&s)),
        ];
        for again in reencodings.into_iter().flatten() {
            prop_assert_eq!(hex(&again), hex(&valid));
        }
    }

    #[test]
    fn sort_keys_order_exactly_like_total_cmp(values in vec(comparable(), 2..10)) {
        let keys: Vec<Vec<u8>> = values.iter().map(sort_key).collect();
        for (a, ka) in values.iter().zip(&keys) {
            for (b, kb) in values.iter().zip(&keys) {
                prop_assert_eq!(ka.cmp(kb), a.total_cmp(b), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn total_cmp_is_reflexive_and_antisymmetric(values in vec(comparable(), 2..10)) {
        for a in &values {
            prop_assert_eq!(a.total_cmp(a), Ordering::Equal, "{}", a);
            for b in &values {
                prop_assert_eq!(a.total_cmp(b), b.total_cmp(a).reverse(), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn total_cmp_is_transitive(values in vec(comparable(), 3..8)) {
        for a in &values {
            for b in &values {
                for c in &values {
                    let (ab, bc, ac) = (a.total_cmp(b), b.total_cmp(c), a.total_cmp(c));
                    if ab != Ordering::Greater && bc != Ordering::Greater {
                        // a <= b <= c: a <= c, strictly when either step is strict.
                        let expected = if ab == Ordering::Equal && bc == Ordering::Equal {
                            Ordering::Equal
                        } else {
                            Ordering::Less
                        };
                        prop_assert_eq!(ac, expected, "{} {} {}", a, b, c);
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_compare_by_exact_mathematical_value(
        (n, d) in int().prop_flat_map(|n| {
            let near = n as f64;
            (Just(n), prop_oneof![
                double(),
                Just(near),
                // The neighbours of the double nearest to n.
                (-2i64..=2).prop_map(move |step| {
                    f64::from_bits((near.to_bits() as i64).wrapping_add(step) as u64)
                }),
            ])
        }),
        m in int(),
    ) {
        prop_assert_eq!(Value::Int(n).total_cmp(&Value::Int(m)), n.cmp(&m));
        prop_assert_eq!(Value::Int(n).total_cmp(&Value::Double(d)), int_vs_double(n, d), "{} vs {:?}", n, d);
        prop_assert_eq!(Value::Double(d).total_cmp(&Value::Int(n)), int_vs_double(n, d).reverse());
        let e = m as f64;
        let expected = match (d.is_nan(), e.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => d.partial_cmp(&e).unwrap(),
        };
        prop_assert_eq!(Value::Double(d).total_cmp(&Value::Double(e)), expected);
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
    fn joining_states_is_the_same_as_applying_both_histories(
        [first, second, _] in history_parts(),
    ) {
        let mut state = merge_all(&first);
        let before = state.visible_fields();
        let effect = state.join(&merge_all(&second));
        let both: Vec<Operation> = first.iter().chain(&second).cloned().collect();
        let expected = merge_all(&both);
        prop_assert!(record_state_eq(&state, &expected), "{:?} vs {:?}", state, expected);
        // The effect describes the visible change, as `apply` does (values compared bit for bit).
        let after = state.visible_fields();
        let changed = match (&before, &after) {
            (Some(a), Some(b)) => !fields_eq(a, b),
            _ => false,
        };
        let expected_effect = match (before.is_some(), after.is_some()) {
            (false, true) => Effect::Created,
            (true, false) => Effect::Deleted,
            (true, true) if changed => Effect::Updated,
            _ => Effect::None,
        };
        prop_assert_eq!(effect, expected_effect);
    }

    #[test]
    fn join_is_commutative(parts in history_parts()) {
        let [a, b, _] = parts.map(|p| merge_all(&p));
        prop_assert!(record_state_eq(&joined(&a, &b), &joined(&b, &a)));
    }

    #[test]
    fn join_is_associative(parts in history_parts()) {
        let [a, b, c] = parts.map(|p| merge_all(&p));
        let left = joined(&joined(&a, &b), &c);
        let right = joined(&a, &joined(&b, &c));
        prop_assert!(record_state_eq(&left, &right), "{:?} vs {:?}", left, right);
    }

    #[test]
    fn join_is_idempotent(parts in history_parts()) {
        let [a, b, _] = parts.map(|p| merge_all(&p));
        let mut again = a.clone();
        prop_assert_eq!(again.join(&a), Effect::None);
        prop_assert!(record_state_eq(&again, &a));
        // Joining what is already joined in changes nothing either.
        let mut ab = joined(&a, &b);
        let once = ab.clone();
        prop_assert_eq!(ab.join(&b), Effect::None);
        prop_assert!(record_state_eq(&ab, &once));
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

proptest! {
    // Each case exercises at most one kind of non-canonical form, so this runs more cases.
    #![proptest_config(ProptestConfig::with_cases(cases() * 4))]

    #[test]
    fn non_canonical_encodings_are_rejected_and_canonical_ones_decode(
        item in item(),
        choices in vec(any::<u8>(), 1..64),
        focus in proptest::option::weighted(0.8, select(NON_CANONICAL_FORMS.to_vec())),
    ) {
        let (bytes, non_canonical) = write_sloppily(&item, &choices, focus);
        match decodes_to(&item, &bytes) {
            Ok(same) => {
                prop_assert!(non_canonical.is_empty(), "accepted {:?}: {}", non_canonical, hex(&bytes));
                prop_assert!(same, "{} decodes to something else than {:?}", hex(&bytes), item);
            }
            Err(e) => prop_assert!(!non_canonical.is_empty(), "{e}: rejected {}", hex(&bytes)),
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
    assert!(matches!(
        decode_value(&too_deep),
        Err(DecodeError::TooDeep { .. })
    ));
}

#[test]
fn a_huge_nesting_claim_is_rejected_without_recursing_far() {
    // 100 000 array headers, each claiming one item: the decoder must stop at MAX_DEPTH.
    let mut bytes = vec![MAGIC, (VERSION << 4) | 1];
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[0x09, 0x01]);
    }
    bytes.push(0x00);
    assert!(matches!(
        decode_value(&bytes),
        Err(DecodeError::TooDeep { .. })
    ));
}

#[test]
fn reencoding_can_be_a_byte_longer_when_the_input_interns_past_64_strings() {
    // The example of docs/format.md §13 (keep the two in step). 64 maps `{"": null}` with the
    // empty key written once and then referenced (references are as short as the literal, so
    // the input keeps its string table at one entry), then `{"abc": null}` twice. The encoder
    // writes every empty key literally, so "abc" lands at index 64 and its reference needs two
    // bytes instead of one.
    let mut input = vec![MAGIC, (VERSION << 4) | 1, 0x09, 66, 0x0A, 0x01, 0x00, 0x00];
    for _ in 0..63 {
        input.extend_from_slice(&[0x0A, 0x01, 0x01, 0x00]);
    }
    input.extend_from_slice(&[0x0A, 0x01, 0x06, b'a', b'b', b'c', 0x00]);
    input.extend_from_slice(&[0x0A, 0x01, 0x03, 0x00]);
    let value = decode_value(&input).unwrap();
    let again = encode_value(&value);
    assert_eq!(decode_value(&again).unwrap(), value);
    assert_eq!((input.len(), again.len()), (271, 272));
}

#[test]
fn back_references_that_would_decode_into_gigabytes_are_refused() {
    // One 1,000-byte string, then 300,000 two-byte references to it: 600 kB that would
    // decode into 300 MB of copies (a 16 MiB message, into about 8 GB).
    let n = 300_000u64;
    let mut bytes = vec![MAGIC, (VERSION << 4) | 1, 0x09];
    let mut v = n;
    while v >= 0x80 {
        bytes.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    bytes.push(v as u8);
    bytes.extend_from_slice(&[0x0b, 0xe8, 0x07]); // a string of 1,000 bytes
    bytes.extend(std::iter::repeat_n(b'x', 1000));
    for _ in 1..n {
        bytes.extend_from_slice(&[0x0c, 0x00]); // a reference to string 0
    }
    assert!(bytes.len() < 700_000);
    let mut d = blazedb_format::Decoder::new(&bytes, blazedb_format::Kind::Value).unwrap();
    d.limit_weight(blazedb_format::MAX_DECODED_WEIGHT);
    let err = d.value().unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("memory"), "{err}");
    // The same shape within the limit decodes, and weighs what it holds.
    let few = 1_000u64;
    let mut small = vec![
        MAGIC,
        (VERSION << 4) | 1,
        0x09,
        0xe8,
        0x07,
        0x0b,
        0xe8,
        0x07,
    ];
    small.extend(std::iter::repeat_n(b'x', 1000));
    for _ in 1..few {
        small.extend_from_slice(&[0x0c, 0x00]);
    }
    let mut d = blazedb_format::Decoder::new(&small, blazedb_format::Kind::Value).unwrap();
    let Value::Array(items) = d.value().unwrap() else {
        panic!("an array")
    };
    assert_eq!(items.len(), 1000);
    assert!(d.weight() >= 1000 * 1000, "{}", d.weight());
}

// ---------------------------------------------------------------------------------------------
// The compact record state of the `Records` message (docs/protocol.md)
// ---------------------------------------------------------------------------------------------

fn compact(state: &RecordState) -> Vec<u8> {
    let mut e = blazedb_format::Encoder::new(blazedb_format::Kind::RecordState);
    e.record_state_compact(state);
    e.finish()
}

fn decode_compact(bytes: &[u8]) -> Result<RecordState, DecodeError> {
    let mut d = blazedb_format::Decoder::new(bytes, blazedb_format::Kind::RecordState)?;
    let state = d.record_state_compact()?;
    d.finish()?;
    Ok(state)
}

#[test]
fn a_compact_stamp_marker_other_than_0_with_a_created_stamp_or_1_is_refused() {
    let stamp = Stamp {
        lamport: 9,
        node: NodeId(Uuid::from_bytes([0x11; 16])),
    };
    let state = RecordState::inserted([("a".to_owned(), Value::Int(1))].into(), stamp);
    let good = compact(&state);
    // The register's marker is the last byte: 0 (its stamp is the insert's).
    assert_eq!(good.last(), Some(&0));
    let mut two = good.clone();
    *two.last_mut().unwrap() = 2;
    assert!(matches!(
        decode_compact(&two),
        Err(DecodeError::Invalid { what, .. }) if what.contains("marker")
    ));
    // Marker 0 without a created stamp: flags 0, no stamp, 1 register "a" = 1, marker 0.
    let no_created = compact(&RecordState {
        created: None,
        ..state.clone()
    });
    // Its register ends with marker 1 and the stamp (Lamport 9: 1 byte; node, first use:
    // 17 bytes); marker 0 in their place has no created stamp to stand for.
    let mut zero = no_created;
    zero.truncate(zero.len() - 19);
    zero.push(0);
    assert!(matches!(
        decode_compact(&zero),
        Err(DecodeError::Invalid { what, .. }) if what.contains("marker")
    ));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_compact_record_state_round_trips(state in record_state()) {
        let decoded = decode_compact(&compact(&state)).unwrap();
        prop_assert!(record_state_eq(&decoded, &state), "{:?} != {:?}", decoded, state);
    }
}
