//! A hub that filters what it sends by each connection's scope (a server with devices in
//! several teams) routes every new operation only to the connections it concerns: each
//! device ends with exactly what its scope lets it read, whatever the writes (inserts,
//! records moving between teams, deletes, one or many per transaction, scopes changing
//! while connected), and examines little more than its own team's writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use blazedb_access::{Rules, SecurityContext};
use blazedb_core::{Database, Fields, PurgeReason, Uuid, Value, fields};
use blazedb_sync::{ConnectOptions, ConnectionId, InMemoryRelay, PeerTrust, ReadScope, SyncEngine};
use proptest::prelude::*;

const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
"#;

const WAIT: Duration = Duration::from_secs(30);

/// What a developer of `team` may read.
fn scope_of(team: &str, device: usize) -> ReadScope {
    let rules = Rules::parse(RULES).unwrap();
    let ctx = SecurityContext::new(
        format!("user{device}"),
        [team],
        "developer",
        format!("device{device}"),
    );
    ReadScope::from_rules(&rules, &ctx)
}

struct Device {
    db: Database,
    _engine: SyncEngine,
    team: String,
    /// Its connection on the hub.
    link: ConnectionId,
}

struct Hub {
    db: Database,
    engine: SyncEngine,
    devices: Vec<Device>,
}

/// A hub and `per_team` devices in each of `teams`, connected and in step.
fn hub(teams: &[&str], per_team: usize) -> Hub {
    let db = Database::in_memory().unwrap();
    let engine = SyncEngine::start(db.clone(), "hub").unwrap();
    let mut devices = Vec::new();
    for team in teams {
        for _ in 0..per_team {
            let n = devices.len();
            let device = Database::in_memory().unwrap();
            let device_engine = SyncEngine::start(device.clone(), &format!("device{n}")).unwrap();
            let (x, y) = InMemoryRelay::pair();
            let mut options = ConnectOptions::new(format!("device{n}"))
                .trust(PeerTrust::Origin(device.node_id()));
            options.scope = Some(scope_of(team, n));
            let link = engine.connect(x, options).unwrap();
            device_engine
                .connect(y, ConnectOptions::new("hub"))
                .unwrap();
            devices.push(Device {
                db: device,
                _engine: device_engine,
                team: (*team).to_owned(),
                link,
            });
        }
    }
    assert!(engine.wait_idle(WAIT).unwrap(), "the devices connect");
    // Idle counts a connection that has not pulled yet; wait for every stream.
    let start = Instant::now();
    while !engine.status().unwrap().iter().all(|c| c.streaming) {
        assert!(start.elapsed() < WAIT, "the devices pull");
        std::thread::sleep(Duration::from_millis(2));
    }
    Hub {
        db,
        engine,
        devices,
    }
}

fn records(db: &Database) -> BTreeMap<Uuid, Fields> {
    db.query("bugs")
        .run()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect()
}

fn team_of(fields: &Fields) -> Option<&str> {
    match fields.get("teamId") {
        Some(Value::String(team)) => Some(team),
        _ => None,
    }
}

impl Hub {
    /// Waits until every device holds exactly the hub's records of its team.
    fn assert_each_device_holds_its_team(&self) {
        let start = Instant::now();
        loop {
            let all = records(&self.db);
            let mut wrong = None;
            for (i, device) in self.devices.iter().enumerate() {
                let want: BTreeMap<Uuid, Fields> = all
                    .iter()
                    .filter(|(_, f)| team_of(f) == Some(device.team.as_str()))
                    .map(|(id, f)| (*id, f.clone()))
                    .collect();
                let have = records(&device.db);
                if have != want {
                    wrong = Some((i, have, want));
                    break;
                }
            }
            let Some((i, have, want)) = wrong else {
                return;
            };
            assert!(
                start.elapsed() < WAIT,
                "device {i} (team {}) holds {have:#?}, not {want:#?}",
                self.devices[i].team
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ops_examined(&self, device: usize) -> u64 {
        self.engine
            .connection_status(self.devices[device].link)
            .unwrap()
            .unwrap()
            .ops_examined
    }
}

#[test]
fn each_device_examines_only_the_writes_that_concern_it() {
    let teams = ["red", "green", "blue", "gold"];
    let hub = hub(&teams, 3);
    // 20 bugs per team, one commit each, then 20 more per team in one transaction.
    for i in 0..80 {
        hub.db
            .insert(
                "bugs",
                fields! {"title" => format!("bug {i}"), "teamId" => teams[i % 4]},
            )
            .unwrap();
    }
    hub.db
        .transaction(|tx| {
            for i in 80..160 {
                tx.insert(
                    "bugs",
                    fields! {"title" => format!("bug {i}"), "teamId" => teams[i % 4]},
                )?;
            }
            Ok(())
        })
        .unwrap();
    hub.assert_each_device_holds_its_team();
    assert!(hub.engine.wait_idle(WAIT).unwrap());
    for device in 0..hub.devices.len() {
        let examined = hub.ops_examined(device);
        // Its team's 40 inserts; without routing it would read all 160.
        assert!(
            (40..=60).contains(&examined),
            "device {device} examined {examined} operations for the 40 of its team"
        );
    }
}

#[test]
fn a_record_moving_to_another_team_reaches_that_team_and_leaves_the_old_one() {
    let hub = hub(&["red", "green", "blue"], 2);
    let bug = hub
        .db
        .insert("bugs", fields! {"title" => "crash", "teamId" => "red"})
        .unwrap();
    hub.assert_each_device_holds_its_team();
    hub.db
        .update("bugs", bug, fields! {"teamId" => "green"})
        .unwrap();
    hub.assert_each_device_holds_its_team();
    hub.db
        .update("bugs", bug, fields! {"title" => "crash on start"})
        .unwrap();
    hub.assert_each_device_holds_its_team();
    hub.db.delete("bugs", bug).unwrap();
    hub.assert_each_device_holds_its_team();
    // The blue devices never saw it.
    assert!(hub.ops_examined(4) == 0 && hub.ops_examined(5) == 0);
}

#[test]
fn a_device_whose_scope_changes_while_connected_is_routed_by_its_new_scope() {
    let mut hub = hub(&["red", "green"], 2);
    for i in 0..10 {
        hub.db
            .insert(
                "bugs",
                fields! {"title" => format!("bug {i}"), "teamId" => if i % 2 == 0 { "red" } else { "green" }},
            )
            .unwrap();
    }
    hub.assert_each_device_holds_its_team();
    // Device 0 moves from red to green.
    hub.engine
        .set_scope(
            hub.devices[0].link,
            Some(scope_of("green", 0)),
            PurgeReason::AccessChanged,
        )
        .unwrap();
    hub.devices[0].team = "green".into();
    hub.assert_each_device_holds_its_team();
    hub.db
        .insert(
            "bugs",
            fields! {"title" => "new green", "teamId" => "green"},
        )
        .unwrap();
    hub.db
        .insert("bugs", fields! {"title" => "new red", "teamId" => "red"})
        .unwrap();
    hub.assert_each_device_holds_its_team();
}

/// One write of the hub, on bug `bug % live bugs`.
#[derive(Debug, Clone)]
enum Write {
    Insert { team: usize },
    Move { bug: usize, team: usize },
    Edit { bug: usize },
    Delete { bug: usize },
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        3 => (0..3usize).prop_map(|team| Write::Insert { team }),
        2 => (any::<usize>(), 0..3usize).prop_map(|(bug, team)| Write::Move { bug, team }),
        2 => any::<usize>().prop_map(|bug| Write::Edit { bug }),
        1 => any::<usize>().prop_map(|bug| Write::Delete { bug }),
    ]
}

const TEAMS: [&str; 3] = ["red", "green", "blue"];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("BLAZEDB_LONG").is_some() { 200 } else { 12 },
        ..ProptestConfig::default()
    })]

    /// Whatever the hub writes, in transactions of any size, every device ends with exactly
    /// its team's records: routing never leaves out a connection a write concerns.
    #[test]
    fn every_device_ends_with_exactly_its_teams_records(
        batches in prop::collection::vec(prop::collection::vec(write(), 1..6), 1..12),
    ) {
        let hub = hub(&TEAMS, 2);
        let mut live: Vec<Uuid> = Vec::new();
        for (n, batch) in batches.into_iter().enumerate() {
            hub.db
                .transaction(|tx| {
                    for w in &batch {
                        match *w {
                            Write::Insert { team } => live.push(tx.insert(
                                "bugs",
                                fields! {"title" => format!("bug {n}"), "teamId" => TEAMS[team]},
                            )?),
                            Write::Move { bug, team } if !live.is_empty() => {
                                let id = live[bug % live.len()];
                                tx.update("bugs", id, fields! {"teamId" => TEAMS[team]})?;
                            }
                            Write::Edit { bug } if !live.is_empty() => {
                                let id = live[bug % live.len()];
                                tx.update("bugs", id, fields! {"title" => format!("edit {n}")})?;
                            }
                            Write::Delete { bug } if !live.is_empty() => {
                                let id = live.remove(bug % live.len());
                                tx.delete("bugs", id)?;
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })
                .unwrap();
            if n % 2 == 0 {
                // Every other batch finds the connections parked; the others overlap.
                prop_assert!(hub.engine.wait_idle(WAIT).unwrap());
            }
        }
        hub.assert_each_device_holds_its_team();
    }
}
