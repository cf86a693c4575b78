//! Section 7: what end-to-end collections cost (docs/e2e.md). Each measure runs on a smart
//! collection and on the same collection declared e2e, in the same run, on the same server.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Fields, Uuid, Value};
use blazedb_protocol::Message;
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_sync::e2e::{DeviceSealing, Inbound, MessageLayer};
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt};

use crate::support::{
    Bug, COLLECTION, Goal, Ratio, Row, STALL, Unit, percentile, poll_until, progress, table,
    thousands, wait_count, wait_for_record,
};
use crate::{Config, Ctx};

/// Developers read and write their teams' bugs.
const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
"#;

/// The same, with the bugs sealed end to end and routed by team.
fn rules(e2e: bool) -> String {
    if e2e {
        format!("{RULES}\n[collections.bugs]\nmode = \"e2e\"\nrouting_fields = [\"teamId\"]\n")
    } else {
        RULES.to_owned()
    }
}

/// Bug `i` of team t0.
fn bug(i: u64) -> Fields {
    team_bug(i, "t0")
}

fn team_bug(i: u64, team: &str) -> Fields {
    let mut fields = Bug::nth(i).fields();
    fields.insert("teamId".into(), Value::from(team));
    fields
}

/// A hosted database with the rules of `e2e`.
fn database(ctx: &Ctx, prefix: &str, e2e: bool) -> String {
    let name = ctx.unique(prefix);
    let meta = ctx.server.handle().meta();
    meta.create_database(&name).expect("create database");
    meta.set_access_rules(&name, &rules(e2e)).expect("rules");
    name
}

/// A device of a new developer of team t0 on `name`, in sync.
fn device(ctx: &Ctx, name: &str) -> (Database, RemoteSync) {
    team_device(ctx, name, "t0")
}

fn team_device(ctx: &Ctx, name: &str, team: &str) -> (Database, RemoteSync) {
    let meta = ctx.server.handle().meta();
    let user = ctx.unique("e2e-dev");
    meta.add_user(&user, &[team.to_owned()], Some("developer"))
        .expect("user");
    let token = meta
        .create_token(&user, Duration::from_secs(3600))
        .expect("token")
        .to_string();
    let db = ctx.db("e2e");
    let sync = db
        .enable_sync(
            RemoteNode::new(ctx.server.url(), name),
            RemoteOptions::default().enroll(token),
        )
        .expect("enable_sync");
    sync.wait_synced(STALL, |_| {}).expect("in sync");
    (db, sync)
}

/// Bytes both devices sent and received so far.
fn traffic(devices: &[&RemoteSync]) -> u64 {
    devices
        .iter()
        .map(|d| {
            let s = d.status();
            s.bytes_sent + s.bytes_received
        })
        .sum()
}

/// Waits until the devices' byte counters stop moving for 200 ms.
fn quiet(devices: &[&RemoteSync]) {
    let mut last = traffic(devices);
    let mut since = Instant::now();
    poll_until("quiet", Duration::from_millis(20), || {
        let now = traffic(devices);
        if now != last {
            last = now;
            since = Instant::now();
        }
        since.elapsed() > Duration::from_millis(200)
    });
}

/// What one mode measured.
struct Measured {
    p50: f64,
    p99: f64,
    bytes: f64,
    pipeline: f64,
    sync_seconds: f64,
}

fn measure(ctx: &Ctx, cfg: &Config, e2e: bool) -> Measured {
    let how = if e2e { "e2e" } else { "smart" };
    progress(&format!(
        "e2e: {how}: Alice → Bob, {} records (+{} warm-up)",
        cfg.latency_samples, cfg.latency_warmup
    ));
    let name = database(ctx, "e2e-pair", e2e);
    let (alice, alice_sync) = device(ctx, &name);
    let (bob, bob_sync) = device(ctx, &name);
    let sub = bob.subscribe(COLLECTION);
    let mut samples = Vec::new();
    let mut bytes = 0;
    for k in 0..(cfg.latency_warmup + cfg.latency_samples) {
        if k == cfg.latency_warmup {
            quiet(&[&alice_sync, &bob_sync]);
            bytes = traffic(&[&alice_sync, &bob_sync]);
        }
        let start = Instant::now();
        let id = alice.insert(COLLECTION, bug(k as u64)).expect("insert");
        wait_for_record(&sub, id);
        if k >= cfg.latency_warmup {
            samples.push(start.elapsed());
        }
    }
    quiet(&[&alice_sync, &bob_sync]);
    let bytes = (traffic(&[&alice_sync, &bob_sync]) - bytes) as f64 / cfg.latency_samples as f64;
    samples.sort();

    // Back to back: Alice's inserts, one per transaction, until Bob holds them all.
    let n = cfg.access_push;
    progress(&format!(
        "e2e: {how}: {n} inserts back to back, Alice → Bob"
    ));
    let before = bob.count(COLLECTION).expect("count");
    let start = Instant::now();
    for i in 0..n {
        alice
            .insert(COLLECTION, bug(1_000_000 + i as u64))
            .expect("insert");
    }
    wait_count(&bob, &sub, before + n as u64);
    let pipeline = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    alice_sync.stop();
    bob_sync.stop();

    // A new device's initial sync of `bulk` records one device wrote (sealed in e2e).
    let records = cfg.bulk;
    progress(&format!("e2e: {how}: initial sync of {records} records"));
    let name = database(ctx, "e2e-bulk", e2e);
    let (writer, writer_sync) = device(ctx, &name);
    let mut done = 0;
    while done < records {
        let k = 1000.min(records - done);
        writer
            .insert_many(COLLECTION, (done..done + k).map(|i| bug(i as u64)))
            .expect("bulk insert");
        done += k;
    }
    writer_sync.wait_synced(STALL, |_| {}).expect("pushed");
    let reader_db = ctx.db("e2e-reader");
    let meta = ctx.server.handle().meta();
    let user = ctx.unique("e2e-reader");
    meta.add_user(&user, &["t0".to_owned()], Some("developer"))
        .expect("user");
    let token = meta
        .create_token(&user, Duration::from_secs(3600))
        .expect("token")
        .to_string();
    let reader_sub = reader_db.subscribe(COLLECTION);
    let start = Instant::now();
    let reader = reader_db
        .enable_sync(
            RemoteNode::new(ctx.server.url(), &name),
            RemoteOptions::default().enroll(token),
        )
        .expect("enable_sync");
    wait_count(&reader_db, &reader_sub, records as u64);
    let sync_seconds = start.elapsed().as_secs_f64();
    reader.stop();
    writer_sync.stop();

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    Measured {
        p50: micros(percentile(&samples, 50.0)),
        p99: micros(percentile(&samples, 99.0)),
        bytes,
        pipeline,
        sync_seconds,
    }
}

/// The device's cost of sealing one record, in microseconds, and of opening it.
fn seal_costs() -> (f64, f64) {
    let db = Database::in_memory().expect("database");
    let sealed: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        [("bugs".to_owned(), ["teamId".to_owned()].into())].into();
    let layer = DeviceSealing::new(&db, "bench", &sealed).expect("layer");
    let n = 20_000;
    let ops: Vec<_> = (0..n)
        .map(|i| blazedb_core::Operation {
            id: blazedb_core::OpId {
                origin: blazedb_core::NodeId(Uuid::from_u128(1)),
                seq: i + 1,
            },
            lamport: i + 1,
            wall: blazedb_core::Date::from_unix_millis(0),
            kind: blazedb_core::OpKind::Insert,
            collection: COLLECTION.into(),
            record: Uuid::now_v7(),
            fields: bug(i),
        })
        .collect();
    let start = Instant::now();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let message = Message::Ops {
            from: 0,
            to: 1,
            ops: vec![op],
        };
        out.push(layer.seal(message).expect("seal"));
    }
    let seal = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let start = Instant::now();
    for message in out {
        layer.open(message).expect("open");
    }
    let open = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    (seal, open)
}

/// Rotation among `n` devices: the rotating device's own time (wrapping the next key to
/// `n - 1` devices and sealing the previous one), the whole rotation through the server
/// (from the revocation until every remaining device's wrapped key is stored), and the
/// bytes the rotating device sent for it.
fn rotation(ctx: &Ctx, n: usize) -> (f64, f64, f64) {
    progress(&format!("e2e: rotation among {n} devices"));
    let name = database(ctx, "e2e-rot", true);
    let meta = ctx.server.handle().meta();
    // A team of its own: devices of a user of the team may read its bugs, whatever
    // database they were enrolled through.
    let team = format!("rot{n}");
    // n - 1 devices enrolled with keys of their own (offline: keys are wrapped to every
    // device the rules let read, online or not), and one member online.
    let mut fingerprints = Vec::new();
    let mut publics = Vec::new();
    for _ in 0..n - 1 {
        let user = ctx.unique("e2e-rot");
        meta.add_user(&user, &[team.clone()], Some("developer"))
            .expect("user");
        let token = meta
            .create_token(&user, Duration::from_secs(3600))
            .expect("token");
        let keys = StaticKeys::generate(Suite::default()).expect("keys");
        meta.enroll_device(&token, keys.public(), keys.suite())
            .expect("enroll");
        fingerprints.push(keys.fingerprint());
        publics.push(keys.public().to_vec());
    }
    let (member, member_sync) = team_device(ctx, &name, &team);
    member
        .insert(COLLECTION, team_bug(0, &team))
        .expect("insert");
    let wrapped = |epoch: u32| {
        meta.e2e_keys(&name)
            .expect("keys")
            .0
            .iter()
            .filter(|e| e.epoch == epoch)
            .count()
    };
    poll_until(
        "the first key wrapped to every device",
        Duration::from_millis(5),
        || wrapped(1) == n,
    );
    let sent = member_sync.status().bytes_sent;
    let start = Instant::now();
    meta.revoke_device(&fingerprints[0]).expect("revoke");
    poll_until("the rotation", Duration::from_millis(2), || {
        wrapped(2) == n - 1
    });
    let through_server = start.elapsed().as_secs_f64();
    let bytes = (member_sync.status().bytes_sent - sent) as f64;
    member_sync.stop();

    // The device's own part, alone: a layer holding a key, asked for the next epoch.
    let db = Database::in_memory().expect("database");
    let sealed: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        [("bugs".to_owned(), ["teamId".to_owned()].into())].into();
    let keys = StaticKeys::generate(Suite::default()).expect("keys");
    let layer = DeviceSealing::new(&db, &name, &sealed)
        .expect("layer")
        .with_identity(&keys);
    layer
        .seal(Message::Ops {
            from: 0,
            to: 1,
            ops: vec![blazedb_core::Operation {
                id: blazedb_core::OpId {
                    origin: blazedb_core::NodeId(Uuid::from_u128(1)),
                    seq: 1,
                },
                lamport: 1,
                wall: blazedb_core::Date::from_unix_millis(0),
                kind: blazedb_core::OpKind::Insert,
                collection: COLLECTION.into(),
                record: Uuid::now_v7(),
                fields: team_bug(0, &team),
            }],
        })
        .expect("seal");
    let start = Instant::now();
    let done = layer
        .inbound(Message::KeyTask {
            collection: COLLECTION.into(),
            scope: team.clone(),
            epoch: 2,
            key: None,
            recipients: publics[1..].to_vec(),
        })
        .expect("rotate");
    let on_device = start.elapsed().as_secs_f64();
    assert!(matches!(done, Inbound::Consumed(replies) if replies.len() == 1));
    (on_device, through_server, bytes)
}

pub fn e2e_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let smart = measure(ctx, cfg, false);
    let e2e = measure(ctx, cfg, true);
    let (seal, open) = seal_costs();
    // The floor of per-field sealing: each sealed value carries at least an AEAD tag (16
    // bytes), on both legs (Alice → server, server → Bob).
    let sealed_fields = bug(0).len() - 1;
    let floor = smart.bytes + (2 * 16 * sealed_fields) as f64;
    let mut rows = vec![
        Row::new(
            format!(
                "**Alice → Bob, bytes per record** (both devices' traffic, {} records one at a time)",
                thousands(cfg.latency_samples as f64)
            ),
            Unit::BytesPerOp,
            e2e.bytes,
            vec![smart.bytes],
        )
        .ratio(Ratio::Share, Goal::AtMost(1.15, "≤ 1.15×")),
        Row::new(
            format!(
                "floor: smart plus one 16-byte tag per sealed field ({sealed_fields}) on both legs"
            ),
            Unit::BytesPerOp,
            floor,
            vec![smart.bytes],
        )
        .ratio(Ratio::Share, Goal::None),
        Row::new(
            "**Alice → Bob, p50 µs**",
            Unit::Micros,
            e2e.p50,
            vec![smart.p50],
        )
        .ratio(Ratio::Share, Goal::AtMost(1.1, "≤ 1.1×")),
        Row::new("Alice → Bob, p99 µs", Unit::Micros, e2e.p99, vec![smart.p99])
            .ratio(Ratio::Share, Goal::None),
        Row::new(
            format!(
                "**Insert cost**: {} inserts back to back until Bob holds them, µs per record",
                thousands(cfg.access_push as f64)
            ),
            Unit::Micros,
            e2e.pipeline,
            vec![smart.pipeline],
        )
        .ratio(Ratio::Share, Goal::AtMost(1.1, "≤ 1.1×")),
        Row::new(
            format!(
                "**Initial sync of {} records** to a new device, s",
                thousands(cfg.bulk as f64)
            ),
            Unit::Seconds,
            e2e.sync_seconds,
            vec![smart.sync_seconds],
        )
        .goal(Goal::Below(3.0, "< 3 s (100,000 records)")),
        Row::new(
            "sealing one record on the device (µs; baseline: opening it)",
            Unit::Micros,
            seal,
            vec![open],
        ),
    ];
    for n in [100, if cfg.quick { 200 } else { 1000 }] {
        let (on_device, through_server, bytes) = rotation(ctx, n);
        rows.push(Row::new(
            format!("rotation among {n} devices: on the rotating device, s"),
            Unit::Seconds,
            on_device,
            vec![],
        ));
        rows.push(Row::new(
            format!("rotation among {n} devices: revocation to every wrapped key stored, s"),
            Unit::Seconds,
            through_server,
            vec![],
        ));
        rows.push(Row::new(
            format!("rotation among {n} devices: bytes the rotating device sent"),
            Unit::Count,
            bytes,
            vec![],
        ));
    }
    writeln!(
        out,
        "### 7. End-to-end collections\n\n\
         Bugs of one team (`teamId` routing field), on a collection declared e2e and on the \
         same collection smart, same rules, same server, same run. Alice and Bob are two \
         developers of the team, each an encrypted device file syncing through the server. \
         Bytes are the TCP bytes of both devices, sent and received, per record (acks \
         included). The initial sync is timed from `enable_sync` on an empty device until it \
         holds every record; in e2e it includes getting the team's key from the writer, \
         which is online. Rotation: the other devices are enrolled with keys of their own \
         and offline (a rotation wraps the next key to every device the rules let read); \
         one is revoked and the member online makes the next epoch.\n"
    )
    .unwrap();
    let mut body = String::new();
    table(&mut body, &["smart"], "e2e ÷ {}", &rows);
    out.push_str(&body.replacen("| Measure | BlazeDB |", "| Measure | e2e |", 1));
    writeln!(out).unwrap();
}
