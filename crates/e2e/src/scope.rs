//! Scopes: which key a record's values are sealed under follows the values of its
//! collection's routing fields (a team, say). A device names the scope of a record it
//! writes with [`scope_of`]; a server turns a scope back into routing values with
//! [`fields_of_scope`] to learn which devices the rules let read it.

use std::collections::BTreeSet;

use blazedb_format::{Fields, Value, decode_value, encode_value};

/// The routing values a scope names (the inverse of [`scope_of`]; an empty part is a
/// missing field), as fields of a record: what a server evaluates read rules on to learn
/// which devices may hold a scope's key. `None` when `scope` is not one `scope_of` makes.
pub fn fields_of_scope(routing: &BTreeSet<String>, scope: &str) -> Option<Fields> {
    let mut fields = Fields::new();
    if routing.is_empty() {
        return scope.is_empty().then_some(fields);
    }
    let parts: Vec<&str> = scope.split('\u{1f}').collect();
    if parts.len() != routing.len() {
        return None;
    }
    for (field, part) in routing.iter().zip(parts) {
        if part.is_empty() {
            continue;
        }
        let value = match part.strip_prefix('#') {
            Some(hex) => {
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|b| u8::from_str_radix(b, 16).ok())
                    })
                    .collect();
                decode_value(&bytes?).ok()?
            }
            None => Value::from(part),
        };
        fields.insert(field.clone(), value);
    }
    Some(fields)
}

/// The scope a record's routing values name: the values in the order of the fields' names,
/// joined by U+001F; a string is itself, any other value `#` and the hex of its BlazeBinary
/// encoding, a missing field empty. No routing fields: `""`, the whole collection.
pub fn scope_of<'v>(
    routing: &BTreeSet<String>,
    value_of: impl Fn(&str) -> Option<&'v Value>,
) -> String {
    let parts: Vec<String> = routing
        .iter()
        .map(|field| match value_of(field) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                let hex: String = encode_value(other)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("#{hex}")
            }
        })
        .collect();
    parts.join("\u{1f}")
}
