//! The inbox of operations a server refused: kept on this file until the application reads
//! and clears them, so a rejected write is never undone silently.

use blazedb_format::{Date, OpId, Operation, RejectCode, decode_operations};
use rusqlite::params;

use crate::error::{Error, Result};
use crate::replication::Replication;

/// An operation of this replica that a server refused, with the server's reason. The server
/// also undoes it everywhere with a newer operation, which arrives like any other.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rejection {
    /// The refused operation, as this replica wrote it.
    pub op: Operation,
    pub code: RejectCode,
    /// The server's explanation (it never names fields hidden from this user).
    pub reason: String,
    /// When this replica learnt of the rejection.
    pub at: Date,
}

impl Replication<'_> {
    /// The rejected operations not cleared yet, oldest first.
    pub fn rejections(&self) -> Result<Vec<Rejection>> {
        let core = self.db.read()?;
        let mut stmt = core.conn.prepare_cached(
            "SELECT code, reason, at, op FROM rejections ORDER BY at, origin, seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (code, reason, at, op) = row?;
            let corrupt = |what: &str| Error::Corrupt(format!("rejection inbox: {what}"));
            let code = u8::try_from(code)
                .ok()
                .and_then(RejectCode::from_code)
                .ok_or_else(|| corrupt("unknown rejection code"))?;
            let op = decode_operations(&op)?
                .into_iter()
                .next()
                .ok_or_else(|| corrupt("an entry without its operation"))?;
            out.push(Rejection {
                op,
                code,
                reason,
                at: Date::from_unix_millis(at),
            });
        }
        Ok(out)
    }

    /// Removes the rejections of these operations from the inbox (the application has
    /// dealt with them). Returns how many were there.
    pub fn clear_rejections(&self, ops: &[OpId]) -> Result<usize> {
        self.db.transaction(|tx| {
            let conn = &tx.core.conn;
            let mut cleared = 0;
            for op in ops {
                cleared += conn
                    .prepare_cached("DELETE FROM rejections WHERE origin = ?1 AND seq = ?2")?
                    .execute(params![op.origin.as_bytes().as_slice(), op.seq as i64])?;
            }
            Ok(cleared)
        })
    }
}
