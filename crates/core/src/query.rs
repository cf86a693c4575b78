//! Queries: filters, ordering, paging, and a planner that uses secondary indexes.
//!
//! A query's result never depends on whether an index exists: the planner only narrows the set
//! of candidate records, and every candidate is checked against the whole filter. The property
//! test `tests/query_props.rs` holds the engine to that against a naive in-memory filter.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::ops::Bound;

use blazedb_format::{Record, Value, ValueClass, class_prefix, decode_record_state, sort_key};
use rusqlite::params;
use uuid::Uuid;

use crate::db::{Core, Database};
use crate::error::{Error, Result};
use crate::read::{field_value, uuid_from};

/// A condition on records. Field `"id"` is the record id; a missing field reads as `Null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Equal under [`Value::total_cmp`] (so `Int(3)` equals `Double(3.0)`).
    Eq(String, Value),
    NotEq(String, Value),
    /// Greater than; like the other range filters it only matches values of the operand's
    /// class (numbers with numbers, strings with strings, …).
    Gt(String, Value),
    Gte(String, Value),
    Lt(String, Value),
    Lte(String, Value),
    /// Equal to any of the values.
    In(String, Vec<Value>),
    /// The field is a string containing this substring.
    Contains(String, String),
    /// The field is `Null` or missing.
    IsNull(String),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    /// The fields the filter reads, each as the first part of its dotted path.
    pub fn fields(&self) -> std::collections::BTreeSet<&str> {
        fn walk<'a>(f: &'a Filter, out: &mut std::collections::BTreeSet<&'a str>) {
            match f {
                Filter::And(all) | Filter::Or(all) => all.iter().for_each(|f| walk(f, out)),
                Filter::Not(inner) => walk(inner, out),
                leaf => {
                    if let Some(field) = filter_field(leaf) {
                        out.insert(field.split('.').next().unwrap_or(field));
                    }
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(self, &mut out);
        out
    }

    pub fn eq(field: &str, v: impl Into<Value>) -> Filter {
        Filter::Eq(field.into(), v.into())
    }
    pub fn not_eq(field: &str, v: impl Into<Value>) -> Filter {
        Filter::NotEq(field.into(), v.into())
    }
    pub fn gt(field: &str, v: impl Into<Value>) -> Filter {
        Filter::Gt(field.into(), v.into())
    }
    pub fn gte(field: &str, v: impl Into<Value>) -> Filter {
        Filter::Gte(field.into(), v.into())
    }
    pub fn lt(field: &str, v: impl Into<Value>) -> Filter {
        Filter::Lt(field.into(), v.into())
    }
    pub fn lte(field: &str, v: impl Into<Value>) -> Filter {
        Filter::Lte(field.into(), v.into())
    }
    pub fn is_in(field: &str, values: impl IntoIterator<Item = impl Into<Value>>) -> Filter {
        Filter::In(field.into(), values.into_iter().map(Into::into).collect())
    }
    pub fn contains(field: &str, needle: &str) -> Filter {
        Filter::Contains(field.into(), needle.into())
    }
    pub fn is_null(field: &str) -> Filter {
        Filter::IsNull(field.into())
    }
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::And(mut list) => {
                list.push(other);
                Filter::And(list)
            }
            f => Filter::And(vec![f, other]),
        }
    }
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::Or(mut list) => {
                list.push(other);
                Filter::Or(list)
            }
            f => Filter::Or(vec![f, other]),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }

    /// Does the record match? This is the reference semantics every plan must agree with.
    pub fn matches(&self, record: &Record) -> bool {
        let get = |f: &str| field_value(&record.fields, &record.id, f);
        let range = |f: &str, v: &Value, ok: fn(Ordering) -> bool| {
            let x = get(f);
            x.class() == v.class() && v.class() != ValueClass::Null && ok(x.total_cmp(v))
        };
        match self {
            Filter::Eq(f, v) => get(f).total_eq(v),
            Filter::NotEq(f, v) => !get(f).total_eq(v),
            Filter::Gt(f, v) => range(f, v, |o| o == Ordering::Greater),
            Filter::Gte(f, v) => range(f, v, |o| o != Ordering::Less),
            Filter::Lt(f, v) => range(f, v, |o| o == Ordering::Less),
            Filter::Lte(f, v) => range(f, v, |o| o != Ordering::Greater),
            Filter::In(f, vs) => {
                let x = get(f);
                vs.iter().any(|v| x.total_eq(v))
            }
            Filter::Contains(f, needle) => {
                matches!(get(f).as_ref(), Value::String(s) if s.contains(needle.as_str()))
            }
            Filter::IsNull(f) => matches!(get(f).as_ref(), Value::Null),
            Filter::And(list) => list.iter().all(|x| x.matches(record)),
            Filter::Or(list) => list.iter().any(|x| x.matches(record)),
            Filter::Not(x) => !x.matches(record),
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

/// A key range in an index, over sort keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    pub lower: Bound<Vec<u8>>,
    pub upper: Bound<Vec<u8>>,
}

/// How a query will find its candidate records.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Read every record of the collection.
    FullScan { collection: String },
    /// Read records by id (a filter on `"id"`).
    IdLookup { collection: String, ids: usize },
    /// Read candidates from the index on `field`, then check the whole filter.
    IndexScan {
        collection: String,
        field: String,
        /// The filter the index answers, e.g. `= 3` or `> "b"`.
        condition: String,
        ranges: Vec<KeyRange>,
    },
}

impl Plan {
    /// Does this plan use a secondary index?
    pub fn uses_index(&self) -> bool {
        matches!(self, Plan::IndexScan { .. })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::FullScan { collection } => write!(f, "FULL SCAN {collection}"),
            Plan::IdLookup { collection, ids } => write!(f, "ID LOOKUP {collection} ({ids} ids)"),
            Plan::IndexScan {
                collection,
                field,
                condition,
                ranges,
            } => write!(
                f,
                "INDEX SCAN {collection}.{field} ({field} {condition}; {} key range{})",
                ranges.len(),
                if ranges.len() == 1 { "" } else { "s" }
            ),
        }
    }
}

/// A query on one collection, built fluently and run with [`Query::run`].
#[derive(Debug, Clone)]
pub struct Query<'db> {
    db: &'db Database,
    pub(crate) collection: String,
    filter: Option<Filter>,
    order: Vec<(String, Direction)>,
    limit: Option<usize>,
    offset: usize,
}

impl Database {
    /// Starts a query on `collection`.
    ///
    /// ```
    /// # use blazedb_core::{Database, Direction, Filter, fields};
    /// let db = Database::in_memory()?;
    /// db.insert("bugs", fields! { "title" => "Crash", "priority" => 1 })?;
    /// db.insert("bugs", fields! { "title" => "Typo", "priority" => 3 })?;
    /// db.create_index("bugs", "priority")?;
    /// let q = db.query("bugs").filter(Filter::lt("priority", 2)).order_by("title", Direction::Asc);
    /// assert!(q.explain()?.uses_index());
    /// assert_eq!(q.run()?.len(), 1);
    /// # Ok::<(), blazedb_core::Error>(())
    /// ```
    pub fn query(&self, collection: &str) -> Query<'_> {
        Query {
            db: self,
            collection: collection.into(),
            filter: None,
            order: Vec::new(),
            limit: None,
            offset: 0,
        }
    }

    /// Creates the index on `collection.field` unless it exists: true when it was created now.
    /// The call an application makes at every start.
    pub fn ensure_index(&self, collection: &str, field: &str) -> Result<bool> {
        match self.create_index(collection, field) {
            Ok(()) => Ok(true),
            Err(Error::IndexExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a secondary index on `collection.field` and fills it from existing records.
    /// Fails with [`Error::IndexExists`] when there is one ([`Database::ensure_index`] does not).
    pub fn create_index(&self, collection: &str, field: &str) -> Result<()> {
        if field != "id" {
            crate::validate::field_name(field)?;
        }
        self.transaction(|tx| {
            let coll = tx
                .core
                .collection(collection, true)?
                .ok_or_else(|| Error::InvalidQuery(format!("no collection {collection:?}")))?;
            if coll.indexes.iter().any(|i| i.field == field) {
                return Err(Error::IndexExists {
                    collection: collection.into(),
                    field: field.into(),
                });
            }
            let conn = &tx.core.conn;
            conn.execute(
                "INSERT INTO indexes (coll, field) VALUES (?1, ?2)",
                params![coll.id, field],
            )?;
            let index_id = conn.last_insert_rowid();
            {
                let mut insert = conn.prepare_cached(
                    "INSERT INTO index_entries (idx, key, id) VALUES (?1, ?2, ?3)",
                )?;
                let mut stmt =
                    conn.prepare("SELECT id, state FROM records WHERE coll = ?1 AND live = 1")?;
                let mut rows = stmt.query([coll.id])?;
                while let Some(row) = rows.next()? {
                    let raw_id = row.get_ref(0)?.as_blob()?;
                    let id = uuid_from(raw_id)?;
                    let state = decode_record_state(row.get_ref(1)?.as_blob()?)?;
                    if let Some(fields) = state.visible_fields() {
                        let key = sort_key(&field_value(&fields, &id, field));
                        insert.execute(params![index_id, key, raw_id])?;
                    }
                }
            }
            tx.core.forget_schema();
            Ok(())
        })
    }

    /// Removes the index on `collection.field`.
    pub fn drop_index(&self, collection: &str, field: &str) -> Result<()> {
        self.transaction(|tx| {
            let missing = || Error::IndexMissing {
                collection: collection.into(),
                field: field.into(),
            };
            let coll = tx.core.collection(collection, false)?.ok_or_else(missing)?;
            let index = coll
                .indexes
                .iter()
                .find(|i| i.field == field)
                .ok_or_else(missing)?;
            tx.core
                .conn
                .execute("DELETE FROM index_entries WHERE idx = ?1", [index.id])?;
            tx.core
                .conn
                .execute("DELETE FROM indexes WHERE id = ?1", [index.id])?;
            tx.core.forget_schema();
            Ok(())
        })
    }

    /// The indexed fields of a collection.
    pub fn indexes(&self, collection: &str) -> Result<Vec<String>> {
        let mut core = self.read()?;
        Ok(core
            .collection(collection, false)?
            .map(|c| c.indexes.iter().map(|i| i.field.clone()).collect())
            .unwrap_or_default())
    }
}

impl<'db> Query<'db> {
    /// Adds a filter (several calls are combined with AND).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(match self.filter.take() {
            Some(f) => f.and(filter),
            None => filter,
        });
        self
    }

    /// Sorts by a field; several calls sort by several keys. Ties always end in id order, so
    /// results are deterministic.
    pub fn order_by(mut self, field: &str, direction: Direction) -> Self {
        self.order.push((field.into(), direction));
        self
    }

    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    pub fn offset(mut self, n: usize) -> Self {
        self.offset = n;
        self
    }

    /// How the query would run.
    pub fn explain(&self) -> Result<Plan> {
        let mut core = self.db.read()?;
        self.plan(&mut core)
    }

    fn plan(&self, core: &mut Core) -> Result<Plan> {
        let collection = self.collection.clone();
        let Some(filter) = &self.filter else {
            return Ok(Plan::FullScan { collection });
        };
        let indexed: Vec<String> = core
            .collection(&self.collection, false)?
            .map(|c| c.indexes.iter().map(|i| i.field.clone()).collect())
            .unwrap_or_default();
        let conjuncts: Vec<&Filter> = match filter {
            Filter::And(list) => list.iter().collect(),
            f => vec![f],
        };
        // Best candidate: id lookup, then equality, then IN, then a range.
        let mut best: Option<(u8, Plan)> = None;
        for c in conjuncts {
            let Some((rank, plan)) = candidate(&collection, c, &indexed) else {
                continue;
            };
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, plan));
            }
        }
        Ok(best
            .map(|(_, p)| p)
            .unwrap_or(Plan::FullScan { collection }))
    }

    /// Runs the query.
    pub fn run(&self) -> Result<Vec<Record>> {
        let mut core = self.db.read()?;
        let plan = self.plan(&mut core)?;
        let mut out = Vec::new();
        let filter = self.filter.as_ref();
        let matches = |r: &Record| filter.is_none_or(|f| f.matches(r));
        match &plan {
            Plan::FullScan { .. } => {
                // Without ordering the scan is already in id order, so paging can stop early.
                let stop_at = match (self.order.is_empty(), self.limit) {
                    (true, Some(l)) => Some(self.offset.saturating_add(l)),
                    _ => None,
                };
                core.scan(&self.collection, |r| {
                    if matches(&r) {
                        out.push(r);
                    }
                    Ok(stop_at.is_none_or(|s| out.len() < s))
                })?;
            }
            Plan::IndexScan { field, ranges, .. } => {
                index_records(&mut core, &self.collection, field, ranges, |r| {
                    if matches(&r) {
                        out.push(r);
                    }
                })?;
            }
            Plan::IdLookup { .. } => {
                for id in self.ids_from_filter() {
                    if let Some(r) = core.get(&self.collection, id)?
                        && matches(&r)
                    {
                        out.push(r);
                    }
                }
            }
        }
        drop(core);
        self.sort_and_page(&mut out);
        Ok(out)
    }

    /// Number of matching records (ignores limit and offset).
    pub fn count(&self) -> Result<usize> {
        let q = Query {
            limit: None,
            offset: 0,
            order: Vec::new(),
            ..self.clone()
        };
        Ok(q.run()?.len())
    }

    fn ids_from_filter(&self) -> Vec<Uuid> {
        let conjuncts: Vec<&Filter> = match &self.filter {
            Some(Filter::And(list)) => list.iter().collect(),
            Some(f) => vec![f],
            None => vec![],
        };
        for c in conjuncts {
            match c {
                Filter::Eq(f, Value::Uuid(u)) if f == "id" => return vec![*u],
                Filter::In(f, vs) if f == "id" => {
                    let mut seen = HashSet::new();
                    return vs
                        .iter()
                        .filter_map(|v| match v {
                            Value::Uuid(u) if seen.insert(*u) => Some(*u),
                            _ => None,
                        })
                        .collect();
                }
                _ => {}
            }
        }
        Vec::new()
    }

    fn sort_and_page(&self, out: &mut Vec<Record>) {
        out.sort_by(|a, b| {
            for (field, dir) in &self.order {
                let x = field_value(&a.fields, &a.id, field);
                let y = field_value(&b.fields, &b.id, field);
                let c = x.total_cmp(&y);
                let c = if *dir == Direction::Desc {
                    c.reverse()
                } else {
                    c
                };
                if c != Ordering::Equal {
                    return c;
                }
            }
            a.id.cmp(&b.id)
        });
        let start = self.offset.min(out.len());
        out.drain(..start);
        if let Some(l) = self.limit {
            out.truncate(l);
        }
    }
}

/// The plan a single conjunct allows, with its rank (lower is better).
fn candidate(collection: &str, f: &Filter, indexed: &[String]) -> Option<(u8, Plan)> {
    let index_scan = |field: &str, condition: String, ranges: Vec<KeyRange>| Plan::IndexScan {
        collection: collection.into(),
        field: field.into(),
        condition,
        ranges,
    };
    let point = |v: &Value| {
        let k = sort_key(v);
        KeyRange {
            lower: Bound::Included(k.clone()),
            upper: Bound::Included(k),
        }
    };
    let class_start = |v: &Value| vec![class_prefix(v.class())];
    let class_end = |v: &Value| vec![class_prefix(v.class()) + 1];
    match f {
        Filter::Eq(field, Value::Uuid(_)) if field == "id" => Some((
            0,
            Plan::IdLookup {
                collection: collection.into(),
                ids: 1,
            },
        )),
        Filter::In(field, vs) if field == "id" => Some((
            1,
            Plan::IdLookup {
                collection: collection.into(),
                ids: vs.iter().filter(|v| matches!(v, Value::Uuid(_))).count(),
            },
        )),
        _ if filter_field(f).is_none_or(|field| !indexed.iter().any(|i| i == field)) => None,
        Filter::Eq(field, v) => Some((2, index_scan(field, format!("= {v}"), vec![point(v)]))),
        Filter::IsNull(field) => Some((
            2,
            index_scan(field, "IS NULL".into(), vec![point(&Value::Null)]),
        )),
        Filter::In(field, vs) => {
            let mut ranges: Vec<KeyRange> = vs.iter().map(point).collect();
            ranges.dedup_by(|a, b| a.lower == b.lower);
            Some((
                3,
                index_scan(field, format!("IN ({} values)", vs.len()), ranges),
            ))
        }
        Filter::Gt(field, v)
        | Filter::Gte(field, v)
        | Filter::Lt(field, v)
        | Filter::Lte(field, v)
            if v.class() != ValueClass::Null =>
        {
            let k = sort_key(v);
            let (op, range) = match f {
                Filter::Gt(..) => (
                    ">",
                    KeyRange {
                        lower: Bound::Excluded(k),
                        upper: Bound::Excluded(class_end(v)),
                    },
                ),
                Filter::Gte(..) => (
                    ">=",
                    KeyRange {
                        lower: Bound::Included(k),
                        upper: Bound::Excluded(class_end(v)),
                    },
                ),
                Filter::Lt(..) => (
                    "<",
                    KeyRange {
                        lower: Bound::Included(class_start(v)),
                        upper: Bound::Excluded(k),
                    },
                ),
                _ => (
                    "<=",
                    KeyRange {
                        lower: Bound::Included(class_start(v)),
                        upper: Bound::Included(k),
                    },
                ),
            };
            Some((4, index_scan(field, format!("{op} {v}"), vec![range])))
        }
        _ => None,
    }
}

fn filter_field(f: &Filter) -> Option<&str> {
    match f {
        Filter::Eq(x, _)
        | Filter::NotEq(x, _)
        | Filter::Gt(x, _)
        | Filter::Gte(x, _)
        | Filter::Lt(x, _)
        | Filter::Lte(x, _)
        | Filter::In(x, _)
        | Filter::Contains(x, _)
        | Filter::IsNull(x) => Some(x),
        _ => None,
    }
}

/// Calls `f` with each visible record in the given key ranges of the index on `field`, once
/// per record. Index entries and records are read in one statement per range.
fn index_records(
    core: &mut Core,
    collection: &str,
    field: &str,
    ranges: &[KeyRange],
    mut f: impl FnMut(Record),
) -> Result<()> {
    let Some(coll) = core.collection(collection, false)? else {
        return Ok(());
    };
    let Some(index) = coll.indexes.iter().find(|i| i.field == field) else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    for range in ranges {
        let (lower_op, lower) = match &range.lower {
            Bound::Included(k) => (">=", k.as_slice()),
            Bound::Excluded(k) => (">", k.as_slice()),
            Bound::Unbounded => (">=", &[][..]),
        };
        let (upper_op, upper) = match &range.upper {
            Bound::Included(k) => ("<=", k.as_slice()),
            Bound::Excluded(k) => ("<", k.as_slice()),
            Bound::Unbounded => ("<", &[0xFFu8][..]),
        };
        let sql = format!(
            "SELECT r.id, r.state FROM index_entries e JOIN records r ON r.coll = ?4 AND r.id = e.id \
             WHERE e.idx = ?1 AND e.key {lower_op} ?2 AND e.key {upper_op} ?3"
        );
        let mut stmt = core.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![index.id, lower, upper, coll.id])?;
        while let Some(row) = rows.next()? {
            let id = uuid_from(row.get_ref(0)?.as_blob()?)?;
            if !seen.insert(id) {
                continue;
            }
            let state = decode_record_state(row.get_ref(1)?.as_blob()?)?;
            if let Some(fields) = state.visible_fields() {
                f(Record { id, fields });
            }
        }
    }
    Ok(())
}
