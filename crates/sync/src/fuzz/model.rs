//! [`MemLog`]: the in-memory database the session fuzz harness and the session's unit tests
//! run [`crate::engine::session::Session`]s on, with the semantics of the engine's SQLite
//! `DbLog`.

// A test model: it panics on purpose where the engine's database would fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use blazedb_core::{
    ApplyReport, Date, NodeId, OpId, OpKind, Operation, PurgeReason, RecordState, RejectCode,
    SnapshotInfo, SnapshotKey, SnapshotRecord, Uuid, Value, VersionVector,
};
use blazedb_format::OpDigest;
use blazedb_protocol::RecordKey;

use crate::engine::MAX_BATCH_OPS;
use crate::engine::session::{Checked, SessionLog, check_write};
use blazedb_access::{ReadScope, WriteScope};

/// Operation `seq` of node `origin` at Lamport time `lamport`: an insert (an update when
/// `seq` is a multiple of 3) of one of eight records of collection `bugs`, so that the writes
/// of different nodes meet on the same records.
pub(crate) fn make_op(origin: NodeId, seq: u64, lamport: u64) -> Operation {
    Operation {
        id: OpId { origin, seq },
        lamport,
        wall: Date::from_unix_millis(1_700_000_000_000 + (seq % 1000) as i64),
        kind: if seq.is_multiple_of(3) {
            OpKind::Update
        } else {
            OpKind::Insert
        },
        collection: "bugs".into(),
        record: Uuid::from_u128(u128::from(seq % 8) + 1),
        fields: [("n".to_owned(), Value::Int(seq as i64))].into(),
    }
}

/// A database in memory with the semantics the engine's `DbLog` has over SQLite, for
/// [`Session`]s in unit tests and fuzz targets: an op log of entries `(position,
/// operations)`, the operations held with their digests, a version vector (per origin, the
/// sequence numbers held without a gap; our own: the highest issued), durable cursors per
/// peer (which only move forward, like `TransactionReplication::set_peer_cursor`), record states (so
/// that snapshots have something to carry), and counts of what was merged.
pub(crate) struct MemLog {
    pub(crate) node: NodeId,
    /// The op log, positions increasing.
    pub(crate) entries: Vec<(u64, Vec<Operation>)>,
    pub(crate) head: u64,
    /// The newest position compacted away (0: none).
    pub(crate) start: u64,
    /// Positions to leave out before the next entry (positions need not be contiguous).
    pub(crate) skip: u64,
    /// Every operation held, own and merged, with its digest.
    pub(crate) digests: HashMap<OpId, OpDigest>,
    /// How many times each operation of another node was merged here (never more than once).
    pub(crate) merges: HashMap<OpId, u32>,
    pub(crate) vector: VersionVector,
    /// Operations merged ahead of a gap in their origin's sequence (the core's `merged_ops`).
    pub(crate) beyond: BTreeSet<OpId>,
    /// Operations of other nodes merged ahead of a gap: the protocol delivers each origin's
    /// operations in order, so this stays 0.
    pub(crate) out_of_order: u64,
    pub(crate) cursors: HashMap<NodeId, u64>,
    pub(crate) own_seq: u64,
    pub(crate) lamport: u64,
    /// Per peer that cannot take a snapshot, the position of our log it certainly has
    /// (`keep_for`).
    pub(crate) kept: HashMap<NodeId, u64>,
    /// The highest own sequence number a peer confirmed (`confirm_own`).
    pub(crate) own_confirmed: u64,
    pub(crate) records: BTreeMap<(String, Uuid), RecordState>,
    /// The rejection inbox: our operations a peer refused.
    pub(crate) rejections: BTreeMap<OpId, (RejectCode, String)>,
    /// Most operations [`SessionLog::entries_after`] returns (whole entries, so one entry
    /// may exceed it): small values make streams of many `Ops`.
    pub(crate) batch_ops: usize,
    /// Most records in one snapshot page.
    pub(crate) snapshot_part_records: usize,
    /// The next `apply` or `apply_snapshot` fails (as a storage error) and changes nothing.
    pub(crate) fail_next: bool,
    /// Transactions failed that way.
    pub(crate) failures: u64,
    /// Transactions `apply` committed, and operations it skipped as already here.
    pub(crate) applies: u64,
    pub(crate) duplicates: u64,
}

impl MemLog {
    /// An empty database of node `node`.
    pub(crate) fn new(node: NodeId) -> MemLog {
        MemLog {
            node,
            entries: Vec::new(),
            head: 0,
            start: 0,
            skip: 0,
            digests: HashMap::new(),
            merges: HashMap::new(),
            vector: VersionVector::new(),
            beyond: BTreeSet::new(),
            out_of_order: 0,
            cursors: HashMap::new(),
            own_seq: 0,
            lamport: 0,
            kept: HashMap::new(),
            own_confirmed: 0,
            records: BTreeMap::new(),
            rejections: BTreeMap::new(),
            batch_ops: MAX_BATCH_OPS,
            snapshot_part_records: crate::engine::SNAPSHOT_PART_RECORDS,
            fail_next: false,
            failures: 0,
            applies: 0,
            duplicates: 0,
        }
    }

    /// Writes `n` new operations of our own in one transaction (one op-log entry); returns
    /// the entry's position.
    pub(crate) fn write(&mut self, n: usize) -> u64 {
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            self.own_seq += 1;
            self.lamport += 1;
            let op = make_op(self.node, self.own_seq, self.lamport);
            self.hold(&op);
            ops.push(op);
        }
        self.vector.observe(self.node, self.own_seq);
        self.append(ops)
    }

    #[cfg(test)]
    /// Writes one operation of our own of `kind` on `collection`/`record` with `fields`, in
    /// its own transaction; returns the entry's position.
    pub(crate) fn write_op(
        &mut self,
        kind: OpKind,
        collection: &str,
        record: Uuid,
        fields: blazedb_core::Fields,
    ) -> u64 {
        self.own_seq += 1;
        self.lamport += 1;
        let op = Operation {
            id: OpId {
                origin: self.node,
                seq: self.own_seq,
            },
            lamport: self.lamport,
            wall: Date::from_unix_millis(1_700_000_000_000),
            kind,
            collection: collection.to_owned(),
            record,
            fields,
        };
        self.hold(&op);
        self.vector.observe(self.node, self.own_seq);
        self.append(vec![op])
    }

    #[cfg(test)]
    /// The records held (not deleted), with their visible fields.
    pub(crate) fn live(&self) -> BTreeMap<(String, Uuid), blazedb_core::Fields> {
        self.records
            .iter()
            .filter_map(|(key, state)| state.visible_fields().map(|f| (key.clone(), f)))
            .collect()
    }

    /// The next entry's position leaves `n` numbers out.
    pub(crate) fn skip_positions(&mut self, n: u64) {
        self.skip += n;
    }

    /// Drops the op-log entries up to `through` (at most the head), like `compact_oplog`.
    pub(crate) fn compact(&mut self, through: u64) {
        let through = through.min(self.head);
        if through > self.start {
            self.entries.retain(|(p, _)| *p > through);
            self.start = through;
        }
    }

    /// Is operation `id` here (merged, own, or counted by a snapshot's vector)?
    pub(crate) fn has(&self, id: OpId) -> bool {
        self.digests.contains_key(&id) || self.vector.contains(id)
    }

    /// The durable cursor into `peer`'s log.
    pub(crate) fn cursor(&self, peer: NodeId) -> u64 {
        self.cursors.get(&peer).copied().unwrap_or(0)
    }

    /// Sets the durable cursor into `peer`'s log (for tests that start from one).
    pub(crate) fn set_cursor(&mut self, peer: NodeId, cursor: u64) {
        let c = self.cursors.entry(peer).or_insert(0);
        *c = (*c).max(cursor);
    }

    /// The operations of the entries in `(from, to]`.
    pub(crate) fn ops_between(&self, from: u64, to: u64) -> Vec<Operation> {
        self.entries
            .iter()
            .filter(|(p, _)| *p > from && *p <= to)
            .flat_map(|(_, ops)| ops.iter().cloned())
            .collect()
    }

    pub(crate) fn append(&mut self, ops: Vec<Operation>) -> u64 {
        self.head += 1 + std::mem::take(&mut self.skip);
        self.entries.push((self.head, ops));
        self.head
    }

    pub(crate) fn hold(&mut self, op: &Operation) {
        self.digests.insert(op.id, op.digest());
        self.records
            .entry((op.collection.clone(), op.record))
            .or_default()
            .apply(op);
    }

    /// Every operation of `origin` up to `seq` is here.
    pub(crate) fn raise(&mut self, origin: NodeId, seq: u64) {
        self.vector.observe(origin, seq);
        loop {
            let next = OpId {
                origin,
                seq: self.vector.get(origin) + 1,
            };
            if !self.beyond.remove(&next) {
                break;
            }
            self.vector.observe_op(next);
        }
        self.beyond
            .retain(|id| id.origin != origin || id.seq > self.vector.get(origin));
    }
}

fn failed() -> blazedb_core::Error {
    blazedb_core::Error::Corrupt("the model fails this transaction".into())
}

impl SessionLog for MemLog {
    fn node(&self) -> NodeId {
        self.node
    }

    fn head(&self) -> u64 {
        self.head
    }

    fn refresh_head(&mut self) -> blazedb_core::Result<u64> {
        Ok(self.head)
    }

    fn start(&self) -> u64 {
        self.start
    }

    fn entries_after(&mut self, from: u64) -> blazedb_core::Result<Option<Vec<(u64, Operation)>>> {
        if from < self.start {
            return Err(blazedb_core::Error::OplogCompacted {
                after: from,
                start: self.start,
            });
        }
        let first = self.entries.partition_point(|(p, _)| *p <= from);
        let mut out = Vec::new();
        for (p, ops) in self.entries.iter().skip(first) {
            if out.len() >= self.batch_ops {
                break;
            }
            out.extend(ops.iter().map(|op| (*p, op.clone())));
        }
        Ok(Some(out))
    }

    fn peer_cursor(&mut self, peer: NodeId) -> blazedb_core::Result<u64> {
        Ok(self.cursor(peer))
    }

    fn version_vector(&mut self) -> blazedb_core::Result<VersionVector> {
        Ok(self.vector.clone())
    }

    fn op_digest(&mut self, op: OpId) -> blazedb_core::Result<Option<OpDigest>> {
        Ok(self.digests.get(&op).copied())
    }

    fn confirm_own(&mut self, seq: u64) -> blazedb_core::Result<()> {
        if seq <= self.own_seq {
            self.own_confirmed = self.own_confirmed.max(seq);
        }
        Ok(())
    }

    fn apply(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        covered: Option<&VersionVector>,
    ) -> blazedb_core::Result<ApplyReport> {
        if std::mem::take(&mut self.fail_next) {
            self.failures += 1;
            return Err(failed());
        }
        // One transaction: check everything before changing anything. An operation already
        // here (or earlier in the batch) must be the same one.
        let mut batch: HashMap<OpId, OpDigest> = HashMap::new();
        for op in ops {
            let digest = op.digest();
            if let Some(here) = self.digests.get(&op.id).or(batch.get(&op.id))
                && *here != digest
            {
                return Err(blazedb_core::Error::CopiedDatabase { op: op.id });
            }
            batch.entry(op.id).or_insert(digest);
        }
        let mut report = ApplyReport::default();
        let mut new = Vec::new();
        for op in ops {
            if self.has(op.id) {
                report.duplicates += 1;
                continue;
            }
            let origin = op.id.origin;
            if origin == self.node {
                // Ours, yet not here: a restored backup. Never reuse its number.
                self.own_seq = self.own_seq.max(op.id.seq);
                self.vector.observe(origin, self.own_seq);
            } else if op.id.seq == self.vector.get(origin) + 1 {
                self.raise(origin, op.id.seq);
            } else {
                self.out_of_order += 1;
                self.beyond.insert(op.id);
            }
            self.lamport = self.lamport.max(op.lamport);
            self.hold(op);
            *self.merges.entry(op.id).or_insert(0) += 1;
            new.push(op.clone());
            report.applied += 1;
        }
        if !new.is_empty() {
            self.append(new);
        }
        for (origin, seq) in covered.iter().flat_map(|v| v.iter()) {
            self.raise(origin, seq);
        }
        self.set_cursor(peer, to);
        self.applies += 1;
        self.duplicates += report.duplicates as u64;
        Ok(report)
    }

    fn apply_checked(
        &mut self,
        peer: NodeId,
        ops: &[Operation],
        to: u64,
        write: &WriteScope,
        read: Option<&ReadScope>,
    ) -> blazedb_core::Result<Checked> {
        let mut report = ApplyReport::default();
        let mut refused = Vec::new();
        let mut readable = Vec::new();
        for op in ops {
            let before = self
                .records
                .get(&(op.collection.clone(), op.record))
                .cloned();
            let refusal = if self.has(op.id) {
                None
            } else {
                check_write(write, read, op, before.as_ref(), &mut readable).err()
            };
            let Some(refusal) = refusal else {
                let r = self.apply(peer, std::slice::from_ref(op), to, None)?;
                report.applied += r.applied;
                report.duplicates += r.duplicates;
                continue;
            };
            // Counted as received, then undone by a newer operation of ours (as
            // `TransactionReplication::undo_refused` does).
            self.digests.insert(op.id, op.digest());
            if op.id.seq == self.vector.get(op.id.origin) + 1 {
                self.raise(op.id.origin, op.id.seq);
            } else {
                self.beyond.insert(op.id);
            }
            self.lamport = self.lamport.max(op.lamport);
            let here = self
                .records
                .get(&(op.collection.clone(), op.record))
                .and_then(RecordState::visible_fields);
            let (kind, fields) = match (here, op.kind) {
                (None, _) => (OpKind::Delete, blazedb_core::Fields::new()),
                (Some(all), OpKind::Insert | OpKind::Delete) => (OpKind::Insert, all),
                (Some(all), OpKind::Update) => (
                    OpKind::Update,
                    op.fields
                        .keys()
                        .map(|n| (n.clone(), all.get(n).cloned().unwrap_or(Value::Null)))
                        .collect(),
                ),
            };
            self.own_seq += 1;
            self.lamport += 1;
            let undo = Operation {
                id: OpId {
                    origin: self.node,
                    seq: self.own_seq,
                },
                lamport: self.lamport,
                wall: op.wall,
                kind,
                collection: op.collection.clone(),
                record: op.record,
                fields,
            };
            self.hold(&undo);
            self.vector.observe(self.node, self.own_seq);
            self.append(vec![undo.clone()]);
            refused.push((op.id, refusal, Some(undo)));
        }
        self.set_cursor(peer, to);
        Ok(Checked {
            report,
            refused,
            readable,
        })
    }

    fn reject(
        &mut self,
        _peer: NodeId,
        refused: &[(Operation, RejectCode, String)],
    ) -> blazedb_core::Result<()> {
        for (op, code, reason) in refused {
            self.rejections
                .entry(op.id)
                .or_insert((*code, reason.clone()));
        }
        Ok(())
    }

    fn record_state(&mut self, key: &RecordKey) -> blazedb_core::Result<Option<RecordState>> {
        Ok(self.records.get(&(key.collection.clone(), key.id)).cloned())
    }

    fn purge(&mut self, keys: &[RecordKey], _reason: PurgeReason) -> blazedb_core::Result<usize> {
        Ok(keys
            .iter()
            .filter(|key| {
                self.records
                    .remove(&(key.collection.clone(), key.id))
                    .is_some()
            })
            .count())
    }

    fn save_cursor(&mut self, peer: NodeId, cursor: u64) -> blazedb_core::Result<()> {
        self.set_cursor(peer, cursor);
        Ok(())
    }

    fn keep_for(&mut self, peer: NodeId, position: u64) -> blazedb_core::Result<()> {
        let kept = self.kept.entry(peer).or_insert(position);
        *kept = (*kept).max(position);
        Ok(())
    }

    fn snapshot_info(&mut self) -> blazedb_core::Result<SnapshotInfo> {
        Ok(SnapshotInfo {
            position: self.head,
            vector: self.vector.clone(),
            records: self.records.len() as u64,
        })
    }

    fn snapshot_page(
        &mut self,
        after: Option<&SnapshotKey>,
        records: usize,
        _bytes: usize,
    ) -> blazedb_core::Result<(Vec<SnapshotRecord>, Option<SnapshotKey>)> {
        // The key is the index of the next record (the model's own meaning for it).
        let skip = after.map_or(0, |key| {
            let bytes = key.to_bytes();
            let mut index = [0u8; 8];
            index.copy_from_slice(&bytes[..8]);
            u64::from_be_bytes(index) as usize
        });
        let limit = records.min(self.snapshot_part_records).max(1);
        let page: Vec<SnapshotRecord> = self
            .records
            .iter()
            .skip(skip)
            .take(limit)
            .map(|((collection, id), state)| SnapshotRecord {
                collection: collection.clone(),
                id: *id,
                state: state.clone(),
            })
            .collect();
        let next = skip + page.len();
        let key = if next < self.records.len() {
            let mut bytes = [0u8; 24];
            bytes[..8].copy_from_slice(&(next as u64).to_be_bytes());
            Some(SnapshotKey::from_bytes(&bytes).ok_or_else(failed)?)
        } else {
            None
        };
        Ok((page, key))
    }

    fn apply_snapshot(
        &mut self,
        peer: NodeId,
        records: &[SnapshotRecord],
        last: Option<(&VersionVector, u64)>,
    ) -> blazedb_core::Result<usize> {
        if std::mem::take(&mut self.fail_next) {
            self.failures += 1;
            return Err(failed());
        }
        let mut applied = 0;
        for record in records {
            let state = self
                .records
                .entry((record.collection.clone(), record.id))
                .or_default();
            let before = state.clone();
            state.join(&record.state);
            if *state != before {
                applied += 1;
            }
        }
        if let Some((vector, position)) = last {
            for (origin, seq) in vector.iter() {
                self.raise(origin, seq);
            }
            self.set_cursor(peer, position);
        }
        Ok(applied)
    }
}
