//! Reads: records, counts, the op log, statistics and the content hash.

use std::borrow::Cow;

use blazedb_format::{
    Fields, NodeId, OpDigest, OpId, Operation, Record, RecordState, Value, VersionVector,
    decode_operations, decode_record_state, encode_record,
};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{Core, Database};
use crate::error::{Error, Result};
use crate::replication::Replication;

/// The value a query or index sees for `field`: the record id for `"id"`, `Null` when missing.
pub(crate) fn field_value<'a>(fields: &'a Fields, id: &Uuid, field: &str) -> Cow<'a, Value> {
    resolve(id, field, |f| fields.get(f))
}

/// [`field_value`] for any field storage: `get` looks a field up by name. Queries and indexes
/// both go through here, so they cannot disagree on what a field's value is.
pub(crate) fn resolve<'a>(
    id: &Uuid,
    field: &str,
    get: impl FnOnce(&str) -> Option<&'a Value>,
) -> Cow<'a, Value> {
    if field == "id" {
        return Cow::Owned(Value::Uuid(*id));
    }
    match get(field) {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(Value::Null),
    }
}

pub(crate) fn uuid_from(bytes: &[u8]) -> Result<Uuid> {
    Uuid::from_slice(bytes).map_err(|_| Error::Corrupt("record id is not 16 bytes".into()))
}

impl Core {
    /// A counter of the `counters` table (0 when it was never set).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// See [`Replication::oplog_head`](crate::Replication::oplog_head).
    pub fn oplog_head(&self) -> Result<u64> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM oplog")?
            .query_row([], |r| r.get(0))?;
        Ok((n.unwrap_or(0).max(0) as u64).max(self.counter("oplog_start")?))
    }

    /// See [`Replication::version_vector`](crate::Replication::version_vector); `own_seq` is our own node's entry.
    pub fn version_vector(&self, own_seq: u64) -> Result<VersionVector> {
        let mut vector = VersionVector::new();
        vector.observe(self.node, own_seq);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT origin, max_seq FROM origins")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let origin = Uuid::from_slice(row.get_ref(0)?.as_blob()?)
                .map_err(|_| Error::Corrupt("origin node id is not 16 bytes".into()))?;
            let seq: i64 = row.get(1)?;
            vector.observe(NodeId(origin), seq.max(0) as u64);
        }
        Ok(vector)
    }

    pub fn load_state(&self, coll: i64, id: Uuid) -> Result<Option<RecordState>> {
        Ok(match self.load_state_bytes(coll, id)? {
            Some(b) => Some(decode_record_state(&b)?),
            None => None,
        })
    }

    /// A record's stored state, still encoded.
    pub fn load_state_bytes(&self, coll: i64, id: Uuid) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT state FROM records WHERE coll = ?1 AND id = ?2")?
            .query_row(params![coll, id.as_bytes().as_slice()], |r| r.get(0))
            .optional()?)
    }

    pub fn get(&mut self, collection: &str, id: Uuid) -> Result<Option<Record>> {
        let Some(coll) = self.collection(collection, false)? else {
            return Ok(None);
        };
        Ok(self
            .load_state(coll.id, id)?
            .and_then(|s| s.visible_fields())
            .map(|fields| Record { id, fields }))
    }

    /// Calls `f` with every visible record of a collection, in id order, until it returns false.
    pub fn scan(
        &mut self,
        collection: &str,
        mut f: impl FnMut(Record) -> Result<bool>,
    ) -> Result<()> {
        let Some(coll) = self.collection(collection, false)? else {
            return Ok(());
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, state FROM records WHERE coll = ?1 AND live = 1 ORDER BY id",
        )?;
        let mut rows = stmt.query([coll.id])?;
        while let Some(row) = rows.next()? {
            let id = uuid_from(row.get_ref(0)?.as_blob()?)?;
            let state = decode_record_state(row.get_ref(1)?.as_blob()?)?;
            if let Some(fields) = state.visible_fields()
                && !f(Record { id, fields })?
            {
                break;
            }
        }
        Ok(())
    }

    /// Is this operation already in the op log? Our own operations are numbered without gaps,
    /// so a sequence number we issued is enough. Another node's operation is here if it is in
    /// that origin's contiguous prefix (`origins`) or waits beyond a gap (`merged_ops`).
    pub fn has_op(&self, id: OpId) -> Result<bool> {
        let key = id.origin.as_bytes().as_slice();
        if id.origin == self.node {
            match self.gap_prefix {
                None => return Ok(id.seq <= self.seq),
                Some(prefix) if id.seq <= prefix => return Ok(true),
                Some(_) => {}
            }
        } else {
            let prefix: Option<i64> = self
                .conn
                .prepare_cached("SELECT max_seq FROM origins WHERE origin = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?;
            if prefix.is_some_and(|p| id.seq <= p.max(0) as u64) {
                return Ok(true);
            }
        }
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM merged_ops WHERE origin = ?1 AND origin_seq = ?2")?
            .query_row(params![key, id.seq as i64], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// Sizes and counters of a database, for `blazedb stats` and monitoring.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    pub node_id: blazedb_format::NodeId,
    pub lamport: u64,
    /// Operations in the op log (local and merged), without those compacted away.
    pub oplog_len: u64,
    pub collections: Vec<CollectionStats>,
    /// Size of the database in bytes (pages in use × page size).
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CollectionStats {
    pub name: String,
    pub records: u64,
    pub indexes: Vec<String>,
}

impl Database {
    /// A record by id, or `None`.
    pub fn get(&self, collection: &str, id: Uuid) -> Result<Option<Record>> {
        self.read()?.get(collection, id)
    }

    /// All visible records of a collection, in id order (which for generated ids is insertion
    /// order).
    pub fn fetch_all(&self, collection: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.read()?.scan(collection, |r| {
            out.push(r);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f` with every visible record of a collection in id order, without holding them
    /// all in memory; stops early when `f` returns `Ok(false)`. The database is locked for the
    /// duration, so `f` must not write to it.
    pub fn scan(&self, collection: &str, f: impl FnMut(Record) -> Result<bool>) -> Result<()> {
        self.read()?.scan(collection, f)
    }

    /// Number of visible records in a collection (kept as a counter: O(1)).
    pub fn count(&self, collection: &str) -> Result<u64> {
        let core = self.read()?;
        let n: Option<i64> = core
            .conn
            .prepare_cached(
                "SELECT k.value FROM collections c JOIN counters k ON k.name = 'live/' || c.id \
                 WHERE c.name = ?1",
            )?
            .query_row([collection], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Names of all collections, sorted.
    pub fn collections(&self) -> Result<Vec<String>> {
        let core = self.read()?;
        let mut stmt = core
            .conn
            .prepare_cached("SELECT name FROM collections ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }

    /// SHA-256 over every visible record (collection name, id and fields, in a fixed order).
    /// Two replicas with the same contents have the same hash, whatever order their operations
    /// arrived in.
    pub fn content_hash(&self) -> Result<[u8; 32]> {
        let core = self.read()?;
        let mut hasher = Sha256::new();
        let mut stmt = core.conn.prepare_cached(
            "SELECT c.name, r.id, r.state FROM records r JOIN collections c ON c.id = r.coll \
             WHERE r.live = 1 ORDER BY c.name, r.id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let name = row.get_ref(0)?.as_str()?;
            let id = uuid_from(row.get_ref(1)?.as_blob()?)?;
            let state = decode_record_state(row.get_ref(2)?.as_blob()?)?;
            if let Some(fields) = state.visible_fields() {
                let bytes = encode_record(&Record { id, fields });
                hasher.update((name.len() as u64).to_le_bytes());
                hasher.update(name.as_bytes());
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
        }
        Ok(hasher.finalize().into())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Result<Stats> {
        let core = self.read()?;
        let oplog_len = core
            .counter("oplog_ops")?
            .saturating_sub(core.counter("oplog_start_total")?);
        let page_count: i64 = core.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        // SQLCipher answers `PRAGMA page_size` on a keyed database as text.
        let page_size: rusqlite::types::Value =
            core.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let page_size: i64 = match page_size {
            rusqlite::types::Value::Integer(n) => n,
            rusqlite::types::Value::Text(t) => t.trim().parse().unwrap_or(0),
            _ => 0,
        };
        let mut stmt = core.conn.prepare_cached(
            "SELECT c.name, coalesce((SELECT value FROM counters WHERE name = 'live/' || c.id), 0), \
             (SELECT group_concat(field, char(31)) FROM \
             (SELECT field FROM indexes i WHERE i.coll = c.id ORDER BY field)) \
             FROM collections c ORDER BY c.name",
        )?;
        let collections = stmt
            .query_map([], |r| {
                let indexes: Option<String> = r.get(2)?;
                Ok(CollectionStats {
                    name: r.get(0)?,
                    records: r.get::<_, i64>(1)?.max(0) as u64,
                    indexes: indexes
                        .map(|s| s.split('\u{1f}').map(str::to_owned).collect())
                        .unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Stats {
            node_id: core.node,
            lamport: core.lamport,
            oplog_len,
            collections,
            size_bytes: (page_count * page_size) as u64,
        })
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok(())` when the file is sound.
    pub fn integrity_check(&self) -> Result<()> {
        let core = self.read()?;
        let mut stmt = core.conn.prepare("PRAGMA integrity_check")?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if lines.len() == 1 && lines.first().is_some_and(|l| l == "ok") {
            Ok(())
        } else {
            Err(Error::Corrupt(lines.join("; ")))
        }
    }
}

impl Replication<'_> {
    /// A record's full replicated state (tombstones and field stamps included), as a
    /// snapshot would carry it; `None` when this database has never seen the record.
    pub fn record_state(&self, collection: &str, id: Uuid) -> Result<Option<RecordState>> {
        let mut core = self.db.read()?;
        let Some(coll) = core.collection(collection, false)? else {
            return Ok(None);
        };
        core.load_state(coll.id, id)
    }

    /// Operations in the op log after position `after` (0 for the start), oldest first. A
    /// committed transaction is one op-log entry (or several of up to `OPLOG_ENTRY_MAX_OPS`
    /// operations) and all operations of an entry carry its position, so a sync cursor that
    /// stores the last position it delivered never splits an entry. Stops after the entry that
    /// reaches `limit` operations (an entry is never cut, so up to `OPLOG_ENTRY_MAX_OPS - 1` more
    /// may come back).
    ///
    /// Fails with [`Error::OplogCompacted`] when `after` is before [`Replication::oplog_start`](crate::Replication::oplog_start):
    /// entries the reader needs are gone, and it needs a snapshot instead
    /// ([`Replication::snapshot_info`](crate::Replication::snapshot_info)).
    pub fn oplog_since(&self, after: u64, limit: usize) -> Result<Vec<(u64, Operation)>> {
        let core = self.db.read()?;
        let start = core.counter("oplog_start")?;
        if after < start {
            // Skipping the compacted entries silently would lose their operations for the reader.
            return Err(Error::OplogCompacted { after, start });
        }
        let mut stmt = core
            .conn
            .prepare_cached("SELECT seq, ops FROM oplog WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = stmt.query(params![after.min(i64::MAX as u64) as i64])?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let seq: i64 = row.get(0)?;
            for op in decode_operations(row.get_ref(1)?.as_blob()?)? {
                out.push((seq as u64, op));
            }
        }
        Ok(out)
    }

    /// Position of the newest op-log entry (0 when empty). After [`Replication::compact_oplog`](crate::Replication::compact_oplog)
    /// removed every entry, the compacted position: positions are never reused.
    pub fn oplog_head(&self) -> Result<u64> {
        self.db.read()?.oplog_head()
    }

    /// How many operations the op log holds up to and including `position` (all of them for
    /// a position at or past the head, 0 for position 0). Operations after position `p` are
    /// `oplog_ops_through(u64::MAX) - oplog_ops_through(p)`. Compacted operations still count;
    /// for a position at or before [`Replication::oplog_start`](crate::Replication::oplog_start) the count at the start is returned
    /// (the exact count there is gone, and it is never more than that).
    pub fn oplog_ops_through(&self, position: u64) -> Result<u64> {
        let core = self.db.read()?;
        let n: Option<i64> = core
            .conn
            .prepare_cached("SELECT total FROM oplog WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row(params![position.min(i64::MAX as u64) as i64], |r| r.get(0))
            .optional()?;
        let at_start = core.counter("oplog_start_total")?;
        Ok((n.unwrap_or(0).max(0) as u64).max(at_start))
    }

    /// Which operations this database has: for each origin node, the sequence number up to
    /// which it has all of that origin's operations (its own node: the highest it issued or
    /// saw). Operations merged ahead of a gap are not counted until the gap fills.
    pub fn version_vector(&self) -> Result<VersionVector> {
        let core = self.db.read()?;
        core.version_vector(core.seq)
    }

    /// The digest of operation `id` as it was applied here ([`Operation::digest`]), or `None`
    /// when this file does not have it, or got it in a snapshot or before digests were kept.
    /// Two replicas whose digests for one id differ hold operations of two database files
    /// that share a node id: one of them is a copy.
    pub fn op_digest(&self, id: OpId) -> Result<Option<OpDigest>> {
        self.db.read()?.op_digest(id)
    }

    /// Records that a peer holds this database's own operations up to `seq` and that they are
    /// the ones made here (their digests matched). Only raises. [`Database::reidentify`]
    /// gives a new identity to the operations after the highest such `seq` only.
    pub fn confirm_own(&self, seq: u64) -> Result<()> {
        let core = self.db.lock()?;
        if seq > core.seq {
            return Ok(());
        }
        core.conn
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES ('own_confirmed', ?1) \
                 ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![seq as i64])?;
        Ok(())
    }

    /// The highest sequence number [`Replication::confirm_own`](crate::Replication::confirm_own) recorded (0 when none).
    pub fn own_confirmed(&self) -> Result<u64> {
        self.db.read()?.counter("own_confirmed")
    }

    /// Position in `peer`'s op log up to which its operations are applied here (0 when none),
    /// as stored by [`TransactionReplication::set_peer_cursor`](crate::TransactionReplication::set_peer_cursor).
    pub fn peer_cursor(&self, peer: NodeId) -> Result<u64> {
        let core = self.db.read()?;
        let n: Option<i64> = core
            .conn
            .prepare_cached("SELECT cursor FROM peers WHERE node = ?1")?
            .query_row(params![peer.as_bytes().as_slice()], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// A setting of this file that is never synced (sync keys, enrollment state), stored
    /// encrypted with everything else. `None` when it was never set.
    pub fn local_setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let core = self.db.read()?;
        Ok(core
            .conn
            .prepare_cached("SELECT value FROM local_settings WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?)
    }

    /// Sets (or, with `None`, removes) a local setting, durably, outside any transaction.
    /// Local settings are not records: they have no op-log entry and never leave this file.
    pub fn set_local_setting(&self, name: &str, value: Option<&[u8]>) -> Result<()> {
        let core = self.db.lock()?;
        match value {
            Some(value) => core
                .conn
                .prepare_cached(
                    "INSERT INTO local_settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![name, value])?,
            None => core
                .conn
                .prepare_cached("DELETE FROM local_settings WHERE name = ?1")?
                .execute(params![name])?,
        };
        Ok(())
    }

    /// Every local setting whose name starts with `prefix`, by name.
    pub fn local_settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let core = self.db.read()?;
        let mut stmt = core.conn.prepare_cached(
            "SELECT name, value FROM local_settings WHERE name >= ?1 ORDER BY name",
        )?;
        let mut rows = stmt.query([prefix])?;
        let mut found = Vec::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            if !name.starts_with(prefix) {
                break;
            }
            found.push((name, row.get(1)?));
        }
        Ok(found)
    }

    /// Removes every local setting whose name starts with `prefix`; returns how many there
    /// were.
    pub fn remove_local_settings(&self, prefix: &str) -> Result<usize> {
        let core = self.db.lock()?;
        let mut names = Vec::new();
        {
            let mut stmt = core
                .conn
                .prepare_cached("SELECT name FROM local_settings WHERE name >= ?1 ORDER BY name")?;
            let mut rows = stmt.query([prefix])?;
            while let Some(row) = rows.next()? {
                let name: String = row.get(0)?;
                if !name.starts_with(prefix) {
                    break;
                }
                names.push(name);
            }
        }
        for name in &names {
            core.conn
                .prepare_cached("DELETE FROM local_settings WHERE name = ?1")?
                .execute([name])?;
        }
        Ok(names.len())
    }
}
