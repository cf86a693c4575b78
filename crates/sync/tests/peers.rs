//! Devices syncing with each other without a server (`PeerSync`), over WebSocket and Noise
//! on 127.0.0.1: a full mesh of three and a ring of four converge, every write reaches every
//! device once, traffic stops when all are in step, and a peer whose key is not trusted is
//! refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blazedb_core::{Database, fields};
use blazedb_sync::remote::PeerSync;

const WAIT: Duration = Duration::from_secs(20);

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Node {
    db: Database,
    peers: PeerSync,
    address: SocketAddr,
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|_| {
            let db = Database::in_memory().unwrap();
            let peers = PeerSync::start(&db, "notes").unwrap();
            let address = peers.listen("127.0.0.1:0".parse().unwrap()).unwrap();
            Node { db, peers, address }
        })
        .collect()
}

/// `a` connects to `b`, each trusting the other.
fn link(nodes: &[Node], a: usize, b: usize) {
    nodes[a].peers.trust(nodes[b].peers.public_key());
    nodes[b].peers.trust(nodes[a].peers.public_key());
    nodes[a]
        .peers
        .connect(nodes[b].address, nodes[b].peers.public_key())
        .unwrap();
}

/// Messages every node's links sent so far.
fn messages(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .flat_map(|n| n.peers.engine().status().unwrap())
        .map(|c| c.messages_sent)
        .sum()
}

fn converge(nodes: &[Node], writes_each: usize) {
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..writes_each {
            node.db
                .insert("notes", fields! { "from" => i as i64, "n" => k as i64 })
                .unwrap();
        }
    }
    let total = (nodes.len() * writes_each) as u64;
    until("every node to hold every note", || {
        nodes.iter().all(|n| n.db.count("notes").unwrap() == total)
    });
    // Every node merged each other node's writes once, whatever path they came by (a
    // write that arrives again by a second path counts as a duplicate, not applied).
    let foreign = total - writes_each as u64;
    for node in nodes {
        let applied: u64 = node
            .peers
            .engine()
            .status()
            .unwrap()
            .iter()
            .map(|c| c.ops_applied)
            .sum();
        assert_eq!(applied, foreign);
    }
    // Traffic stops once all are in step (pings aside, which come every few seconds).
    let mut last = messages(nodes);
    let mut quiet_since = Instant::now();
    until("traffic to stop", || {
        let now = messages(nodes);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() > Duration::from_millis(500)
    });
}

#[test]
fn three_devices_in_a_full_mesh_converge_and_go_quiet() {
    let nodes = nodes(3);
    link(&nodes, 0, 1);
    link(&nodes, 1, 2);
    link(&nodes, 2, 0);
    converge(&nodes, 20);
    for node in nodes {
        node.peers.stop();
    }
}

#[test]
fn four_devices_in_a_ring_converge_through_their_neighbours() {
    let nodes = nodes(4);
    for i in 0..4 {
        link(&nodes, i, (i + 1) % 4);
    }
    converge(&nodes, 10);
    for node in nodes {
        node.peers.stop();
    }
}

#[test]
fn a_peer_whose_key_is_not_trusted_is_refused_and_gets_nothing() {
    let nodes = nodes(2);
    nodes[0]
        .db
        .insert("notes", fields! { "secret" => "for trusted peers" })
        .unwrap();
    // Node 1 expects node 0's key, but node 0 was never told node 1's.
    nodes[1]
        .peers
        .connect(nodes[0].address, nodes[0].peers.public_key())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(nodes[1].db.count("notes").unwrap(), 0);
    // Once trusted, it syncs.
    nodes[0].peers.trust(nodes[1].peers.public_key());
    until("the trusted peer to sync", || {
        nodes[1].db.count("notes").unwrap() == 1
    });
    for node in nodes {
        node.peers.stop();
    }
}

#[test]
fn a_write_never_travels_back_to_the_device_it_came_from() {
    // A ring of four with one writer: every write goes round one way and the other; the
    // writer's neighbours know it has its own writes (its vector says so) and send none
    // back, and no device gets one twice except where the two ways meet.
    let nodes = nodes(4);
    for i in 0..4 {
        link(&nodes, i, (i + 1) % 4);
    }
    for k in 0..25 {
        nodes[0]
            .db
            .insert("notes", fields! { "n" => k as i64 })
            .unwrap();
    }
    until("every node to hold every note", || {
        nodes.iter().all(|n| n.db.count("notes").unwrap() == 25)
    });
    std::thread::sleep(Duration::from_millis(300));
    let writer = nodes[0].peers.engine().status().unwrap();
    assert_eq!(
        writer
            .iter()
            .map(|c| c.ops_applied + c.ops_duplicate)
            .sum::<u64>(),
        0,
        "the writer got its own writes back"
    );
    for node in &nodes[1..] {
        let applied: u64 = node
            .peers
            .engine()
            .status()
            .unwrap()
            .iter()
            .map(|c| c.ops_applied)
            .sum();
        assert_eq!(applied, 25);
    }
    for node in nodes {
        node.peers.stop();
    }
}
