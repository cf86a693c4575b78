//! Op-log compaction and snapshots (the sending side; the receiving side is
//! [`TransactionReplication::apply_snapshot`](crate::TransactionReplication::apply_snapshot)).
//!
//! A database may drop the op-log entries every peer has (`compact_oplog`). A peer whose cursor
//! is before the dropped entries, or a new device, is brought up to date with a snapshot instead:
//! the full state of every record (tombstones included), read in pages, which the receiver joins
//! into its own (`RecordState::join`), then the operations after the snapshot's position.

use blazedb_format::{SnapshotRecord, VersionVector, decode_record_state};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use crate::db::{Core, Database};
use crate::error::Result;
use crate::read::uuid_from;
use crate::replication::Replication;

/// Where a snapshot stands when it starts: see [`Replication::snapshot_info`](crate::Replication::snapshot_info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The op-log head: the snapshot holds at least every operation up to this position, so the
    /// receiver continues with `oplog_since(position)`.
    pub position: u64,
    /// The operations the snapshot holds (equal to [`Replication::version_vector`](crate::Replication::version_vector) at `position`);
    /// the receiver merges it with
    /// [`TransactionReplication::merge_version_vector`](crate::TransactionReplication::merge_version_vector).
    pub vector: VersionVector,
    /// Records the snapshot has (tombstones included), for progress reports. Records written
    /// while the pages are read may make the real number larger.
    pub records: u64,
}

/// Where [`Replication::snapshot_page`](crate::Replication::snapshot_page) continues: after this record. Opaque; it only has meaning
/// for the database that returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotKey {
    coll: i64,
    id: Uuid,
}

impl SnapshotKey {
    /// The key as 24 bytes, for a server that hands it to its client between pages.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        let (coll, id) = out.split_at_mut(8);
        coll.copy_from_slice(&self.coll.to_be_bytes());
        id.copy_from_slice(self.id.as_bytes());
        out
    }

    /// A key from [`SnapshotKey::to_bytes`]; `None` when `bytes` are not 24 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<SnapshotKey> {
        let coll: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let id = Uuid::from_slice(bytes.get(8..)?).ok()?;
        Some(SnapshotKey {
            coll: i64::from_be_bytes(coll),
            id,
        })
    }
}

impl Core {
    fn compact_oplog(&mut self, through: u64) -> Result<u64> {
        let start = self.counter("oplog_start")?;
        let target = through.min(self.oplog_head()?);
        if target <= start {
            return Ok(start);
        }
        let conn = &self.conn;
        let total: Option<i64> = conn
            .prepare_cached("SELECT total FROM oplog WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row(params![target as i64], |r| r.get(0))
            .optional()?;
        let total = (total.unwrap_or(0).max(0) as u64).max(self.counter("oplog_start_total")?);
        conn.prepare_cached("DELETE FROM oplog WHERE seq <= ?1")?
            .execute(params![target as i64])?;
        let mut set = conn.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?;
        set.execute(params!["oplog_start", target as i64])?;
        set.execute(params!["oplog_start_total", total as i64])?;
        Ok(target)
    }

    /// Call inside a read transaction: every statement then sees the same commit.
    fn snapshot_info(&self) -> Result<SnapshotInfo> {
        let records: i64 = self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        // Our own entry from the file, not the cache: the cache may predate this transaction.
        let own_seq = self.counter("seq")?;
        Ok(SnapshotInfo {
            position: self.oplog_head()?,
            vector: self.version_vector(own_seq)?,
            records: records.max(0) as u64,
        })
    }
}

impl Database {}

impl Replication<'_> {
    /// The newest op-log position compacted away by [`Replication::compact_oplog`](crate::Replication::compact_oplog) (0 if none):
    /// entries at or before it are gone, and [`Replication::oplog_since`](crate::Replication::oplog_since) refuses to start there.
    pub fn oplog_start(&self) -> Result<u64> {
        self.db.read()?.counter("oplog_start")
    }

    /// Deletes the op-log entries up to and including `through` (at most up to the head), in
    /// one transaction, and returns the new [`Replication::oplog_start`](crate::Replication::oplog_start). The start never moves
    /// back: a `through` before it changes nothing. Positions are never reused, and
    /// [`Replication::oplog_ops_through`](crate::Replication::oplog_ops_through) keeps counting the compacted operations.
    ///
    /// Only compact what every peer has: a peer whose cursor is before the start needs a
    /// snapshot ([`Replication::snapshot_info`](crate::Replication::snapshot_info)) to catch up.
    pub fn compact_oplog(&self, through: u64) -> Result<u64> {
        self.db.transaction(|tx| tx.core.compact_oplog(through))
    }

    /// The position, version vector and record count a snapshot starts from, read together in
    /// one read transaction so that they agree. Then read the records with
    /// [`Replication::snapshot_page`](crate::Replication::snapshot_page) and continue with `oplog_since(position)`.
    pub fn snapshot_info(&self) -> Result<SnapshotInfo> {
        let core = self.db.lock()?;
        core.conn.execute_batch("BEGIN DEFERRED")?;
        let info = core.snapshot_info();
        if let Err(e) = core.conn.execute_batch("COMMIT") {
            // Never leave the connection inside a transaction.
            let _ = core.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        info
    }

    /// Up to `max_records` records (at least one) of a snapshot, tombstones included, in a
    /// fixed order, after `after` (`None` for the first page), with the key to pass to the next
    /// call (`None` after the last page). The page also ends after the record that brings its
    /// size to `max_bytes` or more, counting each record's encoded state as stored, its
    /// collection name and its 16-byte id: what it costs in a message.
    ///
    /// Pages are read one at a time, and writes may commit between them: a page can then hold
    /// newer states than the snapshot's position. That is fine, because joining states is
    /// monotone and idempotent: the receiver ends with at least the state at the position, and
    /// the operations after the position (which it receives next) change nothing that a newer
    /// page already holds. Records created between pages before the key are not in the snapshot,
    /// but their operations come after the position.
    pub fn snapshot_page(
        &self,
        after: Option<&SnapshotKey>,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SnapshotRecord>, Option<SnapshotKey>)> {
        let core = self.db.read()?;
        let (coll, id) = match after {
            Some(k) => (k.coll, k.id.as_bytes().to_vec()),
            // Every key is greater: collection ids are positive and blobs sort after integers.
            None => (i64::MIN, Vec::new()),
        };
        let max_records = max_records.max(1);
        // `CROSS JOIN` keeps `records` the outer loop, so the page is a range of its key.
        let mut stmt = core.conn.prepare_cached(
            "SELECT c.name, r.coll, r.id, r.state FROM records r CROSS JOIN collections c \
             ON c.id = r.coll WHERE (r.coll, r.id) > (?1, ?2) ORDER BY r.coll, r.id LIMIT ?3",
        )?;
        // One more row than asked says whether another page follows.
        let limit = i64::try_from(max_records).unwrap_or(i64::MAX - 1) + 1;
        let mut rows = stmt.query(params![coll, id, limit])?;
        let mut page = Vec::new();
        let mut last = None;
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            if page.len() == max_records || bytes >= max_bytes {
                // A row after the full page: there is more.
                return Ok((page, last));
            }
            let coll: i64 = row.get(1)?;
            let id = uuid_from(row.get_ref(2)?.as_blob()?)?;
            let collection: String = row.get(0)?;
            let state = row.get_ref(3)?.as_blob()?;
            bytes += state.len() + collection.len() + 16;
            page.push(SnapshotRecord {
                collection,
                id,
                state: decode_record_state(state)?,
            });
            last = Some(SnapshotKey { coll, id });
        }
        Ok((page, None))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::{Error, fields};

    #[test]
    fn a_snapshot_key_survives_its_byte_form() {
        let key = SnapshotKey {
            coll: 7,
            id: Uuid::from_u128(42),
        };
        assert_eq!(SnapshotKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(SnapshotKey::from_bytes(&[0; 23]), None);
        assert_eq!(SnapshotKey::from_bytes(&[0; 25]), None);
    }

    #[test]
    fn compaction_keeps_the_head_and_the_operation_counts() {
        let db = Database::in_memory().unwrap();
        for i in 0..5 {
            db.insert("t", fields! {"i" => i}).unwrap();
        }
        db.insert_many("t", (0..3).map(|i| fields! {"j" => i}))
            .unwrap();
        assert_eq!(db.replication().oplog_head().unwrap(), 6);
        assert_eq!(db.replication().oplog_ops_through(4).unwrap(), 4);

        assert_eq!(db.replication().compact_oplog(4).unwrap(), 4);
        assert_eq!(db.replication().oplog_start().unwrap(), 4);
        assert_eq!(db.replication().oplog_head().unwrap(), 6);
        assert_eq!(db.replication().oplog_ops_through(0).unwrap(), 4);
        assert_eq!(db.replication().oplog_ops_through(4).unwrap(), 4);
        assert_eq!(db.replication().oplog_ops_through(5).unwrap(), 5);
        assert_eq!(db.replication().oplog_ops_through(u64::MAX).unwrap(), 8);
        assert_eq!(db.stats().unwrap().oplog_len, 4);
        let rest: Vec<u64> = db
            .replication()
            .oplog_since(4, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(rest, [5, 6, 6, 6]);
    }

    #[test]
    fn reading_the_op_log_from_before_the_start_is_refused() {
        let db = Database::in_memory().unwrap();
        for i in 0..3 {
            db.insert("t", fields! {"i" => i}).unwrap();
        }
        db.replication().compact_oplog(2).unwrap();
        let err = db.replication().oplog_since(1, 10).unwrap_err();
        assert!(
            matches!(err, Error::OplogCompacted { after: 1, start: 2 }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the op log before position 2 was compacted away; position 1 needs a snapshot"
        );
        assert_eq!(db.replication().oplog_since(2, 10).unwrap().len(), 1);
    }

    #[test]
    fn the_start_never_moves_back_nor_past_the_head() {
        let db = Database::in_memory().unwrap();
        for i in 0..3 {
            db.insert("t", fields! {"i" => i}).unwrap();
        }
        assert_eq!(db.replication().compact_oplog(2).unwrap(), 2);
        assert_eq!(db.replication().compact_oplog(1).unwrap(), 2);
        assert_eq!(db.replication().compact_oplog(u64::MAX).unwrap(), 3);
        assert_eq!(db.replication().oplog_start().unwrap(), 3);
        assert_eq!(db.replication().oplog_ops_through(u64::MAX).unwrap(), 3);
    }

    #[test]
    fn positions_are_not_reused_after_the_whole_log_was_compacted() {
        let db = Database::in_memory().unwrap();
        for i in 0..3 {
            db.insert("t", fields! {"i" => i}).unwrap();
        }
        db.replication().compact_oplog(u64::MAX).unwrap();
        assert_eq!(
            db.replication().oplog_head().unwrap(),
            3,
            "an empty log keeps its head"
        );
        assert!(db.replication().oplog_since(3, 10).unwrap().is_empty());
        db.insert("t", fields! {"i" => 3}).unwrap();
        assert_eq!(db.replication().oplog_head().unwrap(), 4);
        assert_eq!(db.replication().oplog_ops_through(u64::MAX).unwrap(), 4);
        let after: Vec<u64> = db
            .replication()
            .oplog_since(3, 10)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(after, [4]);
    }

    #[test]
    fn snapshot_pages_hold_every_record_once_tombstones_included() {
        let db = Database::in_memory().unwrap();
        let ids = db
            .insert_many("a", (0..5).map(|i| fields! {"i" => i}))
            .unwrap();
        db.insert_many("b", (0..4).map(|i| fields! {"i" => i}))
            .unwrap();
        db.delete("a", ids[2]).unwrap();
        let info = db.replication().snapshot_info().unwrap();
        assert_eq!(info.records, 9);
        assert_eq!(info.position, db.replication().oplog_head().unwrap());
        assert_eq!(info.vector, db.replication().version_vector().unwrap());

        let mut seen = Vec::new();
        let mut key = None;
        loop {
            let (page, next) = db
                .replication()
                .snapshot_page(key.as_ref(), 2, usize::MAX)
                .unwrap();
            assert!(page.len() <= 2);
            seen.extend(page);
            match next {
                Some(k) => key = Some(k),
                None => break,
            }
        }
        assert_eq!(seen.len(), 9);
        let tombstones = seen.iter().filter(|r| !r.state.is_visible()).count();
        assert_eq!(tombstones, 1);
        let mut keys: Vec<(String, Uuid)> =
            seen.iter().map(|r| (r.collection.clone(), r.id)).collect();
        keys.dedup();
        assert_eq!(keys.len(), 9);
        // A page as large as the rest says it is the last one.
        let (page, next) = db.replication().snapshot_page(None, 9, usize::MAX).unwrap();
        assert_eq!((page.len(), next), (9, None));
        // A byte budget ends a page after the record that reaches it, never before the first.
        let (page, next) = db.replication().snapshot_page(None, 9, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert!(next.is_some());
        let (page, next) = db.replication().snapshot_page(None, 9, 1 << 20).unwrap();
        assert_eq!((page.len(), next), (9, None));
    }
}
