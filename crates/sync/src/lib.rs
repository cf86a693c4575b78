//! BlazeDB sync: keeps databases in step, in one process, across processes on one machine
//! and (with the `remote` feature, on by default) through a `blazedb-server`.
//!
//! * One [`SyncEngine`] per database. It wakes when the database commits (no polling),
//!   streams the op log to each peer that pulled it, applies what peers send through the
//!   core's merge, and stores its cursor into each peer's log in the same transaction as the
//!   operations, so a restarted process resumes exactly where it stopped: nothing lost,
//!   nothing applied twice.
//! * A [`Relay`] is the only thing the engine knows about transport: [`InMemoryRelay`] for
//!   databases in one process, [`UnixRelay`] for two processes on one machine.
//! * Version vectors keep an operation that reaches a node by two paths from being applied
//!   twice, and keep forwarding (chains, rings, meshes) from looping.
//! * [`Topology`] registers the databases of a process by name, connects them in any shape
//!   and mode, and draws the result ([`Graph`], [`Graph::to_dot`]).
//!
//! The engine runs on a thread of its own rather than on an async runtime: SQLite calls
//! block, and a thread keeps in-process sync to two channel hops. Async transports plug in
//! through the non-blocking [`Relay::send`] and [`Inbox::deliver`].
//!
//! ```
//! use std::time::Duration;
//! use blazedb_core::{Database, fields};
//! use blazedb_sync::{Mode, Topology};
//!
//! let bugs = Database::in_memory()?;
//! let users = Database::in_memory()?;
//! let mut topology = Topology::new();
//! let bugs_node = topology.register(&bugs, "bugs")?;
//! let users_node = topology.register(&users, "users")?;
//! topology.connect_local(bugs_node, users_node, Mode::Bidirectional)?;
//!
//! let ada = users.insert("users", fields! { "name" => "Ada" })?;
//! bugs.insert("bugs", fields! { "title" => "Crash on launch", "authorId" => ada })?;
//! topology.wait_idle(Duration::from_secs(10))?;
//!
//! // Both databases now hold both collections; join bugs with their authors.
//! let rows = bugs.query("bugs").join(&bugs, "users", "authorId", "id").run()?;
//! assert_eq!(rows.len(), 1);
//! assert_eq!(users.count("bugs")?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod e2e;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod relay;
#[cfg(feature = "remote")]
pub mod remote;
mod topology;
mod unix;

pub use blazedb_access::{PolicyError, ReadScope, SyncPolicy, WriteScope};
pub use blazedb_protocol::{DatabaseName, InvalidDatabaseName};
pub use engine::{
    ConnectOptions, ConnectionStatus, ECHO_FLUSH_AFTER, EngineOptions, MAX_BATCH_OPS, Mode,
    PeerTrust, SNAPSHOT_PART_BYTES, SNAPSHOT_PART_RECORDS, SyncEngine, WINDOW,
};
pub use error::{Result, SyncError};
pub use relay::{ConnectionId, InMemoryRelay, Inbox, Relay};
pub use topology::{Graph, GraphEdge, GraphNode, Topology};
pub use unix::{UnixRelay, UnixRelayListener};
