//! End-to-end tests: run the real `blazedb` binary on real files in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

const PASSWORD: &str = "correct horse battery staple";

/// A temporary directory with helpers to run the tool in it.
struct Sandbox {
    dir: TempDir,
}

/// One run of the binary.
struct Run {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Option<Vec<u8>>,
}

impl Run {
    fn env(mut self, key: &'static str, value: &str) -> Self {
        self.env.push((key, value.to_owned()));
        self
    }

    fn stdin(mut self, data: &str) -> Self {
        self.stdin = Some(data.as_bytes().to_vec());
        self
    }

    fn output(self) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blazedb"));
        cmd.args(&self.args)
            .env_remove("BLAZEDB_PASSWORD")
            .env_remove("BLAZEDB_NEW_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = self.stdin {
            child.stdin.take().unwrap().write_all(&data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    #[track_caller]
    fn ok(self) -> String {
        let args = self.args.join(" ");
        let out = self.output();
        assert!(
            out.status.success(),
            "`blazedb {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code 1 with exactly one line `blazedb: …` on stderr; returns it.
    #[track_caller]
    fn fails(self) -> String {
        let args = self.args.join(" ");
        let out = self.output();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "`blazedb {args}`: {stderr}");
        assert_one_line(&stderr);
        assert!(
            out.stdout.is_empty(),
            "stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }
}

#[track_caller]
fn assert_one_line(stderr: &str) {
    assert!(stderr.starts_with("blazedb: "), "stderr: {stderr:?}");
    assert!(stderr.ends_with('\n'), "stderr: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr:?}");
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// A run without any password source.
    fn bare(&self, args: &[&str]) -> Run {
        let args = args
            .iter()
            .map(|a| match a.strip_prefix('@') {
                // `@name` is a file in the sandbox.
                Some(name) => self.path(name).display().to_string(),
                None => (*a).to_owned(),
            })
            .collect();
        Run {
            args,
            env: Vec::new(),
            stdin: None,
        }
    }

    /// A run with the password in BLAZEDB_PASSWORD.
    fn run(&self, args: &[&str]) -> Run {
        self.bare(args).env("BLAZEDB_PASSWORD", PASSWORD)
    }

    /// Creates an encrypted database `name`.
    fn init(&self, name: &str) {
        let out = self.run(&["init", &format!("@{name}")]).ok();
        assert!(out.contains("created encrypted database"), "{out}");
    }
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The JSON of a line with its "id" key removed.
fn without_id(line: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    v.as_object_mut().unwrap().remove("id");
    v
}

#[test]
fn records_can_be_inserted_read_updated_and_deleted() {
    let s = Sandbox::new();
    s.init("bugs.db");
    let id = s
        .run(&[
            "insert",
            "@bugs.db",
            "bugs",
            r#"{"title": "Crash", "priority": 1}"#,
        ])
        .ok();
    let id = id.trim();
    assert_eq!(id.len(), 36, "{id}");

    let got = s.run(&["get", "@bugs.db", "bugs", id]).ok();
    assert_eq!(
        got,
        format!("{{\"id\":\"{id}\",\"priority\":1,\"title\":\"Crash\"}}\n")
    );

    s.run(&[
        "update",
        "@bugs.db",
        "bugs",
        id,
        r#"{"priority": 2, "status": "open"}"#,
    ])
    .ok();
    let got = lines(&s.run(&["get", "@bugs.db", "bugs", id]).ok());
    assert_eq!(got[0]["priority"], 2);
    assert_eq!(got[0]["status"], "open");
    assert_eq!(got[0]["title"], "Crash");

    s.run(&["delete", "@bugs.db", "bugs", id]).ok();
    let err = s.run(&["get", "@bugs.db", "bugs", id]).fails();
    assert!(err.contains("no record"), "{err}");
    let err = s.run(&["delete", "@bugs.db", "bugs", id]).fails();
    assert!(err.contains("no record"), "{err}");
}

#[test]
fn insert_reads_json_from_stdin_and_keeps_a_given_id() {
    let s = Sandbox::new();
    s.init("db");
    let id = "0190c0de-7f00-7abc-8def-0123456789ab";
    let printed = s
        .run(&["insert", "@db", "c"])
        .stdin(&format!("{{\"id\": \"{id}\", \"n\": 1}}\n"))
        .ok();
    assert_eq!(printed.trim(), id);
    let printed = s
        .run(&["insert", "@db", "c", "-"])
        .stdin(r#"{"n": 2}"#)
        .ok();
    assert_ne!(printed.trim(), id);
    let err = s
        .run(&["insert", "@db", "c", &format!("{{\"id\": \"{id}\"}}")])
        .fails();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(s.run(&["query", "@db", "c", "--count"]).ok(), "2\n");
}

#[test]
fn query_filters_orders_and_pages_results() {
    let s = Sandbox::new();
    s.init("db");
    for (title, priority, status) in [
        ("a", 3, "open"),
        ("b", 1, "open"),
        ("c", 2, "closed"),
        ("d", 5, "open"),
    ] {
        let json =
            format!(r#"{{"title": "{title}", "priority": {priority}, "status": "{status}"}}"#);
        s.run(&["insert", "@db", "bugs", &json]).ok();
    }
    let titles = |out: String| -> Vec<String> {
        lines(&out)
            .iter()
            .map(|v| v["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let open_by_priority = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--where",
            r#"{"status": "open"}"#,
            "--order-by",
            "priority:desc",
        ])
        .ok();
    assert_eq!(titles(open_by_priority), ["d", "a", "b"]);

    let paged = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--order-by",
            "priority",
            "--limit",
            "2",
            "--offset",
            "1",
        ])
        .ok();
    assert_eq!(titles(paged), ["c", "a"]);

    let ranged = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--where",
            r#"{"$or": [{"priority": {"$gte": 5}}, {"title": {"$in": ["b", "zz"]}}]}"#,
            "--order-by",
            "title",
        ])
        .ok();
    assert_eq!(titles(ranged), ["b", "d"]);

    let negated = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--where",
            r#"{"$not": {"status": {"$contains": "pen"}}, "missing": {"$null": true}}"#,
        ])
        .ok();
    assert_eq!(titles(negated), ["c"]);

    let count = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--where",
            r#"{"priority": {"$lt": 3}}"#,
            "--count",
        ])
        .ok();
    assert_eq!(count, "2\n");
}

#[test]
fn explain_shows_index_use_after_index_create() {
    let s = Sandbox::new();
    s.init("db");
    s.run(&["insert", "@db", "bugs", r#"{"priority": 3}"#]).ok();
    let q = [
        "query",
        "@db",
        "bugs",
        "--where",
        r#"{"priority": {"$gt": 2}}"#,
        "--explain",
    ];
    assert_eq!(s.run(&q).ok(), "FULL SCAN bugs\n");

    s.run(&["index", "create", "@db", "bugs", "priority"]).ok();
    assert_eq!(s.run(&["index", "list", "@db", "bugs"]).ok(), "priority\n");
    let plan = s.run(&q).ok();
    assert!(plan.starts_with("INDEX SCAN bugs.priority"), "{plan}");
    let found = s
        .run(&[
            "query",
            "@db",
            "bugs",
            "--where",
            r#"{"priority": {"$gt": 2}}"#,
        ])
        .ok();
    assert_eq!(lines(&found).len(), 1);

    let err = s
        .run(&["index", "create", "@db", "bugs", "priority"])
        .fails();
    assert!(err.contains("already exists"), "{err}");
    s.run(&["index", "drop", "@db", "bugs", "priority"]).ok();
    assert_eq!(s.run(&q).ok(), "FULL SCAN bugs\n");
    assert_eq!(s.run(&["index", "list", "@db", "bugs"]).ok(), "");
}

#[test]
fn imported_json_lines_export_unchanged_apart_from_ids() {
    let s = Sandbox::new();
    s.init("db");
    let mut input = String::new();
    for i in 0..2500 {
        input.push_str(&format!(
            r#"{{"at":{{"$date":"2026-01-01T00:00:00.{:03}Z"}},"n":{i},"name":"item {i}","nested":{{"$$literal":true}},"ratio":{i}.5,"tags":["x","y"],"whole":{i}.0}}"#,
            i % 1000
        ));
        input.push('\n');
    }
    let file = s.write("in.jsonl", input.as_bytes());
    let out = s
        .run(&[
            "import",
            "@db",
            "items",
            file.to_str().unwrap(),
            "--batch-size",
            "1000",
        ])
        .ok();
    assert_eq!(out, "imported 2500 records\n");

    let exported = s.run(&["export", "@db", "items"]).ok();
    let expected: Vec<serde_json::Value> = input
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<serde_json::Value> = exported.lines().map(without_id).collect();
    assert_eq!(got, expected);
    // Byte for byte too: field order, number forms and typed values are canonical.
    let stripped: Vec<String> = exported
        .lines()
        .map(|l| format!("{{{}", &l[l.find(',').unwrap() + 1..]))
        .collect();
    assert_eq!(stripped, input.lines().collect::<Vec<_>>());

    // -o writes the same to a file.
    s.run(&["export", "@db", "items", "-o", "@out.jsonl"]).ok();
    assert_eq!(
        std::fs::read_to_string(s.path("out.jsonl")).unwrap(),
        exported
    );
}

#[test]
fn import_stops_at_a_bad_line_and_keeps_earlier_batches() {
    let s = Sandbox::new();
    s.init("db");
    let file = s.write(
        "bad.jsonl",
        b"{\"n\":1}\n{\"n\":2}\n\n{\"n\":3}\n{\"n\":4}\n{\"n\": oops}\n{\"n\":6}\n",
    );
    let path = file.display().to_string();
    let err = s
        .run(&["import", "@db", "c", &path, "--batch-size", "2"])
        .fails();
    assert!(
        err.starts_with(&format!("blazedb: {path}:6: invalid JSON")),
        "{err}"
    );
    assert!(
        err.contains("4 records from lines 1-5 were imported"),
        "{err}"
    );
    assert_eq!(s.run(&["query", "@db", "c", "--count"]).ok(), "4\n");

    let err = s.run(&["import", "@db", "d", &path]).fails();
    assert!(err.contains("nothing was imported"), "{err}");
    assert_eq!(s.run(&["query", "@db", "d", "--count"]).ok(), "0\n");
}

#[test]
fn wrong_password_is_rejected_with_one_line() {
    let s = Sandbox::new();
    s.init("db");
    let err = s
        .bare(&["stats", "@db"])
        .env("BLAZEDB_PASSWORD", "not the password")
        .fails();
    // Exactly one line: SQLCipher's own logging to stderr stays silent.
    assert!(err.contains("wrong password"), "{err}");
}

#[test]
fn password_file_supplies_the_password() {
    let s = Sandbox::new();
    s.init("db");
    s.write(
        "pw",
        format!("{PASSWORD}\nsecond line is ignored\n").as_bytes(),
    );
    let out = s.bare(&["stats", "@db", "--password-file", "@pw"]).ok();
    assert!(out.contains("encrypted:   yes"), "{out}");
    // The flag wins over the environment.
    s.bare(&["--password-file", "@pw", "stats", "@db"])
        .env("BLAZEDB_PASSWORD", "wrong")
        .ok();
    s.write("crlf", format!("{PASSWORD}\r\n").as_bytes());
    s.bare(&["stats", "@db", "--password-file", "@crlf"]).ok();

    s.write("wrong", b"nope\n");
    let err = s
        .bare(&["stats", "@db", "--password-file", "@wrong"])
        .fails();
    assert!(err.contains("wrong password"), "{err}");
    let err = s
        .bare(&["stats", "@db", "--password-file", "@missing"])
        .fails();
    assert!(err.contains("cannot read password file"), "{err}");
    s.write("empty", b"\n");
    let err = s
        .bare(&["stats", "@db", "--password-file", "@empty"])
        .fails();
    assert!(err.contains("empty first line"), "{err}");
}

#[test]
fn missing_password_without_a_terminal_is_a_clear_error() {
    let s = Sandbox::new();
    s.init("db");
    let err = s.bare(&["stats", "@db"]).fails();
    assert_eq!(
        err,
        "blazedb: no password: set BLAZEDB_PASSWORD, pass --password-file, or run in a terminal\n"
    );
    let err = s.bare(&["init", "@other"]).fails();
    assert!(err.contains("no password"), "{err}");
    assert!(!s.path("other").exists());
}

#[test]
fn random_bytes_are_not_a_database() {
    let s = Sandbox::new();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.write("noise.db", &noise);
    let err = s.run(&["stats", "@noise.db"]).fails();
    assert!(err.contains("not a BlazeDB database"), "{err}");
    let err = s.run(&["--no-encryption", "stats", "@noise.db"]).fails();
    assert!(err.contains("not a BlazeDB database"), "{err}");
    let err = s.run(&["stats", "@missing.db"]).fails();
    assert!(err.contains("does not exist"), "{err}");
    let err = s.run(&["stats", "@"]).fails();
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn truncated_database_gives_a_clear_error() {
    let s = Sandbox::new();
    s.init("db");
    let mut input = String::new();
    for i in 0..3000 {
        input.push_str(&format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(100)));
    }
    let file = s.write("in.jsonl", input.as_bytes());
    s.run(&["import", "@db", "c", file.to_str().unwrap()]).ok();
    let full = std::fs::read(s.path("db")).unwrap();
    assert!(full.len() > 100_000, "{}", full.len());

    for len in [full.len() / 2, full.len() / 4, 4096 + 17, 100] {
        std::fs::write(s.path("cut.db"), &full[..len]).unwrap();
        for args in [
            &["stats", "@cut.db"][..],
            &["export", "@cut.db", "c"],
            &["query", "@cut.db", "c", "--where", r#"{"n": 2999}"#],
            &["insert", "@cut.db", "c", "{}"],
        ] {
            let out = s.run(args).output();
            let stderr = String::from_utf8(out.stderr).unwrap();
            // Some reads may succeed on the pages that survive; whatever fails says so in one line.
            if !out.status.success() {
                assert_eq!(out.status.code(), Some(1), "{len}: {stderr}");
                assert_one_line(&stderr);
            } else {
                assert!(stderr.is_empty(), "{stderr}");
            }
        }
        let err = s.run(&["stats", "@cut.db"]).output();
        assert!(
            !err.status.success(),
            "stats on a file cut to {len} bytes succeeded"
        );
    }
}

#[test]
fn passwd_replaces_the_old_password() {
    let s = Sandbox::new();
    s.init("db");
    s.run(&["insert", "@db", "c", r#"{"a": 1}"#]).ok();
    let out = s
        .run(&["passwd", "@db"])
        .env("BLAZEDB_NEW_PASSWORD", "new secret")
        .ok();
    assert!(out.contains("changed the password"), "{out}");

    let err = s.run(&["query", "@db", "c"]).fails();
    assert!(err.contains("wrong password"), "{err}");
    let out = s
        .bare(&["query", "@db", "c", "--count"])
        .env("BLAZEDB_PASSWORD", "new secret")
        .ok();
    assert_eq!(out, "1\n");

    // And back, with the new password from a file.
    s.write("newpw", format!("{PASSWORD}\n").as_bytes());
    s.bare(&["passwd", "@db", "--new-password-file", "@newpw"])
        .env("BLAZEDB_PASSWORD", "new secret")
        .ok();
    assert_eq!(s.run(&["query", "@db", "c", "--count"]).ok(), "1\n");

    let err = s.run(&["passwd", "@db"]).fails();
    assert!(err.contains("BLAZEDB_NEW_PASSWORD"), "{err}");
}

#[test]
fn typed_values_round_trip() {
    let s = Sandbox::new();
    s.init("db");
    let json = r#"{"b":{"$bytes":"AAEC/w=="},"d":{"$date":"2026-11-23T10:00:00.123Z"},"inf":{"$double":"-inf"},"n":2.0,"nan":{"$double":"NaN"},"u":{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab"}}"#;
    let id = s.run(&["insert", "@db", "c", json]).ok();
    let got = s.run(&["get", "@db", "c", id.trim()]).ok();
    assert_eq!(got, format!("{{\"id\":\"{}\",{}\n", id.trim(), &json[1..]));

    // Other offsets are read and printed in UTC.
    let id = s
        .run(&[
            "insert",
            "@db",
            "c",
            r#"{"d":{"$date":"2026-11-23T12:00:00.123+02:00"}}"#,
        ])
        .ok();
    let got = lines(&s.run(&["get", "@db", "c", id.trim()]).ok());
    assert_eq!(got[0]["d"]["$date"], "2026-11-23T10:00:00.123Z");

    // Typed values work in filters.
    let found = s
        .run(&[
            "query",
            "@db",
            "c",
            "--where",
            r#"{"u": {"$uuid": "0190c0de-7f00-7abc-8def-0123456789ab"}}"#,
        ])
        .ok();
    assert_eq!(lines(&found).len(), 1);
    let found = s
        .run(&[
            "query",
            "@db",
            "c",
            "--where",
            r#"{"d": {"$gte": {"$date": "2026-11-23T10:00:00.123Z"}}}"#,
            "--count",
        ])
        .ok();
    assert_eq!(found, "2\n");
}

#[test]
fn invalid_json_is_reported_with_the_problem() {
    let s = Sandbox::new();
    s.init("db");
    let err = s.run(&["insert", "@db", "c", r#"{"a": "#]).fails();
    assert!(
        err.starts_with("blazedb: invalid JSON: EOF while parsing"),
        "{err}"
    );
    let err = s.run(&["insert", "@db", "c", "[1, 2]"]).fails();
    assert!(err.contains("expected a JSON object"), "{err}");
    let err = s
        .run(&["insert", "@db", "c", r#"{"a": {"$oid": "x"}}"#])
        .fails();
    assert!(err.contains("field a: unknown key \"$oid\""), "{err}");
    let err = s
        .run(&["insert", "@db", "c", r#"{"a": {"$date": "tomorrow"}}"#])
        .fails();
    assert!(err.contains("invalid $date \"tomorrow\""), "{err}");
    let err = s.run(&["insert", "@db", "c"]).stdin("").fails();
    assert!(err.contains("no JSON on standard input"), "{err}");
    let err = s
        .run(&["query", "@db", "c", "--where", r#"{"a": {"$regex": "x"}}"#])
        .fails();
    assert!(err.contains("unknown operator \"$regex\""), "{err}");
    let err = s.run(&["query", "@db", "c", "--where", "{oops}"]).fails();
    assert!(err.starts_with("blazedb: --where: invalid JSON"), "{err}");
    assert_eq!(s.run(&["query", "@db", "c", "--count"]).ok(), "0\n");
}

#[test]
fn a_bad_record_id_is_a_usage_error() {
    let s = Sandbox::new();
    s.init("db");
    let out = s.run(&["get", "@db", "c", "not-a-uuid"]).output();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plaintext_databases_work_with_no_encryption() {
    let s = Sandbox::new();
    let out = s.bare(&["--no-encryption", "init", "@plain.db"]).ok();
    assert!(out.contains("unencrypted"), "{out}");
    s.bare(&["--no-encryption", "insert", "@plain.db", "c", r#"{"a": 1}"#])
        .ok();
    let header = std::fs::read(s.path("plain.db")).unwrap();
    assert!(header.starts_with(b"SQLite format 3\0"));
    let err = s.run(&["stats", "@plain.db"]).fails();
    assert!(err.contains("pass --no-encryption"), "{err}");

    s.init("secret.db");
    let err = s.bare(&["--no-encryption", "stats", "@secret.db"]).fails();
    assert!(err.contains("is encrypted"), "{err}");
}

#[test]
fn stats_describe_collections_indexes_and_the_op_log() {
    let s = Sandbox::new();
    s.init("db");
    s.run(&["insert", "@db", "bugs", r#"{"a": 1}"#]).ok();
    s.run(&["insert", "@db", "bugs", r#"{"a": 2}"#]).ok();
    s.run(&["insert", "@db", "users", r#"{"a": 2}"#]).ok();
    s.run(&["index", "create", "@db", "bugs", "a"]).ok();
    let v: serde_json::Value =
        serde_json::from_str(&s.run(&["stats", "@db", "--json"]).ok()).unwrap();
    assert_eq!(v["oplog_len"], 3);
    assert_eq!(v["lamport"], 3);
    assert_eq!(v["encrypted"], true);
    assert_eq!(v["node_id"].as_str().unwrap().len(), 36);
    assert!(v["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        v["collections"],
        serde_json::json!([
            {"name": "bugs", "records": 2, "indexes": ["a"]},
            {"name": "users", "records": 1, "indexes": []},
        ])
    );
    let text = s.run(&["stats", "@db"]).ok();
    assert!(text.contains("bugs   2 records  indexes: a"), "{text}");
    assert!(text.contains("op log:      3 operations"), "{text}");
}

#[test]
fn init_refuses_an_existing_file() {
    let s = Sandbox::new();
    s.init("db");
    let err = s.run(&["init", "@db"]).fails();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn export_of_a_missing_collection_is_an_error() {
    let s = Sandbox::new();
    s.init("db");
    let err = s.run(&["export", "@db", "nope"]).fails();
    assert!(err.contains("no collection \"nope\""), "{err}");
}

#[test]
fn update_cannot_change_the_id() {
    let s = Sandbox::new();
    s.init("db");
    let id = s.run(&["insert", "@db", "c", r#"{"a": 1}"#]).ok();
    let err = s
        .run(&[
            "update",
            "@db",
            "c",
            id.trim(),
            r#"{"id": "0190c0de-7f00-7abc-8def-0123456789ab", "a": 2}"#,
        ])
        .fails();
    assert!(err.contains("ids cannot change"), "{err}");
    // The record's own id is accepted (so `get` output can be edited and fed back).
    s.run(&[
        "update",
        "@db",
        "c",
        id.trim(),
        &format!(r#"{{"id": "{}", "a": 3}}"#, id.trim()),
    ])
    .ok();
    assert!(
        s.run(&["get", "@db", "c", id.trim()])
            .ok()
            .contains("\"a\":3")
    );
}

// ---------------------------------------------------------------------------------------------
// topology

/// Writes `topo.json` into the sandbox from a JSON value.
fn write_topology(s: &Sandbox, topology: &serde_json::Value) {
    s.write("topo.json", topology.to_string().as_bytes());
}

/// Two encrypted databases, `bugs.blazedb` and `users.blazedb`, joined by one edge.
fn two_databases(s: &Sandbox, mode: &str) {
    s.init("bugs.blazedb");
    s.init("users.blazedb");
    write_topology(
        s,
        &serde_json::json!({
            "nodes": [
                {"name": "bugs", "path": "bugs.blazedb"},
                {"name": "users", "path": "users.blazedb"},
            ],
            "edges": [{"from": "bugs", "to": "users", "mode": mode}],
        }),
    );
}

#[test]
fn topology_syncs_a_record_to_the_other_database_and_prints_the_graph_as_json() {
    let s = Sandbox::new();
    two_databases(&s, "bidirectional");
    let id = s
        .run(&["insert", "@bugs.blazedb", "bugs", r#"{"title": "Crash"}"#])
        .ok();
    let id = id.trim();

    // The test runs outside the sandbox: the paths in the file are relative to the file.
    let graph: serde_json::Value =
        serde_json::from_str(&s.run(&["topology", "@topo.json", "--format", "json"]).ok()).unwrap();
    let nodes = graph["nodes"].as_array().unwrap();
    let edges = graph["edges"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{graph}");
    assert_eq!(edges.len(), 1, "{graph}");
    assert_eq!(nodes[0]["name"], "bugs");
    assert_eq!(nodes[0]["local_only"], false);
    assert_eq!(nodes[1]["ops_in_log"], 1, "{graph}");
    assert_eq!(edges[0]["from"], "bugs");
    assert_eq!(edges[0]["to"], "users");
    assert_eq!(edges[0]["mode"], "bidirectional");
    assert_eq!(edges[0]["connected"], true);
    assert_eq!(edges[0]["ops_sent"], 1, "{graph}");
    assert_eq!(edges[0]["ops_pending"], 0, "{graph}");

    let got = s.run(&["get", "@users.blazedb", "bugs", id]).ok();
    assert_eq!(got, format!("{{\"id\":\"{id}\",\"title\":\"Crash\"}}\n"));
    let found = s
        .run(&[
            "query",
            "@users.blazedb",
            "bugs",
            "--where",
            r#"{"title": "Crash"}"#,
        ])
        .ok();
    assert_eq!(lines(&found).len(), 1, "{found}");

    // A second run resumes from the stored cursors: nothing is sent twice.
    let again: serde_json::Value =
        serde_json::from_str(&s.run(&["topology", "@topo.json", "--format", "json"]).ok()).unwrap();
    assert_eq!(again["edges"][0]["ops_sent"], 0, "{again}");
    assert_eq!(
        s.run(&["query", "@users.blazedb", "bugs", "--count"]).ok(),
        "1\n"
    );
}

#[test]
fn topology_prints_tables_by_default_and_dot_on_request() {
    let s = Sandbox::new();
    two_databases(&s, "write-only");
    s.run(&["insert", "@bugs.blazedb", "bugs", r#"{"title": "Crash"}"#])
        .ok();

    let text = s.run(&["topology", "@topo.json"]).ok();
    assert!(text.starts_with("nodes:\n"), "{text}");
    assert!(text.contains("ops in log"), "{text}");
    assert!(text.contains("\nedges:\n"), "{text}");
    let edge = text
        .lines()
        .find(|l| l.contains("bugs → users"))
        .unwrap_or_else(|| panic!("no edge row: {text}"));
    let cells: Vec<&str> = edge.split_whitespace().collect();
    // from → to, mode, connected, sent, received, pending, lag ms
    assert_eq!(
        cells[3..],
        ["write-only", "yes", "1", "0", "0", "0.0"][..],
        "{text}"
    );

    let dot = s.run(&["topology", "@topo.json", "--format", "dot"]).ok();
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("\"bugs\" -> \"users\""), "{dot}");
}

#[test]
fn an_edge_to_an_unknown_node_is_a_one_line_error_naming_it() {
    let s = Sandbox::new();
    s.init("bugs.blazedb");
    write_topology(
        &s,
        &serde_json::json!({
            "nodes": [{"name": "bugs", "path": "bugs.blazedb"}],
            "edges": [{"from": "bugs", "to": "users"}],
        }),
    );
    let err = s.run(&["topology", "@topo.json"]).fails();
    assert!(err.contains("no node named \"users\""), "{err}");
    assert!(err.contains("topo.json"), "{err}");
}

#[test]
fn a_read_only_edge_pulls_but_never_pushes() {
    let s = Sandbox::new();
    // bugs reads from users: users' records arrive in bugs, bugs' own stay at home.
    two_databases(&s, "read-only");
    let home = s
        .run(&["insert", "@bugs.blazedb", "bugs", r#"{"title": "Stays"}"#])
        .ok();
    let pulled = s
        .run(&["insert", "@users.blazedb", "users", r#"{"name": "Ada"}"#])
        .ok();

    let graph: serde_json::Value =
        serde_json::from_str(&s.run(&["topology", "@topo.json", "--format", "json"]).ok()).unwrap();
    assert_eq!(graph["edges"][0]["mode"], "read-only", "{graph}");
    assert_eq!(graph["edges"][0]["ops_sent"], 0, "{graph}");
    assert_eq!(graph["edges"][0]["ops_received"], 1, "{graph}");

    let err = s
        .run(&["get", "@users.blazedb", "bugs", home.trim()])
        .fails();
    assert!(err.contains("no record"), "{err}");
    assert_eq!(
        s.run(&["query", "@users.blazedb", "bugs", "--count"]).ok(),
        "0\n"
    );
    s.run(&["get", "@bugs.blazedb", "users", pulled.trim()])
        .ok();
}

#[test]
fn local_only_nodes_are_drawn_but_never_sync() {
    let s = Sandbox::new();
    for db in ["a.db", "b.db", "archive.db"] {
        s.bare(&["--no-encryption", "init", &format!("@{db}")]).ok();
    }
    s.bare(&[
        "--no-encryption",
        "insert",
        "@archive.db",
        "old",
        r#"{"n": 1}"#,
    ])
    .ok();
    write_topology(
        &s,
        &serde_json::json!({
            "nodes": [
                {"name": "a", "path": "a.db"},
                {"name": "b", "path": s.path("b.db")},
                {"name": "archive", "path": "archive.db", "local_only": true},
            ],
            "edges": [{"from": "a", "to": "b"}],
        }),
    );
    let graph: serde_json::Value = serde_json::from_str(
        &s.bare(&[
            "--no-encryption",
            "topology",
            "@topo.json",
            "--format",
            "json",
        ])
        .ok(),
    )
    .unwrap();
    assert_eq!(graph["nodes"][2]["name"], "archive");
    assert_eq!(graph["nodes"][2]["local_only"], true);
    assert_eq!(graph["nodes"][2]["ops_in_log"], 1);
    assert_eq!(graph["edges"][0]["mode"], "bidirectional", "{graph}");
    let count = s
        .bare(&["--no-encryption", "query", "@a.db", "old", "--count"])
        .ok();
    assert_eq!(count, "0\n");
}

#[test]
fn mistakes_in_the_topology_file_are_one_line_errors() {
    let s = Sandbox::new();
    s.init("bugs.blazedb");
    s.init("users.blazedb");
    let err = s.run(&["topology", "@missing.json"]).fails();
    assert!(err.contains("cannot read topology file"), "{err}");

    let cases = [
        (
            "{\"nodes\": [\n  {\"name\": \"bugs\", \"path\": \"bugs.blazedb\",}\n]}",
            "line 2 column",
        ),
        (
            r#"{"nodes": [{"name": "bugs", "path": "bugs.blazedb", "sync": true}]}"#,
            "unknown field `sync`",
        ),
        (
            r#"{"nodes": [{"name": "bugs", "path": "bugs.blazedb"},
                          {"name": "bugs", "path": "users.blazedb"}]}"#,
            "two nodes are named \"bugs\"",
        ),
        (
            r#"{"nodes": [{"name": "bugs", "path": "bugs.blazedb"},
                          {"name": "users", "path": "users.blazedb"}],
                "edges": [{"from": "bugs", "to": "users", "mode": "sideways"}]}"#,
            "unknown mode \"sideways\"",
        ),
        (
            r#"{"nodes": [{"name": "bugs", "path": "nope.blazedb"}]}"#,
            "nope.blazedb does not exist",
        ),
        (
            r#"{"nodes": [{"name": "bugs", "path": "bugs.blazedb"},
                          {"name": "copy", "path": "./bugs.blazedb"}]}"#,
            "already registered as \"bugs\"",
        ),
    ];
    for (text, expected) in cases {
        s.write("topo.json", text.as_bytes());
        let err = s.run(&["topology", "@topo.json"]).fails();
        assert!(err.contains(expected), "{text}: {err}");
    }

    // A database that does not open names its node.
    s.write(
        "topo.json",
        br#"{"nodes": [{"name": "bugs", "path": "bugs.blazedb"}]}"#,
    );
    let err = s
        .bare(&["topology", "@topo.json"])
        .env("BLAZEDB_PASSWORD", "not the password")
        .fails();
    assert!(err.contains("node \"bugs\": wrong password"), "{err}");
    let err = s.bare(&["topology", "@topo.json"]).fails();
    assert!(err.contains("no password"), "{err}");
}

#[test]
fn a_topology_that_does_not_finish_in_time_prints_the_graph_and_fails() {
    let s = Sandbox::new();
    two_databases(&s, "bidirectional");
    s.run(&["insert", "@bugs.blazedb", "bugs", r#"{"title": "Crash"}"#])
        .ok();
    let out = s
        .run(&[
            "topology",
            "@topo.json",
            "--format",
            "json",
            "--timeout",
            "0",
        ])
        .output();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("sync did not finish within 0 s"),
        "{stderr}"
    );
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(graph["edges"].as_array().unwrap().len(), 1, "{graph}");
}

// ---------------------------------------------------------------------------------------------
// Remote sync and the demo

/// A sync server in this process with database "bugs" and user "alice".
fn sync_server(sandbox: &Sandbox) -> blazedb_server::ServerHandle {
    let config = blazedb_server::ServerConfig {
        data_dir: sandbox.path("server"),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..blazedb_server::ServerConfig::default()
    };
    let server = blazedb_server::Server::start_with_key(
        config,
        blazedb_server::MasterKey::generate().unwrap(),
    )
    .unwrap();
    server.meta().create_database("bugs").unwrap();
    server.meta().add_user("alice", &[], None).unwrap();
    server
}

/// `sync @DB --server URL --database bugs`.
fn sync_args(db: &str, url: &str) -> Vec<String> {
    vec![
        "sync".to_owned(),
        format!("@{db}"),
        "--server".to_owned(),
        url.to_owned(),
        "--database".to_owned(),
        "bugs".to_owned(),
    ]
}

fn sync_token(server: &blazedb_server::ServerHandle) -> String {
    blazedb_testkit::server::token(server, "alice")
}

#[test]
fn sync_once_enrolls_with_a_token_from_stdin_and_brings_two_files_in_step() {
    let s = Sandbox::new();
    let server = sync_server(&s);
    let url = server.url();
    s.init("a.blazedb");
    s.init("b.blazedb");
    let id = s
        .run(&[
            "insert",
            "@a.blazedb",
            "bugs",
            r#"{"title":"Crash on launch"}"#,
        ])
        .ok();
    let sync = |db: &str| sync_args(db, &url);
    for db in ["a.blazedb", "b.blazedb"] {
        let mut args = sync(db);
        args.extend(["--enroll".to_owned(), "-".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.run(&args).stdin(&sync_token(&server)).ok();
        assert!(out.contains("is in sync"), "{out}");
    }
    let got = s.run(&["get", "@b.blazedb", "bugs", id.trim()]).ok();
    assert!(got.contains("Crash on launch"), "{got}");
    // Enrolled now: later runs need no token.
    s.run(&[
        "update",
        "@b.blazedb",
        "bugs",
        id.trim(),
        r#"{"status":"fixed"}"#,
    ])
    .ok();
    for db in ["b.blazedb", "a.blazedb"] {
        let args = sync(db);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.run(&args).ok();
    }
    let got = s.run(&["get", "@a.blazedb", "bugs", id.trim()]).ok();
    assert!(got.contains("fixed"), "{got}");
    server.shutdown();
}

#[test]
fn sync_asks_for_less_with_flags_and_prints_the_writes_the_server_refused() {
    let s = Sandbox::new();
    let server = sync_server(&s);
    let url = server.url();
    server
        .meta()
        .update_user("alice", Some(&["ios".to_owned()]), Some("developer"))
        .unwrap();
    server
        .meta()
        .set_access_rules(
            "bugs",
            "[roles.developer.bugs]\nread = {}\nwrite = { teamId = { \"$in\" = \"$teams\" } }\n",
        )
        .unwrap();
    s.init("a.blazedb");
    s.init("b.blazedb");
    let mine = s
        .run(&[
            "insert",
            "@a.blazedb",
            "bugs",
            r#"{"teamId":"ios","status":"open","notes":"n"}"#,
        ])
        .ok();
    let closed = s
        .run(&[
            "insert",
            "@a.blazedb",
            "bugs",
            r#"{"teamId":"ios","status":"closed"}"#,
        ])
        .ok();
    let theirs = s
        .run(&[
            "insert",
            "@a.blazedb",
            "bugs",
            r#"{"teamId":"android","status":"open"}"#,
        ])
        .ok();
    let mut args = sync_args("a.blazedb", &url);
    args.extend(["--enroll".to_owned(), "-".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&args).stdin(&sync_token(&server)).output();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the server refused a write to bugs/{}",
            theirs.trim()
        )) && stderr.contains("outside what the role \"developer\" may write"),
        "{stderr}"
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("1 writes refused")
    );
    // The server undid it here too.
    s.run(&["get", "@a.blazedb", "bugs", theirs.trim()]).fails();

    let mut args = sync_args("b.blazedb", &url);
    args.extend(
        [
            "--enroll",
            "-",
            "--collections",
            "bugs,comments",
            "--where",
            r#"{"status":"open"}"#,
            "--exclude-field",
            "notes",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.run(&args).stdin(&sync_token(&server)).ok();
    let got = s.run(&["get", "@b.blazedb", "bugs", mine.trim()]).ok();
    assert!(got.contains("open") && !got.contains("notes"), "{got}");
    s.run(&["get", "@b.blazedb", "bugs", closed.trim()]).fails();

    // A bad filter is the user's mistake, said before anything connects.
    let mut args = sync_args("b.blazedb", &url);
    args.extend([
        "--where".to_owned(),
        r#"{"status":{"$regex":"x"}}"#.to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = s.run(&args).fails();
    assert!(err.contains("--where") && err.contains("$regex"), "{err}");
    server.shutdown();
}

#[test]
fn sync_without_enrollment_or_with_a_bad_token_fails_with_one_clear_line() {
    let s = Sandbox::new();
    let server = sync_server(&s);
    let url = server.url();
    s.init("a.blazedb");
    // `sync @a.blazedb --server URL --database DB EXTRA…`
    let sync = |url: &str, database: &str, extra: &[&str]| {
        let mut args = vec![
            "sync",
            "@a.blazedb",
            "--server",
            url,
            "--database",
            database,
        ];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    let err = sync(&url, "bugs", &[]).fails();
    assert!(err.contains("not enrolled"), "{err}");
    let err = sync(&url, "bugs", &["--enroll", "bzt1_nope"]).fails();
    assert!(err.contains("invalid enrollment token"), "{err}");
    let err = sync("http://x", "bugs", &[]).fails();
    assert!(err.contains("ws://"), "{err}");
    let err = sync(&url, "nope", &["--enroll", "-"])
        .stdin(&sync_token(&server))
        .fails();
    assert!(err.contains("unknown database"), "{err}");
    server.shutdown();
}

#[test]
fn the_demo_runs_in_seconds_and_leaves_nothing_behind() {
    let s = Sandbox::new();
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = s.bare(&["demo"]).env("TMPDIR", tmp.to_str().unwrap()).ok();
    for step in [
        "1. Server",
        "3. Alice inserted",
        "Bob reconnected",
        "5. Concurrent",
        "6. Stopped",
    ] {
        assert!(out.contains(step), "{out}");
    }
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "left behind in {tmp:?}"
    );
}

#[test]
fn sync_follow_pulls_changes_and_pushes_writes_other_processes_make_to_the_file() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let s = Sandbox::new();
    let server = sync_server(&s);
    s.init("a.blazedb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_blazedb"))
        .args([
            "sync",
            s.path("a.blazedb").to_str().unwrap(),
            "--server",
            &server.url(),
        ])
        .args(["--database", "bugs", "--follow", "--enroll", "-"])
        .env("BLAZEDB_PASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sync_token(&server).as_bytes())
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().unwrap().unwrap();
        if line.starts_with("blazedb: connected") {
            break;
        }
    }
    // Another device writes through the server...
    use blazedb_sync::remote::{RemoteNode, RemoteOptions, SyncExt};
    let other = blazedb_core::Database::in_memory().unwrap();
    let other_sync = other
        .enable_sync(
            RemoteNode::new(server.url(), "bugs"),
            RemoteOptions::default().enroll(sync_token(&server)),
        )
        .unwrap();
    other
        .insert(
            "bugs",
            blazedb_core::fields! {"title" => "from the other device"},
        )
        .unwrap();
    // ...and another process writes to the followed file.
    s.run(&[
        "insert",
        "@a.blazedb",
        "bugs",
        r#"{"title":"from another process"}"#,
    ])
    .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let here = s.run(&["query", "@a.blazedb", "bugs"]).ok();
        let there = other.count("bugs").unwrap();
        if here.contains("from the other device") && there == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a.blazedb: {here}; other device: {there} records"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(other_sync);
    server.shutdown();
}

#[test]
fn a_copied_database_file_is_refused_as_a_copy_and_reidentify_repairs_it_with_nothing_lost() {
    let s = Sandbox::new();
    let server = sync_server(&s);
    let url = server.url();
    let sync = |db: &str, token: Option<String>| {
        let mut args = sync_args(db, &url);
        args.extend(["--timeout".to_owned(), "20".to_owned()]);
        if token.is_some() {
            args.extend(["--enroll".to_owned(), "-".to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = s.run(&args);
        match token {
            Some(token) => run.stdin(&token),
            None => run,
        }
    };
    let insert = |db: &str, title: &str| {
        s.run(&["insert", db, "bugs", &format!(r#"{{"title":"{title}"}}"#)])
            .ok();
    };
    // The reproduction of the issue: enroll laptop, copy it, write in each, sync each.
    s.init("laptop.blazedb");
    insert("@laptop.blazedb", "before the copy");
    sync("laptop.blazedb", Some(sync_token(&server))).ok();
    std::fs::copy(s.path("laptop.blazedb"), s.path("desktop.blazedb")).unwrap();
    // The original writes more than the copy: the server, which has the original's second
    // operation, finds the copy's different one in the copy's Pull, and the copy finds the
    // server's cursor into its log past the end of it.
    insert("@laptop.blazedb", "laptop");
    insert("@laptop.blazedb", "laptop again");
    insert("@desktop.blazedb", "desktop");
    let out = sync("laptop.blazedb", None).ok();
    assert!(out.contains("is in sync"), "{out}");
    let err = sync("desktop.blazedb", None).fails();
    assert_one_line(&err);
    assert!(err.contains("database file is a copy of another"), "{err}");
    assert!(err.contains("blazedb reidentify"), "{err}");
    let query = |db: &str| {
        let mut titles: Vec<String> = s
            .run(&["query", db, "bugs"])
            .ok()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["title"].as_str().unwrap().to_owned()
            })
            .collect();
        titles.sort();
        titles
    };
    // Nothing of the copy reached the server, nor the original's write the copy.
    assert_eq!(query("@desktop.blazedb"), ["before the copy", "desktop"]);

    let out = s.run(&["reidentify", "@desktop.blazedb"]).ok();
    assert!(out.contains("is node"), "{out}");
    assert!(out.contains("enroll it again"), "{out}");
    // A new key: the old enrollment is gone with it.
    let err = sync("desktop.blazedb", None).fails();
    assert!(err.contains("not enrolled"), "{err}");
    let out = sync("desktop.blazedb", Some(sync_token(&server))).ok();
    assert!(out.contains("is in sync"), "{out}");
    sync("laptop.blazedb", None).ok();
    let all = ["before the copy", "desktop", "laptop", "laptop again"];
    assert_eq!(query("@laptop.blazedb"), all);
    assert_eq!(query("@desktop.blazedb"), all);
    server.shutdown();
}

#[test]
fn serve_syncs_two_files_directly_between_two_processes_and_refuses_an_untrusted_peer() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let s = Sandbox::new();
    for name in ["a.blazedb", "b.blazedb", "c.blazedb"] {
        s.init(name);
    }
    let key = |name: &str| {
        s.run(&["peer-key", &format!("@{name}")])
            .ok()
            .trim()
            .to_owned()
    };
    let (a_key, b_key) = (key("a.blazedb"), key("b.blazedb"));
    assert_eq!(a_key.len(), 130, "{a_key}");
    let serve = |name: &str, extra: &[String]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blazedb"))
            .args(["serve", s.path(name).to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--group", "notes"])
            .args(extra)
            .env("BLAZEDB_PASSWORD", PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = out.next().unwrap().unwrap();
        let address = listening.strip_prefix("listening on ").unwrap().to_owned();
        let key_line = out.next().unwrap().unwrap();
        assert!(key_line.starts_with("key "), "{key_line}");
        (child, address)
    };
    let (mut a, a_address) = serve("a.blazedb", &["--trust".into(), b_key.clone()]);
    let (mut b, _) = serve(
        "b.blazedb",
        &["--connect".into(), format!("{a_address}={a_key}")],
    );
    // C expects A's key, but A does not trust C.
    let (mut c, _) = serve(
        "c.blazedb",
        &["--connect".into(), format!("{a_address}={a_key}")],
    );
    s.run(&["insert", "@a.blazedb", "notes", r#"{"text":"from a"}"#])
        .ok();
    s.run(&["insert", "@b.blazedb", "notes", r#"{"text":"from b"}"#])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a_has = s.run(&["query", "@a.blazedb", "notes"]).ok();
        let b_has = s.run(&["query", "@b.blazedb", "notes"]).ok();
        if a_has.lines().count() == 2 && b_has.lines().count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "a: {a_has}; b: {b_has}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.run(&["query", "@c.blazedb", "notes"]).ok(), "");
    for child in [&mut a, &mut b, &mut c] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
