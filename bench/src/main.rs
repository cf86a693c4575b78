//! BlazeDB remote sync against the same relay path on gRPC, in one run:
//! `cd bench && cargo run --release -- [--quick]`.
//!
//! Everything runs in this process on loopback: a real `blazedb-server` (its library, plain
//! `ws://`), real devices (`Database::enable_sync`, encrypted files), simulated devices for the
//! fan-out and handshake rows, and a gRPC relay (tonic + prost, plain HTTP/2) whose devices
//! are the same encrypted BlazeDB databases. Markdown tables go to standard output, progress
//! lines (`[bench] …`) and the server's log to standard error. What each row measures is
//! described in `bench/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench")]

mod access;
mod blazedb_side;
mod e2e;
mod grpc_side;
mod mesh;
mod proxy;
mod support;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, NodeId, Operation, Uuid};
use blazedb_protocol::Message;
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_sync::Mode;
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteStatus, SyncExt};
use prost::Message as _;

use blazedb_side::{BlazeDevice, BlazeServer, Fleet, SetupTimes, sim_connect};
use grpc_side::{GrpcDevice, GrpcServer};
use proxy::{Bytes, CountingProxy, settle};
use support::{
    Bug, COLLECTION, Goal, Ratio, Row, STALL, Unit, bugs, cpu_between, device_db, load_average,
    machine, micros, percentile, poll_until, progress, table, thousands, thread_cpu, wait_count,
    wait_for_record,
};

/// Sizes of one run.
struct Config {
    quick: bool,
    /// Records sent through the counting proxies, and the batch size of the batched run.
    bytes_ops: usize,
    bytes_batch: usize,
    /// Timed Alice → Bob samples per system, after untimed warm-up ones.
    latency_samples: usize,
    latency_warmup: usize,
    /// Simulated devices of the fan-out, records written at `fleet_rate` per second, then
    /// records written back to back.
    fleet: usize,
    fleet_paced: usize,
    fleet_rate: f64,
    fleet_burst: usize,
    /// Timed connection set-ups per system, after untimed warm-up ones.
    handshakes: usize,
    handshake_warmup: usize,
    /// Records a new device syncs from scratch.
    bulk: usize,
    /// Records per team in the access section's permission change (and in all for its
    /// bytes row), and inserts its device pushes.
    access_records: usize,
    access_push: usize,
}

impl Config {
    fn new(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                bytes_ops: 100,
                bytes_batch: 20,
                latency_samples: 100,
                latency_warmup: 10,
                fleet: 50,
                fleet_paced: 20,
                fleet_rate: 20.0,
                fleet_burst: 50,
                handshakes: 20,
                handshake_warmup: 2,
                bulk: 5_000,
                access_records: 1_000,
                access_push: 1_000,
            }
        } else {
            Config {
                quick,
                bytes_ops: 1_000,
                bytes_batch: 100,
                latency_samples: 2_000,
                latency_warmup: 100,
                fleet: 1_000,
                fleet_paced: 60,
                fleet_rate: 5.0,
                fleet_burst: 500,
                handshakes: 200,
                handshake_warmup: 10,
                bulk: 100_000,
                access_records: 10_000,
                access_push: 10_000,
            }
        }
    }
}

/// What every section uses: both servers, a runtime for the client side (proxies, simulated
/// devices, handshakes) and a folder for the devices' database files.
struct Ctx {
    server: BlazeServer,
    grpc_store: GrpcServer,
    grpc_forward: GrpcServer,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    next: Cell<u32>,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            server: BlazeServer::start(),
            grpc_store: GrpcServer::start(true),
            grpc_forward: GrpcServer::start(false),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-clients")
                .enable_all()
                .build()
                .expect("runtime"),
            dir: tempfile::tempdir().expect("tempdir"),
            next: Cell::new(0),
        }
    }

    fn unique(&self, prefix: &str) -> String {
        let k = self.next.get();
        self.next.set(k + 1);
        format!("{prefix}-{k}")
    }

    /// A new device database (encrypted file).
    fn db(&self, name: &str) -> Database {
        device_db(self.dir.path(), &self.unique(name))
    }

    /// A new hosted database on the BlazeDB server.
    fn database(&self, prefix: &str) -> String {
        let name = self.unique(prefix);
        self.server.create_database(&name);
        name
    }

    fn blazedb_device(&self, url: &str, database: &str, mode: Mode) -> BlazeDevice {
        BlazeDevice::connect(self.db("device"), url, database, &self.server.token(), mode)
    }
}

/// Traffic of a measurement on Alice's connection and Bob's.
#[derive(Clone, Copy)]
struct Legs {
    alice: Bytes,
    bob: Bytes,
}

const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// 1. Bytes on the wire.

/// One bytes measurement: the traffic of the writes, the traffic of the connection set-up
/// before them, and the protocol messages per record `[Alice sent, Alice received, Bob sent,
/// Bob received]`.
struct Measured {
    legs: Legs,
    setup: Legs,
    messages: [f64; 4],
    /// BlazeDB only: Alice's first op-log entry, to take one message apart.
    first_op: Option<(u64, Operation)>,
}

fn per_op(before: [(u64, u64); 2], after: [(u64, u64); 2], n: usize) -> [f64; 4] {
    let d = |a: u64, b: u64| (a - b) as f64 / n as f64;
    [
        d(after[0].0, before[0].0),
        d(after[0].1, before[0].1),
        d(after[1].0, before[1].0),
        d(after[1].1, before[1].1),
    ]
}

/// Writes `n` records through `insert_one` (one commit each) or, with `batch`, through
/// `insert_many` in transactions of that size, waiting each time until Bob's subscription
/// `sub` to `bob` has them.
fn write_and_wait(
    n: usize,
    batch: Option<usize>,
    bob: &Database,
    sub: &blazedb_core::Subscription,
    mut insert_one: impl FnMut(&Bug) -> Uuid,
    mut insert_many: impl FnMut(&[Bug]),
) {
    match batch {
        None => {
            for bug in bugs(0, n) {
                let id = insert_one(&bug);
                wait_for_record(sub, id);
            }
        }
        Some(b) => {
            let mut sent = 0;
            while sent < n {
                let k = b.min(n - sent);
                insert_many(&bugs(sent as u64, k));
                sent += k;
                wait_count(bob, sub, sent as u64);
            }
        }
    }
}

impl Measured {
    /// The traffic between the two settled proxy readings `before` and `after` (and what
    /// came before), with the message counts of both devices at those moments.
    fn between(
        before: Vec<Bytes>,
        after: Vec<Bytes>,
        messages: ([(u64, u64); 2], [(u64, u64); 2]),
        n: usize,
        first_op: Option<(u64, Operation)>,
    ) -> Measured {
        Measured {
            legs: Legs {
                alice: after[0].since(before[0]),
                bob: after[1].since(before[1]),
            },
            setup: Legs {
                alice: before[0],
                bob: before[1],
            },
            messages: per_op(messages.0, messages.1, n),
            first_op,
        }
    }
}

/// Alice writes `n` records (one commit each, or in transactions of `batch`), waiting each
/// time until Bob has them; both devices go through counting proxies. `modes` are Alice's and
/// Bob's sync modes.
fn bytes_blazedb(ctx: &Ctx, n: usize, batch: Option<usize>, modes: (Mode, Mode)) -> Measured {
    let name = ctx.database("bytes");
    let pa = CountingProxy::start(ctx.rt.handle(), ctx.server.addr());
    let pb = CountingProxy::start(ctx.rt.handle(), ctx.server.addr());
    let alice = ctx.blazedb_device(&format!("ws://{}", pa.addr()), &name, modes.0);
    let bob = ctx.blazedb_device(&format!("ws://{}", pb.addr()), &name, modes.1);
    let before = settle(&[&pa, &pb], QUIET);
    let messages_before = [alice.messages(), bob.messages()];
    let sub = bob.db.subscribe(COLLECTION);
    write_and_wait(
        n,
        batch,
        &bob.db,
        &sub,
        |bug| alice.db.insert(COLLECTION, bug.fields()).expect("insert"),
        |bugs| {
            let fields: Vec<_> = bugs.iter().map(Bug::fields).collect();
            alice
                .db
                .insert_many(COLLECTION, fields)
                .expect("insert_many");
        },
    );
    poll_until("acknowledged", Duration::from_millis(1), || {
        alice.idle() && bob.idle()
    });
    let after = settle(&[&pa, &pb], QUIET);
    let messages_after = [alice.messages(), bob.messages()];
    assert_eq!(bob.db.count(COLLECTION).unwrap(), n as u64);
    let first_op = alice
        .db
        .replication()
        .oplog_since(0, 1)
        .expect("op log")
        .into_iter()
        .next();
    Measured::between(
        before,
        after,
        (messages_before, messages_after),
        n,
        first_op,
    )
}

/// The same through the gRPC relay (the variant that stores).
fn bytes_grpc(ctx: &Ctx, n: usize, batch: Option<usize>, zstd: bool) -> Measured {
    let name = ctx.unique("bytes");
    let pa = CountingProxy::start(ctx.rt.handle(), ctx.grpc_store.addr());
    let pb = CountingProxy::start(ctx.rt.handle(), ctx.grpc_store.addr());
    let alice = GrpcDevice::connect(pa.addr(), &name, ctx.db("galice"), zstd);
    let bob = GrpcDevice::connect(pb.addr(), &name, ctx.db("gbob"), zstd);
    let before = settle(&[&pa, &pb], QUIET);
    let messages_before = [alice.messages(), bob.messages()];
    let sub = bob.db.subscribe(COLLECTION);
    write_and_wait(
        n,
        batch,
        &bob.db,
        &sub,
        |bug| alice.insert_and_send(bug),
        |bugs| {
            alice.insert_many_and_send(bugs);
        },
    );
    poll_until("acknowledged", Duration::from_millis(1), || {
        alice.all_acked()
    });
    let after = settle(&[&pa, &pb], QUIET);
    let messages_after = [alice.messages(), bob.messages()];
    assert_eq!(bob.db.count(COLLECTION).unwrap(), n as u64);
    Measured::between(before, after, (messages_before, messages_after), n, None)
}

/// Bytes of a WebSocket frame header for a payload of `len` bytes.
fn ws_header(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len < 65_536 {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// One record taken apart: Alice's first `Ops` (one insert) and its `Ack`, against the
/// protobuf messages of the gRPC relay.
fn anatomy(out: &mut String, first: &(u64, Operation)) {
    let (position, op) = first;
    let ops = Message::Ops {
        from: position - 1,
        to: *position,
        ops: vec![op.clone()],
    }
    .encode()
    .len();
    let ack = Message::ack(*position).encode().len();
    let bug = Bug::nth(0);
    let records = grpc_side::pb::Envelope {
        kind: Some(grpc_side::pb::envelope::Kind::Records(
            grpc_side::pb::Records {
                seq: *position,
                bugs: vec![grpc_side::to_pb(op.record, &bug)],
            },
        )),
    }
    .encoded_len();
    let grpc_ack = grpc_side::pb::Envelope {
        kind: Some(grpc_side::pb::envelope::Kind::Ack(grpc_side::pb::Ack {
            seq: *position,
        })),
    }
    .encoded_len();
    let sealed = |m: usize| blazedb_protocol::secure::sealed_len(m);
    let row = |label: &str, b: usize, g: usize| {
        Row::new(label, Unit::Count, b as f64, vec![g as f64]).ratio(Ratio::Share, Goal::None)
    };
    let rows = vec![
        row(
            "one insert: message (BlazeDB `Ops`, BlazeBinary; gRPC `Envelope{Records}`, protobuf)",
            ops,
            records,
        ),
        row(
            "+ Noise seal, 2-byte chunk header + 16-byte tag (gRPC: 5-byte message prefix)",
            sealed(ops),
            records + 5,
        ),
        row(
            "+ frame header: WebSocket, masked, device → server (gRPC: HTTP/2 DATA, 9 bytes)",
            sealed(ops) + ws_header(sealed(ops), true),
            records + 5 + 9,
        ),
        row("acknowledgement: message", ack, grpc_ack),
        row(
            "acknowledgement on the wire, server → device (sealed, WebSocket unmasked / gRPC prefix and DATA frame)",
            sealed(ack) + ws_header(sealed(ack), false),
            grpc_ack + 5 + 9,
        ),
    ];
    writeln!(
        out,
        "One record taken apart (bytes; BlazeDB's from Alice's op log, so the origin, \
         sequence number, Lamport time and wall clock are real):\n"
    )
    .unwrap();
    table(out, &["gRPC"], "BlazeDB ÷ {}", &rows);
}

fn bytes_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let n = cfg.bytes_ops;
    let mut rows = Vec::new();
    let mut setup = None;
    let mut first_op = None;
    for batch in [None, Some(cfg.bytes_batch)] {
        let what = match batch {
            None => format!(
                "one at a time ({} inserts, one commit each)",
                thousands(n as f64)
            ),
            Some(b) => format!(
                "batched ({} records in transactions of {b})",
                thousands(n as f64)
            ),
        };
        progress(&format!("bytes on the wire: {what}"));
        let blaze = bytes_blazedb(ctx, n, batch, (Mode::Bidirectional, Mode::Bidirectional));
        let one_way = bytes_blazedb(ctx, n, batch, (Mode::WriteOnly, Mode::ReadOnly));
        let grpc = bytes_grpc(ctx, n, batch, false);
        let zstd = bytes_grpc(ctx, n, batch, true);
        first_op = first_op.or(blaze.first_op.clone());
        setup.get_or_insert((blaze.setup, grpc.setup));
        let per = |x: u64| x as f64 / n as f64;
        let legs: [(&str, fn(&Legs) -> u64); 4] = [
            ("Alice → server", |l| l.alice.up),
            ("server → Alice", |l| l.alice.down),
            ("server → Bob", |l| l.bob.down),
            ("Bob → server", |l| l.bob.up),
        ];
        for (label, leg) in legs {
            rows.push(
                Row::new(
                    format!("{what}: {label}, bytes/op"),
                    Unit::BytesPerOp,
                    per(leg(&blaze.legs)),
                    vec![per(leg(&grpc.legs)), per(leg(&zstd.legs))],
                )
                .ratio(Ratio::Share, Goal::None),
            );
        }
        let total = |l: &Legs| per(l.alice.total() + l.bob.total());
        rows.push(
            Row::new(
                format!("**{what}: total, both legs, both directions, bytes/op**"),
                Unit::BytesPerOp,
                total(&blaze.legs),
                vec![total(&grpc.legs), total(&zstd.legs)],
            )
            .ratio(Ratio::Share, Goal::AtMost(0.5, "≤ 0.50× gRPC")),
        );
        rows.push(
            Row::new(
                format!(
                    "{what}: total bytes/op with one-way BlazeDB devices (Alice write-only, \
                     Bob read-only)"
                ),
                Unit::BytesPerOp,
                total(&one_way.legs),
                vec![total(&grpc.legs), total(&zstd.legs)],
            )
            .ratio(Ratio::Share, Goal::None),
        );
        let names = ["Alice sent", "Alice received", "Bob sent", "Bob received"];
        for (i, who) in names.iter().enumerate() {
            rows.push(Row::new(
                format!("{what}: protocol messages per op, {who}"),
                Unit::Hundredths,
                blaze.messages[i],
                vec![grpc.messages[i], zstd.messages[i]],
            ));
        }
    }
    let (blaze_setup, grpc_setup) = setup.unwrap();
    rows.push(Row::new(
        "connection set-up before the first record (Alice's leg, both directions): bytes",
        Unit::Count,
        blaze_setup.alice.total() as f64,
        vec![grpc_setup.alice.total() as f64, f64::NAN],
    ));
    writeln!(
        out,
        "### 1. Bytes on the wire: Alice → server → Bob\n\n\
         TCP payload bytes counted by a proxy in front of each server, for Alice's connection \
         and Bob's, both directions, from the moment both devices were connected and idle \
         until every record was at Bob and all acknowledgements had arrived (no traffic for \
         {} ms), divided by the records sent. BlazeDB: `enable_sync` devices (bidirectional, \
         the default, unless the row says otherwise) over `ws://` (WebSocket frames carrying \
         Noise-sealed BlazeBinary messages, zstd for messages of 1 KiB and more). gRPC: one \
         bidirectional `Sync` stream per device over plain HTTP/2 (no TLS), protobuf \
         `Records {{ seq, repeated Bug }}` forwarded by the server, `Ack {{ seq }}` back from \
         the server and from Bob; \"gRPC + zstd\" turns on tonic's zstd compression for every \
         message in both directions. Records: the seeds' bug record (title, status, teamId, \
         assignee; id given by the database), {} of them shaped like the seed. A BlazeDB \
         operation also carries its origin node, sequence number, Lamport time, wall clock, \
         kind and collection, which the protobuf record does not. Protocol messages are \
         counted by BlazeDB's sync engine (`Ops`, `Ack`, `Ping`, ...) and by the gRPC \
         devices (`Records`, `Ack`). Ratio = BlazeDB ÷ gRPC (below 1: BlazeDB sends less).\n",
        QUIET.as_millis(),
        thousands(n as f64),
    )
    .unwrap();
    table(out, &["gRPC", "gRPC + zstd"], "BlazeDB ÷ {}", &rows);
    if let Some(first) = &first_op {
        anatomy(out, first);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Latency.

fn latency_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    progress(&format!(
        "latency: {} samples per system (+{} warm-up)",
        cfg.latency_samples, cfg.latency_warmup
    ));
    let name = ctx.database("latency");
    let url = ctx.server.url();
    let alice = ctx.blazedb_device(&url, &name, Mode::Bidirectional);
    let bob = ctx.blazedb_device(&url, &name, Mode::Bidirectional);
    let grpc_name = ctx.unique("latency");
    let store = [
        GrpcDevice::connect(ctx.grpc_store.addr(), &grpc_name, ctx.db("galice"), false),
        GrpcDevice::connect(ctx.grpc_store.addr(), &grpc_name, ctx.db("gbob"), false),
    ];
    let forward = [
        GrpcDevice::connect(ctx.grpc_forward.addr(), &grpc_name, ctx.db("galice"), false),
        GrpcDevice::connect(ctx.grpc_forward.addr(), &grpc_name, ctx.db("gbob"), false),
    ];
    let subs = [
        bob.db.subscribe(COLLECTION),
        store[1].db.subscribe(COLLECTION),
        forward[1].db.subscribe(COLLECTION),
    ];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut commits: [Vec<Duration>; 3] = Default::default();
    let total = cfg.latency_warmup + cfg.latency_samples;
    for k in 0..total {
        let bug = Bug::nth(k as u64);
        for s in [k % 3, (k + 1) % 3, (k + 2) % 3] {
            let start = Instant::now();
            let (commit, elapsed) = match s {
                0 => {
                    let id = alice.db.insert(COLLECTION, bug.fields()).expect("insert");
                    let commit = start.elapsed();
                    wait_for_record(&subs[0], id);
                    let elapsed = start.elapsed();
                    poll_until("idle", Duration::from_micros(50), || {
                        alice.idle() && bob.idle()
                    });
                    (commit, elapsed)
                }
                _ => {
                    let pair = if s == 1 { &store } else { &forward };
                    let id = pair[0].db.insert(COLLECTION, bug.fields()).expect("insert");
                    let commit = start.elapsed();
                    pair[0].send(vec![grpc_side::to_pb(id, &bug)]);
                    wait_for_record(&subs[s], id);
                    let elapsed = start.elapsed();
                    poll_until("acked", Duration::from_micros(50), || pair[0].all_acked());
                    (commit, elapsed)
                }
            };
            if k >= cfg.latency_warmup {
                samples[s].push(elapsed);
                commits[s].push(commit);
            }
        }
    }
    assert_eq!(bob.db.count(COLLECTION).unwrap(), total as u64);
    assert_eq!(store[1].db.count(COLLECTION).unwrap(), total as u64);
    assert_eq!(forward[1].db.count(COLLECTION).unwrap(), total as u64);
    for s in samples.iter_mut().chain(commits.iter_mut()) {
        s.sort();
    }
    let stat = |p: Option<f64>| -> [f64; 3] {
        [0, 1, 2].map(|i| {
            let s = &samples[i];
            micros(match p {
                Some(p) => percentile(s, p),
                None => *s.last().unwrap(),
            })
        })
    };
    let mean =
        [0, 1, 2].map(|i| micros(samples[i].iter().sum::<Duration>() / samples[i].len() as u32));
    let row = |label: &str, v: [f64; 3], goal: Goal| {
        Row::new(label, Unit::Micros, v[0], vec![v[1], v[2]]).ratio(Ratio::Speedup, goal)
    };
    let goal = Goal::AtLeast(1.5, "≥ 1.5× faster than gRPC");
    let n = thousands(cfg.latency_samples as f64);
    let rows = vec![
        row(
            &format!("**Alice → Bob, p50 µs** ({n} records)"),
            stat(Some(50.0)),
            goal,
        ),
        row("**Alice → Bob, p99 µs**", stat(Some(99.0)), goal),
        row("Alice → Bob, mean µs", mean, Goal::None),
        row("Alice → Bob, max µs", stat(None), Goal::None),
        Row::new(
            "of which Alice's own commit (her `insert` call), p50 µs",
            Unit::Micros,
            micros(percentile(&commits[0], 50.0)),
            vec![
                micros(percentile(&commits[1], 50.0)),
                micros(percentile(&commits[2], 50.0)),
            ],
        ),
    ];
    writeln!(
        out,
        "### 2. Latency: Alice → server → Bob on loopback\n\n\
         From just before Alice's `insert` (her own commit included) until Bob's \
         `subscribe(\"bugs\")` delivers the commit holding the record; the next record goes \
         only once Alice's write is acknowledged (and, for BlazeDB, Bob's connection is idle \
         too). {n} sequential records per system after {} untimed, the three systems taking \
         turns record by record. All devices are encrypted database files. BlazeDB: the \
         server applies each `Ops` to its encrypted copy (SQLCipher) in one transaction, then \
         streams it to Bob, who applies it and acknowledges. \"gRPC, server stores\" does the \
         same work on gRPC: the server writes the records to its encrypted copy before \
         forwarding, Bob writes them to his database and acknowledges. \"gRPC, forward only\" \
         skips the server's write. No TLS on either side; BlazeDB's messages are \
         Noise-encrypted, gRPC's are not. Speed-up = gRPC ÷ BlazeDB (above 1: BlazeDB is \
         faster).\n",
        cfg.latency_warmup
    )
    .unwrap();
    table(
        out,
        &["gRPC, server stores", "gRPC, forward only"],
        "speed-up vs {}",
        &rows,
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Fan-out to many devices.

fn latencies(
    notes: &[Vec<(Uuid, Instant)>],
    sent: &HashMap<Uuid, Instant>,
    only: &HashSet<Uuid>,
) -> Vec<Duration> {
    let mut out: Vec<Duration> = notes
        .iter()
        .flatten()
        .filter(|(id, _)| only.contains(id))
        .map(|(id, at)| at.saturating_duration_since(sent[id]))
        .collect();
    out.sort();
    out
}

fn fleet_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let devices = cfg.fleet;
    progress(&format!("fan-out: connecting {devices} simulated devices"));
    let name = ctx.database("fanout");
    let writer = ctx.blazedb_device(&ctx.server.url(), &name, Mode::Bidirectional);
    let fleet = Fleet::connect(&ctx.rt, &ctx.server, &name, devices);
    let connect_time = fleet.connect_time;
    let mut sent: HashMap<Uuid, Instant> = HashMap::new();
    let wait_delivered = |fleet: &Fleet, records: usize| {
        let want = (devices * records) as u64;
        poll_until("deliveries", Duration::from_micros(200), || {
            fleet.delivered() >= want
        });
    };

    progress(&format!(
        "fan-out: {} records at {}/s",
        cfg.fleet_paced, cfg.fleet_rate
    ));
    let cpu_start = thread_cpu();
    let mut paced = HashSet::new();
    let interval = Duration::from_secs_f64(1.0 / cfg.fleet_rate);
    let t0 = Instant::now();
    for i in 0..cfg.fleet_paced {
        let due = t0 + interval * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let start = Instant::now();
        let id = writer
            .db
            .insert(COLLECTION, Bug::nth(i as u64).fields())
            .expect("insert");
        sent.insert(id, start);
        paced.insert(id);
    }
    wait_delivered(&fleet, cfg.fleet_paced);
    let cpu_paced = thread_cpu();

    progress(&format!(
        "fan-out: {} records back to back",
        cfg.fleet_burst
    ));
    let mut burst = HashSet::new();
    let burst_start = Instant::now();
    for i in 0..cfg.fleet_burst {
        let start = Instant::now();
        let id = writer
            .db
            .insert(COLLECTION, Bug::nth((cfg.fleet_paced + i) as u64).fields())
            .expect("insert");
        sent.insert(id, start);
        burst.insert(id);
    }
    let inserts_took = burst_start.elapsed();
    wait_delivered(&fleet, cfg.fleet_paced + cfg.fleet_burst);
    let cpu_burst = thread_cpu();
    let notes = fleet.finish(&ctx.rt);
    for device in &notes {
        let unique: HashSet<Uuid> = device.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            unique.len(),
            cfg.fleet_paced + cfg.fleet_burst,
            "a device missed records"
        );
    }
    drop(writer);
    let paced_lat = latencies(&notes, &sent, &paced);
    let burst_lat = latencies(&notes, &sent, &burst);
    let last = notes
        .iter()
        .flatten()
        .filter(|(id, _)| burst.contains(id))
        .map(|(_, at)| *at)
        .max()
        .unwrap();
    let burst_secs = last.duration_since(burst_start).as_secs_f64();
    let us = |v: &[Duration], p: f64| micros(percentile(v, p));
    let one = |label: String, unit: Unit, v: f64| Row::new(label, unit, v, vec![]);
    let rows = vec![
        one(
            "simulated devices connected (each its own TCP connection and Noise session)".into(),
            Unit::Count,
            devices as f64,
        ),
        one(
            "enroll and connect them all, 32 at a time: s".into(),
            Unit::Seconds,
            connect_time.as_secs_f64(),
        ),
        one(
            format!(
                "paced writes ({} records at {}/s): delivery latency p50 µs",
                cfg.fleet_paced, cfg.fleet_rate
            ),
            Unit::Micros,
            us(&paced_lat, 50.0),
        ),
        one(
            "paced writes: **delivery latency p99 µs**".into(),
            Unit::Micros,
            us(&paced_lat, 99.0),
        ),
        one(
            "paced writes: delivery latency max µs".into(),
            Unit::Micros,
            micros(*paced_lat.last().unwrap()),
        ),
        one(
            format!(
                "burst ({} single inserts back to back): **deliveries/s** (to all devices)",
                cfg.fleet_burst
            ),
            Unit::Count,
            (devices * cfg.fleet_burst) as f64 / burst_secs,
        ),
        one(
            "burst: writer's inserts/s".into(),
            Unit::Count,
            cfg.fleet_burst as f64 / inserts_took.as_secs_f64(),
        ),
        one(
            "burst: delivery latency p50 µs".into(),
            Unit::Micros,
            us(&burst_lat, 50.0),
        ),
        one(
            "burst: **delivery latency p99 µs**".into(),
            Unit::Micros,
            us(&burst_lat, 99.0),
        ),
        one(
            "burst: first insert until the last delivery: s".into(),
            Unit::Seconds,
            burst_secs,
        ),
    ];
    let mut rows = rows;
    for (phase, before, after) in [
        ("paced", &cpu_start, &cpu_paced),
        ("burst", &cpu_paced, &cpu_burst),
    ] {
        for (who, group) in [
            (
                "server's runtime (WebSocket, Noise, relay tasks)",
                "blazedb-server",
            ),
            (
                "sync engine threads (the server's and the writer's)",
                "blazedb-sync",
            ),
            ("simulated devices' runtime", "bench-clients"),
        ] {
            rows.push(one(
                format!("{phase}: CPU s, {who}"),
                Unit::Seconds,
                cpu_between(before, after, group),
            ));
        }
    }
    writeln!(
        out,
        "### 3. Fan-out: one server, {} connected devices\n\n\
         One real device writes single inserts (one commit each); {} simulated devices \
         (enrolled with their own tokens and static keys, connected over `ws://`, Noise \
         `XX`) pull the database and acknowledge every `Ops` at once. They decrypt and decode \
         every message but store nothing. A delivery is one record arriving at one device; \
         its latency runs from just before the writer's `insert` to the moment the device has \
         opened and decoded the message. Paced: {} records at {} per second, each delivered \
         to every device before the burst starts. Burst: {} inserts as fast as the writer \
         goes; deliveries/s = devices × records ÷ (first insert → last delivery). The \
         simulated devices share one 2-thread runtime in this process, so they and the \
         server compete for the same 2 cores; the CPU rows (from `/proc/self/task`) show \
         who used what. BlazeDB only.\n",
        thousands(devices as f64),
        thousands(devices as f64),
        cfg.fleet_paced,
        cfg.fleet_rate,
        cfg.fleet_burst,
    )
    .unwrap();
    table(out, &[], "", &rows);
}

// ---------------------------------------------------------------------------------------------
// 4. Handshakes.

fn handshake_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    progress(&format!(
        "handshakes: {} per system (+{} warm-up)",
        cfg.handshakes, cfg.handshake_warmup
    ));
    let name = ctx.database("handshake");
    let keys = StaticKeys::generate(Suite::default()).expect("keys");
    let node = NodeId::random();
    let server_key = ctx.server.server_key();
    let addr = ctx.server.addr();
    // Enroll the key once; the timed connections are those of a known device.
    let token = ctx.server.token();
    let first = ctx
        .rt
        .block_on(sim_connect(
            addr,
            &name,
            &keys,
            node,
            &server_key,
            Some(&token),
        ))
        .expect("enroll");
    ctx.rt.block_on(first.close());
    let mut blaze: Vec<SetupTimes> = Vec::new();
    let mut grpc: Vec<(Duration, Duration)> = Vec::new();
    for k in 0..cfg.handshake_warmup + cfg.handshakes {
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            if s == 0 {
                let session = ctx
                    .rt
                    .block_on(sim_connect(addr, &name, &keys, node, &server_key, None))
                    .expect("connect");
                let times = session.times;
                ctx.rt.block_on(session.close());
                if k >= cfg.handshake_warmup {
                    blaze.push(times);
                }
            } else {
                let times = ctx
                    .rt
                    .block_on(grpc_side::handshake_once(ctx.grpc_forward.addr(), &name));
                if k >= cfg.handshake_warmup {
                    grpc.push(times);
                }
            }
        }
        // Let the server finish with the closed connection before the next one.
        std::thread::sleep(Duration::from_millis(2));
    }
    let p = |mut v: Vec<Duration>, q: f64| {
        v.sort();
        micros(percentile(&v, q))
    };
    let b = |f: fn(&SetupTimes) -> Duration| blaze.iter().map(f).collect::<Vec<_>>();
    let g_conn: Vec<Duration> = grpc.iter().map(|t| t.0).collect();
    let g_hello: Vec<Duration> = grpc.iter().map(|t| t.1).collect();
    let rows = vec![
        Row::new(
            "TCP connected: p50 µs",
            Unit::Micros,
            p(b(|t| t.tcp), 50.0),
            vec![f64::NAN],
        ),
        Row::new(
            "WebSocket upgrade done (gRPC: TCP + HTTP/2 connection ready): p50 µs",
            Unit::Micros,
            p(b(|t| t.websocket), 50.0),
            vec![p(g_conn.clone(), 50.0)],
        ),
        Row::new(
            "Noise XX handshake done (P-256, AES-GCM): p50 µs",
            Unit::Micros,
            p(b(|t| t.noise), 50.0),
            vec![f64::NAN],
        ),
        Row::new(
            "**server's Hello received: p50 µs**",
            Unit::Micros,
            p(b(|t| t.hello), 50.0),
            vec![p(g_hello.clone(), 50.0)],
        )
        .ratio(Ratio::Speedup, Goal::None),
        Row::new(
            "**server's Hello received: p99 µs**",
            Unit::Micros,
            p(b(|t| t.hello), 99.0),
            vec![p(g_hello, 99.0)],
        )
        .ratio(Ratio::Speedup, Goal::None),
    ];
    writeln!(
        out,
        "### 4. Connection set-up (handshake)\n\n\
         {} connections per system, one after the other (after {} untimed), the two systems \
         taking turns; times are cumulative from the start of the TCP connect. BlazeDB: an \
         enrolled device's TCP connect, WebSocket upgrade (`GET /sync/{{db}}`), Noise `XX` \
         (three messages; the device checks the server's pinned key), its `Hello`, until the \
         server's `Hello` arrives (the server has looked the device's key up in its meta \
         store by then). gRPC: a new tonic channel (TCP, HTTP/2 preface and settings), then a \
         `Sync` stream opened with a `Hello` until the server's `Hello` arrives: no \
         encryption and no authentication, so it is the floor of what a secure gRPC \
         connection (TLS) would cost. Speed-up = gRPC ÷ BlazeDB.\n",
        cfg.handshakes, cfg.handshake_warmup
    )
    .unwrap();
    table(out, &["gRPC (plain, no auth)"], "speed-up vs {}", &rows);
}

// ---------------------------------------------------------------------------------------------
// 5. Initial sync.

/// A new device syncs hosted database `name` (holding `n` records) from nothing: time until
/// every record is applied, until in sync, and the status then.
fn initial_sync(ctx: &Ctx, name: &str, n: usize) -> (Duration, Duration, RemoteStatus) {
    let db = ctx.db("fresh");
    let sub = db.subscribe(COLLECTION);
    let start = Instant::now();
    let sync = db
        .enable_sync(
            RemoteNode::new(ctx.server.url(), name),
            RemoteOptions::default().enroll(ctx.server.token()),
        )
        .expect("enable_sync");
    wait_count(&db, &sub, n as u64);
    let applied = start.elapsed();
    let status = sync.wait_synced(STALL, |_| {}).expect("in sync");
    (applied, start.elapsed(), status)
}

fn bulk_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let n = cfg.bulk;
    let mut rows = Vec::new();
    for (how, compact) in [("op log", false), ("snapshot", true)] {
        progress(&format!(
            "initial sync ({how}): loading {n} records on the server"
        ));
        let name = ctx.unique("bulk");
        ctx.server.bulk_load(&name, n, 10_000, compact);
        progress(&format!("initial sync ({how}): a new device syncs them"));
        let (applied, synced, status) = initial_sync(ctx, &name, n);
        let row = Row::new(
            format!(
                "**{how}: all {} records applied on the new device: s**",
                thousands(n as f64)
            ),
            Unit::Seconds,
            applied.as_secs_f64(),
            vec![],
        );
        rows.extend([
            if compact {
                row
            } else {
                row.goal(Goal::Below(3.0, "< 3 s"))
            },
            Row::new(
                format!("{how}: in sync (status says so): s"),
                Unit::Seconds,
                synced.as_secs_f64(),
                vec![],
            ),
            Row::new(
                format!("{how}: records/s"),
                Unit::Count,
                n as f64 / applied.as_secs_f64(),
                vec![],
            ),
            Row::new(
                format!("{how}: bytes received per record (TCP)"),
                Unit::BytesPerOp,
                status.bytes_received as f64 / n as f64,
                vec![],
            ),
        ]);
    }
    writeln!(
        out,
        "### 5. Initial sync of a new device\n\n\
         The server's database holds {} bug records (written into its file before any device \
         connected, in transactions of 10,000). A new device (an empty encrypted file, \
         created before the clock starts) calls `enable_sync` with a fresh token: enrollment, \
         handshake, `Pull` from 0, then either the server streams its op log (zstd-compressed \
         batches) and the device applies it, op-log entry by entry, with its cursor; or, \
         when the server's op log was compacted away after loading, the server sends a \
         snapshot (record states in parts of up to 1,000 records, zstd-compressed) that the \
         device joins into its records part by part. Timed from `enable_sync` until the \
         device's collection holds every record. BlazeDB only.\n",
        thousands(n as f64)
    )
    .unwrap();
    table(out, &[], "", &rows);
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let started = Instant::now();
    let load_start = load_average();
    let cfg = Config::new(quick);
    progress(&format!(
        "remote sync benchmark ({} mode); load average {load_start}",
        if cfg.quick { "quick" } else { "full" }
    ));
    let ctx = Ctx::new();
    let mut out = String::new();
    writeln!(
        out,
        "## BlazeDB remote sync vs gRPC ({} mode)\n\n\
         Machine: {}. 1/5/15-minute load average at start: {load_start}. Everything in one \
         process on loopback: `blazedb-server` (library, `ws://`, no TLS) and a tonic gRPC \
         relay (plain HTTP/2, no TLS), each on its own 2-thread runtime; devices are encrypted \
         BlazeDB files.\n",
        if cfg.quick { "quick" } else { "full" },
        machine()
    )
    .unwrap();
    let mut sections: [String; 8] = Default::default();
    // `--access-only`, `--e2e-only`, `--mesh-only`: just section 6, 7 or 8 (while working
    // on them).
    let only = ["--access-only", "--e2e-only", "--mesh-only"]
        .into_iter()
        .find(|flag| std::env::args().any(|a| a == *flag));
    let runs = |flag: Option<&str>| only.is_none() || only == flag;
    if runs(Some("--none")) {
        bytes_section(&ctx, &cfg, &mut sections[0]);
        eprint!("{}", sections[0]);
        latency_section(&ctx, &cfg, &mut sections[1]);
        eprint!("{}", sections[1]);
        handshake_section(&ctx, &cfg, &mut sections[3]);
        eprint!("{}", sections[3]);
        fleet_section(&ctx, &cfg, &mut sections[2]);
        eprint!("{}", sections[2]);
        bulk_section(&ctx, &cfg, &mut sections[4]);
        eprint!("{}", sections[4]);
    }
    if runs(Some("--access-only")) {
        access::access_section(&ctx, &cfg, &mut sections[5]);
        eprint!("{}", sections[5]);
    }
    if runs(Some("--e2e-only")) {
        e2e::e2e_section(&ctx, &cfg, &mut sections[6]);
        eprint!("{}", sections[6]);
    }
    if runs(Some("--mesh-only")) {
        mesh::mesh_section(&ctx, &cfg, &mut sections[7]);
        eprint!("{}", sections[7]);
    }
    for s in &sections {
        out.push_str(s);
    }
    writeln!(
        out,
        "Total run time: {:.0} s. 1/5/15-minute load average at start {load_start}, at end {}.",
        started.elapsed().as_secs_f64(),
        load_average()
    )
    .unwrap();
    print!("{out}");
    let Ctx { server, .. } = ctx;
    server.shutdown();
}
