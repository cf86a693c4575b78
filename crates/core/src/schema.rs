//! The SQLite schema of a BlazeDB file. See docs/format.md ("Storage") for the table layout.
//!
//! Everything a single-record commit must touch is kept to four pages: the record, its index
//! entry, its op-log entry and the `counters` row set (Lamport clock, op sequence, live counts
//! all live in one small B-tree). Each page costs an encryption and an HMAC per commit. (The
//! digests that find copied files cost no page of their own for our own operations: see
//! `oplog.own_seq`.)

use rusqlite::{Connection, params};

use crate::error::Result;
use blazedb_format::NodeId;

/// `PRAGMA application_id` of every BlazeDB file ("BlzD").
pub const APPLICATION_ID: i64 = 0x426C_7A44;
/// `PRAGMA user_version`: the storage schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 5;

const DDL: &str = "
CREATE TABLE node (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    node_id   BLOB NOT NULL
);
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE collections (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE records (
    coll  INTEGER NOT NULL,
    id    BLOB NOT NULL,
    live  INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (coll, id)
) WITHOUT ROWID;
CREATE TABLE indexes (
    id    INTEGER PRIMARY KEY,
    coll  INTEGER NOT NULL,
    field TEXT NOT NULL,
    UNIQUE (coll, field)
);
CREATE TABLE index_entries (
    idx INTEGER NOT NULL,
    key BLOB NOT NULL,
    id  BLOB NOT NULL,
    PRIMARY KEY (idx, key, id)
) WITHOUT ROWID;
CREATE TABLE oplog (
    seq     INTEGER PRIMARY KEY,
    ops     BLOB NOT NULL,
    total   INTEGER NOT NULL,
    own_seq INTEGER
);
CREATE TABLE merged_ops (
    origin     BLOB NOT NULL,
    origin_seq INTEGER NOT NULL,
    PRIMARY KEY (origin, origin_seq)
) WITHOUT ROWID;
CREATE TABLE origins (
    origin       BLOB PRIMARY KEY,
    max_seq      INTEGER NOT NULL,
    recent_first INTEGER,
    recent       BLOB
) WITHOUT ROWID;
CREATE TABLE peers (
    node   BLOB PRIMARY KEY,
    cursor INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE local_settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('lamport', 0), ('seq', 0), ('oplog_ops', 0);
";

/// The digests of other nodes' operations merged here, per run of consecutive sequence
/// numbers of one origin in one transaction (schema version 4). Our own operations need no
/// table: they are found in the op log by `oplog.own_seq`.
const OP_DIGESTS: &str = "
CREATE TABLE op_digests (
    origin    BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    digests   BLOB NOT NULL,
    PRIMARY KEY (origin, first_seq)
) WITHOUT ROWID;
";

/// Operations a server refused, kept for the application to read and clear (schema version
/// 5): one row per operation, with the server's code and reason and when it arrived.
const REJECTIONS: &str = "
CREATE TABLE IF NOT EXISTS rejections (
    origin BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    code   INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at     INTEGER NOT NULL,
    op     BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
";

/// Upgrades a version-4 file to version 5 in one transaction: adds `rejections`.
pub fn upgrade_from_4(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {REJECTIONS} PRAGMA user_version = 5; COMMIT;"
    ))?;
    Ok(())
}

/// Upgrades a version-2 file to version 3 in one transaction: adds `local_settings`.
pub fn upgrade_from_2(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE local_settings (
             name  TEXT PRIMARY KEY,
             value BLOB NOT NULL
         ) WITHOUT ROWID;
         PRAGMA user_version = 3;
         COMMIT;",
    )?;
    Ok(())
}

/// Upgrades a version-3 file to version 4 in one transaction: adds `op_digests`,
/// `oplog.own_seq` and the newest digests in `origins`. Operations written before have no digest, and are never compared (see
/// `Replication::op_digest`).
pub fn upgrade_from_3(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {OP_DIGESTS} ALTER TABLE oplog ADD COLUMN own_seq INTEGER;
         ALTER TABLE origins ADD COLUMN recent_first INTEGER;
         ALTER TABLE origins ADD COLUMN recent BLOB;
         PRAGMA user_version = 4; COMMIT;"
    ))?;
    Ok(())
}

/// Creates the schema in an empty database.
pub fn create(conn: &Connection, node: NodeId) -> Result<()> {
    conn.execute_batch("BEGIN")?;
    conn.execute_batch(DDL)?;
    conn.execute_batch(OP_DIGESTS)?;
    conn.execute_batch(REJECTIONS)?;
    conn.execute(
        "INSERT INTO node (singleton, node_id) VALUES (1, ?1)",
        params![node.as_bytes().as_slice()],
    )?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Name of the `counters` row holding the number of visible records of a collection.
pub fn live_counter(collection_id: i64) -> String {
    format!("live/{collection_id}")
}
