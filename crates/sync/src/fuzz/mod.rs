//! Bodies of fuzz targets, kept here so that they build and run with the crate's own tests
//! (the cargo-fuzz crate only calls them), and [`MemLog`] (in `model`), the in-memory database
//! that they and the session's unit tests run [`Session`]s on.

// A test harness: its assertions are what it is for, so it panics on purpose, and it indexes
// its two-element arrays by side (0 or 1) where `get` would only hide a harness bug.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use blazedb_core::{NodeId, Operation, Uuid};
use blazedb_protocol::{CloseCode, Message};

mod model;

pub(crate) use model::{MemLog, make_op};

use crate::engine::session::{Output, Session, SessionLog};
use crate::engine::{ConnectOptions, EngineOptions, MAX_PULLS_PER_PERIOD, Mode, PeerTrust, WINDOW};

// ---------------------------------------------------------------------------------------------
// Two nodes and their sessions
// ---------------------------------------------------------------------------------------------

/// The database name both nodes use.
const DB: &str = "db";

/// Rounds [`sessions`] may take to reach quiescence after healing.
const QUIESCENCE_ROUNDS: usize = 10_000;

/// How far the time step moves the clock, by its parameter.
const TIME_STEPS: [Duration; 16] = [
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_millis(199),
    Duration::from_millis(200),
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(14),
    Duration::from_secs(15),
    Duration::from_secs(16),
    Duration::from_secs(30),
    Duration::from_secs(44),
    Duration::from_secs(45),
    Duration::from_secs(46),
    Duration::from_secs(60),
];

const MODES: [Mode; 3] = [Mode::Bidirectional, Mode::ReadOnly, Mode::WriteOnly];

/// The node ids of A, B and the third node C.
fn node_id(side: usize) -> NodeId {
    NodeId(Uuid::from_u128(0xA + side as u128))
}

/// How a connection between A and B runs.
#[derive(Debug, Clone, Copy)]
struct LinkConfig {
    modes: [Mode; 2],
    /// A server's link to a device: A accepts only B's own operations
    /// (`PeerTrust::Origin(B)`), and B sends only its own (`forward` off).
    device: bool,
}

impl LinkConfig {
    const DEFAULT: LinkConfig = LinkConfig {
        modes: [Mode::Bidirectional, Mode::Bidirectional],
        device: false,
    };

    fn from_byte(c: u8) -> LinkConfig {
        LinkConfig {
            modes: [MODES[usize::from(c % 3)], MODES[usize::from(c / 3 % 3)]],
            device: c / 9 % 2 == 1,
        }
    }

    fn options(self, side: usize) -> ConnectOptions {
        let options = ConnectOptions::new(DB).mode(self.modes[side]);
        match (self.device, side) {
            (true, 0) => options.trust(PeerTrust::Origin(node_id(1))),
            (true, _) => options.forward(false),
            (false, _) => options,
        }
    }
}

/// What travels to one side: a message, or the end of the connection (the relay closed).
enum Wire {
    Message(Message),
    Closed,
}

/// One connection between A (side 0) and B (side 1).
struct Link {
    config: LinkConfig,
    sessions: [Session; 2],
    /// What is on its way to each side, in order.
    queues: [VecDeque<Wire>; 2],
    /// The relay closed (a session ended): sending fails from now on.
    closed: bool,
    /// `Pull`s each side received on this connection.
    pulls: [u32; 2],
    /// Each side stopped receiving at some point on this connection, so the stream it gets
    /// may have gaps (and it may pull again).
    paused: [bool; 2],
    /// Each side got a `Snapshot` part (never the server on a device link), and one
    /// numbered 2 or more twice.
    snapshots: [bool; 2],
    part_twice: [bool; 2],
    /// Each side's failed transactions when the connection started.
    failures_at_start: [u64; 2],
}

struct Harness {
    logs: [MemLog; 2],
    /// C's operations made so far: C's op log holds operation `n` at position `n`.
    c_made: u64,
    link: Link,
    now: Instant,
    options: EngineOptions,
    /// A link with `forward` off was used: a cursor may have passed operations that the
    /// peer did not send (they reach the node from C directly).
    unforwarded: bool,
    /// Per side, the peer's log positions already checked against the side's cursor.
    verified: [u64; 2],
    /// While delivering a `Hello` or changing a mode, a `Pull` is expected.
    pull_expected: bool,
    /// An op log was compacted: a node may have operations by a snapshot (their effect and
    /// their ids in its version vector, not the operations).
    compacted: bool,
    /// Per side, a compaction dropped entries past the peer's durable cursor while no link
    /// that sends no snapshot (a device's) had told it to keep them: only such a side may
    /// close a device link because its log was compacted past the peer.
    stranded: [bool; 2],
}

impl Harness {
    fn new(batch_ops: usize, snapshot_part_records: usize) -> Harness {
        let mut logs = [MemLog::new(node_id(0)), MemLog::new(node_id(1))];
        for log in &mut logs {
            log.batch_ops = batch_ops;
            log.snapshot_part_records = snapshot_part_records;
        }
        let now = Instant::now();
        let link = Harness::new_link(LinkConfig::DEFAULT, now);
        let mut h = Harness {
            logs,
            c_made: 0,
            link,
            now,
            options: EngineOptions::default(),
            unforwarded: false,
            verified: [0, 0],
            pull_expected: false,
            compacted: false,
            stranded: [false, false],
        };
        h.start_link();
        h
    }

    fn new_link(config: LinkConfig, now: Instant) -> Link {
        Link {
            config,
            sessions: [
                Session::new(DB, config.options(0), now),
                Session::new(DB, config.options(1), now),
            ],
            queues: [VecDeque::new(), VecDeque::new()],
            closed: false,
            pulls: [0, 0],
            paused: [false, false],
            snapshots: [false, false],
            part_twice: [false, false],
            failures_at_start: [0, 0],
        }
    }

    /// Both sides say hello on the current (new) link.
    fn start_link(&mut self) {
        self.unforwarded |= self.link.config.device;
        self.link.failures_at_start = [self.logs[0].failures, self.logs[1].failures];
        for side in 0..2 {
            self.link.sessions[side].start(&self.logs[side]);
            self.carry_out(side);
        }
    }

    /// Carries out what side `side`'s session asked for, as the engine's `Conn::carry_out`
    /// does on an in-memory relay.
    fn carry_out(&mut self, side: usize) {
        let outputs = self.link.sessions[side].take_outputs();
        let peer = 1 - side;
        for output in outputs {
            match output {
                Output::Send(message) => {
                    if self.link.closed {
                        let session = &mut self.link.sessions[side];
                        session.end("sending failed: the relay is closed".into());
                        session.take_outputs();
                        return;
                    }
                    if matches!(message, Message::Pull { .. }) {
                        assert!(
                            self.pull_expected || self.link.paused[side],
                            "side {side} pulled again although its stream had no reason \
                             to have a gap"
                        );
                    }
                    self.link.queues[peer].push_back(Wire::Message(message));
                }
                Output::Close(code, reason) => {
                    if !self.link.closed {
                        self.link.queues[peer]
                            .push_back(Wire::Message(Message::close(code, reason)));
                    }
                }
                Output::End => {
                    if !self.link.closed {
                        self.link.closed = true;
                        self.link.queues[peer].push_back(Wire::Closed);
                    }
                }
            }
        }
    }

    /// Hands one message to side `side`'s session.
    fn hand(&mut self, side: usize, message: Message) {
        match message {
            Message::Pull { .. } => self.link.pulls[side] += 1,
            Message::Snapshot { .. } => self.link.snapshots[side] = true,
            _ => {}
        }
        self.pull_expected = matches!(message, Message::Hello { .. });
        let (session, log) = (&mut self.link.sessions[side], &mut self.logs[side]);
        session.on_message(log, message, None, self.now);
        self.carry_out(side);
        self.pull_expected = false;
    }

    /// Delivers the next thing queued for `side`; false when nothing is.
    fn deliver(&mut self, side: usize) -> bool {
        match self.link.queues[side].pop_front() {
            None => false,
            Some(Wire::Message(message)) => {
                self.hand(side, message);
                true
            }
            Some(Wire::Closed) => {
                let (session, log) = (&mut self.link.sessions[side], &mut self.logs[side]);
                session.apply_inbound(log);
                session.save_cursor(log);
                session.end("the other end closed the connection".into());
                self.carry_out(side);
                true
            }
        }
    }

    /// Delivers the next message queued for `side` twice.
    fn duplicate(&mut self, side: usize) {
        match self.link.queues[side].front() {
            Some(Wire::Message(message)) => {
                if matches!(message, Message::Snapshot { part, .. } if *part >= 2) {
                    self.link.part_twice[side] = true;
                }
                let copy = message.clone();
                self.deliver(side);
                self.hand(side, copy);
            }
            Some(Wire::Closed) => {
                self.deliver(side);
            }
            None => {}
        }
    }

    /// The end of an engine round on `side`: apply what arrived, stream, flush what is due.
    fn round(&mut self, side: usize) {
        let (session, log) = (&mut self.link.sessions[side], &mut self.logs[side]);
        session.apply_inbound(log);
        session.pump(log, self.now);
        session.flush_if_due(self.now);
        self.carry_out(side);
    }

    /// Moves the clock on; the engine's timeout checks liveness and flushes folded ranges.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        for side in 0..2 {
            let session = &mut self.link.sessions[side];
            session.check_liveness(&mut self.logs[side], &self.options, self.now);
            session.flush_if_due(self.now);
            self.carry_out(side);
        }
    }

    /// The connection drops: each side applies what it queued and saves its cursor, as the
    /// engine does when its relay reports the end; what was on the wire is lost. Then a new
    /// connection starts.
    fn reconnect(&mut self, config: LinkConfig) {
        for side in 0..2 {
            let (session, log) = (&mut self.link.sessions[side], &mut self.logs[side]);
            session.apply_inbound(log);
            session.save_cursor(log);
            session.end("the connection dropped".into());
            session.take_outputs();
        }
        self.check();
        self.link = Harness::new_link(config, self.now);
        self.start_link();
    }

    /// A connection both of whose sessions ended is replaced by a new one (a reconnect loop).
    fn settle(&mut self) {
        if self.link.sessions.iter().all(|s| !s.is_open()) {
            self.link = Harness::new_link(self.link.config, self.now);
            self.start_link();
        }
    }

    fn set_mode(&mut self, side: usize, mode: Mode) {
        let session = &mut self.link.sessions[side];
        if session.options.mode.receives() && !mode.receives() {
            self.link.paused[side] = true;
        }
        self.pull_expected = true;
        session.set_mode(&mut self.logs[side], mode);
        self.carry_out(side);
        self.pull_expected = false;
    }

    /// `n` more of C's operations reach `side` over another link (in C's order, from where
    /// that link's cursor stands). C's operation `n` sits at position `n` of its log and has
    /// Lamport time `n`, so every delivery of it carries the same operation.
    fn reach_from_c(&mut self, side: usize, n: u64) {
        let c = node_id(2);
        let from = self.logs[side].cursor(c);
        let to = from + n;
        self.c_made = self.c_made.max(to);
        let ops: Vec<Operation> = (from + 1..=to).map(|seq| make_op(c, seq, seq)).collect();
        // A storage failure meant for the session may hit C's link instead: C tries again
        // later, from the same cursor.
        let _ = self.logs[side].apply(c, &ops, to, None);
    }

    /// `side` drops its op-log entries up to `keep` positions before its head, but none that
    /// the connection still streams from and none after what a peer that cannot take a
    /// snapshot certainly has, as `SyncEngine::compact_oplog` does.
    fn compact(&mut self, side: usize, keep: u64) {
        let peer = 1 - side;
        let log = &mut self.logs[side];
        self.link.sessions[side].save_kept(log);
        let through = self.link.sessions[side]
            .streams_from()
            .into_iter()
            .chain(log.kept.values().copied())
            .fold(log.head().saturating_sub(keep), u64::min);
        let start = log.start();
        log.compact(through);
        self.compacted |= log.start() > start;
        let peer_has = self.logs[peer].cursor(node_id(side));
        if self.logs[side].start() > start.max(peer_has) {
            // The guarantee: a peer this side keeps its log for is never stranded (by this
            // compaction; an earlier one, before it was kept, may have).
            assert!(
                !self.logs[side].kept.contains_key(&node_id(peer)),
                "side {side} compacted through {} past position {peer_has}, which a peer \
                 that cannot take a snapshot has",
                self.logs[side].start()
            );
            self.stranded[side] = true;
        }
    }

    /// May side `side`'s session have closed the way it did?
    fn close_allowed(&self, side: usize) -> bool {
        let link = &self.link;
        match link.sessions[side].close_code {
            None | Some(CloseCode::Normal) | Some(CloseCode::GoingAway) => true,
            // The Pull flood limit (documented, and reached by switching modes often), or a
            // snapshot part that came twice (so out of order). Also, as docs/protocol.md
            // stands, a part of a snapshot that a side abandoned by pulling again after it
            // stopped and started receiving (stale parts have no rule like the gap rule of
            // Ops; see the ignored test `parts_of_a_snapshot_abandoned_by_a_new_pull_are_ignored`).
            Some(CloseCode::ProtocolError) => {
                link.pulls[side] > MAX_PULLS_PER_PERIOD || link.part_twice[side]
            }
            // A storage failure the harness made, or a device whose log was compacted past
            // the server's cursor before any device link told it to keep it (it sends no
            // snapshot; see `compact`).
            Some(CloseCode::InternalError) => {
                self.logs[side].failures > link.failures_at_start[side]
                    || (link.sessions[side].compacted_past_peer && self.stranded[side])
            }
            // A device never sends a snapshot, so the server never refuses one.
            Some(_) => false,
        }
    }

    /// The invariants that hold after every step.
    fn check(&mut self) {
        for side in 0..2 {
            let peer = 1 - side;
            let (log, peer_log) = (&self.logs[side], &self.logs[peer]);
            let session = &self.link.sessions[side];
            assert!(
                self.close_allowed(side),
                "side {side} closed with {:?}: {:?}",
                session.close_code,
                session.closed_reason
            );
            // A link with forward off lets a cursor pass other nodes' operations; a later
            // link that forwards then continues after them, ahead of a gap in their origin's
            // sequence (C's own link fills it).
            assert!(
                self.unforwarded || log.out_of_order == 0,
                "side {side} got an origin's ops out of order"
            );
            assert!(
                log.merges.values().all(|n| *n == 1),
                "side {side} merged an operation twice"
            );
            assert!(
                !(self.link.config.device && side == 0 && self.link.snapshots[0]),
                "a device sent its server a snapshot"
            );
            let durable = log.cursor(node_id(peer));
            assert!(
                durable <= peer_log.head(),
                "side {side}'s cursor {durable} is past the peer's head {}",
                peer_log.head()
            );
            let mut cursor = durable;
            if session.peer.is_some() {
                assert!(
                    session.cursor <= peer_log.head(),
                    "side {side}'s session cursor {} is past the peer's head {}",
                    session.cursor,
                    peer_log.head()
                );
                cursor = cursor.max(session.cursor);
            }
            // Everything up to the cursor is here (the cursor never runs ahead of its data).
            if cursor > self.verified[side] {
                for op in peer_log.ops_between(self.verified[side], cursor) {
                    if op.id.origin == node_id(peer) || !self.unforwarded {
                        assert!(
                            log.has(op.id),
                            "side {side}'s cursor {cursor} passed operation {} it lacks",
                            op.id
                        );
                    }
                }
                self.verified[side] = cursor;
            }
            assert!(
                session.acked <= log.head(),
                "side {side} acked past its head"
            );
            // What this side keeps its log for is what the peer really stores.
            if let Some(kept) = log.kept.get(&node_id(peer)) {
                assert!(
                    *kept <= peer_log.cursor(node_id(side)),
                    "side {side} keeps its log from {kept}, past the peer's durable cursor"
                );
            }
            if let Some(out) = &session.outbound {
                assert!(
                    out.in_flight.len() <= WINDOW,
                    "side {side}'s window overflowed"
                );
                assert!(
                    out.sent_to <= log.head(),
                    "side {side} streamed past its head"
                );
            }
        }
    }

    /// Everything delivered and streamed, folded ranges flushed: until nothing moves.
    fn quiesce(&mut self) {
        for _ in 0..QUIESCENCE_ROUNDS {
            let mut moved = false;
            for side in 0..2 {
                while self.deliver(side) {
                    moved = true;
                }
            }
            for side in 0..2 {
                self.round(side);
            }
            self.check();
            if self.link.queues.iter().any(|q| !q.is_empty()) {
                continue;
            }
            let due = self
                .link
                .sessions
                .iter()
                .filter_map(Session::flush_due)
                .max();
            match due {
                Some(due) => self.advance(due.saturating_duration_since(self.now)),
                None if !moved => return,
                None => {}
            }
        }
        panic!("no quiescence after {QUIESCENCE_ROUNDS} rounds");
    }

    /// The current connection, if both sides are on it, runs without faults until nothing
    /// moves. Unless a side stopped receiving on it (it then ignores what still arrives),
    /// both sides are idle (everything sent is acknowledged, nothing waits to be applied),
    /// and a side that receives from a peer that sends has caught up with the peer's log.
    fn settle_link(&mut self) {
        if !self.link.sessions.iter().all(Session::is_open) {
            return;
        }
        self.quiesce();
        if !self.link.sessions.iter().all(Session::is_open) || self.link.paused.contains(&true) {
            // A close the checks allowed, or a side that ignored Ops or parts.
            return;
        }
        for side in 0..2 {
            let peer = 1 - side;
            let (session, peer_session) = (&self.link.sessions[side], &self.link.sessions[peer]);
            assert!(
                session.idle(self.logs[side].head()),
                "side {side} is not idle on a settled connection"
            );
            if session.options.mode.receives() && peer_session.options.mode.sends() {
                assert_eq!(
                    session.cursor,
                    self.logs[peer].head(),
                    "side {side} did not catch up with the peer's log on a settled connection"
                );
            }
        }
    }

    /// No more faults: reconnect both ways, run until nothing moves, and check that A and B
    /// hold the same operations and every cursor stands at the peer's head.
    fn heal(&mut self) {
        for log in &mut self.logs {
            log.fail_next = false;
        }
        self.settle_link();
        if self.unforwarded {
            // A device's link relays nothing: C's other links bring C's operations.
            let c_made = self.c_made;
            for side in 0..2 {
                let have = self.logs[side].cursor(node_id(2));
                self.reach_from_c(side, c_made - have);
            }
        }
        self.reconnect(LinkConfig::DEFAULT);
        self.check();
        self.quiesce();
        let [a, b] = &self.logs;
        for side in 0..2 {
            let session = &self.link.sessions[side];
            assert!(
                session.is_open(),
                "side {side} closed: {:?}",
                session.closed_reason
            );
            assert_eq!(
                session.cursor,
                self.logs[1 - side].head(),
                "side {side} did not catch up with the peer's log"
            );
            assert!(
                session.idle(self.logs[side].head()),
                "side {side} is not idle"
            );
        }
        let (a_ops, b_ops): (BTreeSet<_>, BTreeSet<_>) =
            (a.digests.keys().collect(), b.digests.keys().collect());
        if self.compacted {
            // Operations that came in a snapshot are in the vector, not held one by one.
            for id in a_ops.iter().chain(&b_ops) {
                assert!(a.has(**id) && b.has(**id), "operation {id} is not on both");
            }
            for (id, digest) in &a.digests {
                if let Some(theirs) = b.digests.get(id) {
                    assert_eq!(digest, theirs, "A and B hold different operations {id}");
                }
            }
        } else {
            assert_eq!(a_ops, b_ops, "A and B hold different operations");
            assert_eq!(a.digests, b.digests, "A and B hold different digests");
        }
        assert_eq!(a.vector, b.vector, "A and B have different version vectors");
        assert_eq!(a.records, b.records, "A and B have different records");
        for side in 0..2 {
            let (session, log) = (&mut self.link.sessions[side], &mut self.logs[side]);
            session.save_cursor(log);
        }
        for side in 0..2 {
            assert_eq!(
                self.logs[side].cursor(node_id(1 - side)),
                self.logs[1 - side].head(),
                "side {side}'s saved cursor is not at the peer's head"
            );
        }
    }
}

/// Runs two nodes, A and B, each on a [`MemLog`], connected by one connection at a time (two
/// message queues, one per direction, in order), through the steps `data` picks, then heals
/// and checks that they converged.
///
/// The first byte sets how many operations one `Ops` reads at most (`1 + (byte & 7)`, whole
/// entries, so streams have many `Ops` and fill the window) and how many records one snapshot
/// part holds (`1 + (byte >> 3 & 1)`, so snapshots have several parts). Each later byte `b` is one step,
/// chosen by `b & 0xF`, with parameter `p = b >> 4`:
///
/// | `b & 0xF` | step |
/// |---|---|
/// | 0, 1 | A (0) or B (1) writes `p % 4 + 1` operations in one entry; with `p >= 8` its op-log position first leaves a number out |
/// | 2, 3 | delivers up to `p % 4 + 1` of what is queued for A / B, in order (an `Ops` is queued for the next round) |
/// | 4, 5 | delivers the next message queued for A / B twice (a peer that duplicates) |
/// | 6, 7 | ends an engine round on A / B: applies what arrived, streams, flushes folded ranges that are due |
/// | 8 | the connection drops: each side applies what it queued and saves its cursor, what is on the wire is lost; a new connection starts, whose modes and kind the next byte `c` picks (A's mode `c % 3`, B's `c / 3 % 3`: bidirectional, read-only, write-only; `c / 9 % 2 == 1`: a device link, where A accepts only B's own operations and B forwards nothing) |
/// | 9 | the clock moves on by `TIME_STEPS[p]` (1 ms to 60 s): liveness (ping after 15 s, close after 45 s) and folded ranges due |
/// | 10, 11 | `p % 4 + 1` more operations of a third node C reach A / B over another link |
/// | 12, 13 | A / B switches its mode to `p % 3` (as above) |
/// | 14 | on A (`p` even) or B, by `p % 8`: 2, 3: its next transaction fails (a storage error); 4, 5: it compacts its op log (keeping 2 positions when `p >= 8`, else none, and never what the connection streams from nor what a peer that cannot take a snapshot has not certainly received, like `SyncEngine::compact_oplog`), so a later `Pull` may get a snapshot; otherwise it sends a barrier (a `Ping` the peer answers after all it sent) |
/// | 15 | an engine round on both: everything queued is delivered, then a round on each side |
///
/// A connection whose two sessions both ended (a liveness close, for example) is replaced
/// by a new one with the same modes. At the end, the connection the steps left settles
/// without faults (see below). Then the run heals: C's operations reach both nodes if
/// a device link was used (such a link relays nothing), the connection is replaced by a
/// bidirectional one, and everything is delivered and pumped, with the clock moved past
/// [`ECHO_FLUSH_AFTER`](crate::ECHO_FLUSH_AFTER) when folded ranges wait, until nothing moves.
///
/// Panics (the fuzz target's findings) when, after any step:
/// * a session closed with a code other than `Normal` or `GoingAway`, except: `ProtocolError`
///   on a connection whose side received more than `MAX_PULLS_PER_PERIOD` `Pull`s, or a
///   snapshot part numbered 2 or more twice (out of order), or a snapshot part after the side
///   stopped and started receiving (a known issue: the rest of the abandoned snapshot closes
///   the connection); `InternalError` after a storage
///   failure the input made, or from B on a device link when B's log was compacted past A's
///   cursor while no device link had told B to keep it (B sends no snapshot there);
///   Otherwise a duplicated message is harmless by docs/protocol.md (a repeated `Hello` is
///   ignored, a repeated `Ops` is re-acknowledged, a repeated `Pull` restarts the stream
///   where it was, `Ack`, `SnapshotAck`, `Ping` and `Pong` are idempotent);
/// * a side pulled again when its stream cannot have had a gap (it never stopped receiving
///   on the connection);
/// * a node merged an operation twice, or (unless a link had `forward` off) another node's
///   operations out of sequence order;
/// * a cursor (durable or the session's) is past the peer's head, or passed an operation of
///   the peer's log that this node lacks (with `forward` off, only the peer's own count);
/// * a side acknowledged or streamed past its head, or has more than `WINDOW` `Ops` in
///   flight;
/// * B sent A a snapshot on a device link, or a compaction dropped entries past the durable
///   cursor of a peer that cannot take a snapshot (one the side keeps its log for), or the
///   position a side keeps its log from is past that peer's durable cursor;
///
/// when the connection the steps left, if both sides are still on it and neither stopped
/// receiving on it, settles without faults: a side is not idle (something sent is not
/// acknowledged, or something received is not applied), or a side that receives from a
/// peer that sends has not caught up with the peer's log;
///
/// and after healing when: quiescence takes more than 10 000 rounds; a session closed; A and
/// B hold different operations (after a compaction: an operation is not held or covered by
/// the vector on both, or the digests of one differ) or version vectors or record states; a
/// session's cursor, or the cursor it saves, is not at the peer's head; a session is not
/// idle.
pub fn sessions(data: &[u8]) {
    let Some((&setup, steps)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(1 + usize::from(setup & 7), 1 + usize::from(setup >> 3 & 1));
    let mut bytes = steps.iter().copied();
    while let Some(b) = bytes.next() {
        let p = b >> 4;
        let side = usize::from(b & 1);
        match b & 0xF {
            0 | 1 => {
                if p >= 8 {
                    h.logs[side].skip_positions(1);
                }
                h.logs[side].write(usize::from(p % 4) + 1);
            }
            2 | 3 => {
                for _ in 0..=p % 4 {
                    h.deliver(side);
                }
            }
            4 | 5 => h.duplicate(side),
            6 | 7 => h.round(side),
            8 => {
                let config = LinkConfig::from_byte(bytes.next().unwrap_or(0));
                h.reconnect(config);
            }
            9 => h.advance(TIME_STEPS[usize::from(p)]),
            10 | 11 => h.reach_from_c(side, u64::from(p % 4) + 1),
            12 | 13 => h.set_mode(side, MODES[usize::from(p % 3)]),
            14 => {
                let side = usize::from(p & 1);
                match p % 8 {
                    2 | 3 => h.logs[side].fail_next = true,
                    4 | 5 => h.compact(side, if p >= 8 { 2 } else { 0 }),
                    _ => {
                        h.link.sessions[side].barrier();
                        h.carry_out(side);
                    }
                }
            }
            _ => {
                for side in 0..2 {
                    while h.deliver(side) {}
                }
                h.round(0);
                h.round(1);
            }
        }
        h.settle();
        h.check();
    }
    h.heal();
}
