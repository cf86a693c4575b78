//! `blazedb demo`: a server and two devices on loopback, in a temporary directory. Shows an
//! insert arriving (with its latency and bytes on the wire), an edit made while one device is
//! offline arriving when it reconnects, and a concurrent edit merged. Leaves nothing behind.

use std::time::{Duration, Instant};

use blazedb_core::{Database, Record, Uuid, Value, fields};

use crate::json::record_line;
use blazedb_server::{MasterKey, Server, ServerConfig};
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt};

use crate::error::Failure;

const DATABASE: &str = "bugs";
const WAIT: Duration = Duration::from_secs(20);

fn fail(what: &str) -> impl Fn(String) -> Failure + '_ {
    move |e| Failure::msg(format!("demo: {what}: {e}"))
}

/// Waits until `check` holds for `db`'s record `id`, polling finely; returns how long it took.
fn wait_for(db: &Database, id: Uuid, check: impl Fn(&Record) -> bool) -> Result<Duration, Failure> {
    let start = Instant::now();
    loop {
        if let Some(record) = db.get(DATABASE, id)?
            && check(&record)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > WAIT {
            return Err(Failure::msg("demo: a change did not arrive within 20 s"));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn synced(sync: &RemoteSync) -> Result<(), Failure> {
    sync.wait_synced(WAIT, |_| {})
        .map(|_| ())
        .map_err(|e| Failure::msg(format!("demo: sync did not finish: {e}")))
}

fn wire_bytes(syncs: &[&RemoteSync]) -> u64 {
    syncs
        .iter()
        .map(|s| {
            let st = s.status();
            st.bytes_sent + st.bytes_received
        })
        .sum()
}

pub fn run() -> Result<(), Failure> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("blazedb-demo-")
        .tempdir()
        .map_err(|e| Failure::io("demo: cannot make a temporary directory", e))?;
    let config = ServerConfig {
        data_dir: dir.path().join("server"),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    };
    // The demo's master key lives only in memory: the server's files die with the demo.
    let key = MasterKey::generate().map_err(|e| fail("master key")(e.to_string()))?;
    let server = Server::start_with_key(config, key).map_err(|e| fail("server")(e.to_string()))?;
    let url = server.url();
    println!("1. Server: {url} (SQLCipher store in a temporary directory, a fresh master key)");
    let meta = server.meta();
    meta.create_database(DATABASE)
        .map_err(|e| fail("database")(e.to_string()))?;
    let token = |user: &str| {
        meta.add_user(user, &["demo".to_owned()], None)
            .map_err(|e| fail("user")(e.to_string()))?;
        meta.create_token(user, Duration::from_secs(600))
            .map_err(|e| fail("token")(e.to_string()))
    };
    let (alice_token, bob_token) = (token("alice")?, token("bob")?);

    let alice = Database::create(dir.path().join("alice.blazedb"), "alice's password")?;
    let bob_path = dir.path().join("bob.blazedb");
    let bob = Database::create(&bob_path, "bob's password")?;
    let remote = RemoteNode::new(url.clone(), DATABASE);
    let enroll = |db: &Database, token: &str| {
        db.enable_sync(remote.clone(), RemoteOptions::default().enroll(token))
            .map_err(|e| fail("enable sync")(e.to_string()))
    };
    let alice_sync = enroll(&alice, &alice_token)?;
    let bob_sync = enroll(&bob, &bob_token)?;
    synced(&alice_sync)?;
    synced(&bob_sync)?;
    println!(
        "2. Alice's and Bob's devices enrolled with one-time tokens; Noise XX sessions up \
         (server key {})",
        alice_sync.status().server_key.unwrap_or_default()
    );

    // An insert on Alice arrives at Bob.
    let before = wire_bytes(&[&alice_sync, &bob_sync]);
    let sent = Instant::now();
    let id = alice.insert(
        DATABASE,
        fields! {
            "title" => "Crash on launch",
            "status" => "open",
            "priority" => 2,
            "reporter" => "alice",
        },
    )?;
    wait_for(&bob, id, |_| true)?;
    let latency = sent.elapsed();
    synced(&alice_sync)?;
    synced(&bob_sync)?;
    let bytes = wire_bytes(&[&alice_sync, &bob_sync]) - before;
    println!(
        "3. Alice inserted a bug; Bob had it {:.2} ms later. On the wire for it: {bytes} bytes \
         (TCP payload: op Alice → server → Bob, both acks and the demo's sync barriers, with \
         WebSocket and Noise overhead)",
        latency.as_secs_f64() * 1000.0
    );

    // Bob goes offline; Alice edits; Bob comes back.
    bob_sync.stop();
    alice.update(DATABASE, id, fields! {"status" => "fixed"})?;
    synced(&alice_sync)?;
    println!("4. Bob went offline; Alice set status to \"fixed\" meanwhile");
    let bob_sync = bob
        .enable_sync(remote.clone(), RemoteOptions::default())
        .map_err(|e| fail("reconnect")(e.to_string()))?;
    let caught_up = wait_for(&bob, id, |r| {
        r.fields.get("status") == Some(&Value::from("fixed"))
    })?;
    println!(
        "   Bob reconnected (no token needed: his key is enrolled, the server's pinned) and \
         caught up in {:.1} ms",
        caught_up.as_secs_f64() * 1000.0
    );

    // A concurrent edit: both change the bug at once, different fields and the same one.
    alice.update(
        DATABASE,
        id,
        fields! {"priority" => 1, "title" => "Crash on launch (iOS)"},
    )?;
    bob.update(
        DATABASE,
        id,
        fields! {"assignee" => "bob", "title" => "Crash on launch (iOS 18)"},
    )?;
    synced(&alice_sync)?;
    synced(&bob_sync)?;
    synced(&alice_sync)?;
    let a = alice
        .get(DATABASE, id)?
        .ok_or_else(|| Failure::msg("demo: the bug is gone on Alice"))?;
    let b = bob
        .get(DATABASE, id)?
        .ok_or_else(|| Failure::msg("demo: the bug is gone on Bob"))?;
    if a.fields != b.fields {
        return Err(Failure::msg("demo: Alice and Bob did not converge"));
    }
    println!(
        "5. Concurrent edits merged field by field: both new fields kept; of the two titles \
         one wins on both devices (Lamport clock, then node id):\n   {}",
        record_line(&a)
    );

    alice_sync.stop();
    bob_sync.stop();
    server.shutdown();
    drop((alice, bob));
    let path = dir.path().to_owned();
    dir.close()
        .map_err(|e| Failure::io("demo: cannot remove the temporary directory", e))?;
    println!(
        "6. Stopped the server and removed {} ({:.1} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
