//! Rules files: the bug tracker of ACCESS.md, validation errors with their lines, and
//! properties (canonical text round trip, `may_read` against a reference, no panics).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_access::{CollectionMode, Rules, RulesError, SecurityContext, WriteRefusal};
use blazedb_core::{Filter, Record, RejectCode, Uuid, Value, fields};
use proptest::prelude::*;

const BUG_TRACKER: &str = r#"
# rules for database "bugs"; a role or collection not named here sees nothing and writes nothing
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
hidden_fields = ["auditLog"]

[roles.developer.comments]
read  = {}                                   # every comment
write = { author = "$user" }

[roles.manager.bugs]
read  = { teamId = { "$in" = "$teams" } }    # archived ones included
write = { teamId = { "$in" = "$teams" } }

[roles.manager.reports]
read  = {}
write = false                                # read-only collection for this role
"#;

fn record(fields: blazedb_core::Fields) -> Record {
    Record {
        id: Uuid::new_v4(),
        fields,
    }
}

fn alice() -> SecurityContext {
    SecurityContext::new("alice", ["ios"], "developer", "a1")
}
fn bob() -> SecurityContext {
    SecurityContext::new("bob", ["android"], "developer", "b1")
}
fn carol() -> SecurityContext {
    SecurityContext::new("carol", ["ios", "android"], "manager", "c1")
}

fn refused(text: &str) -> RulesError {
    Rules::parse(text).unwrap_err()
}

#[test]
fn in_the_bug_tracker_each_developer_reads_and_writes_only_their_teams_bugs() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let ios = record(fields! { "teamId" => "ios", "title" => "crash" });
    let android = record(fields! { "teamId" => "android", "title" => "typo" });
    assert!(rules.may_read(&alice(), "bugs", &ios));
    assert!(!rules.may_read(&alice(), "bugs", &android));
    assert!(rules.may_read(&bob(), "bugs", &android));
    assert!(!rules.may_read(&bob(), "bugs", &ios));
    assert!(
        rules
            .check_write(&alice(), "bugs", None, Some(&ios), &["teamId", "title"])
            .is_ok()
    );
    assert!(
        rules
            .check_write(&alice(), "bugs", None, Some(&android), &["teamId"])
            .is_err()
    );
    assert!(
        rules
            .check_write(&bob(), "bugs", Some(&ios), None, &[])
            .is_err()
    );
}

#[test]
fn a_developer_cannot_move_a_bug_to_another_team_nor_write_a_hidden_field() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let ios = record(fields! { "teamId" => "ios" });
    let moved = Record {
        id: ios.id,
        fields: fields! { "teamId" => "android" },
    };
    assert!(
        rules
            .check_write(&alice(), "bugs", Some(&ios), Some(&moved), &["teamId"])
            .is_err()
    );
    assert!(
        rules
            .check_write(&alice(), "bugs", Some(&ios), Some(&ios), &["auditLog"])
            .is_err()
    );
    assert!(
        rules
            .check_write(&alice(), "bugs", Some(&ios), Some(&ios), &["title"])
            .is_ok()
    );
}

#[test]
fn the_manager_of_both_teams_reads_every_bug_and_reports_but_cannot_write_reports() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let ios = record(fields! { "teamId" => "ios" });
    let android = record(fields! { "teamId" => "android" });
    let web = record(fields! { "teamId" => "web" });
    let report = record(fields! { "week" => 12 });
    assert!(rules.may_read(&carol(), "bugs", &ios));
    assert!(rules.may_read(&carol(), "bugs", &android));
    assert!(!rules.may_read(&carol(), "bugs", &web));
    assert!(rules.may_read(&carol(), "reports", &report));
    assert!(
        rules
            .check_write(&carol(), "reports", None, Some(&report), &["week"])
            .is_err()
    );
    assert!(!rules.may_read(&alice(), "reports", &report));
    let scope = rules.scope_for(&carol(), "reports").unwrap();
    assert_eq!(scope.read, Filter::And(vec![]));
    assert_eq!(scope.write, None);
}

#[test]
fn comments_are_read_by_every_developer_and_written_only_by_their_author() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let mine = record(fields! { "author" => "alice", "text" => "+1" });
    assert!(rules.may_read(&bob(), "comments", &mine));
    assert!(
        rules
            .check_write(&alice(), "comments", Some(&mine), Some(&mine), &["text"])
            .is_ok()
    );
    assert!(
        rules
            .check_write(&bob(), "comments", Some(&mine), Some(&mine), &["text"])
            .is_err()
    );
    // The manager role does not name comments: invisible and read-only.
    assert!(!rules.may_read(&carol(), "comments", &mine));
    assert_eq!(rules.scope_for(&carol(), "comments"), None);
}

#[test]
fn a_scope_binds_the_variables_and_lists_the_hidden_fields() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let scope = rules.scope_for(&carol(), "bugs").unwrap();
    assert_eq!(scope.read, Filter::is_in("teamId", ["ios", "android"]));
    assert_eq!(
        scope.write,
        Some(Filter::is_in("teamId", ["ios", "android"]))
    );
    assert!(scope.hidden_fields.is_empty());
    let scope = rules.scope_for(&alice(), "bugs").unwrap();
    assert_eq!(scope.hidden_fields, ["auditLog"]);
}

#[test]
fn a_role_the_rules_do_not_name_sees_nothing() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let guest = SecurityContext::new("gus", ["ios"], "guest", "g1");
    let bug = record(fields! { "teamId" => "ios" });
    assert!(!rules.may_read(&guest, "bugs", &bug));
    assert!(
        rules
            .check_write(&guest, "bugs", None, Some(&bug), &["teamId"])
            .is_err()
    );
}

#[test]
fn the_canonical_text_of_the_bug_tracker_reads_back_as_the_same_rules() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let text = rules.to_toml();
    assert!(
        text.starts_with(
            "[roles.developer.bugs]\nread = { teamId = { \"$in\" = [\"$teams\"] } }\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("[roles.manager.reports]\nread = {}\nwrite = false\n"),
        "{text}"
    );
    assert_eq!(Rules::parse(&text).unwrap(), rules);
}

#[test]
fn unknown_keys_operators_variables_and_wrong_types_are_errors_naming_the_line() {
    let e = refused("[roles.dev.bugs]\nread = {}\nreed = {}\n");
    assert_eq!(e.line(), 3);
    assert!(e.to_string().contains("unknown key \"reed\""), "{e}");
    let e = refused("\n[roles.dev.bugs]\nread = { teamId = { \"$regex\" = \"x\" } }\n");
    assert_eq!(e.line(), 3);
    assert!(e.to_string().contains("unknown operator \"$regex\""), "{e}");
    let e = refused("[roles.dev.bugs]\nwrite = { author = \"$usr\" }\n");
    assert_eq!(e.line(), 2);
    assert!(e.to_string().contains("unknown variable \"$usr\""), "{e}");
    let e = refused("[roles.dev.bugs]\nwrite = true\n");
    assert!(
        e.to_string()
            .contains("must be a filter table or false, found a boolean"),
        "{e}"
    );
    let e = refused("[roles.dev.bugs]\nhidden_fields = [\"a\", 3]\n");
    assert_eq!(e.line(), 2);
    assert!(
        e.to_string()
            .contains("an array of field names, found an integer"),
        "{e}"
    );
    let e = refused("[roles.dev.bugs]\nhidden_fields = [\"id\"]\n");
    assert!(
        e.to_string().contains("the record id cannot be hidden"),
        "{e}"
    );
    let e = refused("[rules.dev.bugs]\nread = {}\n");
    assert!(
        e.to_string().contains("unknown key \"rules\" in the file"),
        "{e}"
    );
    let e = refused("roles = 3\n");
    assert!(
        e.to_string().contains("roles must be a table of roles"),
        "{e}"
    );
    let e = refused("[roles.dev.bugs]\nread = {\n");
    assert!(matches!(e, RulesError::Syntax { line: 2, .. }), "{e}");
    let e = refused("[roles.dev]\nbugs = 1\n");
    assert!(e.to_string().contains("line 2, column 8"), "{e}");
}

/// The seed's hybrid bug tracker: bugs sealed end to end and routed by team, reports smart.
const HYBRID: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }

[roles.manager.reports]
read  = { status = "published" }
write = false

[collections.bugs]
mode = "e2e"
routing_fields = ["teamId"]
"#;

#[test]
fn an_e2e_collection_is_declared_with_its_routing_fields_and_reads_back_the_same() {
    let rules = Rules::parse(HYBRID).unwrap();
    assert_eq!(rules.mode("bugs"), CollectionMode::E2e);
    assert_eq!(rules.mode("reports"), CollectionMode::Smart);
    assert_eq!(rules.mode("comments"), CollectionMode::Smart);
    let (name, bugs) = rules.collection_settings().next().unwrap();
    assert_eq!(name, "bugs");
    assert_eq!(bugs.routing_fields().collect::<Vec<_>>(), ["teamId"]);
    let text = rules.to_toml();
    assert!(
        text.starts_with("[collections.bugs]\nmode = \"e2e\"\nrouting_fields = [\"teamId\"]\n"),
        "{text}"
    );
    assert_eq!(Rules::parse(&text).unwrap(), rules);
    // A smart collection's rules may read any field; so may rules on the record id.
    Rules::parse("[collections.bugs]\nmode = \"e2e\"\n[roles.dev.bugs]\nread = { id = \"x\" }\n")
        .unwrap();
}

#[test]
fn a_rule_that_reads_a_sealed_field_is_refused_with_its_line_and_the_reason() {
    // The table of collections may come after the rules.
    let e = refused(
        "[roles.dev.bugs]\nread = { teamId = \"ios\" }\nwrite = { title = \"x\" }\n\n\
         [collections.bugs]\nmode = \"e2e\"\nrouting_fields = [\"teamId\"]\n",
    );
    assert_eq!(e.line(), 3);
    let text = e.to_string();
    assert!(text.contains("[roles.dev.bugs] write"), "{text}");
    assert!(text.contains("reads the field \"title\""), "{text}");
    assert!(text.contains("routing fields (teamId)"), "{text}");
    let e = refused(
        "[collections.bugs]\nmode = \"e2e\"\n[roles.dev.bugs]\nread = { \"$or\" = [{ id = \"a\" }, { \"meta.team\" = \"x\" }] }\n",
    );
    assert_eq!(e.line(), 4);
    assert!(e.to_string().contains("reads the field \"meta\""), "{e}");
    assert!(e.to_string().contains("(none declared)"), "{e}");
}

#[test]
fn bad_collection_declarations_are_errors_naming_the_line() {
    for (text, line, says) in [
        (
            "[collections.bugs]\nmode = \"secret\"\n",
            2,
            "must be \"smart\" or \"e2e\"",
        ),
        (
            "[collections.bugs]\nmode = \"e2e\"\nrouting = [\"teamId\"]\n",
            3,
            "expected mode, routing_fields",
        ),
        (
            "[collections.bugs]\nrouting_fields = [\"id\"]\n",
            2,
            "the record id is always in clear",
        ),
        (
            "[collection.bugs]\nmode = \"e2e\"\n",
            1,
            "expected roles, collections",
        ),
    ] {
        let e = refused(text);
        assert_eq!(e.line(), line, "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn an_error_deep_in_a_multi_line_filter_names_its_own_line() {
    let text =
        "[roles.dev.bugs]\nread = { \"$or\" = [\n  { a = 1 },\n  { b = { \"$in\" = 4 } },\n] }\n";
    let e = refused(text);
    assert_eq!(e.line(), 4, "{e}");
    assert!(e.to_string().contains("$in takes an array"), "{e}");
}

#[test]
fn toml_dates_and_special_floats_are_values() {
    let rules = Rules::parse(
        "[roles.r.c]\nread = { at = { \"$gt\" = 1970-01-01T00:00:01Z }, x = { \"$lt\" = inf } }\n",
    )
    .unwrap();
    let scope = rules
        .scope_for(&SecurityContext::new("u", ["t"], "r", "d"), "c")
        .unwrap();
    assert_eq!(
        scope.read,
        Filter::And(vec![
            Filter::gt("at", blazedb_core::Date::from_unix_millis(1000)),
            Filter::lt("x", f64::INFINITY),
        ])
    );
    assert_eq!(Rules::parse(&rules.to_toml()).unwrap(), rules);
}

// --- properties ------------------------------------------------------------------------------

/// A random filter as TOML inline-table text (mostly valid).
fn arb_filter() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec!["a", "teamId", "$odd", "with space", "id", "é"]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-1.0e9f64..1.0e9).prop_map(|d| format!("{d:?}")),
        "[a-z$]{0,5}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "\"$user\"",
            "\"$role\"",
            "\"$device\"",
            "{ \"$literal\" = \"$x\" }",
            "1970-01-01T00:00:01.5Z",
            "{ \"$uuid\" = \"0190c0de-7f00-7abc-8def-0123456789ab\" }",
            "[1, \"x\", [2.5]]",
            "{ k = 1, \"$$k\" = \"v\" }",
        ])
        .prop_map(str::to_owned),
    ];
    let op = prop::sample::select(vec![
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$contains",
    ]);
    let leaf = prop_oneof![
        (field.clone(), value.clone()).prop_map(|(f, v)| format!("{f:?} = {v}")),
        (
            field.clone(),
            prop::collection::btree_map(op, value.clone(), 1..3)
        )
            .prop_map(|(f, ops)| {
                let ops: Vec<String> = ops.iter().map(|(o, v)| format!("{o:?} = {v}")).collect();
                format!("{f:?} = {{ {} }}", ops.join(", "))
            }),
        (field.clone(), prop::collection::vec(value, 0..3)).prop_map(|(f, vs)| {
            format!("{f:?} = {{ \"$in\" = [\"$teams\", {}] }}", vs.join(", "))
        }),
        (field, any::<bool>()).prop_map(|(f, b)| format!("{f:?} = {{ \"$null\" = {b} }}")),
    ]
    .prop_map(|entry| format!("{{ {entry} }}"));
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|l| format!("{{ \"$and\" = [{}] }}", l.join(", "))),
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|l| format!("{{ \"$or\" = [{}] }}", l.join(", "))),
            inner.clone().prop_map(|f| format!("{{ \"$not\" = {f} }}")),
            // Two entries in one table: an implicit AND.
            (inner.clone(), inner).prop_map(|(a, b)| {
                let (a, b) = (
                    a.trim_matches(['{', '}', ' ']),
                    b.trim_matches(['{', '}', ' ']),
                );
                if a.is_empty() || b.is_empty() || a.split(" = ").next() == b.split(" = ").next() {
                    format!("{{ {a} }}")
                } else {
                    format!("{{ {a}, {b} }}")
                }
            }),
        ]
    })
}

fn valid_file() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["developer", "manager", "a role"]),
            prop::sample::select(vec!["bugs", "reports", "x.y"]),
            prop_oneof![arb_filter(), Just("false".to_owned())],
            prop_oneof![arb_filter(), Just("false".to_owned())],
        ),
        0..4,
    )
    .prop_flat_map(|tables| (Just(tables), any::<bool>()))
    .prop_map(|(tables, declared)| {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = String::new();
        if declared {
            // A smart collection may declare routing fields; they restrict nothing.
            out.push_str(
                "[collections.\"x.y\"]\nmode = \"smart\"\nrouting_fields = [\"teamId\"]\n\n",
            );
        }
        for (role, collection, read, write) in tables {
            if seen.insert((role, collection)) {
                out.push_str(&format!(
                    "[roles.{role:?}.{collection:?}]\nread = {read}\nwrite = {write}\n\
                     hidden_fields = [\"h\"]\n\n"
                ));
            }
        }
        out
    })
}

/// A context-dependent rule with its meaning written out by hand: the reference.
type Reference = fn(&SecurityContext, &Record) -> bool;

fn text_of(record: &Record, field: &str) -> Option<String> {
    match record.fields.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

const REFERENCE_RULES: [(&str, Reference); 6] = [
    ("{}", |_, _| true),
    ("false", |_, _| false),
    ("{ teamId = { \"$in\" = \"$teams\" } }", |c, r| {
        text_of(r, "teamId").is_some_and(|t| c.teams.contains(&t))
    }),
    ("{ owner = \"$user\" }", |c, r| {
        text_of(r, "owner").as_deref() == Some(&c.user)
    }),
    (
        "{ \"$or\" = [{ public = true }, { teamId = { \"$in\" = [\"$teams\", \"shared\"] } }] }",
        |c, r| {
            r.fields.get("public") == Some(&Value::Bool(true))
                || text_of(r, "teamId").is_some_and(|t| t == "shared" || c.teams.contains(&t))
        },
    ),
    ("{ \"$not\" = { owner = \"$user\" } }", |c, r| {
        text_of(r, "owner").as_deref() != Some(&c.user)
    }),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_canonical_text_parses_back_to_the_same_rules(file in valid_file()) {
        // Generated files may be invalid (e.g. `$contains` with a number): those must be
        // refused cleanly; the valid ones must round-trip.
        if let Ok(rules) = Rules::parse(&file) {
            let text = rules.to_toml();
            let again = Rules::parse(&text)
                .unwrap_or_else(|e| panic!("{file}\n---\n{text}\n---\n{e}"));
            prop_assert_eq!(&again, &rules, "{}\n---\n{}", file, text);
            prop_assert_eq!(again.to_toml(), text);
        }
    }

    #[test]
    fn may_read_equals_the_reference_for_random_rules_records_and_contexts(
        choice in prop::collection::vec((0usize..2, 0usize..2, 0usize..REFERENCE_RULES.len()), 0..4),
        user in prop::sample::select(vec!["alice", "bob", "carol"]),
        teams in prop::sample::subsequence(vec!["ios", "android", "web"], 0..3),
        role in prop::sample::select(vec!["developer", "manager", "guest"]),
        collection in prop::sample::select(vec!["bugs", "reports", "other"]),
        team in prop::sample::select(vec!["ios", "android", "web", "shared"]),
        owner in prop::sample::select(vec!["alice", "bob", "carol"]),
        public in any::<bool>(),
    ) {
        let roles = ["developer", "manager"];
        let collections = ["bugs", "reports"];
        let mut text = String::new();
        let mut expected = std::collections::BTreeMap::new();
        for (r, c, k) in choice {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                expected.entry((roles[r], collections[c]))
            {
                slot.insert(REFERENCE_RULES[k].1);
                text.push_str(&format!("[roles.{}.{}]\nread = {}\n", roles[r], collections[c],
                    REFERENCE_RULES[k].0));
            }
        }
        let rules = Rules::parse(&text).unwrap();
        let ctx = SecurityContext::new(user, teams, role, "dev");
        let record = record(fields! { "teamId" => team, "owner" => owner, "public" => public });
        let reference = expected
            .get(&(role, collection))
            .is_some_and(|rule| rule(&ctx, &record));
        prop_assert_eq!(rules.may_read(&ctx, collection, &record), reference, "{}", text);
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,200}") {
        let _ = Rules::parse(&text);
    }

    #[test]
    fn mutated_valid_files_never_panic_the_parser(
        file in valid_file(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, "\\PC{0,3}"), 1..4),
    ) {
        let mut text = file;
        for (at, kind, insert) in edits {
            let boundaries: Vec<usize> =
                text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let i = boundaries[at.index(boundaries.len())];
            match kind {
                0 => text.insert_str(i, &insert),
                1 => { if let Some(c) = text[i..].chars().next() { text.replace_range(i..i + c.len_utf8(), ""); } }
                _ => text.truncate(i),
            }
        }
        if let Ok(rules) = Rules::parse(&text) {
            prop_assert_eq!(Rules::parse(&rules.to_toml()).ok(), Some(rules));
        }
    }
}

#[test]
fn role_names_are_compared_in_the_nfkc_form_the_server_stores() {
    // Full-width letters: the server stores this user's role as "developer".
    let rules = Rules::parse("[roles.\"ｄｅｖｅｌｏｐｅｒ\".bugs]\nread = {}\n").unwrap();
    assert_eq!(rules.roles().collect::<Vec<_>>(), ["developer"]);
    assert!(rules.may_read(&alice(), "bugs", &record(fields! {"teamId" => "ios"})));
    let err = refused(
        "[roles.developer.bugs]\nread = {}\n\n[roles.\"ｄｅｖｅｌｏｐｅｒ\".comments]\nread = {}\n",
    );
    let text = err.to_string();
    assert!(text.starts_with("line 4,"), "{text}");
    assert!(text.contains("named twice"), "{text}");
}

#[test]
fn a_refused_write_says_which_rule_refused_it() {
    let rules = Rules::parse(BUG_TRACKER).unwrap();
    let ios = record(fields! {"teamId" => "ios", "title" => "Crash"});
    let android = record(fields! {"teamId" => "android", "title" => "Crash"});
    let code = |result: Result<(), WriteRefusal>| result.unwrap_err().code;
    assert_eq!(
        code(rules.check_write(&carol(), "reports", None, Some(&ios), &["week"])),
        RejectCode::ReadOnly
    );
    assert_eq!(
        code(rules.check_write(&alice(), "unnamed", None, Some(&ios), &["title"])),
        RejectCode::ReadOnly
    );
    let hidden = rules
        .check_write(
            &alice(),
            "bugs",
            Some(&ios),
            Some(&ios),
            &["title", "auditLog"],
        )
        .unwrap_err();
    assert_eq!(hidden.code, RejectCode::HiddenField);
    assert!(hidden.reason.contains("\"auditLog\""), "{hidden}");
    let moved = rules
        .check_write(&alice(), "bugs", Some(&ios), Some(&android), &["teamId"])
        .unwrap_err();
    assert_eq!(moved.code, RejectCode::Forbidden);
    assert!(moved.reason.contains("as written"), "{moved}");
    let foreign = rules
        .check_write(&alice(), "bugs", Some(&android), Some(&ios), &["teamId"])
        .unwrap_err();
    assert!(foreign.reason.contains("as it was"), "{foreign}");
    // The reason never shows a value: only what the writer named.
    assert!(!foreign.reason.contains("android"), "{foreign}");
    assert_eq!(
        rules.check_write(&alice(), "bugs", Some(&ios), Some(&ios), &["title"]),
        Ok(())
    );
}
