//! Errors of the storage layer.

use std::path::PathBuf;

use blazedb_format::OpId;
use uuid::Uuid;

/// Everything that can go wrong in `blazedb-core`.
///
/// The variants separate a file that cannot be opened (`Open`, with an [`OpenError`] inside:
/// wrong password, not a database, missing, exists, unsupported schema), the caller's
/// mistakes (`RecordNotFound`, `InvalidName`, …), a damaged file (`Corrupt`), invalid operations or snapshots
/// from another replica (`InvalidOperation`, `InvalidSnapshot`), a copied database file met
/// through its operations (`CopiedDatabase`), a reader that fell behind a
/// compacted op log (`OplogCompacted`) and internal failures (`Storage`, `Io`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or created (see [`OpenError`]).
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error("no record {id} in collection {collection:?}")]
    RecordNotFound { collection: String, id: Uuid },
    #[error("record {id} already exists in collection {collection:?}")]
    RecordExists { collection: String, id: Uuid },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid value in field {field:?}: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error("record is {size} bytes, more than the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("an index on {collection}.{field} already exists")]
    IndexExists { collection: String, field: String },
    #[error("there is no index on {collection}.{field}")]
    IndexMissing { collection: String, field: String },
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid operation {op} from another replica: {reason}")]
    InvalidOperation { op: String, reason: String },
    #[error("invalid snapshot record {record} from another replica: {reason}")]
    InvalidSnapshot { record: String, reason: String },
    #[error(
        "the op log before position {start} was compacted away; position {after} needs a snapshot"
    )]
    OplogCompacted { after: u64, start: u64 },
    #[error(
        "a transaction of this database is open on this thread: use its handle (`tx`) inside the \
         closure, not the database"
    )]
    TransactionInProgress,
    #[error(
        "operation {op} differs from the operation with the same id here: two databases share \
         node id {} (one file is a copy of the other); give the copy a new identity with \
         `blazedb reidentify FILE`",
        .op.origin
    )]
    CopiedDatabase { op: OpId },
    #[error("{0}")]
    HandlesOpen(String),
    #[error("the transaction was rolled back because a write in it failed: {0}")]
    TransactionAborted(String),
    #[error("storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a database file could not be opened or created. Each names the file: the caller
/// gave the wrong password or path, or the file is not (or not yet) a BlazeDB database
/// this build reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("wrong password for {path}, or the file is not a BlazeDB database")]
    WrongPassword { path: PathBuf },
    #[error("{path} is not a BlazeDB database: {reason}")]
    NotADatabase { path: PathBuf, reason: String },
    #[error("{path} already exists; open it instead of creating it")]
    AlreadyExists { path: PathBuf },
    #[error("{path} does not exist; create it first")]
    DatabaseMissing { path: PathBuf },
    #[error("{path} uses storage schema version {found}, this build reads version {supported}")]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<blazedb_format::DecodeError> for Error {
    fn from(e: blazedb_format::DecodeError) -> Self {
        Error::Corrupt(format!("stored data does not decode: {e}"))
    }
}

impl From<rusqlite::types::FromSqlError> for Error {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        Error::Corrupt(format!("a stored column has an unexpected type: {e}"))
    }
}
