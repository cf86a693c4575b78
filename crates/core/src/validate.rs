//! Checks on names and values coming from the caller or another replica.

use blazedb_format::{Fields, MAX_DEPTH, Value};

use crate::error::{Error, Result};

/// Longest collection or field name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

fn name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("it is longer than 255 bytes");
    }
    let control = if name.is_ascii() {
        name.bytes().any(|b| b.is_ascii_control())
    } else {
        name.chars().any(char::is_control)
    };
    if control {
        return bad("it contains a control character");
    }
    Ok(())
}

/// Largest Lamport time or sequence number accepted from another replica. Clocks are stored
/// as SQLite integers (`i64`) and go on counting here, so an absurd value from a peer (no
/// replica reaches 2^62 writes) is refused rather than stored as a negative number, which
/// would leave the file unopenable.
pub const MAX_REMOTE_CLOCK: u64 = 1 << 62;

/// A Lamport time or sequence number from another replica.
pub fn remote_clock(what: &str, value: u64) -> Result<()> {
    if value > MAX_REMOTE_CLOCK {
        return Err(Error::InvalidValue {
            field: what.to_owned(),
            reason: format!("{value} is above the largest accepted clock value 2^62"),
        });
    }
    Ok(())
}

pub fn collection_name(n: &str) -> Result<()> {
    name("collection name", n)
}

pub fn field_name(n: &str) -> Result<()> {
    name("field name", n)?;
    if n == "id" {
        return Err(Error::InvalidName {
            what: "field name",
            name: n.to_owned(),
            reason: "\"id\" is reserved for the record id",
        });
    }
    Ok(())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

pub fn fields(fields: &Fields) -> Result<()> {
    for (k, v) in fields {
        field(k, v)?;
    }
    Ok(())
}

/// One field's name and value (for field storage other than [`Fields`], e.g. record states).
pub fn field(name: &str, value: &Value) -> Result<()> {
    field_name(name)?;
    if depth(value) > MAX_DEPTH {
        return Err(Error::InvalidValue {
            field: name.to_owned(),
            reason: format!("arrays and maps nest deeper than {MAX_DEPTH} levels"),
        });
    }
    Ok(())
}
