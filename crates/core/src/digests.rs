//! Where a file keeps the digest of each operation it has ([`Operation::digest`]), to find a
//! copied database file (see [`Replication::op_digest`](crate::Replication::op_digest)).
//!
//! Our own operations cost nothing extra: each op-log entry records the highest sequence
//! number of ours up to and including it (`oplog.own_seq`, rising with the position), so the
//! entry holding our operation `s` is found by a binary search over positions, and the digest
//! is computed from the operation itself. Other nodes' operations are kept as runs of digests
//! of consecutive sequence numbers: the newest run of an origin in its `origins` row (which a
//! merge rewrites anyway, so merging one operation costs no page of its own), and older runs,
//! of up to [`MAX_RUN`] digests, in `op_digests`.

use blazedb_format::{NodeId, OpDigest, OpId, Operation, decode_operations};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::Core;
use crate::error::{Error, Result};

/// Most digests in one `op_digests` row (4 KiB), so a row stays within a page or two.
const MAX_RUN: usize = 512;

/// Most digests kept in an `origins` row (256 bytes), so that rewriting the row on every merge
/// stays a small write in its page; a fuller run moves to `op_digests`.
const MAX_RECENT: usize = 32;

/// Digests of consecutive operations of one origin, from `first`.
struct Run {
    first: OpId,
    digests: Vec<u8>,
}

impl Run {
    /// A run as stored: its first sequence number and the digests.
    fn stored(origin: NodeId, first: i64, digests: Vec<u8>) -> Run {
        Run {
            first: OpId {
                origin,
                seq: first.max(0) as u64,
            },
            digests,
        }
    }

    fn len(&self) -> usize {
        self.digests.len() / OpDigest::LEN
    }

    /// Does operation `id` continue this run?
    fn continues(&self, id: OpId) -> bool {
        self.first.origin == id.origin && self.first.seq + self.len() as u64 == id.seq
    }

    fn digest(&self, seq: u64) -> Option<OpDigest> {
        let index = usize::try_from(seq.checked_sub(self.first.seq)?).ok()?;
        let bytes = self.digests.chunks_exact(OpDigest::LEN).nth(index)?;
        let mut digest = [0; OpDigest::LEN];
        digest.copy_from_slice(bytes);
        Some(OpDigest(digest))
    }
}

/// The runs of other nodes' operations than `own`'s among `ops`, in order, each at most
/// [`MAX_RUN`] long.
fn runs(own: NodeId, ops: &[Operation]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for op in ops.iter().filter(|op| op.id.origin != own) {
        match runs.last_mut() {
            Some(run) if run.continues(op.id) && run.len() < MAX_RUN => {
                run.digests.extend_from_slice(&op.digest().0);
            }
            _ => runs.push(Run {
                first: op.id,
                digests: op.digest().0.to_vec(),
            }),
        }
    }
    runs
}

/// The newest run of `origin` kept in its `origins` row: `None` when the origin has no row,
/// `Some(None)` when the row keeps no run.
fn load_recent(conn: &Connection, origin: NodeId) -> Result<Option<Option<Run>>> {
    let row: Option<(Option<i64>, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT recent_first, recent FROM origins WHERE origin = ?1")?
        .query_row([origin.as_bytes().as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map(|row| match row {
        (Some(first), Some(digests)) => Some(Run::stored(origin, first, digests)),
        _ => None,
    }))
}

fn store_old_run(conn: &Connection, run: &Run) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO op_digests (origin, first_seq, digests) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        run.first.origin.as_bytes().as_slice(),
        run.first.seq as i64,
        run.digests
    ])?;
    Ok(())
}

/// Stores the digests of the operations of other nodes than `own` among `ops`, all in
/// `op_digests` (for a bulk rewrite; a transaction uses [`store`]).
pub(crate) fn store_runs(conn: &Connection, own: NodeId, ops: &[Operation]) -> Result<()> {
    runs(own, ops)
        .iter()
        .try_for_each(|run| store_old_run(conn, run))
}

/// Stores the digests of the operations of other nodes than `own` among `ops`, after their
/// `origins` rows were written: each origin's newest run stays in its row (appended to the one
/// there when it continues it), the others go to `op_digests`.
pub(crate) fn store(conn: &Connection, own: NodeId, ops: &[Operation]) -> Result<()> {
    let mut runs = runs(own, ops);
    // Each origin's last run in this transaction.
    let mut newest: Vec<(NodeId, usize)> = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        match newest
            .iter_mut()
            .find(|(origin, _)| *origin == run.first.origin)
        {
            Some((_, last)) => *last = index,
            None => newest.push((run.first.origin, index)),
        }
    }
    for (origin, last) in newest {
        let key = origin.as_bytes().as_slice();
        let Some(mut recent) = load_recent(conn, origin)? else {
            // No prefix of this origin yet (all of it waits beyond a gap): no row to keep in.
            continue;
        };
        for index in 0..=last {
            let Some(run) = runs.get_mut(index).filter(|r| r.first.origin == origin) else {
                continue;
            };
            let run = Run {
                first: run.first,
                digests: std::mem::take(&mut run.digests),
            };
            match &mut recent {
                Some(r)
                    if r.continues(OpId {
                        origin,
                        seq: run.first.seq,
                    }) && r.len() + run.len() <= MAX_RECENT =>
                {
                    r.digests.extend_from_slice(&run.digests);
                }
                _ => {
                    if let Some(r) = recent.take() {
                        store_old_run(conn, &r)?;
                    }
                    recent = Some(run);
                }
            }
        }
        // A full run moves on (and the row forgets it, or a later merge would write its older
        // part over it).
        if let Some(r) = recent.take_if(|r| r.len() >= MAX_RECENT) {
            store_old_run(conn, &r)?;
        }
        conn.prepare_cached("UPDATE origins SET recent_first = ?2, recent = ?3 WHERE origin = ?1")?
            .execute(params![
                key,
                recent.as_ref().map(|r| r.first.seq as i64),
                recent.as_ref().map(|r| r.digests.as_slice())
            ])?;
    }
    // Runs of origins without a row, and earlier runs already moved into `recent`, are left.
    for run in runs.iter().filter(|r| !r.digests.is_empty()) {
        store_old_run(conn, run)?;
    }
    Ok(())
}

/// The highest sequence number of ours in `ops`, or `before` when that is higher.
pub(crate) fn own_seq_after(before: u64, own: NodeId, ops: &[Operation]) -> u64 {
    ops.iter()
        .filter(|op| op.id.origin == own)
        .map(|op| op.id.seq)
        .fold(before, u64::max)
}

impl Core {
    /// See [`Replication::op_digest`](crate::Replication::op_digest).
    pub fn op_digest(&self, id: OpId) -> Result<Option<OpDigest>> {
        if id.origin == self.node {
            return self.own_op_digest(id);
        }
        if let Some(Some(run)) = load_recent(&self.conn, id.origin)?
            && let Some(digest) = run.digest(id.seq)
        {
            return Ok(Some(digest));
        }
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT first_seq, digests FROM op_digests WHERE origin = ?1 AND first_seq <= ?2 \
                 ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row(
                params![
                    id.origin.as_bytes().as_slice(),
                    id.seq.min(i64::MAX as u64) as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(first, digests)| Run::stored(id.origin, first, digests).digest(id.seq)))
    }

    /// Our operation `id`: the first op-log entry whose `own_seq` reaches `id.seq` holds it,
    /// unless it was compacted away or written before `own_seq` existed.
    fn own_op_digest(&self, id: OpId) -> Result<Option<OpDigest>> {
        let at = |position: u64| -> Result<Option<(u64, u64)>> {
            Ok(self
                .conn
                .prepare_cached(
                    "SELECT seq, coalesce(own_seq, 0) FROM oplog WHERE seq >= ?1 \
                     ORDER BY seq LIMIT 1",
                )?
                .query_row([position.min(i64::MAX as u64) as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                    ))
                })
                .optional()?)
        };
        // Positions are not dense (compaction, entries of several operations), so the search
        // is over positions and each probe takes the first entry at or after it.
        let (mut low, mut high) = (0u64, self.oplog_head()?);
        let mut found = None;
        while low <= high {
            let middle = low + (high - low) / 2;
            match at(middle)? {
                Some((position, own_seq)) if own_seq >= id.seq => {
                    found = Some(position);
                    if position == 0 || middle == 0 {
                        break;
                    }
                    high = middle - 1;
                }
                Some((position, _)) => low = position + 1,
                None => break,
            }
        }
        let Some(position) = found else {
            return Ok(None);
        };
        let ops: Vec<u8> = self.conn.query_row(
            "SELECT ops FROM oplog WHERE seq = ?1",
            [position as i64],
            |r| r.get(0),
        )?;
        Ok(decode_operations(&ops)
            .map_err(Error::from)?
            .iter()
            .find(|op| op.id == id)
            .map(Operation::digest))
    }
}
