//! Property test: query results are identical with and without indexes, and equal to a naive
//! in-memory filter, over random records, random histories and random queries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use blazedb_core::{Database, Date, Direction, Fields, Filter, Record, Uuid, Value};
use proptest::prelude::*;

const FIELDS: [&str; 4] = ["a", "b", "s", "id"];

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::Int),
        // Doubles that collide with ints (2.0 == 2) and ones in between.
        (-6i32..8).prop_map(|h| Value::Double(f64::from(h) / 2.0)),
        prop::sample::select(vec!["", "a", "ab", "b", "ba", "a\u{0}"]).prop_map(Value::from),
        (0u128..3).prop_map(|n| Value::Uuid(Uuid::from_u128(n))),
        (-2i64..3).prop_map(|d| Value::Date(Date::from_unix_millis(d))),
        prop::collection::vec(0u8..3, 0..3).prop_map(Value::Bytes),
        prop::collection::vec((-1i64..2).prop_map(Value::Int), 0..3).prop_map(Value::Array),
    ]
}

fn record_fields() -> impl Strategy<Value = Fields> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "s"]),
        small_value(),
        0..4,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[derive(Debug, Clone)]
enum Step {
    Insert(Fields),
    Update(usize, Fields),
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => record_fields().prop_map(Step::Insert),
        2 => (any::<usize>(), record_fields()).prop_map(|(i, f)| Step::Update(i, f)),
        1 => any::<usize>().prop_map(Step::Delete),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop::sample::select(FIELDS.to_vec()).prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Filter> {
    prop_oneof![
        (field(), small_value()).prop_map(|(f, v)| Filter::Eq(f, v)),
        (field(), small_value()).prop_map(|(f, v)| Filter::NotEq(f, v)),
        (field(), small_value()).prop_map(|(f, v)| Filter::Gt(f, v)),
        (field(), small_value()).prop_map(|(f, v)| Filter::Gte(f, v)),
        (field(), small_value()).prop_map(|(f, v)| Filter::Lt(f, v)),
        (field(), small_value()).prop_map(|(f, v)| Filter::Lte(f, v)),
        (field(), prop::collection::vec(small_value(), 0..4)).prop_map(|(f, v)| Filter::In(f, v)),
        (field(), prop::sample::select(vec!["", "a", "b"]))
            .prop_map(|(f, s)| Filter::Contains(f, s.into())),
        field().prop_map(Filter::IsNull),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

// --- The naive reference, written independently of the engine's evaluator. ---

fn get(r: &Record, f: &str) -> Value {
    if f == "id" {
        return Value::Uuid(r.id);
    }
    r.fields.get(f).cloned().unwrap_or(Value::Null)
}

fn same_class(a: &Value, b: &Value) -> bool {
    let class = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Double(_) => 2,
        Value::String(_) => 3,
        Value::Uuid(_) => 4,
        Value::Date(_) => 5,
        Value::Bytes(_) => 6,
        Value::Array(_) => 7,
        Value::Map(_) => 8,
    };
    class(a) == class(b)
}

fn naive(f: &Filter, r: &Record) -> bool {
    let cmp = |field: &str, v: &Value| {
        let x = get(r, field);
        (!matches!(v, Value::Null) && same_class(&x, v)).then(|| x.total_cmp(v))
    };
    match f {
        Filter::Eq(field, v) => get(r, field).total_cmp(v) == Ordering::Equal,
        Filter::NotEq(field, v) => get(r, field).total_cmp(v) != Ordering::Equal,
        Filter::Gt(field, v) => cmp(field, v) == Some(Ordering::Greater),
        Filter::Gte(field, v) => matches!(cmp(field, v), Some(Ordering::Greater | Ordering::Equal)),
        Filter::Lt(field, v) => cmp(field, v) == Some(Ordering::Less),
        Filter::Lte(field, v) => matches!(cmp(field, v), Some(Ordering::Less | Ordering::Equal)),
        Filter::In(field, vs) => vs
            .iter()
            .any(|v| get(r, field).total_cmp(v) == Ordering::Equal),
        Filter::Contains(field, s) => {
            matches!(get(r, field), Value::String(x) if x.contains(s.as_str()))
        }
        Filter::IsNull(field) => get(r, field) == Value::Null,
        Filter::And(l) => l.iter().all(|x| naive(x, r)),
        Filter::Or(l) => l.iter().any(|x| naive(x, r)),
        Filter::Not(x) => !naive(x, r),
    }
}

#[derive(Debug, Clone)]
struct QuerySpec {
    filter: Option<Filter>,
    order: Vec<(String, bool)>,
    limit: Option<usize>,
    offset: usize,
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        // Plain leaves and conjunctions of leaves are what the planner can use an index for, so
        // they are drawn often; arbitrary trees check everything else.
        prop::option::weighted(
            0.9,
            prop_oneof![
                3 => leaf(),
                3 => prop::collection::vec(leaf(), 1..4).prop_map(Filter::And),
                2 => filter(),
            ],
        ),
        prop::collection::vec((field(), any::<bool>()), 0..3),
        prop::option::of(0usize..6),
        0usize..4,
    )
        .prop_map(|(filter, order, limit, offset)| QuerySpec {
            filter,
            order,
            limit,
            offset,
        })
}

fn run(db: &Database, q: &QuerySpec) -> Vec<Record> {
    let mut query = db.query("t");
    if let Some(f) = &q.filter {
        query = query.filter(f.clone());
    }
    for (f, desc) in &q.order {
        query = query.order_by(
            f,
            if *desc {
                Direction::Desc
            } else {
                Direction::Asc
            },
        );
    }
    if let Some(l) = q.limit {
        query = query.limit(l);
    }
    query.offset(q.offset).run().unwrap()
}

fn naive_run(model: &BTreeMap<Uuid, Fields>, q: &QuerySpec) -> Vec<Record> {
    let mut out: Vec<Record> = model
        .iter()
        .map(|(id, f)| Record {
            id: *id,
            fields: f.clone(),
        })
        .filter(|r| q.filter.as_ref().is_none_or(|f| naive(f, r)))
        .collect();
    out.sort_by(|a, b| {
        q.order
            .iter()
            .map(|(f, desc)| {
                let c = get(a, f).total_cmp(&get(b, f));
                if *desc { c.reverse() } else { c }
            })
            .find(|c| *c != Ordering::Equal)
            .unwrap_or_else(|| a.id.cmp(&b.id))
    });
    out.into_iter()
        .skip(q.offset)
        .take(q.limit.unwrap_or(usize::MAX))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256, 10_000)))]

    #[test]
    fn queries_agree_with_and_without_indexes_and_with_a_naive_filter(
        steps in prop::collection::vec(step(), 1..40),
        queries in prop::collection::vec(query_spec(), 1..8),
        index_early in any::<bool>(),
    ) {
        let plain = Database::in_memory().unwrap();
        let indexed = Database::in_memory().unwrap();
        if index_early {
            for f in FIELDS { indexed.create_index("t", f).unwrap(); }
        }
        let mut model: BTreeMap<Uuid, Fields> = BTreeMap::new();
        let mut ids: Vec<Uuid> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            match s {
                Step::Insert(f) => {
                    let id = Uuid::from_u128(1000 + n as u128);
                    plain.insert_with_id("t", id, f.clone()).unwrap();
                    indexed.insert_with_id("t", id, f.clone()).unwrap();
                    model.insert(id, f.clone());
                    ids.push(id);
                }
                Step::Update(i, f) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if let Some(cur) = model.get_mut(&id) {
                        plain.update("t", id, f.clone()).unwrap();
                        indexed.update("t", id, f.clone()).unwrap();
                        cur.extend(f.clone());
                    }
                }
                Step::Delete(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if model.remove(&id).is_some() {
                        plain.delete("t", id).unwrap();
                        indexed.delete("t", id).unwrap();
                    }
                }
                _ => {}
            }
        }
        if !index_early {
            for f in FIELDS { indexed.create_index("t", f).unwrap(); }
        }
        for q in &queries {
            let expected = naive_run(&model, q);
            let a = run(&plain, q);
            let b = run(&indexed, q);
            prop_assert_eq!(&a, &expected, "without index: {:?}", q);
            prop_assert_eq!(&b, &expected, "with index ({}): {:?}", indexed.query("t").filter(q.filter.clone().unwrap_or(Filter::And(vec![]))).explain().unwrap(), q);
        }
    }
}
