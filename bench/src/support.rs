//! Test data (the seeds' bug record), statistics, number formatting, tables and the machine.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Fields, Uuid, fields};

// The helpers the core and sync benches share (percentiles, number formatting, the machine):
// one copy for every benchmark.
pub use blazedb_testkit::bench::{machine, micros, percentile, progress, thousands};

pub const PASSWORD: &str = "correct horse battery staple";
pub const COLLECTION: &str = "bugs";

/// How long any wait may take before the bench gives up (a stall is a bug, not a figure).
pub const STALL: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Test data.

/// The seeds' bug record (the one docs/bench.md's size table encodes).
pub const SEED_TITLE: &str = "Crash when opening settings on iPad";
pub const SEED_TEAM: u128 = 0x0b3c5d7e_1f2a_4b6c_8d9e_0f1a2b3c4d5e;
pub const SEED_ASSIGNEE: u128 = 0x9a8b7c6d_5e4f_4a3b_2c1d_0e0f1a2b3c4d;
pub const STATUSES: [&str; 3] = ["open", "closed", "triage"];

/// One bug record without its id (the database gives it one, a UUIDv7, on both sides).
#[derive(Debug, Clone, PartialEq)]
pub struct Bug {
    pub title: String,
    pub status: &'static str,
    pub team: Uuid,
    pub assignee: Uuid,
}

impl Bug {
    /// The `i`-th record shaped like the seed (as docs/bench.md's 100-record row): the seed's
    /// title with ` #<1000 + i>`, status cycling open/closed/triage, the seed's team, one of
    /// five assignees.
    pub fn nth(i: u64) -> Bug {
        Bug {
            title: format!("{SEED_TITLE} #{}", 1000 + i),
            status: STATUSES[(i % 3) as usize],
            team: Uuid::from_u128(SEED_TEAM),
            assignee: Uuid::from_u128(SEED_ASSIGNEE + u128::from(i % 5)),
        }
    }

    pub fn fields(&self) -> Fields {
        fields! {
            "title" => self.title.as_str(),
            "status" => self.status,
            "teamId" => self.team,
            "assignee" => self.assignee,
        }
    }
}

/// Records `first..first + n`.
pub fn bugs(first: u64, n: usize) -> Vec<Bug> {
    (first..first + n as u64).map(Bug::nth).collect()
}

/// A device's database: an encrypted file (SQLCipher) in `dir`.
pub fn device_db(dir: &std::path::Path, name: &str) -> Database {
    Database::create(dir.join(format!("{name}.blazedb")), PASSWORD).expect("create device db")
}

/// Waits until `sub` reports a commit that changed record `id`.
pub fn wait_for_record(sub: &blazedb_core::Subscription, id: Uuid) {
    let deadline = Instant::now() + STALL;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let commit = sub.recv_timeout(left).expect("the record never arrived");
        if commit.changes.iter().any(|c| c.id == id) {
            return;
        }
    }
}

/// Waits until `db` holds `n` records in the bugs collection.
pub fn wait_count(db: &Database, sub: &blazedb_core::Subscription, n: u64) {
    let deadline = Instant::now() + STALL;
    while db.count(COLLECTION).expect("count") < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "records never arrived");
        let _ = sub.recv_timeout(left.min(Duration::from_millis(50)));
    }
}

/// Polls `done` every `every` until it is true; panics after [`STALL`] saying `what`.
pub fn poll_until(what: &str, every: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STALL;
    while !done() {
        assert!(Instant::now() < deadline, "stalled: {what}");
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

/// How a figure is shown in a table.
#[derive(Clone, Copy)]
pub enum Unit {
    /// A whole number (counts, rates, bytes).
    Count,
    /// Microseconds: one decimal below 100, a whole number from 100 up.
    Micros,
    /// Seconds, two decimals.
    Seconds,
    /// Bytes per operation: one decimal.
    BytesPerOp,
    /// Two decimals.
    Hundredths,
}

impl Unit {
    pub fn show(self, x: f64) -> String {
        if x.is_nan() {
            return "–".into();
        }
        match self {
            Unit::Count => thousands(x),
            Unit::Micros if x < 100.0 => format!("{x:.1}"),
            Unit::Micros => thousands(x),
            Unit::Seconds => format!("{x:.2}"),
            Unit::BytesPerOp => format!("{x:.1}"),
            Unit::Hundredths => format!("{x:.2}"),
        }
    }
}

/// A goal a figure (or a ratio) is judged against.
#[derive(Clone, Copy)]
pub enum Goal {
    None,
    /// At most this.
    AtMost(f64, &'static str),
    /// At least this.
    AtLeast(f64, &'static str),
    /// Below this.
    Below(f64, &'static str),
}

impl Goal {
    pub fn mark(self, x: f64) -> &'static str {
        match self {
            Goal::None => "",
            _ if x.is_nan() => " ✗",
            Goal::AtMost(limit, _) if x <= limit => " ✓",
            Goal::AtLeast(limit, _) if x >= limit => " ✓",
            Goal::Below(limit, _) if x < limit => " ✓",
            _ => " ✗",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Goal::None => "",
            Goal::AtMost(_, t) | Goal::AtLeast(_, t) | Goal::Below(_, t) => t,
        }
    }
}

/// How a row's ratio column is computed.
#[derive(Clone, Copy)]
pub enum Ratio {
    /// No ratio.
    None,
    /// BlazeDB ÷ gRPC (bytes: below 1 is better for BlazeDB).
    Share,
    /// gRPC ÷ BlazeDB (latencies: "BlazeDB is N× faster").
    Speedup,
}

/// One row: a BlazeDB figure beside the gRPC figures (NaN where there is none).
pub struct Row {
    pub label: String,
    pub unit: Unit,
    pub blazedb: f64,
    pub grpc: Vec<f64>,
    pub ratio: Ratio,
    /// Judges the ratio (or the BlazeDB figure when there is no ratio).
    pub goal: Goal,
}

impl Row {
    pub fn new(label: impl Into<String>, unit: Unit, blazedb: f64, grpc: Vec<f64>) -> Row {
        Row {
            label: label.into(),
            unit,
            blazedb,
            grpc,
            ratio: Ratio::None,
            goal: Goal::None,
        }
    }

    pub fn ratio(mut self, ratio: Ratio, goal: Goal) -> Row {
        self.ratio = ratio;
        self.goal = goal;
        self
    }

    pub fn goal(mut self, goal: Goal) -> Row {
        self.goal = goal;
        self
    }
}

/// A Markdown table: Measure | BlazeDB | one column per gRPC variant | one ratio column per
/// gRPC variant (headed `ratio_header` with the variant's name) | Goal. The goal judges the
/// ratio to the first gRPC column (or the BlazeDB figure in a row without a ratio).
pub fn table(out: &mut String, grpc_columns: &[&str], ratio_header: &str, rows: &[Row]) {
    let has_ratio = rows.iter().any(|r| !matches!(r.ratio, Ratio::None));
    let has_goal = rows.iter().any(|r| !matches!(r.goal, Goal::None));
    let mut header = String::from("| Measure | BlazeDB |");
    let mut rule = String::from("|---|---:|");
    for c in grpc_columns {
        write!(header, " {c} |").unwrap();
        rule.push_str("---:|");
    }
    if has_ratio {
        for c in grpc_columns {
            write!(header, " {} |", ratio_header.replace("{}", c)).unwrap();
            rule.push_str("---:|");
        }
    }
    if has_goal {
        header.push_str(" Goal |");
        rule.push_str("---|");
    }
    writeln!(out, "{header}\n{rule}").unwrap();
    for r in rows {
        let ratios: Vec<f64> = (0..grpc_columns.len())
            .map(|i| {
                let g = r.grpc.get(i).copied().unwrap_or(f64::NAN);
                match r.ratio {
                    Ratio::None => f64::NAN,
                    Ratio::Share => r.blazedb / g,
                    Ratio::Speedup => g / r.blazedb,
                }
            })
            .collect();
        let judged = if matches!(r.ratio, Ratio::None) {
            r.blazedb
        } else {
            ratios.first().copied().unwrap_or(f64::NAN)
        };
        let mark = r.goal.mark(judged);
        let mut line = format!("| {} | {}", r.label, r.unit.show(r.blazedb));
        if matches!(r.ratio, Ratio::None) {
            line.push_str(mark);
        }
        line.push_str(" |");
        for i in 0..grpc_columns.len() {
            let v = r.grpc.get(i).copied().unwrap_or(f64::NAN);
            write!(line, " {} |", r.unit.show(v)).unwrap();
        }
        if has_ratio {
            for (i, ratio) in ratios.iter().enumerate() {
                if ratio.is_nan() {
                    line.push_str(" |");
                } else {
                    let m = if i == 0 { mark } else { "" };
                    write!(line, " {ratio:.2}×{m} |").unwrap();
                }
            }
        }
        if has_goal {
            write!(line, " {} |", r.goal.text()).unwrap();
        }
        writeln!(out, "{line}").unwrap();
    }
    writeln!(out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The machine.

/// CPU seconds (user + system) used so far by this process's threads, grouped by thread name
/// up to the first space (`blazedb-sync bugs` counts as `blazedb-sync`), from
/// `/proc/self/task/*/stat`. Threads that have ended are not counted.
pub fn thread_cpu() -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // After the command name: field 3 (state) first; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        let group = comm.trim().split(' ').next().unwrap_or_default().to_owned();
        *out.entry(group).or_insert(0.0) += ticks as f64 / 100.0;
    }
    out
}

/// CPU seconds of thread group `name` between two [`thread_cpu`] snapshots.
pub fn cpu_between(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    name: &str,
) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

/// `/proc/loadavg`'s three load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}
