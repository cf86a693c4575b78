//! Errors of the sync layer.

use blazedb_protocol::ProtocolError;

/// A protocol error's text, saying so when the peer is to blame.
pub(crate) fn protocol_text(error: &ProtocolError) -> String {
    if error.is_malformed_input() {
        format!("the peer broke the protocol: {error}")
    } else {
        error.to_string()
    }
}

/// Everything that can go wrong while syncing. The caller's mistakes (`UnknownNode`,
/// `LocalOnly`, …), the peer's misbehaviour (`Protocol`, `PeerClosed`) and our own failures
/// (`Database`, `Io`, `EngineStopped`) are different variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The local database failed (storage error, corrupt file…).
    #[error("database error: {0}")]
    Database(#[from] blazedb_core::Error),
    /// The protocol failed: the peer sent bytes or messages that break it, the two sides
    /// share no version, or this side could not send (see [`ProtocolError`]'s groups).
    #[error("{}", protocol_text(.0))]
    Protocol(#[from] ProtocolError),
    /// The peer closed the connection, with its reason.
    #[error("the peer closed the connection: {0}")]
    PeerClosed(String),
    /// A socket or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The sync engine has shut down (or its thread died); nothing more can be done with it.
    #[error("the sync engine has stopped")]
    EngineStopped,
    /// The relay is closed; messages can no longer be sent through it.
    #[error("the connection is closed")]
    RelayClosed,
    /// No connection with this id (it was disconnected, or never existed).
    #[error("no connection {0}")]
    UnknownConnection(u64),
    /// No node registered under this name or id in the topology.
    #[error("no node {0} in the topology")]
    UnknownNode(String),
    /// A node of this name is already registered.
    #[error("a node named {0:?} is already registered")]
    DuplicateName(String),
    /// The node was registered as local-only: it never syncs.
    #[error("node {0:?} is local-only and never syncs")]
    LocalOnly(String),
    /// The two nodes are already connected (disconnect first, or change the mode).
    #[error("{from:?} and {to:?} are already connected")]
    AlreadyConnected { from: String, to: String },
    /// A node cannot be connected to itself.
    #[error("a node cannot sync with itself ({0:?})")]
    SelfConnection(String),
    /// An invalid argument (a name, a mode string, an option).
    #[error("{0}")]
    InvalidArgument(String),
}

/// Result of the sync layer.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;
