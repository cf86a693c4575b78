//! BlazeDB core: an embedded, encrypted document store with an operation log and CRDT merge.
//!
//! A [`Database`] is one SQLCipher file (or an in-memory database) holding named collections of
//! [`Record`]s. Every write appends an [`Operation`] to the op log in the same transaction and
//! ticks a Lamport clock; [`Replication::apply_remote`](crate::Replication::apply_remote) merges operations from other replicas
//! under per-field last-writer-wins rules (see `docs/merge.md`), which is what the sync layer
//! builds on.
//!
//! ```
//! use blazedb_core::{Database, Filter, Value, fields};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("bugs.blazedb");
//! let db = Database::open_or_create(&path, "correct horse battery staple")?;
//! db.ensure_index("bugs", "status")?; // at every start: creates it the first time only
//! let id = db.insert("bugs", fields! { "title" => "Crash on launch", "status" => "open" })?;
//! db.update("bugs", id, fields! { "status" => "closed" })?;
//! let closed = db.query("bugs").filter(Filter::eq("status", "closed")).run()?;
//! assert_eq!(closed.len(), 1);
//! let title: &str = closed[0].get("title").and_then(Value::as_str).unwrap_or_default();
//! assert_eq!(title, "Crash on launch");
//! drop(db);
//!
//! // The file is encrypted: the wrong password is refused with a typed error.
//! assert!(matches!(
//!     Database::open(&path, "wrong"),
//!     Err(blazedb_core::Error::Open(blazedb_core::OpenError::WrongPassword { .. }))
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod db;
mod digests;
mod error;
mod identity;
mod ids;
mod join;
mod query;
mod read;
mod rejections;
mod replication;
mod schema;
mod snapshot;
mod txn;
mod validate;
mod watch;

pub use blazedb_format::{
    self as format, Date, Fields, NodeId, OpId, OpKind, Operation, PurgeReason, Record,
    RecordState, RejectCode, SnapshotRecord, Stamp, Value, ValueTypeError, VersionVector, fields,
};
pub use db::{Database, Durability, OpenOptions};
pub use error::{Error, OpenError, Result};
pub use identity::Reidentified;
pub use join::{Join, JoinKind, Joined};
pub use query::{Direction, Filter, KeyRange, Plan, Query};
pub use read::{CollectionStats, Stats};
pub use rejections::Rejection;
pub use replication::{Replication, TransactionReplication};
pub use snapshot::{SnapshotInfo, SnapshotKey};
pub use txn::{
    ApplyReport, MAX_RECORD_BYTES, OPLOG_ENTRY_MAX_OPS, Refused, SnapshotReport, Transaction,
};
pub use uuid::Uuid;
pub use validate::MAX_NAME_BYTES;
pub use watch::{Change, ChangeKind, ChangeOrigin, Commit, CommitListener, Subscription};

impl Database {
    /// Wakes the returned subscription on every commit that changes `collection`, local or
    /// merged from another replica. No polling: `recv` blocks until a commit arrives.
    pub fn subscribe(&self, collection: &str) -> Subscription {
        self.inner.watchers.subscribe(Some(collection.to_owned()))
    }

    /// Like [`Database::subscribe`] for every collection.
    pub fn subscribe_all(&self) -> Subscription {
        self.inner.watchers.subscribe(None)
    }

    /// Calls `f` after every commit that changed something or wrote to the op log (its
    /// `changes` may then be empty), on the committing thread, after the database lock is
    /// released. Keep `f` short (e.g. wake a task). Dropping the returned
    /// listener unregisters it.
    pub fn on_commit(&self, f: impl Fn(&Commit) + Send + Sync + 'static) -> CommitListener {
        self.inner.watchers.on_commit(std::sync::Arc::new(f))
    }
}
