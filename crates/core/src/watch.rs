//! Change notifications: callers are woken when a commit changes a collection they watch,
//! whether the change was made here or merged from another replica.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use blazedb_format::{NodeId, Operation, PurgeReason};
use uuid::Uuid;

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    Inserted,
    Updated,
    Deleted,
    /// Removed from this replica only, because it left what this replica may or wants to
    /// hold (see [`TransactionReplication::purge`](crate::TransactionReplication::purge)).
    /// Not a delete: no tombstone, nothing to sync, and the record still exists elsewhere.
    Purged(PurgeReason),
    /// A server refused an operation this replica wrote on the record; the operation is in
    /// the inbox ([`Replication::rejections`](crate::Replication::rejections)), and the
    /// server's undoing of it arrives as an ordinary change.
    Rejected(blazedb_format::RejectCode),
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOrigin {
    /// Written through this database handle (or another handle on this file).
    Local,
    /// Merged from another replica by `apply_remote`; the node that made the operation.
    Remote(NodeId),
}

/// One record that a commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub collection: String,
    pub id: Uuid,
    pub kind: ChangeKind,
    pub origin: ChangeOrigin,
}

/// Everything one committed transaction changed, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub changes: Vec<Change>,
    /// Op-log position of the first entry the commit wrote (see `Replication::oplog_since`).
    pub first_op_seq: Option<u64>,
    /// Op-log position of the last entry the commit wrote.
    pub last_op_seq: Option<u64>,
    /// The operations the commit wrote to the op log, in log order (entries of up to
    /// `OPLOG_ENTRY_MAX_OPS` from `first_op_seq` to `last_op_seq`). The sync engine sends
    /// them without reading them back. Empty in the per-collection copies subscribers get.
    pub ops: Arc<[Operation]>,
}

type Callback = dyn Fn(&Commit) + Send + Sync;

enum Sink {
    Channel {
        collection: Option<String>,
        sender: Sender<Arc<Commit>>,
    },
    Callback(Arc<Callback>),
}

struct Watcher {
    id: u64,
    sink: Sink,
}

/// The registry of watchers of one database.
#[derive(Default)]
pub(crate) struct Watchers {
    list: Mutex<Vec<Watcher>>,
    next_id: AtomicU64,
}

impl Watchers {
    fn add(&self, sink: Sink) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.list).push(Watcher { id, sink });
        id
    }

    pub(crate) fn subscribe(&self, collection: Option<String>) -> Subscription {
        let (sender, receiver) = mpsc::channel();
        self.add(Sink::Channel { collection, sender });
        Subscription { receiver }
    }

    pub(crate) fn on_commit(self: &Arc<Self>, f: Arc<Callback>) -> CommitListener {
        let id = self.add(Sink::Callback(f));
        CommitListener {
            id,
            watchers: Arc::downgrade(self),
        }
    }

    /// Delivers a commit. Runs after the database lock is released, so a callback may read the
    /// database.
    pub(crate) fn notify(&self, commit: Commit) {
        // A commit can write operations that change nothing visible (an update of a record
        // deleted here, a merged op that lost): subscribers hear nothing, but `on_commit`
        // callbacks still do, because the op log grew (the sync engine forwards it).
        if commit.changes.is_empty() && commit.last_op_seq.is_none() {
            return;
        }
        let quiet = commit.changes.is_empty();
        let commit = Arc::new(commit);
        let mut callbacks = Vec::new();
        {
            let mut list = lock(&self.list);
            list.retain(|w| match &w.sink {
                Sink::Channel { .. } if quiet => true,
                Sink::Channel {
                    collection: None,
                    sender,
                } => sender.send(commit.clone()).is_ok(),
                Sink::Channel {
                    collection: Some(name),
                    sender,
                } => {
                    let changes: Vec<Change> = commit
                        .changes
                        .iter()
                        .filter(|c| &c.collection == name)
                        .cloned()
                        .collect();
                    if changes.is_empty() {
                        // Still detect a dropped receiver without sending anything.
                        return true;
                    }
                    sender
                        .send(Arc::new(Commit {
                            changes,
                            first_op_seq: commit.first_op_seq,
                            last_op_seq: commit.last_op_seq,
                            ops: Arc::from([]),
                        }))
                        .is_ok()
                }
                Sink::Callback(f) => {
                    callbacks.push(f.clone());
                    true
                }
            });
        }
        for f in callbacks {
            f(&commit);
        }
    }

    fn remove(&self, id: u64) {
        lock(&self.list).retain(|w| w.id != id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stream of commits for one collection (or all). Dropping it unsubscribes.
#[must_use = "dropping a subscription unsubscribes at once"]
pub struct Subscription {
    receiver: Receiver<Arc<Commit>>,
}

impl Subscription {
    /// Blocks until the next commit. `None` once the database is closed.
    pub fn recv(&self) -> Option<Arc<Commit>> {
        self.receiver.recv().ok()
    }

    /// Waits at most `timeout`; `None` on timeout or once the database is closed.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Arc<Commit>> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// A commit if one is waiting.
    pub fn try_recv(&self) -> Option<Arc<Commit>> {
        self.receiver.try_recv().ok()
    }
}

/// Keeps an `on_commit` callback registered; dropping it removes the callback.
#[must_use = "dropping the listener removes the callback at once"]
pub struct CommitListener {
    id: u64,
    watchers: Weak<Watchers>,
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        if let Some(w) = self.watchers.upgrade() {
            w.remove(self.id);
        }
    }
}
