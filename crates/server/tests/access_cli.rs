//! `blazedb-server admin access …`, `admin user update` and the start warning for databases
//! without rules, through the real binary on real files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{KEY, binary, ok, run};

const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
hidden_fields = ["auditLog"]

[roles.manager.reports]
read  = {}
write = false
"#;

fn failed(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

fn with_database(dir: &std::path::Path) -> std::path::PathBuf {
    let data = common::init(dir);
    ok(&data, &["admin", "database", "create", "bugs"]);
    data
}

/// A server with database `bugs` under `RULES`, and what `access show` prints for them.
fn with_rules(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let data = with_database(dir);
    let file = dir.join("rules.toml");
    std::fs::write(&file, RULES).unwrap();
    ok(
        &data,
        &["admin", "access", "set", "bugs", file.to_str().unwrap()],
    );
    let shown = ok(&data, &["admin", "access", "show", "bugs"]);
    (data, shown)
}

#[test]
fn access_set_stores_the_rules_and_show_prints_them_in_canonical_form() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_database(dir.path());
    let none = ok(&data, &["admin", "access", "show", "bugs"]);
    assert!(none.contains("bugs has no access rules"), "{none}");
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, RULES).unwrap();
    let set = ok(
        &data,
        &["admin", "access", "set", "bugs", file.to_str().unwrap()],
    );
    assert!(set.contains("roles: developer, manager"), "{set}");
    let shown = ok(&data, &["admin", "access", "show", "bugs"]);
    assert_eq!(
        shown,
        "[roles.developer.bugs]\nread = { teamId = { \"$in\" = [\"$teams\"] } }\n\
         write = { teamId = { \"$in\" = [\"$teams\"] } }\nhidden_fields = [\"auditLog\"]\n\n\
         [roles.manager.reports]\nread = {}\nwrite = false\n"
    );
    // What show prints is itself a valid rules file giving the same rules.
    std::fs::write(&file, &shown).unwrap();
    ok(
        &data,
        &["admin", "access", "set", "bugs", file.to_str().unwrap()],
    );
    assert_eq!(ok(&data, &["admin", "access", "show", "bugs"]), shown);
}

#[test]
fn a_bad_rules_file_is_refused_with_its_line_and_the_old_rules_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (data, before) = with_rules(dir.path());

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[roles.developer.bugs]\nread = {}\nwrite = { author = \"$usr\" }\n",
    )
    .unwrap();
    let err = failed(&run(
        &data,
        &["admin", "access", "set", "bugs", bad.to_str().unwrap()],
    ));
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("unknown variable \"$usr\""), "{err}");
    assert!(err.contains("unchanged"), "{err}");
    assert_eq!(ok(&data, &["admin", "access", "show", "bugs"]), before);

    std::fs::write(&bad, "[roles.developer.bugs]\nread = {\n").unwrap();
    let err = failed(&run(
        &data,
        &["admin", "access", "set", "bugs", bad.to_str().unwrap()],
    ));
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(ok(&data, &["admin", "access", "show", "bugs"]), before);
}

#[test]
fn collection_modes_are_set_in_the_rules_and_an_e2e_collection_stays_e2e() {
    let dir = tempfile::tempdir().unwrap();
    let (data, before) = with_rules(dir.path());

    // `database mode` declares the collection in the rules.
    let set = ok(
        &data,
        &[
            "admin",
            "database",
            "mode",
            "bugs",
            "bugs",
            "e2e",
            "--routing-field",
            "teamId",
        ],
    );
    assert!(set.contains("collection bugs of bugs is now e2e"), "{set}");
    let shown = ok(&data, &["admin", "access", "show", "bugs"]);
    assert!(
        shown.starts_with(
            "[collections.bugs]\nmode = \"e2e\"\nrouting_fields = [\"teamId\"]\n\n[roles.developer.bugs]"
        ),
        "{shown}"
    );

    // Back to smart is refused, by either command, and changes nothing.
    let err = failed(&run(
        &data,
        &["admin", "database", "mode", "bugs", "bugs", "smart"],
    ));
    assert!(err.contains("it is end to end and stays so"), "{err}");
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, RULES).unwrap();
    let err = failed(&run(
        &data,
        &["admin", "access", "set", "bugs", plain.to_str().unwrap()],
    ));
    assert!(
        err.contains("collection \"bugs\": it is end to end"),
        "{err}"
    );
    assert_eq!(ok(&data, &["admin", "access", "show", "bugs"]), shown);
    assert_ne!(shown, before);

    // A mode under which a rule would read a sealed field is refused with the reason.
    // Here: bugs without its routing field, which the developers' rules read.
    let err = failed(&run(
        &data,
        &["admin", "database", "mode", "bugs", "bugs", "e2e"],
    ));
    assert!(
        err.contains("reads the field \"teamId\", which collection \"bugs\" seals end to end"),
        "{err}"
    );
    // A routing field only for e2e.
    let err = failed(&run(
        &data,
        &[
            "admin",
            "database",
            "mode",
            "bugs",
            "notes",
            "smart",
            "--routing-field",
            "x",
        ],
    ));
    assert!(
        err.contains("--routing-field applies to e2e collections only"),
        "{err}"
    );
    // A rules file that keeps the declaration is accepted.
    let kept = dir.path().join("kept.toml");
    std::fs::write(
        &kept,
        format!("{RULES}\n[collections.bugs]\nmode = \"e2e\"\nrouting_fields = [\"teamId\"]\n"),
    )
    .unwrap();
    ok(
        &data,
        &["admin", "access", "set", "bugs", kept.to_str().unwrap()],
    );
}

#[test]
fn a_mode_on_a_database_without_rules_points_at_the_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_database(dir.path());
    let err = failed(&run(
        &data,
        &["admin", "database", "mode", "bugs", "bugs", "e2e"],
    ));
    assert!(
        err.contains("database \"bugs\" has no access rules"),
        "{err}"
    );
    assert!(err.contains("admin access set"), "{err}");
}

#[test]
fn rules_for_an_unknown_database_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_database(dir.path());
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, RULES).unwrap();
    let err = failed(&run(
        &data,
        &["admin", "access", "set", "nope", file.to_str().unwrap()],
    ));
    assert!(err.contains("no database named \"nope\""), "{err}");
    let err = failed(&run(&data, &["admin", "access", "show", "nope"]));
    assert!(err.contains("no database named \"nope\""), "{err}");
}

#[test]
fn user_update_changes_teams_and_role_as_user_list_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "carol", "--team", "ios"]);
    let updated = ok(
        &data,
        &[
            "admin", "user", "update", "carol", "--team", "ios", "--team", "android", "--role",
            "manager",
        ],
    );
    assert!(updated.contains("updated user carol"), "{updated}");
    assert_eq!(
        ok(&data, &["admin", "user", "list"]),
        "carol\tmanager\tios,android\n"
    );
    ok(
        &data,
        &["admin", "user", "update", "carol", "--role", "developer"],
    );
    assert_eq!(
        ok(&data, &["admin", "user", "list"]),
        "carol\tdeveloper\tios,android\n"
    );
    ok(&data, &["admin", "user", "update", "carol", "--no-teams"]);
    assert_eq!(
        ok(&data, &["admin", "user", "list"]),
        "carol\tdeveloper\t\n"
    );
    let err = failed(&run(
        &data,
        &["admin", "user", "update", "nobody", "--role", "x"],
    ));
    assert!(err.contains("no user named \"nobody\""), "{err}");
    let err = failed(&run(&data, &["admin", "user", "update", "carol"]));
    assert!(err.contains("nothing to change"), "{err}");
}

#[test]
fn the_server_warns_at_start_about_each_database_without_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_database(dir.path());
    ok(&data, &["admin", "database", "create", "open"]);
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, RULES).unwrap();
    ok(
        &data,
        &["admin", "access", "set", "bugs", file.to_str().unwrap()],
    );

    let log = dir.path().join("server.log");
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("BLAZEDB_MASTER_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The warnings are written before the address is printed.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(
            "warning: database open has no access rules: every enrolled user reads and writes \
             everything"
        ),
        "{log}"
    );
    assert!(!log.contains("database bugs has no access rules"), "{log}");
}

#[test]
fn user_update_refuses_a_bad_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::init(dir.path());
    ok(&data, &["admin", "user", "add", "dave", "--team", "ios"]);
    let before = ok(&data, &["admin", "user", "list"]);
    for args in [
        &["admin", "user", "update", "dave", "--team", "a,b"][..],
        &[
            "admin",
            "user",
            "update",
            "dave",
            "--team",
            "ok",
            "--role",
            "bad\u{202e}role",
        ],
        &["admin", "user", "update", "dave", "--role", " "],
    ] {
        let err = failed(&run(&data, args));
        assert!(err.contains("invalid"), "{args:?}: {err}");
        assert_eq!(ok(&data, &["admin", "user", "list"]), before, "{args:?}");
    }
}
