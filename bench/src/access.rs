//! Section 6: what access rules cost and save (docs/access.md). Each measure runs with rules
//! and without them (or against the matching unfiltered case) in the same run, on the same
//! server.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Fields, Value};
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt};

use crate::blazedb_side::Fleet;
use crate::support::{
    Bug, COLLECTION, Goal, Ratio, Row, STALL, Unit, poll_until, progress, table, thousands,
};
use crate::{Config, Ctx};

/// Developers read and write their teams' bugs; admins everything.
const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }

[roles.admin.bugs]
read  = {}
write = {}
"#;

/// Bug `i` of team `t{i % teams}`.
fn team_bug(i: usize, teams: usize) -> Fields {
    let mut fields = Bug::nth(i as u64).fields();
    fields.insert("teamId".into(), Value::from(format!("t{}", i % teams)));
    fields
}

/// Writes `n` bugs spread over `teams` into hosted database `name` (created here, with the
/// rules when `rules`), in transactions of 500, before any device connects.
fn load(ctx: &Ctx, name: &str, n: usize, teams: usize, rules: bool) {
    let meta = ctx.server.handle().meta();
    meta.create_database(name).expect("create database");
    if rules {
        meta.set_access_rules(name, RULES).expect("rules");
    }
    let db = meta.open_database(name).expect("open the hosted database");
    let mut done = 0;
    while done < n {
        let k = 500.min(n - done);
        db.insert_many(COLLECTION, (done..done + k).map(|i| team_bug(i, teams)))
            .expect("bulk insert");
        done += k;
    }
}

/// A user `name` in `teams` with `role` (created once).
fn user(ctx: &Ctx, name: &str, teams: &[String], role: &str) {
    let meta = ctx.server.handle().meta();
    if meta.user(name).expect("user").is_none() {
        meta.add_user(name, teams, Some(role)).expect("add user");
    }
}

fn token(ctx: &Ctx, user: &str) -> String {
    ctx.server
        .handle()
        .meta()
        .create_token(user, Duration::from_secs(3600))
        .expect("token")
        .to_string()
}

/// A new device of `user` on database `name`: its database and its sync, once it holds
/// `records` records and is in sync; how long that took.
fn sync_new(ctx: &Ctx, name: &str, user: &str, records: u64) -> (Database, RemoteSync, Duration) {
    let db = ctx.db("access");
    let start = Instant::now();
    let sync = db
        .enable_sync(
            RemoteNode::new(ctx.server.url(), name),
            RemoteOptions::default().enroll(token(ctx, user)),
        )
        .expect("enable_sync");
    poll_until("the device's records", Duration::from_millis(1), || {
        db.count(COLLECTION).expect("count") >= records
    });
    sync.wait_synced(STALL, |_| {}).expect("in sync");
    (db, sync, start.elapsed())
}

pub fn access_section(ctx: &Ctx, cfg: &Config, out: &mut String) {
    let mut rows = Vec::new();

    // -- bytes to one team of 10 ------------------------------------------------------------
    let n = cfg.access_records;
    progress(&format!(
        "access: {n} records in 10 teams, one team's device vs everything"
    ));
    let name = ctx.unique("acc-bytes");
    load(ctx, &name, n, 10, true);
    user(ctx, "acc-dev0", &["t0".to_owned()], "developer");
    user(ctx, "acc-admin", &[], "admin");
    let (_, team, _) = sync_new(ctx, &name, "acc-dev0", (n / 10) as u64);
    let (_, all, _) = sync_new(ctx, &name, "acc-admin", n as u64);
    let team_bytes = team.status().bytes_received as f64;
    let all_bytes = all.status().bytes_received as f64;
    team.stop();
    all.stop();
    rows.push(
        Row::new(
            format!(
                "initial sync of {} records in 10 teams: bytes a device of one team receives \
                 (baseline: a device that reads everything)",
                thousands(n as f64)
            ),
            Unit::Count,
            team_bytes,
            vec![all_bytes],
        )
        .ratio(Ratio::Share, Goal::AtMost(0.12, "≤ 0.12×")),
    );

    // -- fan-out with rules ------------------------------------------------------------------
    let devices = cfg.fleet;
    let teams = 50.min(devices);
    let burst = cfg.fleet_burst;
    let mut rates = Vec::new();
    let mut records_per_s = Vec::new();
    let mut messages_per_delivery = Vec::new();
    for rules in [true, false] {
        progress(&format!(
            "access: fan-out to {devices} devices in {teams} teams, {}",
            if rules { "with rules" } else { "without rules" }
        ));
        let name = ctx.unique(if rules {
            "acc-fan-rules"
        } else {
            "acc-fan-open"
        });
        load(ctx, &name, 0, teams, rules);
        let tokens: Vec<String> = (0..devices)
            .map(|i| {
                let u = format!("acc-team{}", i % teams);
                user(ctx, &u, &[format!("t{}", i % teams)], "developer");
                token(ctx, &u)
            })
            .collect();
        let (writer_db, writer, _) = sync_new(ctx, &name, "acc-admin", 0);
        let fleet = Fleet::connect_with(&ctx.rt, &ctx.server, &name, tokens);
        // Each record reaches every device without rules, and its team's devices with them.
        let per_record = if rules { devices / teams } else { devices };
        // The burst starts once the server streams to every device (each one's `Pull`
        // answered), in both runs.
        let server = ctx.server.handle();
        poll_until("every device streaming", Duration::from_millis(5), || {
            server
                .engine_connections(&name)
                .expect("status")
                .is_some_and(|c| c.iter().filter(|c| c.streaming).count() > devices)
        });
        let sent = || -> u64 {
            server
                .engine_connections(&name)
                .expect("status")
                .map_or(0, |c| c.iter().map(|c| c.messages_sent).sum())
        };
        let sent_before = sent();
        let start = Instant::now();
        for i in 0..burst {
            writer_db
                .insert(COLLECTION, team_bug(i, teams))
                .expect("insert");
        }
        let want = (per_record * burst) as u64;
        poll_until("deliveries", Duration::from_micros(200), || {
            fleet.delivered() >= want
        });
        let took = start.elapsed().as_secs_f64();
        messages_per_delivery.push((sent() - sent_before) as f64 / want as f64);
        rates.push(want as f64 / took);
        records_per_s.push(burst as f64 / took);
        fleet.finish(&ctx.rt);
        writer.stop();
    }
    rows.push(
        Row::new(
            format!(
                "fan-out, {burst} single inserts back to back to {devices} devices in {teams} \
                 teams: deliveries/s (baseline: the same without rules, every device gets \
                 every record)"
            ),
            Unit::Count,
            rates[0],
            vec![rates[1]],
        )
        .ratio(Ratio::Share, Goal::AtLeast(0.7, "≥ 0.7×")),
    );
    // Ceilings of the first row, measured in this run: no fan-out with rules can finish
    // before its records are written (the same inserts into the same kind of database, no
    // sync at all), nor before they have reached the server (the same writer, rules and
    // server, no device connected: until the server has acknowledged the last insert).
    let deliveries = ((devices / teams) * burst) as f64;
    progress(&format!("access: the writer's {burst} inserts alone"));
    let alone_db = ctx.db("access-alone");
    let start = Instant::now();
    for i in 0..burst {
        alone_db
            .insert(COLLECTION, team_bug(i, teams))
            .expect("insert");
    }
    let alone = start.elapsed().as_secs_f64();
    progress(&format!(
        "access: the writer's {burst} inserts to the server, no device connected"
    ));
    let name = ctx.unique("acc-fan-none");
    load(ctx, &name, 0, teams, true);
    let (writer_db, writer, _) = sync_new(ctx, &name, "acc-admin", 0);
    let start = Instant::now();
    for i in 0..burst {
        writer_db
            .insert(COLLECTION, team_bug(i, teams))
            .expect("insert");
    }
    writer.wait_synced(STALL, |_| {}).expect("in sync");
    let to_server = start.elapsed().as_secs_f64();
    writer.stop();
    for (what, took) in [
        (
            format!("the writer's {burst} inserts alone (no sync)"),
            alone,
        ),
        (
            format!("the same {burst} inserts acknowledged by the server with no device connected"),
            to_server,
        ),
    ] {
        rows.push(
            Row::new(
                format!(
                    "fan-out with rules, ceiling: deliveries/s if every delivery took no time, \
                     the same {} deliveries ÷ {what} (baseline: without rules, as above)",
                    thousands(deliveries)
                ),
                Unit::Count,
                deliveries / took,
                vec![rates[1]],
            )
            .ratio(Ratio::Share, Goal::None),
        );
    }
    rows.push(
        Row::new(
            "fan-out, the same: messages the server sent per delivery (until the last \
             delivery; baseline: without rules)",
            Unit::Hundredths,
            messages_per_delivery[0],
            vec![messages_per_delivery[1]],
        )
        .ratio(Ratio::Share, Goal::None),
    );
    rows.push(
        Row::new(
            "fan-out, the same: records/s written and delivered to every device that may read \
             them (baseline: without rules)",
            Unit::Count,
            records_per_s[0],
            vec![records_per_s[1]],
        )
        .ratio(Ratio::Share, Goal::None),
    );

    // -- a permission change that adds a team, then one that removes one -----------------
    let m = cfg.access_records;
    progress(&format!(
        "access: a team of {m} records granted, then one removed"
    ));
    let name = ctx.unique("acc-grant");
    load(ctx, &name, 2 * m, 2, true);
    user(ctx, "acc-b", &["t1".to_owned()], "developer");
    user(ctx, "acc-moving", &["t0".to_owned()], "developer");
    let (_, b_only, initial) = sync_new(ctx, &name, "acc-b", m as u64);
    b_only.stop();
    let (moving_db, moving, _) = sync_new(ctx, &name, "acc-moving", m as u64);
    let meta = ctx.server.handle().meta();
    let start = Instant::now();
    meta.update_user(
        "acc-moving",
        Some(&["t0".to_owned(), "t1".to_owned()]),
        None,
    )
    .expect("grant");
    poll_until("the granted records", Duration::from_millis(1), || {
        moving_db.count(COLLECTION).expect("count") >= 2 * m as u64
    });
    let granted = start.elapsed();
    let before = moving.status().bytes_received;
    meta.update_user("acc-moving", Some(&["t1".to_owned()]), None)
        .expect("remove a team");
    poll_until("the purge", Duration::from_millis(1), || {
        moving_db.count(COLLECTION).expect("count") <= m as u64
    });
    std::thread::sleep(Duration::from_millis(300));
    let purge_bytes = (moving.status().bytes_received - before) as f64 / m as f64;
    moving.stop();
    rows.push(
        Row::new(
            format!(
                "a team of {} records granted to a connected device: s until it holds them \
                 (baseline: a new device's initial sync of the same records)",
                thousands(m as f64)
            ),
            Unit::Seconds,
            granted.as_secs_f64(),
            vec![initial.as_secs_f64()],
        )
        .ratio(Ratio::Share, Goal::AtMost(1.2, "≤ 1.2×")),
    );
    rows.push(
        Row::new(
            format!(
                "a team of {} records removed: bytes received per purged record",
                thousands(m as f64)
            ),
            Unit::BytesPerOp,
            purge_bytes,
            vec![],
        )
        .goal(Goal::AtMost(64.0, "≤ 64")),
    );

    // -- pushing writes the server checks ------------------------------------------------
    let p = cfg.access_push;
    // Each run is short (a tenth of a second): alternate the two, five times, and compare
    // the medians.
    let mut pushes: [Vec<f64>; 2] = Default::default();
    for round in 0..5 {
        for (k, rules) in [true, false].into_iter().enumerate() {
            progress(&format!(
                "access: pushing {p} inserts, {} (round {})",
                if rules { "with rules" } else { "without rules" },
                round + 1
            ));
            let name = ctx.unique(if rules {
                "acc-push-rules"
            } else {
                "acc-push-open"
            });
            load(ctx, &name, 0, 1, rules);
            user(ctx, "acc-pusher", &["t0".to_owned()], "developer");
            let (db, sync, _) = sync_new(ctx, &name, "acc-pusher", 0);
            let start = Instant::now();
            let mut done = 0;
            while done < p {
                let k = 100.min(p - done);
                db.insert_many(COLLECTION, (done..done + k).map(|i| team_bug(i, 1)))
                    .expect("insert");
                done += k;
            }
            sync.wait_synced(STALL, |_| {}).expect("pushed");
            pushes[k].push(p as f64 / start.elapsed().as_secs_f64());
            let refused = sync
                .status()
                .connection
                .map_or(0, |c| c.rejections_received);
            assert_eq!(refused, 0, "every write of the pusher is allowed");
            sync.stop();
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let pushes = [median(&mut pushes[0]), median(&mut pushes[1])];
    rows.push(
        Row::new(
            format!(
                "a device pushes {} inserts (transactions of 100), the server checking each: \
                 inserts/s until acknowledged, median of 5 (baseline: a database without \
                 rules, runs alternating)",
                thousands(p as f64)
            ),
            Unit::Count,
            pushes[0],
            vec![pushes[1]],
        )
        .ratio(Ratio::Share, Goal::AtLeast(0.8, "≥ 0.8×")),
    );

    writeln!(
        out,
        "### 6. Access rules: what filtering costs and saves\n\n\
         Databases with the rules of docs/access.md's shape (developers read and write the \
         bugs of their teams, `teamId = {{ \"$in\" = \"$teams\" }}`; an admin role reads \
         everything), against the same measure without filtering in the same run. Bytes are \
         what the device's WebSocket received (frames, Noise, zstd as negotiated). The \
         fan-out devices are the simulated ones of section 3 (their users spread over the \
         teams); a delivery is one record arriving at one device that may read it.\n"
    )
    .unwrap();
    table(out, &["baseline"], "with ÷ {}", &rows);
    writeln!(out).unwrap();
}
