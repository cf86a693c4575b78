//! BlazeBinary: the compact, versioned, canonical encoding of values, records, operations and
//! record states. The byte layout is specified in `docs/format.md`; keep the two in step.
//!
//! Every top-level item starts with a two-byte header: the magic byte `0xB7` and a byte whose
//! high nibble is the format version and low nibble the [`Kind`] of item. Strings used as map
//! keys, field names and collection names, as well as string values, go through a per-item
//! string table: a string that appeared before is written as a back-reference when that is
//! shorter, so an array of maps or a batch of operations does not repeat field names. Node ids
//! are interned the same way.
//!
//! Decoding never panics, never allocates more than the input could describe, limits nesting to
//! [`MAX_DEPTH`], rejects trailing bytes and rejects non-canonical forms (overlong varints, a
//! small int written long, unsorted or duplicate keys, …), so one value has one encoding.

use std::collections::HashMap;

use uuid::Uuid;

use crate::ids::{NodeId, OpId, Stamp};
use crate::merge::{FieldState, RecordState};
use crate::operation::{OpKind, Operation};
use crate::value::{Date, Fields, Record, Value};

/// First byte of every BlazeBinary item.
pub const MAGIC: u8 = 0xB7;
/// The format version written by this code (high nibble of the second header byte).
pub const VERSION: u8 = 1;
/// Deepest nesting of arrays and maps a decoder accepts.
pub const MAX_DEPTH: usize = 64;

/// The weight limit for items from peers (256 MiB; see [`Decoder::limit_weight`]). Decoded
/// values are much larger than their encoding: a one-byte `Null` becomes a 32-byte
/// [`Value`], and a two-byte back-reference a copy of a string of any length. Without a limit
/// a 16 MiB message of back-references to a 1 MiB string would decode into terabytes.
pub const MAX_DECODED_WEIGHT: usize = 256 << 20;

/// What a map entry costs beyond its key and value (the tree's node, shared among its
/// entries): counted by [`Decoder::weight`].
const MAP_ENTRY_WEIGHT: usize = 16;

/// What a top-level item holds (low nibble of the second header byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    Value,
    Record,
    Operation,
    OperationBatch,
    RecordState,
    /// A message of the sync protocol (its body is defined by the protocol layer).
    Message,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Value => 1,
            Kind::Record => 2,
            Kind::Operation => 3,
            Kind::OperationBatch => 4,
            Kind::RecordState => 5,
            Kind::Message => 6,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Value,
            2 => Kind::Record,
            3 => Kind::Operation,
            4 => Kind::OperationBatch,
            5 => Kind::RecordState,
            6 => Kind::Message,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded. The input is the peer's or the file's fault, never ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input ends early at byte {offset}")]
    UnexpectedEnd { offset: usize },
    #[error("{count} unexpected bytes after the end of the item")]
    TrailingBytes { count: usize },
    #[error("not BlazeBinary: first byte is {found:#04x}, expected {MAGIC:#04x}")]
    BadMagic { found: u8 },
    #[error("unsupported BlazeBinary version {found} (this build reads version {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("expected a {expected:?} item, found kind code {found}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("unknown tag {tag:#04x} at byte {offset}")]
    UnknownTag { tag: u8, offset: usize },
    #[error("varint at byte {offset} is too long or overflows 64 bits")]
    BadVarint { offset: usize },
    #[error("non-canonical encoding at byte {offset}: {what}")]
    NonCanonical { offset: usize, what: &'static str },
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("nesting deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep { offset: usize },
    #[error("length {length} at byte {offset} exceeds the remaining input")]
    LengthTooLarge { length: u64, offset: usize },
    #[error("back-reference {index} at byte {offset} points past the table")]
    BadReference { index: u64, offset: usize },
    #[error("invalid item at byte {offset}: {what}")]
    Invalid { offset: usize, what: &'static str },
    #[error("the item decodes to more than {limit} bytes of memory (at byte {offset})")]
    TooLarge { limit: usize, offset: usize },
}

// Value tags; see docs/format.md.
const TAG_NULL: u8 = 0x00;
const TAG_FALSE: u8 = 0x01;
const TAG_TRUE: u8 = 0x02;
const TAG_INT: u8 = 0x03;
const TAG_F64: u8 = 0x04;
const TAG_F32: u8 = 0x05;
const TAG_UUID: u8 = 0x06;
const TAG_DATE: u8 = 0x07;
const TAG_BYTES: u8 = 0x08;
const TAG_ARRAY: u8 = 0x09;
const TAG_MAP: u8 = 0x0A;
const TAG_STRING: u8 = 0x0B;
const TAG_STRING_REF: u8 = 0x0C;
const TAG_SHORT_STRING: u8 = 0x40; // 0x40..=0x7F: string of length tag - 0x40
const SHORT_STRING_MAX: usize = 63;
const TAG_SMALL_INT: u8 = 0x80; // 0x80..=0xFF: Int(tag - 0x80)

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A f64 that survives a round trip through f32 bit for bit (NaN never does, by rule).
fn fits_f32(d: f64) -> bool {
    !d.is_nan() && f64::from(d as f32).to_bits() == d.to_bits()
}

/// The encoder's string table: first occurrence of each string and its index. Most items hold
/// a handful of strings, so it searches a short list and only builds a hash map when the list
/// grows long.
#[derive(Default)]
struct StringTable<'a> {
    list: Vec<(&'a str, u64)>,
    map: HashMap<&'a str, u64>,
}

impl<'a> StringTable<'a> {
    const LINEAR_MAX: usize = 16;

    fn get(&self, s: &str) -> Option<u64> {
        if self.map.is_empty() {
            self.list.iter().find(|(x, _)| *x == s).map(|(_, i)| *i)
        } else {
            self.map.get(s).copied()
        }
    }

    /// Remembers the first index of `s`.
    fn insert(&mut self, s: &'a str, index: u64) {
        if !self.map.is_empty() {
            self.map.entry(s).or_insert(index);
        } else if self.get(s).is_none() {
            self.list.push((s, index));
            if self.list.len() > Self::LINEAR_MAX {
                self.map = self.list.drain(..).collect();
            }
        }
    }
}

/// Writes BlazeBinary. One encoder writes one top-level item and shares its string and node
/// tables across everything in it.
pub struct Encoder<'a> {
    out: Vec<u8>,
    strings: StringTable<'a>,
    string_count: u64,
    nodes: Vec<NodeId>,
}

impl<'a> Encoder<'a> {
    /// Starts an item of this kind (writes the header).
    pub fn new(kind: Kind) -> Self {
        Self::with_capacity(kind, 64)
    }

    /// Like [`Encoder::new`] with room for `capacity` bytes.
    pub fn with_capacity(kind: Kind, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(MAGIC);
        out.push((VERSION << 4) | kind.code());
        Encoder {
            out,
            // One allocation for the strings of a typical item, not three as the list grows.
            strings: StringTable {
                list: Vec::with_capacity(StringTable::LINEAR_MAX),
                map: HashMap::new(),
            },
            string_count: 0,
            nodes: Vec::new(),
        }
    }

    /// The finished bytes.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    pub fn byte(&mut self, b: u8) {
        self.out.push(b);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    pub fn signed(&mut self, v: i64) {
        self.varint(zigzag(v));
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Length-prefixed raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.raw(bytes);
    }

    pub fn uuid(&mut self, id: &Uuid) {
        self.raw(id.as_bytes());
    }

    fn remember(&mut self, s: &'a str) {
        let index = self.string_count;
        self.string_count += 1;
        self.strings.insert(s, index);
    }

    /// A key string (field name, map key, collection name): `len << 1` then the bytes, or
    /// `index << 1 | 1` referring to an earlier string.
    pub fn key(&mut self, s: &'a str) {
        if let Some(index) = self.strings.get(s) {
            let reference = (index << 1) | 1;
            let literal = (s.len() as u64) << 1;
            if varint_len(reference) < varint_len(literal) + s.len() {
                self.varint(reference);
                return;
            }
        }
        self.varint((s.len() as u64) << 1);
        self.raw(s.as_bytes());
        self.remember(s);
    }

    /// A string value.
    pub fn string(&mut self, s: &'a str) {
        let literal_len = if s.len() <= SHORT_STRING_MAX {
            1 + s.len()
        } else {
            1 + varint_len(s.len() as u64) + s.len()
        };
        if let Some(index) = self.strings.get(s)
            && 1 + varint_len(index) < literal_len
        {
            self.byte(TAG_STRING_REF);
            self.varint(index);
            return;
        }
        if s.len() <= SHORT_STRING_MAX {
            self.byte(TAG_SHORT_STRING + s.len() as u8);
        } else {
            self.byte(TAG_STRING);
            self.varint(s.len() as u64);
        }
        self.raw(s.as_bytes());
        self.remember(s);
    }

    /// A node id: `0` then 16 bytes the first time, `index << 1 | 1` afterwards.
    pub fn node(&mut self, node: NodeId) {
        // Few distinct nodes appear in one item: a linear search beats hashing.
        if let Some(index) = self.nodes.iter().position(|n| *n == node) {
            self.varint(((index as u64) << 1) | 1);
        } else {
            self.nodes.push(node);
            self.varint(0);
            self.raw(node.as_bytes());
        }
    }

    pub fn value(&mut self, v: &'a Value) {
        match v {
            Value::Null => self.byte(TAG_NULL),
            Value::Bool(false) => self.byte(TAG_FALSE),
            Value::Bool(true) => self.byte(TAG_TRUE),
            Value::Int(n) if (0..=127).contains(n) => self.byte(TAG_SMALL_INT + *n as u8),
            Value::Int(n) => {
                self.byte(TAG_INT);
                self.signed(*n);
            }
            Value::Double(d) if fits_f32(*d) => {
                self.byte(TAG_F32);
                self.raw(&(*d as f32).to_le_bytes());
            }
            Value::Double(d) => {
                self.byte(TAG_F64);
                self.raw(&d.to_le_bytes());
            }
            Value::String(s) => self.string(s),
            Value::Uuid(u) => {
                self.byte(TAG_UUID);
                self.uuid(u);
            }
            Value::Date(d) => {
                self.byte(TAG_DATE);
                self.signed(d.unix_millis());
            }
            Value::Bytes(b) => {
                self.byte(TAG_BYTES);
                self.bytes(b);
            }
            Value::Array(items) => {
                self.byte(TAG_ARRAY);
                self.varint(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::Map(map) => {
                self.byte(TAG_MAP);
                self.fields(map);
            }
        }
    }

    /// A field map: count, then key and value pairs in ascending key order.
    pub fn fields(&mut self, fields: &'a Fields) {
        self.varint(fields.len() as u64);
        for (k, v) in fields {
            self.key(k);
            self.value(v);
        }
    }

    pub fn record(&mut self, record: &'a Record) {
        self.uuid(&record.id);
        self.fields(&record.fields);
    }

    pub fn stamp(&mut self, stamp: Stamp) {
        self.varint(stamp.lamport);
        self.node(stamp.node);
    }

    pub fn operation(&mut self, op: &'a Operation) {
        self.node(op.id.origin);
        self.varint(op.id.seq);
        self.varint(op.lamport);
        self.signed(op.wall.unix_millis());
        self.byte(op.kind.code());
        self.key(&op.collection);
        self.uuid(&op.record);
        self.fields(&op.fields);
    }

    pub fn record_state(&mut self, state: &'a RecordState) {
        self.write_record_state(state, false);
    }

    /// A record state for the wire, where most fields carry the stamp of the record's
    /// insert: like [`Encoder::record_state`], except that each field's stamp is one byte 0
    /// when it equals `created`, or 1 and the stamp.
    pub fn record_state_compact(&mut self, state: &'a RecordState) {
        self.write_record_state(state, true);
    }

    fn write_record_state(&mut self, state: &'a RecordState, compact: bool) {
        let flags = u8::from(state.created.is_some()) | (u8::from(state.deleted.is_some()) << 1);
        self.byte(flags);
        if let Some(s) = state.created {
            self.stamp(s);
        }
        if let Some(s) = state.deleted {
            self.stamp(s);
        }
        self.varint(state.fields.len() as u64);
        for (k, f) in &state.fields {
            self.key(k);
            self.value(&f.value);
            if !compact {
                self.stamp(f.stamp);
            } else if Some(f.stamp) == state.created {
                self.byte(0);
            } else {
                self.byte(1);
                self.stamp(f.stamp);
            }
        }
    }

    /// The state [`RecordState::inserted`] would build from `fields` and `stamp`, written
    /// without building it (no copy of the fields).
    pub fn inserted_record_state(&mut self, fields: &'a Fields, stamp: Stamp) {
        self.byte(1);
        self.stamp(stamp);
        self.varint(fields.len() as u64);
        for (k, v) in fields {
            self.key(k);
            self.value(v);
            self.stamp(stamp);
        }
    }
}

/// Reads BlazeBinary produced by [`Encoder`].
pub struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    strings: Vec<&'a str>,
    nodes: Vec<NodeId>,
    depth: usize,
    /// Memory the decoded values take so far (see [`Decoder::weight`]).
    weight: usize,
    /// The most `weight` may reach (see [`Decoder::limit_weight`]).
    weight_limit: usize,
}

type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> Decoder<'a> {
    /// Checks the header and starts reading an item of the expected kind.
    pub fn new(input: &'a [u8], expected: Kind) -> Result<Self> {
        let mut d = Decoder {
            input,
            pos: 0,
            strings: Vec::new(),
            nodes: Vec::new(),
            depth: 0,
            weight: 0,
            weight_limit: usize::MAX,
        };
        let magic = d.byte()?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let vk = d.byte()?;
        if vk >> 4 != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: vk >> 4 });
        }
        if Kind::from_code(vk & 0x0F) != Some(expected) {
            return Err(DecodeError::WrongKind {
                expected,
                found: vk & 0x0F,
            });
        }
        Ok(d)
    }

    /// Ends the item: everything must have been read.
    pub fn finish(self) -> Result<()> {
        let count = self.input.len() - self.pos;
        if count > 0 {
            return Err(DecodeError::TrailingBytes { count });
        }
        Ok(())
    }

    /// Byte offset of the next read.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    pub fn byte(&mut self) -> Result<u8> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or(DecodeError::UnexpectedEnd { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    pub fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or(DecodeError::UnexpectedEnd {
                offset: self.input.len(),
            })?;
        let slice = self
            .input
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd {
                offset: self.input.len(),
            })?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    pub fn varint(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7F);
            if i == 9 && b > 1 {
                return Err(DecodeError::BadVarint { offset: start });
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::NonCanonical {
                        offset: start,
                        what: "overlong varint",
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { offset: start })
    }

    pub fn signed(&mut self) -> Result<i64> {
        Ok(unzigzag(self.varint()?))
    }

    /// A length or count that must fit in the remaining input, `min_item` bytes per item.
    pub fn length(&mut self, min_item: usize) -> Result<usize> {
        let offset = self.pos;
        let n = self.varint()?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(DecodeError::LengthTooLarge { length: n, offset });
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.length(1)?;
        self.raw(n)
    }

    pub fn uuid(&mut self) -> Result<Uuid> {
        Ok(Uuid::from_bytes(self.array::<16>()?))
    }

    fn utf8(&mut self, len: usize) -> Result<&'a str> {
        let offset = self.pos;
        let raw = self.raw(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { offset })?;
        self.strings.push(s);
        Ok(s)
    }

    fn string_ref(&mut self, index: u64, offset: usize) -> Result<&'a str> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.strings.get(i))
            .copied()
            .ok_or(DecodeError::BadReference { index, offset })
    }

    /// A key string (see [`Encoder::key`]).
    pub fn key(&mut self) -> Result<&'a str> {
        let offset = self.pos;
        let v = self.varint()?;
        if v & 1 == 1 {
            return self.string_ref(v >> 1, offset);
        }
        let len = v >> 1;
        if len > self.remaining() as u64 {
            return Err(DecodeError::LengthTooLarge {
                length: len,
                offset,
            });
        }
        self.utf8(len as usize)
    }

    pub fn node(&mut self) -> Result<NodeId> {
        let offset = self.pos;
        let v = self.varint()?;
        if v == 0 {
            let node = NodeId(self.uuid()?);
            self.nodes.push(node);
            return Ok(node);
        }
        if v & 1 == 0 {
            return Err(DecodeError::Invalid {
                offset,
                what: "node reference must be 0 or odd",
            });
        }
        let index = v >> 1;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.nodes.get(i))
            .copied()
            .ok_or(DecodeError::BadReference { index, offset })
    }

    /// About how much memory the values decoded so far take: each value's own size, the
    /// bytes of its strings and byte strings, map entries, operations. A receiver uses it to
    /// account for what a peer's message holds.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Refuses the item ([`DecodeError::TooLarge`]) once its [`Decoder::weight`] passes
    /// `limit`. Unlimited by default: what this node stored is read back whatever it weighs;
    /// items from peers get [`MAX_DECODED_WEIGHT`].
    pub fn limit_weight(&mut self, limit: usize) {
        self.weight_limit = limit;
    }

    /// Counts `n` bytes of decoded memory against the limit.
    pub fn weigh(&mut self, n: usize) -> Result<()> {
        self.weight = self.weight.saturating_add(n);
        if self.weight > self.weight_limit {
            return Err(DecodeError::TooLarge {
                limit: self.weight_limit,
                offset: self.pos,
            });
        }
        Ok(())
    }

    pub fn value(&mut self) -> Result<Value> {
        self.weigh(std::mem::size_of::<Value>())?;
        let offset = self.pos;
        let tag = self.byte()?;
        let non_canonical = |what| Err(DecodeError::NonCanonical { offset, what });
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT => {
                let n = self.signed()?;
                if (0..=127).contains(&n) {
                    return non_canonical("int 0..=127 must use the one-byte form");
                }
                Value::Int(n)
            }
            TAG_F64 => {
                let d = f64::from_le_bytes(self.array::<8>()?);
                if fits_f32(d) {
                    return non_canonical("double that fits in f32 must use the 4-byte form");
                }
                Value::Double(d)
            }
            TAG_F32 => {
                let f = f32::from_le_bytes(self.array::<4>()?);
                if f.is_nan() {
                    return non_canonical("NaN must use the 8-byte form");
                }
                Value::Double(f64::from(f))
            }
            TAG_UUID => Value::Uuid(self.uuid()?),
            TAG_DATE => Value::Date(Date::from_unix_millis(self.signed()?)),
            TAG_BYTES => {
                let bytes = self.bytes()?;
                self.weigh(bytes.len())?;
                Value::Bytes(bytes.to_vec())
            }
            TAG_ARRAY => {
                self.enter(offset)?;
                let n = self.length(1)?;
                // Reserve little up front: nested arrays would otherwise each reserve for the
                // whole remaining input.
                let mut items = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    items.push(self.value()?);
                }
                self.depth -= 1;
                Value::Array(items)
            }
            TAG_MAP => {
                self.enter(offset)?;
                let map = self.fields()?;
                self.depth -= 1;
                Value::Map(map)
            }
            TAG_STRING => {
                let len = self.length(1)?;
                if len <= SHORT_STRING_MAX {
                    return non_canonical("string shorter than 64 bytes must use the short form");
                }
                let text = self.utf8(len)?;
                self.string_value(text)?
            }
            TAG_STRING_REF => {
                let index = self.varint()?;
                let text = self.string_ref(index, offset)?;
                self.string_value(text)?
            }
            t if t >= TAG_SMALL_INT => Value::Int(i64::from(t - TAG_SMALL_INT)),
            t if t >= TAG_SHORT_STRING => {
                let text = self.utf8(usize::from(t - TAG_SHORT_STRING))?;
                self.string_value(text)?
            }
            t => return Err(DecodeError::UnknownTag { tag: t, offset }),
        })
    }

    /// A string value: its own copy of `text`, weighed.
    fn string_value(&mut self, text: &str) -> Result<Value> {
        self.weigh(text.len())?;
        Ok(Value::String(text.to_owned()))
    }

    fn enter(&mut self, offset: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { offset });
        }
        Ok(())
    }

    /// The next key of a map, which must sort after `previous` (and becomes it).
    fn next_key(&mut self, previous: &mut Option<&'a str>) -> Result<&'a str> {
        let offset = self.pos;
        let k = self.key()?;
        if previous.is_some_and(|p| p.as_bytes() >= k.as_bytes()) {
            return Err(DecodeError::NonCanonical {
                offset,
                what: "keys must be unique and in ascending order",
            });
        }
        *previous = Some(k);
        Ok(k)
    }

    /// A field map; keys must be strictly ascending.
    pub fn fields(&mut self) -> Result<Fields> {
        let n = self.length(2)?;
        let mut map = Fields::new();
        let mut previous: Option<&str> = None;
        for _ in 0..n {
            let k = self.next_key(&mut previous)?;
            self.weigh(k.len() + std::mem::size_of::<String>() + MAP_ENTRY_WEIGHT)?;
            let v = self.value()?;
            map.insert(k.to_owned(), v);
        }
        Ok(map)
    }

    pub fn record(&mut self) -> Result<Record> {
        let id = self.uuid()?;
        let fields = self.fields()?;
        Ok(Record { id, fields })
    }

    pub fn stamp(&mut self) -> Result<Stamp> {
        let lamport = self.varint()?;
        let node = self.node()?;
        Ok(Stamp { lamport, node })
    }

    pub fn operation(&mut self) -> Result<Operation> {
        self.weigh(std::mem::size_of::<Operation>())?;
        let origin = self.node()?;
        let seq = self.varint()?;
        let lamport = self.varint()?;
        let wall = Date::from_unix_millis(self.signed()?);
        let offset = self.pos;
        let kind = OpKind::from_code(self.byte()?).ok_or(DecodeError::Invalid {
            offset,
            what: "unknown operation kind",
        })?;
        let collection = self.key()?.to_owned();
        self.weigh(collection.len())?;
        let record = self.uuid()?;
        let offset = self.pos;
        let fields = self.fields()?;
        if kind == OpKind::Delete && !fields.is_empty() {
            return Err(DecodeError::Invalid {
                offset,
                what: "a delete carries no fields",
            });
        }
        Ok(Operation {
            id: OpId { origin, seq },
            lamport,
            wall,
            kind,
            collection,
            record,
            fields,
        })
    }

    pub fn record_state(&mut self) -> Result<RecordState> {
        self.read_record_state(false)
    }

    /// Reads what [`Encoder::record_state_compact`] wrote.
    pub fn record_state_compact(&mut self) -> Result<RecordState> {
        self.read_record_state(true)
    }

    fn read_record_state(&mut self, compact: bool) -> Result<RecordState> {
        let offset = self.pos;
        let flags = self.byte()?;
        if flags > 0b11 {
            return Err(DecodeError::Invalid {
                offset,
                what: "unknown record state flags",
            });
        }
        let created = if flags & 1 == 1 {
            Some(self.stamp()?)
        } else {
            None
        };
        let deleted = if flags & 2 == 2 {
            Some(self.stamp()?)
        } else {
            None
        };
        let n = self.length(if compact { 3 } else { 4 })?;
        let mut state = RecordState {
            created,
            deleted,
            ..RecordState::default()
        };
        let mut previous: Option<&str> = None;
        for _ in 0..n {
            let k = self.next_key(&mut previous)?;
            self.weigh(
                k.len()
                    + std::mem::size_of::<String>()
                    + std::mem::size_of::<Stamp>()
                    + MAP_ENTRY_WEIGHT,
            )?;
            let value = self.value()?;
            let stamp = if compact {
                let at = self.pos;
                match (self.byte()?, created) {
                    (0, Some(created)) => created,
                    (1, _) => self.stamp()?,
                    _ => {
                        return Err(DecodeError::Invalid {
                            offset: at,
                            what: "field stamp marker is neither 0 (with a created stamp) nor 1",
                        });
                    }
                }
            } else {
                self.stamp()?
            };
            state
                .fields
                .insert(k.to_owned(), FieldState { value, stamp });
        }
        Ok(state)
    }
}

macro_rules! top_level {
    ($(#[$doc:meta])* $enc:ident, $dec:ident, $ty:ty, $kind:expr, $method:ident) => {
        $(#[$doc])*
        pub fn $enc(item: &$ty) -> Vec<u8> {
            let mut e = Encoder::new($kind);
            e.$method(item);
            e.finish()
        }

        $(#[$doc])*
        pub fn $dec(bytes: &[u8]) -> Result<$ty> {
            let mut d = Decoder::new(bytes, $kind)?;
            let item = d.$method()?;
            d.finish()?;
            Ok(item)
        }
    };
}

top_level!(
    /// A single [`Value`] as a top-level item.
    encode_value, decode_value, Value, Kind::Value, value
);
top_level!(
    /// A [`Record`] (id and fields) as a top-level item.
    encode_record, decode_record, Record, Kind::Record, record
);
top_level!(
    /// One [`Operation`] as a top-level item.
    encode_operation, decode_operation, Operation, Kind::Operation, operation
);
top_level!(
    /// A record's replicated state (fields with stamps, insert and delete stamps).
    encode_record_state, decode_record_state, RecordState, Kind::RecordState, record_state
);

/// Same bytes as `encode_record_state(&RecordState::inserted(fields.clone(), stamp))`, without
/// the copy: the write path of a new record.
pub fn encode_inserted_record_state(fields: &Fields, stamp: Stamp) -> Vec<u8> {
    let mut e = Encoder::new(Kind::RecordState);
    e.inserted_record_state(fields, stamp);
    e.finish()
}

/// Several operations in one item, sharing one string and node table.
pub fn encode_operations(ops: &[Operation]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(Kind::OperationBatch, 64 * ops.len() + 8);
    e.varint(ops.len() as u64);
    for op in ops {
        e.operation(op);
    }
    e.finish()
}

/// Decodes what [`encode_operations`] wrote.
pub fn decode_operations(bytes: &[u8]) -> Result<Vec<Operation>> {
    let mut d = Decoder::new(bytes, Kind::OperationBatch)?;
    // An operation is at least 23 bytes (node ref, seq, lamport, wall, kind, key, 16-byte id,
    // count); 22 is a safe lower bound.
    let n = d.length(22)?;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        ops.push(d.operation()?);
    }
    d.finish()?;
    Ok(ops)
}
