//! The data model: [`Value`], [`Date`] and [`Record`].

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

/// A point in time: milliseconds since the Unix epoch (UTC), like JavaScript's `Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(i64);

impl Date {
    /// A date from milliseconds since 1970-01-01T00:00:00Z (negative before it).
    pub const fn from_unix_millis(millis: i64) -> Self {
        Date(millis)
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. A clock before 1970 reads as the epoch.
    pub fn now() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Date(millis)
    }
}

/// One field value. Maps keep their keys sorted, so equal maps encode to equal bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    Uuid(Uuid),
    Date(Date),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// The family a value belongs to for ordering: values of different classes never compare equal,
/// and range queries (`gt`, `lt`, …) only match values of the operand's class.
/// `Int` and `Double` share the [`ValueClass::Number`] class and compare by numeric value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ValueClass {
    Null,
    Bool,
    Number,
    String,
    Uuid,
    Date,
    Bytes,
    Array,
    Map,
}

impl Value {
    /// The ordering class of this value.
    pub fn class(&self) -> ValueClass {
        match self {
            Value::Null => ValueClass::Null,
            Value::Bool(_) => ValueClass::Bool,
            Value::Int(_) | Value::Double(_) => ValueClass::Number,
            Value::String(_) => ValueClass::String,
            Value::Uuid(_) => ValueClass::Uuid,
            Value::Date(_) => ValueClass::Date,
            Value::Bytes(_) => ValueClass::Bytes,
            Value::Array(_) => ValueClass::Array,
            Value::Map(_) => ValueClass::Map,
        }
    }

    /// A short name of the variant, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Uuid(_) => "uuid",
            Value::Date(_) => "date",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }

    /// The total order used by queries, sorting and indexes.
    ///
    /// Classes sort Null < Bool < Number < String < Uuid < Date < Bytes < Array < Map.
    /// Numbers compare by exact mathematical value (`Int(3) == Double(3.0)`, and
    /// `Int(2^53 + 1) > Double(2^53)`); `-0.0 == 0.0`; every NaN is equal to every other NaN and
    /// greater than `+inf`. Strings and bytes compare bytewise, arrays and maps lexicographically.
    /// This is exactly the order of [`crate::sort_key`], which is what makes index scans agree
    /// with full scans.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        let by_class = self.class().cmp(&other.class());
        if by_class != Ordering::Equal {
            return by_class;
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Uuid(a), Value::Uuid(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => {
                for (x, y) in a.iter().zip(b.iter()) {
                    let c = x.total_cmp(y);
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Value::Map(a), Value::Map(b)) => {
                for ((ka, va), (kb, vb)) in a.iter().zip(b.iter()) {
                    let c = ka
                        .as_bytes()
                        .cmp(kb.as_bytes())
                        .then_with(|| va.total_cmp(vb));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (a, b) => match (numeric_parts(a), numeric_parts(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                // Both Null (the only class left).
                _ => Ordering::Equal,
            },
        }
    }

    /// `true` when [`Value::total_cmp`] says the two are equal.
    pub fn total_eq(&self, other: &Value) -> bool {
        self.total_cmp(other) == Ordering::Equal
    }
}

/// A number as (order-preserving bits of its nearest f64, exact remainder), see `total_cmp`.
pub(crate) fn numeric_parts(v: &Value) -> Option<(u64, i64)> {
    match v {
        Value::Int(n) => {
            let approx = *n as f64;
            // `approx` is an integer with |approx| <= 2^63, so the i128 conversion is exact and
            // the remainder is at most half an ulp (2^10) in size.
            let remainder = i128::from(*n) - approx as i128;
            Some((ordered_f64_bits(approx), remainder as i64))
        }
        Value::Double(d) => Some((ordered_f64_bits(*d), 0)),
        _ => None,
    }
}

/// Bits of `d` whose unsigned order is the numeric order (NaN greatest, -0.0 == 0.0).
pub(crate) fn ordered_f64_bits(d: f64) -> u64 {
    let canonical = if d.is_nan() {
        f64::NAN
    } else if d == 0.0 {
        0.0
    } else {
        d
    };
    let bits = canonical.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Double(d) => write!(f, "{d:?}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Uuid(u) => write!(f, "uuid({u})"),
            Value::Date(d) => write!(f, "date({})", d.unix_millis()),
            Value::Bytes(b) => write!(f, "bytes({})", b.len()),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k:?}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Why a [`Value`] could not be converted to a Rust type (`TryFrom`): it holds another kind of
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, found {found}")]
pub struct ValueTypeError {
    /// The kind the conversion needs (`"string"`, `"int"`, ...).
    pub expected: &'static str,
    /// The kind the value holds ([`Value::type_name`]).
    pub found: &'static str,
}

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// A `Double`, or an `Int` as the nearest `f64` (numbers share one class, see
    /// [`ValueClass::Number`]).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Value::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    pub fn as_date(&self) -> Option<Date> {
        match self {
            Value::Date(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(map) => Some(map),
            _ => None,
        }
    }
}

/// `TryFrom<&Value>` and `TryFrom<Value>` for a Rust type, through the `as_*` getter that reads
/// it.
macro_rules! value_try_into {
    ($($t:ty => $getter:ident, $expected:literal);* $(;)?) => {
        $(impl TryFrom<&Value> for $t {
            type Error = ValueTypeError;

            fn try_from(value: &Value) -> Result<Self, ValueTypeError> {
                value.$getter().map(Into::into).ok_or(ValueTypeError {
                    expected: $expected,
                    found: value.type_name(),
                })
            }
        }

        impl TryFrom<Value> for $t {
            type Error = ValueTypeError;

            fn try_from(value: Value) -> Result<Self, ValueTypeError> {
                <$t>::try_from(&value)
            }
        })*
    };
}

value_try_into!(
    bool => as_bool, "bool";
    i64 => as_i64, "int";
    f64 => as_f64, "number";
    String => as_str, "string";
    Uuid => as_uuid, "uuid";
    Date => as_date, "date";
    Vec<u8> => as_bytes, "bytes";
);

impl<'a> TryFrom<&'a Value> for &'a str {
    type Error = ValueTypeError;

    fn try_from(value: &'a Value) -> Result<Self, ValueTypeError> {
        value.as_str().ok_or(ValueTypeError {
            expected: "string",
            found: value.type_name(),
        })
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v.into())
            }
        })*
    };
}

value_from!(
    bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Double, String => String,
    &str => String, Uuid => Uuid, Date => Date, Vec<u8> => Bytes, Vec<Value> => Array,
    BTreeMap<String, Value> => Map,
);

/// The field map of a record.
pub type Fields = BTreeMap<String, Value>;

/// A document in a collection: a UUID id and a map of field name to value.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: Uuid,
    pub fields: Fields,
}

impl Record {
    /// A record with this id and fields.
    pub fn new(id: Uuid, fields: Fields) -> Self {
        Record { id, fields }
    }

    /// The value of a field, if present.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }
}

/// Builds a [`Fields`] map: `fields! { "title" => "Crash", "priority" => 3 }`.
#[macro_export]
macro_rules! fields {
    () => { $crate::Fields::new() };
    ($($k:expr => $v:expr),+ $(,)?) => {{
        let mut map = $crate::Fields::new();
        $(map.insert(::std::string::String::from($k), $crate::Value::from($v));)+
        map
    }};
}

#[cfg(test)]
mod getter_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn getters_read_their_own_kind_and_nothing_else() {
        let id = Uuid::from_u128(7);
        assert_eq!(Value::from("a").as_str(), Some("a"));
        assert_eq!(Value::from(3).as_i64(), Some(3));
        assert_eq!(Value::from(3).as_f64(), Some(3.0));
        assert_eq!(Value::from(2.5).as_f64(), Some(2.5));
        assert_eq!(Value::from(2.5).as_i64(), None);
        assert_eq!(Value::from(true).as_bool(), Some(true));
        assert_eq!(Value::from(id).as_uuid(), Some(id));
        assert_eq!(
            Value::from(Date::from_unix_millis(5)).as_date(),
            Some(Date::from_unix_millis(5))
        );
        assert_eq!(Value::from(vec![1u8, 2]).as_bytes(), Some(&[1u8, 2][..]));
        assert_eq!(
            Value::from(vec![Value::Null]).as_array(),
            Some(&[Value::Null][..])
        );
        assert!(Value::Map(BTreeMap::new()).as_map().is_some());
        assert!(Value::Null.is_null());
        assert_eq!(Value::from("3").as_i64(), None);
        assert_eq!(Value::Null.as_str(), None);
    }

    #[test]
    fn try_from_converts_or_names_both_kinds() {
        assert_eq!(String::try_from(Value::from("a")), Ok("a".to_owned()));
        assert_eq!(<&str>::try_from(&Value::from("a")), Ok("a"));
        assert_eq!(i64::try_from(&Value::from(9)), Ok(9));
        assert_eq!(bool::try_from(Value::from(false)), Ok(false));
        let err = i64::try_from(&Value::from("9")).unwrap_err();
        assert_eq!(
            err,
            ValueTypeError {
                expected: "int",
                found: "string"
            }
        );
        assert_eq!(err.to_string(), "expected int, found string");
        assert_eq!(
            Vec::<u8>::try_from(Value::Null).unwrap_err().to_string(),
            "expected bytes, found null"
        );
    }
}
