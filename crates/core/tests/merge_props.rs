//! Property test: replicas that receive the same operations, in any order and with
//! duplicates, end with identical contents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use common::all_ops;

use blazedb_core::{Database, Error, Fields, Operation, Uuid, Value, fields};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn random_fields(rng: &mut StdRng) -> Fields {
    let mut f = Fields::new();
    for name in ["a", "b", "c"] {
        if rng.random_bool(0.5) {
            let v = match rng.random_range(0..3) {
                0 => Value::Int(rng.random_range(0..5)),
                1 => Value::from(["x", "y", "z"][rng.random_range(0..3)]),
                _ => Value::Null,
            };
            f.insert(name.into(), v);
        }
    }
    f
}

/// Delivers `ops` to `db` shuffled, with random duplicates, in random chunks.
fn deliver(db: &Database, mut ops: Vec<Operation>, rng: &mut StdRng) {
    let extra: Vec<Operation> = ops
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .cloned()
        .collect();
    ops.extend(extra);
    ops.shuffle(rng);
    while !ops.is_empty() {
        let n = rng.random_range(1..=ops.len());
        let chunk: Vec<Operation> = ops.drain(..n).collect();
        db.replication().apply_remote(&chunk).unwrap();
    }
}

fn run_history(seed: u64, replicas: usize, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dbs: Vec<Database> = (0..replicas)
        .map(|_| Database::in_memory().unwrap())
        .collect();
    let ids: Vec<Uuid> = (0..4).map(|n| Uuid::from_u128(n + 1)).collect();
    for _ in 0..steps {
        let r = rng.random_range(0..replicas);
        let db = &dbs[r];
        let id = ids[rng.random_range(0..ids.len())];
        let outcome = match rng.random_range(0..10) {
            0..=2 => db.insert_with_id("t", id, random_fields(&mut rng)),
            3..=5 => db.update("t", id, random_fields(&mut rng)),
            6 => db.delete("t", id),
            7 => db
                .insert("u", fields! {"n" => rng.random_range(0..3)})
                .map(|_| ()),
            _ => {
                // Partial sync: some of another replica's ops arrive early.
                let from = &dbs[rng.random_range(0..replicas)];
                let some: Vec<Operation> = all_ops(from)
                    .into_iter()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                deliver(db, some, &mut rng);
                Ok(())
            }
        };
        match outcome {
            Ok(()) | Err(Error::RecordExists { .. } | Error::RecordNotFound { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let everything: Vec<Operation> = dbs.iter().flat_map(all_ops).collect();
    for db in &dbs {
        deliver(db, everything.clone(), &mut rng);
    }
    let hashes: Vec<[u8; 32]> = dbs.iter().map(|d| d.content_hash().unwrap()).collect();
    let logs: Vec<usize> = dbs.iter().map(|d| all_ops(d).len()).collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "replicas diverged (seed {seed})"
    );
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "op logs differ in length: {logs:?}"
    );
    // And the contents are the same record by record, not just by hash.
    let contents: Vec<_> = dbs
        .iter()
        .map(|d| (d.fetch_all("t").unwrap(), d.fetch_all("u").unwrap()))
        .collect();
    assert!(contents.windows(2).all(|w| w[0] == w[1]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64, 3000)))]

    #[test]
    fn replicas_converge_whatever_the_delivery_order(
        seed in any::<u64>(),
        replicas in 3usize..=5,
        steps in 5usize..60,
    ) {
        run_history(seed, replicas, steps);
    }
}

#[test]
fn applying_the_same_operations_twice_changes_nothing() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    let id = a.insert("t", fields! {"x" => 1}).unwrap();
    a.update("t", id, fields! {"x" => 2}).unwrap();
    let ops = all_ops(&a);
    let first = b.replication().apply_remote(&ops).unwrap();
    let hash = b.content_hash().unwrap();
    let second = b.replication().apply_remote(&ops).unwrap();
    assert_eq!((first.applied, first.duplicates), (2, 0));
    assert_eq!((second.applied, second.duplicates), (0, 2));
    assert_eq!(b.content_hash().unwrap(), hash);
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());
}

#[test]
fn the_clock_advances_past_every_remote_operation() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    for i in 0..10 {
        a.insert("t", fields! {"i" => i}).unwrap();
    }
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    assert_eq!(b.replication().lamport(), 10);
    let id = b.insert("t", fields! {"i" => 99}).unwrap();
    let mine = b
        .replication()
        .oplog_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o.record == id)
        .unwrap();
    assert_eq!(mine.lamport, 11);
}

#[test]
fn a_concurrent_update_does_not_bring_back_a_deleted_record() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    let id = a.insert("t", fields! {"x" => 1}).unwrap();
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    a.delete("t", id).unwrap();
    // b has not seen the delete, and its update carries a higher Lamport time.
    b.update("t", id, fields! {"x" => 2}).unwrap();
    b.update("t", id, fields! {"x" => 3}).unwrap();
    a.replication().apply_remote(&all_ops(&b)).unwrap();
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    assert_eq!(a.get("t", id).unwrap(), None);
    assert_eq!(b.get("t", id).unwrap(), None);
    assert_eq!(a.count("t").unwrap(), 0);
    assert_eq!(b.count("t").unwrap(), 0);
}

#[test]
fn remote_operations_with_invalid_names_are_refused_whole() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    let mut ops = all_ops(&a);
    let mut bad = ops[0].clone();
    bad.id.seq = 2;
    bad.fields = fields! {"id" => 1};
    ops.push(bad);
    let err = b.replication().apply_remote(&ops).unwrap_err();
    assert!(matches!(err, Error::InvalidOperation { .. }), "{err}");
    assert_eq!(b.count("t").unwrap(), 0, "nothing of the batch is applied");
}
