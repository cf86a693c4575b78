//! Errors of the server, one enum per area: configuration ([`ConfigError`]), the meta store
//! and administration ([`MetaError`]) and the running server ([`ServerError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration the operator gave (file, flags, environment) that cannot be used. Always
/// the operator's mistake or an unreadable file; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML, has an unknown key or a value of the wrong
    /// type.
    #[error("configuration file {path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// A setting has a value that cannot work.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    /// A TLS certificate or key file cannot be used.
    #[error("TLS {what} {path}: {reason}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The master key (environment variable or key file) cannot be used.
    #[error("master key: {0}")]
    MasterKey(String),
}

/// Problems with the meta store (`server.blazedb`) and the hosted database files: the
/// administrator's mistakes (`UserExists`, `InvalidName`, …), a device's failed enrollment
/// (`Token*`), a wrong master key or damaged file, and storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The master key is not the one the file was created with.
    #[error(
        "the master key does not open {path} (it was created with another key, or it is not a \
         BlazeDB file); give the key it was created with in BLAZEDB_MASTER_KEY or \
         --master-key-file"
    )]
    WrongMasterKey { path: PathBuf },
    /// A name (user, team, role, database) the administrator gave is not acceptable.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// An argument (a duration, a key) the administrator gave is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// A change of a collection's mode or routing fields the server refuses (docs/e2e.md).
    #[error("collection {collection:?}: {reason}")]
    ModeChange { collection: String, reason: String },
    /// A mode set on a database without access rules: e2e collections are declared in them.
    #[error(
        "database {0:?} has no access rules: declare the collection in a rules file \
         ([collections.NAME] mode = \"e2e\", with who may read it under [roles]) and set it \
         with `blazedb-server admin access set`"
    )]
    NoRules(String),
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("no user named {0:?}; add it with `blazedb-server admin user add`")]
    UnknownUser(String),
    #[error("a database named {0:?} already exists")]
    DatabaseExists(String),
    #[error("no database named {0:?}; create it with `blazedb-server admin database create`")]
    UnknownDatabase(String),
    #[error("no enrolled device matches {0:?} (give a fingerprint or a public key in hex)")]
    UnknownDevice(String),
    #[error("{0:?} matches more than one device; give the whole public key in hex")]
    AmbiguousDevice(String),
    /// The enrollment token does not parse.
    #[error("the enrollment token is malformed: {0}")]
    TokenMalformed(String),
    /// The token was made by another server (its server key is not ours).
    #[error("the enrollment token was made for another server")]
    TokenForeign,
    /// The device's handshake used another suite than the token's (a device speaks the suite
    /// of its token).
    #[error(
        "the enrollment token is for {token}, but the device connected with {device}; a device \
         must use the suite of its token"
    )]
    TokenSuiteMismatch {
        token: blazedb_protocol::secure::Suite,
        device: blazedb_protocol::secure::Suite,
    },
    /// No such token (never created, or the secret does not match).
    #[error("the enrollment token is not known to this server")]
    TokenUnknown,
    #[error("the enrollment token has already been used; create a new one")]
    TokenUsed,
    #[error("the enrollment token expired; create a new one")]
    TokenExpired,
    /// An administrator revoked the token before it was used.
    #[error("the enrollment token was revoked; create a new one")]
    TokenRevoked,
    /// No enrollment token has this id (`admin token revoke`).
    #[error("no enrollment token has the id {0:?}; `blazedb-server admin token list` shows them")]
    UnknownToken(String),
    /// A used token cannot be revoked: the device it enrolled is what must go.
    #[error(
        "enrollment token {id} was already used by device {device}; revoke the device instead \
         with `blazedb-server admin device revoke {device}`"
    )]
    TokenAlreadyUsed { id: String, device: String },
    /// The device's key is already enrolled (it needs no token).
    #[error("device {0} is already enrolled")]
    DeviceAlreadyEnrolled(String),
    /// The device's key was revoked; it cannot enroll again with the same key.
    #[error("device {0} was revoked; it must make a new key pair to enroll again")]
    DeviceRevoked(String),
    /// A device said hello with a node id other than the one bound to its key.
    #[error(
        "device {device} is node {bound}, but it said hello as node {claimed}; a device may \
         sync only as the node it first synced as (a database file given a new identity with \
         `blazedb reidentify` needs a new enrollment token)"
    )]
    NodeMismatch {
        device: String,
        bound: String,
        claimed: String,
    },
    /// A device said hello with a node id bound to another device's key: its database file
    /// is a copy of that device's (or it forges that device's identity).
    #[error(
        "node {node} belongs to device {owner}, not to device {device}: this database file is a \
         copy of another device's, and a copy cannot sync as the original; give it a new \
         identity with `blazedb reidentify FILE`"
    )]
    NodeTaken {
        node: String,
        owner: String,
        device: String,
    },
    /// An access rules file the administrator gave is refused (line and reason).
    #[error("invalid access rules: {0}")]
    InvalidRules(#[from] blazedb_access::RulesError),
    /// A stored record does not have the shape this server writes.
    #[error("the meta store is damaged: {0}")]
    Corrupt(String),
    /// The storage layer failed.
    #[error("storage error: {0}")]
    Storage(#[from] blazedb_core::Error),
    /// Creating the data directory or a file in it failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The server's own keys could not be made or loaded.
    #[error("server keys: {0}")]
    Keys(String),
}

/// Why the server could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A hosted database's sync engine failed to start.
    #[error("cannot start syncing database {name:?}: {source}")]
    Engine {
        name: String,
        source: blazedb_sync::SyncError,
    },
    /// The async runtime could not be built, or a server task failed.
    #[error("internal error: {0}")]
    Internal(String),
}
