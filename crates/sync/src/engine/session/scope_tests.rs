//! Selective sync between two sessions on [`MemLog`]s: a server that filters by a
//! [`ReadScope`] and a device, exchanging every message until both are quiet. After each
//! step the device must hold exactly the server's records that its scope reads, as its
//! scope shows them (hidden fields removed), plus what it wrote that the server has not
//! ruled on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use std::sync::Arc;

use blazedb_access::{ReadScope, Rules, SecurityContext, SyncPolicy, WriteScope};
use blazedb_core::{Fields, NodeId, OpKind, PurgeReason, RejectCode, Uuid, Value, fields};
use blazedb_protocol::Message;
use proptest::prelude::*;

use super::{Output, Session};
use crate::engine::{ConnectOptions, PeerTrust};
use crate::fuzz::MemLog;

const DB: &str = "bugs";

const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
hidden_fields = ["auditLog"]

[roles.developer.comments]
read = {}
write = {}
"#;

fn server_node() -> NodeId {
    NodeId(Uuid::from_u128(1))
}

fn device_node() -> NodeId {
    NodeId(Uuid::from_u128(2))
}

fn context(teams: &[&str]) -> SecurityContext {
    SecurityContext::new("alice", teams.iter().copied(), "developer", "d")
}

fn scope_for(teams: &[&str]) -> ReadScope {
    ReadScope::from_rules(&Rules::parse(RULES).unwrap(), &context(teams))
}

fn write_scope_for(teams: &[&str]) -> WriteScope {
    WriteScope::new(Arc::new(Rules::parse(RULES).unwrap()), context(teams))
}

/// Fields as an application reads them: a null field is no field.
fn without_nulls(content: BTreeMap<(String, Uuid), Fields>) -> BTreeMap<(String, Uuid), Fields> {
    content
        .into_iter()
        .map(|(key, mut fields)| {
            fields.retain(|_, v| *v != Value::Null);
            (key, fields)
        })
        .collect()
}

/// A server (side 0) and one device (side 1) on one connection.
struct Pair {
    logs: [MemLog; 2],
    sessions: [Session; 2],
    queues: [VecDeque<Message>; 2],
    now: Instant,
    /// Messages of each type the device received.
    to_device: BTreeMap<&'static str, usize>,
    /// Operations the server refused, over every connection.
    refused: u64,
}

impl Pair {
    fn new(scope: Option<ReadScope>) -> Pair {
        let mut logs = [MemLog::new(server_node()), MemLog::new(device_node())];
        logs[1].batch_ops = 3;
        let mut server = ConnectOptions::new(DB).trust(PeerTrust::Origin(device_node()));
        server.scope = scope;
        let device = ConnectOptions::new(DB).forward(false);
        let now = Instant::now();
        Pair {
            logs,
            sessions: [Session::new(DB, server, now), Session::new(DB, device, now)],
            queues: [VecDeque::new(), VecDeque::new()],
            now,
            to_device: BTreeMap::new(),
            refused: 0,
        }
    }

    /// Both sessions start (a new connection, with what the logs hold).
    fn connect(&mut self) {
        self.refused += self.sessions[0].ops_refused;
        let mut server = ConnectOptions::new(DB).trust(PeerTrust::Origin(device_node()));
        server.scope = self.sessions[0].base_scope.clone();
        server.write_scope = self.sessions[0].options.write_scope.clone();
        let mut device = ConnectOptions::new(DB).forward(false);
        device.policy = self.sessions[1].options.policy.clone();
        self.sessions = [
            Session::new(DB, server, self.now),
            Session::new(DB, device, self.now),
        ];
        self.queues = [VecDeque::new(), VecDeque::new()];
        for side in 0..2 {
            self.sessions[side].start(&self.logs[side]);
            self.carry(side);
        }
        self.settle();
    }

    fn carry(&mut self, side: usize) {
        for output in self.sessions[side].take_outputs() {
            match output {
                Output::Send(message) => {
                    if side == 0 {
                        *self.to_device.entry(message.type_name()).or_default() += 1;
                    }
                    self.queues[1 - side].push_back(message);
                }
                Output::Close(code, reason) => panic!("side {side} closed: {code}: {reason}"),
                Output::End => {}
            }
        }
    }

    /// Delivers everything until neither side has anything to say.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for side in 0..2 {
                while let Some(message) = self.queues[side].pop_front() {
                    moved = true;
                    let (s, log) = (&mut self.sessions[side], &mut self.logs[side]);
                    s.on_message(log, message, None, self.now);
                    self.carry(side);
                }
                let (s, log) = (&mut self.sessions[side], &mut self.logs[side]);
                s.apply_inbound(log);
                s.pump(log, self.now);
                self.carry(side);
            }
            if !moved {
                // Ranges passed over go out before a Pong: flush them so cursors catch up.
                self.now += super::ECHO_FLUSH_AFTER;
                for side in 0..2 {
                    self.sessions[side].flush_if_due(self.now);
                    self.carry(side);
                }
                if self.queues.iter().all(VecDeque::is_empty) {
                    return;
                }
            }
        }
        panic!("the sessions never went quiet");
    }

    fn set_scope(&mut self, scope: Option<ReadScope>, reason: PurgeReason) {
        let (s, log) = (&mut self.sessions[0], &mut self.logs[0]);
        s.set_scope(log, scope, reason);
        self.carry(0);
        self.settle();
    }

    fn set_policy(&mut self, policy: Option<SyncPolicy>) {
        self.sessions[1].set_policy(policy);
        self.carry(1);
        self.settle();
    }

    /// What the device must hold: the server's records its scope reads, as it may see them.
    fn expected(&self) -> BTreeMap<(String, Uuid), Fields> {
        let Some(scope) = &self.sessions[0].options.scope else {
            return self.logs[0].live();
        };
        self.logs[0]
            .records
            .iter()
            .filter(|((c, id), state)| scope.may_read_state(c, *id, state))
            .map(|((c, id), state)| {
                let fields = scope.strip_state(c, state).visible_fields().unwrap();
                ((c.clone(), *id), fields)
            })
            .collect()
    }

    fn assert_device_holds_its_scope(&self) {
        assert_eq!(
            without_nulls(self.logs[1].live()),
            without_nulls(self.expected())
        );
        // Nothing merged twice.
        assert!(self.logs[1].merges.values().all(|n| *n == 1));
    }
}

/// A server's session with the device (no scope) that has read the device's `Hello`.
fn device_link_after_hello(pair: &mut Pair) -> Session {
    let mut session = Session::new(
        DB,
        ConnectOptions::new(DB).trust(PeerTrust::Origin(device_node())),
        pair.now,
    );
    session.start(&pair.logs[0]);
    session.on_message(
        &mut pair.logs[0],
        Message::Hello {
            protocol_version: blazedb_protocol::PROTOCOL_VERSION,
            node: device_node(),
            database: DB.into(),
            capabilities: blazedb_protocol::Capabilities::SUPPORTED,
            head: 0,
        },
        None,
        pair.now,
    );
    session
}

fn bug(team: &str, title: &str) -> Fields {
    fields! { "teamId" => team, "title" => title, "auditLog" => format!("secret {title}") }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(1000 + n)
}

#[test]
fn a_device_receives_exactly_the_records_it_may_read_without_hidden_fields() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    let server = &mut pair.logs[0];
    server.write_op(OpKind::Insert, "bugs", id(1), bug("ios", "crash"));
    server.write_op(OpKind::Insert, "bugs", id(2), bug("android", "lag"));
    server.write_op(
        OpKind::Insert,
        "comments",
        id(3),
        fields! { "text" => "hi" },
    );
    server.write_op(OpKind::Insert, "reports", id(4), fields! { "week" => 1 });
    server.write_op(
        OpKind::Update,
        "bugs",
        id(1),
        fields! { "auditLog" => "more" },
    );
    pair.connect();
    pair.assert_device_holds_its_scope();
    let held = pair.logs[1].live();
    assert_eq!(held.len(), 2);
    assert!(held.values().all(|f| !f.contains_key("auditLog")));
    // The update of a hidden field only was not sent at all.
    let sent: Vec<_> = pair.logs[1].digests.keys().map(|op| op.seq).collect();
    assert!(!sent.contains(&5), "{sent:?}");
}

#[test]
fn a_record_moved_out_of_scope_is_purged_and_one_moved_in_arrives_whole() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("ios", "crash"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("android", "lag"));
    pair.connect();
    pair.assert_device_holds_its_scope();

    pair.logs[0].write_op(
        OpKind::Update,
        "bugs",
        id(1),
        fields! { "teamId" => "android" },
    );
    pair.logs[0].write_op(OpKind::Update, "bugs", id(2), fields! { "teamId" => "ios" });
    pair.settle();
    pair.assert_device_holds_its_scope();
    let held = pair.logs[1].live();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[&("bugs".to_owned(), id(2))]["title"],
        Value::from("lag"),
        "the record that entered arrived with all its readable fields"
    );
    assert_eq!(pair.to_device.get("Purge"), Some(&1));
    assert_eq!(pair.sessions[1].records_purged, 1);
}

#[test]
fn a_reconnecting_device_purges_what_left_its_scope_and_gets_what_entered_while_away() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    for n in 0..40 {
        let team = if n % 2 == 0 { "ios" } else { "android" };
        pair.logs[0].write_op(OpKind::Insert, "bugs", id(n), bug(team, "b"));
    }
    pair.connect();
    pair.assert_device_holds_its_scope();
    // Away: the user changes teams; the connection starts again with the new scope.
    pair.sessions[0].base_scope = Some(scope_for(&["android"]));
    pair.connect();
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 20);
    assert!(pair.sessions[1].records_purged >= 20);
}

#[test]
fn a_granted_team_brings_its_records_and_a_removed_one_purges_only_its_own() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    for n in 0..30 {
        let team = ["ios", "android", "web"][n as usize % 3];
        pair.logs[0].write_op(OpKind::Insert, "bugs", id(n), bug(team, "b"));
    }
    pair.connect();
    assert_eq!(pair.logs[1].live().len(), 10);
    assert_eq!(
        pair.to_device.get("Records"),
        None,
        "the stream carried them"
    );

    pair.set_scope(
        Some(scope_for(&["ios", "android"])),
        PurgeReason::AccessChanged,
    );
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 20);
    assert_eq!(
        pair.sessions[0].states_sent, 10,
        "only the android records went"
    );

    // An edit of the device's own to an ios bug, not yet acknowledged when ios is removed:
    // the purge leaves it, and once the server has it, it is purged like the rest.
    let ios_bug = id(0);
    pair.logs[1].write_op(
        OpKind::Update,
        "bugs",
        ios_bug,
        fields! { "title" => "mine" },
    );
    let (s, log) = (&mut pair.sessions[0], &mut pair.logs[0]);
    s.set_scope(
        log,
        Some(scope_for(&["android"])),
        PurgeReason::AccessChanged,
    );
    pair.carry(0);
    // Deliver the Purge alone, before the device's edit reaches the server.
    let purge = pair.queues[1].pop_front().unwrap();
    assert!(matches!(purge, Message::Purge { .. }), "{purge:?}");
    let (s, log) = (&mut pair.sessions[1], &mut pair.logs[1]);
    s.on_message(log, purge, None, pair.now);
    assert!(
        pair.logs[1]
            .live()
            .contains_key(&("bugs".to_owned(), ios_bug))
    );
    assert_eq!(pair.logs[1].live().len(), 11);
    pair.carry(1);
    pair.settle();
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 10);
    assert_eq!(
        pair.logs[0].live()[&("bugs".to_owned(), ios_bug)]["title"],
        Value::from("mine"),
        "the device's edit reached the server"
    );
}

#[test]
fn a_device_granted_a_team_later_holds_every_operation_of_an_origin_exactly_once() {
    // The gap case: the server's own writes o1 (team x), o2 (team y), o3 (team x).
    let mut pair = Pair::new(Some(scope_for(&["x"])));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("x", "o1"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("y", "o2"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(3), bug("x", "o3"));
    pair.connect();
    assert_eq!(pair.logs[1].live().len(), 2);
    // Skipped operations are counted as here: no gap waits in the device's vector.
    assert_eq!(pair.logs[1].vector.get(server_node()), 3);
    assert!(pair.logs[1].beyond.is_empty());
    pair.set_scope(Some(scope_for(&["x", "y"])), PurgeReason::AccessChanged);
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 3);
    // A later write to the record o2 made arrives once, as an operation.
    pair.logs[0].write_op(OpKind::Update, "bugs", id(2), fields! { "title" => "o4" });
    pair.settle();
    pair.assert_device_holds_its_scope();
}

#[test]
fn lifting_the_scope_sends_everything_whole() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("ios", "a"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("android", "b"));
    pair.connect();
    pair.set_scope(None, PurgeReason::AccessChanged);
    assert_eq!(pair.logs[1].live(), pair.logs[0].live());
    assert!(pair.logs[1].live()[&("bugs".to_owned(), id(1))].contains_key("auditLog"));
    // And filtering again purges what the device may no longer read.
    pair.set_scope(Some(scope_for(&["ios"])), PurgeReason::AccessChanged);
    pair.assert_device_holds_its_scope();
}

#[test]
fn a_device_may_not_send_a_purge_or_record_states_to_its_server() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.connect();
    for message in [
        Message::Purge {
            reason: PurgeReason::AccessChanged,
            records: vec![blazedb_protocol::RecordKey::new("bugs", id(1))],
        },
        Message::Records { records: vec![] },
    ] {
        let mut session = device_link_after_hello(&mut pair);
        session.on_message(&mut pair.logs[0], message, None, pair.now);
        assert_eq!(
            session.close_code,
            Some(blazedb_protocol::CloseCode::Unauthorized)
        );
    }
}

#[test]
fn refused_writes_are_undone_on_every_copy_and_listed_while_valid_ones_in_the_batch_apply() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.sessions[0].options.write_scope = Some(write_scope_for(&["ios"]));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("ios", "crash"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("ios", "lag"));
    pair.connect();
    // One batch: a valid edit, a move to another team, a hidden field, a collection the
    // role cannot write, then another valid edit.
    let device = &mut pair.logs[1];
    device.write_op(
        OpKind::Update,
        "bugs",
        id(1),
        fields! { "title" => "crash on start" },
    );
    device.write_op(
        OpKind::Update,
        "bugs",
        id(2),
        fields! { "teamId" => "android" },
    );
    device.write_op(
        OpKind::Update,
        "bugs",
        id(1),
        fields! { "auditLog" => "forged" },
    );
    device.write_op(OpKind::Insert, "reports", id(3), fields! { "week" => 1 });
    device.write_op(OpKind::Update, "bugs", id(2), fields! { "title" => "lag" });
    pair.settle();

    let server = pair.logs[0].live();
    assert_eq!(
        server[&("bugs".into(), id(1))]["title"],
        Value::from("crash on start")
    );
    assert_eq!(
        server[&("bugs".into(), id(1))]["auditLog"],
        Value::from("secret crash")
    );
    assert_eq!(
        server[&("bugs".into(), id(2))]["teamId"],
        Value::from("ios")
    );
    assert!(!server.contains_key(&("reports".into(), id(3))));
    pair.assert_device_holds_its_scope();
    let device = pair.logs[1].live();
    assert_eq!(
        device[&("bugs".into(), id(2))]["teamId"],
        Value::from("ios")
    );
    assert_eq!(
        device[&("bugs".into(), id(1))].get("auditLog"),
        Some(&Value::Null),
        "what the device wrote in the hidden field is overwritten, the value not revealed"
    );
    let codes: Vec<RejectCode> = pair.logs[1].rejections.values().map(|r| r.0).collect();
    assert_eq!(
        codes,
        [
            RejectCode::Forbidden,
            RejectCode::HiddenField,
            RejectCode::ReadOnly
        ]
    );
    assert!(
        pair.logs[1]
            .rejections
            .values()
            .all(|(_, reason)| !reason.contains("secret"))
    );
    assert_eq!(pair.sessions[0].ops_refused, 3);
    assert_eq!(pair.sessions[1].rejections_received, 3);
}

#[test]
fn a_device_policy_narrows_what_it_gets_and_a_new_policy_sends_only_the_difference() {
    // No rules on the server: the device's policy alone decides.
    let mut pair = Pair::new(None);
    for n in 0..12 {
        let status = if n % 2 == 0 { "open" } else { "closed" };
        pair.logs[0].write_op(
            OpKind::Insert,
            "bugs",
            id(n),
            fields! { "status" => status, "title" => format!("t{n}"), "notes" => "long" },
        );
    }
    pair.logs[0].write_op(
        OpKind::Insert,
        "comments",
        id(100),
        fields! { "text" => "c" },
    );
    pair.sessions[1].options.policy = Some(
        SyncPolicy::new()
            .collections(["bugs"])
            .filter_json(r#"{"status": "open"}"#)
            .unwrap()
            .exclude_fields(["notes"]),
    );
    pair.connect();
    pair.assert_device_holds_its_scope();
    let held = pair.logs[1].live();
    assert_eq!(held.len(), 6);
    assert!(
        held.values()
            .all(|f| f["status"] == Value::from("open") && !f.contains_key("notes"))
    );

    // Wider: closed bugs too, and comments; the open bugs are not sent again.
    let sent_before = pair.sessions[0].states_sent;
    pair.set_policy(Some(SyncPolicy::new().exclude_fields(["notes"])));
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 13);
    assert_eq!(pair.sessions[0].states_sent - sent_before, 7);
    assert_eq!(pair.sessions[0].purges_sent, 0);

    // Narrower: only comments; the bugs are purged with the policy as the reason.
    pair.set_policy(Some(SyncPolicy::new().exclude_collections(["bugs"])));
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 1);
    // And everything again: the notes the policy left out arrive too.
    pair.set_policy(None);
    pair.assert_device_holds_its_scope();
    assert!(pair.logs[1].live()[&("bugs".to_owned(), id(0))].contains_key("notes"));
}

#[test]
fn a_forged_policy_filter_closes_the_connection_and_a_policy_never_widens_the_rules() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("ios", "a"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("android", "b"));
    pair.logs[0].write_op(OpKind::Insert, "reports", id(3), fields! { "week" => 1 });
    // Asking for reports and android bugs gets nothing the rules do not allow.
    pair.sessions[1].options.policy = Some(SyncPolicy::new().collections(["bugs", "reports"]));
    pair.connect();
    pair.assert_device_holds_its_scope();
    assert_eq!(pair.logs[1].live().len(), 1);

    let mut session = device_link_after_hello(&mut pair);
    session.on_message(
        &mut pair.logs[0],
        Message::Policy {
            only: vec![],
            except: vec![],
            filter: r#"{"status": {"$regex": "x"}}"#.into(),
            exclude_fields: vec![],
        },
        None,
        pair.now,
    );
    assert_eq!(
        session.close_code,
        Some(blazedb_protocol::CloseCode::ProtocolError)
    );
    assert!(session.closed_reason.as_deref().unwrap().contains("$regex"));
}

#[test]
fn a_write_the_rules_accept_that_leaves_what_the_writer_may_read_purges_its_copy() {
    // Developers may hand a bug to any team, but read only their own teams' bugs.
    const HANDOVER: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = {}
"#;
    let rules = Arc::new(Rules::parse(HANDOVER).unwrap());
    let mut pair = Pair::new(Some(ReadScope::from_rules(&rules, &context(&["ios"]))));
    pair.sessions[0].options.write_scope = Some(WriteScope::new(rules, context(&["ios"])));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(1), bug("ios", "crash"));
    pair.logs[0].write_op(OpKind::Insert, "bugs", id(2), bug("ios", "lag"));
    pair.connect();
    pair.logs[1].write_op(
        OpKind::Update,
        "bugs",
        id(1),
        fields! { "title" => "crash!" },
    );
    pair.logs[1].write_op(
        OpKind::Update,
        "bugs",
        id(2),
        fields! { "teamId" => "android" },
    );
    pair.settle();
    pair.assert_device_holds_its_scope();
    assert_eq!(
        pair.logs[0].live()[&("bugs".into(), id(2))]["teamId"],
        Value::from("android")
    );
    assert_eq!(
        pair.logs[1].live().len(),
        1,
        "the handed-over bug left the device"
    );
    assert!(pair.logs[1].rejections.is_empty());
}

#[test]
fn a_device_that_floods_policies_or_sends_a_reconcile_is_closed() {
    let mut pair = Pair::new(Some(scope_for(&["ios"])));
    pair.connect();
    let mut session = device_link_after_hello(&mut pair);
    session.on_message(
        &mut pair.logs[0],
        Message::Reconcile {
            level: 0,
            buckets: vec![0],
        },
        None,
        pair.now,
    );
    assert_eq!(
        session.close_code,
        Some(blazedb_protocol::CloseCode::Unauthorized)
    );

    let mut session = device_link_after_hello(&mut pair);
    let policy = |n: usize| Message::Policy {
        only: vec![format!("c{n}")],
        except: vec![],
        filter: String::new(),
        exclude_fields: vec![],
    };
    for n in 0..crate::engine::MAX_POLICIES_PER_PERIOD as usize {
        session.on_message(&mut pair.logs[0], policy(n), None, pair.now);
        assert!(session.is_open());
    }
    session.on_message(&mut pair.logs[0], policy(99), None, pair.now);
    assert_eq!(
        session.close_code,
        Some(blazedb_protocol::CloseCode::ProtocolError)
    );
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Step {
    /// The server writes record `n` (insert, or update of team / title / hidden field).
    ServerWrite { n: u8, team: u8, hidden: bool },
    /// The server deletes record `n`.
    ServerDelete { n: u8 },
    /// The device edits the title of record `n` (if it holds it).
    DeviceEdit { n: u8 },
    /// The device moves record `n` to another team (writes are not checked here).
    DeviceMove { n: u8, team: u8 },
    /// The device writes the hidden field of record `n` (refused when writes are checked).
    DeviceWriteHidden { n: u8 },
    /// The device inserts record `n` in `team` (refused when checked and not its team).
    DeviceInsert { n: u8, team: u8 },
    /// The device's teams change while connected.
    Teams(u8),
    /// The device asks for something else (see [`policy`]).
    Policy(u8),
    /// The device reconnects (with the teams it has now).
    Reconnect,
}

const TEAMS: [&str; 3] = ["a", "b", "c"];

fn teams_of(mask: u8) -> Vec<&'static str> {
    TEAMS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..12u8, 0..3u8, any::<bool>()).prop_map(|(n, team, hidden)| Step::ServerWrite { n, team, hidden }),
        1 => (0..12u8).prop_map(|n| Step::ServerDelete { n }),
        2 => (0..12u8).prop_map(|n| Step::DeviceEdit { n }),
        1 => (0..12u8, 0..3u8).prop_map(|(n, team)| Step::DeviceMove { n, team }),
        1 => (0..12u8).prop_map(|n| Step::DeviceWriteHidden { n }),
        1 => (12..16u8, 0..3u8).prop_map(|(n, team)| Step::DeviceInsert { n, team }),
        2 => (0..8u8).prop_map(Step::Teams),
        1 => (0..4u8).prop_map(Step::Policy),
        1 => Just(Step::Reconnect),
    ]
}

/// The policies the model test switches between.
fn policy(n: u8) -> Option<SyncPolicy> {
    match n {
        0 => None,
        1 => Some(SyncPolicy::new().exclude_fields(["title"])),
        2 => Some(SyncPolicy::new().filter_json(r#"{"teamId": "a"}"#).unwrap()),
        _ => Some(SyncPolicy::new().collections(["comments"])),
    }
}

fn cases() -> u32 {
    if std::env::var_os("BLAZEDB_LONG").is_some() {
        1000
    } else {
        24
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Whatever the server writes and however the device's teams change, after each step
    /// the device holds exactly its visible subset of the server's records, each operation
    /// merged at most once, and nothing it was sent came back.
    #[test]
    fn a_scoped_device_always_holds_exactly_what_it_may_read(
        first in 0..8u8,
        checked in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut pair = Pair::new(Some(scope_for(&teams_of(first))));
        if checked {
            pair.sessions[0].options.write_scope = Some(write_scope_for(&teams_of(first)));
        }
        pair.connect();
        let mut current_policy = 0;
        for step in steps {
            match step {
                Step::ServerWrite { n, team, hidden } => {
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    let exists = pair.logs[0].live().contains_key(&key);
                    let team = TEAMS[usize::from(team)];
                    if !exists {
                        pair.logs[0].write_op(OpKind::Insert, "bugs", key.1, bug(team, "t"));
                    } else if hidden {
                        pair.logs[0].write_op(OpKind::Update, "bugs", key.1, fields! { "auditLog" => "x" });
                    } else {
                        pair.logs[0].write_op(OpKind::Update, "bugs", key.1, fields! { "teamId" => team });
                    }
                }
                Step::ServerDelete { n } => {
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    if pair.logs[0].live().contains_key(&key) {
                        pair.logs[0].write_op(OpKind::Delete, "bugs", key.1, Fields::new());
                    }
                }
                Step::DeviceEdit { n } => {
                    // A device that writes a field its own policy leaves out keeps its value.
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    if current_policy != 1 && pair.logs[1].live().contains_key(&key) {
                        pair.logs[1].write_op(OpKind::Update, "bugs", key.1, fields! { "title" => format!("d{n}") });
                    }
                }
                Step::DeviceMove { n, team } => {
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    if pair.logs[1].live().contains_key(&key) {
                        let team = TEAMS[usize::from(team)];
                        pair.logs[1].write_op(OpKind::Update, "bugs", key.1, fields! { "teamId" => team });
                    }
                }
                Step::DeviceWriteHidden { n } => {
                    // Unchecked, nothing would stop the device keeping what it wrote.
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    if checked && pair.logs[1].live().contains_key(&key) {
                        pair.logs[1].write_op(OpKind::Update, "bugs", key.1, fields! { "auditLog" => "forged" });
                    }
                }
                Step::DeviceInsert { n, team } => {
                    let key = ("bugs".to_owned(), id(u128::from(n)));
                    let anywhere = pair.logs[0].records.contains_key(&key)
                        || pair.logs[1].records.contains_key(&key);
                    if !anywhere {
                        let team = TEAMS[usize::from(team)];
                        pair.logs[1].write_op(OpKind::Insert, "bugs", key.1, fields! { "teamId" => team });
                    }
                }
                Step::Teams(mask) => {
                    if checked {
                        pair.sessions[0].options.write_scope = Some(write_scope_for(&teams_of(mask)));
                    }
                    pair.set_scope(Some(scope_for(&teams_of(mask))), PurgeReason::AccessChanged);
                }
                Step::Policy(n) => {
                    current_policy = n;
                    pair.set_policy(policy(n));
                }
                Step::Reconnect => pair.connect(),
            }
            pair.settle();
            pair.assert_device_holds_its_scope();
            // No echo: the server never merged one of its own operations back.
            prop_assert!(pair.logs[0].merges.keys().all(|op| op.origin == device_node()));
            if checked {
                // What the device may not write never stays on the server: no forged audit
                // log, and every bug in one of the device's teams or written by the server.
                let forged = Value::from("forged");
                let clean = pair.logs[0]
                    .records
                    .values()
                    .all(|state| state.fields.get("auditLog").is_none_or(|f| f.value != forged));
                prop_assert!(clean);
                prop_assert_eq!(
                    pair.logs[1].rejections.len() as u64,
                    pair.refused + pair.sessions[0].ops_refused
                );
            }
        }
    }
}
