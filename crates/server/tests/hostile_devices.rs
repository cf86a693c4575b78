//! Enrolled devices that misbehave on purpose, against a real server on 127.0.0.1: a device
//! that says hello as another device's node, or sends operations stamped with another node's
//! origin, is refused with the reason and nothing of it is stored; a device that floods the
//! server with compressed batches or with `Pull`s holds a bounded amount of its memory;
//! strangers that connect and say nothing, or guess tokens, hold a small budget of their own
//! and are throttled; the honest devices keep syncing as if nothing happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::Duration;

use blazedb_core::{Database, Date, OpId, OpKind, Operation, Uuid, fields};
use blazedb_protocol::{CloseCode, Message};
use blazedb_server::ServerHandle;
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt, node_keys};
use common::ServeProcess;
use common::raw::{RawDevice, RawSession};

const DB: &str = "bugs";
const WAIT: Duration = Duration::from_secs(30);

fn start_server(data: &Path) -> ServerHandle {
    common::start_server(data, DB, &["ada", "bob", "mallory"])
}

fn token(server: &ServerHandle, user: &str) -> String {
    blazedb_testkit::server::token(server, user)
}

fn device(server: &ServerHandle, user: &str) -> (Database, RemoteSync) {
    device_at(&server.url(), token(server, user))
}

/// A new device syncing with the server at `url`, enrolling with `token`.
fn device_at(url: &str, token: String) -> (Database, RemoteSync) {
    device_trusting(url, token, None)
}

/// [`device_at`], trusting the certificate in `ca_file` for `wss://`.
fn device_trusting(
    url: &str,
    token: String,
    ca_file: Option<std::path::PathBuf>,
) -> (Database, RemoteSync) {
    let db = Database::in_memory().unwrap();
    let options = RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(250),
        ca_file,
        ..RemoteOptions::default()
    };
    let sync = db
        .enable_sync(RemoteNode::new(url, DB), options.enroll(token))
        .unwrap();
    (db, sync)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` inserts as `origin` made them, with sequence numbers from `first_seq`.
fn forged_inserts(origin: blazedb_core::NodeId, first_seq: u64, n: u64) -> Vec<Operation> {
    (0..n)
        .map(|i| Operation {
            id: OpId {
                origin,
                seq: first_seq + i,
            },
            lamport: 1_000 + i,
            wall: Date::now(),
            kind: OpKind::Insert,
            collection: "bugs".into(),
            record: Uuid::now_v7(),
            fields: fields! {"title" => "forged", "i" => i as i64},
        })
        .collect()
}

#[test]
fn a_device_cannot_say_hello_as_another_devices_node_nor_change_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let (ada, ada_sync) = device(&server, "ada");
    ada.insert("bugs", fields! {"title" => "ada's"}).unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let ada_fingerprint = node_keys(&ada).unwrap().fingerprint();

    let rt = runtime();
    rt.block_on(async {
        // Mallory enrolls her own key, then says hello with Ada's node id.
        let mut mallory = RawDevice::new();
        mallory.node = ada.node_id();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &mallory, token(&server, "mallory"))
                .await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("belongs to device"), "{reason}");
        assert!(reason.contains(&ada_fingerprint), "{reason}");
        assert!(reason.contains("copy"), "{reason}");

        // A device is bound to the node it first said hello as; another one is refused.
        let carol = RawDevice::new();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &carol, token(&server, "bob")).await;
        assert!(
            matches!(
                session.recv(Duration::from_secs(10)).await,
                Some(Message::Hello { .. })
            ),
            "an honest first session is accepted"
        );
        drop(session);
        let changed = RawDevice {
            keys: carol.keys.clone(),
            node: blazedb_core::NodeId::random(),
        };
        let mut session = RawSession::connect(server.local_addr(), DB, &changed.keys).await;
        session.send(&changed.hello(DB)).await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("said hello as node"), "{reason}");
    });

    // Ada keeps syncing, and a new device gets only her record.
    ada.insert("bugs", fields! {"title" => "ada's second"})
        .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let (bob, bob_sync) = device(&server, "bob");
    bob_sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 2);
}

#[test]
fn operations_stamped_with_another_nodes_origin_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let (ada, ada_sync) = device(&server, "ada");
    ada.insert("bugs", fields! {"title" => "ada's first"})
        .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();

    let rt = runtime();
    rt.block_on(async {
        // Mallory says hello as herself, then sends 1,000 inserts stamped with Ada's node id
        // and the sequence numbers Ada will use next.
        let mallory = RawDevice::new();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &mallory, token(&server, "mallory"))
                .await;
        let ops = forged_inserts(ada.node_id(), 2, 1_000);
        session
            .send(&Message::Ops {
                from: 0,
                to: 1_000,
                ops,
            })
            .await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("made by another node"), "{reason}");
    });

    // Ada's next writes still reach the server (their sequence numbers were not taken), and
    // a new device has exactly Ada's records, none of Mallory's.
    for i in 0..5 {
        ada.insert("bugs", fields! {"title" => "ada's", "i" => i})
            .unwrap();
    }
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let (bob, bob_sync) = device(&server, "bob");
    bob_sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 6);
    assert!(
        bob.fetch_all("bugs")
            .unwrap()
            .iter()
            .all(|r| r.get("title") != Some(&"forged".into()))
    );
    // Ada holds no forged record either.
    assert_eq!(ada.count("bugs").unwrap(), 6);
}

/// A server process with database "bugs" and users ada, bob and mallory, for measuring its
/// memory and descriptors.
fn serve_process(dir: &Path) -> ServeProcess {
    serve_process_with(dir, &[])
}

fn serve_process_with(dir: &Path, flags: &[&str]) -> ServeProcess {
    let data = common::init(dir);
    common::ok(&data, &["admin", "database", "create", DB]);
    for user in ["ada", "bob", "mallory"] {
        common::ok(&data, &["admin", "user", "add", user]);
    }
    ServeProcess::start(&data, flags)
}

/// Descriptors the process has open (Linux).
fn open_files(server: &ServeProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count()
}

fn process_token(server: &ServeProcess, user: &str) -> String {
    common::ok(&server.data, &["admin", "token", "create", user])
        .trim()
        .to_owned()
}

/// A device syncing with the server process (trusting its self-signed certificate, if any).
fn process_device(server: &ServeProcess, user: &str) -> (Database, RemoteSync) {
    let cert = server.data.join("tls/cert.pem");
    let ca_file = cert.exists().then_some(cert);
    device_trusting(&server.url, process_token(server, user), ca_file)
}

/// Samples `server`'s resident memory every 20 ms until `stop`; returns the highest.
fn peak_rss(server: &ServeProcess, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut peak = server.rss();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        peak = peak.max(server.rss());
        std::thread::sleep(Duration::from_millis(20));
    }
    peak.max(server.rss())
}

const MIB: u64 = 1 << 20;

#[test]
fn a_device_flooding_compressed_batches_is_slowed_down_and_holds_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_process(dir.path());
    let (ada, ada_sync) = process_device(&server, "ada");
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let before = server.rss();

    // Mallory's own operations, valid, 4,096 to a batch, all on one record: each batch is
    // about 600 kB plain and compresses to a few kB, so she can send far faster than the
    // server applies.
    let mallory = RawDevice::new();
    let token = process_token(&server, "mallory");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let record = Uuid::now_v7();
    let (peak, sent, ada_synced) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| peak_rss(&server, &stop));
        let flood = scope.spawn(|| {
            runtime().block_on(async {
                let mut session = RawSession::enrolled(server.addr, DB, &mallory, token).await;
                let mut sent = 0u64;
                let _ = tokio::time::timeout(Duration::from_secs(4), async {
                    for batch in 0..400u64 {
                        let first = batch * 4096 + 1;
                        let ops = (0..4096u64)
                            .map(|i| Operation {
                                id: OpId {
                                    origin: mallory.node,
                                    seq: first + i,
                                },
                                lamport: first + i,
                                wall: Date::from_unix_millis(0),
                                kind: OpKind::Insert,
                                collection: "bugs".into(),
                                record,
                                fields: fields! {"pad" => "x".repeat(100)},
                            })
                            .collect();
                        let ops = Message::Ops {
                            from: batch * 4096,
                            to: (batch + 1) * 4096,
                            ops,
                        };
                        let plain = ops.encode_for(blazedb_protocol::Capabilities::ZSTD, 1024);
                        assert!(plain.len() < 64 * 1024, "{} bytes", plain.len());
                        let sealed = session.channel.seal(&plain).unwrap();
                        use futures_util::SinkExt;
                        if session
                            .ws
                            .send(tokio_tungstenite::tungstenite::Message::Binary(
                                sealed.into(),
                            ))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        sent += 1;
                    }
                })
                .await;
                sent
            })
        });
        // Ada writes while the flood goes on, and still hears back.
        std::thread::sleep(Duration::from_millis(500));
        ada.insert("bugs", fields! {"title" => "during the flood"})
            .unwrap();
        let started = std::time::Instant::now();
        let synced = ada_sync.wait_synced(WAIT, |_| {}).is_ok();
        let ada_synced = started.elapsed();
        assert!(synced, "Ada could not sync during the flood");
        let sent = flood.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Release);
        (sampler.join().unwrap(), sent, ada_synced)
    });
    let growth = peak.saturating_sub(before);
    eprintln!(
        "flood: {sent} batches of 4,096 operations sent in 4 s; server memory grew by {} MiB \
         (peak); Ada synced in {ada_synced:?}",
        growth / MIB
    );
    // The server holds at most its inbound budget (16 MiB of decoded messages) of Mallory's
    // batches at a time, besides its caches and what it streams to Ada: measured about
    // 190 MiB in all. Without the budget it decoded whatever she sent (825 MiB for the same
    // 400 batches, and more with more).
    assert!(
        growth < 320 * MIB,
        "server memory grew by {} MiB",
        growth / MIB
    );
}

#[test]
fn a_device_flooding_pulls_it_never_reads_is_closed_and_holds_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_process(dir.path());
    let (ada, ada_sync) = process_device(&server, "ada");
    ada.insert_many(
        "bugs",
        (0..20_000).map(|i| fields! {"i" => i, "pad" => "y".repeat(200)}),
    )
    .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let before = server.rss();

    let mallory = RawDevice::new();
    let token = process_token(&server, "mallory");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (peak, reason) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| peak_rss(&server, &stop));
        let reason = runtime().block_on(async {
            let mut session = RawSession::enrolled(server.addr, DB, &mallory, token).await;
            // 3,000 Pulls from the start, none of the answers read.
            for _ in 0..3_000 {
                let pull = Message::Pull {
                    from: 0,
                    vector: blazedb_core::VersionVector::new(),
                    checks: Vec::new(),
                };
                let sealed = session.channel.seal(&pull.encode()).unwrap();
                use futures_util::SinkExt;
                let send = session
                    .ws
                    .send(tokio_tungstenite::tungstenite::Message::Binary(
                        sealed.into(),
                    ));
                match tokio::time::timeout(Duration::from_secs(2), send).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Now read: whatever was queued, then the server's Close.
            loop {
                match session.recv(Duration::from_secs(10)).await {
                    Some(Message::Close { reason, .. }) => break Some(reason),
                    Some(_) => {}
                    None => break None,
                }
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        (sampler.join().unwrap(), reason)
    });
    let growth = peak.saturating_sub(before);
    eprintln!(
        "pull flood: server memory grew by {} MiB (peak); close: {reason:?}",
        growth / MIB
    );
    let reason = reason.expect("the server closed the connection with a reason");
    assert!(reason.contains("Pulls"), "{reason}");
    assert!(
        growth < 100 * MIB,
        "server memory grew by {} MiB",
        growth / MIB
    );
    // Ada is unaffected.
    ada.insert("bugs", fields! {"after" => true}).unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
}

#[test]
fn a_refused_device_always_hears_why_even_with_messages_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // 80 refusals from one address: more than the default throttle lets through.
    let server = common::start_server_with(
        dir.path(),
        DB,
        &[],
        blazedb_server::ServerConfig {
            max_auth_failures: 1_000,
            ..Default::default()
        },
    );
    let rt = runtime();
    let heard = rt.block_on(async {
        let mut heard = 0;
        for _ in 0..80 {
            // An unenrolled device that does not wait: its Hello and a burst of Pings are on
            // the wire (unread by the server) when the server refuses it.
            let device = RawDevice::new();
            let mut session = RawSession::connect(server.local_addr(), DB, &device.keys).await;
            session.send(&device.hello(DB)).await;
            for nonce in 0..20 {
                session.send(&Message::Ping { nonce }).await;
            }
            // A device on a slow link reads a little later; by then a server that closed
            // with those bytes unread has sent a TCP reset, which discards its Close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(Message::Close { code, reason }) =
                session.recv(Duration::from_secs(5)).await
            {
                assert_eq!(code, CloseCode::Unauthorized);
                assert!(reason.contains("not enrolled"), "{reason}");
                heard += 1;
            }
        }
        heard
    });
    assert_eq!(heard, 80, "only {heard} of 80 refused devices heard why");
}

#[test]
fn a_thousand_silent_strangers_do_not_starve_enrolled_devices() {
    silent_strangers_do_not_starve_enrolled_devices(&[]);
}

#[test]
fn a_thousand_strangers_that_never_send_a_client_hello_do_not_starve_tls_devices() {
    silent_strangers_do_not_starve_enrolled_devices(&["--tls-self-signed"]);
}

fn silent_strangers_do_not_starve_enrolled_devices(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--max-connections", "50", "--handshake-timeout-secs", "2"];
    all.extend(flags);
    let server = serve_process_with(dir.path(), &all);
    let (ada, ada_sync) = process_device(&server, "ada");
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let files_before = open_files(&server);

    // 1,000 strangers upgrade to a WebSocket, or just connect, and then say nothing (on TLS
    // they all just connect: no ClientHello ever comes).
    let tls = flags.contains(&"--tls-self-signed");
    let mut strangers = Vec::new();
    for i in 0..1_000 {
        let Ok(mut tcp) = std::net::TcpStream::connect(server.addr) else {
            continue;
        };
        if i % 2 == 0 && !tls {
            use std::io::Write;
            let _ = write!(
                tcp,
                "GET /sync/{DB} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
        }
        strangers.push(tcp);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The server let in at most its pending budget from this address; it closed the rest
    // at once instead of holding a descriptor (and a slot) for each.
    let files_during = open_files(&server);
    eprintln!(
        "{} strangers connected: the server holds {files_during} descriptors ({files_before} \
         before)",
        strangers.len()
    );
    assert!(
        files_during < files_before + 100,
        "the server holds {files_during} descriptors"
    );

    // Ada, enrolled and connected, keeps syncing meanwhile.
    ada.insert("bugs", fields! {"title" => "while strangers wait"})
        .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();

    // A new device from the same address gets in once the strangers' time is up (2 s), and
    // the strangers took none of the 50 enrolled slots.
    let (bob, bob_sync) = process_device(&server, "bob");
    bob_sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 1);
    drop(strangers);
}

#[test]
fn token_guesses_from_one_address_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_process_with(dir.path(), &["--max-auth-failures", "10"]);
    let rt = runtime();
    let (refused, dropped) = rt.block_on(async {
        let (mut refused, mut dropped) = (0, 0);
        for _ in 0..60 {
            let guesser = RawDevice::new();
            let Some(mut session) =
                RawSession::try_connect(server.addr, DB, &guesser.keys).await
            else {
                // Dropped before any handshake: the address is throttled.
                dropped += 1;
                continue;
            };
            session
                .send(&Message::Enroll {
                    token: "bzt1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                })
                .await;
            match session.recv(Duration::from_secs(5)).await {
                Some(Message::Close { code, .. }) => {
                    assert_eq!(code, CloseCode::Unauthorized);
                    refused += 1;
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        (refused, dropped)
    });
    eprintln!("60 token guesses: {refused} refused after a handshake, {dropped} dropped before");
    // Ten failures are free; the eleventh starts a backoff (1 s, then 2 s, …) during which
    // the address's connections are dropped before any handshake or store lookup.
    assert!(refused <= 15, "{refused} guesses got a handshake");
    assert!(dropped >= 45, "{dropped} guesses were dropped");
}
