//! Writes: explicit transactions, local inserts/updates/deletes and merging remote operations.
//!
//! Every operation goes through [`Transaction::write`], which stores the new record state, keeps
//! the secondary indexes in step, appends the operation to the op log and records the change for
//! watchers, all inside the caller's SQLite transaction. A snapshot record (a state joined in,
//! no operation) goes through [`Transaction::join`]; both store through
//! [`Transaction::persist`].

use std::sync::{Arc, MutexGuard};

use blazedb_format::{
    Date, Effect, Fields, NodeId, OpId, OpKind, Operation, Record, RecordState, SnapshotRecord,
    Value, VersionVector, decode_record_state, encode_inserted_record_state, encode_operations,
    encode_record_state, sort_key,
};
use rusqlite::{ErrorCode, OptionalExtension, params};
use uuid::Uuid;

use crate::db::{CollInfo, Core, Database, IndexInfo, OPEN_TRANSACTION, classify};
use crate::digests;
use crate::error::{Error, Result};
use crate::read::resolve;
use crate::replication::{Replication, TransactionReplication};
use crate::validate;
use crate::watch::{Change, ChangeKind, ChangeOrigin, Commit};
use std::convert::Infallible;

use blazedb_format::PurgeReason;

/// Most operations in one op-log entry: a transaction's operations share entries of up to this
/// many, which bounds the memory one entry needs when it is read back or sent.
pub const OPLOG_ENTRY_MAX_OPS: usize = 1024;

/// Largest encoded record state a local write may create.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// What [`Replication::apply_remote`](crate::Replication::apply_remote) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Operations merged for the first time.
    pub applied: usize,
    /// Operations already in the op log, skipped.
    pub duplicates: usize,
}

/// An operation [`TransactionReplication::apply_remote_checked`] refused: its index in the
/// batch, the refusal, and the operation of ours that undoes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused<R> {
    pub index: usize,
    pub refusal: R,
    /// The operation that undoes it; `None` when the refused operation updated values this
    /// replica cannot restore (it holds them sealed end to end, so it cannot write them
    /// under a new stamp): nothing is undone then.
    pub undo: Option<Operation>,
}

/// What [`TransactionReplication::apply_snapshot`](crate::TransactionReplication::apply_snapshot) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SnapshotReport {
    /// Records whose stored state changed.
    pub applied: usize,
    /// Records whose state was here already (joining them changed nothing).
    pub unchanged: usize,
}

/// An open write transaction. Commits when the closure given to [`Database::transaction`]
/// returns `Ok`, rolls back on `Err` or panic.
pub struct Transaction<'db> {
    pub(crate) core: MutexGuard<'db, Core>,
    changes: Vec<Change>,
    /// Change of the visible-record count per collection id (a transaction touches few).
    count_deltas: Vec<(i64, i64)>,
    start_clock: (u64, u64, Option<u64>),
    first_op_seq: Option<u64>,
    last_op_seq: Option<u64>,
    /// The operations of this transaction, in order, for its op-log entry.
    ops: Vec<Operation>,
    /// Other nodes whose operations this transaction looked at or merged (see `OriginState`).
    origins: Vec<(NodeId, OriginState)>,
    /// What `OPEN_TRANSACTION` held before this transaction (restored when it ends).
    outer_transaction: usize,
    /// Set when a write failed half-way; the transaction then refuses to commit.
    aborted: Option<String>,
    done: bool,
}

/// What a transaction knows of one other node's operations. Merged operations of an origin
/// usually arrive in sequence order (sync delivers them so): then the contiguous prefix in the
/// `origins` table says which are here, and nothing else is written per operation. Only an
/// operation that arrives ahead of a gap gets a `merged_ops` row, until the gap fills.
#[derive(Debug, Clone, Copy)]
struct OriginState {
    /// Every operation of the origin up to this sequence number is here.
    prefix: u64,
    /// `prefix` as stored in `origins` (written back at commit when it moved).
    stored: u64,
    /// `merged_ops` may hold operations of the origin beyond `prefix`.
    beyond: bool,
}

impl Database {
    /// Runs `f` in one transaction: all its writes commit together, or none do. Inside `f`, work
    /// through `tx`: on this thread the database itself answers
    /// [`Error::TransactionInProgress`] until the transaction ends (other threads wait).
    ///
    /// ```
    /// # use blazedb_core::{Database, fields};
    /// let db = Database::in_memory()?;
    /// let (a, b) = db.transaction(|tx| {
    ///     let a = tx.insert("users", fields! { "name" => "Ada" })?;
    ///     let b = tx.insert("users", fields! { "name" => "Bob" })?;
    ///     Ok((a, b))
    /// })?;
    /// assert_eq!(db.count("users")?, 2);
    /// # let _ = (a, b);
    /// # Ok::<(), blazedb_core::Error>(())
    /// ```
    pub fn transaction<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        self.try_transaction(f)
    }

    /// Like [`Database::transaction`], for a closure that fails with the caller's own error
    /// type (like `Iterator::try_for_each`): any `Err` rolls back and comes back unchanged;
    /// the database's own errors convert into it with `?`.
    ///
    /// ```
    /// # use blazedb_core::{Database, fields};
    /// #[derive(Debug)]
    /// enum AppError {
    ///     Db(blazedb_core::Error),
    ///     TitleTaken,
    /// }
    /// impl From<blazedb_core::Error> for AppError {
    ///     fn from(e: blazedb_core::Error) -> Self {
    ///         AppError::Db(e)
    ///     }
    /// }
    ///
    /// let db = Database::in_memory()?;
    /// let result = db.try_transaction(|tx| {
    ///     tx.insert("bugs", fields! { "title" => "Crash" })?;
    ///     Err::<(), _>(AppError::TitleTaken) // the insert above is rolled back
    /// });
    /// assert!(matches!(result, Err(AppError::TitleTaken)));
    /// assert_eq!(db.count("bugs")?, 0);
    /// # Ok::<(), blazedb_core::Error>(())
    /// ```
    pub fn try_transaction<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut tx = self.begin()?;
        match f(&mut tx) {
            Ok(value) => {
                let commit = tx.commit()?;
                self.inner.watchers.notify(commit);
                Ok(value)
            }
            Err(e) => {
                tx.rollback();
                Err(e)
            }
        }
    }

    fn begin(&self) -> Result<Transaction<'_>> {
        let mut core = self.lock()?;
        core.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(classify)?;
        if let Err(e) = core.refresh() {
            let _ = core.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        let start_clock = (core.lamport, core.seq, core.gap_prefix);
        let outer_transaction = OPEN_TRANSACTION.with(|t| t.replace(self.address()));
        Ok(Transaction {
            core,
            changes: Vec::new(),
            count_deltas: Vec::new(),
            start_clock,
            first_op_seq: None,
            last_op_seq: None,
            ops: Vec::new(),
            origins: Vec::new(),
            outer_transaction,
            aborted: None,
            done: false,
        })
    }

    /// Inserts a record with a new id (a time-ordered UUIDv7) and returns the id.
    pub fn insert(&self, collection: &str, fields: Fields) -> Result<Uuid> {
        self.transaction(|tx| tx.insert(collection, fields))
    }

    /// Inserts a record with the given id. Fails if a record with this id is visible.
    pub fn insert_with_id(&self, collection: &str, id: Uuid, fields: Fields) -> Result<()> {
        self.transaction(|tx| tx.insert_with_id(collection, id, fields))
    }

    /// Inserts many records in one transaction; returns their ids in order.
    pub fn insert_many(
        &self,
        collection: &str,
        records: impl IntoIterator<Item = Fields>,
    ) -> Result<Vec<Uuid>> {
        self.transaction(|tx| {
            records
                .into_iter()
                .map(|fields| tx.insert(collection, fields))
                .collect()
        })
    }

    /// Sets the given fields of a record; fields not named keep their values. Only fields whose
    /// value really changes are written to the op log.
    pub fn update(&self, collection: &str, id: Uuid, fields: Fields) -> Result<()> {
        self.transaction(|tx| tx.update(collection, id, fields))
    }

    /// Deletes a record.
    pub fn delete(&self, collection: &str, id: Uuid) -> Result<()> {
        self.transaction(|tx| tx.delete(collection, id))
    }
}

impl Transaction<'_> {
    /// See [`Database::insert`].
    pub fn insert(&mut self, collection: &str, fields: Fields) -> Result<Uuid> {
        let id = self.core.ids.next();
        self.insert_inner(collection, id, fields, false)?;
        Ok(id)
    }

    /// See [`Database::insert_with_id`].
    pub fn insert_with_id(&mut self, collection: &str, id: Uuid, fields: Fields) -> Result<()> {
        self.insert_inner(collection, id, fields, true)
    }

    fn insert_inner(
        &mut self,
        collection: &str,
        id: Uuid,
        fields: Fields,
        may_exist: bool,
    ) -> Result<()> {
        validate::fields(&fields)?;
        let coll = self.collection(collection, true)?;
        let old = if may_exist {
            let old = self.core.load_state(coll.id, id)?;
            if old.as_ref().is_some_and(RecordState::is_visible) {
                return Err(Error::RecordExists {
                    collection: collection.into(),
                    id,
                });
            }
            old
        } else {
            None
        };
        let op = self.local_op(OpKind::Insert, collection, id, fields);
        self.write(&coll, old, op, ChangeOrigin::Local, true)?;
        Ok(())
    }

    /// See [`Database::update`].
    pub fn update(&mut self, collection: &str, id: Uuid, fields: Fields) -> Result<()> {
        validate::fields(&fields)?;
        let (coll, state) = self.visible(collection, id)?;
        let changed: Fields = fields
            .into_iter()
            .filter(|(k, v)| state.visible_field(k) != Some(v))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let op = self.local_op(OpKind::Update, collection, id, changed);
        self.write(&coll, Some(state), op, ChangeOrigin::Local, true)?;
        Ok(())
    }

    /// See [`Database::delete`].
    pub fn delete(&mut self, collection: &str, id: Uuid) -> Result<()> {
        let (coll, state) = self.visible(collection, id)?;
        let op = self.local_op(OpKind::Delete, collection, id, Fields::new());
        self.write(&coll, Some(state), op, ChangeOrigin::Local, true)?;
        Ok(())
    }

    /// Reads a record as this transaction sees it.
    pub fn get(&mut self, collection: &str, id: Uuid) -> Result<Option<Record>> {
        self.core.get(collection, id)
    }

    /// The transaction's view of another node's merged operations, loaded on first use.
    fn origin(&mut self, origin: NodeId) -> Result<&mut OriginState> {
        let index = match self.origins.iter().position(|(n, _)| *n == origin) {
            Some(i) => i,
            None => {
                let conn = &self.core.conn;
                let key = origin.as_bytes().as_slice();
                let prefix: i64 = conn
                    .prepare_cached("SELECT max_seq FROM origins WHERE origin = ?1")?
                    .query_row(params![key], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                let beyond: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM merged_ops \
                         WHERE origin = ?1 AND origin_seq > ?2)",
                    )?
                    .query_row(params![key, prefix], |r| r.get(0))?;
                let prefix = prefix.max(0) as u64;
                self.origins.push((
                    origin,
                    OriginState {
                        prefix,
                        stored: prefix,
                        beyond,
                    },
                ));
                self.origins.len() - 1
            }
        };
        self.origins
            .get_mut(index)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::Corrupt("origin state vanished".into()))
    }

    fn in_merged_ops(&self, id: OpId) -> Result<bool> {
        Ok(self
            .core
            .conn
            .prepare_cached("SELECT 1 FROM merged_ops WHERE origin = ?1 AND origin_seq = ?2")?
            .query_row(
                params![id.origin.as_bytes().as_slice(), id.seq as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Is this operation of another node already here?
    fn merged_already(&mut self, id: OpId) -> Result<bool> {
        let state = *self.origin(id.origin)?;
        Ok(id.seq <= state.prefix || (state.beyond && self.in_merged_ops(id)?))
    }

    /// Records that another node's operation is now here: it extends the origin's prefix (and
    /// absorbs the `merged_ops` rows the prefix now reaches), or waits in `merged_ops`.
    fn record_merged(&mut self, id: OpId) -> Result<()> {
        let state = *self.origin(id.origin)?;
        if id.seq == state.prefix + 1 {
            return self.raise_prefix(id.origin, id.seq);
        }
        self.core
            .conn
            .prepare_cached("INSERT INTO merged_ops (origin, origin_seq) VALUES (?1, ?2)")?
            .execute(params![id.origin.as_bytes().as_slice(), id.seq as i64])?;
        self.origin(id.origin)?.beyond = true;
        Ok(())
    }

    /// Every operation of `origin` up to `seq` is here now: raises its prefix, drops the
    /// `merged_ops` rows the prefix covers and absorbs those that become contiguous with it.
    fn raise_prefix(&mut self, origin: NodeId, seq: u64) -> Result<()> {
        let state = *self.origin(origin)?;
        if seq <= state.prefix {
            return Ok(());
        }
        let mut next = state;
        next.prefix = seq;
        if state.beyond {
            let key = origin.as_bytes().to_vec();
            let conn = &self.core.conn;
            conn.prepare_cached("DELETE FROM merged_ops WHERE origin = ?1 AND origin_seq <= ?2")?
                .execute(params![key, seq as i64])?;
            while self.in_merged_ops(OpId {
                origin,
                seq: next.prefix + 1,
            })? {
                next.prefix += 1;
                self.core
                    .conn
                    .prepare_cached("DELETE FROM merged_ops WHERE origin = ?1 AND origin_seq = ?2")?
                    .execute(params![key, next.prefix as i64])?;
            }
            next.beyond = self
                .core
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM merged_ops \
                     WHERE origin = ?1 AND origin_seq > ?2)",
                )?
                .query_row(params![key, next.prefix as i64], |r| r.get(0))?;
        }
        *self.origin(origin)? = next;
        Ok(())
    }

    /// Our own operations up to `seq` are here (in a snapshot's states). More than we issued
    /// means this file was restored from a backup and the others have our later operations:
    /// never reuse their sequence numbers.
    fn cover_own(&mut self, seq: u64) -> Result<()> {
        if seq <= self.core.seq {
            return Ok(());
        }
        self.core.seq = seq;
        if let Some(prefix) = self.core.gap_prefix {
            // Our operations beyond the prefix are tracked in `merged_ops`; those up to `seq`
            // are all here now.
            self.core.gap_prefix = Some(prefix.max(seq));
            self.core
                .conn
                .prepare_cached("DELETE FROM merged_ops WHERE origin = ?1 AND origin_seq <= ?2")?
                .execute(params![self.core.node.as_bytes().as_slice(), seq as i64])?;
        }
        Ok(())
    }

    /// Joins one snapshot record into its stored state; false when that changed nothing.
    fn join(
        &mut self,
        coll: &CollInfo,
        record: &SnapshotRecord,
        origin: ChangeOrigin,
    ) -> Result<bool> {
        let stored = self.core.load_state_bytes(coll.id, record.id)?;
        let mut state = match &stored {
            Some(bytes) => decode_record_state(bytes)?,
            None => RecordState::default(),
        };
        let old_keys = index_keys(&state, &record.id, &coll.indexes);
        let effect = state.join(&record.state);
        if stored.is_none() && state == RecordState::default() {
            return Ok(false);
        }
        // Equal states encode to equal bytes, so this is exact (and NaN-proof, unlike `==`).
        let bytes = encode_record_state(&state);
        if stored.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        let written = Written {
            bytes,
            existed: stored.is_some(),
            visible: state.is_visible(),
            old_keys,
            new_keys: index_keys(&state, &record.id, &coll.indexes),
            effect,
        };
        let persisted = self.persist(coll, &record.collection, record.id, written, origin);
        if let Err(e) = &persisted {
            self.aborted = Some(e.to_string());
        }
        persisted?;
        Ok(true)
    }

    /// An existing collection, with its indexes.
    pub(crate) fn collection_info(&mut self, name: &str) -> Result<Arc<CollInfo>> {
        self.collection(name, false)
    }

    fn collection(&mut self, name: &str, create: bool) -> Result<Arc<CollInfo>> {
        match self.core.collection(name, create)? {
            Some(c) => Ok(c),
            None => Err(Error::InvalidQuery(format!("no collection {name:?}"))),
        }
    }

    fn visible(&mut self, collection: &str, id: Uuid) -> Result<(Arc<CollInfo>, RecordState)> {
        let not_found = || Error::RecordNotFound {
            collection: collection.into(),
            id,
        };
        let coll = self
            .core
            .collection(collection, false)?
            .ok_or_else(not_found)?;
        let state = self
            .core
            .load_state(coll.id, id)?
            .filter(RecordState::is_visible)
            .ok_or_else(not_found)?;
        Ok((coll, state))
    }

    fn local_op(
        &mut self,
        kind: OpKind,
        collection: &str,
        record: Uuid,
        fields: Fields,
    ) -> Operation {
        self.core.lamport += 1;
        self.core.seq += 1;
        Operation {
            id: OpId {
                origin: self.core.node,
                seq: self.core.seq,
            },
            lamport: self.core.lamport,
            wall: Date::now(),
            kind,
            collection: collection.to_owned(),
            record,
            fields,
        }
    }

    /// Merges `op` into the record's state and persists everything that follows from it.
    fn write(
        &mut self,
        coll: &CollInfo,
        old: Option<RecordState>,
        op: Operation,
        origin: ChangeOrigin,
        local: bool,
    ) -> Result<Effect> {
        let existed = old.is_some();
        let written = match old {
            // A brand-new record: no need to merge, nor to copy its fields into a state.
            None if op.kind == OpKind::Insert => Written {
                bytes: encode_inserted_record_state(&op.fields, op.stamp()),
                existed,
                visible: true,
                old_keys: None,
                new_keys: (!coll.indexes.is_empty())
                    .then(|| keys_of(&op.record, &coll.indexes, |f| op.fields.get(f))),
                effect: Effect::Created,
            },
            old => {
                let mut state = old.unwrap_or_default();
                let old_keys = index_keys(&state, &op.record, &coll.indexes);
                let effect = state.apply(&op);
                Written {
                    bytes: encode_record_state(&state),
                    existed,
                    visible: state.is_visible(),
                    old_keys,
                    new_keys: index_keys(&state, &op.record, &coll.indexes),
                    effect,
                }
            }
        };
        let bytes = &written.bytes;
        if local && bytes.len() > MAX_RECORD_BYTES {
            // Nothing is written yet: give the tick back so the op log keeps no gap.
            self.core.lamport -= 1;
            self.core.seq -= 1;
            return Err(Error::RecordTooLarge {
                size: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let effect = written.effect;
        let persisted = self
            .persist(coll, &op.collection, op.record, written, origin)
            .and_then(|()| self.record_op(op.id));
        if let Err(e) = &persisted {
            // Part of this write may be in SQLite already: the transaction must not commit, or a
            // change could exist without its op-log entry.
            self.aborted = Some(e.to_string());
        }
        persisted?;
        // Written to the op log at commit, as one entry for the whole transaction.
        self.ops.push(op);
        Ok(effect)
    }

    /// Records that an operation is here, for `has_op` and the version vector.
    fn record_op(&mut self, id: OpId) -> Result<()> {
        let own = id.origin == self.core.node;
        if own && self.core.gap_prefix.is_some() {
            self.core
                .conn
                .prepare_cached("INSERT INTO merged_ops (origin, origin_seq) VALUES (?1, ?2)")?
                .execute(params![id.origin.as_bytes().as_slice(), id.seq as i64])?;
        } else if !own {
            self.record_merged(id)?;
        }
        Ok(())
    }

    /// Stores a record's new state with what follows from it: the index entries, the visible
    /// count and the change for watchers. A caller that may go on after an error marks the
    /// transaction aborted.
    pub(crate) fn persist(
        &mut self,
        coll: &CollInfo,
        collection: &str,
        record: Uuid,
        written: Written,
        origin: ChangeOrigin,
    ) -> Result<()> {
        let Written {
            bytes,
            existed,
            visible,
            old_keys,
            new_keys,
            effect,
        } = written;
        let conn = &self.core.conn;
        let id = record.as_bytes().as_slice();
        if existed {
            conn.prepare_cached(
                "UPDATE records SET live = ?3, state = ?4 WHERE coll = ?1 AND id = ?2",
            )?
            .execute(params![coll.id, id, visible, bytes])?;
        } else {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO records (coll, id, live, state) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![coll.id, id, visible, bytes]);
            if let Err(rusqlite::Error::SqliteFailure(f, _)) = &inserted
                && f.code == ErrorCode::ConstraintViolation
            {
                return Err(Error::RecordExists {
                    collection: collection.to_owned(),
                    id: record,
                });
            }
            inserted?;
        }
        if effect != Effect::None && !coll.indexes.is_empty() {
            for (n, index) in coll.indexes.iter().enumerate() {
                let old_key = old_keys.as_ref().and_then(|k| k.get(n));
                let new_key = new_keys.as_ref().and_then(|k| k.get(n));
                if old_key == new_key {
                    continue;
                }
                if let Some(k) = old_key {
                    conn.prepare_cached(
                        "DELETE FROM index_entries WHERE idx = ?1 AND key = ?2 AND id = ?3",
                    )?
                    .execute(params![index.id, k, id])?;
                }
                if let Some(k) = new_key {
                    conn.prepare_cached(
                        "INSERT INTO index_entries (idx, key, id) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![index.id, k, id])?;
                }
            }
        }
        let kind = match effect {
            Effect::Created => Some((ChangeKind::Inserted, 1)),
            Effect::Updated => Some((ChangeKind::Updated, 0)),
            Effect::Deleted => Some((ChangeKind::Deleted, -1)),
            Effect::None => None,
        };
        if let Some((kind, delta)) = kind {
            if delta != 0 {
                self.count(coll.id, delta);
            }
            self.changes.push(Change {
                collection: collection.to_owned(),
                id: record,
                kind,
                origin,
            });
        }
        Ok(())
    }

    /// Adds `delta` to the visible-record count of collection `coll`, written at commit.
    fn count(&mut self, coll: i64, delta: i64) {
        match self.count_deltas.iter_mut().find(|(c, _)| *c == coll) {
            Some((_, d)) => *d += delta,
            None => self.count_deltas.push((coll, delta)),
        }
    }

    fn commit(mut self) -> Result<Commit> {
        let result = match self.aborted.take() {
            Some(reason) => Err(Error::TransactionAborted(reason)),
            None => self.flush_and_commit(),
        };
        self.done = true;
        if let Err(e) = result {
            self.undo();
            return Err(e);
        }
        Ok(Commit {
            changes: std::mem::take(&mut self.changes),
            first_op_seq: self.first_op_seq,
            last_op_seq: self.last_op_seq,
            ops: std::mem::take(&mut self.ops).into(),
        })
    }

    fn flush_and_commit(&mut self) -> Result<()> {
        let conn = &self.core.conn;
        let set = |name: &str, value: i64, add: bool| -> Result<()> {
            let sql = if add {
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
            } else {
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            };
            conn.prepare_cached(sql)?.execute(params![name, value])?;
            Ok(())
        };
        // The transaction's operations go to the op log together (one entry per
        // `OPLOG_ENTRY_MAX_OPS`), so a replica can apply them together too.
        if !self.ops.is_empty() {
            // Each entry records how many operations the log holds up to and including it, so
            // "operations after position p" is a subtraction (sync status: ops pending).
            let (mut total, start): (i64, i64) = conn
                .prepare_cached(
                    "SELECT coalesce((SELECT value FROM counters WHERE name = 'oplog_ops'), 0), \
                     coalesce((SELECT value FROM counters WHERE name = 'oplog_start'), 0)",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let mut own_seq = self.start_clock.1;
            for chunk in self.ops.chunks(OPLOG_ENTRY_MAX_OPS) {
                total += chunk.len() as i64;
                own_seq = digests::own_seq_after(own_seq, self.core.node, chunk);
                // After the whole log was compacted, SQLite would number the next row 1: the
                // position continues after the compacted start instead.
                conn.prepare_cached(
                    "INSERT INTO oplog (seq, ops, total, own_seq) \
                     VALUES ((SELECT coalesce(max(seq), ?3) + 1 FROM oplog), ?1, ?2, ?4)",
                )?
                .execute(params![
                    encode_operations(chunk),
                    total,
                    start,
                    own_seq as i64
                ])?;
                let position = conn.last_insert_rowid() as u64;
                self.first_op_seq.get_or_insert(position);
                self.last_op_seq = Some(position);
            }
            set("oplog_ops", total, false)?;
        }
        // The version vector of merged operations: each origin's contiguous prefix.
        for (origin, state) in &self.origins {
            if state.prefix != state.stored {
                conn.prepare_cached(
                    "INSERT INTO origins (origin, max_seq) VALUES (?1, ?2) \
                     ON CONFLICT (origin) DO UPDATE SET max_seq = excluded.max_seq",
                )?
                .execute(params![origin.as_bytes().as_slice(), state.prefix as i64])?;
            }
        }
        if !self.ops.is_empty() {
            digests::store(conn, self.core.node, &self.ops)?;
        }
        let (lamport, seq, gap_prefix) = self.start_clock;
        if self.core.lamport != lamport {
            set("lamport", self.core.lamport as i64, false)?;
        }
        if self.core.seq != seq {
            set("seq", self.core.seq as i64, false)?;
        }
        if let Some(p) = self.core.gap_prefix
            && self.core.gap_prefix != gap_prefix
        {
            set("gap_prefix", p as i64, false)?;
        }
        for (coll, delta) in &self.count_deltas {
            set(&crate::schema::live_counter(*coll), *delta, true)?;
        }
        conn.execute_batch("COMMIT").map_err(classify)?;
        self.core
            .lamport_mirror
            .store(self.core.lamport, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn rollback(mut self) {
        self.done = true;
        self.undo();
    }

    fn undo(&mut self) {
        // Fails harmlessly when SQLite already rolled back (e.g. after a failed COMMIT).
        let _ = self.core.conn.execute_batch("ROLLBACK");
        (self.core.lamport, self.core.seq, self.core.gap_prefix) = self.start_clock;
        self.core.forget_schema();
    }
}

/// What one write stores: the encoded state, whether a state was stored before (update the row)
/// and whether the record is visible now, the index keys before and after (`None` when not
/// visible), and what changed.
pub(crate) struct Written {
    bytes: Vec<u8>,
    existed: bool,
    visible: bool,
    old_keys: Option<Vec<Vec<u8>>>,
    new_keys: Option<Vec<Vec<u8>>>,
    effect: Effect,
}

impl Written {
    /// A stored record's state replaced by `after`, with `effect` on what is visible.
    pub(crate) fn replacing(
        before: &RecordState,
        after: RecordState,
        id: Uuid,
        coll: &CollInfo,
        effect: Effect,
    ) -> Written {
        Written {
            bytes: encode_record_state(&after),
            existed: true,
            visible: after.is_visible(),
            old_keys: index_keys(before, &id, &coll.indexes),
            new_keys: index_keys(&after, &id, &coll.indexes),
            effect,
        }
    }
}

/// The index keys of a record in the order of `indexes`, or `None` when it is not visible.
fn index_keys(state: &RecordState, id: &Uuid, indexes: &[IndexInfo]) -> Option<Vec<Vec<u8>>> {
    if indexes.is_empty() || !state.is_visible() {
        return None;
    }
    Some(keys_of(id, indexes, |f| {
        state.fields.get(f).map(|s| &s.value)
    }))
}

/// The index keys of a visible record whose fields `get` looks up.
fn keys_of<'v>(
    id: &Uuid,
    indexes: &[IndexInfo],
    get: impl Fn(&str) -> Option<&'v Value>,
) -> Vec<Vec<u8>> {
    indexes
        .iter()
        .map(|index| sort_key(&resolve(id, &index.field, &get)))
        .collect()
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        OPEN_TRANSACTION.with(|t| t.set(self.outer_transaction));
        if !self.done {
            self.undo();
        }
    }
}

impl Replication<'_> {
    /// Merges operations made by other replicas, in one transaction. Operations already in the
    /// op log are skipped, so delivering the same operation twice is harmless. The Lamport
    /// clock advances past every operation seen.
    pub fn apply_remote(&self, ops: &[Operation]) -> Result<ApplyReport> {
        self.db.transaction(|tx| tx.replication().apply_remote(ops))
    }

    /// Purges the records `ids` of `collection` in one transaction (see
    /// [`TransactionReplication::purge`]). Returns how many were there.
    pub fn purge(&self, collection: &str, ids: &[Uuid], reason: PurgeReason) -> Result<usize> {
        self.db.transaction(|tx| {
            let mut purged = 0;
            for &id in ids {
                purged += usize::from(tx.replication().purge(collection, id, reason)?);
            }
            Ok(purged)
        })
    }
}

impl TransactionReplication<'_, '_> {
    /// Records that everything in `peer`'s op log up to and including `position` is applied
    /// here. Written in this transaction, so the cursor can never run ahead of (or fall
    /// behind) the operations it covers; see [`Replication::peer_cursor`](crate::Replication::peer_cursor). A cursor only moves
    /// forward: a smaller `position` than the stored one is ignored.
    pub fn set_peer_cursor(&mut self, peer: NodeId, position: u64) -> Result<()> {
        self.tx
            .core
            .conn
            .prepare_cached(
                "INSERT INTO peers (node, cursor) VALUES (?1, ?2) \
                 ON CONFLICT (node) DO UPDATE SET cursor = max(cursor, excluded.cursor)",
            )?
            .execute(params![
                peer.as_bytes().as_slice(),
                position.min(i64::MAX as u64) as i64
            ])?;
        Ok(())
    }

    /// Removes the record `id` of `collection` from this replica only, for `reason`: its row
    /// and index entries go, and nothing else is written: no op-log entry (so nothing is
    /// synced or echoed back), no tombstone (the record still exists on the replicas that may
    /// hold it), and the version vector is unchanged. Watchers get
    /// [`ChangeKind::Purged`](crate::ChangeKind::Purged) with the reason. Returns whether a
    /// record (visible or a tombstone) was there.
    ///
    /// For a replica that must stop holding a record (it left its scope: selective sync and
    /// access control). If the record comes back into scope, its full state arrives again
    /// and is joined as new ([`TransactionReplication::apply_snapshot`]).
    pub fn purge(&mut self, collection: &str, id: Uuid, reason: PurgeReason) -> Result<bool> {
        let Some(coll) = self.tx.core.collection(collection, false)? else {
            return Ok(false);
        };
        let Some(state) = self.tx.core.load_state(coll.id, id)? else {
            return Ok(false);
        };
        let conn = &self.tx.core.conn;
        if let Some(keys) = index_keys(&state, &id, &coll.indexes) {
            for (index, key) in coll.indexes.iter().zip(keys) {
                conn.prepare_cached(
                    "DELETE FROM index_entries WHERE idx = ?1 AND key = ?2 AND id = ?3",
                )?
                .execute(params![index.id, key, id.as_bytes().as_slice()])?;
            }
        }
        conn.prepare_cached("DELETE FROM records WHERE coll = ?1 AND id = ?2")?
            .execute(params![coll.id, id.as_bytes().as_slice()])?;
        if state.is_visible() {
            self.tx.count(coll.id, -1);
        }
        self.tx.changes.push(Change {
            collection: collection.to_owned(),
            id,
            kind: ChangeKind::Purged(reason),
            origin: ChangeOrigin::Local,
        });
        Ok(true)
    }

    /// Puts `op`, which `server` refused with `code` and `reason`, in the rejection inbox
    /// ([`Replication::rejections`](crate::Replication::rejections)), and tells watchers
    /// ([`ChangeKind::Rejected`](crate::ChangeKind::Rejected)). The operation stays in the op
    /// log: it happened here, and the server's undoing of it comes as a newer operation.
    /// Returns false when the inbox already holds it (a repeated rejection changes nothing).
    pub fn reject(
        &mut self,
        server: NodeId,
        op: &Operation,
        code: blazedb_format::RejectCode,
        reason: &str,
    ) -> Result<bool> {
        let inserted = self
            .tx
            .core
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO rejections (origin, seq, code, reason, at, op) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                op.id.origin.as_bytes().as_slice(),
                op.id.seq as i64,
                code.code(),
                reason,
                Date::now().unix_millis(),
                encode_operations(std::slice::from_ref(op)),
            ])?;
        if inserted == 0 {
            return Ok(false);
        }
        self.tx.changes.push(Change {
            collection: op.collection.clone(),
            id: op.record,
            kind: ChangeKind::Rejected(code),
            origin: ChangeOrigin::Remote(server),
        });
        Ok(true)
    }

    /// See [`Replication::apply_remote`](crate::Replication::apply_remote).
    pub fn apply_remote(&mut self, ops: &[Operation]) -> Result<ApplyReport> {
        let (report, _) =
            self.apply_remote_checked(ops, |_, _| Ok::<(), Infallible>(()), |_| true)?;
        Ok(report)
    }

    /// Like [`TransactionReplication::apply_remote`] for a writer whose operations are
    /// checked (a server enforcing access rules): `check` sees each new operation with the
    /// record's state here just before it (after the operations accepted before it), and
    /// an operation it refuses is counted as received without being applied
    /// ([`TransactionReplication::skip_remote`]) and undone at once
    /// ([`TransactionReplication::undo_refused`]). Returns the report (`applied` counts the
    /// accepted operations) and, per refused operation, its index in `ops`, the refusal and
    /// the operation that undoes it. Duplicates are never checked: they were ruled on when
    /// they first came. An operation on a record held here that `restorable` says no to
    /// (its values are sealed end to end) is refused without an undo: restoring would write
    /// the sealed values under a new stamp, which no device could open.
    pub fn apply_remote_checked<R>(
        &mut self,
        ops: &[Operation],
        mut check: impl FnMut(&Operation, Option<&RecordState>) -> std::result::Result<(), R>,
        restorable: impl Fn(&Operation) -> bool,
    ) -> Result<(ApplyReport, Vec<Refused<R>>)> {
        let mut report = ApplyReport::default();
        let mut refused = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            if !self.admit_remote(op)? {
                report.duplicates += 1;
                continue;
            }
            let coll = self.tx.collection(&op.collection, true)?;
            let old = self.tx.core.load_state(coll.id, op.record)?;
            match check(op, old.as_ref()) {
                Ok(()) => {
                    self.tx.write(
                        &coll,
                        old,
                        op.clone(),
                        ChangeOrigin::Remote(op.id.origin),
                        false,
                    )?;
                    report.applied += 1;
                }
                Err(refusal) => {
                    self.tx.record_op(op.id)?;
                    let held = old.as_ref().is_some_and(RecordState::is_visible);
                    let undo = if held && !restorable(op) {
                        None
                    } else {
                        Some(self.undo_refused(op)?)
                    };
                    refused.push(Refused {
                        index,
                        refusal,
                        undo,
                    });
                }
            }
        }
        Ok((report, refused))
    }

    /// Writes, as a local operation, what undoes `refused` (an operation this replica counted
    /// as received with [`TransactionReplication::skip_remote`] without applying it) on every
    /// replica that applied it, given the record here. The new operation is newer than
    /// `refused` (skipping it moved the clock past it) and goes to the op log like any write:
    /// - the record is not here, or deleted: a delete (undoing an insert or an update);
    /// - `refused` inserted or deleted it: an insert with every field it has here;
    /// - `refused` updated it: an update setting each field it wrote to the value here
    ///   ([`Value::Null`] where the record has no such field), even when unchanged here.
    ///
    /// Returns the operation written. It may carry fields the writer of `refused` may not
    /// read: whoever sends it to that writer must not send their values (the sync engine
    /// sends null there, so that what the writer wrote is overwritten without revealing
    /// anything).
    pub fn undo_refused(&mut self, refused: &Operation) -> Result<Operation> {
        let tx = &mut *self.tx;
        let coll = tx.collection(&refused.collection, true)?;
        let old = tx.core.load_state(coll.id, refused.record)?;
        let here = old.as_ref().and_then(RecordState::visible_fields);
        let (kind, fields) = match (here, refused.kind) {
            (None, _) => (OpKind::Delete, Fields::new()),
            (Some(all), OpKind::Insert | OpKind::Delete) => (OpKind::Insert, all),
            (Some(all), OpKind::Update) => (
                OpKind::Update,
                refused
                    .fields
                    .keys()
                    .map(|name| (name.clone(), all.get(name).cloned().unwrap_or(Value::Null)))
                    .collect(),
            ),
        };
        let op = tx.local_op(kind, &refused.collection, refused.record, fields);
        tx.write(&coll, old, op.clone(), ChangeOrigin::Local, true)?;
        Ok(op)
    }

    /// Counts `ops` as received without applying them: for operations a server refused
    /// (access rules). They change no record and enter no op log (so they are never
    /// forwarded), but the version vector moves past them, so the sender is not asked for
    /// them again and nothing is retried forever. The Lamport clock moves past their stamps,
    /// so the operation that undoes a refused write here is newer than it. Invalid operations
    /// are refused like in [`TransactionReplication::apply_remote`]; `applied` in the report
    /// counts the operations skipped.
    pub fn skip_remote(&mut self, ops: &[Operation]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        for op in ops {
            if self.admit_remote(op)? {
                self.tx.record_op(op.id)?;
                report.applied += 1;
            } else {
                report.duplicates += 1;
            }
        }
        Ok(report)
    }

    /// Checks a remote operation and advances the clocks past it: true when it is new here,
    /// false for a duplicate (the same operation again). An operation that is invalid, or
    /// that differs from the one with its id here (a copied database file), is an error.
    fn admit_remote(&mut self, op: &Operation) -> Result<bool> {
        let invalid = |e: Error| Error::InvalidOperation {
            op: op.id.to_string(),
            reason: e.to_string(),
        };
        validate::collection_name(&op.collection).map_err(invalid)?;
        validate::fields(&op.fields).map_err(invalid)?;
        validate::remote_clock("lamport", op.lamport).map_err(invalid)?;
        validate::remote_clock("sequence number", op.id.seq).map_err(invalid)?;
        if op.kind == OpKind::Delete && !op.fields.is_empty() {
            return Err(invalid(Error::InvalidQuery(
                "a delete carries no fields".into(),
            )));
        }
        let known = if op.id.origin == self.tx.core.node {
            self.tx.core.has_op(op.id)?
        } else {
            self.tx.merged_already(op.id)?
        };
        if known {
            // The same id must mean the same operation; if not, one of two files that share
            // the origin's node id is a copy, and merging on would diverge for ever.
            if self
                .tx
                .core
                .op_digest(op.id)?
                .is_some_and(|here| here != op.digest())
            {
                return Err(Error::CopiedDatabase { op: op.id });
            }
            return Ok(false);
        }
        self.tx.core.lamport = self.tx.core.lamport.max(op.lamport);
        if op.id.origin == self.tx.core.node {
            // An operation of ours that this file never saw: it was restored from a backup.
            // Never reuse its sequence number, and from now on track our own operations in
            // `merged_ops` (see `Core::has_op`).
            if self.tx.core.gap_prefix.is_none() {
                self.tx.core.gap_prefix = Some(self.tx.core.seq);
            }
            self.tx.core.seq = self.tx.core.seq.max(op.id.seq);
        }
        Ok(true)
    }

    /// Records that this database now holds every operation `vector` covers, after a complete
    /// snapshot ([`TransactionReplication::apply_snapshot`](crate::TransactionReplication::apply_snapshot)) of a replica whose
    /// [`SnapshotInfo::vector`](crate::SnapshotInfo::vector) it is. Operations it covers then
    /// count as duplicates in [`TransactionReplication::apply_remote`](crate::TransactionReplication::apply_remote). Only raises: entries below what is
    /// here already change nothing.
    pub fn merge_version_vector(&mut self, vector: &VersionVector) -> Result<()> {
        for (origin, seq) in vector.iter() {
            validate::remote_clock("sequence number", seq).map_err(|e| Error::InvalidSnapshot {
                record: format!("version vector entry {origin}"),
                reason: e.to_string(),
            })?;
        }
        for (origin, seq) in vector.iter() {
            if origin == self.tx.core.node {
                self.tx.cover_own(seq)?;
            } else {
                self.tx.raise_prefix(origin, seq)?;
            }
        }
        Ok(())
    }

    /// Joins the records of a snapshot from `peer` into this database (see
    /// [`Replication::snapshot_page`](crate::Replication::snapshot_page)): each record's state is joined into the stored one, so a
    /// record edited here concurrently merges field by field, as if the operations had been
    /// applied. Indexes, counts and watchers follow (the changes come from `peer`), and the
    /// Lamport clock advances past every stamp seen. Nothing goes to the op log: a snapshot is
    /// not operations. After the last page, call [`TransactionReplication::merge_version_vector`](crate::TransactionReplication::merge_version_vector) (and
    /// usually [`TransactionReplication::set_peer_cursor`](crate::TransactionReplication::set_peer_cursor) with the snapshot's position).
    ///
    /// Invalid names or values refuse the whole batch before anything is written.
    pub fn apply_snapshot(
        &mut self,
        peer: NodeId,
        records: &[SnapshotRecord],
    ) -> Result<SnapshotReport> {
        for record in records {
            let invalid = |e: Error| Error::InvalidSnapshot {
                record: format!("{}/{}", record.collection, record.id),
                reason: e.to_string(),
            };
            validate::collection_name(&record.collection).map_err(invalid)?;
            if let Some(stamp) = record.state.max_stamp() {
                validate::remote_clock("lamport", stamp.lamport).map_err(invalid)?;
            }
            for (name, field) in &record.state.fields {
                validate::field(name, &field.value).map_err(invalid)?;
            }
        }
        let mut report = SnapshotReport::default();
        for record in records {
            if let Some(stamp) = record.state.max_stamp() {
                self.tx.core.lamport = self.tx.core.lamport.max(stamp.lamport);
            }
            let coll = self.tx.collection(&record.collection, true)?;
            if self.tx.join(&coll, record, ChangeOrigin::Remote(peer))? {
                report.applied += 1;
            } else {
                report.unchanged += 1;
            }
        }
        Ok(report)
    }
}
