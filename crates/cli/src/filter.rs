//! `--where`: Mongo-style JSON filters mapped to [`Filter`], in the language of
//! [`blazedb_access`] (shared with the server's access rules), without context variables.
//!
//! `{"status": "open", "priority": {"$gt": 2}}` is `status = "open" AND priority > 2`. Values
//! use the JSON mapping of [`crate::json`]; on the field `"id"` a UUID string is read as a UUID.

use blazedb_core::Filter;

use crate::json;

/// Parses the text of `--where`. An empty object (`{}`) matches everything: `None`.
pub fn parse(text: &str) -> Result<Option<Filter>, String> {
    let json = json::parse(text).map_err(|e| format!("--where: {e}"))?;
    let filter = blazedb_access::parse_query(&json).map_err(|e| format!("--where: {e}"))?;
    Ok(match filter {
        Filter::And(list) if list.is_empty() => None,
        f => Some(f),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use blazedb_core::{Date, Uuid, Value};

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
