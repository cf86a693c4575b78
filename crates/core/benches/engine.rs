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
    Database, Date, Fields, Filter, OpKind, OpenOptions, Operation, Record, Uuid, Value, fields,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Serialize, Serializer};

const PASSWORD: &str = "correct horse battery staple";
const COLLECTION: &str = "bugs";

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
        let quick = std::env::var("BLAZEDB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Database::create(path, password)`: SQLCipher.
    Encrypted,
    /// `OpenOptions::new().create(path)`: plain SQLite, same code otherwise.
    Plaintext,
}

const MODES: [Mode; 2] = [Mode::Encrypted, Mode::Plaintext];

impl Mode {
    fn create(self, path: &Path) -> Database {
        match self {
            Mode::Encrypted => Database::create(path, PASSWORD).expect("create encrypted"),
            Mode::Plaintext => OpenOptions::new().create(path).expect("create plaintext"),
        }
    }

    fn open(self, path: &Path) -> Database {
        match self {
            Mode::Encrypted => Database::open(path, PASSWORD).expect("open encrypted"),
            Mode::Plaintext => OpenOptions::new().open(path).expect("open plaintext"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Encrypted => "encrypted",
            Mode::Plaintext => "plaintext",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test data: a bug tracker.

const STATUSES: [&str; 3] = ["open", "closed", "triage"];
const SUBJECTS: [&str; 12] = [
    "Crash",
    "Hang",
    "Memory leak",
    "Wrong colours",
    "Layout glitch",
    "Sync stalls",
    "Login fails",
    "Blank screen",
    "Slow scrolling",
    "Data loss",
    "Typo in dialog",
    "Spinner never stops",
];
const CONTEXTS: [&str; 10] = [
    "when opening settings",
    "after rotating",
    "while syncing",
    "on first launch",
    "after an update",
    "in dark mode",
    "when offline",
    "on export",
    "with long names",
    "after sign-out",
];
const DEVICES: [&str; 8] = [
    "on iPad",
    "on iOS 18",
    "on Android",
    "on macOS",
    "in Safari",
    "on Pixel 8",
    "on Windows",
    "on Linux",
];
/// 2025-01-01T00:00:00Z.
const EPOCH_2025: i64 = 1_735_689_600_000;

/// Deterministic bug records: title (~40 chars), status, priority, teamId, assignee, createdAt.
struct BugGen {
    rng: StdRng,
    teams: Vec<Uuid>,
    people: Vec<Uuid>,
    distinct: i64,
    n: i64,
}

impl BugGen {
    fn new(seed: u64, distinct: i64) -> BugGen {
        let mut rng = StdRng::seed_from_u64(seed);
        let teams = (0..40).map(|_| random_uuid(&mut rng)).collect();
        let people = (0..500).map(|_| random_uuid(&mut rng)).collect();
        BugGen {
            rng,
            teams,
            people,
            distinct,
            n: 0,
        }
    }

    fn title(&mut self) -> String {
        let r = &mut self.rng;
        format!(
            "{} {} {}",
            SUBJECTS[r.random_range(0..SUBJECTS.len())],
            CONTEXTS[r.random_range(0..CONTEXTS.len())],
            DEVICES[r.random_range(0..DEVICES.len())]
        )
    }

    fn next(&mut self) -> Fields {
        self.n += 1;
        let title = self.title();
        let r = &mut self.rng;
        fields! {
            "title" => title,
            "status" => STATUSES[r.random_range(0..STATUSES.len())],
            "priority" => r.random_range(0..self.distinct),
            "teamId" => self.teams[r.random_range(0..self.teams.len())],
            "assignee" => self.people[r.random_range(0..self.people.len())],
            "createdAt" => Date::from_unix_millis(EPOCH_2025 + self.n * 31_337),
        }
    }

    fn batch(&mut self, n: usize) -> Vec<Fields> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

#[derive(Clone, Copy)]
enum Unit {
    /// Records per second.
    Rate,
    Micros,
    Millis,
    Seconds,
    Bytes,
    Count,
}

impl Unit {
    fn show(self, x: f64) -> String {
        match self {
            Unit::Rate | Unit::Bytes | Unit::Count => thousands(x),
            Unit::Micros if x < 100.0 => format!("{x:.1}"),
            Unit::Micros => thousands(x),
            Unit::Millis if x < 10.0 => format!("{x:.3}"),
            Unit::Millis => format!("{x:.1}"),
            Unit::Seconds => format!("{x:.2}"),
        }
    }
}

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

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

// ---------------------------------------------------------------------------------------------
// Engine measurements. Each function runs one mode on its own fresh file.

struct SingleInsert {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// `db.insert` one record at a time: every call is its own transaction and commit.
fn single_inserts(mode: Mode, cfg: &Config, path: &Path) -> SingleInsert {
    let db = mode.create(path);
    let mut bugs = BugGen::new(1, cfg.distinct);
    for _ in 0..cfg.single_warmup {
        db.insert(COLLECTION, bugs.next()).unwrap();
    }
    let mut times = Vec::with_capacity(cfg.single_inserts);
    for _ in 0..cfg.single_inserts {
        let record = bugs.next();
        let start = Instant::now();
        db.insert(COLLECTION, record).unwrap();
        times.push(start.elapsed());
    }
    assert_eq!(
        db.count(COLLECTION).unwrap(),
        (cfg.single_warmup + cfg.single_inserts) as u64
    );
    times.sort();
    SingleInsert {
        p50: percentile(&times, 50.0),
        p99: percentile(&times, 99.0),
        max: *times.last().unwrap(),
    }
}

/// Opening an existing file (for an encrypted one this includes PBKDF2 key derivation).
fn opens(mode: Mode, cfg: &Config, path: &Path) -> Duration {
    drop(mode.open(path));
    let mut times = Vec::with_capacity(cfg.opens);
    for _ in 0..cfg.opens {
        let start = Instant::now();
        let db = mode.open(path);
        times.push(start.elapsed());
        drop(db);
    }
    times.sort();
    percentile(&times, 50.0)
}

/// Inserts `total` generated records in transactions of `batch`; returns records/s counting only
/// the time spent in `insert_many` (record generation is excluded).
fn load(db: &Database, bugs: &mut BugGen, total: usize, batch: usize) -> f64 {
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        let records = bugs.batch(n);
        let start = Instant::now();
        let ids = db.insert_many(COLLECTION, records).unwrap();
        spent += start.elapsed();
        assert_eq!(ids.len(), n);
        done += n;
    }
    total as f64 / spent.as_secs_f64()
}

/// Batched inserts into a collection with one secondary index; every insert also writes its
/// op-log entry.
fn batched_inserts(mode: Mode, cfg: &Config, path: &Path) -> f64 {
    let db = mode.create(path);
    db.create_index(COLLECTION, "priority").unwrap();
    let mut bugs = BugGen::new(2, cfg.distinct);
    let rate = load(&db, &mut bugs, cfg.batched_total, cfg.batch);
    assert_eq!(db.count(COLLECTION).unwrap(), cfg.batched_total as u64);
    rate
}

struct BigSet {
    load_rate: f64,
    bytes_per_record: f64,
    oplog_len: u64,
    eq_index_p50: Duration,
    eq_index_rate: f64,
    eq_index_hits: f64,
    eq_scan_p50: Duration,
    eq_scan_rate: f64,
    create_index: Duration,
}

/// Runs `queries` equality queries on `priority`, returns (p50, records returned/s, mean hits).
fn eq_queries(db: &Database, values: &[i64], expect_index: bool) -> (Duration, f64, f64) {
    let mut times = Vec::with_capacity(values.len());
    let mut returned = 0usize;
    for &v in values {
        let query = db.query(COLLECTION).filter(Filter::eq("priority", v));
        assert_eq!(query.explain().unwrap().uses_index(), expect_index);
        let start = Instant::now();
        let hits = query.run().unwrap();
        times.push(start.elapsed());
        assert!(
            hits.iter()
                .all(|r| r.get("priority") == Some(&Value::Int(v)))
        );
        returned += hits.len();
    }
    let total: Duration = times.iter().sum();
    times.sort();
    (
        percentile(&times, 50.0),
        returned as f64 / total.as_secs_f64(),
        returned as f64 / values.len() as f64,
    )
}

/// The query set: bulk load with an index on `priority` (about `distinct` distinct values), then
/// equality queries through the index, the same queries by full scan after dropping the index,
/// and re-creating the index over the full collection.
fn big_set(mode: Mode, cfg: &Config, path: &Path) -> BigSet {
    let db = mode.create(path);
    db.create_index(COLLECTION, "priority").unwrap();
    let mut bugs = BugGen::new(3, cfg.distinct);
    progress(&format!(
        "{}: bulk loading {} records",
        mode.name(),
        cfg.big
    ));
    let load_rate = load(&db, &mut bugs, cfg.big, cfg.batch);
    assert_eq!(db.count(COLLECTION).unwrap(), cfg.big as u64);
    let oplog_len = db.oplog_head().unwrap();
    // The file size after closing (the last connection checkpoints the WAL into the file).
    // `Database::stats().size_bytes` would do without the reopen, but fails on SQLCipher files.
    drop(db);
    let file_bytes = file_size(path);
    let db = mode.open(path);

    let mut rng = StdRng::seed_from_u64(4);
    let mut values =
        |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(0..cfg.distinct)).collect() };
    let warmup = values(cfg.eq_warmup);
    let indexed = values(cfg.eq_queries);
    let scanned = values(cfg.scan_queries);

    progress(&format!(
        "{}: {} indexed queries",
        mode.name(),
        cfg.eq_queries
    ));
    eq_queries(&db, &warmup, true);
    let (eq_index_p50, eq_index_rate, eq_index_hits) = eq_queries(&db, &indexed, true);
    // Same answers with and without the index, checked on the scanned values.
    let with_index: Vec<usize> = scanned
        .iter()
        .map(|&v| {
            db.query(COLLECTION)
                .filter(Filter::eq("priority", v))
                .run()
                .unwrap()
                .len()
        })
        .collect();

    db.drop_index(COLLECTION, "priority").unwrap();
    progress(&format!(
        "{}: {} full-scan queries",
        mode.name(),
        cfg.scan_queries
    ));
    let (eq_scan_p50, eq_scan_rate, _) = eq_queries(&db, &scanned, false);
    let without_index: Vec<usize> = scanned
        .iter()
        .map(|&v| {
            db.query(COLLECTION)
                .filter(Filter::eq("priority", v))
                .run()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(with_index, without_index);

    progress(&format!("{}: re-creating the index", mode.name()));
    let start = Instant::now();
    db.create_index(COLLECTION, "priority").unwrap();
    let create_index = start.elapsed();

    BigSet {
        load_rate,
        bytes_per_record: file_bytes as f64 / cfg.big as f64,
        oplog_len,
        eq_index_p50,
        eq_index_rate,
        eq_index_hits,
        eq_scan_p50,
        eq_scan_rate,
        create_index,
    }
}

/// Bytes of a database file plus its WAL, if any is left.
fn file_size(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    len(path) + len(&wal)
}

/// A fresh directory for one measurement's file (under `BLAZEDB_BENCH_DIR` if set).
fn scratch() -> tempfile::TempDir {
    match std::env::var_os("BLAZEDB_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("bench.blazedb")
}

/// The figures the goals are judged on, `[encrypted, plaintext]`.
struct Headline {
    batched_rate: [f64; 2],
    single_p50_us: [f64; 2],
}

fn engine(cfg: &Config, out: &mut String) -> Headline {
    let mut rows = Vec::new();

    // Single inserts, then opens of the same file.
    let mut single = Vec::new();
    let mut open = Vec::new();
    for mode in MODES {
        progress(&format!(
            "{}: {} single inserts",
            mode.name(),
            cfg.single_inserts
        ));
        let dir = scratch();
        let path = db_path(&dir);
        single.push(single_inserts(mode, cfg, &path));
        progress(&format!("{}: {} opens", mode.name(), cfg.opens));
        open.push(opens(mode, cfg, &path));
    }
    let pick = |f: fn(&SingleInsert) -> Duration| [micros(f(&single[0])), micros(f(&single[1]))];
    let n = thousands(cfg.single_inserts as f64);
    rows.push(row(
        format!("single insert, own transaction + commit: p50 µs ({n} inserts)"),
        Unit::Micros,
        pick(|s| s.p50),
    ));
    rows.push(row(
        "single insert, own transaction + commit: p99 µs",
        Unit::Micros,
        pick(|s| s.p99),
    ));
    rows.push(row(
        "single insert, own transaction + commit: max µs",
        Unit::Micros,
        pick(|s| s.max),
    ));

    // Batched inserts.
    let mut batched = [0.0; 2];
    for (i, mode) in MODES.into_iter().enumerate() {
        progress(&format!(
            "{}: {} batched inserts",
            mode.name(),
            cfg.batched_total
        ));
        let dir = scratch();
        batched[i] = batched_inserts(mode, cfg, &db_path(&dir));
    }
    rows.push(row(
        format!(
            "batched insert, op log + 1 index: records/s ({} in batches of {})",
            thousands(cfg.batched_total as f64),
            thousands(cfg.batch as f64)
        ),
        Unit::Rate,
        batched,
    ));

    // The query set.
    let mut big = Vec::new();
    for mode in MODES {
        let dir = scratch();
        big.push(big_set(mode, cfg, &db_path(&dir)));
    }
    assert!(big.iter().all(|b| b.oplog_len >= cfg.big as u64));
    let both = |f: fn(&BigSet) -> f64| [f(&big[0]), f(&big[1])];
    let n = thousands(cfg.big as f64);
    let hits = big[0].eq_index_hits.round();
    rows.push(row(
        format!("bulk load {n} records, op log + 1 index: records/s"),
        Unit::Rate,
        both(|b| b.load_rate),
    ));
    rows.push(row(
        format!("file size per record ({n} records, op log + 1 index, after close): bytes"),
        Unit::Bytes,
        both(|b| b.bytes_per_record),
    ));
    rows.push(row(
        format!(
            "eq query, indexed (~{hits} hits of {n}): p50 ms ({} queries)",
            cfg.eq_queries
        ),
        Unit::Millis,
        both(|b| millis(b.eq_index_p50)),
    ));
    rows.push(row(
        "eq query, indexed: records returned/s",
        Unit::Rate,
        both(|b| b.eq_index_rate),
    ));
    rows.push(row(
        format!(
            "eq query, no index (full scan of {n}): p50 ms ({} queries)",
            cfg.scan_queries
        ),
        Unit::Millis,
        both(|b| millis(b.eq_scan_p50)),
    ));
    rows.push(row(
        "eq query, no index: records returned/s",
        Unit::Rate,
        both(|b| b.eq_scan_rate),
    ));
    rows.push(row(
        "index speed-up (full-scan p50 ÷ indexed p50)",
        Unit::Count,
        both(|b| b.eq_scan_p50.as_secs_f64() / b.eq_index_p50.as_secs_f64()),
    ));
    rows.push(row(
        format!("create_index over {n} existing records: s"),
        Unit::Seconds,
        both(|b| b.create_index.as_secs_f64()),
    ));
    rows.push(row(
        format!("open existing file: p50 ms ({} opens)", cfg.opens),
        Unit::Millis,
        [millis(open[0]), millis(open[1])],
    ));

    writeln!(
        out,
        "### Engine: encrypted (SQLCipher) vs plaintext\n\n\
         Same code, same records; only the file is opened with `Database::create(path, password)` \
         or `OpenOptions::new().create(path)`. Ratio = encrypted ÷ plaintext (for latencies and \
         sizes above 1 is worse, for rates below 1 is worse).\n"
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
        single_p50_us: pick(|s| s.p50),
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let cfg = Config::from_env();
    let started = Instant::now();
    let mut out = String::new();

    let mut titles = BugGen::new(0, cfg.distinct);
    let mean_title = (0..1000).map(|_| titles.title().len()).sum::<usize>() as f64 / 1000.0;
    writeln!(
        out,
        "## BlazeDB engine benchmark ({} mode)\n\n\
         Machine: {} CPUs, {}. Records: title (mean {mean_title:.0} chars), status \
         (open/closed/triage), priority (int, {} distinct values), teamId (uuid), assignee \
         (uuid), createdAt (date). Durability: default (`Process`, WAL + synchronous=NORMAL).\n",
        if cfg.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        cfg.distinct,
    )
    .unwrap();

    sizes(&mut out);
    let headline = engine(&cfg, &mut out);
    goals(&cfg, &headline, &mut out);
    writeln!(
        out,
        "Total run time: {:.0} s.",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    print!("{out}");
}
