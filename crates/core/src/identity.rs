//! A new identity for a copied database file ([`Database::reidentify`]).
//!
//! Two files that share a node id issue different operations under the same ids, and every
//! replica keeps whichever it saw first. The copy that peers refused takes a new node id; its
//! own operations after the last one a peer confirmed (by digest, [`Replication::confirm_own`](crate::Replication::confirm_own))
//! are renamed to the new node in place in the op log, so they are sent again under ids no
//! one has, and the stamps they left in record states follow, so that a field written here
//! never shares a stamp with a different value written by the other file.

use std::collections::HashSet;
use std::sync::Arc;

use blazedb_format::{
    NodeId, OpId, RecordState, Stamp, decode_operations, decode_record_state, encode_operations,
};
use rusqlite::params;
use uuid::Uuid;

use crate::db::Database;
use crate::digests;
use crate::error::{Error, Result};
use crate::txn::{Transaction, Written};
use crate::watch::ChangeOrigin;

/// What [`Database::reidentify`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reidentified {
    /// The node id the file had (and its copy keeps).
    pub old: NodeId,
    /// The file's new node id.
    pub new: NodeId,
    /// Own operations up to this sequence number were confirmed by a peer: they stay the old
    /// node's, as everyone has them.
    pub confirmed: u64,
    /// Operations renamed to the new node: they will be sent again under their new ids.
    pub renamed: u64,
    /// Records whose field, insert or delete stamps were moved to the new node.
    pub restamped: u64,
}

impl Database {
    /// Gives this database file a new node id, for a file that is a copy of another (two
    /// files with one node id diverge; see [`Error::CopiedDatabase`]). Its own operations
    /// after the last one a peer confirmed are renamed to the new node and will be synced again
    /// under their new ids; nothing written here is lost. Operations of the old node id that
    /// this file has not seen (the other file's) arrive from peers as any other node's.
    ///
    /// Takes the only handle: a sync engine or another clone must be closed first, since the
    /// node id is part of every handle. Open the file again afterwards. The file's sync keys
    /// are separate ([`Replication::local_setting`](crate::Replication::local_setting)): a server binds a node id to a device key, so
    /// a synced file also needs a new key and a new enrollment.
    pub fn reidentify(self) -> Result<Reidentified> {
        if Arc::strong_count(&self.inner) > 1 {
            return Err(Error::HandlesOpen(
                "other handles of this database are open (a sync engine, a clone): close them \
                 before giving it a new identity"
                    .into(),
            ));
        }
        self.transaction(|tx| tx.reidentify())
    }
}

impl Transaction<'_> {
    fn reidentify(&mut self) -> Result<Reidentified> {
        let old = self.core.node;
        let new = NodeId::random();
        let confirmed = self.core.counter("own_confirmed")?;

        // Own operations after `confirmed` take the new identity where they are in the log, so
        // peers' cursors and the log's order stay valid. Every entry's `own_seq` counts the
        // new node's operations; the old node's that stay are another node's now, with
        // digests of their own.
        let mut entries: Vec<(i64, Option<Vec<u8>>, u64)> = Vec::new();
        let mut kept = Vec::new();
        let mut renamed = 0u64;
        let mut lamports = HashSet::new();
        {
            let mut stmt = self
                .core
                .conn
                .prepare("SELECT seq, ops FROM oplog ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let mut ops = decode_operations(row.get_ref(1)?.as_blob()?)?;
                let mut changed = false;
                for op in &mut ops {
                    if op.id.origin != old {
                        continue;
                    }
                    if op.id.seq > confirmed {
                        renamed += 1;
                        op.id = OpId {
                            origin: new,
                            seq: renamed,
                        };
                        lamports.insert(op.lamport);
                        changed = true;
                    } else {
                        kept.push(op.clone());
                    }
                }
                entries.push((
                    row.get(0)?,
                    changed.then(|| encode_operations(&ops)),
                    renamed,
                ));
            }
        }
        let conn = &self.core.conn;
        for (position, ops, own_seq) in &entries {
            conn.execute(
                "UPDATE oplog SET own_seq = ?2 WHERE seq = ?1",
                params![position, *own_seq as i64],
            )?;
            if let Some(ops) = ops {
                conn.execute(
                    "UPDATE oplog SET ops = ?2 WHERE seq = ?1",
                    params![position, ops],
                )?;
            }
        }
        digests::store_runs(conn, new, &kept)?;

        // Stamps those operations left in record states.
        let restamp = |stamp: &mut Stamp| -> bool {
            let moved = stamp.node == old && lamports.contains(&stamp.lamport);
            if moved {
                stamp.node = new;
            }
            moved
        };
        let mut restamped: Vec<(i64, Uuid, RecordState, RecordState)> = Vec::new();
        if !lamports.is_empty() {
            let mut stmt = conn.prepare("SELECT coll, id, state FROM records")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let state = decode_record_state(row.get_ref(2)?.as_blob()?)?;
                let mut moved = state.clone();
                let mut changed = false;
                for stamp in moved.created.iter_mut().chain(moved.deleted.iter_mut()) {
                    changed |= restamp(stamp);
                }
                for field in moved.fields.values_mut() {
                    changed |= restamp(&mut field.stamp);
                }
                if changed {
                    let id = crate::read::uuid_from(row.get_ref(1)?.as_blob()?)?;
                    restamped.push((row.get(0)?, id, state, moved));
                }
            }
        }
        let restamped_count = restamped.len() as u64;
        for (coll_id, id, before, after) in restamped {
            let name: String = self.core.conn.query_row(
                "SELECT name FROM collections WHERE id = ?1",
                [coll_id],
                |r| r.get(0),
            )?;
            let coll = self.collection_info(&name)?;
            // Values do not change, only stamps; visibility can only change when an insert and
            // a delete have equal Lamport times and the node id decides between them.
            let effect = match (before.is_visible(), after.is_visible()) {
                (false, true) => blazedb_format::Effect::Created,
                (true, false) => blazedb_format::Effect::Deleted,
                _ => blazedb_format::Effect::None,
            };
            let written = Written::replacing(&before, after, id, &coll, effect);
            // An error ends the transaction: `reidentify` returns it and nothing commits.
            self.persist(&coll, &name, id, written, ChangeOrigin::Local)?;
        }

        let conn = &self.core.conn;
        let old_key = old.as_bytes().as_slice();
        // The old node is another node now, of which this file has the confirmed prefix.
        conn.execute("DELETE FROM merged_ops WHERE origin = ?1", [old_key])?;
        conn.execute("DELETE FROM origins WHERE origin = ?1", [old_key])?;
        if confirmed > 0 {
            conn.execute(
                "INSERT INTO origins (origin, max_seq) VALUES (?1, ?2)",
                params![old_key, confirmed as i64],
            )?;
        }
        conn.execute(
            "DELETE FROM counters WHERE name IN ('gap_prefix', 'own_confirmed')",
            [],
        )?;
        conn.execute(
            "UPDATE node SET node_id = ?1 WHERE singleton = 1",
            [new.as_bytes().as_slice()],
        )?;
        self.core.node = new;
        self.core.seq = renamed;
        self.core.gap_prefix = None;
        Ok(Reidentified {
            old,
            new,
            confirmed,
            renamed,
            restamped: restamped_count,
        })
    }
}
