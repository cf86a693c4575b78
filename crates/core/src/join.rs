//! Joins across two databases (or two collections of one): `bugs.authorId = users.id`.

use std::collections::HashMap;

use blazedb_format::{Record, Value, sort_key};

use crate::db::Database;
use crate::error::Result;
use crate::query::{Filter, Query};
use crate::read::field_value;

/// Inner join keeps only left records with a match; left join keeps every left record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
}

/// One row of a join: a left record and its matching right record (`None` in a left join
/// when nothing matched).
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub left: Record,
    pub right: Option<Record>,
}

/// A join of a query's results with records of another collection, possibly in another
/// database.
#[derive(Debug, Clone)]
pub struct Join<'a> {
    left: Query<'a>,
    right_db: &'a Database,
    right_collection: String,
    left_field: String,
    right_field: String,
    kind: JoinKind,
}

impl<'a> Query<'a> {
    /// Joins each result with the records of `right_collection` in `right_db` whose
    /// `right_field` equals this record's `left_field` (`"id"` names the record id). `Null`
    /// never matches. Rows come in the query's order, then the right records' id order.
    ///
    /// ```
    /// # use blazedb_core::{Database, JoinKind, fields};
    /// let bugs = Database::in_memory()?;
    /// let users = Database::in_memory()?;
    /// let ada = users.insert("users", fields! { "name" => "Ada" })?;
    /// bugs.insert("bugs", fields! { "title" => "Crash", "authorId" => ada })?;
    /// let rows = bugs.query("bugs").join(&users, "users", "authorId", "id").run()?;
    /// assert_eq!(rows[0].right.as_ref().unwrap().get("name"), Some(&"Ada".into()));
    /// # Ok::<(), blazedb_core::Error>(())
    /// ```
    pub fn join(
        self,
        right_db: &'a Database,
        right_collection: &str,
        left_field: &str,
        right_field: &str,
    ) -> Join<'a> {
        Join {
            left: self,
            right_db,
            right_collection: right_collection.into(),
            left_field: left_field.into(),
            right_field: right_field.into(),
            kind: JoinKind::Inner,
        }
    }
}

impl Join<'_> {
    /// Sets inner or left join (inner by default).
    pub fn kind(mut self, kind: JoinKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn run(&self) -> Result<Vec<Joined>> {
        let left = self.left.run()?;
        let mut keys: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in &left {
            let v = field_value(&r.fields, &r.id, &self.left_field);
            if !matches!(v.as_ref(), Value::Null) && seen.insert(sort_key(&v)) {
                keys.push(v.into_owned());
            }
        }
        // One query for all keys: an id lookup or an indexed IN when the right side has one.
        let right = if keys.is_empty() {
            Vec::new()
        } else {
            self.right_db
                .query(&self.right_collection)
                .filter(Filter::In(self.right_field.clone(), keys))
                .run()?
        };
        let mut by_key: HashMap<Vec<u8>, Vec<Record>> = HashMap::new();
        for r in right {
            let k = sort_key(&field_value(&r.fields, &r.id, &self.right_field));
            by_key.entry(k).or_default().push(r);
        }
        let mut rows = Vec::new();
        for l in left {
            let v = field_value(&l.fields, &l.id, &self.left_field);
            let matches = match v.as_ref() {
                Value::Null => None,
                v => by_key.get(&sort_key(v)),
            };
            match matches {
                Some(rs) if !rs.is_empty() => {
                    for r in rs {
                        rows.push(Joined {
                            left: l.clone(),
                            right: Some(r.clone()),
                        });
                    }
                }
                _ if self.kind == JoinKind::Left => rows.push(Joined {
                    left: l,
                    right: None,
                }),
                _ => {}
            }
        }
        Ok(rows)
    }
}
