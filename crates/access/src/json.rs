//! The mapping between JSON and BlazeDB [`Value`]s: the values of filters (`blazedb query
//! --where`, access rules) and every `blazedb` command that reads or prints records.
//!
//! | JSON                                  | Value                                   |
//! |---------------------------------------|-----------------------------------------|
//! | `null`, `true`/`false`, `"text"`      | `Null`, `Bool`, `String`                |
//! | integer that fits in i64              | `Int`                                   |
//! | any other number (`1.0`, `1e3`, 2^64) | `Double`                                |
//! | array, object                         | `Array`, `Map`                          |
//! | `{"$uuid": "…"}`                      | `Uuid`                                  |
//! | `{"$date": "2026-11-23T10:00:00.123Z"}` or `{"$date": <millis>}` | `Date`       |
//! | `{"$bytes": "<base64>"}`              | `Bytes`                                 |
//! | `{"$double": "NaN" / "inf" / "-inf" / "2"}` | `Double`                          |
//!
//! Object keys starting with `$` are reserved for the typed forms above; a literal key that
//! starts with `$` is written with one more `$` (`"$$price"` is the key `"$price"`). The mapping
//! is total: every `Value` has exactly one JSON form, and reading it back gives the same value.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use blazedb_core::{Date, Fields, Record, Uuid, Value};
use serde_json::{Map, Number, Value as Json};

/// The mapping as shown in `blazedb --help` (keep in step with docs/cli.md).
pub const MAPPING_HELP: &str = "\
JSON <-> VALUE MAPPING (records, --where values, import and export):
  null, true/false, \"text\"        Null, Bool, String
  integer that fits in i64        Int
  other numbers (1.0, 1e3, 2^64)  Double (a Double is always printed with a '.' or an
                                  exponent, e.g. 3.0, so it reads back as a Double)
  [ ... ], { ... }                Array, Map
  {\"$uuid\": \"<uuid>\"}             Uuid
  {\"$date\": \"<RFC 3339>\"}         Date, millisecond precision; printed in UTC with
                                  milliseconds, e.g. \"2026-11-23T10:00:00.123Z\"
                                  ({\"$date\": <ms since 1970>} outside years 0000-9999)
  {\"$bytes\": \"<base64>\"}          Bytes (standard alphabet, padded)
  {\"$double\": \"NaN\"}             Double values JSON numbers cannot express:
                                  \"NaN\", \"inf\", \"-inf\" (any number text is accepted)
Keys starting with '$' are reserved for these forms: write a literal key \"$k\" as \"$$k\".
A record prints as one JSON object per line, its id first: {\"id\": \"<uuid>\", ...}.";

/// Why a JSON document does not map to a value, with where in the document it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Path segments from the top, innermost last (`.field` or `[3]`).
    path: Vec<String>,
    message: String,
}

impl JsonError {
    fn new(message: impl Into<String>) -> Self {
        JsonError {
            path: Vec::new(),
            message: message.into(),
        }
    }

    /// Adds the segment of the enclosing container (errors travel outwards).
    fn within(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.message);
        }
        let mut segments = self.path.iter().rev();
        if let Some(first) = segments.next() {
            // The outermost segment is a field name: print it without the leading dot.
            write!(f, "field {}", first.strip_prefix('.').unwrap_or(first))?;
        }
        for s in segments {
            f.write_str(s)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for JsonError {}

const TYPED_FORMS: &str = "$uuid, $date, $bytes, $double";

/// Parses JSON text (the whole input must be one JSON document).
pub fn parse(text: &str) -> Result<Json, JsonError> {
    serde_json::from_str(text).map_err(|e| JsonError::new(format!("invalid JSON: {e}")))
}

/// Converts one JSON value to a [`Value`].
pub fn to_value(json: &Json) -> Result<Value, JsonError> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => number(n)?,
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_value(v).map_err(|e| e.within(format!("[{i}]"))))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => match typed(map)? {
            Some(v) => v,
            None => Value::Map(object_fields(map)?),
        },
    })
}

fn number(n: &Number) -> Result<Value, JsonError> {
    if let Some(i) = n.as_i64() {
        return Ok(Value::Int(i));
    }
    // u64 beyond i64::MAX and every number written with a fraction or exponent.
    n.as_f64()
        .map(Value::Double)
        .ok_or_else(|| JsonError::new(format!("the number {n} cannot be represented")))
}

/// The literal key a JSON key stands for, or `None` for a reserved `$` key.
fn unescape_key(key: &str) -> Option<&str> {
    match key.strip_prefix('$') {
        Some(rest) if rest.starts_with('$') => Some(rest),
        Some(_) => None,
        None => Some(key),
    }
}

/// The JSON key for a literal key.
fn escape_key(key: &str) -> String {
    if key.starts_with('$') {
        format!("${key}")
    } else {
        key.to_owned()
    }
}

/// The fields of a plain JSON object (no typed form), with keys unescaped.
fn object_fields(map: &Map<String, Json>) -> Result<Fields, JsonError> {
    let mut fields = Fields::new();
    for (key, v) in map {
        let Some(name) = unescape_key(key) else {
            return Err(reserved_key(key));
        };
        let value = to_value(v).map_err(|e| e.within(format!(".{}", display_key(name))))?;
        fields.insert(name.to_owned(), value);
    }
    Ok(fields)
}

fn display_key(name: &str) -> String {
    let simple = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if simple {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

fn reserved_key(key: &str) -> JsonError {
    JsonError::new(format!(
        "unknown key {key:?}: keys starting with '$' are reserved for the typed values \
         ({TYPED_FORMS}); write a literal key {key:?} as \"${key}\""
    ))
}

/// A typed single-key form such as `{"$uuid": "…"}`, or `None` for a plain object.
fn typed(map: &Map<String, Json>) -> Result<Option<Value>, JsonError> {
    let Some((key, inner)) = map.iter().find(|(k, _)| unescape_key(k).is_none()) else {
        return Ok(None);
    };
    let form = key.as_str();
    if !matches!(form, "$uuid" | "$date" | "$bytes" | "$double") {
        return Err(reserved_key(key));
    }
    if map.len() != 1 {
        return Err(JsonError::new(format!(
            "{form:?} must be the only key of its object"
        )));
    }
    let value = match (form, inner) {
        ("$uuid", Json::String(s)) => Value::Uuid(
            Uuid::parse_str(s).map_err(|e| JsonError::new(format!("invalid $uuid {s:?}: {e}")))?,
        ),
        ("$date", Json::String(s)) => Value::Date(parse_date(s)?),
        ("$date", Json::Number(n)) => match n.as_i64() {
            Some(ms) => Value::Date(Date::from_unix_millis(ms)),
            None => {
                return Err(JsonError::new(format!(
                    "invalid $date {n}: a number must be whole milliseconds since 1970 (an i64)"
                )));
            }
        },
        ("$bytes", Json::String(s)) => Value::Bytes(
            BASE64
                .decode(s)
                .map_err(|e| JsonError::new(format!("invalid $bytes (base64): {e}")))?,
        ),
        ("$double", Json::String(s)) => Value::Double(s.trim().parse::<f64>().map_err(|_| {
            JsonError::new(format!(
                "invalid $double {s:?}: expected \"NaN\", \"inf\", \"-inf\" or a number"
            ))
        })?),
        ("$date", _) => {
            return Err(JsonError::new(
                "$date takes an RFC 3339 string (e.g. \"2026-11-23T10:00:00.123Z\") or milliseconds since 1970",
            ));
        }
        _ => return Err(JsonError::new(format!("{form} takes a string"))),
    };
    Ok(Some(value))
}

/// Parses an RFC 3339 timestamp to milliseconds (sub-millisecond digits are truncated towards
/// the past).
pub fn parse_date(s: &str) -> Result<Date, JsonError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            JsonError::new(format!(
                "invalid $date {s:?}: {e} (expected RFC 3339, e.g. \"2026-11-23T10:00:00.123Z\")"
            ))
        })?;
    let millis = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(millis)
        .map(Date::from_unix_millis)
        .map_err(|_| JsonError::new(format!("$date {s:?} is out of range")))
}

/// Formats a date as RFC 3339 in UTC with milliseconds, or `None` outside years 0000–9999.
pub fn format_date(d: Date) -> Option<String> {
    let nanos = i128::from(d.unix_millis()) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

pub(crate) fn single(key: &str, value: Json) -> Json {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Json::Object(map)
}

/// Converts a [`Value`] to JSON (total: every value has a JSON form).
pub fn from_value(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => Json::Number((*n).into()),
        Value::Double(d) => match Number::from_f64(*d) {
            Some(n) => Json::Number(n),
            None => {
                let text = if d.is_nan() {
                    "NaN"
                } else if *d > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                single("$double", Json::String(text.into()))
            }
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Uuid(u) => single("$uuid", Json::String(u.to_string())),
        Value::Date(d) => single(
            "$date",
            match format_date(*d) {
                Some(s) => Json::String(s),
                None => Json::Number(d.unix_millis().into()),
            },
        ),
        Value::Bytes(b) => single("$bytes", Json::String(BASE64.encode(b))),
        Value::Array(items) => Json::Array(items.iter().map(from_value).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (escape_key(k), from_value(v)))
                .collect(),
        ),
    }
}

/// A record to write: its id when the JSON names one (`"id": "<uuid>"` or a `$uuid`), and its
/// fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordInput {
    pub id: Option<Uuid>,
    pub fields: Fields,
}

/// Reads a record (a JSON object of fields, optionally with an `"id"`).
pub fn to_record(json: &Json) -> Result<RecordInput, JsonError> {
    let Json::Object(map) = json else {
        return Err(JsonError::new(format!(
            "expected a JSON object with the record's fields, found {}",
            json_kind(json)
        )));
    };
    if let Some(form) = typed(map)? {
        return Err(JsonError::new(format!(
            "expected a JSON object with the record's fields, found a {}",
            form.type_name()
        )));
    }
    let id = match map.get("id") {
        None => None,
        Some(Json::String(s)) => Some(Uuid::parse_str(s).map_err(|e| {
            JsonError::new(format!("\"id\" must be a UUID string, {s:?} is not: {e}"))
        })?),
        Some(other) => match to_value(other) {
            Ok(Value::Uuid(u)) => Some(u),
            _ => {
                return Err(JsonError::new(format!(
                    "\"id\" must be a UUID string, found {}",
                    json_kind(other)
                )));
            }
        },
    };
    let mut rest = map.clone();
    rest.remove("id");
    Ok(RecordInput {
        id,
        fields: object_fields(&rest)?,
    })
}

/// Parses JSON text holding one record.
pub fn parse_record(text: &str) -> Result<RecordInput, JsonError> {
    to_record(&parse(text)?)
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// One record as a line of JSON (no newline): `{"id":"<uuid>", <fields in name order>}`.
pub fn record_line(record: &Record) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("{\"id\":\"");
    out.push_str(&record.id.to_string());
    out.push('"');
    for (k, v) in &record.fields {
        out.push(',');
        out.push_str(&Json::String(escape_key(k)).to_string());
        out.push(':');
        out.push_str(&from_value(v).to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use blazedb_core::fields;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Structural equality where doubles compare by bits (and every NaN equals every NaN).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Double(x), Value::Double(y)) => {
                (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
            }
            _ => a == b,
        }
    }

    /// Value → JSON text → Value.
    fn round_trip(v: &Value) -> Value {
        let text = from_value(v).to_string();
        to_value(&parse(&text).unwrap()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn json_of(v: &Value) -> String {
        from_value(v).to_string()
    }

    #[test]
    fn every_variant_round_trips() {
        let uuid = Uuid::parse_str("0190c0de-7f00-7abc-8def-0123456789ab").unwrap();
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(0),
            Value::Int(-1),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX),
            Value::Double(0.0),
            Value::Double(-0.0),
            Value::Double(3.0),
            Value::Double(-2.5),
            Value::Double(1e300),
            Value::Double(5e-324),
            Value::Double(0.1 + 0.2),
            Value::Double(9_007_199_254_740_993.0),
            Value::Double(f64::NAN),
            Value::Double(f64::INFINITY),
            Value::Double(f64::NEG_INFINITY),
            Value::Double(f64::MAX),
            Value::String(String::new()),
            Value::String("ünïcödé \"quoted\" \n\u{0}".into()),
            Value::Uuid(uuid),
            Value::Uuid(Uuid::nil()),
            Value::Date(Date::from_unix_millis(0)),
            Value::Date(Date::from_unix_millis(1_795_428_000_123)),
            Value::Date(Date::from_unix_millis(-1)),
            Value::Date(Date::from_unix_millis(i64::MIN)),
            Value::Date(Date::from_unix_millis(i64::MAX)),
            Value::Bytes(vec![]),
            Value::Bytes(vec![0, 1, 2, 255, 254]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), Value::Double(1.0), Value::Null]),
            Value::Map(BTreeMap::new()),
            Value::Map(fields! { "a" => 1, "$uuid" => "not a uuid", "$$x" => true, "" => "empty" }),
        ];
        for v in values {
            let back = round_trip(&v);
            assert!(
                same(&v, &back),
                "{v:?} came back as {back:?} via {}",
                json_of(&v)
            );
        }
    }

    #[test]
    fn integral_doubles_print_with_a_point() {
        assert_eq!(json_of(&Value::Double(3.0)), "3.0");
        assert_eq!(json_of(&Value::Double(-0.0)), "-0.0");
        assert_eq!(json_of(&Value::Int(3)), "3");
        assert_eq!(
            to_value(&parse("3.0").unwrap()).unwrap(),
            Value::Double(3.0)
        );
        assert_eq!(to_value(&parse("3").unwrap()).unwrap(), Value::Int(3));
    }

    #[test]
    fn numbers_beyond_i64_become_doubles() {
        assert_eq!(
            to_value(&parse("18446744073709551615").unwrap()).unwrap(),
            Value::Double(18_446_744_073_709_551_615.0)
        );
        assert_eq!(
            to_value(&parse("1e3").unwrap()).unwrap(),
            Value::Double(1000.0)
        );
    }

    #[test]
    fn typed_forms_print_as_documented() {
        let uuid = Uuid::parse_str("0190c0de-7f00-7abc-8def-0123456789ab").unwrap();
        assert_eq!(
            json_of(&Value::Uuid(uuid)),
            r#"{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab"}"#
        );
        assert_eq!(
            json_of(&Value::Date(Date::from_unix_millis(1_795_428_000_123))),
            r#"{"$date":"2026-11-23T10:00:00.123Z"}"#
        );
        assert_eq!(
            json_of(&Value::Date(Date::from_unix_millis(0))),
            r#"{"$date":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(
            json_of(&Value::Bytes(b"hi".to_vec())),
            r#"{"$bytes":"aGk="}"#
        );
        assert_eq!(json_of(&Value::Double(f64::NAN)), r#"{"$double":"NaN"}"#);
        assert_eq!(
            json_of(&Value::Double(f64::INFINITY)),
            r#"{"$double":"inf"}"#
        );
        assert_eq!(
            json_of(&Value::Double(f64::NEG_INFINITY)),
            r#"{"$double":"-inf"}"#
        );
    }

    #[test]
    fn dates_accept_offsets_and_truncate_to_milliseconds() {
        let d = |s: &str| to_value(&parse(s).unwrap()).unwrap();
        assert_eq!(
            d(r#"{"$date":"2026-11-23T12:00:00.123999+02:00"}"#),
            Value::Date(Date::from_unix_millis(1_795_428_000_123))
        );
        assert_eq!(
            d(r#"{"$date":"1969-12-31T23:59:59.9999Z"}"#),
            Value::Date(Date::from_unix_millis(-1))
        );
        assert_eq!(d(r#"{"$date":5}"#), Value::Date(Date::from_unix_millis(5)));
        assert!(to_value(&parse(r#"{"$date":"yesterday"}"#).unwrap()).is_err());
    }

    #[test]
    fn reserved_keys_and_malformed_forms_are_errors() {
        let err = |s: &str| to_value(&parse(s).unwrap()).unwrap_err().to_string();
        assert!(err(r#"{"$foo":1}"#).contains("unknown key \"$foo\""));
        assert!(err(r#"{"a":{"b":[1,{"$oid":"x"}]}}"#).starts_with("field a.b[1]: unknown key"));
        assert!(err(r#"{"$uuid":"x"}"#).contains("invalid $uuid"));
        assert!(err(r#"{"$uuid":5}"#).contains("$uuid takes a string"));
        assert!(
            err(r#"{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab","a":1}"#)
                .contains("must be the only key")
        );
        assert!(err(r#"{"$bytes":"!!"}"#).contains("base64"));
        assert!(err(r#"{"$double":"lots"}"#).contains("invalid $double"));
        assert!(err(r#"{"$date":1.5}"#).contains("whole milliseconds"));
    }

    #[test]
    fn double_forms_are_accepted_on_input() {
        let d = |s: &str| match to_value(&parse(s).unwrap()).unwrap() {
            Value::Double(x) => x,
            other => panic!("{other:?}"),
        };
        assert!(d(r#"{"$double":"NaN"}"#).is_nan());
        assert_eq!(d(r#"{"$double":"inf"}"#), f64::INFINITY);
        assert_eq!(d(r#"{"$double":"-inf"}"#), f64::NEG_INFINITY);
        assert_eq!(d(r#"{"$double":"2"}"#), 2.0);
    }

    #[test]
    fn records_print_id_first_and_read_back() {
        let id = Uuid::parse_str("0190c0de-7f00-7abc-8def-0123456789ab").unwrap();
        let record = Record::new(id, fields! { "a" => 1, "$b" => 2.0, "z" => "x" });
        let line = record_line(&record);
        assert_eq!(
            line,
            r#"{"id":"0190c0de-7f00-7abc-8def-0123456789ab","$$b":2.0,"a":1,"z":"x"}"#
        );
        let back = parse_record(&line).unwrap();
        assert_eq!(back.id, Some(id));
        assert_eq!(back.fields, record.fields);
    }

    #[test]
    fn record_input_errors_name_the_problem() {
        let err = |s: &str| parse_record(s).unwrap_err().to_string();
        assert!(err("[1]").contains("expected a JSON object"));
        assert!(
            err(r#"{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab"}"#).contains("found a uuid")
        );
        assert!(err(r#"{"id":"nope"}"#).contains("\"id\" must be a UUID"));
        assert!(err(r#"{"id":3}"#).contains("found a number"));
        assert!(err(r#"{"a":"#).starts_with("invalid JSON: EOF while parsing"));
        let ok = parse_record(r#"{"id":{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab"}}"#);
        assert!(ok.unwrap().id.is_some());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Double),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
                .prop_map(Value::Double),
            any::<String>().prop_map(Value::String),
            any::<[u8; 16]>().prop_map(|b| Value::Uuid(Uuid::from_bytes(b))),
            any::<i64>().prop_map(|ms| Value::Date(Date::from_unix_millis(ms))),
            (-62_135_596_800_000i64..253_402_300_799_999)
                .prop_map(|ms| Value::Date(Date::from_unix_millis(ms))),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[$a-z]{0,4}|\\PC{0,6}", inner, 0..6)
                    .prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_values_round_trip_through_json(v in arb_value()) {
            let back = round_trip(&v);
            prop_assert!(same(&v, &back), "{:?} came back as {:?}", v, back);
        }

        #[test]
        fn arbitrary_json_text_never_panics(s in "\\PC{0,64}") {
            if let Ok(json) = parse(&s) {
                let _ = to_value(&json);
                let _ = to_record(&json);
            }
        }
    }
}
