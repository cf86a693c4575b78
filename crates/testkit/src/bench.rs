//! Helpers shared by the benchmark programs (`crates/core/benches/engine.rs`,
//! `crates/sync/benches/sync.rs` and the `bench/` workspace). The two storage modes, test data (the bug-record generator), statistics, number
//! formatting, scratch directories and the machine description.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Date, Fields, OpenOptions, Uuid, fields};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const PASSWORD: &str = "correct horse battery staple";
pub const COLLECTION: &str = "bugs";

/// Whether `BLAZEDB_BENCH_QUICK` asks for the smoke-sized run.
pub fn quick_mode() -> bool {
    std::env::var("BLAZEDB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How the database files are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `Database::create(path, password)`: SQLCipher.
    Encrypted,
    /// `OpenOptions::new().create(path)`: plain SQLite, same code otherwise.
    Plaintext,
}

/// Both storages, in the order of every `[encrypted, plaintext]` pair of figures.
pub const STORAGES: [Storage; 2] = [Storage::Encrypted, Storage::Plaintext];

impl Storage {
    pub fn create(self, path: &Path) -> Database {
        match self {
            Storage::Encrypted => Database::create(path, PASSWORD).expect("create encrypted"),
            Storage::Plaintext => OpenOptions::new().create(path).expect("create plaintext"),
        }
    }

    pub fn open(self, path: &Path) -> Database {
        match self {
            Storage::Encrypted => Database::open(path, PASSWORD).expect("open encrypted"),
            Storage::Plaintext => OpenOptions::new().open(path).expect("open plaintext"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test data: a bug tracker.

pub const STATUSES: [&str; 3] = ["open", "closed", "triage"];
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
pub const EPOCH_2025: i64 = 1_735_689_600_000;

/// Deterministic bug records: title (~36 chars), status, priority, teamId, assignee, createdAt.
pub struct BugGen {
    rng: StdRng,
    teams: Vec<Uuid>,
    people: Vec<Uuid>,
    distinct: i64,
    n: i64,
}

impl BugGen {
    /// Records from `seed` with `priority` in `0..distinct`.
    pub fn new(seed: u64, distinct: i64) -> BugGen {
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

    pub fn title(&mut self) -> String {
        let r = &mut self.rng;
        format!(
            "{} {} {}",
            SUBJECTS[r.random_range(0..SUBJECTS.len())],
            CONTEXTS[r.random_range(0..CONTEXTS.len())],
            DEVICES[r.random_range(0..DEVICES.len())]
        )
    }

    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> Fields {
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

    /// `n` records.
    pub fn batch(&mut self, n: usize) -> Vec<Fields> {
        (0..n).map(|_| self.next()).collect()
    }

    /// `total` records in transactions of `batch`, generated before any timing starts.
    pub fn batches(&mut self, total: usize, batch: usize) -> Vec<Vec<Fields>> {
        let mut out = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = batch.min(left);
            out.push(self.batch(n));
            left -= n;
        }
        out
    }
}

/// Mean length in characters of the generated titles (over 1,000 from a fixed seed).
pub fn mean_title_chars() -> f64 {
    let mut titles = BugGen::new(0, 1);
    (0..1000).map(|_| titles.title().len()).sum::<usize>() as f64 / 1000.0
}

pub fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

/// Nearest-rank percentile of an ascending slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `x` rounded to a whole number, with thousands separated by commas.
pub fn thousands(x: f64) -> String {
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

/// How a figure is shown in a table.
#[derive(Clone, Copy)]
pub enum Unit {
    /// Records or operations per second: a whole number.
    Rate,
    /// A whole number.
    Count,
    /// A number with one decimal.
    Decimal,
    /// Microseconds: one decimal below 100, a whole number from 100 up.
    Micros,
    /// Milliseconds of single operations (queries, opens): three decimals below 10, one from
    /// 10 up.
    Millis,
    /// Milliseconds of longer spans (catching up, CPU time of a run): one decimal below 100, a
    /// whole number from 100 up.
    LongMillis,
    /// Seconds, two decimals.
    Seconds,
    /// Bytes: a whole number.
    Bytes,
    /// Bytes per operation: two decimals below 10, one from 10 up (per-op acknowledgement
    /// traffic is tiny).
    BytesPerOp,
}

impl Unit {
    pub fn show(self, x: f64) -> String {
        match self {
            Unit::Rate | Unit::Count | Unit::Bytes => thousands(x),
            Unit::Decimal => format!("{x:.1}"),
            Unit::Micros | Unit::LongMillis if x < 100.0 => format!("{x:.1}"),
            Unit::Micros | Unit::LongMillis => thousands(x),
            Unit::Millis if x < 10.0 => format!("{x:.3}"),
            Unit::Millis => format!("{x:.1}"),
            Unit::Seconds => format!("{x:.2}"),
            Unit::BytesPerOp if x < 10.0 => format!("{x:.2}"),
            Unit::BytesPerOp => format!("{x:.1}"),
        }
    }
}

pub fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Index order of the two storage modes (`[encrypted, plaintext]`) for the `k`-th step:
/// encrypted first on even steps, so load from other processes on the machine hits both alike.
pub fn order(k: usize) -> [usize; 2] {
    if k.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

// ---------------------------------------------------------------------------------------------
// Files and the machine.

/// A fresh scratch directory (under `BLAZEDB_BENCH_DIR` if set).
pub fn scratch() -> tempfile::TempDir {
    match std::env::var_os("BLAZEDB_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// "N CPUs, model": the machine, for a report's header.
pub fn machine() -> String {
    format!(
        "{} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    )
}

/// The CPU's model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
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

/// `/proc/loadavg`'s 1-minute load average: other processes compete for the same cores.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A report's last line: the total run time since `started`, and the load average at the start
/// (`load_before`) and now.
pub fn footer(out: &mut String, started: Instant, load_before: &str) {
    writeln!(
        out,
        "Total run time: {:.0} s. 1-minute load average at start {load_before}, at end {}.",
        started.elapsed().as_secs_f64(),
        load_average()
    )
    .unwrap();
}
