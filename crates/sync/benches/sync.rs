//! BlazeDB sync benchmark: `cargo bench -p blazedb-sync --bench sync`.
//!
//! A plain program (no harness) that prints Markdown tables; every figure is measured in the
//! same run, side by side with its baseline, for an encrypted and a plaintext pair of
//! databases. `BLAZEDB_BENCH_QUICK=1` runs a smoke-sized version, `BLAZEDB_BENCH_DIR=/some/dir`
//! puts the database files (and the socket) there instead of the system temporary directory.
//! What each row measures is described in `docs/bench.md` ("Sync").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "bench"
)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use blazedb_core::{Database, Fields, Uuid};
use blazedb_sync::{ConnectOptions, Mode, SyncEngine, Topology, UnixRelay, UnixRelayListener};

use blazedb_testkit::bench as support;
use support::{
    BugGen, COLLECTION, STORAGES, Storage, Unit, footer, load_average, machine, mean_title_chars,
    micros, order, percentile, progress, quick_mode, scratch, thousands,
};

/// How long any wait for the other side may take before the bench gives up (a stall is a bug).
const STALL: Duration = Duration::from_secs(60);

/// Sizes and repetition counts of one run.
struct Config {
    quick: bool,
    /// Timed commit-to-visible samples per storage (after `latency_warmup` untimed ones).
    latency_samples: usize,
    latency_warmup: usize,
    /// Records sent by each throughput run.
    throughput_ops: usize,
    /// Records per `insert_many` transaction in the throughput runs.
    batch: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = quick_mode();
        if quick {
            Config {
                quick,
                latency_samples: 300,
                latency_warmup: 30,
                throughput_ops: 20_000,
                batch: 1_000,
            }
        } else {
            Config {
                quick,
                latency_samples: 2_000,
                latency_warmup: 100,
                throughput_ops: 200_000,
                batch: 1_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table rows.

/// A goal a figure is judged against.
#[derive(Clone, Copy)]
enum Goal {
    None,
    Below(f64, &'static str),
    AtLeast(f64, &'static str),
}

impl Goal {
    fn mark(self, x: f64) -> &'static str {
        match self {
            Goal::None => "",
            Goal::Below(limit, _) if x < limit => " ✓",
            Goal::AtLeast(limit, _) if x >= limit => " ✓",
            _ => " ✗",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Goal::None => "",
            Goal::Below(_, text) | Goal::AtLeast(_, text) => text,
        }
    }
}

/// One table row: a figure per storage, `[encrypted, plaintext]`.
struct Row {
    label: String,
    unit: Unit,
    values: [f64; 2],
    goal: Goal,
}

fn row(label: impl Into<String>, unit: Unit, values: [f64; 2], goal: Goal) -> Row {
    Row {
        label: label.into(),
        unit,
        values,
        goal,
    }
}

fn table(out: &mut String, rows: &[Row]) {
    writeln!(out, "| Measure | Encrypted | Plaintext | Goal |").unwrap();
    writeln!(out, "|---|---:|---:|---|").unwrap();
    for r in rows {
        let [enc, plain] = r
            .values
            .map(|v| format!("{}{}", r.unit.show(v), r.goal.mark(v)));
        writeln!(out, "| {} | {enc} | {plain} | {} |", r.label, r.goal.text()).unwrap();
    }
    writeln!(out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Files.

/// Databases `a` and `b` (and any socket) in one scratch directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: scratch() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn create(&self, storage: Storage, name: &str) -> Database {
        storage.create(&self.path(&format!("{name}.blazedb")))
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Commit-to-visible latency, in process.

/// Two databases in one process, kept in step by their engines over an in-memory relay.
struct LocalPair {
    a: Database,
    b: Database,
    topology: Topology,
    _files: Files,
}

impl LocalPair {
    /// `mode` is seen from `a`.
    fn new(storage: Storage, mode: Mode) -> LocalPair {
        let files = Files::new();
        let a = files.create(storage, "a");
        let b = files.create(storage, "b");
        let mut topology = Topology::new();
        let an = topology.register(&a, "a").unwrap();
        let bn = topology.register(&b, "b").unwrap();
        topology.connect_local(an, bn, mode).unwrap();
        assert!(topology.wait_idle(STALL).unwrap(), "handshake stalled");
        LocalPair {
            a,
            b,
            topology,
            _files: files,
        }
    }

    fn wait_idle(&self) {
        assert!(self.topology.wait_idle(STALL).unwrap(), "sync stalled");
    }
}

/// One commit-to-visible sample.
#[derive(Clone, Copy)]
struct Sample {
    /// `db.insert` of the same record on a database without a sync engine.
    baseline: Duration,
    /// `a.insert` with a's engine attached (the call alone).
    commit: Duration,
    /// From just before `a.insert` until b's subscription delivers the record.
    visible: Duration,
    /// A message passed through three threads over channels, no database work: the
    /// wake-ups the sync path makes (a's engine, b's engine, the subscriber).
    hops: Duration,
}

/// Two threads that pass a message on over `std::sync::mpsc` channels, so that a message sent
/// in comes back after three thread wake-ups, like a change on its way from `a` to `b`'s
/// subscriber (a's engine, b's engine, the subscriber).
struct HopChain {
    input: mpsc::Sender<()>,
    output: mpsc::Receiver<()>,
}

impl HopChain {
    fn new() -> HopChain {
        let (input, rx1) = mpsc::channel::<()>();
        let (tx2, rx2) = mpsc::channel::<()>();
        let (tx3, output) = mpsc::channel::<()>();
        let forward = |name: &str, rx: mpsc::Receiver<()>, tx: mpsc::Sender<()>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                })
                .unwrap();
        };
        forward("hop 1", rx1, tx2);
        forward("hop 2", rx2, tx3);
        HopChain { input, output }
    }

    /// One round: three wake-ups.
    fn time(&self) -> Duration {
        let start = Instant::now();
        self.input.send(()).unwrap();
        self.output.recv_timeout(STALL).unwrap();
        start.elapsed()
    }
}

impl Sample {
    /// From the moment `a.insert` returned until the record was visible in b: the sync alone.
    fn propagation(&self) -> Duration {
        self.visible.saturating_sub(self.commit)
    }
}

/// The `p`-th percentile (the maximum for `None`) of one measure over the samples, in µs.
fn stat(samples: &[Sample], measure: fn(&Sample) -> Duration, p: Option<f64>) -> f64 {
    let mut times: Vec<Duration> = samples.iter().map(measure).collect();
    times.sort();
    micros(match p {
        Some(p) => percentile(&times, p),
        None => *times.last().unwrap(),
    })
}

/// Waits until `sub` reports a commit that changed record `id`.
fn wait_for_record(sub: &blazedb_core::Subscription, id: Uuid) {
    loop {
        let commit = sub.recv_timeout(STALL).expect("the record never arrived");
        if commit.changes.iter().any(|c| c.id == id) {
            return;
        }
    }
}

/// Single inserts into `a`, each timed until it is visible in `b`; between samples the pair
/// is left to go idle (untimed), so every sample starts from a quiet system. The baseline
/// inserts into a database without sync run in the same loop. Returns the samples per storage.
fn latency(cfg: &Config) -> [Vec<Sample>; 2] {
    let pairs = STORAGES.map(|s| LocalPair::new(s, Mode::Bidirectional));
    let base_files = Files::new();
    let bases = STORAGES.map(|s| base_files.create(s, &format!("alone-{s:?}")));
    let subs = [0, 1].map(|i| pairs[i].b.subscribe(COLLECTION));
    let hops = HopChain::new();
    let mut bugs = BugGen::new(1, 1000);
    let mut samples = [Vec::new(), Vec::new()];
    for k in 0..cfg.latency_warmup + cfg.latency_samples {
        let record = bugs.next();
        for i in order(k) {
            let start = Instant::now();
            bases[i].insert(COLLECTION, record.clone()).unwrap();
            let baseline = start.elapsed();

            let pair = &pairs[i];
            let start = Instant::now();
            let id = pair.a.insert(COLLECTION, record.clone()).unwrap();
            let commit = start.elapsed();
            wait_for_record(&subs[i], id);
            let visible = start.elapsed();
            pair.wait_idle();
            let hops = hops.time();
            if k >= cfg.latency_warmup {
                samples[i].push(Sample {
                    baseline,
                    commit,
                    visible,
                    hops,
                });
            }
        }
    }
    let total = (cfg.latency_warmup + cfg.latency_samples) as u64;
    for pair in &pairs {
        assert_eq!(pair.b.count(COLLECTION).unwrap(), total);
    }
    samples
}

fn latency_section(cfg: &Config, out: &mut String) {
    progress(&format!(
        "{} commit-to-visible samples (both storages)",
        cfg.latency_samples
    ));
    let samples = latency(cfg);
    let pick = |measure: fn(&Sample) -> Duration, p: Option<f64>| {
        [0, 1].map(|i| stat(&samples[i], measure, p))
    };
    let visible: fn(&Sample) -> Duration = |s| s.visible;
    let commit: fn(&Sample) -> Duration = |s| s.commit;
    let propagation: fn(&Sample) -> Duration = Sample::propagation;
    let baseline: fn(&Sample) -> Duration = |s| s.baseline;
    let hops: fn(&Sample) -> Duration = |s| s.hops;
    let slow = |measure: fn(&Sample) -> Duration| {
        [0, 1].map(|i| {
            samples[i]
                .iter()
                .filter(|s| measure(s) > Duration::from_millis(5))
                .count() as f64
        })
    };
    let n = thousands(cfg.latency_samples as f64);
    let p50 = pick(visible, Some(50.0));
    let base50 = pick(baseline, Some(50.0));
    let rows = [
        row(
            format!("commit → visible in b: p50 µs ({n} inserts)"),
            Unit::Micros,
            p50,
            Goal::Below(100.0, "< 100 µs"),
        ),
        row(
            "commit → visible in b: p99 µs",
            Unit::Micros,
            pick(visible, Some(99.0)),
            Goal::Below(1000.0, "< 1 ms"),
        ),
        row(
            "commit → visible in b: max µs",
            Unit::Micros,
            pick(visible, None),
            Goal::None,
        ),
        row(
            "commit → visible in b: samples over 5 ms",
            Unit::Count,
            slow(visible),
            Goal::None,
        ),
        row(
            "  of which `a.insert` (engine attached): p50 µs",
            Unit::Micros,
            pick(commit, Some(50.0)),
            Goal::None,
        ),
        row(
            "  of which `a.insert` (engine attached): p99 µs",
            Unit::Micros,
            pick(commit, Some(99.0)),
            Goal::None,
        ),
        row(
            "  of which `a.insert` returned → visible in b: p50 µs",
            Unit::Micros,
            pick(propagation, Some(50.0)),
            Goal::None,
        ),
        row(
            "  of which `a.insert` returned → visible in b: p99 µs",
            Unit::Micros,
            pick(propagation, Some(99.0)),
            Goal::None,
        ),
        row(
            "baseline: single insert, no sync: p50 µs",
            Unit::Micros,
            base50,
            Goal::None,
        ),
        row(
            "baseline: single insert, no sync: p99 µs",
            Unit::Micros,
            pick(baseline, Some(99.0)),
            Goal::None,
        ),
        row(
            "baseline: single insert, no sync: max µs",
            Unit::Micros,
            pick(baseline, None),
            Goal::None,
        ),
        row(
            "baseline: single insert, no sync: samples over 5 ms",
            Unit::Count,
            slow(baseline),
            Goal::None,
        ),
        row(
            "floor: 3 thread wake-ups over channels, no database: p50 µs",
            Unit::Micros,
            pick(hops, Some(50.0)),
            Goal::None,
        ),
        row(
            "floor: 3 thread wake-ups over channels, no database: p99 µs",
            Unit::Micros,
            pick(hops, Some(99.0)),
            Goal::None,
        ),
        row(
            "sync overhead at p50 (visible p50 − baseline p50): µs",
            Unit::Micros,
            [0, 1].map(|i| p50[i] - base50[i]),
            Goal::None,
        ),
    ];
    writeln!(
        out,
        "### Commit-to-visible latency, in process\n\n\
         Two databases `a` and `b` connected by `Topology::connect_local(a, b, \
         Mode::Bidirectional)`. Each sample is one `a.insert` of one bug record, timed from just \
         before the call until `b.subscribe(\"bugs\")` delivers a change with the new id; the \
         pair is left to go idle between samples (untimed). Percentiles of each row are taken \
         separately. The baseline inserts the same records into a third database without \
         sync, in the same loop; the floor passes a message through two threads and back over \
         `std::sync::mpsc` channels (the three wake-ups a change needs: a's engine, b's engine, \
         the subscriber), also in the same loop, after each sample.\n"
    )
    .unwrap();
    table(out, &rows);
}

// ---------------------------------------------------------------------------------------------
// 2. and 3. One-way throughput.

/// What one throughput run measured.
struct Throughput {
    /// From the first `insert_many` until `b` has applied the last record.
    total: Duration,
    /// From the first `insert_many` until the last one returned.
    inserting: Duration,
    /// Apply transactions `b` committed (commits its subscription saw).
    b_commits: u64,
    /// Bytes that crossed the wire `[a → b, b → a]`, when a proxy counted them.
    wire_bytes: Option<[u64; 2]>,
    /// Where the CPU time of the run went (`None` where `/proc` does not tell).
    cpu: Option<CpuSplit>,
}

impl Throughput {
    fn rate(&self, ops: usize) -> f64 {
        ops as f64 / self.total.as_secs_f64()
    }

    fn insert_rate(&self, ops: usize) -> f64 {
        ops as f64 / self.inserting.as_secs_f64()
    }

    /// How long `b` took to catch up after the last insert returned.
    fn tail(&self) -> Duration {
        self.total.saturating_sub(self.inserting)
    }
}

/// Inserts `batches` into `a` while a watcher thread counts what `b`'s subscription reports;
/// returns once `b` has every record.
fn pump_through(a: &Database, b: &Database, batches: Vec<Vec<Fields>>) -> Throughput {
    let total_ops: usize = batches.iter().map(Vec::len).sum();
    let sub = b.subscribe(COLLECTION);
    let watcher = std::thread::Builder::new()
        .name("watcher".into())
        .spawn(move || {
            let mut seen = 0;
            let mut commits = 0;
            while seen < total_ops {
                let commit = sub.recv_timeout(STALL).expect("sync stalled");
                seen += commit.changes.len();
                commits += 1;
            }
            (Instant::now(), commits)
        })
        .unwrap();
    let cpu_before = thread_times();
    let start = Instant::now();
    for batch in batches {
        a.insert_many(COLLECTION, batch).unwrap();
    }
    let inserted = Instant::now();
    let (done, b_commits) = watcher.join().unwrap();
    let cpu = CpuSplit::between(&cpu_before, &thread_times());
    assert_eq!(b.count(COLLECTION).unwrap(), total_ops as u64);
    Throughput {
        total: done.duration_since(start),
        inserting: inserted.duration_since(start),
        b_commits,
        wire_bytes: None,
        cpu,
    }
}

/// CPU time of the threads that do the work, over one run.
#[derive(Clone, Copy, Default)]
struct CpuSplit {
    /// The bench's main thread: `a.insert_many`, and the `on_commit` hand-off to a's engine.
    inserter: Duration,
    /// The engine threads (`blazedb-sync a`, `blazedb-sync b`): reading a's op log and
    /// sending, applying in b.
    engine_a: Duration,
    engine_b: Duration,
    /// The Unix relays' reader and writer threads, both sides (encoding, socket, decoding).
    relays: Duration,
    /// Time these threads were ready to run but waiting for a CPU.
    waiting: Duration,
}

/// Per thread of this process (by thread id): its name, CPU time and run-queue wait, from
/// `/proc/self/task/<tid>/schedstat`.
fn thread_times() -> Vec<(String, String, Duration, Duration)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let sched = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let mut fields = sched.split_whitespace().map(|f| f.parse::<u64>().ok());
            let run = fields.next()??;
            let wait = fields.next()??;
            Some((
                t.file_name().into_string().ok()?,
                comm.trim().to_owned(),
                Duration::from_nanos(run),
                Duration::from_nanos(wait),
            ))
        })
        .collect()
}

impl CpuSplit {
    fn between(
        before: &[(String, String, Duration, Duration)],
        after: &[(String, String, Duration, Duration)],
    ) -> Option<CpuSplit> {
        if after.is_empty() {
            return None;
        }
        let main = std::process::id().to_string();
        let mut split = CpuSplit::default();
        for (tid, comm, run, wait) in after {
            let (run0, wait0) = before
                .iter()
                .find(|(t, ..)| t == tid)
                .map_or((Duration::ZERO, Duration::ZERO), |(_, _, r, w)| (*r, *w));
            let slot = if *tid == main {
                &mut split.inserter
            } else if comm == "blazedb-sync a" {
                &mut split.engine_a
            } else if comm == "blazedb-sync b" {
                &mut split.engine_b
            } else if comm.starts_with("unix-relay") {
                &mut split.relays
            } else {
                continue;
            };
            *slot += run.saturating_sub(run0);
            split.waiting += wait.saturating_sub(wait0);
        }
        Some(split)
    }
}

/// The baseline: the same inserts into a database without sync, one per storage, alternating
/// batch by batch (as the latency samples do) so that load from elsewhere hits both alike.
/// Returns the time spent in `insert_many` per storage.
fn insert_only(batches: &[Vec<Fields>]) -> [Duration; 2] {
    let files = Files::new();
    let dbs = STORAGES.map(|s| files.create(s, &format!("alone-{s:?}")));
    let mut spent = [Duration::ZERO; 2];
    for (k, batch) in batches.iter().enumerate() {
        for i in order(k) {
            let batch = batch.clone();
            let start = Instant::now();
            dbs[i].insert_many(COLLECTION, batch).unwrap();
            spent[i] += start.elapsed();
        }
    }
    let total: usize = batches.iter().map(Vec::len).sum();
    for db in &dbs {
        assert_eq!(db.count(COLLECTION).unwrap(), total as u64);
    }
    spent
}

/// One way over the in-memory relay; `mode` is seen from the sender `a`.
fn local_throughput(storage: Storage, mode: Mode, batches: Vec<Vec<Fields>>) -> Throughput {
    let pair = LocalPair::new(storage, mode);
    let result = pump_through(&pair.a, &pair.b, batches);
    pair.wait_idle();
    result
}

/// A pass-through between two Unix sockets that counts the bytes going each way: `a` connects
/// to the proxy's socket, the proxy connects to `b`'s listener. Used only for the bytes rows,
/// in a run of its own, so the timed runs have no extra hop.
struct CountingProxy {
    /// Bytes from `a` to `b`, and from `b` to `a`.
    counts: [Arc<AtomicU64>; 2],
    /// The proxy's two sockets, kept to shut them down.
    streams: [UnixStream; 2],
    copiers: Vec<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    /// Connects `a` (through a socket at `path`) to `target`. Returns the relay `a` uses.
    fn start(path: &Path, target: &UnixRelayListener) -> (CountingProxy, UnixRelay, UnixRelay) {
        let listener = UnixListener::bind(path).unwrap();
        let a_relay = UnixRelay::connect(path).unwrap();
        let (from_a, _) = listener.accept().unwrap();
        let to_b = UnixStream::connect(target.path()).unwrap();
        let b_relay = target
            .accept_timeout(STALL)
            .unwrap()
            .expect("no connection");
        let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let copiers = vec![
            copy_counting(&from_a, &to_b, counts[0].clone()),
            copy_counting(&to_b, &from_a, counts[1].clone()),
        ];
        let proxy = CountingProxy {
            counts,
            streams: [from_a, to_b],
            copiers,
        };
        (proxy, a_relay, b_relay)
    }

    /// Bytes so far `[a → b, b → a]`.
    fn bytes(&self) -> [u64; 2] {
        [0, 1].map(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn stop(self) {
        for s in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        for c in self.copiers {
            c.join().unwrap();
        }
    }
}

/// Copies `from` to `to` until either ends, adding what passes to `count`.
fn copy_counting(
    from: &UnixStream,
    to: &UnixStream,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let mut from = from.try_clone().unwrap();
    let mut to = to.try_clone().unwrap();
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = to.shutdown(Shutdown::Write);
        })
        .unwrap()
}

/// Waits until the engine's only connection is streaming to its peer (the peer pulled).
fn wait_streaming(engine: &SyncEngine) {
    let deadline = Instant::now() + STALL;
    loop {
        let status = engine.status().unwrap();
        if status.iter().all(|s| s.streaming) {
            return;
        }
        assert!(
            status.iter().all(|s| s.closed_reason.is_none()),
            "connection closed: {:?}",
            status.iter().map(|s| &s.closed_reason).collect::<Vec<_>>()
        );
        assert!(Instant::now() < deadline, "handshake stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One way over a Unix socket: two engines in this process, `b` listening on a socket in the
/// scratch directory, `a` connecting to it (through a [`CountingProxy`] when `count_bytes`).
/// `mode` is seen from the sender `a`.
fn unix_throughput(
    storage: Storage,
    mode: Mode,
    batches: Vec<Vec<Fields>>,
    count_bytes: bool,
) -> Throughput {
    let files = Files::new();
    let a = files.create(storage, "a");
    let b = files.create(storage, "b");
    let ea = SyncEngine::start(a.clone(), "a").unwrap();
    let eb = SyncEngine::start(b.clone(), "b").unwrap();
    let listener = UnixRelayListener::bind(files.path("b.sock")).unwrap();
    let (proxy, client, server) = if count_bytes {
        let (proxy, client, server) = CountingProxy::start(&files.path("proxy.sock"), &listener);
        (Some(proxy), client, server)
    } else {
        let client = UnixRelay::connect(listener.path()).unwrap();
        let server = listener
            .accept_timeout(STALL)
            .unwrap()
            .expect("no connection");
        (None, client, server)
    };
    ea.connect(client, ConnectOptions::new("b").mode(mode))
        .unwrap();
    eb.connect(server, ConnectOptions::new("a").mode(mode.reversed()))
        .unwrap();
    if mode.sends() {
        wait_streaming(&ea);
    }
    if mode.receives() {
        wait_streaming(&eb);
    }
    let handshake = proxy.as_ref().map(CountingProxy::bytes);

    let mut result = pump_through(&a, &b, batches);
    assert!(
        ea.wait_idle(STALL).unwrap() && eb.wait_idle(STALL).unwrap(),
        "sync stalled"
    );
    if let (Some(proxy), Some(before)) = (&proxy, handshake) {
        let after = proxy.bytes();
        result.wire_bytes = Some([after[0] - before[0], after[1] - before[1]]);
    }
    drop(ea);
    drop(eb);
    if let Some(proxy) = proxy {
        proxy.stop();
    }
    result
}

/// The throughput runs of one transport: `[encrypted, plaintext]` per sync mode.
struct Runs {
    label: &'static str,
    mode: Mode,
    results: [Throughput; 2],
}

impl Runs {
    fn name(&self) -> String {
        let mode = match self.mode {
            Mode::WriteOnly => "a write-only → b read-only",
            Mode::ReadOnly => "a read-only",
            Mode::Bidirectional => "bidirectional",
        };
        format!("{}, {mode}", self.label)
    }
}

fn throughput_section(cfg: &Config, out: &mut String) {
    let n = cfg.throughput_ops;
    let batches = || BugGen::new(2, 1000).batches(n, cfg.batch);
    progress(&format!("{n} inserts without sync (both storages)"));
    let baseline = insert_only(&batches());
    let mut runs = Vec::new();
    for mode in [Mode::WriteOnly, Mode::Bidirectional] {
        progress(&format!("{n} ops in process, a {mode} (both storages)"));
        runs.push(Runs {
            label: "in process",
            mode,
            results: STORAGES.map(|s| local_throughput(s, mode, batches())),
        });
    }
    for mode in [Mode::WriteOnly, Mode::Bidirectional] {
        progress(&format!(
            "{n} ops over a Unix socket, a {mode} (both storages)"
        ));
        let mut results = STORAGES.map(|s| unix_throughput(s, mode, batches(), false));
        progress(&format!(
            "{n} ops over a Unix socket through a counting proxy, a {mode} (both storages)"
        ));
        for (i, s) in STORAGES.into_iter().enumerate() {
            results[i].wire_bytes = unix_throughput(s, mode, batches(), true).wire_bytes;
        }
        runs.push(Runs {
            label: "Unix socket",
            mode,
            results,
        });
    }

    let mut rows = vec![row(
        format!(
            "baseline: insert_many into a, no sync: ops/s ({} in transactions of {})",
            thousands(n as f64),
            thousands(cfg.batch as f64)
        ),
        Unit::Rate,
        baseline.map(|d| n as f64 / d.as_secs_f64()),
        Goal::None,
    )];
    for run in &runs {
        let r = &run.results;
        rows.push(row(
            format!("{}: ops/s (first insert → all applied in b)", run.name()),
            Unit::Rate,
            [0, 1].map(|i| r[i].rate(n)),
            Goal::AtLeast(50_000.0, "≥ 50,000 ops/s"),
        ));
        rows.push(row(
            "  a's insert rate during the run: ops/s",
            Unit::Rate,
            [0, 1].map(|i| r[i].insert_rate(n)),
            Goal::None,
        ));
        rows.push(row(
            "  b still catching up after the last insert returned: ms",
            Unit::LongMillis,
            [0, 1].map(|i| r[i].tail().as_secs_f64() * 1e3),
            Goal::None,
        ));
        rows.push(row(
            "  b's apply transactions: mean ops per transaction",
            Unit::Decimal,
            [0, 1].map(|i| n as f64 / r[i].b_commits as f64),
            Goal::None,
        ));
        if let [Some(enc), Some(plain)] = r.each_ref().map(|t| t.wire_bytes) {
            for (way, label) in ["a → b", "b → a"].into_iter().enumerate() {
                rows.push(row(
                    format!("  bytes on the wire {label} per op (counting-proxy run)"),
                    Unit::BytesPerOp,
                    [enc[way], plain[way]].map(|b| b as f64 / n as f64),
                    Goal::None,
                ));
            }
        }
    }
    writeln!(
        out,
        "### One-way sync throughput\n\n\
         {} bug records inserted into `a` with `insert_many` in transactions of {} while `a`'s \
         engine streams them to `b`; ops/s is records ÷ time from the first insert until `b`'s \
         subscription has reported every record. Records are generated before timing. In \
         process: `Topology::connect_local(a, b, mode)`. Unix socket: two `SyncEngine`s in this \
         process, `b`'s side accepting on a `UnixRelayListener` in the scratch directory, `a`'s \
         side `UnixRelay::connect`ing to it, each engine `.connect`ed with \
         `ConnectOptions::new(<other name>).mode(..)`. Bytes on the wire come from a separate \
         run of the same size in which `a` connects through a proxy that counts what passes \
         each way (handshake excluded), so the timed runs have no extra hop. The baseline \
         inserts the same records into a database without sync.\n",
        thousands(n as f64),
        thousands(cfg.batch as f64)
    )
    .unwrap();
    table(out, &rows);
    cpu_table(out, &runs);
}

/// Where the CPU time of each sync run went: which side limits the rate.
fn cpu_table(out: &mut String, runs: &[Runs]) {
    writeln!(
        out,
        "#### Where the time goes\n\n\
         CPU time of each thread over the same runs (from the first insert until `b` has \
         everything), from `/proc/self/task/*/schedstat`, in ms. \"Waiting\" is time these \
         threads were ready to run but had no CPU: the machine was saturated.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| Run | Storage | Wall | Inserting into a | a's engine | b's engine | Socket threads | Waiting |"
    )
    .unwrap();
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|").unwrap();
    let ms = |d: Duration| Unit::LongMillis.show(d.as_secs_f64() * 1e3);
    for run in runs {
        for (i, storage) in STORAGES.into_iter().enumerate() {
            let r = &run.results[i];
            let Some(cpu) = r.cpu else { continue };
            let relays = if run.label == "in process" {
                "–".to_owned()
            } else {
                ms(cpu.relays)
            };
            writeln!(
                out,
                "| {} | {storage:?} | {} | {} | {} | {} | {relays} | {} |",
                run.name(),
                ms(r.total),
                ms(cpu.inserter),
                ms(cpu.engine_a),
                ms(cpu.engine_b),
                ms(cpu.waiting)
            )
            .unwrap();
        }
    }
    writeln!(out).unwrap();
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let cfg = Config::from_env();
    let started = Instant::now();
    let load_before = load_average();
    let mut out = String::new();
    writeln!(
        out,
        "## BlazeDB sync benchmark ({} mode)\n\n\
         Machine: {}. Records: title (string, mean {:.0} chars), status, priority \
         (int), teamId (uuid), assignee (uuid), createdAt (date). Durability: default \
         (`Process`, WAL + synchronous=NORMAL). Encrypted = `Database::create(path, \
         password)`, plaintext = `OpenOptions::new().create(path)`; both sides of a pair use \
         the same storage.\n",
        if cfg.quick { "quick" } else { "full" },
        machine(),
        mean_title_chars(),
    )
    .unwrap();

    latency_section(&cfg, &mut out);
    throughput_section(&cfg, &mut out);
    footer(&mut out, started, &load_before);
    print!("{out}");
}
