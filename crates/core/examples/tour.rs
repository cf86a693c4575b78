//! A guided tour of BlazeDB core: `cargo run --release -p blazedb-core --example tour`.
//!
//! Creates an encrypted database, writes, queries with and without an index, joins two
//! databases, merges two replicas and shows what the op log recorded.

// Indexing here is into data this program just made, never into input.
#![allow(clippy::indexing_slicing)]

use std::time::Instant;

use blazedb_core::{Database, Direction, Error, Filter, JoinKind, OpenError, Value, fields};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bugs_path = dir.path().join("bugs.blazedb");
    let users_path = dir.path().join("users.blazedb");
    let password = "tour password (use a real one)";

    println!("BlazeDB guided tour\n");
    let started = Instant::now();
    let bugs = Database::create(&bugs_path, password)?;
    let users = Database::create(&users_path, password)?;
    println!(
        "1. Created two encrypted databases (SQLCipher, AES-256, PBKDF2-HMAC-SHA512) in {:.0?}:\n   {}\n   {}",
        started.elapsed(),
        bugs_path.display(),
        users_path.display()
    );

    let ada = users.insert("users", fields! {"name" => "Ada", "role" => "admin"})?;
    let bob = users.insert("users", fields! {"name" => "Bob", "role" => "developer"})?;
    let statuses = ["open", "closed", "triage"];
    let started = Instant::now();
    let ids = bugs.insert_many(
        "bugs",
        (0..10_000).map(|i| {
            fields! {
                "title" => format!("Bug number {i}"),
                "status" => statuses[i % 3],
                "priority" => (i % 5) as i64,
                "authorId" => if i % 2 == 0 { ada } else { bob },
            }
        }),
    )?;
    println!(
        "2. Inserted {} bug records in one transaction in {:.1?}, each with its op-log entry.",
        ids.len(),
        started.elapsed()
    );

    let query = bugs
        .query("bugs")
        .filter(Filter::eq("status", "open").and(Filter::lte("priority", 1)))
        .order_by("priority", Direction::Desc)
        .limit(3);
    let t = Instant::now();
    let found = query.run()?;
    println!(
        "3. Query status = \"open\" AND priority <= 1, top 3 by priority:\n   plan: {}\n   {} records in {:.1?}",
        query.explain()?,
        found.len(),
        t.elapsed()
    );
    bugs.create_index("bugs", "status")?;
    let t = Instant::now();
    let again = query.run()?;
    println!(
        "   after create_index(\"bugs\", \"status\"):\n   plan: {}\n   {} records in {:.1?} (same results: {})",
        query.explain()?,
        again.len(),
        t.elapsed(),
        again == found
    );

    let first = ids[0];
    let watcher = bugs.subscribe("bugs");
    bugs.update("bugs", first, fields! {"status" => "closed"})?;
    let commit = watcher.recv().ok_or("no notification")?;
    println!(
        "4. Updated one field of {first}; a subscriber was woken with {:?} from {:?}.",
        commit.changes[0].kind, commit.changes[0].origin
    );
    bugs.delete("bugs", ids[1])?;
    println!(
        "   Deleted {}; {} bugs remain.",
        ids[1],
        bugs.count("bugs")?
    );

    let joined = bugs
        .query("bugs")
        .filter(Filter::eq("priority", 4))
        .limit(2)
        .join(&users, "users", "authorId", "id")
        .kind(JoinKind::Inner)
        .run()?;
    println!("5. Joined bugs with users across the two databases (bugs.authorId = users.id):");
    for row in &joined {
        let name = row
            .right
            .as_ref()
            .and_then(|u| u.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        println!(
            "   {} -> author {}",
            row.left.get("title").cloned().unwrap_or(Value::Null),
            name
        );
    }

    let replica = Database::in_memory()?;
    let ops: Vec<_> = bugs
        .replication()
        .oplog_since(0, usize::MAX)?
        .into_iter()
        .map(|(_, op)| op)
        .collect();
    let report = replica.replication().apply_remote(&ops)?;
    let again = replica.replication().apply_remote(&ops)?;
    println!(
        "6. A second replica merged the op log: {} ops applied, then {} skipped as duplicates on replay.\n   Content hashes equal: {}",
        report.applied,
        again.duplicates,
        replica.content_hash()? == bugs.content_hash()?
    );
    let last = ops.last().ok_or("empty op log")?;
    println!(
        "   Last op: {:?} on {}/{} at Lamport {} from node {}",
        last.kind, last.collection, last.record, last.lamport, last.id.origin
    );

    drop(bugs);
    match Database::open(&bugs_path, "not the password") {
        Err(e @ Error::Open(OpenError::WrongPassword { .. })) => {
            println!("7. Opening with a wrong password: {e}")
        }
        other => println!("7. Unexpected: {other:?}"),
    }
    let bugs = Database::open(&bugs_path, password)?;
    let stats = bugs.stats()?;
    println!(
        "8. Reopened: {} records, op log of {} operations, {} KiB on disk.",
        stats.collections.iter().map(|c| c.records).sum::<u64>(),
        stats.oplog_len,
        stats.size_bytes / 1024
    );
    println!("\nDone. The tour's files are removed on exit.");
    Ok(())
}
