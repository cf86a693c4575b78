//! `blazedb-server serve` as a real process on 127.0.0.1: its address line, `/health`,
//! `/sync/{database}` answers, the connection limit, TLS, and SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{KEY, ServeProcess, get, ok, run, upgrade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn serve_prints_its_address_and_health_answers_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    let server = ServeProcess::start(&data, &[]);
    assert!(server.url.starts_with("ws://127.0.0.1:"), "{}", server.url);
    assert_ne!(server.addr.port(), 0);
    let response = get(server.addr, "/health");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["databases"], 1);
    assert_eq!(json["connections"], 0);
}

#[test]
fn an_unknown_database_gets_404_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(&dir.path().join("data"), &[]);
    let (response, _socket) = upgrade(server.addr, "/sync/nosuch");
    assert_eq!(response.status, 404);
    assert_eq!(response.body, "unknown database \"nosuch\"");
    assert_eq!(get(server.addr, "/sync/nosuch").status, 404);
}

#[test]
fn a_sync_request_without_a_websocket_upgrade_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    let server = ServeProcess::start(&data, &[]);
    let response = get(server.addr, "/sync/bugs");
    assert_eq!(response.status, 400);
    assert!(response.body.contains("WebSocket"), "{}", response.body);
}

#[test]
fn a_database_created_while_the_server_runs_is_served_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start(&data, &[]);
    assert_eq!(upgrade(server.addr, "/sync/late").0.status, 404);
    ok(&data, &["admin", "database", "create", "late"]);
    let (response, _socket) = upgrade(server.addr, "/sync/late");
    assert_eq!(response.status, 101);
    assert_eq!(response.header("upgrade"), Some("websocket"));
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let json: serde_json::Value = serde_json::from_str(&get(server.addr, "/health").body).unwrap();
    assert_eq!(json["databases"], 1);
}

/// A device of user ada syncing with `server`.
fn enrolled_device(
    server: &ServeProcess,
) -> (blazedb_core::Database, blazedb_sync::remote::RemoteSync) {
    enrolled_device_with(server, &[])
}

/// A device of user ada syncing with `server`, enrolled with a token from
/// `admin token create ada TOKEN_ARGS`.
fn enrolled_device_with(
    server: &ServeProcess,
    token_args: &[&str],
) -> (blazedb_core::Database, blazedb_sync::remote::RemoteSync) {
    use blazedb_sync::remote::{RemoteNode, RemoteOptions, SyncExt};
    let mut args = vec!["admin", "token", "create", "ada"];
    args.extend_from_slice(token_args);
    let token = ok(&server.data, &args);
    let db = blazedb_core::Database::in_memory().unwrap();
    let options = RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    };
    let sync = db
        .enable_sync(
            RemoteNode::new(&server.url, "bugs"),
            options.enroll(token.trim()),
        )
        .unwrap();
    (db, sync)
}

fn health(server: &ServeProcess) -> serde_json::Value {
    serde_json::from_str(&get(server.addr, "/health").body).unwrap()
}

#[test]
fn only_authenticated_devices_take_connection_slots_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    ok(&data, &["admin", "user", "add", "ada"]);
    let server = ServeProcess::start(
        &data,
        &["--max-connections", "1", "--handshake-timeout-secs", "60"],
    );
    // A silent upgrade is a stranger: it waits in the pending budget, not in a slot.
    let (silent, _socket) = upgrade(server.addr, "/sync/bugs");
    assert_eq!(silent.status, 101);
    let json = health(&server);
    // (The health request's own connection is pending too.)
    assert_eq!(
        (json["connections"].as_u64(), json["pending"].as_u64()),
        (Some(0), Some(2))
    );

    // So an enrolled device still gets the one slot.
    let (first, first_sync) = enrolled_device(&server);
    first_sync
        .wait_synced(Duration::from_secs(30), |_| {})
        .unwrap();
    assert_eq!(health(&server)["connections"], 1);

    // A second device is told the server is full (503 at the upgrade), and keeps trying.
    let (_second, second_sync) = enrolled_device(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let error = second_sync.status().last_error.unwrap_or_default();
        if error.contains("503") {
            assert!(error.contains("limit of 1 connections"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "no 503: {error:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The first device leaving gives its slot to the second.
    drop(first_sync);
    drop(first);
    second_sync
        .wait_synced(Duration::from_secs(30), |_| {})
        .unwrap();
    assert_eq!(health(&server)["connections"], 1);
}

#[test]
fn a_25519_device_enrolls_and_syncs_with_the_server_process_beside_a_p256_device() {
    use blazedb_protocol::enroll::EnrollmentToken;
    use blazedb_protocol::secure::Suite;
    use blazedb_sync::remote::{
        RemoteNode, RemoteOptions, SyncExt, node_keys_for, pinned_server_key,
    };

    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    ok(&data, &["admin", "user", "add", "ada"]);
    let token = ok(
        &data,
        &["admin", "token", "create", "ada", "--suite", "25519"],
    );
    let token = EnrollmentToken::parse(&token).unwrap();
    assert_eq!(token.server_suite(), Suite::X25519AesGcmSha256);
    let server = ServeProcess::start(&data, &[]);

    let (x25519, x25519_sync) = enrolled_device_with(&server, &["--suite", "25519"]);
    let (p256, p256_sync) = enrolled_device(&server);
    let from_x25519 = x25519
        .insert("bugs", blazedb_core::fields! {"title" => "from X25519"})
        .unwrap();
    let from_p256 = p256
        .insert("bugs", blazedb_core::fields! {"title" => "from P-256"})
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p256.get("bugs", from_x25519).unwrap().is_none()
        || x25519.get("bugs", from_p256).unwrap().is_none()
    {
        assert!(Instant::now() < deadline, "the devices did not converge");
        std::thread::sleep(Duration::from_millis(20));
    }
    x25519_sync
        .wait_synced(Duration::from_secs(30), |_| {})
        .unwrap();
    p256_sync
        .wait_synced(Duration::from_secs(30), |_| {})
        .unwrap();

    // Each device speaks its token's suite and pinned the server's key of that suite.
    let (suite, key) = pinned_server_key(&x25519, &server.url).unwrap().unwrap();
    assert_eq!(suite, Suite::X25519AesGcmSha256);
    assert_eq!(key, token.server_key());
    let (suite, _) = pinned_server_key(&p256, &server.url).unwrap().unwrap();
    assert_eq!(suite, Suite::P256AesGcmSha256);
    let devices = ok(&data, &["admin", "device", "list"]);
    let x25519_key = node_keys_for(&x25519, Suite::X25519AesGcmSha256).unwrap();
    let line = devices
        .lines()
        .find(|line| line.starts_with(&x25519_key.fingerprint()))
        .unwrap_or_else(|| panic!("the X25519 device is not listed: {devices}"));
    assert!(line.ends_with("Noise_XX_25519_AESGCM_SHA256"), "{line}");
    assert_eq!(
        devices
            .lines()
            .filter(|line| line.ends_with("Noise_XX_P256_AESGCM_SHA256"))
            .count(),
        1,
        "{devices}"
    );

    // Without its token, the device keeps to the suite of the key it pinned.
    drop(x25519_sync);
    let again = x25519
        .enable_sync(
            RemoteNode::new(&server.url, "bugs"),
            RemoteOptions::default(),
        )
        .unwrap();
    let later = p256
        .insert("bugs", blazedb_core::fields! {"title" => "later"})
        .unwrap();
    p256_sync
        .wait_synced(Duration::from_secs(30), |_| {})
        .unwrap();
    again.wait_synced(Duration::from_secs(30), |_| {}).unwrap();
    assert!(x25519.get("bugs", later).unwrap().is_some());
    assert_eq!(
        ok(&data, &["admin", "device", "list"]).lines().count(),
        2,
        "no new device"
    );
}

#[test]
fn a_handshake_in_an_unknown_suite_is_closed_with_a_whole_reason_naming_it() {
    use blazedb_protocol::{Malformed, ProtocolError};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    let server = ServeProcess::start(&data, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, reason) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{}/sync/bugs", server.addr),
            tcp,
            Some(blazedb_sync::remote::websocket_config()),
        )
        .await
        .unwrap();
        // Message 1 of a suite 0x03, with a 32-byte ephemeral key.
        let mut first = vec![0x03];
        first.extend([9; 32]);
        ws.send(WsMessage::Binary(first.into())).await.unwrap();
        common::raw::close_frame(&mut ws)
            .await
            .expect("a close frame")
    });
    // The peer's fault (a protocol error, not a failure of the server), and the reason whole.
    assert_eq!(code, 1002);
    assert_eq!(
        reason,
        ProtocolError::from(Malformed::UnknownSuite { id: 0x03 }).to_string()
    );
    assert!(
        reason.ends_with("0x02 Noise_XX_25519_AESGCM_SHA256)"),
        "{reason}"
    );

    // A suite --suite does not know is refused by the admin command, naming the ones it knows.
    let out = run(
        &data,
        &["admin", "token", "create", "ada", "--suite", "448"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p256") && err.contains("25519"), "{err}");
}

#[test]
fn sigterm_stops_the_server_with_exit_status_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    let mut server = ServeProcess::start(&data, &["--handshake-timeout-secs", "60"]);
    // An open connection (mid-handshake) does not hold the shutdown up.
    let (response, _socket) = upgrade(server.addr, "/sync/bugs");
    assert_eq!(response.status, 101);
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

#[test]
fn a_bad_listen_address_or_missing_certificate_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(&data, &["serve", "--listen", "localhost"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid setting listen"), "{err}");

    let missing = dir.path().join("missing-cert.pem");
    let missing = missing.to_str().unwrap();
    let out = run(
        &data,
        &["serve", "--tls-cert", missing, "--tls-key", missing],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-cert.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&data, &["serve", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn serving_with_a_wrong_master_key_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    let out = std::process::Command::new(common::binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("BLAZEDB_MASTER_KEY", KEY.replace('6', "7"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the master key does not open"), "{err}");
}

#[test]
fn with_a_self_signed_certificate_a_tls_client_that_trusts_it_gets_health() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start(&data, &["--tls-self-signed"]);
    assert!(server.url.starts_with("wss://127.0.0.1:"), "{}", server.url);
    let cert = data.join("tls/cert.pem");
    assert!(cert.exists());
    // Valid for a year, not until 4096: read by an independent X.509 parser (CPython's).
    let not_after = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl, sys; print(ssl._ssl._test_decode_cert(sys.argv[1])['notAfter'])",
        ])
        .arg(&cert)
        .output()
        .expect("python3 runs");
    let not_after = String::from_utf8_lossy(&not_after.stdout).trim().to_owned();
    let year: i32 = not_after
        .split_whitespace()
        .nth(3)
        .and_then(|y| y.parse().ok())
        .unwrap_or_else(|| panic!("no year in {not_after:?}"));
    let this_year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / (365 * 86_400 + 21_600)) as i32;
    assert!(
        (this_year..=this_year + 1).contains(&year),
        "the certificate is valid until {not_after}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = runtime.block_on(async {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        common::parse_response(&raw)
    });
    assert_eq!(body.status, 200);
    assert!(body.body.contains("\"status\":\"ok\""), "{}", body.body);

    // A plain-text client gets nothing useful from the TLS port.
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut stream = stream;
    use std::io::{Read, Write};
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));
}
