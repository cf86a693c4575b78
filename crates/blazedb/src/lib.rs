//! BlazeDB: an embedded, encrypted document database that keeps copies in step, in one
//! process, across processes on one machine and through a `blazedb-server`.
//!
//! Add `blazedb` to `Cargo.toml`, with the features you need:
//!
//! | feature   | adds                                                              |
//! |-----------|-------------------------------------------------------------------|
//! | (default) | [`Database`]: collections, queries with indexes, SQLCipher files  |
//! | `sync`    | [`sync`]: in-process and Unix-socket sync, [`sync::Topology`]     |
//! | `remote`  | [`remote`]: sync with a server over `ws://` or `wss://` (tokio)   |
//!
//! Open an encrypted database, index, write, query, and keep it in step with a server (the
//! first run enrolls with a token from the server's administrator; later runs pass `None`):
//!
//! ```
//! # #[cfg(feature = "remote")] {
//! # let dir = tempfile::tempdir().unwrap();
//! # let server = blazedb_testkit::server::start_server(&dir.path().join("server"), "bugs", &["ada"]);
//! # let (url, token) = (server.url(), Some(blazedb_testkit::server::token(&server, "ada")));
//! # let path = dir.path().join("bugs.blazedb");
//! # let run = || -> blazedb::Result<()> {
//! use std::time::Duration;
//! use blazedb::remote::{RemoteNode, RemoteOptions, RemoteSync};
//! use blazedb::{Database, Filter, fields};
//!
//! let db = Database::open_or_create(&path, "correct horse battery staple")?;
//! db.ensure_index("bugs", "status")?;
//! db.insert("bugs", fields! { "title" => "Crash on launch", "status" => "open" })?;
//! let open = db.query("bugs").filter(Filter::eq("status", "open")).run()?;
//! println!("{} open bug(s)", open.len());
//! let options = RemoteOptions::default().maybe_enroll(token);
//! let sync = RemoteSync::connect(&db, RemoteNode::new(url, "bugs"), options)?;
//! sync.wait_synced(Duration::from_secs(10), |_| {})?;
//! # // A second device receives the bug through the server.
//! # let other = Database::in_memory()?;
//! # let token = blazedb_testkit::server::token(&server, "ada");
//! # let options = RemoteOptions::default().enroll(token);
//! # let other_sync = RemoteSync::connect(&other, RemoteNode::new(server.url(), "bugs"), options)?;
//! # other_sync.wait_synced(Duration::from_secs(10), |_| {})?;
//! # assert_eq!(other.count("bugs")?, 1);
//! # Ok(())
//! # };
//! # run().unwrap();
//! # }
//! ```
//!
//! Every fallible call returns this crate's [`Error`] (through `?`), which says which part
//! failed: the database, the sync engine or the connection to a server.

pub use blazedb_core::{Change, Commit, CommitListener, Database, Subscription, Transaction};
pub use blazedb_core::{
    ChangeKind, ChangeOrigin, CollectionStats, Date, Direction, Durability, Fields, Filter, Join,
    JoinKind, Joined, KeyRange, OpenError, OpenOptions, Plan, PurgeReason, Query, Record,
    Reidentified, RejectCode, Stats, Uuid, Value, ValueTypeError, fields,
};
/// The replication side of a database and a transaction (op log, cursors, snapshots), for
/// tools and custom transports: [`Database::replication`].
pub use blazedb_core::{Replication, TransactionReplication};

/// The database's own errors (wrong password, missing file, bad record, storage failure).
pub use blazedb_core::Error as DatabaseError;

/// Sync between databases in one process and across processes on one machine.
#[cfg(feature = "sync")]
pub mod sync {
    pub use blazedb_sync::{
        ConnectOptions, ConnectionId, ConnectionStatus, DatabaseName, EngineOptions, Graph,
        GraphEdge, GraphNode, InMemoryRelay, Inbox, Mode, PeerTrust, PolicyError, ReadScope, Relay,
        SyncEngine, SyncError, SyncPolicy, Topology, UnixRelay, UnixRelayListener, WriteScope,
    };
}

/// Sync with a `blazedb-server` over `ws://` or `wss://`, reconnecting by itself.
#[cfg(feature = "remote")]
pub mod remote {
    pub use blazedb_sync::remote::{
        RemoteError, RemoteNode, RemoteOptions, RemoteState, RemoteStatus, RemoteSync,
    };
    pub use blazedb_sync::{PolicyError, SyncPolicy};
}

/// Any BlazeDB error: which part failed, with that part's own error inside.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed or refused the call.
    #[error(transparent)]
    Database(#[from] blazedb_core::Error),
    /// Sync between databases failed.
    #[cfg(feature = "sync")]
    #[error(transparent)]
    Sync(#[from] blazedb_sync::SyncError),
    /// Sync with a server failed.
    #[cfg(feature = "remote")]
    #[error(transparent)]
    Remote(#[from] blazedb_sync::remote::RemoteError),
}

/// Result of any BlazeDB call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
