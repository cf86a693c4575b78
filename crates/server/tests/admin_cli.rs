//! `blazedb-server admin …` through the real binary, on real files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Stdio};

use blazedb_protocol::enroll::EnrollmentToken;
use blazedb_protocol::secure::StaticKeys;
use blazedb_server::{MasterKey, MetaStore};
use common::{KEY, binary, ok, run};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the command failed with exit code 1; returns what it printed on stderr.
fn failed(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn users_added_with_teams_and_a_role_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    let added = ok(
        &data,
        &[
            "admin", "user", "add", "ada", "--team", "core", "--team", "ops", "--role", "admin",
        ],
    );
    assert!(added.contains("added user ada"), "{added}");
    ok(&data, &["admin", "user", "add", "bob"]);
    let listed = ok(&data, &["admin", "user", "list"]);
    assert_eq!(listed, "ada\tadmin\tcore,ops\nbob\tmember\t\n");
}

#[test]
fn adding_a_user_twice_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    let out = run(&data, &["admin", "user", "add", "ada"]);
    let err = failed(&out);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn token_create_prints_only_the_token_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    let out = run(
        &data,
        &["admin", "token", "create", "ada", "--expires-in", "600"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = EnrollmentToken::parse(&stdout).unwrap();
    // The token carries this server's key.
    let meta =
        MetaStore::open_or_create(&data, &MasterKey::from_hex(KEY, "test").unwrap()).unwrap();
    assert_eq!(token.server_key(), meta.server_keys().public());
    // The explanation goes to stderr, without the token.
    let err = stderr(&out);
    assert!(err.contains("one-time enrollment token"), "{err}");
    assert!(!err.contains(stdout.trim()), "{err}");
}

#[test]
fn a_token_for_an_unknown_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    let out = run(&data, &["admin", "token", "create", "nobody"]);
    let err = failed(&out);
    assert!(out.stdout.is_empty());
    assert!(err.contains("no user named \"nobody\""), "{err}");
}

#[test]
fn tokens_are_listed_and_an_unused_one_can_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    ok(&data, &["admin", "user", "add", "bob"]);
    assert_eq!(ok(&data, &["admin", "token", "list"]), "");
    let first = ok(&data, &["admin", "token", "create", "ada"]);
    let second = ok(&data, &["admin", "token", "create", "bob"]);
    let first_id = EnrollmentToken::parse(&first).unwrap().id_hex();
    let second_id = EnrollmentToken::parse(&second).unwrap().id_hex();

    let listed = ok(&data, &["admin", "token", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with(&format!("{first_id}\tada\t")),
        "{listed}"
    );
    assert!(
        lines[1].starts_with(&format!("{second_id}\tbob\t")),
        "{listed}"
    );
    assert!(lines.iter().all(|l| l.ends_with("Z\tunused")), "{listed}");
    // The listing never shows a token's secret.
    assert!(!listed.contains(&first.trim()[5..]), "{listed}");
    assert!(!listed.contains(&second.trim()[5..]), "{listed}");

    let revoked = ok(&data, &["admin", "token", "revoke", &first_id]);
    assert!(
        revoked.contains(&format!("revoked token {first_id} of user ada")),
        "{revoked}"
    );
    let listed = ok(&data, &["admin", "token", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].ends_with("\trevoked"), "{listed}");
    assert!(lines[1].ends_with("\tunused"), "{listed}");

    // The running server (here: this process's open store) refuses it at once.
    let meta =
        MetaStore::open_or_create(&data, &MasterKey::from_hex(KEY, "test").unwrap()).unwrap();
    let suite = meta.server_keys().suite();
    let device = StaticKeys::generate(suite).unwrap();
    let err = meta
        .enroll_device(&first, device.public(), suite)
        .unwrap_err();
    assert!(err.to_string().contains("was revoked"), "{err}");
    meta.enroll_device(&second, device.public(), suite).unwrap();
}

#[test]
fn revoking_an_unknown_token_fails_with_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    let out = run(
        &data,
        &[
            "admin",
            "token",
            "revoke",
            "00112233445566778899aabbccddeeff",
        ],
    );
    let err = failed(&out);
    assert!(out.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no enrollment token has the id \"00112233445566778899aabbccddeeff\""),
        "{err}"
    );
}

#[test]
fn databases_are_created_and_listed_and_bad_names_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "database", "create", "bugs"]);
    ok(&data, &["admin", "database", "create", "notes.v2"]);
    assert_eq!(
        ok(&data, &["admin", "database", "list"]),
        "bugs\nnotes.v2\n"
    );
    assert!(data.join("databases/bugs.blazedb").exists());
    let out = run(&data, &["admin", "database", "create", "bugs"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = run(&data, &["admin", "database", "create", "../escape"]);
    let err = failed(&out);
    assert!(err.contains("invalid database name"), "{err}");
    assert!(!dir.path().join("escape.blazedb").exists());
}

#[test]
fn enrolled_devices_are_listed_and_can_be_revoked_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    assert_eq!(ok(&data, &["admin", "device", "list"]), "");
    let token = ok(&data, &["admin", "token", "create", "ada"]);

    let meta =
        MetaStore::open_or_create(&data, &MasterKey::from_hex(KEY, "test").unwrap()).unwrap();
    let suite = meta.server_keys().suite();
    let device = StaticKeys::generate(suite).unwrap();
    meta.enroll_device(&token, device.public(), suite).unwrap();

    let listed = ok(&data, &["admin", "device", "list"]);
    let fingerprint = device.fingerprint();
    assert!(
        listed.starts_with(&format!("{fingerprint}\tada\t")),
        "{listed}"
    );
    assert!(listed.contains("\tactive\t"), "{listed}");

    let revoked = ok(&data, &["admin", "device", "revoke", &fingerprint]);
    assert!(revoked.contains("revoked device"), "{revoked}");
    assert!(ok(&data, &["admin", "device", "list"]).contains("\trevoked\t"));
    // The server (here: this process's open store) sees the change at once.
    assert!(meta.device(device.public()).unwrap().unwrap().revoked);

    let out = run(&data, &["admin", "device", "revoke", "0123456789abcdef"]);
    let err = failed(&out);
    assert!(err.contains("no enrolled device"), "{err}");
}

#[test]
fn a_wrong_master_key_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    let out = Command::new(binary())
        .args(["admin", "user", "list", "--data-dir"])
        .arg(&data)
        .env("BLAZEDB_MASTER_KEY", "ff".repeat(32))
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("the master key does not open"), "{err}");
    assert!(err.contains("server.blazedb"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_forgotten_master_key_is_refused_and_leaves_no_development_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    let out = Command::new(binary())
        .args(["admin", "user", "list", "--data-dir"])
        .arg(&data)
        .env_remove("BLAZEDB_MASTER_KEY")
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(
        err.contains("created with a master key that is not given"),
        "{err}"
    );
    assert!(!data.join("dev-master.key").exists());
}

#[test]
fn without_a_key_a_development_key_is_generated_with_a_loud_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(binary())
        .args(["admin", "init", "--data-dir"])
        .arg(&data)
        .env_remove("BLAZEDB_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let out = Command::new(binary())
        .args(["admin", "user", "add", "ada", "--data-dir"])
        .arg(&data)
        .env_remove("BLAZEDB_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(err.contains("DEVELOPMENT MODE"), "{err}");
    assert!(err.contains("BLAZEDB_MASTER_KEY"), "{err}");
    let key = std::fs::read_to_string(data.join("dev-master.key")).unwrap();
    assert!(!err.contains(key.trim()));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(key.trim()));
    // The next run reuses it (the user is still there).
    let out = Command::new(binary())
        .args(["admin", "user", "list", "--data-dir"])
        .arg(&data)
        .env_remove("BLAZEDB_MASTER_KEY")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ada\tmember\t\n");
}

#[test]
fn a_key_file_is_used_and_one_inside_the_data_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let outside = dir.path().join("master.key");
    std::fs::write(&outside, format!("{KEY}\n")).unwrap();
    let inside = data.join("master.key");
    std::fs::write(&inside, KEY).unwrap();
    let with_file = |file: &std::path::Path| {
        Command::new(binary())
            .args(["admin", "user", "list", "--data-dir"])
            .arg(&data)
            .arg("--master-key-file")
            .arg(file)
            .env_remove("BLAZEDB_MASTER_KEY")
            .output()
            .unwrap()
    };
    ok(&data, &["admin", "init"]);
    let out = with_file(&outside);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_file(&inside);
    let err = failed(&out);
    assert!(err.contains("inside the data folder"), "{err}");
    // The file and the environment variable give the same key.
    ok(&data, &["admin", "user", "add", "ada"]);
    assert_eq!(
        String::from_utf8_lossy(&with_file(&outside).stdout),
        "ada\tmember\t\n"
    );
}

#[test]
fn a_configuration_file_sets_the_data_folder_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "data_dir = \"from-config\"\n").unwrap();
    let out = Command::new(binary())
        .args(["admin", "init", "--config"])
        .arg(&config)
        .env("BLAZEDB_MASTER_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(binary())
        .args(["admin", "database", "create", "bugs", "--config"])
        .arg(&config)
        .env("BLAZEDB_MASTER_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dir.path()
            .join("from-config/databases/bugs.blazedb")
            .exists()
    );

    std::fs::write(&config, "data_dir = \"d\"\nlisten_on = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(binary())
        .args(["admin", "user", "list", "--config"])
        .arg(&config)
        .env("BLAZEDB_MASTER_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("listen_on"), "{err}");
    assert!(err.contains("line 2, column 1"), "{err}");
    // One line, as the docs promise, not the parser's excerpt of the file.
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn serve_options_are_refused_with_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &dir.path().join("d"),
        &["--listen", "127.0.0.1:0", "admin", "user", "list"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("do not apply to admin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn admin_commands_refuse_a_data_folder_that_holds_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada"]);
    // A typo in --data-dir: refused, and nothing is created there.
    let typo = dir.path().join("dta");
    let err = failed(&run(&typo, &["admin", "user", "add", "ada"]));
    assert!(err.contains("holds no BlazeDB server"), "{err}");
    assert!(err.contains("admin init"), "{err}");
    assert!(!typo.exists());
    // In development mode too, and no development key is written.
    let out = Command::new(binary())
        .args(["admin", "database", "list", "--data-dir"])
        .arg(&typo)
        .env_remove("BLAZEDB_MASTER_KEY")
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("holds no BlazeDB server"), "{err}");
    assert!(!typo.exists());
    // An existing, empty folder is not a server either.
    std::fs::create_dir(&typo).unwrap();
    let err = failed(&run(&typo, &["admin", "token", "list"]));
    assert!(err.contains("holds no BlazeDB server"), "{err}");
    assert_eq!(std::fs::read_dir(&typo).unwrap().count(), 0);
    // `init` makes one, once; a second `init` changes nothing.
    let made = ok(&typo, &["admin", "init"]);
    assert!(made.contains("created a new server"), "{made}");
    let again = ok(&typo, &["admin", "init"]);
    assert!(again.contains("there already is a server"), "{again}");
    assert_eq!(ok(&typo, &["admin", "user", "list"]), "");
    assert_eq!(ok(&data, &["admin", "user", "list"]), "ada\tmember\t\n");
}

#[test]
fn user_and_team_names_that_hide_characters_or_hold_commas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "ada", "--team", "red"]);
    let err = failed(&run(&data, &["admin", "user", "add", "ada\u{200B}"]));
    assert!(err.contains("invisible"), "{err}");
    let err = failed(&run(&data, &["admin", "user", "add", "\u{202E}ada"]));
    assert!(err.contains("bidirectional"), "{err}");
    // A full-width look-alike is the same user.
    let err = failed(&run(
        &data,
        &["admin", "user", "add", "\u{FF41}\u{FF44}\u{FF41}"],
    ));
    assert!(err.contains("already exists"), "{err}");
    let err = failed(&run(
        &data,
        &["admin", "user", "add", "bob", "--team", "red,blue"],
    ));
    assert!(err.contains("comma"), "{err}");
    ok(
        &data,
        &[
            "admin", "user", "add", "bob", "--team", "red", "--team", "blue",
        ],
    );
    assert_eq!(
        ok(&data, &["admin", "user", "list"]),
        "ada\tmember\tred\nbob\tmember\tred,blue\n"
    );
}
