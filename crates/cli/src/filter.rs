//! `--where`: Mongo-style JSON filters mapped to [`Filter`].
//!
//! `{"status": "open", "priority": {"$gt": 2}}` is `status = "open" AND priority > 2`. Values
//! use the JSON mapping of [`crate::json`]; on the field `"id"` a UUID string is read as a UUID.

use blazedb_core::{Filter, Value};
use serde_json::{Map, Value as Json};

use crate::json::{self, JsonError};

const OPERATORS: &str = "$eq, $ne, $gt, $gte, $lt, $lte, $in, $contains, $null";
const COMBINATORS: &str = "$and, $or, $not";

/// Parses the text of `--where`. An empty object (`{}`) matches everything: `None`.
pub fn parse(text: &str) -> Result<Option<Filter>, String> {
    let json = json::parse(text).map_err(|e| format!("--where: {e}"))?;
    let filter = from_json(&json).map_err(|e| format!("--where: {e}"))?;
    Ok(match filter {
        Filter::And(list) if list.is_empty() => None,
        f => Some(f),
    })
}

/// A filter from a JSON object; several entries are combined with AND.
pub fn from_json(json: &Json) -> Result<Filter, String> {
    let Json::Object(map) = json else {
        return Err(format!("a filter must be a JSON object, found {json}"));
    };
    let mut parts = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "$and" | "$or" => {
                let Json::Array(items) = value else {
                    return Err(format!("{key} takes an array of filters"));
                };
                let list = items.iter().map(from_json).collect::<Result<Vec<_>, _>>()?;
                parts.push(if key == "$and" {
                    Filter::And(list)
                } else {
                    Filter::Or(list)
                });
            }
            "$not" => parts.push(Filter::Not(Box::new(from_json(value)?))),
            k if k.starts_with('$') && !k.starts_with("$$") => {
                return Err(format!(
                    "unknown operator {k:?} at the top of a filter (expected a field name or \
                     one of {COMBINATORS})"
                ));
            }
            _ => parts.extend(field_filters(unescape(key), value)?),
        }
    }
    Ok(match parts.len() {
        1 => parts.pop().unwrap_or(Filter::And(Vec::new())),
        _ => Filter::And(parts),
    })
}

fn unescape(key: &str) -> &str {
    match key.strip_prefix("$$") {
        Some(_) => key.get(1..).unwrap_or(key),
        None => key,
    }
}

/// Is this object an operator object (`{"$gt": 2, …}`) rather than a value?
fn is_operator_object(map: &Map<String, Json>) -> bool {
    map.keys().any(|k| {
        k.starts_with('$')
            && !k.starts_with("$$")
            && !matches!(k.as_str(), "$uuid" | "$date" | "$bytes" | "$double")
    })
}

fn field_filters(field: &str, value: &Json) -> Result<Vec<Filter>, String> {
    let map = match value {
        Json::Object(map) if is_operator_object(map) => map,
        v => return Ok(vec![Filter::Eq(field.into(), operand(field, v)?)]),
    };
    let mut out = Vec::new();
    for (op, v) in map {
        let f = field.to_owned();
        out.push(match op.as_str() {
            "$eq" => Filter::Eq(f, operand(field, v)?),
            "$ne" => Filter::NotEq(f, operand(field, v)?),
            "$gt" => Filter::Gt(f, operand(field, v)?),
            "$gte" => Filter::Gte(f, operand(field, v)?),
            "$lt" => Filter::Lt(f, operand(field, v)?),
            "$lte" => Filter::Lte(f, operand(field, v)?),
            "$in" => {
                let Json::Array(items) = v else {
                    return Err(format!("{field}: $in takes an array of values"));
                };
                let values = items
                    .iter()
                    .map(|x| operand(field, x))
                    .collect::<Result<Vec<_>, _>>()?;
                Filter::In(f, values)
            }
            "$contains" => match v {
                Json::String(s) => Filter::Contains(f, s.clone()),
                _ => return Err(format!("{field}: $contains takes a string")),
            },
            "$null" => match v {
                Json::Bool(true) => Filter::IsNull(f),
                Json::Bool(false) => Filter::Not(Box::new(Filter::IsNull(f))),
                _ => return Err(format!("{field}: $null takes true or false")),
            },
            other if other.starts_with('$') && !other.starts_with("$$") => {
                return Err(format!(
                    "{field}: unknown operator {other:?} (expected one of {OPERATORS})"
                ));
            }
            other => {
                return Err(format!(
                    "{field}: cannot mix operators and the plain key {other:?} in one object"
                ));
            }
        });
    }
    Ok(out)
}

/// The value an operator compares with. On `"id"` a UUID string means the UUID.
fn operand(field: &str, v: &Json) -> Result<Value, String> {
    if field == "id"
        && let Json::String(s) = v
        && let Ok(u) = blazedb_core::Uuid::parse_str(s)
    {
        return Ok(Value::Uuid(u));
    }
    json::to_value(v).map_err(|e: JsonError| format!("{field}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use blazedb_core::{Date, Uuid};

    fn p(s: &str) -> Filter {
        parse(s).unwrap().unwrap()
    }

    #[test]
    fn plain_values_are_equality() {
        assert_eq!(p(r#"{"status":"open"}"#), Filter::eq("status", "open"));
        assert_eq!(
            p(r#"{"status":"open","n":2}"#),
            Filter::And(vec![Filter::eq("n", 2), Filter::eq("status", "open")])
        );
        assert_eq!(
            p(r#"{"tags":{"a":1}}"#),
            Filter::Eq("tags".into(), Value::Map(blazedb_core::fields! {"a" => 1}))
        );
    }

    #[test]
    fn every_operator_maps_to_its_filter() {
        assert_eq!(p(r#"{"p":{"$eq":1}}"#), Filter::eq("p", 1));
        assert_eq!(p(r#"{"p":{"$ne":1}}"#), Filter::not_eq("p", 1));
        assert_eq!(p(r#"{"p":{"$gt":1}}"#), Filter::gt("p", 1));
        assert_eq!(p(r#"{"p":{"$gte":1.5}}"#), Filter::gte("p", 1.5));
        assert_eq!(p(r#"{"p":{"$lt":1}}"#), Filter::lt("p", 1));
        assert_eq!(p(r#"{"p":{"$lte":1}}"#), Filter::lte("p", 1));
        assert_eq!(
            p(r#"{"p":{"$in":[1,"a"]}}"#),
            Filter::In("p".into(), vec![1.into(), "a".into()])
        );
        assert_eq!(p(r#"{"p":{"$contains":"x"}}"#), Filter::contains("p", "x"));
        assert_eq!(p(r#"{"p":{"$null":true}}"#), Filter::is_null("p"));
        assert_eq!(p(r#"{"p":{"$null":false}}"#), Filter::is_null("p").not());
        assert_eq!(
            p(r#"{"p":{"$gt":1,"$lt":5}}"#),
            Filter::And(vec![Filter::gt("p", 1), Filter::lt("p", 5)])
        );
    }

    #[test]
    fn combinators_nest() {
        assert_eq!(
            p(r#"{"$or":[{"a":1},{"$not":{"b":2}}]}"#),
            Filter::Or(vec![Filter::eq("a", 1), Filter::eq("b", 2).not()])
        );
        assert_eq!(
            p(r#"{"$and":[{"a":1}]}"#),
            Filter::And(vec![Filter::eq("a", 1)])
        );
    }

    #[test]
    fn typed_values_are_operands_not_operators() {
        assert_eq!(
            p(r#"{"at":{"$gt":{"$date":"1970-01-01T00:00:01Z"}}}"#),
            Filter::gt("at", Date::from_unix_millis(1000))
        );
        assert_eq!(
            p(r#"{"at":{"$date":"1970-01-01T00:00:01Z"}}"#),
            Filter::eq("at", Date::from_unix_millis(1000))
        );
    }

    #[test]
    fn id_strings_are_uuids() {
        let u = Uuid::parse_str("0190c0de-7f00-7abc-8def-0123456789ab").unwrap();
        assert_eq!(
            p(r#"{"id":"0190c0de-7f00-7abc-8def-0123456789ab"}"#),
            Filter::eq("id", u)
        );
        assert_eq!(
            p(r#"{"id":{"$in":["0190c0de-7f00-7abc-8def-0123456789ab"]}}"#),
            Filter::In("id".into(), vec![u.into()])
        );
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert_eq!(parse("{}").unwrap(), None);
    }

    #[test]
    fn mistakes_are_clear_errors() {
        let e = |s: &str| parse(s).unwrap_err();
        assert!(e(r#"{"p":{"$regex":"x"}}"#).contains("unknown operator \"$regex\""));
        assert!(e(r#"{"$nor":[]}"#).contains("unknown operator \"$nor\""));
        assert!(e(r#"{"p":{"$in":1}}"#).contains("$in takes an array"));
        assert!(e(r#"{"p":{"$null":1}}"#).contains("$null takes true or false"));
        assert!(e(r#"{"p":{"$contains":1}}"#).contains("$contains takes a string"));
        assert!(e(r#"{"p":{"$gt":1,"x":2}}"#).contains("cannot mix"));
        assert!(e(r#"{"$and":{}}"#).contains("$and takes an array"));
        assert!(e("[1]").contains("must be a JSON object"));
        assert!(e("{").starts_with("--where: invalid JSON"));
    }
}
