//! What a session needs from the outside: the database it reads and writes
//! ([`SessionLog`]) and the actions it asks of its connection ([`Output`]).

use std::sync::Arc;

use blazedb_access::{ReadScope, WriteRefusal, WriteScope};

use blazedb_core::{
    ApplyReport, NodeId, OpId, Operation, PurgeReason, Record, RecordState, RejectCode,
    SnapshotInfo, SnapshotKey, VersionVector,
};
use blazedb_format::{OpDigest, SnapshotRecord};
use blazedb_protocol::{CloseCode, Message, RecordKey};

/// Operations of our log with their positions, as read for a peer.
pub(crate) type Entries = Vec<(u64, Operation)>;

/// What a session reads from and writes to its database. The engine implements it on the
/// SQLite database (with its cache of recent entries); tests implement it on a `Vec`.
pub(crate) trait SessionLog {
    /// This database's node id.
    fn node(&self) -> NodeId;
    /// The newest op-log position known (no read).
    fn head(&self) -> u64;
    /// Reads the head again (another handle may have written): the new head.
    fn refresh_head(&mut self) -> blazedb_core::Result<u64>;
    /// The newest position dropped from the log (0: none).
    fn start(&self) -> u64;
    /// The entries after position `from`, at most about [`crate::MAX_BATCH_OPS`] operations
    /// (whole entries); empty when none is visible. `None` when the log was compacted past
    /// `from` since [`SessionLog::start`] was read (the stream continues with a snapshot).
    fn entries_after(&mut self, from: u64) -> blazedb_core::Result<Option<Vec<(u64, Operation)>>>;
    /// Like [`SessionLog::entries_after`], keeping only the operations `keep` accepts (with
    /// their positions), and the position of the last entry read (`from` when none is
    /// visible). The engine avoids copying the others.
    fn entries_after_where(
        &mut self,
        from: u64,
        keep: &dyn Fn(u64, &Operation) -> bool,
    ) -> blazedb_core::Result<Option<(Entries, u64)>> {
        Ok(self.entries_after(from)?.map(|entries| {
            let last = entries.last().map_or(from, |(p, _)| *p);
            let kept = entries.into_iter().filter(|(p, op)| keep(*p, op)).collect();
            (kept, last)
        }))
    }
    /// Our durable cursor into `peer`'s log.
    fn peer_cursor(&mut self, peer: NodeId) -> blazedb_core::Result<u64>;
    /// Which operations this database has.
    fn version_vector(&mut self) -> blazedb_core::Result<VersionVector>;
    /// The digest of operation `op` as stored here, if it is.
    fn op_digest(&mut self, op: OpId) -> blazedb_core::Result<Option<OpDigest>>;
    /// A peer confirmed our own operation `seq` as we have it.
    fn confirm_own(&mut self, seq: u64) -> blazedb_core::Result<()>;
    /// Merges `ops` from `peer` and sets the cursor into its log to `to`, in one transaction.
    /// With `covered` (a peer that filters what it sends), also counts every operation the
    /// vector describes as here: the ones left out were not for us.
    fn apply(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        covered: Option<&VersionVector>,
    ) -> blazedb_core::Result<ApplyReport>;
    /// Like [`SessionLog::apply`] for a peer whose writes are checked against `write`: each
    /// new operation on the record as the accepted ones before it leave it. A refused one
    /// is counted as received without being applied and undone by a new operation of ours,
    /// in the same transaction.
    /// With `read`, also notes which accepted operations leave their record readable to the
    /// peer (`Checked::readable`), so that sending back what it wrote needs no state read.
    fn apply_checked(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        write: &WriteScope,
        read: Option<&ReadScope>,
    ) -> blazedb_core::Result<Checked>;
    /// Puts our own operations that `peer` refused into the rejection inbox, in one
    /// transaction.
    fn reject(
        &mut self,
        peer: NodeId,
        refused: &[(Operation, RejectCode, String)],
    ) -> blazedb_core::Result<()>;
    /// A record's full replicated state here, if this database has seen it.
    fn record_state(&mut self, key: &RecordKey) -> blazedb_core::Result<Option<RecordState>>;
    /// The same, shared, with the record as an application reads it (`None` when deleted):
    /// what every filtering connection evaluates after a commit.
    fn record_view(&mut self, key: &RecordKey) -> blazedb_core::Result<Option<Arc<RecordView>>> {
        Ok(self
            .record_state(key)?
            .map(|state| Arc::new(RecordView::of(key, state))))
    }
    /// Removes records that left what this database may hold, without a trace (no
    /// tombstone, no op-log entry), in one transaction. Returns how many were here.
    fn purge(&mut self, keys: &[RecordKey], reason: PurgeReason) -> blazedb_core::Result<usize>;
    /// Saves the cursor into `peer`'s log.
    fn save_cursor(&mut self, peer: NodeId, cursor: u64) -> blazedb_core::Result<()>;
    /// Records durably that `peer`, which cannot take a snapshot from us, holds our log up to
    /// `position` (a stored position only rises): compaction keeps every entry after it,
    /// since such a peer can get them only as operations.
    fn keep_for(&mut self, peer: NodeId, position: u64) -> blazedb_core::Result<()>;
    /// Starts reading a snapshot of this database.
    fn snapshot_info(&mut self) -> blazedb_core::Result<SnapshotInfo>;
    /// The next page of the snapshot after `after`, and where the one after continues.
    fn snapshot_page(
        &mut self,
        after: Option<&SnapshotKey>,
        records: usize,
        bytes: usize,
    ) -> blazedb_core::Result<(Vec<SnapshotRecord>, Option<SnapshotKey>)>;
    /// Joins one snapshot part from `peer`; with `last`, also merges the snapshot's vector and
    /// sets the cursor to its position, in the same transaction. Returns records applied.
    fn apply_snapshot(
        &mut self,
        peer: NodeId,
        records: &[SnapshotRecord],
        last: Option<(&VersionVector, u64)>,
    ) -> blazedb_core::Result<usize>;
}

/// What [`SessionLog::apply_checked`] did: the report of the accepted operations, and per
/// refused one its refusal and the operation that undoes it.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub(crate) report: ApplyReport,
    pub(crate) refused: Vec<(OpId, WriteRefusal, Option<Operation>)>,
    /// Accepted operations after which the peer may still read the record.
    pub(crate) readable: Vec<OpId>,
}

/// The check of [`SessionLog::apply_checked`] for one operation, on the record's state before
/// it: `write` must accept it, and when `read` may still read the record afterwards, the
/// operation is noted in `readable`.
pub(crate) fn check_write(
    write: &WriteScope,
    read: Option<&ReadScope>,
    op: &Operation,
    before: Option<&RecordState>,
    readable: &mut Vec<OpId>,
) -> Result<(), WriteRefusal> {
    let after = write.check_leaving(op, before)?;
    if read.is_some_and(|read| {
        after
            .as_ref()
            .is_some_and(|r| read.may_read_record(&op.collection, r))
    }) {
        readable.push(op.id);
    }
    Ok(())
}

/// A record's replicated state and its visible record, read once and shared.
#[derive(Debug)]
pub(crate) struct RecordView {
    pub(crate) state: RecordState,
    pub(crate) record: Option<Record>,
}

impl RecordView {
    pub(crate) fn of(key: &RecordKey, state: RecordState) -> RecordView {
        let record = state
            .visible_fields()
            .map(|fields| Record { id: key.id, fields });
        RecordView { state, record }
    }
}

/// What the connection must do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send this message.
    Send(Message),
    /// Send `Close { code, reason }` (an [`Output::End`] follows).
    Close(CloseCode, String),
    /// End the connection: nothing more is sent or received on it.
    End,
}
