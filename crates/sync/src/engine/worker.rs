//! The engine thread: sleeps on one channel, hands each event to the connection's
//! [`Session`], and carries out what the session asks for on the relay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use blazedb_access::{ReadScope, WriteScope};
use blazedb_core::{
    ApplyReport, Database, NodeId, OpId, Operation, PurgeReason, RecordState, RejectCode,
    SnapshotInfo, SnapshotKey, Uuid, VersionVector,
};
use blazedb_format::{OpDigest, SnapshotRecord};
use blazedb_protocol::{CloseCode, Message, RecordKey};

use super::routing::{Membership, Route, Routing};
use super::session::{Checked, Entries, Output, RecordView, Session, SessionLog, check_write};
use super::{
    Command, ConnectOptions, ConnectionStatus, Counters, ECHO_FLUSH_AFTER, EngineOptions, Event,
    MAX_BATCH_OPS, MAX_EVENTS_PER_ROUND, Mode, RECENT_ENTRIES, RECENT_OPS,
};
use crate::error::{Result, SyncError};
use crate::relay::{ConnectionId, Hold, Inbox, Relay};

/// The local setting holding, for each peer that cannot take a snapshot from this database
/// (a link that does not forward), the position of our log it certainly has: 24 bytes per
/// peer, its node id and the position (big-endian).
const KEPT_FOR_SETTING: &str = "sync/oplog-kept-for";

/// The engine's database as its sessions see it: the SQLite database, the head and start of
/// its op log, and the newest small commits kept from commit events so that a caught-up
/// connection streams a new commit without reading it back.
pub(super) struct DbLog {
    pub(super) db: Database,
    pub(super) node: NodeId,
    /// Position of the newest op-log entry we know of.
    pub(super) head: u64,
    /// The newest position dropped from our op log (0: none); a peer behind it gets a snapshot.
    pub(super) oplog_start: u64,
    /// The newest single-entry commits (position, operations), from commit events.
    recent: VecDeque<(u64, Arc<[Operation]>)>,
    /// Operations in `recent`.
    recent_ops: usize,
    /// Record states read since the database last changed: every scoped connection asks
    /// for the same records after a commit, and reads them once.
    states: HashMap<RecordKey, Option<Arc<RecordView>>>,
}

/// Most record states kept in [`DbLog::states`].
const STATE_CACHE: usize = 4096;

impl DbLog {
    pub(super) fn new(db: Database, head: u64, oplog_start: u64) -> DbLog {
        DbLog {
            node: db.node_id(),
            db,
            head,
            oplog_start,
            recent: VecDeque::new(),
            recent_ops: 0,
            states: HashMap::new(),
        }
    }

    /// The database committed entries `first..=last` holding `ops`.
    fn committed(&mut self, first: u64, last: u64, ops: Arc<[Operation]>) {
        self.states.clear();
        self.head = self.head.max(last);
        // Keep single-entry commits to stream without reading them back.
        if first == last && !ops.is_empty() && ops.len() <= RECENT_OPS {
            self.recent_ops += ops.len();
            self.recent.push_back((last, ops));
            while self.recent.len() > RECENT_ENTRIES || self.recent_ops > RECENT_OPS {
                let Some((_, dropped)) = self.recent.pop_front() else {
                    break;
                };
                self.recent_ops -= dropped.len();
            }
        }
    }

    /// The positions [`SessionLog::keep_for`] stored, per peer.
    fn kept_for(&self) -> blazedb_core::Result<Vec<(NodeId, u64)>> {
        let stored = self
            .db
            .replication()
            .local_setting(KEPT_FOR_SETTING)?
            .unwrap_or_default();
        Ok(stored
            .chunks_exact(24)
            .filter_map(|entry| {
                let node = <[u8; 16]>::try_from(entry.get(..16)?).ok()?;
                let position = <[u8; 8]>::try_from(entry.get(16..)?).ok()?;
                Some((NodeId(Uuid::from_bytes(node)), u64::from_be_bytes(position)))
            })
            .collect())
    }

    /// The lowest position a peer that cannot take a snapshot certainly has: compaction must
    /// not drop entries after it, connected or not.
    pub(super) fn kept_from(&self) -> blazedb_core::Result<Option<u64>> {
        Ok(self.kept_for()?.into_iter().map(|(_, p)| p).min())
    }

    /// The entries right after position `from`, if the commit events kept them: positions
    /// `from + 1`, `from + 2`, … with nothing between (an entry at `from + 1` is certainly
    /// the next one). Only the operations `keep` accepts are copied; the position of the
    /// last entry is returned too.
    fn recent_after(
        &self,
        from: u64,
        keep: &dyn Fn(u64, &Operation) -> bool,
    ) -> Option<(Entries, u64)> {
        // Positions in `recent` increase (commit order).
        let mut at = self.recent.partition_point(|(p, _)| *p <= from);
        let mut out = Vec::new();
        let (mut position, mut read) = (from, 0);
        while read < MAX_BATCH_OPS {
            let Some((p, ops)) = self.recent.get(at).filter(|(p, _)| *p == position + 1) else {
                break;
            };
            out.extend(
                ops.iter()
                    .filter(|op| keep(*p, op))
                    .map(|op| (*p, op.clone())),
            );
            read += ops.len();
            position = *p;
            at += 1;
        }
        (position > from).then_some((out, position))
    }
}

impl SessionLog for DbLog {
    fn node(&self) -> NodeId {
        self.node
    }

    fn head(&self) -> u64 {
        self.head
    }

    fn refresh_head(&mut self) -> blazedb_core::Result<u64> {
        // Another handle may have written.
        self.states.clear();
        self.head = self.head.max(self.db.replication().oplog_head()?);
        Ok(self.head)
    }

    fn start(&self) -> u64 {
        self.oplog_start
    }

    fn entries_after(&mut self, from: u64) -> blazedb_core::Result<Option<Vec<(u64, Operation)>>> {
        Ok(self
            .entries_after_where(from, &|_, _| true)?
            .map(|(entries, _)| entries))
    }

    fn entries_after_where(
        &mut self,
        from: u64,
        keep: &dyn Fn(u64, &Operation) -> bool,
    ) -> blazedb_core::Result<Option<(Entries, u64)>> {
        let (entries, last) = match self.recent_after(from, keep) {
            Some(read) => read,
            None => match self.db.replication().oplog_since(from, MAX_BATCH_OPS) {
                Ok(entries) => {
                    let last = entries.last().map_or(from, |(p, _)| *p);
                    let kept = entries.into_iter().filter(|(p, op)| keep(*p, op)).collect();
                    (kept, last)
                }
                Err(e @ blazedb_core::Error::OplogCompacted { .. }) => {
                    // Another handle compacted the log under this stream: a snapshot
                    // continues it.
                    let start = self.db.replication().oplog_start()?;
                    if start <= self.oplog_start {
                        return Err(e);
                    }
                    self.oplog_start = start;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            },
        };
        if last > from {
            self.head = self.head.max(last);
        } else {
            // The head we were told of is not visible yet (or was rolled back).
            self.head = from;
        }
        Ok(Some((entries, last)))
    }

    fn peer_cursor(&mut self, peer: NodeId) -> blazedb_core::Result<u64> {
        self.db.replication().peer_cursor(peer)
    }

    fn version_vector(&mut self) -> blazedb_core::Result<VersionVector> {
        self.db.replication().version_vector()
    }

    fn op_digest(&mut self, op: OpId) -> blazedb_core::Result<Option<OpDigest>> {
        self.db.replication().op_digest(op)
    }

    fn confirm_own(&mut self, seq: u64) -> blazedb_core::Result<()> {
        self.db.replication().confirm_own(seq)
    }

    fn apply(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        covered: Option<&VersionVector>,
    ) -> blazedb_core::Result<ApplyReport> {
        self.states.clear();
        self.db.transaction(|tx| {
            let report = tx.replication().apply_remote(ops)?;
            if let Some(covered) = covered {
                tx.replication().merge_version_vector(covered)?;
            }
            tx.replication().set_peer_cursor(peer, to)?;
            Ok(report)
        })
    }

    fn apply_checked(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        write: &WriteScope,
        read: Option<&ReadScope>,
    ) -> blazedb_core::Result<Checked> {
        self.states.clear();
        let mut readable = Vec::new();
        self.db.transaction(|tx| {
            readable.clear();
            let (report, refused) = tx.replication().apply_remote_checked(
                ops,
                |op, before| check_write(write, read, op, before, &mut readable),
                |op| !write.is_sealed(&op.collection),
            )?;
            tx.replication().set_peer_cursor(peer, to)?;
            let refused = refused
                .into_iter()
                .filter_map(|r| ops.get(r.index).map(|op| (op.id, r.refusal, r.undo)))
                .collect();
            Ok(Checked {
                report,
                refused,
                readable: std::mem::take(&mut readable),
            })
        })
    }

    fn reject(
        &mut self,
        peer: NodeId,
        refused: &[(Operation, RejectCode, String)],
    ) -> blazedb_core::Result<()> {
        self.db.transaction(|tx| {
            for (op, code, reason) in refused {
                tx.replication().reject(peer, op, *code, reason)?;
            }
            Ok(())
        })
    }

    fn record_state(&mut self, key: &RecordKey) -> blazedb_core::Result<Option<RecordState>> {
        Ok(self.record_view(key)?.map(|view| view.state.clone()))
    }

    fn record_view(&mut self, key: &RecordKey) -> blazedb_core::Result<Option<Arc<RecordView>>> {
        if let Some(view) = self.states.get(key) {
            return Ok(view.clone());
        }
        let view = self
            .db
            .replication()
            .record_state(&key.collection, key.id)?
            .map(|state| Arc::new(RecordView::of(key, state)));
        if self.states.len() >= STATE_CACHE {
            self.states.clear();
        }
        self.states.insert(key.clone(), view.clone());
        Ok(view)
    }

    fn purge(&mut self, keys: &[RecordKey], reason: PurgeReason) -> blazedb_core::Result<usize> {
        self.states.clear();
        self.db.transaction(|tx| {
            let mut purged = 0;
            for key in keys {
                if tx.replication().purge(&key.collection, key.id, reason)? {
                    purged += 1;
                }
            }
            Ok(purged)
        })
    }

    fn save_cursor(&mut self, peer: NodeId, cursor: u64) -> blazedb_core::Result<()> {
        self.db
            .transaction(|tx| tx.replication().set_peer_cursor(peer, cursor))
    }

    fn keep_for(&mut self, peer: NodeId, position: u64) -> blazedb_core::Result<()> {
        let mut all = self.kept_for()?;
        match all.iter_mut().find(|(node, _)| *node == peer) {
            Some((_, kept)) if *kept >= position => return Ok(()),
            Some((_, kept)) => *kept = position,
            None => all.push((peer, position)),
        }
        let mut stored = Vec::with_capacity(all.len() * 24);
        for (node, position) in all {
            stored.extend_from_slice(node.as_bytes());
            stored.extend_from_slice(&position.to_be_bytes());
        }
        self.db
            .replication()
            .set_local_setting(KEPT_FOR_SETTING, Some(&stored))
    }

    fn snapshot_info(&mut self) -> blazedb_core::Result<SnapshotInfo> {
        let info = self.db.replication().snapshot_info()?;
        self.head = self.head.max(info.position);
        Ok(info)
    }

    fn snapshot_page(
        &mut self,
        after: Option<&SnapshotKey>,
        records: usize,
        bytes: usize,
    ) -> blazedb_core::Result<(Vec<SnapshotRecord>, Option<SnapshotKey>)> {
        self.db.replication().snapshot_page(after, records, bytes)
    }

    fn apply_snapshot(
        &mut self,
        peer: NodeId,
        records: &[SnapshotRecord],
        last: Option<(&VersionVector, u64)>,
    ) -> blazedb_core::Result<usize> {
        self.states.clear();
        self.db.transaction(|tx| {
            let report = tx.replication().apply_snapshot(peer, records)?;
            if let Some((vector, position)) = last {
                tx.replication().merge_version_vector(vector)?;
                tx.replication().set_peer_cursor(peer, position)?;
            }
            Ok(report.applied)
        })
    }
}

/// One connection: its relay and its session.
struct Conn {
    id: ConnectionId,
    relay: Box<dyn Relay>,
    transport: &'static str,
    session: Session,
    /// Left out of rounds until routing finds a record for it or it gets an event (see
    /// [`super::routing`]); not in [`Worker::active`].
    parked: bool,
    routing: Membership,
}

impl Conn {
    /// Brings a parked connection back among the `active` ones, its stream passed over up to
    /// `to` (nothing routed before it was for it); false if it was not parked.
    fn unpark(&mut self, active: &mut HashSet<ConnectionId>, to: u64, since: Instant) -> bool {
        if !self.parked {
            return false;
        }
        self.parked = false;
        self.session.pass_over(to, since);
        active.insert(self.id);
        true
    }

    /// Carries out what the session asked for, in order. A send that fails ends the
    /// session (and drops what it asked for after).
    fn carry_out(&mut self) {
        for output in self.session.take_outputs() {
            match output {
                Output::Send(message) => {
                    if let Err(e) = self.relay.send(message) {
                        self.session.end(format!("sending failed: {e}"));
                        self.session.take_outputs();
                        self.relay.close();
                        return;
                    }
                }
                Output::Close(code, reason) => {
                    let _ = self.relay.send(Message::close(code, reason));
                }
                Output::End => self.relay.close(),
            }
        }
    }
}

/// The earliest moment any connection's liveness or deferred ranges may be due: a lower
/// bound (a connection's own moments only move later between the times it is driven), so
/// that the engine looks at every connection only when one may be due.
#[derive(Default)]
struct Timers {
    liveness: Option<Instant>,
    flush: Option<Instant>,
}

impl Timers {
    fn note(&mut self, session: &Session, options: &EngineOptions) {
        let earliest = |a: &mut Option<Instant>, b: Instant| *a = Some(a.map_or(b, |a| a.min(b)));
        if session.is_open() {
            earliest(&mut self.liveness, session.liveness_due(options));
        }
        if let Some(due) = session.flush_due() {
            earliest(&mut self.flush, due);
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.liveness.is_some_and(|d| d <= now) || self.flush.is_some_and(|d| d <= now)
    }
}

pub(super) struct Worker {
    pub(super) log: DbLog,
    pub(super) name: String,
    pub(super) events: Sender<Event>,
    connections: HashMap<ConnectionId, Conn>,
    /// The connections every round looks at: all but the parked ones.
    active: HashSet<ConnectionId>,
    routing: Routing,
    timers: Timers,
    waiters: Vec<(Instant, Sender<bool>)>,
    pub(super) counters: Arc<Counters>,
    pub(super) options: EngineOptions,
}

impl Worker {
    pub(super) fn new(
        log: DbLog,
        name: String,
        events: Sender<Event>,
        counters: Arc<Counters>,
        options: EngineOptions,
    ) -> Worker {
        Worker {
            log,
            name,
            events,
            connections: HashMap::new(),
            active: HashSet::new(),
            routing: Routing::default(),
            timers: Timers::default(),
            waiters: Vec::new(),
            counters,
            options,
        }
    }

    /// Runs `f` on connection `id`'s session (if it exists; a parked one joins the active
    /// ones first), then carries out what the session asked for and adds its counts to the
    /// engine's.
    fn with_session<T>(
        &mut self,
        id: ConnectionId,
        f: impl FnOnce(&mut Session, &mut DbLog) -> T,
    ) -> Option<T> {
        let conn = self.connections.get_mut(&id)?;
        let since = self.routing.passed_over_since.unwrap_or_else(Instant::now);
        conn.unpark(&mut self.active, self.routing.routed_to, since);
        let (connections, mut book) = self.split();
        let conn = connections.get_mut(&id)?;
        Some(drive(conn, &mut book, f))
    }

    /// The connections, and what driving one of them touches besides.
    fn split(&mut self) -> (&mut HashMap<ConnectionId, Conn>, Book<'_>) {
        (
            &mut self.connections,
            Book {
                log: &mut self.log,
                counters: &self.counters,
                routing: &mut self.routing,
                timers: &mut self.timers,
                options: &self.options,
            },
        )
    }

    pub(super) fn run(mut self, rx: Receiver<Event>) {
        loop {
            // The earliest moment a connection may have to be pinged or closed, deferred
            // ranges sent, or a waiter answered.
            let sweep = self
                .routing
                .passed_over_since
                .map(|since| since + ECHO_FLUSH_AFTER);
            let deadline = self
                .waiters
                .iter()
                .map(|(d, _)| *d)
                .chain(self.timers.liveness)
                .chain(self.timers.flush)
                .chain(sweep)
                .min();
            let first = match deadline {
                None => match rx.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                },
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            self.on_timers(Instant::now());
                            self.answer_waiters();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut stop = false;
            let mut event = Some(first);
            let mut handled = 0;
            while let Some(e) = event.take() {
                if matches!(e, Event::Command(Command::Shutdown)) {
                    stop = true;
                    break;
                }
                self.handle(e);
                handled += 1;
                if handled < MAX_EVENTS_PER_ROUND {
                    event = rx.try_recv().ok();
                }
            }
            self.round();
            self.on_timers(Instant::now());
            self.answer_waiters();
            if stop {
                break;
            }
        }
        self.for_each_session(|s, log, _, _| {
            s.save_cursor(log);
            s.close_with(
                CloseCode::GoingAway,
                "the sync engine is shutting down".into(),
            );
        });
        for (_, reply) in self.waiters.drain(..) {
            let _ = reply.send(false);
        }
    }

    /// After the events of a round: everything received is applied first (it may make
    /// more to send), then new log entries are routed to the parked connections they
    /// concern, then the active connections stream, and those that caught up park.
    fn round(&mut self) {
        let active: Vec<ConnectionId> = self.active.iter().copied().collect();
        for id in &active {
            self.with_session(*id, |s, log| s.apply_inbound(log));
        }
        self.route();
        let active: Vec<ConnectionId> = self.active.iter().copied().collect();
        for id in &active {
            self.with_session(*id, |s, log| {
                let now = Instant::now();
                s.pump(log, now);
                s.flush_if_due(now);
            });
        }
        let head = self.log.head;
        for id in active {
            if let Some(conn) = self.connections.get_mut(&id)
                && conn.routing.grouped()
                && conn.session.routable(head)
            {
                conn.parked = true;
                self.active.remove(&id);
            }
        }
    }

    /// Routes the new entries of our log (see [`super::routing`]): the parked connections
    /// they concern wake up, and every connection whose stream stood where routing last
    /// stopped gets, for its next pump, the records that concern it (or passes over the
    /// entries at once when none does). The other parked connections pass over them later.
    fn route(&mut self) {
        if !self.routing.has_groups() {
            // Nobody filters: every connection reads every entry.
            self.routing.routed_to = self.routing.routed_to.max(self.log.head);
            return;
        }
        if self.log.head <= self.routing.routed_to {
            return;
        }
        let before = self.routing.routed_to;
        // Active connections whose stream stands where routing stopped can take a hint.
        let hintable: Vec<ConnectionId> = self
            .active
            .iter()
            .copied()
            .filter(|id| {
                self.connections
                    .get(id)
                    .is_some_and(|c| c.routing.grouped() && c.session.takes_route_from(before))
            })
            .collect();
        if hintable.is_empty() && self.active.len() == self.connections.len() {
            // Nobody to route to (a device pushing, whose own writes keep it active): every
            // connection reads the entries itself, and nothing needs a record read here.
            self.routing.routed_to = self.log.head;
            return;
        }
        let now = Instant::now();
        let since = self.routing.passed_over_since.unwrap_or(now);
        let mut relevant = match self.routing.route(&mut self.log) {
            Ok(Route::To(relevant)) => relevant,
            // A failed read is left to the pumps, which report it per connection.
            Ok(Route::Everyone) | Err(_) => {
                for conn in self.connections.values_mut() {
                    conn.unpark(&mut self.active, before, since);
                }
                return;
            }
        };
        let through = self.routing.routed_to;
        for id in hintable {
            if let Some(conn) = self.connections.get_mut(&id) {
                match relevant.remove(&id) {
                    Some(records) => conn.session.hint_route(through, records),
                    // Still short of an earlier hint: the range joins it.
                    None if conn.session.has_route_hint() => {
                        conn.session.hint_route(through, HashSet::new());
                    }
                    None => conn.session.pass_over(through, now),
                }
            }
        }
        for (id, records) in relevant {
            if let Some(conn) = self.connections.get_mut(&id)
                && conn.unpark(&mut self.active, before, since)
            {
                conn.session.hint_route(through, records);
            }
        }
        if self.active.len() < self.connections.len() {
            self.routing.passed_over_since.get_or_insert(since);
        }
    }

    /// Brings every parked connection's stream up to what was routed (nothing in between
    /// is for it), as if it had been pumped.
    fn catch_up_parked(&mut self) {
        let Some(since) = self.routing.passed_over_since else {
            return;
        };
        let to = self.routing.routed_to;
        for conn in self.connections.values_mut().filter(|c| c.parked) {
            conn.session.pass_over(to, since);
            self.timers.note(&conn.session, &self.options);
        }
    }

    /// Pings quiet peers, closes silent ones and sends deferred ranges, when one may be due.
    fn on_timers(&mut self, now: Instant) {
        if self
            .routing
            .passed_over_since
            .is_some_and(|since| since + ECHO_FLUSH_AFTER <= now)
        {
            // Parked connections have ranges waiting: their peers' cursors must move too.
            self.catch_up_parked();
            self.routing.passed_over_since = None;
            self.timers.flush = Some(now);
        }
        if !self.timers.due(now) {
            return;
        }
        self.timers = Timers::default();
        self.for_each_session(|s, log, now, options| {
            s.check_liveness(log, options, now);
            s.flush_if_due(now);
        });
    }

    /// Runs `f` on every session, parked or not.
    fn for_each_session(
        &mut self,
        mut f: impl FnMut(&mut Session, &mut DbLog, Instant, &EngineOptions),
    ) {
        let (connections, mut book) = self.split();
        for conn in connections.values_mut() {
            let options = book.options;
            drive(conn, &mut book, |s, log| f(s, log, Instant::now(), options));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Committed { first, last, ops } => self.log.committed(first, last, ops),
            Event::Message {
                connection,
                message,
                hold,
            } => self.on_message(connection, message, hold),
            Event::Closed { connection, reason } => {
                self.with_session(connection, |s, log| {
                    s.apply_inbound(log);
                    s.save_cursor(log);
                    s.end(reason);
                });
            }
            Event::Command(command) => self.on_command(command),
        }
    }

    fn on_message(&mut self, id: ConnectionId, message: Message, hold: Option<Hold>) {
        self.with_session(id, |s, log| {
            s.on_message(log, message, hold, Instant::now())
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { id, relay, options } => self.on_connect(id, relay, *options),
            Command::Disconnect { id, close, reply } => {
                self.with_session(id, |s, log| {
                    s.apply_inbound(log);
                    s.save_cursor(log);
                    let (code, reason) =
                        close.unwrap_or((CloseCode::Normal, "disconnected".into()));
                    s.close_with(code, reason);
                });
                self.active.remove(&id);
                let result = match self.connections.remove(&id) {
                    Some(mut conn) => {
                        self.routing.remove(id, &conn.routing, &mut conn.session);
                        Ok(())
                    }
                    None => Err(SyncError::UnknownConnection(id.0)),
                };
                let _ = reply.send(result);
            }
            Command::Rescan => {
                // The pump at the end of this round sends what is new. A failing read is
                // left for that pump, which reports storage errors per connection.
                let _ = self.log.refresh_head();
            }
            Command::CompactOplog { keep, reply } => {
                let _ = reply.send(self.compact_oplog(keep));
            }
            Command::Barrier { id, reply } => {
                let result = self
                    .with_session(id, |s, log| {
                        s.apply_inbound(log);
                        s.barrier().ok_or(SyncError::RelayClosed)
                    })
                    .unwrap_or(Err(SyncError::UnknownConnection(id.0)));
                let _ = reply.send(result);
            }
            Command::SetMode { id, mode, reply } => {
                let _ = reply.send(self.set_mode(id, mode));
            }
            Command::SetScope {
                id,
                scope,
                reason,
                reply,
            } => {
                let result = self
                    .with_session(id, |s, log| s.set_scope(log, scope.map(|b| *b), reason))
                    .ok_or(SyncError::UnknownConnection(id.0));
                let _ = reply.send(result);
            }
            Command::SetPolicy { id, policy, reply } => {
                let result = self
                    .with_session(id, |s, _| s.set_policy(policy.map(|b| *b)))
                    .ok_or(SyncError::UnknownConnection(id.0));
                let _ = reply.send(result);
            }
            Command::SetWriteScope { id, scope, reply } => {
                let result = self
                    .with_session(id, |s, _| s.options.write_scope = scope.map(|b| *b))
                    .ok_or(SyncError::UnknownConnection(id.0));
                let _ = reply.send(result);
            }
            Command::Status { only, reply } => {
                let _ = reply.send(self.status(only));
            }
            Command::WaitIdle { deadline, reply } => self.waiters.push((deadline, reply)),
            Command::Shutdown => {}
        }
    }

    fn on_connect(&mut self, id: ConnectionId, mut relay: Box<dyn Relay>, options: ConnectOptions) {
        let inbox = Inbox {
            connection: id,
            events: self.events.clone(),
        };
        let transport = relay.kind();
        let started = relay.start(inbox);
        let mut session = Session::new(&self.name, options, Instant::now());
        session.held.keep_journal();
        self.connections.insert(
            id,
            Conn {
                id,
                relay,
                transport,
                session,
                parked: false,
                routing: Membership::default(),
            },
        );
        self.active.insert(id);
        self.with_session(id, |s, log| match started {
            Ok(()) => s.start(log),
            Err(e) => s.end(format!("the relay did not start: {e}")),
        });
    }

    fn set_mode(&mut self, id: ConnectionId, mode: Mode) -> Result<()> {
        self.with_session(id, |s, log| s.set_mode(log, mode))
            .ok_or(SyncError::UnknownConnection(id.0))
    }

    /// See [`super::SyncEngine::compact_oplog`].
    fn compact_oplog(&mut self, keep: u64) -> Result<u64> {
        let head = self.log.refresh_head()?;
        self.catch_up_parked();
        // A peer that cannot take a snapshot (a device's server) keeps, connected or not,
        // every entry after what it certainly has: its own writes could never reach it again.
        self.for_each_session(|s, log, _, _| s.save_kept(log));
        let through = self
            .connections
            .values()
            .filter_map(|c| c.session.streams_from())
            .chain(self.log.kept_from()?)
            .fold(head.saturating_sub(keep), u64::min);
        self.log.oplog_start = self.log.db.replication().compact_oplog(through)?;
        Ok(self.log.oplog_start)
    }

    fn status(&mut self, only: Option<ConnectionId>) -> Result<Vec<ConnectionStatus>> {
        self.catch_up_parked();
        let db = &self.log.db;
        let total = db.replication().oplog_ops_through(u64::MAX)?;
        let mut conns: Vec<&Conn> = self
            .connections
            .values()
            .filter(|c| only.is_none_or(|id| c.id == id))
            .collect();
        conns.sort_by_key(|c| c.id);
        let now = Instant::now();
        let mut out = Vec::with_capacity(conns.len());
        for c in conns {
            let s = &c.session;
            let ops_pending = if s.options.mode.sends() {
                total.saturating_sub(
                    db.replication()
                        .oplog_ops_through(s.acked.max(s.skipped_to))?,
                )
            } else {
                0
            };
            out.push(ConnectionStatus {
                id: c.id,
                name: s.options.name.clone(),
                transport: c.transport,
                mode: s.options.mode,
                peer: s.peer,
                connected: s.is_open() && s.peer.is_some(),
                ops_pending,
                last_ack: s.last_ack,
                lag: s.lag(now),
                ops_sent: s.ops_sent,
                ops_applied: s.ops_applied,
                ops_duplicate: s.ops_duplicate,
                messages_sent: s.messages_sent,
                messages_received: s.messages_received,
                streaming: s.is_open() && s.outbound.is_some(),
                cursor: s.cursor,
                cursor_at_start: s.cursor_at_hello,
                peer_head: s.peer_head,
                barrier: s.barrier,
                closed_reason: s.closed_reason.clone(),
                log_compacted_past_peer: s.compacted_past_peer,
                peer_close_code: s.peer_close_code,
                close_code: s.close_code,
                snapshot_in: s.snapshot_in.as_ref().map(|x| (x.records, x.total)),
                scoped_records_held: s.options.scope.as_ref().map(|_| s.held.len()),
                states_sent: s.states_sent,
                purges_sent: s.purges_sent,
                states_applied: s.states_applied,
                records_purged: s.records_purged,
                ops_refused: s.ops_refused,
                rejections_received: s.rejections_received,
                ops_examined: s.ops_examined,
                snapshot_out: s
                    .outbound
                    .as_ref()
                    .and_then(|o| o.snapshot.as_ref())
                    .map(|x| (x.records_sent, x.total)),
            });
        }
        Ok(out)
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        self.catch_up_parked();
        let head = self.log.head;
        let idle = self.connections.values().all(|c| c.session.idle(head));
        let now = Instant::now();
        self.waiters.retain(|(deadline, reply)| {
            if idle {
                let _ = reply.send(true);
                false
            } else if *deadline <= now {
                let _ = reply.send(false);
                false
            } else {
                true
            }
        });
    }
}

/// What driving a session touches besides its connection.
struct Book<'a> {
    log: &'a mut DbLog,
    counters: &'a Counters,
    routing: &'a mut Routing,
    timers: &'a mut Timers,
    options: &'a EngineOptions,
}

/// Runs `f` on `conn`'s session, carries out its outputs, counts what it did, and notes
/// what changed for routing and timers.
fn drive<T>(
    conn: &mut Conn,
    book: &mut Book<'_>,
    f: impl FnOnce(&mut Session, &mut DbLog) -> T,
) -> T {
    let s = &conn.session;
    let before = (s.ops_applied, s.ops_duplicate, s.ops_sent);
    let result = f(&mut conn.session, book.log);
    let s = &conn.session;
    let counters = book.counters;
    counters
        .applied
        .fetch_add(s.ops_applied - before.0, Ordering::Relaxed);
    counters
        .duplicates
        .fetch_add(s.ops_duplicate - before.1, Ordering::Relaxed);
    counters
        .sent
        .fetch_add(s.ops_sent - before.2, Ordering::Relaxed);
    conn.carry_out();
    book.routing
        .note(conn.id, &mut conn.routing, &mut conn.session);
    book.timers.note(&conn.session, book.options);
    result
}
