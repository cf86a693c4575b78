//! Property: in any topology with any modes, with messages delayed, duplicated and cut off by
//! restarts, every database ends with exactly the operations that can reach it, each applied
//! once.
//!
//! The relays here are the test's own: every message waits in a queue until the test decides
//! to deliver it (in order per direction, like a stream), deliver a stale copy of an earlier
//! one, or drop the whole connection by restarting a node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blazedb_core::{Database, NodeId, OpenOptions, Uuid, Value, fields};
use blazedb_protocol::Message;
use blazedb_sync::{Inbox, Mode, Relay, Result, SyncError, Topology};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One direction of one simulated connection.
#[derive(Default)]
struct Lane {
    inbox: Option<Inbox>,
    pending: VecDeque<Message>,
    /// Recently delivered messages, for stale duplicates.
    delivered: VecDeque<Message>,
}

#[derive(Default)]
struct Net {
    lanes: Vec<Lane>,
    /// Per connection: both lanes and whether it is closed.
    closed: Vec<bool>,
}

struct SimRelay {
    net: Arc<Mutex<Net>>,
    link: usize,
    /// Lane this end sends on; the other end receives on it.
    out: usize,
    input: usize,
}

fn sim_pair(net: &Arc<Mutex<Net>>) -> (SimRelay, SimRelay) {
    let mut n = net.lock().unwrap();
    let link = n.closed.len();
    n.closed.push(false);
    let a = n.lanes.len();
    n.lanes.push(Lane::default());
    n.lanes.push(Lane::default());
    let end = |out, input| SimRelay {
        net: net.clone(),
        link,
        out,
        input,
    };
    (end(a, a + 1), end(a + 1, a))
}

impl Relay for SimRelay {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        self.net.lock().unwrap().lanes[self.input].inbox = Some(inbox);
        Ok(())
    }
    fn send(&mut self, message: Message) -> Result<()> {
        let mut n = self.net.lock().unwrap();
        if n.closed[self.link] {
            return Err(SyncError::RelayClosed);
        }
        n.lanes[self.out].pending.push_back(message);
        Ok(())
    }
    fn close(&mut self) {
        let mut n = self.net.lock().unwrap();
        if n.closed[self.link] {
            return;
        }
        n.closed[self.link] = true;
        for lane in [self.out, self.input] {
            n.lanes[lane].pending.clear();
            if let Some(inbox) = n.lanes[lane].inbox.take() {
                inbox.closed("simulated connection closed");
            }
        }
    }
    fn kind(&self) -> &'static str {
        "simulated"
    }
}

impl Net {
    /// Delivers the oldest pending message of a random lane; false when nothing is pending.
    fn deliver_one(&mut self, rng: &mut StdRng) -> bool {
        let ready: Vec<usize> = (0..self.lanes.len())
            .filter(|&i| !self.lanes[i].pending.is_empty() && self.lanes[i].inbox.is_some())
            .collect();
        if ready.is_empty() {
            return false;
        }
        let lane = &mut self.lanes[ready[rng.random_range(0..ready.len())]];
        let message = lane.pending.pop_front().unwrap();
        if let Some(inbox) = &lane.inbox {
            inbox.deliver(message.clone());
        }
        lane.delivered.push_back(message);
        if lane.delivered.len() > 16 {
            lane.delivered.pop_front();
        }
        true
    }

    /// Delivers again a message that was delivered before (a stale duplicate).
    fn duplicate_one(&mut self, rng: &mut StdRng) {
        let lanes: Vec<usize> = (0..self.lanes.len())
            .filter(|&i| !self.lanes[i].delivered.is_empty() && self.lanes[i].inbox.is_some())
            .collect();
        if lanes.is_empty() {
            return;
        }
        let lane = &self.lanes[lanes[rng.random_range(0..lanes.len())]];
        let message = lane.delivered[rng.random_range(0..lane.delivered.len())].clone();
        if let Some(inbox) = &lane.inbox {
            inbox.deliver(message);
        }
    }

    fn pending(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| l.inbox.is_some())
            .map(|l| l.pending.len())
            .sum()
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Nodes 0 and 1 connected; the others alone.
    Pair,
    Chain,
    Star,
    Ring,
    Mesh,
}

fn shape_edges(shape: Shape, n: usize) -> Vec<(usize, usize)> {
    match shape {
        Shape::Pair => vec![(0, 1)],
        Shape::Chain => (0..n - 1).map(|i| (i, i + 1)).collect(),
        Shape::Star => (1..n).map(|i| (0, i)).collect(),
        Shape::Ring => (0..n).map(|i| (i, (i + 1) % n)).collect(),
        Shape::Mesh => (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect(),
    }
}

struct Sim {
    dir: tempfile::TempDir,
    net: Arc<Mutex<Net>>,
    topology: Topology,
    dbs: Vec<Option<Database>>,
    ids: Vec<NodeId>,
    edges: Vec<(usize, usize, Mode)>,
    /// Operations each node merged from others, over all its engines' lifetimes.
    applied: Vec<u64>,
    records: Vec<Uuid>,
}

impl Sim {
    fn path(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("n{i}.blazedb"))
    }

    fn new(n: usize, edges: Vec<(usize, usize, Mode)>) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut topology = Topology::new();
        let mut dbs = Vec::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let db = OpenOptions::new().create(Sim::path(dir.path(), i)).unwrap();
            ids.push(topology.register(&db, &format!("n{i}")).unwrap());
            dbs.push(Some(db));
        }
        let mut sim = Sim {
            dir,
            net: Arc::new(Mutex::new(Net::default())),
            topology,
            dbs,
            ids,
            edges,
            applied: vec![0; n],
            records: Vec::new(),
        };
        for k in 0..sim.edges.len() {
            sim.connect(k);
        }
        sim
    }

    fn connect(&mut self, k: usize) {
        let (a, b, mode) = self.edges[k];
        let (ra, rb) = sim_pair(&self.net);
        self.topology
            .connect_with(self.ids[a], self.ids[b], mode, ra, rb)
            .unwrap();
    }

    fn db(&self, i: usize) -> &Database {
        self.dbs[i].as_ref().unwrap()
    }

    fn write(&mut self, rng: &mut StdRng) {
        let i = rng.random_range(0..self.dbs.len());
        let db = self.dbs[i].as_ref().unwrap();
        let choice = rng.random_range(0..10);
        if choice < 5 || self.records.is_empty() {
            let id = db
                .insert(
                    "t",
                    fields! {"node" => i as i64, "v" => rng.random_range(0..100i64)},
                )
                .unwrap();
            self.records.push(id);
        } else {
            let id = self.records[rng.random_range(0..self.records.len())];
            // The record may not have reached this node (or was deleted): then nothing happens.
            let _ = if choice < 9 {
                db.update(
                    "t",
                    id,
                    fields! {"v" => rng.random_range(0..100i64), "by" => i as i64},
                )
            } else {
                db.delete("t", id)
            };
        }
    }

    /// Drops node `i`'s engine and database, reopens the file and reconnects its edges.
    fn restart(&mut self, i: usize) {
        let node = self.ids[i];
        for &(a, b, _) in &self.edges {
            if a == i || b == i {
                self.topology.disconnect(self.ids[a], self.ids[b]).unwrap();
            }
        }
        // All messages queued before the disconnect have been handled now.
        self.applied[i] += self.topology.engine_of(node).unwrap().ops_applied();
        self.topology.unregister(node).unwrap();
        self.dbs[i] = None;
        let db = OpenOptions::new()
            .open(Sim::path(self.dir.path(), i))
            .unwrap();
        assert_eq!(self.topology.register(&db, &format!("n{i}")).unwrap(), node);
        self.dbs[i] = Some(db);
        for k in 0..self.edges.len() {
            let (a, b, _) = self.edges[k];
            if a == i || b == i {
                self.connect(k);
            }
        }
    }

    /// Delivers everything (no more duplicates) until the whole topology is idle.
    fn settle(&mut self, rng: &mut StdRng) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline {
                for (i, id) in self.ids.iter().enumerate() {
                    let engine = self.topology.engine_of(*id).unwrap();
                    eprintln!("node {i}: {:#?}", engine.status().unwrap());
                }
                panic!("the topology never settled");
            }
            while self.net.lock().unwrap().deliver_one(rng) {}
            if self.topology.wait_idle(Duration::from_millis(20)).unwrap()
                && self.net.lock().unwrap().pending() == 0
            {
                return;
            }
        }
    }

    /// Nodes whose operations can reach node `y` along the direction operations flow.
    fn sources(&self, y: usize) -> BTreeSet<usize> {
        let mut reach = BTreeSet::from([y]);
        loop {
            let mut grew = false;
            for &(a, b, mode) in &self.edges {
                // a → b when a sends; b → a when a receives.
                let flows = [(a, b, mode.sends()), (b, a, mode.receives())];
                for (src, dst, on) in flows {
                    if on && reach.contains(&dst) && reach.insert(src) {
                        grew = true;
                    }
                }
            }
            if !grew {
                return reach;
            }
        }
    }

    fn check(&mut self) {
        let n = self.dbs.len();
        for i in 0..n {
            self.applied[i] += self.topology.engine_of(self.ids[i]).unwrap().ops_applied();
        }
        // Each node's own operations, from its own log.
        let own: Vec<Vec<blazedb_core::Operation>> = (0..n)
            .map(|i| {
                self.db(i)
                    .replication()
                    .oplog_since(0, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|(_, op)| op)
                    .filter(|op| op.id.origin == self.ids[i])
                    .collect()
            })
            .collect();
        for y in 0..n {
            let sources = self.sources(y);
            let expected = Database::in_memory().unwrap();
            let mut expected_ops = 0u64;
            for &x in &sources {
                expected.replication().apply_remote(&own[x]).unwrap();
                expected_ops += own[x].len() as u64;
            }
            let db = self.db(y);
            assert_eq!(
                db.content_hash().unwrap(),
                expected.content_hash().unwrap(),
                "node {y} holds exactly what nodes {sources:?} wrote"
            );
            assert_eq!(
                db.replication().oplog_ops_through(u64::MAX).unwrap(),
                expected_ops,
                "node {y} logged every reachable op once"
            );
            let vector = db.replication().version_vector().unwrap();
            for (x, ops) in own.iter().enumerate() {
                let want = if sources.contains(&x) {
                    ops.len() as u64
                } else {
                    0
                };
                assert_eq!(
                    vector.get(self.ids[x]),
                    want,
                    "node {y}'s entry for node {x}"
                );
            }
            assert_eq!(
                self.applied[y],
                expected_ops - own[y].len() as u64,
                "node {y} applied each foreign op exactly once"
            );
        }
    }
}

fn mode_strategy() -> impl Strategy<Value = Mode> {
    prop_oneof![
        2 => Just(Mode::Bidirectional),
        1 => Just(Mode::ReadOnly),
        1 => Just(Mode::WriteOnly),
    ]
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Pair),
        Just(Shape::Chain),
        Just(Shape::Star),
        Just(Shape::Ring),
        Just(Shape::Mesh),
    ]
}

fn run(n: usize, shape: Shape, modes: Vec<Mode>, seed: u64, steps: usize) {
    let edges: Vec<(usize, usize, Mode)> = shape_edges(shape, n)
        .into_iter()
        .zip(modes.into_iter().cycle())
        .map(|((a, b), m)| (a, b, m))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(n, edges);
    let mut restarts = 0;
    for _ in 0..steps {
        match rng.random_range(0..100) {
            0..40 => sim.write(&mut rng),
            40..92 => {
                for _ in 0..rng.random_range(1..8) {
                    sim.net.lock().unwrap().deliver_one(&mut rng);
                }
            }
            92..97 => sim.net.lock().unwrap().duplicate_one(&mut rng),
            _ if restarts < 3 => {
                restarts += 1;
                let i = rng.random_range(0..n);
                sim.restart(i);
            }
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    sim.settle(&mut rng);
    sim.check();
    // A last write after everything settled still flows.
    let value = Value::from("after");
    let id = sim.db(0).insert("t", fields! {"late" => value}).unwrap();
    sim.records.push(id);
    sim.settle(&mut rng);
    sim.check_late(id);
}

impl Sim {
    fn check_late(&self, id: Uuid) {
        let sources: Vec<bool> = (0..self.dbs.len())
            .map(|y| self.sources(y).contains(&0))
            .collect();
        for (y, reachable) in sources.into_iter().enumerate() {
            assert_eq!(
                self.db(y).get("t", id).unwrap().is_some(),
                reachable,
                "node {y}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases(12, 300),
        max_shrink_iters: 20,
        .. ProptestConfig::default()
    })]

    #[test]
    fn every_database_ends_with_exactly_the_operations_that_can_reach_it(
        n in 3usize..=6,
        shape in shape_strategy(),
        modes in prop::collection::vec(mode_strategy(), 1..8),
        seed in any::<u64>(),
    ) {
        run(n, shape, modes, seed, 160);
    }
}

#[test]
fn a_mesh_of_bidirectional_links_with_stale_duplicates_converges() {
    run(5, Shape::Mesh, vec![Mode::Bidirectional], 7, 400);
}
