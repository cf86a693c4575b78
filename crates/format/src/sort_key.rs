//! Order-preserving byte keys for values: `sort_key(a) < sort_key(b)` (bytewise) exactly when
//! `a.total_cmp(b)` is `Less`. Secondary indexes store these keys, so SQLite's `memcmp` order on
//! BLOBs is the query order. The layout is in `docs/format.md`.

use crate::value::{Value, ValueClass, numeric_parts};

/// The first byte of a key of each class. Keys of a class `c` lie in
/// `[class_prefix(c), class_prefix(c) + 1)`.
pub fn class_prefix(class: ValueClass) -> u8 {
    match class {
        ValueClass::Null => 0x01,
        ValueClass::Bool => 0x02,
        ValueClass::Number => 0x03,
        ValueClass::String => 0x04,
        ValueClass::Uuid => 0x05,
        ValueClass::Date => 0x06,
        ValueClass::Bytes => 0x07,
        ValueClass::Array => 0x08,
        ValueClass::Map => 0x09,
    }
}

/// The sort key of a value.
pub fn sort_key(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    write_sort_key(v, &mut out);
    out
}

/// Appends the sort key of `v` to `out`.
pub fn write_sort_key(v: &Value, out: &mut Vec<u8>) {
    out.push(class_prefix(v.class()));
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Int(_) | Value::Double(_) => {
            if let Some((approx, remainder)) = numeric_parts(v) {
                out.extend_from_slice(&approx.to_be_bytes());
                out.extend_from_slice(&((remainder as u64) ^ (1 << 63)).to_be_bytes());
            }
        }
        Value::String(s) => escaped(s.as_bytes(), out),
        Value::Uuid(u) => out.extend_from_slice(u.as_bytes()),
        Value::Date(d) => {
            out.extend_from_slice(&((d.unix_millis() as u64) ^ (1 << 63)).to_be_bytes())
        }
        Value::Bytes(b) => escaped(b, out),
        Value::Array(items) => {
            for item in items {
                write_sort_key(item, out);
            }
            out.push(0x00);
        }
        Value::Map(map) => {
            for (k, item) in map {
                out.push(0x01);
                escaped(k.as_bytes(), out);
                write_sort_key(item, out);
            }
            out.push(0x00);
        }
    }
}

/// Bytes with 0x00 written as 0x00 0xFF, then a 0x00 terminator: order-preserving and
/// prefix-free (as in FoundationDB's tuple layer).
fn escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.push(0x00);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn numbers_order_by_exact_value_across_int_and_double() {
        let big = 1i64 << 53;
        let cases = [
            (Value::Int(3), Value::Double(3.0), Ordering::Equal),
            (
                Value::Int(big + 1),
                Value::Double(big as f64),
                Ordering::Greater,
            ),
            (Value::Double(-0.0), Value::Int(0), Ordering::Equal),
            (
                Value::Double(f64::NAN),
                Value::Double(f64::INFINITY),
                Ordering::Greater,
            ),
            (Value::Int(i64::MAX), Value::Double(9.3e18), Ordering::Less),
            (
                Value::Int(i64::MIN),
                Value::Double(f64::NEG_INFINITY),
                Ordering::Greater,
            ),
        ];
        for (a, b, expected) in cases {
            assert_eq!(a.total_cmp(&b), expected, "{a} vs {b}");
            assert_eq!(sort_key(&a).cmp(&sort_key(&b)), expected, "{a} vs {b} keys");
        }
    }

    #[test]
    fn strings_with_nul_bytes_keep_their_order() {
        let a = Value::from("ab");
        let b = Value::from("ab\0");
        let c = Value::from("ab\u{1}");
        assert!(sort_key(&a) < sort_key(&b));
        assert!(sort_key(&b) < sort_key(&c));
    }
}
