//! Opening, creating and re-keying database files, and the [`Database`] handle.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blazedb_format::NodeId;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use uuid::Uuid;

use crate::error::{Error, OpenError, Result};
use crate::replication::Replication;
use crate::schema;
use crate::watch::Watchers;

/// How hard a commit works to survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a crash of the process (the commit is in the operating system when `commit`
    /// returns); a power loss may lose the last commits but never corrupts the file.
    /// SQLite `synchronous=NORMAL` in WAL mode.
    #[default]
    Process,
    /// Also survives a power loss: every commit waits for fsync. SQLite `synchronous=FULL`.
    PowerLoss,
}

/// How to open or create a database file.
#[derive(Clone, Default)]
pub struct OpenOptions {
    password: Option<String>,
    durability: Durability,
}

impl fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("OpenOptions")
            .field("encrypted", &self.password.is_some())
            .field("durability", &self.durability)
            .finish()
    }
}

impl OpenOptions {
    /// Options for an unencrypted database; add [`OpenOptions::password`] to encrypt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encrypt with SQLCipher under this password (PBKDF2-HMAC-SHA512, AES-256, per-page HMAC).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Creates a new database file. Fails if the file exists.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<Database> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::Open(OpenError::AlreadyExists { path: path.into() }));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = match self.keyed_connection(path, flags) {
            Ok(conn) => conn,
            Err(e) => {
                // Nothing was written yet: leave no empty file that a retry would call existing.
                if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        schema::create(&conn, NodeId::random())?;
        self.finish(conn, Some(path.into()))
    }

    /// Opens the database file at `path`, or creates it when there is none. An existing file
    /// is opened exactly as [`OpenOptions::open`] does (a wrong password is an error; nothing
    /// is overwritten).
    pub fn open_or_create(&self, path: impl AsRef<Path>) -> Result<Database> {
        let path = path.as_ref();
        match self.create(path) {
            // Created by someone else in the meantime, or there already: open it.
            Err(Error::Open(OpenError::AlreadyExists { .. })) => self.open(path),
            other => other,
        }
    }

    /// Opens an existing database file.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Database> {
        let path = path.as_ref();
        self.precheck(path)?;
        let conn = self.keyed_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        if app_id != schema::APPLICATION_ID {
            return Err(Error::Open(OpenError::NotADatabase {
                path: path.into(),
                reason: "it is an SQLite database of another application".into(),
            }));
        }
        let mut version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 2 {
            schema::upgrade_from_2(&conn)?;
            version = 3;
        }
        if version == 3 {
            schema::upgrade_from_3(&conn)?;
            version = 4;
        }
        if version == 4 {
            schema::upgrade_from_4(&conn)?;
            version = 5;
        }
        if version != schema::SCHEMA_VERSION {
            return Err(Error::Open(OpenError::UnsupportedSchema {
                path: path.into(),
                found: version,
                supported: schema::SCHEMA_VERSION,
            }));
        }
        self.finish(conn, Some(path.into()))
    }

    /// Cheap checks that give a precise error before SQLCipher gives a vague one.
    fn precheck(&self, path: &Path) -> Result<()> {
        let not_db = |reason: String| {
            Error::Open(OpenError::NotADatabase {
                path: path.into(),
                reason,
            })
        };
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Open(OpenError::DatabaseMissing {
                    path: path.into(),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(not_db("the file is empty".into()));
        }
        if len < 512 {
            return Err(not_db(format!("the file is only {len} bytes long")));
        }
        let mut header = [0u8; 16];
        file.read_exact(&mut header)?;
        let plain = &header == b"SQLite format 3\0";
        if plain && self.password.is_some() {
            return Err(not_db(
                "it is an unencrypted SQLite file, but a password was given".into(),
            ));
        }
        if !plain && self.password.is_none() {
            return Err(Error::Open(OpenError::WrongPassword { path: path.into() }));
        }
        Ok(())
    }

    /// A connection to `path` with the key applied and checked.
    ///
    /// SQLCipher sets up its codec (allocations only, no file access) inside `PRAGMA key`, and
    /// once, under load in CI, that step failed with its generic "An error occurred with PRAGMA
    /// key" on a brand-new file. A failed attach marks the connection read-only, so each
    /// attempt uses a new connection; a wrong password is not retried (it shows at the first
    /// read, not here).
    fn keyed_connection(&self, path: &Path, flags: OpenFlags) -> Result<Connection> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let conn = Connection::open_with_flags(path, flags)?;
            match self.key(&conn, path) {
                Err(KeyError::Attach(e)) if attempt < ATTEMPTS => {
                    drop((conn, e));
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                    attempt += 1;
                }
                Err(KeyError::Attach(e)) => return Err(Error::Storage(e)),
                Err(KeyError::Other(e)) => return Err(e),
                Ok(()) => return Ok(conn),
            }
        }
    }

    fn key(&self, conn: &Connection, path: &Path) -> std::result::Result<(), KeyError> {
        // SQLCipher logs failed decryptions to stderr by default; errors reach the caller as
        // typed values instead.
        conn.execute_batch("PRAGMA cipher_log_level = NONE")
            .map_err(|e| KeyError::Other(e.into()))?;
        if let Some(password) = &self.password {
            // Test hook: an empty key makes SQLCipher's attach fail with the error seen in CI.
            #[cfg(test)]
            let password = match ATTACH_FAILURES.with(|n| n.replace(n.get().saturating_sub(1))) {
                0 => password.as_str(),
                _ => "",
            };
            conn.pragma_update(None, "key", password)
                .map_err(KeyError::Attach)?;
            // Page HMAC with SHA-256 (hardware-accelerated on current CPUs) instead of SQLCipher
            // 4's default SHA-512: a quarter less commit latency, same integrity guarantee. Not
            // stored in the file, so every open must say it (docs/format.md, "Storage").
            conn.execute_batch("PRAGMA cipher_hmac_algorithm = HMAC_SHA256")
                .map_err(|e| KeyError::Other(e.into()))?;
        }
        // The first read decrypts page 1: this is where a wrong key shows.
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
                Err(KeyError::Other(match self.password {
                    Some(_) => Error::Open(OpenError::WrongPassword { path: path.into() }),
                    None => Error::Open(OpenError::NotADatabase {
                        path: path.into(),
                        reason: "the SQLite header is damaged".into(),
                    }),
                }))
            }
            Err(e) => Err(KeyError::Other(classify(e))),
        }
    }

    fn finish(&self, conn: Connection, path: Option<PathBuf>) -> Result<Database> {
        conn.busy_timeout(Duration::from_secs(10))?;
        if path.is_some() {
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Corrupt(format!(
                    "cannot switch to WAL mode (got {mode})"
                )));
            }
        }
        let sync = match self.durability {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768; \
             PRAGMA wal_autocheckpoint = 10000;"
        ))?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut core = Core {
            conn,
            node: NodeId(Uuid::nil()),
            lamport: 0,
            seq: 0,
            gap_prefix: None,
            data_version: -1,
            collections: HashMap::new(),
            ids: crate::ids::IdGenerator::default(),
            lamport_mirror: Arc::new(AtomicU64::new(0)),
        };
        core.refresh()?;
        Ok(Database {
            inner: Arc::new(Inner {
                node: core.node,
                lamport: core.lamport_mirror.clone(),
                core: Mutex::new(core),
                watchers: Arc::new(Watchers::default()),
                path,
                encrypted: self.password.is_some(),
            }),
        })
    }
}

impl Replication<'_> {
    /// The Lamport clock as of the last commit.
    pub fn lamport(&self) -> u64 {
        self.db.inner.lamport.load(Ordering::Acquire)
    }
}

#[cfg(test)]
thread_local! {
    /// Test hook: how many of the next attach attempts on this thread fail.
    static ATTACH_FAILURES: Cell<u32> = const { Cell::new(0) };
}

/// Why keying a connection failed: SQLCipher could not attach its codec (worth one more try on
/// a new connection), or anything else (final).
enum KeyError {
    Attach(rusqlite::Error),
    Other(Error),
}

/// Maps SQLite's corruption codes to [`Error::Corrupt`]; everything else stays a storage error.
pub(crate) fn classify(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            Error::Corrupt(e.to_string())
        }
        _ => Error::Storage(e),
    }
}

/// A collection as the storage layer knows it.
#[derive(Debug, Clone)]
pub(crate) struct CollInfo {
    pub id: i64,
    pub indexes: Vec<IndexInfo>,
}

#[derive(Debug, Clone)]
pub(crate) struct IndexInfo {
    pub id: i64,
    pub field: String,
}

/// The connection and the state cached from it. Only reachable through the lock.
pub(crate) struct Core {
    pub conn: Connection,
    pub node: NodeId,
    pub lamport: u64,
    pub seq: u64,
    /// `Some(p)` once an operation of our own node id arrived from elsewhere with a sequence
    /// number we had not issued (this file was restored from a backup): our operations up to `p`
    /// are in the op log, and every later one of ours is recorded in `merged_ops`.
    pub gap_prefix: Option<u64>,
    /// `PRAGMA data_version` when the caches were filled: another connection's commit changes
    /// it, and then the caches are reloaded.
    data_version: i64,
    collections: HashMap<String, Arc<CollInfo>>,
    /// Generator of new record ids.
    pub ids: crate::ids::IdGenerator,
    /// Where the committed Lamport clock is published (see `Replication::lamport`).
    pub lamport_mirror: Arc<AtomicU64>,
}

impl Core {
    /// Reloads counters and forgets cached collections if another connection wrote the file.
    pub fn refresh(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version {
            return Ok(());
        }
        let node: Vec<u8> =
            self.conn
                .query_row("SELECT node_id FROM node WHERE singleton = 1", [], |r| {
                    r.get(0)
                })?;
        let counter = |name: &str| -> Result<Option<i64>> {
            Ok(self
                .conn
                .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?)
        };
        let lamport = counter("lamport")?.unwrap_or(0);
        let seq = counter("seq")?.unwrap_or(0);
        self.gap_prefix = counter("gap_prefix")?.map(|p| p.max(0) as u64);
        self.lamport_mirror
            .store(lamport.max(0) as u64, Ordering::Release);
        let node = Uuid::from_slice(&node)
            .map_err(|_| Error::Corrupt("node id is not 16 bytes".into()))?;
        self.node = NodeId(node);
        self.lamport =
            u64::try_from(lamport).map_err(|_| Error::Corrupt("negative clock".into()))?;
        self.seq = u64::try_from(seq).map_err(|_| Error::Corrupt("negative sequence".into()))?;
        self.collections.clear();
        self.data_version = version;
        Ok(())
    }

    /// Forgets cached schema (after a rollback that may have undone a new collection or index).
    pub fn forget_schema(&mut self) {
        self.collections.clear();
        self.data_version = -1;
    }

    /// Looks a collection up, creating it when `create` is set.
    pub fn collection(&mut self, name: &str, create: bool) -> Result<Option<Arc<CollInfo>>> {
        if let Some(info) = self.collections.get(name) {
            return Ok(Some(info.clone()));
        }
        let id: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM collections WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let id = match id {
            Some(id) => id,
            None if create => {
                crate::validate::collection_name(name)?;
                self.conn
                    .prepare_cached("INSERT INTO collections (name) VALUES (?1)")?
                    .execute([name])?;
                self.conn.last_insert_rowid()
            }
            None => return Ok(None),
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, field FROM indexes WHERE coll = ?1 ORDER BY id")?;
        let indexes = stmt
            .query_map([id], |r| {
                Ok(IndexInfo {
                    id: r.get(0)?,
                    field: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        let info = Arc::new(CollInfo { id, indexes });
        self.collections.insert(name.to_owned(), info.clone());
        Ok(Some(info))
    }
}

thread_local! {
    /// The database (by `Inner` address) whose transaction is open on this thread, or 0.
    pub(crate) static OPEN_TRANSACTION: Cell<usize> = const { Cell::new(0) };
}

pub(crate) struct Inner {
    pub core: Mutex<Core>,
    pub node: NodeId,
    /// Mirror of the committed Lamport clock, readable without the lock.
    pub lamport: Arc<AtomicU64>,
    pub watchers: Arc<Watchers>,
    pub path: Option<PathBuf>,
    pub encrypted: bool,
}

/// An open BlazeDB database. Cheap to clone; clones share one connection and one lock.
///
/// Every write (insert, update, delete, `apply_remote`) runs in one SQLite transaction
/// together with its op-log entry and Lamport tick, so a change without its operation (or the
/// reverse) cannot be committed.
#[derive(Clone)]
pub struct Database {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Creates an encrypted database at `path` (the file must not exist).
    pub fn create(path: impl AsRef<Path>, password: &str) -> Result<Database> {
        OpenOptions::new().password(password).create(path)
    }

    /// Opens an encrypted database.
    pub fn open(path: impl AsRef<Path>, password: &str) -> Result<Database> {
        OpenOptions::new().password(password).open(path)
    }

    /// Opens the encrypted database at `path`, or creates it when there is none
    /// ([`OpenOptions::open_or_create`]).
    pub fn open_or_create(path: impl AsRef<Path>, password: &str) -> Result<Database> {
        OpenOptions::new().password(password).open_or_create(path)
    }

    /// A private, unencrypted database in memory (tests, caches, scratch space).
    pub fn in_memory() -> Result<Database> {
        let conn = Connection::open_in_memory()?;
        schema::create(&conn, NodeId::random())?;
        OpenOptions::new().finish(conn, None)
    }

    /// The file this database lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// This replica's node id (fixed when the database is created).
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Takes the database lock. Refuses (instead of deadlocking) when this thread is inside a
    /// transaction of this database: the transaction handle must be used there.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Core>> {
        if OPEN_TRANSACTION.with(Cell::get) == self.address() {
            return Err(Error::TransactionInProgress);
        }
        Ok(self
            .inner
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Locks and refreshes the caches for a read.
    pub(crate) fn read(&self) -> Result<MutexGuard<'_, Core>> {
        let mut core = self.lock()?;
        core.refresh()?;
        Ok(core)
    }

    /// Changes the password (SQLCipher re-key). The database must be encrypted already.
    pub fn change_password(&self, new_password: &str) -> Result<()> {
        if !self.inner.encrypted {
            // SQLCipher cannot encrypt a plaintext file in place; export to a new encrypted
            // database instead.
            return Err(Error::InvalidQuery(
                "this database is not encrypted, so it has no password to change".into(),
            ));
        }
        if new_password.is_empty() {
            return Err(Error::InvalidQuery("the new password is empty".into()));
        }
        let core = self.lock()?;
        // Re-keying rewrites every page; do it in rollback-journal mode so no WAL frames encrypted
        // under the old key survive, then return to WAL.
        core.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let _: String = core
            .conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        let rekeyed = core.conn.pragma_update(None, "rekey", new_password);
        let _: String = core
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        rekeyed?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_failed_codec_attach_is_retried_on_a_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retry.blazedb");
        ATTACH_FAILURES.with(|n| n.set(2));
        let db = OpenOptions::new().password("pw").create(&path).unwrap();
        drop(db);
        ATTACH_FAILURES.with(|n| n.set(1));
        OpenOptions::new().password("pw").open(&path).unwrap();
    }

    #[test]
    fn an_attach_that_keeps_failing_is_a_storage_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never.blazedb");
        ATTACH_FAILURES.with(|n| n.set(3));
        let err = OpenOptions::new()
            .password("pw")
            .create(&path)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        assert!(!path.exists());
        // With the cause gone, the same path can be created.
        OpenOptions::new().password("pw").create(&path).unwrap();
    }

    #[test]
    fn a_wrong_password_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.blazedb");
        drop(OpenOptions::new().password("right").create(&path).unwrap());
        let err = OpenOptions::new()
            .password("wrong")
            .open(&path)
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::Open(OpenError::WrongPassword { .. })),
            "{err}"
        );
    }
}
