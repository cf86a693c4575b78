//! BlazeDB engine and encoding benchmark: `cargo bench -p blazedb-core --bench engine`.
//!
//! A plain program (no harness) that prints Markdown tables; every figure is measured in the
//! same run, side by side with its baseline. `BLAZEDB_BENCH_QUICK=1` runs a smoke-sized version
//! (under a minute), `BLAZEDB_BENCH_DIR=/some/dir` puts the database files there instead of the
//! system temporary directory. What each row measures is described in `docs/bench.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blazedb_core::format::{
    NodeId, OpId, decode_operations, decode_record, decode_value, encode_operations, encode_record,
    encode_value,
};
use blazedb_core::{
    Database, Date, Fields, Filter, OpKind, Operation, Record, Uuid, Value, fields,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Serialize, Serializer};

use blazedb_testkit::bench as support;
use support::{
    BugGen, COLLECTION, EPOCH_2025, PASSWORD, STATUSES, STORAGES, Storage, Unit, footer,
    load_average, machine, mean_title_chars, micros, millis, order, percentile, progress,
    quick_mode, scratch, thousands,
};

/// Sizes and repetition counts of one run.
struct Config {
    quick: bool,
    /// Timed single-record insert transactions (after `single_warmup` untimed ones).
    single_inserts: usize,
    single_warmup: usize,
    /// Records inserted by the batched-insert row.
    batched_total: usize,
    /// Records per transaction for batched inserts and bulk loads.
    batch: usize,
    /// Records in the query set (the "1M" set).
    big: usize,
    /// Distinct values of the indexed field in the query set.
    distinct: i64,
    /// Timed equality queries through the index (after `eq_warmup` untimed ones).
    eq_queries: usize,
    eq_warmup: usize,
    /// Timed equality queries by full scan.
    scan_queries: usize,
    /// Timed opens (after one untimed one).
    opens: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = quick_mode();
        if quick {
            Config {
                quick,
                single_inserts: 1_000,
                single_warmup: 100,
                batched_total: 50_000,
                batch: 10_000,
                big: 100_000,
                distinct: 1_000,
                eq_queries: 50,
                eq_warmup: 5,
                scan_queries: 2,
                opens: 5,
            }
        } else {
            Config {
                quick,
                single_inserts: 5_000,
                single_warmup: 200,
                batched_total: 200_000,
                batch: 10_000,
                big: 1_000_000,
                distinct: 1_000,
                eq_queries: 200,
                eq_warmup: 10,
                scan_queries: 3,
                opens: 10,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table rows.

struct Row {
    label: String,
    unit: Unit,
    enc: f64,
    plain: f64,
}

fn row(label: impl Into<String>, unit: Unit, pair: [f64; 2]) -> Row {
    Row {
        label: label.into(),
        unit,
        enc: pair[0],
        plain: pair[1],
    }
}

// ---------------------------------------------------------------------------------------------
// Engine measurements. Both modes run in the same loop, alternating operation by operation (and
// which mode goes first), so load from other processes on the machine hits both alike.

/// One database file per mode, each in its own scratch directory.
struct Pair {
    _dirs: [tempfile::TempDir; 2],
    paths: [PathBuf; 2],
}

impl Pair {
    fn new() -> Pair {
        let dirs = [scratch(), scratch()];
        let paths = [db_path(&dirs[0]), db_path(&dirs[1])];
        Pair { _dirs: dirs, paths }
    }

    fn create(&self) -> [Database; 2] {
        [0, 1].map(|i| STORAGES[i].create(&self.paths[i]))
    }

    fn open(&self) -> [Database; 2] {
        [0, 1].map(|i| STORAGES[i].open(&self.paths[i]))
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("bench.blazedb")
}

/// Bytes of a database file plus its WAL, if any is left.
fn file_size(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    len(path) + len(&wal)
}

/// Sorted samples of one mode.
fn sorted(mut times: Vec<Duration>) -> Vec<Duration> {
    times.sort();
    times
}

/// `db.insert` one record at a time: every call is its own transaction and commit. Returns the
/// sorted latencies per mode; the files stay behind for the open measurement.
fn single_inserts(cfg: &Config, pair: &Pair) -> [Vec<Duration>; 2] {
    let dbs = pair.create();
    let mut bugs = BugGen::new(1, cfg.distinct);
    let mut times = [Vec::new(), Vec::new()];
    for k in 0..cfg.single_warmup + cfg.single_inserts {
        let record = bugs.next();
        for i in order(k) {
            let record = record.clone();
            let start = Instant::now();
            dbs[i].insert(COLLECTION, record).unwrap();
            if k >= cfg.single_warmup {
                times[i].push(start.elapsed());
            }
        }
    }
    for db in &dbs {
        assert_eq!(
            db.count(COLLECTION).unwrap(),
            (cfg.single_warmup + cfg.single_inserts) as u64
        );
    }
    times.map(sorted)
}

/// Opening an existing file (for an encrypted one this includes PBKDF2 key derivation).
fn opens(cfg: &Config, pair: &Pair) -> [Duration; 2] {
    drop(pair.open());
    let mut times = [Vec::new(), Vec::new()];
    for k in 0..cfg.opens {
        for i in order(k) {
            let start = Instant::now();
            let db = STORAGES[i].open(&pair.paths[i]);
            times[i].push(start.elapsed());
            drop(db);
        }
    }
    times.map(|t| percentile(&sorted(t), 50.0))
}

/// Inserts `total` generated records into both databases in transactions of `batch` records
/// (`insert_many`), alternating batch by batch; returns records/s per mode, counting only the
/// time spent in `insert_many` (record generation is excluded).
fn load(dbs: &[Database; 2], seed: u64, cfg: &Config, total: usize) -> [f64; 2] {
    let mut bugs = BugGen::new(seed, cfg.distinct);
    let mut spent = [Duration::ZERO; 2];
    let mut done = 0;
    let mut k = 0;
    while done < total {
        let n = cfg.batch.min(total - done);
        let records = bugs.batch(n);
        for i in order(k) {
            let records = records.clone();
            let start = Instant::now();
            let ids = dbs[i].insert_many(COLLECTION, records).unwrap();
            spent[i] += start.elapsed();
            assert_eq!(ids.len(), n);
        }
        done += n;
        k += 1;
    }
    for db in dbs {
        assert_eq!(db.count(COLLECTION).unwrap(), total as u64);
    }
    spent.map(|s| total as f64 / s.as_secs_f64())
}

/// Batched inserts into a collection with one secondary index; every insert also writes its
/// op-log entry.
fn batched_inserts(cfg: &Config) -> [f64; 2] {
    let pair = Pair::new();
    let dbs = pair.create();
    for db in &dbs {
        db.create_index(COLLECTION, "priority").unwrap();
    }
    load(&dbs, 2, cfg, cfg.batched_total)
}

/// The same row inserts as the engine (a record state and an index entry per record, the
/// transaction's operations as op-log entries of up to `OPLOG_ENTRY_MAX_OPS`) straight through
/// rusqlite, with every blob and key encoded beforehand: how fast SQLite (and SQLCipher) alone
/// can go with this schema, the ceiling of the batched row.
fn sqlite_floor(cfg: &Config) -> [f64; 2] {
    use blazedb_core::OPLOG_ENTRY_MAX_OPS;
    use blazedb_core::format::{Stamp, encode_inserted_record_state, sort_key};
    let node = NodeId(Uuid::from_u128(42));
    let mut bugs = BugGen::new(2, cfg.distinct);
    // Per transaction: (record id, record state, index key) per record, and the op-log entries.
    type PreEncoded = (Vec<([u8; 16], Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);
    let mut n = 0u64;
    let batches: Vec<PreEncoded> = (0..cfg.batched_total.div_ceil(cfg.batch))
        .map(|_| {
            let mut records = Vec::new();
            let mut ops = Vec::new();
            for _ in 0..cfg.batch.min(cfg.batched_total - n as usize) {
                n += 1;
                let fields = bugs.next();
                let id = Uuid::from_u128((u128::from(n) << 64) | 0x7000_8000_0000_0000);
                let stamp = Stamp { lamport: n, node };
                let key = sort_key(fields.get("priority").unwrap_or(&Value::Null));
                records.push((
                    *id.as_bytes(),
                    encode_inserted_record_state(&fields, stamp),
                    key,
                ));
                ops.push(Operation {
                    id: OpId {
                        origin: node,
                        seq: n,
                    },
                    lamport: n,
                    wall: Date::now(),
                    kind: OpKind::Insert,
                    collection: COLLECTION.into(),
                    record: id,
                    fields,
                });
            }
            let entries = ops
                .chunks(OPLOG_ENTRY_MAX_OPS)
                .map(encode_operations)
                .collect();
            (records, entries)
        })
        .collect();
    let pair = Pair::new();
    let conns = [0, 1].map(|i| {
        let conn = rusqlite::Connection::open(&pair.paths[i]).unwrap();
        if STORAGES[i] == Storage::Encrypted {
            conn.pragma_update(None, "key", PASSWORD).unwrap();
            conn.execute_batch("PRAGMA cipher_hmac_algorithm = HMAC_SHA256")
                .unwrap();
        }
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768; \
             PRAGMA wal_autocheckpoint = 10000;
             CREATE TABLE records (coll INTEGER NOT NULL, id BLOB NOT NULL, live INTEGER NOT NULL,
                 state BLOB NOT NULL, PRIMARY KEY (coll, id)) WITHOUT ROWID;
             CREATE TABLE index_entries (idx INTEGER NOT NULL, key BLOB NOT NULL, id BLOB NOT NULL,
                 PRIMARY KEY (idx, key, id)) WITHOUT ROWID;
             CREATE TABLE oplog (seq INTEGER PRIMARY KEY, ops BLOB NOT NULL);",
        )
        .unwrap();
        conn
    });
    let mut spent = [Duration::ZERO; 2];
    for (k, (records, entries)) in batches.iter().enumerate() {
        for i in order(k) {
            let conn = &conns[i];
            let start = Instant::now();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            let mut record = conn
                .prepare_cached("INSERT INTO records (coll, id, live, state) VALUES (1, ?1, 1, ?2)")
                .unwrap();
            let mut entry = conn
                .prepare_cached("INSERT INTO index_entries (idx, key, id) VALUES (1, ?1, ?2)")
                .unwrap();
            for (id, state, key) in records {
                record.execute(rusqlite::params![&id[..], state]).unwrap();
                entry.execute(rusqlite::params![key, &id[..]]).unwrap();
            }
            let mut log = conn
                .prepare_cached("INSERT INTO oplog (ops) VALUES (?1)")
                .unwrap();
            for ops in entries {
                log.execute(rusqlite::params![ops]).unwrap();
            }
            drop((record, entry, log));
            conn.execute_batch("COMMIT").unwrap();
            spent[i] += start.elapsed();
        }
    }
    spent.map(|s| cfg.batched_total as f64 / s.as_secs_f64())
}

/// Equality queries on `priority`, alternating modes query by query.
struct EqRun {
    p50: [Duration; 2],
    /// Records returned per second of query time.
    rate: [f64; 2],
    mean_hits: f64,
    /// Hits per value (the same in both modes: same records).
    hits: Vec<usize>,
}

fn eq_queries(dbs: &[Database; 2], values: &[i64], expect_index: bool) -> EqRun {
    let mut times = [Vec::new(), Vec::new()];
    let mut hits = Vec::with_capacity(values.len());
    for (k, &v) in values.iter().enumerate() {
        let mut found = [0; 2];
        for i in order(k) {
            let query = dbs[i].query(COLLECTION).filter(Filter::eq("priority", v));
            assert_eq!(query.explain().unwrap().uses_index(), expect_index);
            let start = Instant::now();
            let records = query.run().unwrap();
            times[i].push(start.elapsed());
            assert!(
                records
                    .iter()
                    .all(|r| r.get("priority") == Some(&Value::Int(v)))
            );
            found[i] = records.len();
        }
        assert_eq!(found[0], found[1], "both modes hold the same records");
        hits.push(found[0]);
    }
    let returned: usize = hits.iter().sum();
    let rate = [0, 1].map(|i| {
        let total: Duration = times[i].iter().sum();
        returned as f64 / total.as_secs_f64()
    });
    EqRun {
        p50: [0, 1].map(|i| percentile(&sorted(times[i].clone()), 50.0)),
        rate,
        mean_hits: returned as f64 / values.len() as f64,
        hits,
    }
}

struct BigSet {
    load_rate: [f64; 2],
    bytes_per_record: [f64; 2],
    indexed: EqRun,
    scanned: EqRun,
    create_index: [Duration; 2],
}

/// The query set: bulk load with an index on `priority` (about `distinct` distinct values), then
/// equality queries through the index, the same kind of query by full scan after dropping the
/// index, and re-creating the index over the full collection.
fn big_set(cfg: &Config) -> BigSet {
    let pair = Pair::new();
    let dbs = pair.create();
    for db in &dbs {
        db.create_index(COLLECTION, "priority").unwrap();
    }
    progress(&format!("bulk loading {} records (both modes)", cfg.big));
    let load_rate = load(&dbs, 3, cfg, cfg.big);
    for db in &dbs {
        assert!(db.stats().unwrap().oplog_len >= cfg.big as u64);
    }
    // File size on disk after closing (the last connection checkpoints the WAL into the file
    // and removes it); the reopen also starts the queries with a cold SQLite page cache.
    drop(dbs);
    let bytes_per_record = [0, 1].map(|i| file_size(&pair.paths[i]) as f64 / cfg.big as f64);
    let dbs = pair.open();

    let mut rng = StdRng::seed_from_u64(4);
    let mut values =
        |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(0..cfg.distinct)).collect() };
    let warmup = values(cfg.eq_warmup);
    let indexed_values = values(cfg.eq_queries);
    let scanned_values = values(cfg.scan_queries);

    progress(&format!("{} indexed queries", cfg.eq_queries));
    eq_queries(&dbs, &warmup, true);
    let indexed = eq_queries(&dbs, &indexed_values, true);
    // The answers the index gives for the values the full scan will look for.
    let expected = eq_queries(&dbs, &scanned_values, true).hits;

    progress(&format!("{} full-scan queries", cfg.scan_queries));
    for db in &dbs {
        db.drop_index(COLLECTION, "priority").unwrap();
    }
    let scanned = eq_queries(&dbs, &scanned_values, false);
    assert_eq!(scanned.hits, expected, "index and full scan agree");

    progress("re-creating the index");
    let create_index = [0, 1].map(|i| {
        let start = Instant::now();
        dbs[i].create_index(COLLECTION, "priority").unwrap();
        start.elapsed()
    });

    BigSet {
        load_rate,
        bytes_per_record,
        indexed,
        scanned,
        create_index,
    }
}

/// The figures the goals are judged on, `[encrypted, plaintext]`.
struct Headline {
    batched_rate: [f64; 2],
    single_p50_us: [f64; 2],
}

fn engine(cfg: &Config, out: &mut String) -> Headline {
    let mut rows = Vec::new();

    // Single inserts, then opens of the same files.
    progress(&format!(
        "{} single inserts (both modes)",
        cfg.single_inserts
    ));
    let pair = Pair::new();
    let single = single_inserts(cfg, &pair);
    progress(&format!("{} opens (both modes)", cfg.opens));
    let open = opens(cfg, &pair);
    drop(pair);
    let pick = |p: Option<f64>| {
        [0, 1].map(|i| match p {
            Some(p) => micros(percentile(&single[i], p)),
            None => micros(*single[i].last().unwrap()),
        })
    };
    let single_p50 = pick(Some(50.0));
    let n = thousands(cfg.single_inserts as f64);
    rows.push(row(
        format!("single insert, own transaction + commit: p50 µs ({n} inserts)"),
        Unit::Micros,
        single_p50,
    ));
    rows.push(row(
        "single insert, own transaction + commit: p99 µs",
        Unit::Micros,
        pick(Some(99.0)),
    ));
    rows.push(row(
        "single insert, own transaction + commit: max µs",
        Unit::Micros,
        pick(None),
    ));

    progress(&format!(
        "{} batched inserts (both modes)",
        cfg.batched_total
    ));
    let batched = batched_inserts(cfg);
    rows.push(row(
        format!(
            "batched insert, op log + 1 index: records/s ({} in batches of {})",
            thousands(cfg.batched_total as f64),
            thousands(cfg.batch as f64)
        ),
        Unit::Rate,
        batched,
    ));
    progress("SQLite floor for the batched row (both modes)");
    rows.push(row(
        "  the same rows written straight through SQLite, blobs pre-encoded: records/s",
        Unit::Rate,
        sqlite_floor(cfg),
    ));

    let big = big_set(cfg);
    let n = thousands(cfg.big as f64);
    rows.push(row(
        format!("bulk load {n} records, op log + 1 index: records/s"),
        Unit::Rate,
        big.load_rate,
    ));
    rows.push(row(
        format!("file size per record ({n} records, op log + 1 index, after close): bytes"),
        Unit::Bytes,
        big.bytes_per_record,
    ));
    rows.push(row(
        format!(
            "eq query, indexed (~{:.0} hits of {n}): p50 ms ({} queries)",
            big.indexed.mean_hits, cfg.eq_queries
        ),
        Unit::Millis,
        big.indexed.p50.map(millis),
    ));
    rows.push(row(
        "eq query, indexed: records returned/s",
        Unit::Rate,
        big.indexed.rate,
    ));
    rows.push(row(
        format!(
            "eq query, no index (full scan of {n}): p50 ms ({} queries)",
            cfg.scan_queries
        ),
        Unit::Millis,
        big.scanned.p50.map(millis),
    ));
    rows.push(row(
        "eq query, no index: records returned/s",
        Unit::Rate,
        big.scanned.rate,
    ));
    rows.push(row(
        "index speed-up (full-scan p50 ÷ indexed p50)",
        Unit::Count,
        [0, 1].map(|i| big.scanned.p50[i].as_secs_f64() / big.indexed.p50[i].as_secs_f64()),
    ));
    rows.push(row(
        format!("create_index over {n} existing records: s"),
        Unit::Seconds,
        big.create_index.map(|d| d.as_secs_f64()),
    ));
    rows.push(row(
        format!("open existing file: p50 ms ({} opens)", cfg.opens),
        Unit::Millis,
        open.map(millis),
    ));

    writeln!(
        out,
        "### Engine: encrypted (SQLCipher) vs plaintext\n\n\
         Same code, same records; only the file is opened with `Database::create(path, password)` \
         or `OpenOptions::new().create(path)`. The two modes run interleaved, operation by \
         operation. Ratio = encrypted ÷ plaintext (for latencies and sizes above 1 is worse, for \
         rates below 1 is worse).\n"
    )
    .unwrap();
    writeln!(out, "| Measure | Encrypted | Plaintext | Ratio |").unwrap();
    writeln!(out, "|---|---:|---:|---:|").unwrap();
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {} | {:.2}× |",
            r.label,
            r.unit.show(r.enc),
            r.unit.show(r.plain),
            r.enc / r.plain
        )
        .unwrap();
    }
    writeln!(out).unwrap();

    Headline {
        batched_rate: batched,
        single_p50_us: single_p50,
    }
}

fn goals(cfg: &Config, headline: &Headline, out: &mut String) {
    let [batched_enc, batched_plain] = headline.batched_rate;
    let [single_enc, single_plain] = headline.single_p50_us;
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    writeln!(
        out,
        "### Goals\n\nMeasured in this run{}.\n",
        if cfg.quick {
            " (quick mode: smaller sets, indicative only)"
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(out, "| Goal | Target | Encrypted | Plaintext |").unwrap();
    writeln!(out, "|---|---|---:|---:|").unwrap();
    let target = 250_000.0;
    writeln!(
        out,
        "| batched inserts with op log (+1 index) | ≥ 250,000 records/s | {} {} | {} {} |",
        thousands(batched_enc),
        mark(batched_enc >= target),
        thousands(batched_plain),
        mark(batched_plain >= target)
    )
    .unwrap();
    writeln!(
        out,
        "| single-insert commit p50 | < 100 µs | {} µs {} | {} µs {} |",
        Unit::Micros.show(single_enc),
        mark(single_enc < 100.0),
        Unit::Micros.show(single_plain),
        mark(single_plain < 100.0)
    )
    .unwrap();
    // Cost per record is the inverse of the rate.
    let cost = batched_plain / batched_enc;
    writeln!(
        out,
        "| encrypted batched-insert cost vs plaintext | ≤ 1.5× | {cost:.2}× {} | (baseline) |",
        mark(cost <= 1.5)
    )
    .unwrap();
    writeln!(out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Encoded sizes.

/// The seeds' bug record.
struct Bug {
    id: Uuid,
    title: String,
    status: &'static str,
    team: Uuid,
    assignee: Uuid,
}

impl Bug {
    fn fields(&self) -> Fields {
        fields! {
            "title" => self.title.as_str(),
            "status" => self.status,
            "teamId" => self.team,
            "assignee" => self.assignee,
        }
    }

    fn record(&self) -> Record {
        Record::new(self.id, self.fields())
    }

    /// The record as one map value, the id included as a field.
    fn map(&self) -> Value {
        let mut map = self.fields();
        map.insert("id".into(), Value::Uuid(self.id));
        Value::Map(map)
    }

    fn with_str_ids(&self) -> BugStr<'_> {
        BugStr {
            id: self.id.to_string(),
            title: &self.title,
            status: self.status,
            team_id: self.team.to_string(),
            assignee: self.assignee.to_string(),
        }
    }

    fn with_bin_ids(&self) -> BugBin<'_> {
        BugBin {
            id: Bin16(*self.id.as_bytes()),
            title: &self.title,
            status: self.status,
            team_id: Bin16(*self.team.as_bytes()),
            assignee: Bin16(*self.assignee.as_bytes()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BugStr<'a> {
    id: String,
    title: &'a str,
    status: &'a str,
    team_id: String,
    assignee: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BugBin<'a> {
    id: Bin16,
    title: &'a str,
    status: &'a str,
    team_id: Bin16,
    assignee: Bin16,
}

/// A UUID as a 16-byte binary string (MessagePack bin 8, CBOR byte string).
struct Bin16([u8; 16]);

impl Serialize for Bin16 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

fn seed_bug() -> Bug {
    Bug {
        id: Uuid::parse_str("6f1c2a4e-8d3b-4c5a-9e7f-1a2b3c4d5e6f").unwrap(),
        title: "Crash when opening settings on iPad".into(),
        status: "open",
        team: Uuid::parse_str("0b3c5d7e-1f2a-4b6c-8d9e-0f1a2b3c4d5e").unwrap(),
        assignee: Uuid::parse_str("9a8b7c6d-5e4f-4a3b-2c1d-0e0f1a2b3c4d").unwrap(),
    }
}

/// 100 records shaped like the seed: distinct ids and titles, status cycling through the three
/// values, one team, five assignees.
fn hundred_bugs() -> Vec<Bug> {
    let seed = seed_bug();
    (0..100u128)
        .map(|i| Bug {
            id: Uuid::from_u128(seed.id.as_u128() + i),
            title: format!("{} #{}", seed.title, 1000 + i),
            status: STATUSES[(i % 3) as usize],
            team: seed.team,
            assignee: Uuid::from_u128(seed.assignee.as_u128() + (i % 5)),
        })
        .collect()
}

fn msgpack<T: Serialize>(v: &T) -> usize {
    rmp_serde::to_vec_named(v).unwrap().len()
}

fn cbor<T: Serialize>(v: &T) -> usize {
    let mut buf = Vec::new();
    ciborium::into_writer(v, &mut buf).unwrap();
    buf.len()
}

fn json<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).unwrap().len()
}

fn sizes(out: &mut String) {
    let one = seed_bug();
    let record = one.record();
    let one_blaze = encode_record(&record);
    assert_eq!(decode_record(&one_blaze).unwrap(), record);

    let many = hundred_bugs();
    let array = Value::Array(many.iter().map(Bug::map).collect());
    let many_blaze = encode_value(&array);
    assert_eq!(decode_value(&many_blaze).unwrap(), array);
    let node = NodeId(Uuid::from_u128(0x5eed));
    let ops: Vec<Operation> = many
        .iter()
        .enumerate()
        .map(|(i, b)| Operation {
            id: OpId {
                origin: node,
                seq: i as u64 + 1,
            },
            lamport: i as u64 + 1,
            wall: Date::from_unix_millis(EPOCH_2025 + i as i64 * 1000),
            kind: OpKind::Insert,
            collection: COLLECTION.into(),
            record: b.id,
            fields: b.fields(),
        })
        .collect();
    let op_batch = encode_operations(&ops);
    assert_eq!(decode_operations(&op_batch).unwrap(), ops);

    let str_many: Vec<BugStr<'_>> = many.iter().map(Bug::with_str_ids).collect();
    let bin_many: Vec<BugBin<'_>> = many.iter().map(Bug::with_bin_ids).collect();
    let rows = [
        (
            "1 record (seed bug)",
            [
                one_blaze.len(),
                json(&one.with_str_ids()),
                msgpack(&one.with_str_ids()),
                msgpack(&one.with_bin_ids()),
                cbor(&one.with_str_ids()),
                cbor(&one.with_bin_ids()),
            ],
        ),
        (
            "100 records (array)",
            [
                many_blaze.len(),
                json(&str_many),
                msgpack(&str_many),
                msgpack(&bin_many),
                cbor(&str_many),
                cbor(&bin_many),
            ],
        ),
    ];

    writeln!(
        out,
        "### Encoded size: BlazeBinary vs JSON, MessagePack, CBOR\n\n\
         Bytes, and in brackets the ratio to BlazeBinary. Every encoding carries the same \
         content: id, title, status, teamId, assignee, with field names (JSON, MessagePack and \
         CBOR as maps: `serde_json::to_vec`, `rmp_serde::to_vec_named`, `ciborium::into_writer`). \
         \"uuid str\" writes UUIDs as 36-character strings, \"uuid bin\" as 16-byte binary \
         strings. 1 record: BlazeBinary `encode_record` (id outside the field map). 100 records: \
         100 records shaped like the seed (distinct ids and titles, status cycling \
         open/closed/triage, one team, five assignees); BlazeBinary is `encode_value` of a \
         `Value::Array` of `Value::Map`s with `id` as a field, the same content as the JSON \
         array of objects. An `encode_operations` batch of the same 100 records as inserts is \
         {} bytes ({:.2}× the array): it adds per operation the origin node reference, \
         sequence number, Lamport time, wall clock, kind and collection name, which the other \
         formats do not carry, so it is not the like-for-like row.\n",
        op_batch.len(),
        op_batch.len() as f64 / many_blaze.len() as f64
    )
    .unwrap();
    writeln!(
        out,
        "| Payload | BlazeBinary | JSON | MessagePack (uuid str) | MessagePack (uuid bin) | \
         CBOR (uuid str) | CBOR (uuid bin) |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for (label, sizes) in rows {
        let base = sizes[0] as f64;
        let cells: Vec<String> = sizes
            .iter()
            .map(|&s| format!("{} ({:.2}×)", thousands(s as f64), s as f64 / base))
            .collect();
        writeln!(out, "| {label} | {} |", cells.join(" | ")).unwrap();
    }
    writeln!(out).unwrap();
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let cfg = Config::from_env();
    let started = Instant::now();
    let mut out = String::new();

    let mean_title = mean_title_chars();
    writeln!(
        out,
        "## BlazeDB engine benchmark ({} mode)\n\n\
         Machine: {}. Records: title (mean {mean_title:.0} chars), status \
         (open/closed/triage), priority (int, {} distinct values), teamId (uuid), assignee \
         (uuid), createdAt (date). Durability: default (`Process`, WAL + synchronous=NORMAL).\n",
        if cfg.quick { "quick" } else { "full" },
        machine(),
        cfg.distinct,
    )
    .unwrap();

    sizes(&mut out);
    let load_before = load_average();
    let headline = engine(&cfg, &mut out);
    goals(&cfg, &headline, &mut out);
    footer(&mut out, started, &load_before);
    print!("{out}");
}
