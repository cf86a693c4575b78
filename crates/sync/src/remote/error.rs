//! [`RemoteError`]: what can go wrong syncing with a server.

use blazedb_protocol::{CloseCode, ProtocolError};

use crate::error::{SyncError, protocol_text};

/// Why a connection to (or from) a remote node failed. The caller's mistakes (`InvalidUrl`,
/// `NotEnrolled`, `InvalidOption`), what the server refused (`HttpRefused`, `Refused`), the
/// peer's misbehaviour or an attack (`Protocol`, `ServerKeyMismatch`, `WebSocket`), the
/// network (`Connect`, `Timeout`, `Closed`) and our own failures (`Database`, `Sync`) are
/// different variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The server URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An option cannot be used (a CA file that does not load, …).
    #[error("invalid sync option: {0}")]
    InvalidOption(String),
    /// This database has no pinned key for the server and no enrollment token was given.
    #[error(
        "this database is not enrolled with {server}: pass an enrollment token (from \
         `blazedb-server admin token create`)"
    )]
    NotEnrolled { server: String },
    /// The TCP connection failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS with {address} failed: {reason}")]
    Tls { address: String, reason: String },
    /// The server answered the WebSocket upgrade with an HTTP error (unknown database,
    /// connection limit).
    #[error("the server refused the connection: HTTP {status}: {body}")]
    HttpRefused { status: u16, body: String },
    /// The WebSocket failed (broken connection, a text message, a message too large).
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The server's static key is not the one this database pinned (or the one in the
    /// enrollment token): a man in the middle, or a server that lost its key.
    #[error(
        "the server's key {got} is not the expected {expected}: refusing to talk to it (a man \
         in the middle, or the server's key changed)"
    )]
    ServerKeyMismatch { expected: String, got: String },
    /// The peer closed the session with a reason during set-up (e.g. an unenrolled key).
    #[error("the peer refused the session ({code}): {reason}")]
    Refused { code: CloseCode, reason: String },
    /// The protocol failed: the peer broke it (handshake, sealed payload, message), the two
    /// sides share no version or suite, or this side failed; [`ProtocolError`] says which.
    #[error("{}", protocol_text(.0))]
    Protocol(#[from] ProtocolError),
    /// This database's stored sync keys (its own key pair, a pinned server key) cannot be
    /// read: the file was altered outside BlazeDB.
    #[error("this database's stored sync keys are damaged: {what}")]
    DamagedKeyStore { what: &'static str },
    /// Set-up took too long.
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),
    /// The connection ended during set-up.
    #[error("the connection closed during {0}")]
    Closed(&'static str),
    /// The local database failed.
    #[error("database error: {0}")]
    Database(#[from] blazedb_core::Error),
    /// Sync gave up for good (see [`RemoteError::is_permanent`]); the text says why.
    #[error("sync failed: {0}")]
    SyncFailed(String),
    /// The sync engine failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl RemoteError {
    /// True when trying again cannot help (until someone changes something): a bad URL or
    /// option, no enrollment, a server key mismatch, an HTTP 400 or 404, or a refusal whose close
    /// code [stops retrying](CloseCode::stops_retrying).
    pub fn is_permanent(&self) -> bool {
        match self {
            RemoteError::InvalidUrl { .. }
            | RemoteError::InvalidOption(_)
            | RemoteError::NotEnrolled { .. }
            | RemoteError::ServerKeyMismatch { .. } => true,
            RemoteError::HttpRefused { status, .. } => *status == 404 || *status == 400,
            RemoteError::Refused { code, .. } => code.stops_retrying(),
            _ => false,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for RemoteError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            WsError::Http(response) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                RemoteError::HttpRefused { status, body }
            }
            other => RemoteError::WebSocket(other.to_string()),
        }
    }
}
