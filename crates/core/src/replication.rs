//! The replication side of a database, apart from what an application uses every day: the op
//! log, the version vector, cursors into peers' logs, snapshots for peers and settings that
//! stay on this file. Sync engines and tools reach it through [`Database::replication`] and
//! [`Transaction::replication`].

use crate::db::Database;
use crate::txn::Transaction;

/// A database's replication side: its op log, version vector, cursors into peers' logs,
/// snapshots for peers and settings that stay on this file, apart from the everyday API.
/// Cheap: a borrowed handle, from [`Database::replication`].
#[derive(Clone, Copy)]
pub struct Replication<'db> {
    pub(crate) db: &'db Database,
}

/// What a sync engine writes inside a transaction: operations merged from a peer, snapshot
/// parts, the cursor into a peer's log, a snapshot's version vector.
pub struct TransactionReplication<'t, 'db> {
    pub(crate) tx: &'t mut Transaction<'db>,
}

impl Database {
    /// The replication side of this database: op log, version vector, peer cursors,
    /// snapshots, local settings (for sync engines and tools).
    pub fn replication(&self) -> Replication<'_> {
        Replication { db: self }
    }
}

impl<'db> Transaction<'db> {
    /// The replication side of this transaction (for sync engines): merging a peer's
    /// operations or snapshot parts and moving the cursor into its log in the same
    /// transaction.
    pub fn replication(&mut self) -> TransactionReplication<'_, 'db> {
        TransactionReplication { tx: self }
    }
}
