//! The session rules of docs/protocol.md ("Session"), message by message, on a [`MemLog`].
//!
//! Each test drives one side ("us", node 1) of a connection: it hands the session the
//! peer's messages (node 2) and the engine's calls (`apply_inbound` and `pump` at the end of
//! a round, the clock for liveness and folded ranges), then looks at what the session asked
//! the connection to do and at the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use blazedb_core::{
    NodeId, OpId, OpKind, Operation, RecordState, SnapshotRecord, Stamp, Uuid, Value, VersionVector,
};
use blazedb_protocol::{Capabilities, CloseCode, Message, OpCheck, PROTOCOL_VERSION};

use super::{Output, Session, SessionLog};
use crate::engine::{
    BARRIER_NONCE, ConnectOptions, ECHO_FLUSH_AFTER, EngineOptions, MAX_PULLS_PER_PERIOD, Mode,
    PULL_PERIOD, PeerTrust, WINDOW,
};
use crate::fuzz::{MemLog, make_op};

const DB: &str = "bugs";

fn node(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

/// The side under test.
fn us() -> NodeId {
    node(1)
}

/// The other end of the connection.
fn peer() -> NodeId {
    node(2)
}

/// A node whose operations reach us by another link.
fn third() -> NodeId {
    node(3)
}

/// Operations `seqs` of `origin`.
fn ops_of(origin: NodeId, seqs: std::ops::RangeInclusive<u64>) -> Vec<Operation> {
    seqs.map(|seq| make_op(origin, seq, seq)).collect()
}

fn vector(entries: &[(NodeId, u64)]) -> VersionVector {
    entries.iter().copied().collect()
}

fn hello(node: NodeId, head: u64) -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node,
        database: DB.into(),
        capabilities: Capabilities::SUPPORTED,
        head,
    }
}

fn pull(from: u64, vector: VersionVector) -> Message {
    Message::Pull {
        from,
        vector,
        checks: Vec::new(),
    }
}

fn ops(from: u64, to: u64, ops: Vec<Operation>) -> Message {
    Message::Ops { from, to, ops }
}

fn ack(position: u64) -> Message {
    Message::ack(position)
}

fn snapshot(position: u64, part: u32, records: u64, vector: Option<VersionVector>) -> Message {
    let records: Vec<SnapshotRecord> = (0..records)
        .map(|i| SnapshotRecord {
            collection: "bugs".into(),
            id: Uuid::from_u128(1000 + u128::from(part) * 100 + u128::from(i)),
            state: RecordState::inserted(
                [("n".to_owned(), Value::Int(i as i64))].into(),
                Stamp {
                    lamport: 1,
                    node: peer(),
                },
            ),
        })
        .collect();
    Message::Snapshot {
        position,
        part,
        total: 10,
        records,
        vector,
    }
}

/// The messages the outputs send, a `Close` as the message the peer gets.
fn sent(outputs: &[Output]) -> Vec<Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.clone()),
            Output::Close(code, reason) => Some(Message::close(*code, reason.clone())),
            Output::End => None,
        })
        .collect()
}

/// The code the outputs close with; also checks that the connection then ends.
fn closed_with(outputs: &[Output]) -> Option<CloseCode> {
    let code = outputs.iter().find_map(|o| match o {
        Output::Close(code, _) => Some(*code),
        _ => None,
    });
    if code.is_some() {
        assert!(
            matches!(outputs.last(), Some(Output::End)),
            "a Close is followed by the end of the connection: {outputs:?}"
        );
    }
    code
}

/// One side of a connection: its session, its database and its clock.
struct Side {
    s: Session,
    log: MemLog,
    now: Instant,
}

impl Side {
    fn new(options: ConnectOptions) -> Side {
        let now = Instant::now();
        Side {
            s: Session::new(DB, options, now),
            log: MemLog::new(us()),
            now,
        }
    }

    fn with_mode(mode: Mode) -> Side {
        Side::new(ConnectOptions::new(DB).mode(mode))
    }

    /// Sends our Hello (dropping it from the outputs).
    fn started(mut self) -> Side {
        self.s.start(&self.log);
        self.s.take_outputs();
        self
    }

    /// Started, and the peer's Hello (head 0) read; what that sent is dropped.
    fn connected(self) -> Side {
        let mut side = self.started();
        side.recv(hello(peer(), 0));
        side
    }

    /// Connected, and the peer pulled everything (from 0, having nothing).
    fn streaming(self) -> Side {
        let mut side = self.connected();
        side.recv(pull(0, VersionVector::new()));
        side
    }

    /// Hands the session one message from the peer; what it asked for.
    fn recv(&mut self, message: Message) -> Vec<Output> {
        self.s.on_message(&mut self.log, message, None, self.now);
        self.s.take_outputs()
    }

    /// The end of an engine round: applies what arrived, streams, flushes what is due.
    fn round(&mut self) -> Vec<Output> {
        self.s.apply_inbound(&mut self.log);
        self.s.pump(&mut self.log, self.now);
        self.s.flush_if_due(self.now);
        self.s.take_outputs()
    }

    fn later(&mut self, by: Duration) {
        self.now += by;
    }

    /// The engine's timeout: liveness, then folded ranges that are due.
    fn tick(&mut self) -> Vec<Output> {
        self.s
            .check_liveness(&mut self.log, &EngineOptions::default(), self.now);
        self.s.flush_if_due(self.now);
        self.s.take_outputs()
    }

    fn set_mode(&mut self, mode: Mode) -> Vec<Output> {
        self.s.set_mode(&mut self.log, mode);
        self.s.take_outputs()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Hello
// ---------------------------------------------------------------------------------------------

#[test]
fn start_sends_hello_with_version_node_database_and_head() {
    let mut side = Side::with_mode(Mode::Bidirectional);
    side.log.write(2);
    side.log.write(1);
    side.s.start(&side.log);
    assert_eq!(
        sent(&side.s.take_outputs()),
        vec![Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node: us(),
            database: DB.into(),
            capabilities: Capabilities::SUPPORTED,
            head: 2,
        }]
    );
}

#[test]
fn ops_before_hello_close_the_connection() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert!(!side.s.is_open());
    assert!(side.round().is_empty());
    assert!(side.log.digests.is_empty(), "nothing is applied");
}

#[test]
fn pull_before_hello_closes_the_connection() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(pull(0, VersionVector::new()));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert!(side.s.outbound.is_none());
}

#[test]
fn snapshot_before_hello_closes_the_connection() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(snapshot(5, 1, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert!(side.log.records.is_empty(), "nothing is applied");
}

#[test]
fn enroll_closes_the_connection_with_a_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(Message::Enroll {
        token: "token".into(),
    });
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
}

#[test]
fn a_hello_naming_another_database_closes_with_unknown_database() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node: peer(),
        database: "users".into(),
        capabilities: Capabilities::SUPPORTED,
        head: 0,
    });
    assert_eq!(closed_with(&out), Some(CloseCode::UnknownDatabase));
    assert_eq!(side.s.peer, None);
}

#[test]
fn a_hello_with_our_own_node_id_closes_with_copied_database() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(hello(us(), 0));
    assert_eq!(closed_with(&out), Some(CloseCode::CopiedDatabase));
    assert_eq!(side.s.peer, None);
}

#[test]
fn a_hello_of_another_protocol_version_closes_with_version_mismatch() {
    let mut side = Side::with_mode(Mode::Bidirectional).started();
    let out = side.recv(Message::Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        node: peer(),
        database: DB.into(),
        capabilities: Capabilities::SUPPORTED,
        head: 0,
    });
    assert_eq!(closed_with(&out), Some(CloseCode::VersionMismatch));
    assert_eq!(side.s.peer, None);
}

#[test]
fn a_repeated_hello_from_the_same_node_is_ignored() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(hello(peer(), 9));
    assert!(out.is_empty(), "not answered, no second Pull: {out:?}");
    assert!(side.s.is_open());
    assert_eq!(side.s.peer, Some(peer()));
    assert_eq!(side.s.peer_head, 0, "it changes nothing");
}

#[test]
fn a_hello_naming_another_node_within_a_connection_closes_with_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(hello(third(), 0));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
}

#[test]
fn an_origin_link_refuses_a_hello_from_another_node() {
    let options = ConnectOptions::new(DB).trust(PeerTrust::Origin(third()));
    let mut side = Side::new(options).started();
    let out = side.recv(hello(peer(), 0));
    assert_eq!(closed_with(&out), Some(CloseCode::Unauthorized));
    assert_eq!(side.s.peer, None);
}

#[test]
fn an_origin_link_accepts_a_hello_from_its_node() {
    let options = ConnectOptions::new(DB).trust(PeerTrust::Origin(peer()));
    let mut side = Side::new(options).started();
    let out = side.recv(hello(peer(), 0));
    assert_eq!(closed_with(&out), None);
    assert_eq!(side.s.peer, Some(peer()));
}

// ---------------------------------------------------------------------------------------------
// 2. Pull, and copied databases
// ---------------------------------------------------------------------------------------------

#[test]
fn after_hello_a_receiving_side_pulls_from_its_cursor_with_its_vector_and_checks() {
    let mut side = Side::with_mode(Mode::Bidirectional);
    side.log.write(2);
    let theirs = ops_of(peer(), 1..=3);
    side.log.apply(peer(), &theirs, 7, None).unwrap();
    let mut side = side.started();
    let out = side.recv(hello(peer(), 9));
    assert_eq!(
        sent(&out),
        vec![Message::Pull {
            from: 7,
            vector: vector(&[(us(), 2), (peer(), 3)]),
            checks: vec![
                OpCheck {
                    node: peer(),
                    seq: 3,
                    digest: theirs[2].digest(),
                },
                OpCheck {
                    node: us(),
                    seq: 2,
                    digest: make_op(us(), 2, 2).digest(),
                },
            ],
        }]
    );
    assert_eq!(side.s.cursor, 7);
    assert_eq!(side.s.cursor_at_hello, 7);
    assert_eq!(side.s.peer_head, 9);
}

#[test]
fn a_write_only_side_sends_no_pull() {
    let mut side = Side::with_mode(Mode::WriteOnly).started();
    assert!(side.recv(hello(peer(), 4)).is_empty());
    assert_eq!(side.s.peer, Some(peer()));
}

#[test]
fn a_read_only_side_ignores_a_pull() {
    let mut side = Side::with_mode(Mode::ReadOnly).connected();
    side.log.write(1);
    assert!(side.recv(pull(0, VersionVector::new())).is_empty());
    assert!(
        side.round().is_empty(),
        "no Ops from a side that does not push"
    );
    assert!(side.s.outbound.is_none());
}

#[test]
fn a_pull_past_our_head_closes_with_copied_database() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(1);
    side.log.write(1);
    let out = side.recv(pull(3, VersionVector::new()));
    assert_eq!(closed_with(&out), Some(CloseCode::CopiedDatabase));
    assert!(side.s.outbound.is_none());
}

#[test]
fn a_pull_up_to_our_head_streams() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(1);
    side.log.write(1);
    assert!(side.recv(pull(2, VersionVector::new())).is_empty());
    assert!(side.s.is_open());
    assert_eq!(side.s.acked, 2, "a Pull's from counts as acknowledged");
    assert!(side.round().is_empty(), "nothing after the head");
}

#[test]
fn a_pull_whose_check_digest_differs_closes_with_copied_database() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(2);
    let mut forged = make_op(us(), 2, 2);
    forged.fields.insert("n".into(), Value::Int(99));
    let out = side.recv(Message::Pull {
        from: 0,
        vector: vector(&[(us(), 2)]),
        checks: vec![OpCheck {
            node: us(),
            seq: 2,
            digest: forged.digest(),
        }],
    });
    assert_eq!(closed_with(&out), Some(CloseCode::CopiedDatabase));
    assert!(side.s.outbound.is_none(), "nothing is streamed");
    assert_eq!(side.log.own_confirmed, 0);
}

#[test]
fn a_matching_check_of_our_own_operation_confirms_it() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(3);
    let out = side.recv(Message::Pull {
        from: 1,
        vector: vector(&[(us(), 2)]),
        checks: vec![OpCheck {
            node: us(),
            seq: 2,
            digest: make_op(us(), 2, 2).digest(),
        }],
    });
    assert!(out.is_empty());
    assert_eq!(side.log.own_confirmed, 2);
    assert!(side.s.outbound.is_some());
}

#[test]
fn a_check_of_an_operation_we_lack_is_not_compared() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(Message::Pull {
        from: 0,
        vector: vector(&[(third(), 4)]),
        checks: vec![OpCheck {
            node: third(),
            seq: 4,
            digest: make_op(third(), 4, 4).digest(),
        }],
    });
    assert!(out.is_empty());
    assert!(side.s.is_open());
}

#[test]
fn more_than_64_pulls_within_10_s_close_with_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    for _ in 0..MAX_PULLS_PER_PERIOD {
        assert!(side.recv(pull(0, VersionVector::new())).is_empty());
        side.later(Duration::from_millis(100));
    }
    assert!(side.s.is_open());
    let out = side.recv(pull(0, VersionVector::new()));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
}

#[test]
fn pulls_spread_over_more_than_10_s_stay_under_the_limit() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    for _ in 0..3 {
        for _ in 0..MAX_PULLS_PER_PERIOD {
            assert!(side.recv(pull(0, VersionVector::new())).is_empty());
        }
        side.later(PULL_PERIOD);
    }
    assert!(side.s.is_open());
}

// ---------------------------------------------------------------------------------------------
// 3. Sending Ops
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pull_streams_the_log_after_from_leaving_out_what_its_vector_holds() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(2); // 1: us#1, us#2
    side.log
        .apply(third(), &ops_of(third(), 1..=2), 2, None)
        .unwrap(); // 2: third#1, third#2
    side.log.write(1); // 3: us#3
    side.recv(pull(0, vector(&[(us(), 1), (third(), 1)])));
    assert_eq!(
        sent(&side.round()),
        vec![ops(
            0,
            3,
            vec![
                make_op(us(), 2, 2),
                make_op(third(), 2, 2),
                make_op(us(), 3, 3)
            ]
        )]
    );
    assert_eq!(side.s.ops_sent, 3);
}

#[test]
fn ranges_are_contiguous_and_cover_whole_entries() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.batch_ops = 2;
    side.log.write(3); // 1
    side.log.skip_positions(2);
    side.log.write(1); // 4
    side.log.write(1); // 5
    side.log.write(2); // 6
    assert_eq!(
        sent(&side.round()),
        vec![
            ops(0, 1, ops_of(us(), 1..=3)),
            ops(1, 5, ops_of(us(), 4..=5)),
            ops(5, 6, ops_of(us(), 6..=7)),
        ]
    );
}

#[test]
fn a_stream_goes_on_with_new_entries_from_the_last_to() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    assert_eq!(sent(&side.round()), vec![ops(0, 1, ops_of(us(), 1..=1))]);
    assert!(side.round().is_empty(), "nothing new, nothing sent");
    side.log.write(1);
    assert_eq!(sent(&side.round()), vec![ops(1, 2, ops_of(us(), 2..=2))]);
}

#[test]
fn at_most_window_ops_are_in_flight_and_acks_open_the_window() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.batch_ops = 1;
    for _ in 0..WINDOW + 3 {
        side.log.write(1);
    }
    assert_eq!(sent(&side.round()).len(), WINDOW);
    assert!(side.round().is_empty(), "the window is full");
    assert!(side.recv(ack(2)).is_empty());
    assert_eq!(side.s.acked, 2);
    assert_eq!(side.s.last_ack, Some((2, side.now)));
    let out = sent(&side.round());
    assert_eq!(
        out,
        vec![
            ops(8, 9, ops_of(us(), 9..=9)),
            ops(9, 10, ops_of(us(), 10..=10))
        ],
        "two acknowledged, two more go"
    );
    side.recv(ack(10));
    assert_eq!(
        sent(&side.round()),
        vec![ops(10, 11, ops_of(us(), 11..=11))]
    );
    assert!(!side.s.idle(side.log.head()));
    side.recv(ack(11));
    assert!(side.s.idle(side.log.head()));
}

#[test]
fn a_new_pull_restarts_the_stream_at_its_from() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    side.log.write(1);
    side.log.write(1);
    assert_eq!(sent(&side.round()), vec![ops(0, 3, ops_of(us(), 1..=3))]);
    side.recv(pull(1, vector(&[(us(), 1)])));
    assert_eq!(
        sent(&side.round()),
        vec![ops(1, 3, ops_of(us(), 2..=3))],
        "what the earlier stream sent goes again"
    );
}

#[test]
fn with_forward_off_only_our_own_operations_are_sent() {
    let options = ConnectOptions::new(DB).forward(false);
    let mut side = Side::new(options).streaming();
    side.log.write(1); // 1
    side.log
        .apply(third(), &ops_of(third(), 1..=1), 1, None)
        .unwrap(); // 2
    side.log.write(1); // 3
    assert_eq!(
        sent(&side.round()),
        vec![ops(0, 3, vec![make_op(us(), 1, 1), make_op(us(), 2, 2)])]
    );
}

#[test]
fn operations_received_from_the_peer_are_not_sent_back() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    assert_eq!(sent(&side.round()), vec![ack(1)], "the echo waits");
    assert_eq!(side.log.head(), 1, "the peer's operation is entry 1 here");
    side.log.write(1);
    let ours = side.log.ops_between(1, 2);
    assert_eq!(ours.len(), 1);
    assert_eq!(
        sent(&side.round()),
        vec![ops(0, 2, ours)],
        "entry 1 rides along, without the peer's own operation"
    );
}

#[test]
fn a_range_with_nothing_for_the_peer_is_flushed_after_echo_flush_after() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    assert_eq!(sent(&side.round()), vec![ack(1)]);
    let due = side.now + ECHO_FLUSH_AFTER;
    assert_eq!(side.s.flush_due(), Some(due));
    assert!(
        side.s.idle(side.log.head()),
        "the peer has everything in a folded range: nothing is pending"
    );
    side.later(ECHO_FLUSH_AFTER - Duration::from_millis(1));
    assert!(side.tick().is_empty());
    assert!(side.round().is_empty());
    side.later(Duration::from_millis(1));
    assert_eq!(sent(&side.tick()), vec![ops(0, 1, Vec::new())]);
    assert_eq!(side.s.flush_due(), None);
    side.recv(ack(1));
    assert!(side.s.idle(side.log.head()));
    assert_eq!(side.s.skipped_to, 1);
}

#[test]
fn a_ping_is_answered_after_the_folded_ranges() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    side.round();
    assert_eq!(
        sent(&side.recv(Message::Ping { nonce: 7 })),
        vec![ops(0, 1, Vec::new()), Message::Pong { nonce: 7 }]
    );
}

#[test]
fn a_ping_is_answered_with_a_pong_of_the_same_nonce() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    assert_eq!(
        sent(&side.recv(Message::Ping { nonce: 42 })),
        vec![Message::Pong { nonce: 42 }]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Receiving Ops
// ---------------------------------------------------------------------------------------------

#[test]
fn ops_are_applied_with_the_cursor_and_acknowledged_after() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    assert!(side.recv(ops(0, 4, ops_of(peer(), 1..=2))).is_empty());
    assert_eq!(side.log.applies, 0, "applied at the end of the round");
    assert_eq!(side.s.peer_head, 4);
    assert_eq!(sent(&side.round()), vec![ack(4)]);
    assert_eq!(side.log.cursor(peer()), 4, "stored with the operations");
    assert_eq!(side.s.cursor, 4);
    assert!(side.log.has(OpId {
        origin: peer(),
        seq: 2
    }));
    assert_eq!(side.s.ops_applied, 2);
}

#[test]
fn consecutive_ops_are_applied_in_one_transaction() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 2, ops_of(peer(), 1..=1)));
    side.recv(ops(2, 5, ops_of(peer(), 2..=3)));
    assert_eq!(sent(&side.round()), vec![ack(5)]);
    assert_eq!(side.log.applies, 1);
    assert_eq!(side.log.entries.len(), 1);
    assert_eq!(side.log.cursor(peer()), 5);
}

#[test]
fn other_messages_apply_the_ops_before_them() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 2, ops_of(peer(), 1..=1)));
    assert_eq!(
        sent(&side.recv(Message::Ping { nonce: 1 })),
        vec![ack(2), Message::Pong { nonce: 1 }]
    );
}

#[test]
fn a_gap_pulls_again_once_and_ignores_the_rest_of_the_old_stream() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(3, 5, ops_of(peer(), 2..=2)));
    let out = sent(&side.round());
    assert!(
        matches!(out.as_slice(), [Message::Pull { from: 0, .. }]),
        "{out:?}"
    );
    side.recv(ops(5, 7, ops_of(peer(), 3..=3)));
    assert!(side.round().is_empty(), "no second Pull for the same gap");
    assert_eq!(side.s.cursor, 0);
    assert!(side.log.digests.is_empty());
    // The new stream starts at the cursor.
    side.recv(ops(0, 7, ops_of(peer(), 1..=3)));
    assert_eq!(sent(&side.round()), vec![ack(7)]);
    // A later gap pulls again.
    side.recv(ops(9, 10, ops_of(peer(), 5..=5)));
    let out = sent(&side.round());
    assert!(
        matches!(out.as_slice(), [Message::Pull { from: 7, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_duplicate_range_is_acknowledged_again_at_the_cursor() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 5, ops_of(peer(), 1..=2)));
    side.round();
    side.recv(ops(2, 5, ops_of(peer(), 2..=2)));
    assert_eq!(sent(&side.round()), vec![ack(5)]);
    assert_eq!(side.log.applies, 1, "nothing applied again");
    side.recv(ops(0, 3, ops_of(peer(), 1..=1)));
    assert_eq!(sent(&side.round()), vec![ack(5)]);
}

#[test]
fn an_overlapping_range_applies_only_what_is_missing() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 3, ops_of(peer(), 1..=2)));
    side.round();
    side.recv(ops(2, 6, ops_of(peer(), 2..=3)));
    assert_eq!(sent(&side.round()), vec![ack(6)]);
    assert_eq!(side.s.ops_applied, 3);
    assert_eq!(side.s.ops_duplicate, 1);
    assert!(side.log.merges.values().all(|n| *n == 1));
}

#[test]
fn an_empty_range_moves_the_cursor_unsaved_and_acknowledges() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 4, Vec::new()));
    assert_eq!(sent(&side.round()), vec![ack(4)]);
    assert_eq!(side.s.cursor, 4);
    assert!(side.s.cursor_unsaved);
    assert_eq!(side.log.cursor(peer()), 0, "not written for nothing");
    assert_eq!(side.log.applies, 0);
    side.s.save_cursor(&mut side.log);
    assert_eq!(side.log.cursor(peer()), 4);
    assert!(!side.s.cursor_unsaved);
}

#[test]
fn an_unsaved_cursor_is_saved_with_the_next_operations() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 4, Vec::new()));
    side.round();
    side.recv(ops(4, 6, ops_of(peer(), 1..=1)));
    assert_eq!(sent(&side.round()), vec![ack(6)]);
    assert_eq!(side.log.cursor(peer()), 6);
    assert!(!side.s.cursor_unsaved);
}

#[test]
fn a_write_only_side_ignores_ops_without_acknowledging() {
    let mut side = Side::with_mode(Mode::WriteOnly).connected();
    assert!(side.recv(ops(0, 2, ops_of(peer(), 1..=1))).is_empty());
    assert!(side.round().is_empty());
    assert!(side.log.digests.is_empty());
    assert_eq!(side.s.cursor, 0);
    assert_eq!(side.s.peer_head, 0);
    assert!(side.s.is_open());
}

#[test]
fn ops_and_a_snapshot_to_a_side_that_never_pulled_are_ignored_not_a_protocol_error() {
    let mut side = Side::with_mode(Mode::WriteOnly).connected();
    let mut out = side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    out.extend(side.recv(snapshot(3, 1, 1, Some(vector(&[(peer(), 1)])))));
    out.extend(side.round());
    assert!(out.is_empty(), "neither refused nor acknowledged: {out:?}");
    assert!(side.s.is_open());
    assert!(side.log.digests.is_empty() && side.log.records.is_empty());
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn an_origin_link_refuses_foreign_operations_and_applies_nothing_queued() {
    let options = ConnectOptions::new(DB).trust(PeerTrust::Origin(peer()));
    let mut side = Side::new(options).connected();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    let out = side.recv(ops(1, 2, ops_of(third(), 1..=1)));
    assert_eq!(closed_with(&out), Some(CloseCode::Unauthorized));
    assert!(side.round().is_empty());
    assert!(side.log.digests.is_empty(), "not even the earlier Ops");
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn an_origin_link_applies_its_nodes_operations() {
    let options = ConnectOptions::new(DB).trust(PeerTrust::Origin(peer()));
    let mut side = Side::new(options).connected();
    side.recv(ops(0, 1, ops_of(peer(), 1..=2)));
    assert_eq!(sent(&side.round()), vec![ack(1)]);
    assert_eq!(side.log.digests.len(), 2);
}

#[test]
fn a_duplicate_with_another_digest_closes_with_copied_database_and_applies_nothing() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    side.round();
    let mut other = make_op(peer(), 1, 1);
    other.kind = OpKind::Delete;
    other.fields.clear();
    side.recv(ops(0, 3, vec![other, make_op(peer(), 2, 2)]));
    assert_eq!(closed_with(&side.round()), Some(CloseCode::CopiedDatabase));
    assert!(!side.log.has(OpId {
        origin: peer(),
        seq: 2
    }));
    assert_eq!(side.log.cursor(peer()), 1);
}

#[test]
fn a_failed_apply_closes_with_internal_error_and_keeps_the_cursor() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.fail_next = true;
    side.recv(ops(0, 2, ops_of(peer(), 1..=1)));
    assert_eq!(closed_with(&side.round()), Some(CloseCode::InternalError));
    assert_eq!(side.log.cursor(peer()), 0);
    assert!(side.log.digests.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 5. Acks
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ack_is_informational_and_never_makes_anything_go_again() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    side.log.write(1);
    assert_eq!(sent(&side.round()).len(), 1);
    assert!(!side.s.idle(side.log.head()));
    side.recv(ack(1));
    assert!(side.round().is_empty(), "a partial Ack resends nothing");
    assert!(!side.s.idle(side.log.head()));
    side.recv(ack(2));
    assert!(side.round().is_empty());
    assert!(side.s.idle(side.log.head()));
    assert_eq!(side.s.lag(side.now), Duration::ZERO);
}

#[test]
fn a_stream_holds_compaction_back_to_what_the_peer_acknowledged() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    side.log.write(1);
    side.round();
    assert_eq!(side.s.streams_from(), Some(0));
    side.recv(ack(2));
    assert_eq!(side.s.streams_from(), Some(2));
}

#[test]
fn a_bogus_ack_is_a_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    side.log.write(1);
    side.round();
    side.log.write(1);
    let out = side.recv(ack(3));
    assert_eq!(
        closed_with(&out),
        Some(CloseCode::ProtocolError),
        "position 3 was never sent: {out:?}"
    );
    assert_eq!(side.s.acked, 0, "the bogus position is not taken");
}

#[test]
fn an_ack_may_repeat_the_pull_position_or_a_snapshot_position() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(1);
    side.log.write(1);
    side.recv(pull(2, vector(&[(us(), 2)])));
    assert!(side.round().is_empty());
    assert_eq!(closed_with(&side.recv(ack(2))), None, "its own cursor");
    side.log.write(1);
    side.log.compact(3);
    side.recv(pull(1, VersionVector::new()));
    side.round();
    assert_eq!(
        closed_with(&side.recv(ack(3))),
        None,
        "the snapshot's position"
    );
    assert_eq!(side.s.acked, 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Liveness and closing
// ---------------------------------------------------------------------------------------------

#[test]
fn a_silent_peer_is_pinged_then_closed() {
    let options = EngineOptions::default();
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let start = side.now;
    assert_eq!(side.s.liveness_due(&options), start + options.ping_after);
    side.later(options.ping_after - Duration::from_millis(1));
    assert!(side.tick().is_empty());
    side.later(Duration::from_millis(1));
    let out = sent(&side.tick());
    assert!(matches!(out.as_slice(), [Message::Ping { nonce }] if nonce & BARRIER_NONCE == 0));
    assert!(side.tick().is_empty(), "one ping");
    assert_eq!(side.s.liveness_due(&options), start + options.close_after);
    side.now = start + options.close_after;
    assert_eq!(closed_with(&side.tick()), Some(CloseCode::GoingAway));
    assert!(!side.s.is_open());
}

#[test]
fn a_session_closed_for_silence_saves_a_cursor_that_moved_in_memory() {
    let options = EngineOptions::default();
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 4, Vec::new()));
    assert_eq!(sent(&side.round()), vec![ack(4)]);
    assert_eq!(side.log.cursor(peer()), 0, "an empty range is saved later");
    side.later(options.close_after);
    assert_eq!(closed_with(&side.tick()), Some(CloseCode::GoingAway));
    assert_eq!(side.log.cursor(peer()), 4);
}

#[test]
fn a_session_closed_for_a_protocol_error_saves_a_cursor_that_moved_in_memory() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 4, Vec::new()));
    side.round();
    let out = side.recv(Message::Enroll { token: "x".into() });
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert_eq!(side.log.cursor(peer()), 4);
}

#[test]
fn a_peer_that_speaks_is_neither_pinged_nor_closed() {
    let options = EngineOptions::default();
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    for _ in 0..5 {
        side.later(options.ping_after - Duration::from_millis(1));
        side.recv(Message::Pong { nonce: 3 });
        assert!(side.tick().is_empty());
    }
    assert!(side.s.is_open());
}

#[test]
fn a_barrier_is_answered_when_its_pong_arrives() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    assert_eq!(side.s.barrier(), Some(1));
    assert_eq!(
        sent(&side.s.take_outputs()),
        vec![Message::Ping {
            nonce: BARRIER_NONCE | 1
        }]
    );
    assert_eq!(side.s.barrier(), Some(2));
    side.recv(Message::Pong { nonce: 5 });
    assert_eq!(side.s.barrier, 0, "a keepalive Pong is no barrier");
    side.recv(Message::Pong {
        nonce: BARRIER_NONCE | 1,
    });
    assert_eq!(side.s.barrier, 1);
    side.recv(Message::Pong {
        nonce: BARRIER_NONCE | 2,
    });
    assert_eq!(side.s.barrier, 2);
}

#[test]
fn a_barrier_pong_follows_the_ops_before_it() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.s.barrier();
    side.s.take_outputs();
    side.recv(ops(0, 3, ops_of(peer(), 1..=1)));
    side.recv(Message::Pong {
        nonce: BARRIER_NONCE | 1,
    });
    assert_eq!(side.s.barrier, 1);
    assert_eq!(side.log.cursor(peer()), 3, "applied before the Pong counts");
}

#[test]
fn a_close_from_the_peer_ends_the_session_without_an_answer() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    let out = side.recv(Message::close(CloseCode::Normal, "done"));
    assert!(matches!(out.as_slice(), [Output::End]), "{out:?}");
    assert!(!side.s.is_open());
    assert_eq!(side.s.peer_close_code, Some(CloseCode::Normal));
    assert_eq!(side.s.close_code, None);
    assert!(side.s.closed_reason.as_deref().unwrap().contains("done"));
    assert!(side.s.outbound.is_none());
}

#[test]
fn a_close_from_the_peer_applies_the_ops_before_it() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 2, ops_of(peer(), 1..=1)));
    let out = side.recv(Message::close(CloseCode::GoingAway, "restart"));
    assert_eq!(sent(&out), vec![ack(2)]);
    assert_eq!(side.log.cursor(peer()), 2);
}

#[test]
fn nothing_is_handled_after_the_session_ended() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.s.close_with(CloseCode::Normal, "bye".into());
    let out = side.s.take_outputs();
    assert_eq!(closed_with(&out), Some(CloseCode::Normal));
    let received = side.s.messages_received;
    assert!(side.recv(Message::Ping { nonce: 1 }).is_empty());
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    side.log.write(1);
    assert!(side.round().is_empty());
    assert!(side.log.digests.len() == 1, "only our own write");
    assert_eq!(side.s.messages_received, received);
    assert_eq!(side.s.barrier(), None);
    side.s.close_with(CloseCode::Normal, "again".into());
    assert!(side.s.take_outputs().is_empty(), "one Close, one End");
}

// ---------------------------------------------------------------------------------------------
// Changing a mode while connected
// ---------------------------------------------------------------------------------------------

#[test]
fn switching_to_receiving_pulls_again_from_the_durable_cursor() {
    let mut side = Side::with_mode(Mode::WriteOnly);
    side.log
        .apply(peer(), &ops_of(peer(), 1..=1), 3, None)
        .unwrap();
    let mut side = side.connected();
    let out = sent(&side.set_mode(Mode::Bidirectional));
    assert!(
        matches!(out.as_slice(), [Message::Pull { from: 3, vector, .. }] if vector.get(peer()) == 1),
        "{out:?}"
    );
    side.recv(ops(3, 4, ops_of(peer(), 2..=2)));
    assert_eq!(sent(&side.round()), vec![ack(4)]);
}

#[test]
fn switching_to_write_only_ignores_ops_that_still_arrive() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(ops(0, 1, ops_of(peer(), 1..=1)));
    assert!(
        side.set_mode(Mode::WriteOnly).len() == 1,
        "what was queued is applied first"
    );
    assert_eq!(side.log.cursor(peer()), 1);
    side.recv(ops(1, 2, ops_of(peer(), 2..=2)));
    assert!(side.round().is_empty());
    assert_eq!(side.log.cursor(peer()), 1);
}

#[test]
fn switching_to_read_only_stops_the_stream() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    assert!(side.set_mode(Mode::ReadOnly).is_empty());
    side.log.write(1);
    assert!(side.round().is_empty());
    assert!(side.s.outbound.is_none());
}

#[test]
fn switching_to_sending_resumes_from_what_the_peer_acknowledged() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.batch_ops = 1;
    for _ in 0..3 {
        side.log.write(1);
    }
    assert_eq!(sent(&side.round()).len(), 3);
    side.recv(ack(2));
    side.set_mode(Mode::ReadOnly);
    side.log.write(1);
    side.set_mode(Mode::Bidirectional);
    assert_eq!(
        sent(&side.round()),
        vec![
            ops(2, 3, ops_of(us(), 3..=3)),
            ops(3, 4, ops_of(us(), 4..=4))
        ]
    );
}

#[test]
fn a_side_that_starts_sending_streams_from_the_pull_it_ignored() {
    let mut side = Side::with_mode(Mode::ReadOnly).connected();
    side.log.write(1);
    side.log.write(1);
    side.recv(pull(1, vector(&[(us(), 1)])));
    assert!(side.round().is_empty());
    assert!(
        side.set_mode(Mode::Bidirectional).is_empty(),
        "it already pulled"
    );
    assert_eq!(sent(&side.round()), vec![ops(1, 2, ops_of(us(), 2..=2))]);
}

// ---------------------------------------------------------------------------------------------
// 7. Snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pull_before_the_log_start_gets_a_snapshot_then_ops_from_its_position() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.snapshot_part_records = 2;
    side.log.write(1);
    side.log.write(1);
    side.log.write(1);
    side.log.compact(2);
    side.recv(pull(1, VersionVector::new()));
    let out = sent(&side.round());
    let [
        Message::Snapshot {
            position: 3,
            part: 1,
            total: 3,
            records: first,
            vector: None,
        },
        Message::Snapshot {
            position: 3,
            part: 2,
            total: 3,
            records: second,
            vector: Some(v),
        },
    ] = out.as_slice()
    else {
        panic!("expected two parts: {out:?}");
    };
    assert_eq!((first.len(), second.len()), (2, 1));
    assert_eq!(*v, vector(&[(us(), 3)]));
    assert_eq!(
        side.s.outbound.as_ref().unwrap().in_flight.len(),
        1,
        "until Ack(3)"
    );
    side.log.write(1);
    assert_eq!(
        sent(&side.round()),
        vec![ops(3, 4, ops_of(us(), 4..=4))],
        "then the log after the snapshot's position"
    );
}

#[test]
fn a_link_that_does_not_forward_closes_instead_of_sending_a_snapshot() {
    let options = ConnectOptions::new(DB).forward(false);
    let mut side = Side::new(options).connected();
    side.log.write(1);
    side.log.write(1);
    side.log.write(1);
    side.log.compact(2);
    side.recv(pull(1, VersionVector::new()));
    let out = side.round();
    assert_eq!(closed_with(&out), Some(CloseCode::InternalError));
    assert!(
        !sent(&out)
            .iter()
            .any(|m| matches!(m, Message::Snapshot { .. })),
        "{out:?}"
    );
    assert!(side.s.compacted_past_peer);
    let reason = side.s.closed_reason.clone().unwrap();
    assert!(
        reason.contains("compacted past position 1") && reason.contains("cannot help"),
        "{reason}"
    );
}

#[test]
fn a_link_that_does_not_forward_keeps_the_log_from_what_the_peer_certainly_stores() {
    let options = ConnectOptions::new(DB).forward(false);
    let mut side = Side::new(options).connected();
    side.recv(pull(0, VersionVector::new()));
    assert_eq!(
        side.log.kept.get(&peer()),
        Some(&0),
        "stored at the first Pull, before anything can be compacted"
    );
    side.log.write(1);
    assert_eq!(sent(&side.round()), vec![ops(0, 1, ops_of(us(), 1..=1))]);
    // Entry 2 holds only another node's operation: nothing for the peer, an empty range.
    side.log
        .apply(third(), &ops_of(third(), 1..=1), 1, None)
        .unwrap();
    side.round();
    side.later(ECHO_FLUSH_AFTER);
    assert_eq!(sent(&side.tick()), vec![ops(1, 2, Vec::new())]);
    side.recv(ack(2));
    side.s.save_cursor(&mut side.log);
    assert_eq!(
        side.log.kept.get(&peer()),
        Some(&1),
        "the peer stores the cursor of the range with operations; the empty one's may be unsaved"
    );
}

#[test]
fn a_link_that_forwards_keeps_nothing_for_its_peer() {
    let mut side = Side::with_mode(Mode::Bidirectional).streaming();
    side.log.write(1);
    side.round();
    side.recv(ack(1));
    side.s.save_cursor(&mut side.log);
    assert!(side.log.kept.is_empty(), "it can send a snapshot instead");
}

#[test]
fn a_pull_at_the_log_start_gets_ops() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.write(1);
    side.log.write(1);
    side.log.compact(1);
    side.recv(pull(1, VersionVector::new()));
    assert_eq!(sent(&side.round()), vec![ops(1, 2, ops_of(us(), 2..=2))]);
}

#[test]
fn snapshot_parts_go_at_most_window_unacknowledged() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.snapshot_part_records = 1;
    for i in 0..WINDOW as u128 + 2 {
        side.log.records.insert(
            ("bugs".into(), Uuid::from_u128(100 + i)),
            RecordState::default(),
        );
    }
    side.log.write(1);
    side.log.compact(1);
    side.recv(pull(0, VersionVector::new()));
    assert_eq!(sent(&side.round()).len(), WINDOW);
    assert!(side.round().is_empty());
    side.recv(Message::SnapshotAck { part: 1 });
    let out = sent(&side.round());
    assert!(
        matches!(out.as_slice(), [Message::Snapshot { part: 9, .. }]),
        "{out:?}"
    );
    side.recv(Message::SnapshotAck { part: 9 });
    let out = sent(&side.round());
    assert!(
        matches!(
            out.as_slice(),
            [
                Message::Snapshot { part: 10, .. },
                Message::Snapshot {
                    part: 11,
                    vector: Some(_),
                    ..
                }
            ]
        ),
        "{out:?}"
    );
}

#[test]
fn snapshot_parts_in_order_are_applied_and_the_last_moves_the_cursor() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(snapshot(9, 1, 2, None));
    assert_eq!(sent(&out), vec![Message::SnapshotAck { part: 1 }]);
    assert_eq!(
        side.log.records.len(),
        2,
        "each part in its own transaction"
    );
    assert_eq!(side.s.cursor, 0, "only the last part moves the cursor");
    assert_eq!(side.s.snapshot_in.as_ref().map(|s| s.records), Some(2));
    let out = side.recv(snapshot(9, 2, 1, Some(vector(&[(peer(), 4)]))));
    assert_eq!(sent(&out), vec![Message::SnapshotAck { part: 2 }, ack(9)]);
    assert_eq!(side.s.cursor, 9);
    assert_eq!(side.log.cursor(peer()), 9);
    assert!(side.log.has(OpId {
        origin: peer(),
        seq: 4
    }));
    assert!(side.s.snapshot_in.is_none());
    side.recv(ops(9, 10, ops_of(peer(), 5..=5)));
    assert_eq!(sent(&side.round()), vec![ack(10)]);
}

#[test]
fn an_out_of_order_snapshot_part_closes_with_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(snapshot(9, 1, 1, None));
    let out = side.recv(snapshot(9, 3, 1, None));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert_eq!(
        side.log.records.len(),
        1,
        "the part out of order is not applied"
    );
}

#[test]
fn a_snapshot_that_does_not_start_with_part_one_closes_with_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    let out = side.recv(snapshot(9, 2, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn a_part_of_another_position_closes_with_protocol_error() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(snapshot(9, 1, 1, None));
    let out = side.recv(snapshot(10, 2, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), Some(CloseCode::ProtocolError));
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn a_first_part_replaces_a_snapshot_under_way() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.recv(snapshot(9, 1, 1, None));
    side.recv(snapshot(9, 2, 1, None));
    side.recv(snapshot(12, 1, 1, None));
    let out = side.recv(snapshot(12, 2, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), None);
    assert_eq!(side.log.cursor(peer()), 12);
}

#[test]
fn an_origin_link_refuses_a_snapshot() {
    let options = ConnectOptions::new(DB).trust(PeerTrust::Origin(peer()));
    let mut side = Side::new(options).connected();
    let out = side.recv(snapshot(9, 1, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), Some(CloseCode::Unauthorized));
    assert!(side.log.records.is_empty());
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn a_write_only_side_ignores_a_snapshot() {
    let mut side = Side::with_mode(Mode::WriteOnly).connected();
    let out = side.recv(snapshot(9, 1, 1, Some(vector(&[(peer(), 1)]))));
    assert!(out.is_empty());
    assert!(side.log.records.is_empty());
    assert_eq!(side.log.cursor(peer()), 0);
}

#[test]
fn a_failed_snapshot_part_closes_with_internal_error_and_keeps_the_cursor() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.log.fail_next = true;
    let out = side.recv(snapshot(9, 1, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), Some(CloseCode::InternalError));
    assert_eq!(side.log.cursor(peer()), 0);
}

// ---------------------------------------------------------------------------------------------
// Where the session and docs/protocol.md disagree (see the ignore reasons)
// ---------------------------------------------------------------------------------------------

#[test]
fn any_message_before_hello_closes_the_connection() {
    for message in [
        Message::Ping { nonce: 1 },
        Message::Pong { nonce: 1 },
        ack(1),
        Message::SnapshotAck { part: 1 },
    ] {
        let mut side = Side::with_mode(Mode::Bidirectional).started();
        let out = side.recv(message.clone());
        assert_eq!(
            closed_with(&out),
            Some(CloseCode::ProtocolError),
            "{message:?}: {out:?}"
        );
    }
}

#[test]
fn after_switching_back_to_receiving_stale_ranges_are_ignored_without_pulling_again() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    side.set_mode(Mode::WriteOnly);
    let out = sent(&side.set_mode(Mode::Bidirectional));
    assert!(matches!(out.as_slice(), [Message::Pull { from: 0, .. }]));
    // The rest of the stream of the first Pull, sent while we ignored Ops.
    side.recv(ops(4, 6, ops_of(peer(), 3..=3)));
    let out = side.round();
    assert!(out.is_empty(), "a second Pull: {out:?}");
}

#[test]
fn parts_of_a_snapshot_abandoned_by_a_new_pull_are_ignored() {
    let mut side = Side::with_mode(Mode::Bidirectional).connected();
    assert_eq!(
        sent(&side.recv(snapshot(9, 1, 1, None))),
        vec![Message::SnapshotAck { part: 1 }]
    );
    side.set_mode(Mode::WriteOnly);
    assert!(side.recv(snapshot(9, 2, 1, None)).is_empty(), "ignored");
    let out = sent(&side.set_mode(Mode::Bidirectional));
    assert!(matches!(out.as_slice(), [Message::Pull { from: 0, .. }]));
    // The rest of the first snapshot, sent before the peer read the new Pull.
    let out = side.recv(snapshot(9, 3, 1, Some(vector(&[(peer(), 1)]))));
    assert_eq!(closed_with(&out), None, "{out:?}");
    // Then the new snapshot.
    side.recv(snapshot(11, 1, 1, None));
    let out = side.recv(snapshot(11, 2, 1, Some(vector(&[(peer(), 2)]))));
    assert_eq!(sent(&out), vec![Message::SnapshotAck { part: 2 }, ack(11)]);
}
