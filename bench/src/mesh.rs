//! Section 8: five devices in a full mesh without a server (`PeerSync`, docs/topologies.md),
//! beside the same five devices through the server (hub and spoke), in the same run.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Subscription};
use blazedb_sync::remote::{PeerSync, RemoteNode, RemoteOptions, RemoteSync, SyncExt};

use crate::support::{
    Bug, COLLECTION, Goal, Ratio, Row, STALL, Unit, percentile, poll_until, progress, table,
    thousands, wait_for_record,
};
use crate::{Config, Ctx};

const DEVICES: usize = 5;

/// What one arrangement measured: write-to-visible on every other device, and messages
/// per write (every link's messages, both ways, acks included).
struct Measured {
    p50: f64,
    p99: f64,
    messages: f64,
}

/// Writes `writes` records, round robin over the devices, one at a time; each is timed
/// until every other device's subscription sees it.
fn run(
    dbs: &[Database],
    subs: &[Subscription],
    writes: usize,
    messages: &dyn Fn() -> u64,
) -> Measured {
    let mut samples = Vec::new();
    let settle = || {
        let mut last = messages();
        let mut since = Instant::now();
        poll_until("quiet", Duration::from_millis(10), || {
            let now = messages();
            if now != last {
                last = now;
                since = Instant::now();
            }
            since.elapsed() > Duration::from_millis(150)
        });
    };
    settle();
    let before = messages();
    for k in 0..writes {
        let writer = k % dbs.len();
        let start = Instant::now();
        let id = dbs[writer]
            .insert(COLLECTION, Bug::nth(k as u64).fields())
            .expect("insert");
        for (i, sub) in subs.iter().enumerate() {
            if i != writer {
                wait_for_record(sub, id);
                samples.push(start.elapsed());
            }
        }
    }
    settle();
    let messages = (messages() - before) as f64 / writes as f64;
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    Measured {
        p50: micros(percentile(&samples, 50.0)),
        p99: micros(percentile(&samples, 99.0)),
        messages,
    }
}

fn mesh(ctx: &Ctx, writes: usize) -> Measured {
    progress(&format!(
        "mesh: {DEVICES} devices, full mesh, {writes} writes"
    ));
    let dbs: Vec<Database> = (0..DEVICES).map(|_| ctx.db("mesh")).collect();
    let peers: Vec<PeerSync> = dbs
        .iter()
        .map(|db| PeerSync::start(db, "mesh").expect("peers"))
        .collect();
    let addresses: Vec<_> = peers
        .iter()
        .map(|p| {
            p.listen("127.0.0.1:0".parse().expect("address"))
                .expect("listen")
        })
        .collect();
    for a in 0..DEVICES {
        for b in a + 1..DEVICES {
            peers[a].trust(peers[b].public_key());
            peers[b].trust(peers[a].public_key());
            peers[a]
                .connect(addresses[b], peers[b].public_key())
                .expect("connect");
        }
    }
    let links = DEVICES * (DEVICES - 1);
    poll_until("every link up", Duration::from_millis(10), || {
        peers
            .iter()
            .map(|p| {
                p.engine()
                    .status()
                    .expect("status")
                    .iter()
                    .filter(|c| c.connected)
                    .count()
            })
            .sum::<usize>()
            == links
    });
    let subs: Vec<Subscription> = dbs.iter().map(|db| db.subscribe(COLLECTION)).collect();
    let messages = || -> u64 {
        peers
            .iter()
            .flat_map(|p| p.engine().status().expect("status"))
            .map(|c| c.messages_sent)
            .sum()
    };
    let measured = run(&dbs, &subs, writes, &messages);
    for p in peers {
        p.stop();
    }
    measured
}

fn hub(ctx: &Ctx, writes: usize) -> Measured {
    progress(&format!(
        "mesh: {DEVICES} devices through the server, {writes} writes"
    ));
    let name = ctx.database("hub");
    let dbs: Vec<Database> = (0..DEVICES).map(|_| ctx.db("hub")).collect();
    let syncs: Vec<RemoteSync> = dbs
        .iter()
        .map(|db| {
            db.enable_sync(
                RemoteNode::new(ctx.server.url(), &name),
                RemoteOptions::default().enroll(ctx.server.token()),
            )
            .expect("enable_sync")
        })
        .collect();
    for s in &syncs {
        s.wait_synced(STALL, |_| {}).expect("in sync");
    }
    let subs: Vec<Subscription> = dbs.iter().map(|db| db.subscribe(COLLECTION)).collect();
    let server = ctx.server.handle();
    let messages = || -> u64 {
        let devices: u64 = syncs
            .iter()
            .flat_map(|s| s.engine().status().expect("status"))
            .map(|c| c.messages_sent)
            .sum();
        let hub: u64 = server
            .engine_connections(&name)
            .expect("server status")
            .unwrap_or_default()
            .iter()
            .map(|c| c.messages_sent)
            .sum();
        devices + hub
    };
    let measured = run(&dbs, &subs, writes, &messages);
    for s in syncs {
        s.stop();
    }
    measured
}

pub fn mesh_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let writes = if cfg.quick { 50 } else { 500 };
    let mesh = mesh(ctx, writes);
    let hub = hub(ctx, writes);
    let links = DEVICES * (DEVICES - 1) / 2;
    let rows = vec![
        Row::new(
            format!(
                "write → visible on each of the other {} devices, p50 µs ({} writes, round robin)",
                DEVICES - 1,
                thousands(writes as f64)
            ),
            Unit::Micros,
            mesh.p50,
            vec![hub.p50],
        )
        .ratio(Ratio::Speedup, Goal::None),
        Row::new(
            "write → visible on each other device, p99 µs",
            Unit::Micros,
            mesh.p99,
            vec![hub.p99],
        )
        .ratio(Ratio::Speedup, Goal::None),
        Row::new(
            format!("messages per write, every link both ways, acks included ({links} links in the mesh)"),
            Unit::BytesPerOp,
            mesh.messages,
            vec![hub.messages],
        )
        .ratio(Ratio::Speedup, Goal::None),
        Row::new(
            "messages per write per mesh link",
            Unit::BytesPerOp,
            mesh.messages / links as f64,
            vec![],
        ),
    ];
    writeln!(
        out,
        "### 8. Peers without a server: a full mesh of {DEVICES}\n\n\
         {DEVICES} devices (encrypted files) linked to each other directly with `PeerSync` \
         (WebSocket + Noise on loopback, one engine per device), beside the same {DEVICES} \
         devices through `blazedb-server` (hub and spoke), same run. Each write, made on the \
         devices in turn, is timed until every other device's subscription sees it. Messages: \
         every connection's messages sent, both ways, acks and pings included, per write, \
         once traffic has settled.\n"
    )
    .unwrap();
    let mut body = String::new();
    table(&mut body, &["through the server"], "server ÷ mesh", &rows);
    out.push_str(&body.replacen("| Measure | BlazeDB |", "| Measure | mesh |", 1));
    writeln!(out).unwrap();
}
