//! Crash consistency: a child process writes in a loop and is killed with SIGKILL at random
//! moments. After every kill the file must pass `PRAGMA integrity_check`, hold every record
//! whose commit the child reported, and its data must agree with its op log.
//!
//! The child is this test binary itself, re-run with `--exact crash_child_process --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Error, Operation, Uuid, Value, fields};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PASSWORD: &str = "crash-test password";
const CHILD_ENV: &str = "BLAZEDB_CRASH_CHILD_DB";

/// The writer. Prints `I <id>` after an insert commits and `U <id> <n>` after an update of
/// field `n` to value n commits; never before.
#[test]
#[ignore = "run by crash_rounds_keep_every_committed_write as a child process"]
fn crash_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = if Path::new(&path).exists() {
        Database::open(&path, PASSWORD).unwrap()
    } else {
        Database::create(&path, PASSWORD).unwrap()
    };
    let mut out = std::io::stdout().lock();
    // The test harness has printed "test crash_child_process ... " without a newline.
    writeln!(out, "\nREADY").unwrap();
    out.flush().unwrap();
    let mut rng = StdRng::from_os_rng();
    let mut mine: Vec<Uuid> = Vec::new();
    for counter in 1u64.. {
        match rng.random_range(0..10) {
            0..=4 => {
                let id = db
                    .insert(
                        "items",
                        fields! {"n" => 0, "pad" => "p".repeat(rng.random_range(0..400))},
                    )
                    .unwrap();
                writeln!(out, "I {id}").unwrap();
                mine.push(id);
            }
            5..=7 if !mine.is_empty() => {
                let id = mine[rng.random_range(0..mine.len())];
                db.update("items", id, fields! {"n" => counter as i64})
                    .unwrap();
                writeln!(out, "U {id} {counter}").unwrap();
            }
            _ => {
                let ids = db
                    .insert_many("items", (0..20).map(|i| fields! {"n" => 0, "batch" => i}))
                    .unwrap();
                for id in ids {
                    writeln!(out, "I {id}").unwrap();
                    mine.push(id);
                }
            }
        }
        out.flush().unwrap();
    }
}

/// The op log replayed into a separate database, kept across rounds (positions in the log are
/// permanent once committed, so each round replays only what is new).
struct Replay {
    db: Database,
    position: u64,
}

fn verify(
    path: &Path,
    inserted: &[Uuid],
    updated: &HashMap<Uuid, i64>,
    replay: &mut Replay,
) -> Result<(), Error> {
    let db = Database::open(path, PASSWORD)?;
    db.integrity_check()?;
    let stored: HashMap<Uuid, blazedb_core::Record> = db
        .fetch_all("items")?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    for id in inserted {
        let r = stored
            .get(id)
            .unwrap_or_else(|| panic!("committed record {id} is missing"));
        if let Some(n) = updated.get(id) {
            let Some(Value::Int(stored)) = r.get("n") else {
                panic!("field n missing")
            };
            // A later update may have committed before the kill without being printed.
            assert!(*stored >= *n, "{id}: committed n={n}, found {stored}");
        }
    }
    // Data and op log agree: replaying the log rebuilds exactly the stored contents.
    let new = db.replication().oplog_since(replay.position, usize::MAX)?;
    if let Some((last, _)) = new.last() {
        replay.position = *last;
    }
    let ops: Vec<Operation> = new.into_iter().map(|(_, o)| o).collect();
    replay.db.replication().apply_remote(&ops)?;
    assert_eq!(
        replay.db.content_hash()?,
        db.content_hash()?,
        "data and op log disagree"
    );
    assert_eq!(replay.db.count("items")?, db.count("items")?);
    assert_eq!(
        db.count("items")? as usize,
        stored.len(),
        "live counter drifted"
    );
    Ok(())
}

#[test]
fn crash_rounds_keep_every_committed_write() {
    let rounds = common::cases(50, 500);
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().join("crash.blazedb");
    let exe = std::env::current_exe().unwrap();
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inserted: Vec<Uuid> = Vec::new();
    let (mut total_inserted, mut total_updated) = (0usize, 0usize);
    let mut updated: HashMap<Uuid, i64> = HashMap::new();
    let mut kills_mid_write = 0;
    let mut replay = Replay {
        db: Database::in_memory().unwrap(),
        position: 0,
    };
    for round in 0..rounds {
        // A fresh file every 50 rounds keeps each round's verification (which reads the whole
        // file) bounded in long runs.
        if round > 0 && round % 50 == 0 {
            (total_inserted, total_updated) = (
                total_inserted + inserted.len(),
                total_updated + updated.len(),
            );
            path = dir.path().join(format!("crash-{round}.blazedb"));
            inserted.clear();
            updated.clear();
            replay = Replay {
                db: Database::in_memory().unwrap(),
                position: 0,
            };
        }
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to be writing, then let it run a random while.
        let ready_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("child never became ready");
            if line == "READY" {
                break;
            }
            assert!(Instant::now() < ready_deadline);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(1..120)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let mut lines = 0;
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["I", id] => inserted.push(id.parse().unwrap()),
                ["U", id, n] => {
                    updated.insert(id.parse().unwrap(), n.parse().unwrap());
                }
                _ => continue,
            }
            lines += 1;
        }
        if lines > 0 {
            kills_mid_write += 1;
        }
        if let Err(e) = verify(&path, &inserted, &updated, &mut replay) {
            panic!("round {round} (seed {seed}): {e}");
        }
    }
    eprintln!(
        "crash test: {rounds} SIGKILL rounds ({kills_mid_write} while writing), {} committed inserts and {} updated records verified",
        total_inserted + inserted.len(),
        total_updated + updated.len()
    );
    assert!(
        kills_mid_write > rounds / 2,
        "the child rarely got to write; the test proves little"
    );
}
