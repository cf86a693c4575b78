//! [`Session`]: the protocol rules of one connection (docs/protocol.md, "Session"), with no
//! I/O, no threads and no clock of its own.
//!
//! A session takes the peer's messages, the application's requests and the current time,
//! reads and writes the database only through a [`SessionLog`] (SQLite in the engine, a
//! `Vec` in tests and the fuzz target), and queues what the connection must do as
//! [`Output`]s: send a message, close with a code, or end. The engine thread carries the
//! outputs out on the relay. Like automerge's `sync::State`, everything the protocol
//! remembers about a peer is here, so its rules can be tested message by message.
//!
//! Log positions of one session, and what holds between them:
//! * receiving: `cursor` is our durable position in the peer's log (the last `to` applied;
//!   saved in the same transaction as the operations, or later when only empty ranges
//!   moved it, `cursor_unsaved`); `peer_head >= cursor_at_hello`.
//! * sending: `outbound.wire_to <= outbound.sent_to <= log head`; every `to` in
//!   `in_flight` is `<= sent_to` and they increase; `acked` only grows; `skipped_to` is the
//!   end of ranges passed over while nothing was in flight.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use blazedb_core::{NodeId, OpId, Operation, VersionVector};
use blazedb_protocol::{
    Capabilities, CloseCode, Message, OpCheck, PROTOCOL_VERSION, negotiate_version,
};

use super::{
    BARRIER_NONCE, ConnectOptions, ECHO_FLUSH_AFTER, EngineOptions, MAX_POLICIES_PER_PERIOD,
    MAX_PULLS_PER_PERIOD, PULL_PERIOD, PeerTrust, REIDENTIFY, SNAPSHOT_PART_BYTES,
    SNAPSHOT_PART_RECORDS, WINDOW, copy_reason,
};
use crate::relay::Hold;

mod log;
mod scope;
#[cfg(test)]
mod scope_tests;
mod snapshot;
#[cfg(test)]
mod tests;

pub(crate) use log::{Checked, Entries, Output, RecordView, SessionLog, check_write};
pub(crate) use scope::{Held, HeldChange};
use snapshot::{SnapshotIn, SnapshotOut};

/// The sending half of a session: where the peer asked us to stream from, and what we think
/// it has.
pub(crate) struct Outbound {
    /// Set while a snapshot is sent instead of the op log.
    pub(crate) snapshot: Option<SnapshotOut>,
    /// Position in our op log up to which we have sent, or passed over because the peer
    /// has every operation there.
    pub(crate) sent_to: u64,
    /// The `to` of the last `Ops` actually sent: the next one starts there. Behind `sent_to`
    /// while ranges with nothing for the peer wait (see [`ECHO_FLUSH_AFTER`]).
    wire_to: u64,
    /// Since when a range with nothing for the peer waits to be sent.
    deferred_since: Option<Instant>,
    /// The peer's version vector as its `Pull` gave it, plus every operation sent to it or
    /// received from it since: operations it certainly has.
    peer_has: VersionVector,
    /// Unacknowledged `Ops`: their `to`, when they were sent, and whether they carried
    /// operations (then the peer stores its cursor with them before acknowledging).
    pub(crate) in_flight: VecDeque<(u64, Instant, bool)>,
}

impl Outbound {
    fn starting_at(from: u64, peer_has: VersionVector) -> Outbound {
        Outbound {
            snapshot: None,
            sent_to: from,
            wire_to: from,
            deferred_since: None,
            peer_has,
            in_flight: VecDeque::new(),
        }
    }
}

/// One received `Ops` waiting to be applied: its range, its operations, and the relay budget
/// it holds until it is applied or dropped.
struct Inbound {
    from: u64,
    to: u64,
    ops: Vec<Operation>,
    hold: Option<Hold>,
}

/// The protocol state of one connection. Fields read by the engine's status are
/// `pub(crate)`; everything else changes only through the session's rules.
pub(crate) struct Session {
    /// The name peers use for our database: what their `Hello` must name.
    local_name: String,
    pub(crate) options: ConnectOptions,
    pub(crate) peer: Option<NodeId>,
    /// Our durable cursor into the peer's op log (cached; the truth is in the database).
    pub(crate) cursor: u64,
    /// The cursor when the peer's `Hello` arrived, and the highest op-log position the peer
    /// has announced (its `Hello`'s head, or an `Ops` range's end): initial-sync progress.
    pub(crate) cursor_at_hello: u64,
    pub(crate) peer_head: u64,
    /// We asked the peer to stream again from `cursor` and ignore what does not continue it.
    repull_pending: bool,
    /// `cursor` moved past ranges with nothing to apply and is not saved yet.
    cursor_unsaved: bool,
    inbound: Vec<Inbound>,
    /// When the current count of `Pull`s started, and how many arrived since.
    pulls: (Instant, u32),
    /// The same for `Policy` messages.
    policies: (Instant, u32),
    /// The peer's last `Pull`: where it asked us to start, and its version vector.
    pulled: Option<(u64, VersionVector)>,
    /// The stream to the peer, while it has pulled and this side sends.
    pub(crate) outbound: Option<Outbound>,
    /// The highest position the peer acknowledged (or asked to stream from).
    pub(crate) acked: u64,
    /// The highest position the peer may acknowledge: the `to` of every `Ops` and the
    /// position of every snapshot sent on this connection, or a `Pull`'s `from` (the peer's
    /// own cursor). An `Ack` past it is a protocol error: `acked` feeds `set_mode`'s resume
    /// point and compaction, which must never trust a position the peer cannot have.
    ackable: u64,
    /// The highest position of our log the peer certainly stores as its cursor: its first
    /// `Pull`'s `from` (its durable cursor), or an `Ack` that covers an `Ops` with operations
    /// (stored with them). An `Ack` of ranges with nothing to apply may run ahead of the
    /// cursor the peer saved. On a link that sends no snapshot this bounds compaction, saved
    /// through [`SessionLog::keep_for`]; `kept_saved` is what was saved (`None`: nothing yet).
    kept: u64,
    kept_saved: Option<u64>,
    /// The connection closed because our op log was compacted past the peer's cursor on a
    /// link that sends no snapshot: a new connection would meet the same gap.
    pub(crate) compacted_past_peer: bool,
    pub(crate) last_ack: Option<(u64, Instant)>,
    pub(crate) closed_reason: Option<String>,
    pub(crate) peer_close_code: Option<CloseCode>,
    pub(crate) close_code: Option<CloseCode>,
    pub(crate) ops_sent: u64,
    pub(crate) ops_applied: u64,
    pub(crate) ops_duplicate: u64,
    pub(crate) messages_sent: u64,
    pub(crate) messages_received: u64,
    /// When the peer last said anything, and whether we pinged it since.
    last_heard: Instant,
    pinged: bool,
    /// Barriers sent, and the highest one answered.
    barriers_sent: u64,
    pub(crate) barrier: u64,
    /// Everything in our log up to here is acknowledged or was passed over because the
    /// peer has it (so it is not pending).
    pub(crate) skipped_to: u64,
    pub(crate) snapshot_in: Option<SnapshotIn>,
    /// A `Pull` went out after snapshot parts had arrived (applied or ignored): the rest of
    /// that snapshot may still come and is ignored until a part 1 starts the one answering
    /// the new `Pull`.
    snapshot_abandoned: bool,
    /// Snapshot parts arrived since our last `Pull`.
    snapshot_parts_since_pull: bool,
    /// With a scope: the records the peer holds, as far as we know.
    pub(crate) held: Held,
    /// How many times `options.scope` changed: the engine regroups the connection by scope
    /// when this moves.
    pub(crate) scope_changes: u64,
    /// From the engine's routing, until the stream passes it: up to this position, only
    /// operations on these records can concern the peer (the others were neither readable
    /// to it nor held by it when they were routed), so the rest is passed over unread.
    route_hint: Option<(u64, std::collections::HashSet<blazedb_core::Uuid>)>,
    /// What the rules let the peer read (`options.scope` is this narrowed by the peer's
    /// policy), and the policy the peer asked for.
    pub(crate) base_scope: Option<blazedb_access::ReadScope>,
    peer_policy: Option<blazedb_access::SyncPolicy>,
    /// The peer filters what it sends us (it sent a `Reconcile`, `Records` or `Purge`).
    peer_filters: bool,
    /// Record states sent because a record entered the peer's scope, and records purged
    /// from it; record states joined and records purged here on the peer's word.
    pub(crate) states_sent: u64,
    pub(crate) purges_sent: u64,
    pub(crate) states_applied: u64,
    pub(crate) records_purged: u64,
    /// The peer's operations this side refused (it checks writes), and our own operations
    /// the peer refused.
    pub(crate) ops_refused: u64,
    pub(crate) rejections_received: u64,
    /// Operations of our log read to decide what to send (see `ConnectionStatus`).
    pub(crate) ops_examined: u64,
    /// Operations of ours that undo a refused write of the peer: sent to it with its hidden
    /// fields set to null (not left out), so that what it wrote there is overwritten.
    blank_for_peer: std::collections::HashSet<OpId>,
    /// The peer's own operations, accepted here, after which it may still read the record:
    /// going back past it, they need no state read (see `filter_for_scope`).
    own_readable: std::collections::HashSet<OpId>,
    outputs: Vec<Output>,
}

/// Counts one more message in `count` (when the current period started, how many since),
/// starting a new period of [`PULL_PERIOD`] when the last one is over; true when there are
/// more than `max` in the period.
fn over_limit(count: &mut (Instant, u32), now: Instant, max: u32) -> bool {
    if now.saturating_duration_since(count.0) >= PULL_PERIOD {
        *count = (now, 0);
    }
    count.1 += 1;
    count.1 > max
}

impl Session {
    /// A new session that has sent nothing yet.
    pub(crate) fn new(local_name: &str, options: ConnectOptions, now: Instant) -> Session {
        let base_scope = options.scope.clone();
        Session {
            local_name: local_name.to_owned(),
            options,
            peer: None,
            cursor: 0,
            cursor_at_hello: 0,
            peer_head: 0,
            repull_pending: false,
            cursor_unsaved: false,
            inbound: Vec::new(),
            pulls: (now, 0),
            policies: (now, 0),
            pulled: None,
            outbound: None,
            acked: 0,
            ackable: 0,
            kept: 0,
            kept_saved: None,
            compacted_past_peer: false,
            last_ack: None,
            closed_reason: None,
            peer_close_code: None,
            close_code: None,
            ops_sent: 0,
            ops_applied: 0,
            ops_duplicate: 0,
            messages_sent: 0,
            messages_received: 0,
            last_heard: now,
            pinged: false,
            barriers_sent: 0,
            barrier: 0,
            skipped_to: 0,
            snapshot_in: None,
            snapshot_abandoned: false,
            snapshot_parts_since_pull: false,
            held: Held::default(),
            scope_changes: 0,
            route_hint: None,
            base_scope,
            peer_policy: None,
            peer_filters: false,
            states_sent: 0,
            purges_sent: 0,
            states_applied: 0,
            records_purged: 0,
            ops_refused: 0,
            rejections_received: 0,
            ops_examined: 0,
            blank_for_peer: std::collections::HashSet::new(),
            own_readable: std::collections::HashSet::new(),
            outputs: Vec::new(),
        }
    }

    /// What the connection must do now, in order (drained).
    pub(crate) fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// True until the connection ended (closed by either side, or failed).
    pub(crate) fn is_open(&self) -> bool {
        self.closed_reason.is_none()
    }

    /// Sends our `Hello`: the first message of every session.
    pub(crate) fn start(&mut self, log: &impl SessionLog) {
        let hello = Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node: log.node(),
            database: self.options.remote_database.clone(),
            capabilities: Capabilities::SUPPORTED,
            head: log.head(),
        };
        self.send(hello);
        if let Some(policy) = self.options.policy.clone() {
            self.send_policy(Some(&policy));
        }
    }

    fn send(&mut self, message: Message) {
        if self.is_open() {
            match &message {
                Message::Ops { to, .. } => self.ackable = self.ackable.max(*to),
                // Only the last part (with the vector) may be acknowledged.
                Message::Snapshot {
                    position,
                    vector: Some(_),
                    ..
                } => self.ackable = self.ackable.max(*position),
                _ => {}
            }
            self.messages_sent += 1;
            self.outputs.push(Output::Send(message));
        }
    }

    /// Sends `Close` (when the connection is still up) and ends the connection.
    pub(crate) fn close_with(&mut self, code: CloseCode, reason: String) {
        if self.is_open() {
            self.close_code = Some(code);
            self.outputs.push(Output::Close(code, reason.clone()));
        }
        self.end(reason);
    }

    /// Ends the connection without a message (the first reason stays).
    pub(crate) fn end(&mut self, reason: String) {
        if self.closed_reason.is_none() {
            self.closed_reason = Some(reason);
            self.outputs.push(Output::End);
        }
        self.outbound = None;
        self.inbound.clear();
        self.snapshot_in = None;
    }

    fn internal_error(&mut self, e: &blazedb_core::Error) {
        self.close_with(CloseCode::InternalError, format!("internal error: {e}"));
    }

    /// Handles one message from the peer. `Ops` are queued (applied together by
    /// [`Session::apply_inbound`]); everything else is handled in order after them.
    pub(crate) fn on_message(
        &mut self,
        log: &mut impl SessionLog,
        message: Message,
        hold: Option<Hold>,
        now: Instant,
    ) {
        self.handle_message(log, message, hold, now);
        self.save_cursor_if_ended(log);
    }

    fn handle_message(
        &mut self,
        log: &mut impl SessionLog,
        message: Message,
        hold: Option<Hold>,
        now: Instant,
    ) {
        if !self.is_open() {
            return;
        }
        self.messages_received += 1;
        self.last_heard = now;
        self.pinged = false;
        if self.peer.is_none()
            && !matches!(
                message,
                Message::Hello { .. }
                    | Message::Close { .. }
                    | Message::Collections { .. }
                    | Message::Keys { .. }
                    | Message::KeyTask { .. }
            )
        {
            // docs/protocol.md: a session starts with the peer's Hello; anything else first
            // is a protocol error (a Close is still read: it says why the peer gives up).
            self.close_with(
                CloseCode::ProtocolError,
                format!("{} before Hello", message.type_name()),
            );
            return;
        }
        if let Message::Ops { from, to, ops } = message {
            self.on_ops(from, to, ops, hold);
            return;
        }
        self.apply_inbound(log);
        if !self.is_open() {
            return;
        }
        match message {
            Message::Hello {
                protocol_version,
                node,
                database,
                head,
                ..
            } => self.on_hello(log, protocol_version, node, &database, head),
            Message::Pull {
                from,
                vector,
                checks,
            } => self.on_pull(log, from, vector, &checks, now),
            Message::Ack { position, rejected } => {
                let before = self.acked;
                self.on_ack(position, now);
                if !rejected.is_empty()
                    && self.is_open()
                    && let Err(e) = self.on_rejected(log, before, position, rejected)
                {
                    self.internal_error(&e);
                }
            }
            Message::SnapshotAck { part } => {
                if let Some(snapshot) = self.outbound.as_mut().and_then(|o| o.snapshot.as_mut()) {
                    snapshot.acked(part);
                }
            }
            Message::Snapshot {
                position,
                part,
                total,
                records,
                vector,
            } => self.on_snapshot_part(log, position, part, total, records, vector),
            Message::Ping { nonce } => {
                // The Pong must follow everything sent before it, passed-over ranges too: a
                // barrier means "you have all I had".
                self.flush_deferred(now);
                self.send(Message::Pong { nonce });
            }
            Message::Pong { nonce } => {
                if nonce & BARRIER_NONCE != 0 {
                    self.barrier = self.barrier.max(nonce & !BARRIER_NONCE);
                }
            }
            Message::Close { code, reason } => {
                self.peer_close_code = Some(code);
                self.end(format!("the peer closed the connection ({code}): {reason}"));
            }
            Message::Reconcile { level, buckets } => {
                if let Err(e) = self.on_reconcile(log, level, buckets) {
                    self.internal_error(&e);
                }
            }
            Message::Held {
                level,
                buckets,
                records,
            } => {
                if let Err(e) = self.on_held(log, level, &buckets, records) {
                    self.internal_error(&e);
                }
            }
            Message::Records { records } => self.on_records(log, records),
            Message::Policy {
                only,
                except,
                filter,
                exclude_fields,
            } => self.on_policy(log, only, except, &filter, exclude_fields, now),
            Message::Purge { reason, records } => {
                if let Err(e) = self.on_purge(log, reason, records) {
                    self.internal_error(&e);
                }
            }
            // A server's word to a device's end-to-end layer (crate::e2e), which keeps it
            // from the engine; one that reaches a session changes nothing here.
            Message::Collections { .. } | Message::Keys { .. } | Message::KeyTask { .. } => {}
            // Queued above, before anything else was looked at.
            Message::Ops { .. } => {}
            // Enrolment is between a device and a server's connection handler, before the
            // engine sees the connection.
            Message::Enroll { .. } => self.close_with(
                CloseCode::ProtocolError,
                "Enroll is only sent to a server, before the session starts".into(),
            ),
        }
    }

    fn on_ops(&mut self, from: u64, to: u64, ops: Vec<Operation>, hold: Option<Hold>) {
        if let PeerTrust::Origin(node) = self.options.trust
            && let Some(op) = ops.iter().find(|op| op.id.origin != node)
        {
            // Nothing of this connection is applied from here on: `close_with` drops what it
            // queued, and the peer's cursor stays where it was.
            self.close_with(
                CloseCode::Unauthorized,
                format!(
                    "operation {} was made by another node; this link carries only the \
                     operations of node {node}",
                    op.id
                ),
            );
            return;
        }
        if self.options.mode.receives() {
            self.peer_head = self.peer_head.max(to);
            self.inbound.push(Inbound {
                from,
                to,
                ops,
                hold,
            });
        }
        // Otherwise (write-only, or the mode just changed): not applied and not
        // acknowledged; the peer sends it again after our next Pull.
    }

    fn on_hello(
        &mut self,
        log: &mut impl SessionLog,
        protocol_version: u16,
        node: NodeId,
        database: &str,
        head: u64,
    ) {
        if let Err(e) = negotiate_version(protocol_version) {
            self.close_with(e.close_code(), e.to_string());
            return;
        }
        if database != self.local_name {
            self.close_with(
                CloseCode::UnknownDatabase,
                format!("this is database {:?}, not {database:?}", self.local_name),
            );
            return;
        }
        if node == log.node() {
            self.close_with(
                CloseCode::CopiedDatabase,
                format!(
                    "the peer has this database's node id {node}: one of the two database \
                     files is a copy of the other; {REIDENTIFY}"
                ),
            );
            return;
        }
        if let PeerTrust::Origin(bound) = self.options.trust
            && bound != node
        {
            self.close_with(
                CloseCode::Unauthorized,
                format!("the Hello says node {node}, but this link belongs to node {bound}"),
            );
            return;
        }
        match self.peer {
            Some(p) if p == node => return, // a repeated Hello changes nothing
            Some(_) => {
                self.close_with(
                    CloseCode::ProtocolError,
                    "the peer's node id changed within a connection".into(),
                );
                return;
            }
            None => self.peer = Some(node),
        }
        match log.peer_cursor(node) {
            Ok(cursor) => {
                self.cursor = cursor;
                self.cursor_at_hello = cursor;
                self.peer_head = self.peer_head.max(head);
                self.pull(log);
            }
            Err(e) => self.internal_error(&e),
        }
    }

    fn on_pull(
        &mut self,
        log: &mut impl SessionLog,
        from: u64,
        vector: VersionVector,
        checks: &[OpCheck],
        now: Instant,
    ) {
        let Some(peer) = self.peer else {
            self.close_with(CloseCode::ProtocolError, "Pull before Hello".into());
            return;
        };
        if !self.check_ops(log, peer, checks) {
            return;
        }
        // Each Pull restarts the stream (reads the log again): a peer may send a few, not a
        // flood.
        if over_limit(&mut self.pulls, now, MAX_PULLS_PER_PERIOD) {
            self.close_with(
                CloseCode::ProtocolError,
                format!(
                    "more than {MAX_PULLS_PER_PERIOD} Pulls within {} s",
                    PULL_PERIOD.as_secs()
                ),
            );
            return;
        }
        let mut head = log.head();
        if from > head {
            head = head.max(log.refresh_head().unwrap_or(head));
        }
        if from > head {
            // Positions are never reused, so the peer's cursor belongs to another history of
            // this log: this file is a copy of one that went further, or a restored backup;
            // streaming would skip entries.
            self.close_with(
                CloseCode::CopiedDatabase,
                format!(
                    "the peer's cursor {from} into the op log of node {node} is past its end \
                     ({head}): node {node}'s database file is a copy of another with the same \
                     node id that synced further, or a restored backup of it; {REIDENTIFY}",
                    node = log.node()
                ),
            );
            return;
        }
        // The peer holds everything up to `from` (as far as it knows): that counts as
        // acknowledged, and it may acknowledge it again.
        self.acked = self.acked.max(from);
        self.ackable = self.ackable.max(from);
        let first_pull = self.pulled.is_none();
        if first_pull {
            // A first Pull comes from the cursor the peer loaded at Hello: durable. Later
            // ones may come from a cursor moved in memory only.
            self.kept = self.kept.max(from);
        }
        // Kept even while this side does not send, to start streaming when it does.
        self.pulled = Some((from, vector.clone()));
        // Saved at once: a peer that cannot take a snapshot must be known before our log
        // can be compacted while it is away.
        self.save_kept(log);
        if self.options.mode.sends() {
            self.outbound = Some(Outbound::starting_at(from, vector));
            self.route_hint = None;
            // A scoped peer's holdings are compared once per session, before any Ops:
            // afterwards every record sent, purged or written keeps them known.
            if (first_pull || !self.held.known)
                && self.is_scoped()
                && let Err(e) = self.start_reconcile(log)
            {
                self.internal_error(&e);
            }
        }
    }

    fn on_ack(&mut self, position: u64, now: Instant) {
        if position > self.ackable {
            self.close_with(
                CloseCode::ProtocolError,
                format!(
                    "Ack for position {position}, past {}, the last position sent on this \
                     connection",
                    self.ackable
                ),
            );
            return;
        }
        self.acked = self.acked.max(position);
        self.last_ack = Some((position, now));
        if let Some(out) = &mut self.outbound {
            while let Some(&(to, _, carried)) = out.in_flight.front()
                && to <= position
            {
                if carried {
                    self.kept = self.kept.max(to);
                }
                out.in_flight.pop_front();
            }
            if out.in_flight.is_empty() {
                // Everything after the last batch was passed over: the peer has it.
                self.skipped_to = self.skipped_to.max(out.sent_to);
            }
        }
    }

    /// Asks the peer to stream from our durable cursor (if this side receives).
    fn pull(&mut self, log: &mut impl SessionLog) {
        if !self.options.mode.receives() || !self.is_open() {
            return;
        }
        let peer = self.peer;
        let own = log.node();
        // A scoped peer holds our operations with hidden fields removed, so their digests
        // differ from ours: only its own operation is compared.
        let own_check = (!self.is_scoped()).then_some(own);
        let pull = log.version_vector().and_then(|vector| {
            // The peer's operation we have last, and our own last: the peer compares their
            // digests with its own (see `check_ops`).
            let mut checks = Vec::new();
            for node in peer.into_iter().chain(own_check) {
                let seq = vector.get(node);
                if seq == 0 {
                    continue;
                }
                if let Some(digest) = log.op_digest(OpId { origin: node, seq })? {
                    checks.push(OpCheck { node, seq, digest });
                }
            }
            Ok((vector, checks))
        });
        match pull {
            Ok((vector, checks)) => {
                let under_way = self.snapshot_in.take().is_some();
                self.snapshot_abandoned = under_way || self.snapshot_parts_since_pull;
                self.snapshot_parts_since_pull = false;
                self.send(Message::Pull {
                    from: self.cursor,
                    vector,
                    checks,
                });
            }
            Err(e) => self.internal_error(&e),
        }
    }

    /// Compares the digests of a peer's Pull with those of the same operations here. A
    /// difference means two database files share a node id: the connection closes with
    /// [`CloseCode::CopiedDatabase`] before anything is streamed, and false is returned. A
    /// match on our own operation confirms that the peer has ours up to it.
    fn check_ops(&mut self, log: &mut impl SessionLog, peer: NodeId, checks: &[OpCheck]) -> bool {
        let own = log.node();
        for check in checks {
            if self.is_scoped() && check.node != peer {
                // The peer holds operations of other nodes as its scope showed them (see
                // `pull`): their digests are not comparable.
                continue;
            }
            let op = OpId {
                origin: check.node,
                seq: check.seq,
            };
            let here = match log.op_digest(op) {
                Ok(here) => here,
                Err(e) => {
                    self.internal_error(&e);
                    return false;
                }
            };
            match here {
                Some(here) if here != check.digest => {
                    self.close_with(CloseCode::CopiedDatabase, copy_reason(own, peer, op));
                    return false;
                }
                Some(_) if check.node == own => {
                    if let Err(e) = log.confirm_own(check.seq) {
                        self.internal_error(&e);
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Applies the `Ops` received that continue our cursor, in one transaction together with
    /// the new cursor, then acknowledges. A range that does not continue the cursor (a gap)
    /// makes us pull again from the cursor; ranges we have are acknowledged again.
    pub(crate) fn apply_inbound(&mut self, log: &mut impl SessionLog) {
        self.apply_queued(log);
        self.save_cursor_if_ended(log);
    }

    fn apply_queued(&mut self, log: &mut impl SessionLog) {
        if self.inbound.is_empty() {
            return;
        }
        let Some(peer) = self.peer else {
            self.inbound.clear();
            return;
        };
        let start = self.cursor;
        let mut to = start;
        let mut ops = Vec::new();
        let mut duplicate_range = false;
        let mut gap = false;
        // The operations move into `ops`; their budget goes back to the relay once this
        // function is done with them.
        let mut held = Vec::new();
        for inbound in self.inbound.drain(..) {
            let Inbound {
                from,
                to: end,
                ops: batch,
                hold,
            } = inbound;
            held.push(hold);
            if end <= to {
                duplicate_range = true;
            } else if from > to {
                gap = true;
                break;
            } else {
                ops.extend(batch);
                to = end;
            }
        }
        self.inbound.clear();
        if to > start && ops.is_empty() {
            // Nothing to apply (the peer echoes entries made of what we have): move the cursor
            // in memory only and save it with the next write. Saving it late is harmless: a
            // restart pulls from the older cursor and gets the same nothing again.
            self.repull_pending = false;
            self.cursor = to;
            self.cursor_unsaved = true;
            self.send(Message::ack(to));
        } else if to > start {
            self.repull_pending = false;
            let covered = self.covered_by(log.node(), &ops);
            let applied = match &self.options.write_scope {
                Some(write) => {
                    log.apply_checked(peer, &ops, to, write, self.options.scope.as_ref())
                }
                None => log
                    .apply(peer, &ops, to, covered.as_ref())
                    .map(|report| Checked {
                        report,
                        refused: Vec::new(),
                        readable: Vec::new(),
                    }),
            };
            match applied {
                Ok(Checked {
                    report,
                    refused,
                    readable,
                }) => {
                    self.peer_wrote(&ops);
                    self.own_readable.extend(readable);
                    let refusals = self.refused_from_peer(refused);
                    self.cursor = to;
                    self.cursor_unsaved = false;
                    self.ops_applied += report.applied as u64;
                    self.ops_duplicate += report.duplicates as u64;
                    if let Some(out) = &mut self.outbound {
                        for op in &ops {
                            out.peer_has.observe_op(op.id);
                        }
                    }
                    self.send(Message::Ack {
                        position: to,
                        rejected: refusals,
                    });
                }
                Err(blazedb_core::Error::CopiedDatabase { op }) => {
                    self.close_with(CloseCode::CopiedDatabase, copy_reason(log.node(), peer, op));
                    return;
                }
                Err(e @ blazedb_core::Error::InvalidOperation { .. }) => {
                    self.close_with(
                        CloseCode::ProtocolError,
                        format!("the peer sent an invalid operation: {e}"),
                    );
                    return;
                }
                Err(e) => {
                    self.close_with(CloseCode::InternalError, format!("applying failed: {e}"));
                    return;
                }
            }
        } else if duplicate_range {
            self.send(Message::ack(start));
        }
        drop(held);
        if gap && !self.repull_pending {
            self.repull_pending = true;
            self.pull(log);
        }
    }

    /// Saves a cursor that moved in memory only (see [`Session::apply_inbound`]). Best
    /// effort: if it fails, the peer resends ranges with nothing in them.
    pub(crate) fn save_cursor(&mut self, log: &mut impl SessionLog) {
        self.save_kept(log);
        let (Some(peer), true) = (self.peer, self.cursor_unsaved) else {
            return;
        };
        if log.save_cursor(peer, self.cursor).is_ok() {
            self.cursor_unsaved = false;
        }
    }

    /// On a link that sends no snapshot, saves how much of our log the peer certainly has
    /// (see `kept`), if that rose. Best effort: a lower stored position only keeps more.
    pub(crate) fn save_kept(&mut self, log: &mut impl SessionLog) {
        // Only a peer that pulled wants our log (and only then is `kept` known).
        let (Some(peer), Some(_)) = (self.peer, &self.pulled) else {
            return;
        };
        if self.sends_snapshots() || self.kept_saved.is_some_and(|saved| saved >= self.kept) {
            return;
        }
        if log.keep_for(peer, self.kept).is_ok() {
            self.kept_saved = Some(self.kept);
        }
    }

    /// Can this side answer a `Pull` from before its log start with a snapshot? Not on a
    /// link that does not forward: it carries only our own operations, and a snapshot holds
    /// every node's writes (a server refuses one from a device).
    fn sends_snapshots(&self) -> bool {
        self.options.forward
    }

    /// The peer stands at `from` in our log, which was compacted through `start`, and this
    /// link cannot send a snapshot instead: the operations in between can never reach it.
    fn compacted_past_peer(&mut self, from: u64, start: u64) {
        self.compacted_past_peer = true;
        let peer = self
            .peer
            .map_or_else(|| "the peer".to_owned(), |p| format!("node {p}"));
        self.close_with(
            CloseCode::InternalError,
            format!(
                "this database's op log was compacted past position {from}, where {peer} \
                 stands in it (the log now starts after {start}), and this link cannot send a \
                 snapshot instead (it carries only this node's own operations, as a device's \
                 link to its server does): the writes in between cannot reach {peer}, and \
                 reconnecting cannot help. SyncEngine::compact_oplog keeps what such a peer \
                 has not received; Replication::compact_oplog does not"
            ),
        );
    }

    /// A session that closed itself (a protocol error, a silent peer, a failed write) saves
    /// its cursor like one the engine closes: an echo-only advance kept in memory would
    /// otherwise be lost, and the next connection would get those ranges again.
    fn save_cursor_if_ended(&mut self, log: &mut impl SessionLog) {
        if !self.is_open() {
            self.save_cursor(log);
        }
    }

    /// Sends the ranges passed over because the peer had everything in them, as one empty
    /// `Ops`, so that the peer's cursor catches up.
    fn flush_deferred(&mut self, now: Instant) {
        let Some(out) = &mut self.outbound else {
            return;
        };
        if out.wire_to >= out.sent_to || !self.options.mode.sends() {
            return;
        }
        let (from, to) = (out.wire_to, out.sent_to);
        out.wire_to = to;
        out.deferred_since = None;
        out.in_flight.push_back((to, now, false));
        self.send(Message::Ops {
            from,
            to,
            ops: Vec::new(),
        });
    }

    /// When the ranges passed over must go out at the latest.
    pub(crate) fn flush_due(&self) -> Option<Instant> {
        if !self.is_open() || !self.options.mode.sends() {
            return None;
        }
        self.outbound
            .as_ref()
            .and_then(|o| o.deferred_since)
            .map(|since| since + ECHO_FLUSH_AFTER)
    }

    /// Sends the passed-over ranges if they have waited long enough.
    pub(crate) fn flush_if_due(&mut self, now: Instant) {
        if self.is_open() && self.flush_due().is_some_and(|due| due <= now) {
            self.flush_deferred(now);
        }
    }

    /// When this connection's liveness must next be checked: its ping when the peer has not
    /// been pinged since it last spoke, its closing otherwise.
    pub(crate) fn liveness_due(&self, options: &EngineOptions) -> Instant {
        let after = if self.pinged || options.ping_after >= options.close_after {
            options.close_after
        } else {
            options.ping_after
        };
        self.last_heard + after
    }

    /// Pings a peer that went quiet; closes the connection to one silent for too long.
    pub(crate) fn check_liveness(
        &mut self,
        log: &mut impl SessionLog,
        options: &EngineOptions,
        now: Instant,
    ) {
        if !self.is_open() {
            return;
        }
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= options.close_after {
            self.close_with(
                CloseCode::GoingAway,
                format!("heard nothing from the peer for {} s", silent.as_secs()),
            );
            self.save_cursor(log);
        } else if silent >= options.ping_after && !self.pinged {
            self.pinged = true;
            let nonce = self.messages_sent;
            self.send(Message::Ping { nonce });
        }
    }

    /// Sends a barrier (a `Ping` the peer answers after everything it sent before); its
    /// number, or `None` when the connection has ended.
    pub(crate) fn barrier(&mut self) -> Option<u64> {
        if !self.is_open() {
            return None;
        }
        self.barriers_sent += 1;
        self.send(Message::Ping {
            nonce: BARRIER_NONCE | self.barriers_sent,
        });
        Some(self.barriers_sent)
    }

    /// Changes the mode: a side that starts receiving pulls again from its durable cursor; a
    /// side that starts sending resumes from what the peer confirmed.
    pub(crate) fn set_mode(&mut self, log: &mut impl SessionLog, mode: super::Mode) {
        self.apply_inbound(log);
        let old = std::mem::replace(&mut self.options.mode, mode);
        self.route_hint = None;
        if !mode.sends() {
            self.outbound = None;
        } else if self.outbound.is_none() {
            // Resume from what the peer has confirmed. Only its Pull's vector is certain:
            // batches sent before the pause may have been ignored, so they go again (the peer
            // skips what it has).
            self.outbound = self
                .pulled
                .as_ref()
                .map(|(from, vector)| Outbound::starting_at(self.acked.max(*from), vector.clone()));
        }
        if mode.receives() && !old.receives() && self.peer.is_some() {
            // This Pull is a re-pull (step 4): what is left of the old stream does not
            // continue the cursor and is ignored until the answer arrives.
            self.pull(log);
            self.repull_pending = true;
        }
        self.save_cursor_if_ended(log);
    }

    /// Sends what the peer pulled and has not got yet, up to the window.
    pub(crate) fn pump(&mut self, log: &mut impl SessionLog, now: Instant) {
        let pumped = self.try_pump(log, now);
        // A hint holds until the stream has passed its range (a full window stops a pump
        // short of it); the next routing extends it.
        if let Some((through, _)) = &self.route_hint
            && (!self.is_open()
                || self
                    .outbound
                    .as_ref()
                    .is_none_or(|o| o.snapshot.is_some() || o.sent_to >= *through))
        {
            self.route_hint = None;
        }
        if let Err(e) = pumped {
            self.internal_error(&e);
        }
        self.save_cursor_if_ended(log);
    }

    fn try_pump(&mut self, log: &mut impl SessionLog, now: Instant) -> blazedb_core::Result<()> {
        loop {
            if !self.is_open() || !self.options.mode.sends() {
                return Ok(());
            }
            let Some(out) = &self.outbound else {
                return Ok(());
            };
            if out.snapshot.is_some() || out.sent_to < log.start() {
                if !self.sends_snapshots() {
                    let (from, start) = (out.sent_to, log.start());
                    self.compacted_past_peer(from, start);
                    return Ok(());
                }
                if !self.pump_snapshot(log, now)? {
                    return Ok(());
                }
                continue;
            }
            if out.in_flight.len() >= WINDOW || out.sent_to >= log.head() {
                return Ok(());
            }
            let from = out.sent_to;
            let read = match &self.route_hint {
                // Routed entries only: what lies past them (commits this round has not
                // routed yet) waits for the next round's routing.
                Some((through, _)) if from >= *through => return Ok(()),
                Some((through, records)) => log
                    .entries_after_where(from, &|p, op| {
                        p <= *through && records.contains(&op.record)
                    })?
                    .map(|(entries, last)| (entries, last.min(*through))),
                None => log.entries_after(from)?.map(|entries| {
                    let last = entries.last().map_or(from, |(p, _)| *p);
                    (entries, last)
                }),
            };
            let Some((entries, to)) = read else {
                // Compacted under this stream: the next round sends a snapshot.
                continue;
            };
            if to <= from {
                // The head we were told of is not visible yet (or was rolled back).
                return Ok(());
            }
            self.ops_examined += entries.len() as u64;
            let (own, forward) = (log.node(), self.options.forward);
            let mut filtered = self.filter_for_scope(log, entries)?;
            self.send_filtered_extras(&mut filtered);
            let Some(out) = &mut self.outbound else {
                return Ok(());
            };
            let mut ops = Vec::with_capacity(filtered.ops.len());
            for op in filtered.ops {
                if out.peer_has.contains(op.id) || (!forward && op.id.origin != own) {
                    continue;
                }
                out.peer_has.observe_op(op.id);
                ops.push(op);
            }
            if ops.is_empty() {
                // Nothing the peer lacks (usually its own operations coming back): no message
                // now. The range goes out with the next batch, before a Pong, or after
                // ECHO_FLUSH_AFTER, so the peer's cursor still moves past it.
                self.pass_over(to, now);
                continue;
            }
            out.sent_to = to;
            let from = std::mem::replace(&mut out.wire_to, to);
            out.deferred_since = None;
            out.in_flight.push_back((to, now, true));
            self.ops_sent += ops.len() as u64;
            self.send(Message::Ops { from, to, ops });
        }
    }

    /// Could this connection be left out of pumps until a record concerns it? A scoped
    /// stream that has sent everything up to `head`, with nothing of its own pending: from
    /// here on, [`Session::pass_over`] does for a range with nothing it may read or holds
    /// exactly what a pump would (see the engine's routing).
    pub(crate) fn routable(&self, head: u64) -> bool {
        self.quiet() && self.route_hint.is_none() && self.stream_at().is_some_and(|at| at >= head)
    }

    /// Can routing tell this connection which records of the entries after `before`
    /// concern it? When its stream stands at `before`, or when its hint from earlier
    /// routing ends there (a full window stopped it short; the hint is extended).
    pub(crate) fn takes_route_from(&self, before: u64) -> bool {
        self.quiet()
            && match &self.route_hint {
                Some((through, _)) => *through == before,
                None => self.stream_at().is_some_and(|at| at >= before),
            }
    }

    /// A scoped, open, sending connection with nothing of its own pending.
    fn quiet(&self) -> bool {
        self.is_scoped()
            && self.is_open()
            && self.options.mode.sends()
            && self.inbound.is_empty()
            && self.own_readable.is_empty()
            && self.blank_for_peer.is_empty()
    }

    /// Does an earlier routing's hint still wait for the stream to pass it?
    pub(crate) fn has_route_hint(&self) -> bool {
        self.route_hint.is_some()
    }

    /// Where the stream of our log stands (`None` without one, or while a snapshot goes).
    fn stream_at(&self) -> Option<u64> {
        self.outbound
            .as_ref()
            .filter(|o| o.snapshot.is_none())
            .map(|o| o.sent_to)
    }

    /// For the next pump: up to position `through`, only operations on `records` can
    /// concern the peer (see `route_hint`).
    pub(crate) fn hint_route(
        &mut self,
        through: u64,
        records: std::collections::HashSet<blazedb_core::Uuid>,
    ) {
        match &mut self.route_hint {
            Some((until, known)) => {
                known.extend(records);
                *until = through;
            }
            None => self.route_hint = Some((through, records)),
        }
    }

    /// Our log up to `to` holds nothing to send the peer (a pump found nothing it lacks, or
    /// the engine's routing found nothing it may read or holds): the stream moves past it,
    /// the range waiting since `since` to go out with the next batch or on its own.
    pub(crate) fn pass_over(&mut self, to: u64, since: Instant) {
        let Some(out) = &mut self.outbound else {
            return;
        };
        if out.snapshot.is_some() || out.sent_to >= to {
            return;
        }
        out.sent_to = to;
        out.deferred_since.get_or_insert(since);
        if out.in_flight.is_empty() {
            self.skipped_to = self.skipped_to.max(to);
        }
    }

    /// Where this connection still streams from: compaction must not drop entries after it.
    pub(crate) fn streams_from(&self) -> Option<u64> {
        if !self.is_open() {
            return None;
        }
        let out = self.outbound.as_ref()?;
        Some(match &out.snapshot {
            Some(s) => s.position,
            None => self.acked.min(out.sent_to),
        })
    }

    /// Nothing to do: nothing received waits, and everything sent is acknowledged.
    pub(crate) fn idle(&self, head: u64) -> bool {
        if !self.inbound.is_empty() {
            return false;
        }
        if !self.is_open() {
            return true;
        }
        if self.peer.is_none() || self.snapshot_in.is_some() {
            return false;
        }
        match &self.outbound {
            Some(out) => out.snapshot.is_none() && out.sent_to >= head && out.in_flight.is_empty(),
            None => true,
        }
    }

    /// How long the oldest unacknowledged batch has waited.
    pub(crate) fn lag(&self, now: Instant) -> Duration {
        self.outbound
            .as_ref()
            .and_then(|o| o.in_flight.front())
            .map_or(Duration::ZERO, |(_, sent, _)| {
                now.saturating_duration_since(*sent)
            })
    }
}
