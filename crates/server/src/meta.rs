//! The meta store: `server.blazedb`, a BlazeDB database (encrypted with the master key like
//! every server file) holding the server's users, enrolled devices, enrollment tokens, the list
//! of hosted databases, and (as local settings) the server's own Noise static key pairs, one
//! per suite.
//!
//! Collections and fields:
//!
//! | collection  | fields |
//! |-------------|--------|
//! | `users`     | `name`, `teams` (array of strings), `role`, `created_at` |
//! | `devices`   | `key` (hex of the Noise static public key), `fingerprint`, `suite`, `user`, `enrolled_at`, `revoked`, `token_id`, `node` (the node id it syncs as, bound at its first `Hello`; absent until then) |
//! | `nodes`     | `device` (fingerprint), `key` (hex): the device a node id is bound to (record id from the node id) |
//! | `tokens`    | `token_id` (hex), `secret_hash` (SHA-256 of the secret, bytes), `user`, `created_at`, `expires_at`, `used`, `used_by`, `revoked` (absent: false), `revoked_at` |
//! | `databases` | `name`, `created_at` |
//! | `access_rules` | `database`, `rules` (the canonical text of its rules, see docs/access.md), `set_at`; no record: the database has no rules |
//!
//! Record ids are derived from the natural key (user name, device key, token id, database
//! name), so uniqueness and "look it up inside a transaction" come from the record id itself.
//! The store may be opened by several processes at once (`admin` commands while the server
//! runs): SQLite WAL and `BEGIN IMMEDIATE` transactions keep them consistent, and the server
//! reads devices per connection, so administrative changes take effect at the next
//! connection.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blazedb_access::{
    CollectionMode, CollectionSettings, ReadScope, Rules, SecurityContext, WriteScope,
};
use blazedb_core::{
    Database, Date, Error as CoreError, NodeId, OpenError, Record, Uuid, Value, fields,
};
use blazedb_protocol::enroll::{EnrollmentToken, TOKEN_ID_LEN};
use blazedb_protocol::secure::{StaticKeys, Suite, fingerprint};
use blazedb_protocol::{DatabaseName, KeyEnvelope, PreviousKey};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::error::MetaError;
use crate::master_key::MasterKey;
use crate::util::{format_date, from_hex, to_hex};

/// The meta store's file name, in the data folder.
pub const META_FILE: &str = "server.blazedb";
/// The folder of hosted databases, in the data folder.
pub const DATABASES_DIR: &str = "databases";
/// The local setting holding the server's static key pair of the default suite (P-256):
/// `[suite id][private key]`. The pair of each other suite is beside it, in
/// `STATIC_KEY_SETTING/<suite id in hex>` (`sync/static-key/02` for X25519).
pub const STATIC_KEY_SETTING: &str = blazedb_sync::remote::STATIC_KEY_SETTING;
/// The role of a user added without one.
pub const DEFAULT_ROLE: &str = "member";
/// Longest lifetime of an enrollment token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// Longest user, team or role name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 128;

const USERS: &str = "users";
const DEVICES: &str = "devices";
const TOKENS: &str = "tokens";
const DATABASES: &str = "databases";
const ACCESS_RULES: &str = "access_rules";
/// Scope keys of end-to-end collections, wrapped to devices (the server cannot open them).
const E2E_ENVELOPES: &str = "e2e_envelopes";
/// Older scope keys sealed under newer ones.
const E2E_PREVIOUS: &str = "e2e_previous";
/// Node id → the device key it is bound to (record id from the node id), so that a node id
/// belongs to one device at most.
const NODES: &str = "nodes";

/// Database names longer than this are stored under a hashed file name, so that the file
/// name and SQLite's `-wal`/`-shm` companions stay within 255 bytes.
const MAX_PLAIN_FILE_STEM: usize = 200;

/// Parsed access rules by database name (`None`: the database has none).
type RulesByDatabase = HashMap<String, Option<Arc<Rules>>>;

/// A user of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    pub name: String,
    pub teams: Vec<String>,
    pub role: String,
}

/// An enrolled device: a Noise static public key that belongs to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// The static public key.
    pub key: Vec<u8>,
    pub suite: Suite,
    pub user: String,
    pub enrolled_at: Date,
    /// A revoked device is refused at its next connection.
    pub revoked: bool,
    /// The node id the device syncs as, bound at its first `Hello` after enrollment.
    pub node: Option<NodeId>,
}

impl Device {
    /// The key's short name (first 8 bytes of its SHA-256, in hex).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// The public key in hex.
    pub fn key_hex(&self) -> String {
        to_hex(&self.key)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}",
            self.fingerprint(),
            self.user,
            format_date(self.enrolled_at),
            if self.revoked { "revoked" } else { "active" },
            self.suite
        )
    }
}

/// Where an enrollment token stands, as [`MetaStore::list_tokens`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenState {
    /// Not used, not revoked, not expired: it can still enroll a device.
    Unused,
    /// It enrolled the device with this fingerprint.
    Used { device: String },
    /// Never used, and past its expiry.
    Expired,
    /// Revoked by an administrator before it was used.
    Revoked,
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenState::Unused => f.write_str("unused"),
            TokenState::Used { device } => write!(f, "used by {device}"),
            TokenState::Expired => f.write_str("expired"),
            TokenState::Revoked => f.write_str("revoked"),
        }
    }
}

/// An enrollment token as an administrator sees it. It has neither the secret (never stored)
/// nor its hash, so a listing cannot help anyone forge a token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The token's id in hex (32 characters), as [`MetaStore::revoke_token`] takes it.
    pub id: String,
    pub user: String,
    pub created: Date,
    pub expires: Date,
    pub state: TokenState,
}

impl fmt::Display for TokenInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}",
            self.id,
            self.user,
            format_date(self.expires),
            self.state
        )
    }
}

/// The server's meta store. Cheap to share (`Arc`); every method is a short SQLite
/// transaction, so call it off the async threads (`spawn_blocking`) on a busy server.
pub struct MetaStore {
    db: Database,
    data_dir: PathBuf,
    password: Zeroizing<String>,
    /// The server's key pair for the default suite.
    keys: StaticKeys,
    /// Its key pairs for the other suites.
    other_keys: Vec<StaticKeys>,
    /// Parsed access rules by database, valid while the store's version is the first field
    /// (a change by any process moves the version, so the cache never serves old rules).
    rules_cache: Mutex<(u64, RulesByDatabase)>,
}

impl fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaStore")
            .field("data_dir", &self.data_dir)
            .field("keys", &self.keys)
            .field("other_keys", &self.other_keys)
            .finish_non_exhaustive()
    }
}

/// Creates `path` (and its parents) readable only by this user.
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Makes a database file and its WAL and shared-memory files readable only by this user
/// (SQLite gives the latter two the main file's mode when it makes them).
pub(crate) fn restrict_database_files(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        for file in [path.as_os_str().to_owned(), wal, shm] {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Maps the storage layer's "wrong password" to the server's "wrong master key".
fn open_error(e: CoreError) -> MetaError {
    match e {
        CoreError::Open(OpenError::WrongPassword { path }) => MetaError::WrongMasterKey { path },
        other => MetaError::Storage(other),
    }
}

/// A record id derived from a natural key: the first 16 bytes of SHA-256(kind, 0, key), as
/// a version-8 UUID.
fn record_id(kind: &str, key: &[u8]) -> Uuid {
    let hash = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(key)
        .finalize();
    let mut bytes = [0u8; 16];
    for (slot, b) in bytes.iter_mut().zip(hash.iter()) {
        *slot = *b;
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

fn corrupt(collection: &str, field: &str) -> MetaError {
    MetaError::Corrupt(format!(
        "a record in {collection:?} has no valid {field:?} field"
    ))
}

fn field_str(record: &Record, collection: &str, field: &str) -> Result<String, MetaError> {
    record
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| corrupt(collection, field))
}

fn field_bool(record: &Record, collection: &str, field: &str) -> Result<bool, MetaError> {
    record
        .get(field)
        .and_then(Value::as_bool)
        .ok_or_else(|| corrupt(collection, field))
}

/// A flag added after the first stores were made: absent reads as false.
fn field_flag(record: &Record, collection: &str, field: &str) -> Result<bool, MetaError> {
    match record.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        _ => Err(corrupt(collection, field)),
    }
}

fn field_date(record: &Record, collection: &str, field: &str) -> Result<Date, MetaError> {
    match record.get(field) {
        Some(Value::Date(d)) => Ok(*d),
        _ => Err(corrupt(collection, field)),
    }
}

fn user_from(record: &Record) -> Result<User, MetaError> {
    let teams = match record.get("teams") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(corrupt(USERS, "teams")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(corrupt(USERS, "teams")),
    };
    Ok(User {
        name: field_str(record, USERS, "name")?,
        teams,
        role: field_str(record, USERS, "role")?,
    })
}

/// A token's public view at time `now`. A used token shows as used even if revoked or expired
/// since, because the device it enrolled is what matters then; a revoked one shows as revoked
/// even once past its expiry, because that was the administrator's decision.
fn token_from(record: &Record, now: Date) -> Result<TokenInfo, MetaError> {
    let expires = field_date(record, TOKENS, "expires_at")?;
    let state = if field_bool(record, TOKENS, "used")? {
        TokenState::Used {
            device: field_str(record, TOKENS, "used_by")?,
        }
    } else if field_flag(record, TOKENS, "revoked")? {
        TokenState::Revoked
    } else if expires <= now {
        TokenState::Expired
    } else {
        TokenState::Unused
    };
    Ok(TokenInfo {
        id: field_str(record, TOKENS, "token_id")?,
        user: field_str(record, TOKENS, "user")?,
        created: field_date(record, TOKENS, "created_at")?,
        expires,
        state,
    })
}

fn suite_from_name(name: &str) -> Option<Suite> {
    Suite::ALL.into_iter().find(|s| s.noise_name() == name)
}

fn device_from(record: &Record) -> Result<Device, MetaError> {
    let key = from_hex(&field_str(record, DEVICES, "key")?).ok_or(corrupt(DEVICES, "key"))?;
    let suite =
        suite_from_name(&field_str(record, DEVICES, "suite")?).ok_or(corrupt(DEVICES, "suite"))?;
    Ok(Device {
        key,
        suite,
        user: field_str(record, DEVICES, "user")?,
        enrolled_at: field_date(record, DEVICES, "enrolled_at")?,
        revoked: field_bool(record, DEVICES, "revoked")?,
        // Devices enrolled before node binding have none until their next `Hello`.
        node: match record.get("node") {
            None | Some(Value::Null) => None,
            Some(Value::Uuid(id)) => Some(NodeId(*id)),
            Some(_) => return Err(corrupt(DEVICES, "node")),
        },
    })
}

/// Characters that show nothing (or reorder what is shown) although they change a name:
/// Unicode's default-ignorable code points (zero-width spaces and joiners, bidirectional
/// marks, embeddings, overrides and isolates, variation selectors, tags, fillers, the byte
/// order mark). A name with one of them could pass for another name.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Team names in NFKC form, duplicates dropped, in the order given.
fn normalize_teams(teams: &[String]) -> Result<Vec<String>, MetaError> {
    let mut unique: Vec<String> = Vec::new();
    for team in teams {
        let team = normalize_label("team name", team)?;
        if !unique.contains(&team) {
            unique.push(team);
        }
    }
    Ok(unique)
}

/// Checks a user, team or role name and returns it in Unicode NFKC form (so that look-alikes
/// such as full-width letters or ligatures are one name): 1 to 128 bytes, no control,
/// invisible or bidirectional-control characters, no space other than U+0020, none at either
/// end. Team names cannot contain a comma either (`user list` separates teams with commas).
pub(crate) fn normalize_label(what: &'static str, name: &str) -> Result<String, MetaError> {
    let bad = |reason| {
        Err(MetaError::InvalidName {
            what,
            // Escaped, so that the error shows what is hidden in the name.
            name: name.escape_debug().to_string(),
            reason,
        })
    };
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if name.chars().any(is_invisible) {
        return bad("it contains invisible or bidirectional-control characters");
    }
    if name.chars().any(|c| c.is_whitespace() && c != ' ') {
        return bad("it contains a space other than U+0020");
    }
    let name: String = name.nfkc().collect();
    // NFKC may turn a character into a control or invisible one (rare, but checked again).
    if name.chars().any(|c| c.is_control() || is_invisible(c)) {
        return bad("it contains control or invisible characters");
    }
    if what == "team name" && name.contains(',') {
        return bad("it contains a comma (teams are listed separated by commas)");
    }
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_USER_NAME_LEN {
        return bad("it is longer than 128 bytes");
    }
    if name.trim() != name {
        return bad("it starts or ends with a space");
    }
    Ok(name)
}

/// Checks a hosted database's name: a valid [`DatabaseName`] (1 to 255 bytes of
/// `A-Z a-z 0-9 . _ -`, not `.` or `..`).
pub fn check_database_name(name: &str) -> Result<(), MetaError> {
    DatabaseName::check(name).map_err(|reason| MetaError::InvalidName {
        what: "database name",
        name: name.to_owned(),
        reason,
    })
}

/// The file name of a hosted database (the name is checked already).
fn database_file_name(name: &str) -> String {
    if name.len() <= MAX_PLAIN_FILE_STEM {
        format!("{name}.blazedb")
    } else {
        let hash = Sha256::digest(name.as_bytes());
        let prefix: String = name.chars().take(64).collect();
        format!("{prefix}-{}.blazedb", to_hex(hash.get(..16).unwrap_or(&[])))
    }
}

fn now_plus(ttl: Duration) -> Date {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Date::from_unix_millis(Date::now().unix_millis().saturating_add(ms))
}

/// Loads the server's static key pairs from the meta store, one per suite, making and storing
/// those it lacks (the same local settings every BlazeDB node keeps its keys in). A store made
/// before the server spoke every suite keeps its key and gains the others. Returns the default
/// suite's pair and the others.
fn load_or_create_keys(db: &Database) -> Result<(StaticKeys, Vec<StaticKeys>), MetaError> {
    let load = |suite| {
        blazedb_sync::remote::node_keys_for(db, suite).map_err(|e| MetaError::Keys(e.to_string()))
    };
    let default = load(Suite::default())?;
    let others = Suite::ALL
        .into_iter()
        .filter(|suite| *suite != Suite::default())
        .map(load)
        .collect::<Result<_, _>>()?;
    Ok((default, others))
}

impl MetaStore {
    /// Opens `<data_dir>/server.blazedb` with the master key, creating the data folder and
    /// the store (with a new server key pair) on first use.
    pub fn open_or_create(data_dir: &Path, key: &MasterKey) -> Result<MetaStore, MetaError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| MetaError::Io { what, path, source }
        };
        create_private_dir(data_dir).map_err(io("cannot create the data folder", data_dir))?;
        let databases = data_dir.join(DATABASES_DIR);
        create_private_dir(&databases)
            .map_err(io("cannot create the databases folder", &databases))?;
        let path = data_dir.join(META_FILE);
        let password = key.password();
        let db = match Database::open(&path, &password) {
            Ok(db) => db,
            Err(CoreError::Open(OpenError::DatabaseMissing { .. })) => {
                match Database::create(&path, &password) {
                    Ok(db) => db,
                    // Another process created it a moment ago.
                    Err(CoreError::Open(OpenError::AlreadyExists { .. })) => {
                        Database::open(&path, &password).map_err(open_error)?
                    }
                    Err(e) => return Err(open_error(e)),
                }
            }
            Err(e) => return Err(open_error(e)),
        };
        restrict_database_files(&path).map_err(io("cannot restrict the permissions of", &path))?;
        let (keys, other_keys) = load_or_create_keys(&db)?;
        Ok(MetaStore {
            db,
            data_dir: data_dir.to_owned(),
            password,
            keys,
            other_keys,
            rules_cache: Mutex::new((u64::MAX, HashMap::new())),
        })
    }

    /// The underlying database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's Noise static key pair for the default suite (P-256).
    pub fn server_keys(&self) -> &StaticKeys {
        &self.keys
    }

    /// The server's Noise static key pair for `suite` (it has one for every suite of
    /// [`Suite::ALL`]).
    pub fn server_keys_for(&self, suite: Suite) -> Option<&StaticKeys> {
        std::iter::once(&self.keys)
            .chain(&self.other_keys)
            .find(|keys| keys.suite() == suite)
    }

    // --- users -------------------------------------------------------------------------

    /// Adds a user. `role` defaults to [`DEFAULT_ROLE`]; duplicate teams are dropped.
    pub fn add_user(
        &self,
        name: &str,
        teams: &[String],
        role: Option<&str>,
    ) -> Result<User, MetaError> {
        let name = normalize_label("user name", name)?;
        let name = name.as_str();
        let role = normalize_label("role", role.unwrap_or(DEFAULT_ROLE))?;
        let role = role.as_str();
        let unique = normalize_teams(teams)?;
        let values: Vec<Value> = unique.iter().map(|t| Value::from(t.as_str())).collect();
        let record = fields! {
            "name" => name,
            "teams" => values,
            "role" => role,
            "created_at" => Date::now(),
        };
        match self
            .db
            .insert_with_id(USERS, record_id(USERS, name.as_bytes()), record)
        {
            Ok(()) => Ok(User {
                name: name.to_owned(),
                teams: unique,
                role: role.to_owned(),
            }),
            Err(CoreError::RecordExists { .. }) => Err(MetaError::UserExists(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// The user named `name` (compared in NFKC form, as stored), if any.
    pub fn user(&self, name: &str) -> Result<Option<User>, MetaError> {
        let name: String = name.nfkc().collect();
        self.db
            .get(USERS, record_id(USERS, name.as_bytes()))?
            .map(|r| user_from(&r))
            .transpose()
    }

    /// Changes a user's teams (when `teams` is given: the new set) and role (when given).
    /// Takes effect for devices at their next connection.
    pub fn update_user(
        &self,
        name: &str,
        teams: Option<&[String]>,
        role: Option<&str>,
    ) -> Result<User, MetaError> {
        let name: String = name.nfkc().collect();
        let mut changes = blazedb_core::Fields::new();
        if let Some(teams) = teams {
            let values: Vec<Value> = normalize_teams(teams)?
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect();
            changes.insert("teams".to_owned(), Value::Array(values));
        }
        if let Some(role) = role {
            changes.insert("role".to_owned(), normalize_label("role", role)?.into());
        }
        let id = record_id(USERS, name.as_bytes());
        let user = self.db.transaction(|tx| {
            let Some(_) = tx.get(USERS, id)? else {
                return Ok(None);
            };
            if !changes.is_empty() {
                tx.update(USERS, id, changes)?;
            }
            tx.get(USERS, id)
        })?;
        match user {
            Some(record) => user_from(&record),
            None => Err(MetaError::UnknownUser(name)),
        }
    }

    /// Every user, by name.
    pub fn list_users(&self) -> Result<Vec<User>, MetaError> {
        let mut users = self
            .db
            .fetch_all(USERS)?
            .iter()
            .map(user_from)
            .collect::<Result<Vec<_>, _>>()?;
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    // --- tokens ------------------------------------------------------------------------

    /// Creates a one-time enrollment token for `user`, valid for `ttl`, for the default suite
    /// (P-256), and returns its text. Only the token's id and the hash of its secret are
    /// stored.
    pub fn create_token(&self, user: &str, ttl: Duration) -> Result<Zeroizing<String>, MetaError> {
        self.create_token_with_suite(user, ttl, Suite::default())
    }

    /// Like [`MetaStore::create_token`], for `suite`: the token carries the server's key of
    /// that suite, and the device that enrolls with it speaks that suite.
    pub fn create_token_with_suite(
        &self,
        user: &str,
        ttl: Duration,
        suite: Suite,
    ) -> Result<Zeroizing<String>, MetaError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(MetaError::InvalidArgument(format!(
                "a token's lifetime must be between 1 second and {} days",
                MAX_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let Some(found) = self.user(user)? else {
            return Err(MetaError::UnknownUser(user.to_owned()));
        };
        let user = found.name.as_str();
        let keys = self
            .server_keys_for(suite)
            .ok_or_else(|| MetaError::Keys(format!("the server has no key pair for {suite}")))?;
        let token = EnrollmentToken::generate(keys).map_err(|e| MetaError::Keys(e.to_string()))?;
        let now = Date::now();
        self.db.insert_with_id(
            TOKENS,
            record_id(TOKENS, &token.id()),
            fields! {
                "token_id" => token.id_hex(),
                "secret_hash" => token.secret_hash().to_vec(),
                "user" => user,
                "created_at" => now,
                "expires_at" => now_plus(ttl),
                "used" => false,
            },
        )?;
        Ok(Zeroizing::new(token.encode()))
    }

    /// Enrolls the device with static public key `device_key` (for `suite`, the suite of its
    /// handshake, which must be the token's) with the token `token_text`, and returns the
    /// user it now belongs to. The token is marked used in the same transaction that enrolls
    /// the device, so it works exactly once, even with several server processes racing.
    pub fn enroll_device(
        &self,
        token_text: &str,
        device_key: &[u8],
        suite: Suite,
    ) -> Result<User, MetaError> {
        let token = EnrollmentToken::parse(token_text)
            .map_err(|e| MetaError::TokenMalformed(e.to_string()))?;
        let ours = self.server_keys_for(token.server_suite());
        if ours.is_none_or(|keys| keys.public() != token.server_key()) {
            return Err(MetaError::TokenForeign);
        }
        if token.server_suite() != suite {
            return Err(MetaError::TokenSuiteMismatch {
                token: token.server_suite(),
                device: suite,
            });
        }
        if device_key.len() != suite.public_key_len() {
            return Err(MetaError::InvalidArgument(format!(
                "a {suite} public key has {} bytes, not {}",
                suite.public_key_len(),
                device_key.len()
            )));
        }
        let token_record = record_id(TOKENS, &token.id());
        let device_record = record_id(DEVICES, device_key);
        let device_fingerprint = fingerprint(device_key);
        self.db.transaction(|tx| {
            let Some(stored) = tx.get(TOKENS, token_record)? else {
                return Ok(Err(MetaError::TokenUnknown));
            };
            let hash = match stored.get("secret_hash") {
                Some(Value::Bytes(b)) => b.clone(),
                _ => return Ok(Err(corrupt(TOKENS, "secret_hash"))),
            };
            if !token.secret_matches(&hash) {
                return Ok(Err(MetaError::TokenUnknown));
            }
            match field_bool(&stored, TOKENS, "used") {
                Ok(true) => return Ok(Err(MetaError::TokenUsed)),
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            match field_flag(&stored, TOKENS, "revoked") {
                Ok(true) => return Ok(Err(MetaError::TokenRevoked)),
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            match field_date(&stored, TOKENS, "expires_at") {
                Ok(expires) if expires <= Date::now() => return Ok(Err(MetaError::TokenExpired)),
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
            let user_name = match field_str(&stored, TOKENS, "user") {
                Ok(u) => u,
                Err(e) => return Ok(Err(e)),
            };
            let Some(user) = tx.get(USERS, record_id(USERS, user_name.as_bytes()))? else {
                return Ok(Err(MetaError::UnknownUser(user_name)));
            };
            let user = match user_from(&user) {
                Ok(u) => u,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(existing) = tx.get(DEVICES, device_record)? {
                return Ok(Err(match field_bool(&existing, DEVICES, "revoked") {
                    Ok(true) => MetaError::DeviceRevoked(device_fingerprint.clone()),
                    Ok(false) => MetaError::DeviceAlreadyEnrolled(device_fingerprint.clone()),
                    Err(e) => e,
                }));
            }
            tx.update(
                TOKENS,
                token_record,
                fields! { "used" => true, "used_by" => device_fingerprint.as_str() },
            )?;
            tx.insert_with_id(
                DEVICES,
                device_record,
                fields! {
                    "key" => to_hex(device_key),
                    "fingerprint" => device_fingerprint.as_str(),
                    "suite" => suite.noise_name(),
                    "user" => user.name.as_str(),
                    "enrolled_at" => Date::now(),
                    "revoked" => false,
                    "token_id" => token.id_hex(),
                },
            )?;
            Ok(Ok(user))
        })?
    }

    /// Every enrollment token, used or not, by user and creation time.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, MetaError> {
        let now = Date::now();
        let mut tokens = self
            .db
            .fetch_all(TOKENS)?
            .iter()
            .map(|r| token_from(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| (&a.user, a.created, &a.id).cmp(&(&b.user, b.created, &b.id)));
        Ok(tokens)
    }

    /// Revokes the unused token with this id (hex, either case, as [`Self::list_tokens`] shows
    /// it), so that enrolling with it is refused with [`MetaError::TokenRevoked`]. Revoking
    /// twice, or revoking an expired token, is harmless. A used token cannot be revoked
    /// ([`MetaError::TokenAlreadyUsed`]): revoke the device it enrolled instead.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, MetaError> {
        let unknown = || MetaError::UnknownToken(id.to_owned());
        let bytes = from_hex(id.trim())
            .filter(|b| b.len() == TOKEN_ID_LEN)
            .ok_or_else(unknown)?;
        let token_record = record_id(TOKENS, &bytes);
        // One transaction, so a device enrolling at the same moment either wins (and the
        // token is reported used) or is refused.
        self.db.transaction(|tx| {
            let Some(stored) = tx.get(TOKENS, token_record)? else {
                return Ok(Err(unknown()));
            };
            let info = match token_from(&stored, Date::now()) {
                Ok(info) => info,
                Err(e) => return Ok(Err(e)),
            };
            match info.state {
                TokenState::Used { device } => {
                    return Ok(Err(MetaError::TokenAlreadyUsed {
                        id: info.id,
                        device,
                    }));
                }
                TokenState::Revoked => return Ok(Ok(info)),
                _ => {}
            }
            tx.update(
                TOKENS,
                token_record,
                fields! { "revoked" => true, "revoked_at" => Date::now() },
            )?;
            Ok(Ok(TokenInfo {
                state: TokenState::Revoked,
                ..info
            }))
        })?
    }

    // --- devices -----------------------------------------------------------------------

    /// The device with this static public key, revoked or not; `None` when never enrolled.
    pub fn device(&self, key: &[u8]) -> Result<Option<Device>, MetaError> {
        self.db
            .get(DEVICES, record_id(DEVICES, key))?
            .map(|r| device_from(&r))
            .transpose()
    }

    /// Binds the enrolled device with static key `key` to `node` on its first `Hello`, or
    /// checks that `node` is the one bound to it before. Refuses a node id another device is
    /// bound to ([`MetaError::NodeTaken`]: a copied database file, or a forgery) and a node id
    /// other than the device's own ([`MetaError::NodeMismatch`]). One transaction, so two
    /// connections racing with different node ids bind one of them.
    pub fn bind_node(&self, key: &[u8], node: NodeId) -> Result<(), MetaError> {
        let device_record = record_id(DEVICES, key);
        let node_record = record_id(NODES, node.as_bytes());
        let device = fingerprint(key);
        self.db.transaction(|tx| {
            let Some(stored) = tx.get(DEVICES, device_record)? else {
                return Ok(Err(MetaError::UnknownDevice(device.clone())));
            };
            let stored = match device_from(&stored) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(bound) = stored.node {
                return Ok(if bound == node {
                    Ok(())
                } else {
                    Err(MetaError::NodeMismatch {
                        device: device.clone(),
                        bound: bound.to_string(),
                        claimed: node.to_string(),
                    })
                });
            }
            if let Some(owner) = tx.get(NODES, node_record)? {
                let owner = match field_str(&owner, NODES, "device") {
                    Ok(o) => o,
                    Err(e) => return Ok(Err(e)),
                };
                return Ok(Err(MetaError::NodeTaken {
                    node: node.to_string(),
                    owner,
                    device: device.clone(),
                }));
            }
            tx.insert_with_id(
                NODES,
                node_record,
                fields! { "device" => device.as_str(), "key" => to_hex(key) },
            )?;
            tx.update(
                DEVICES,
                device_record,
                fields! { "node" => Value::Uuid(node.0) },
            )?;
            Ok(Ok(()))
        })?
    }

    /// Every device, by user and enrollment time.
    pub fn list_devices(&self) -> Result<Vec<Device>, MetaError> {
        let mut devices = self
            .db
            .fetch_all(DEVICES)?
            .iter()
            .map(device_from)
            .collect::<Result<Vec<_>, _>>()?;
        devices.sort_by(|a, b| (&a.user, a.enrolled_at).cmp(&(&b.user, b.enrolled_at)));
        Ok(devices)
    }

    /// The static keys of every revoked device.
    pub fn revoked_keys(&self) -> Result<HashSet<Vec<u8>>, MetaError> {
        Ok(self
            .list_devices()?
            .into_iter()
            .filter(|d| d.revoked)
            .map(|d| d.key)
            .collect())
    }

    /// A number that changes whenever the store changes, in this process or another: the
    /// head of its op log.
    pub fn version(&self) -> Result<u64, MetaError> {
        Ok(self.db.replication().oplog_head()?)
    }

    /// Revokes the device named by its fingerprint or its public key in hex (either case).
    /// Its next connection is refused; revoking twice is harmless.
    pub fn revoke_device(&self, fingerprint_or_key: &str) -> Result<Device, MetaError> {
        let wanted = fingerprint_or_key.trim().to_ascii_lowercase();
        let unknown = || MetaError::UnknownDevice(fingerprint_or_key.to_owned());
        let matches: Vec<Device> = self
            .list_devices()?
            .into_iter()
            .filter(|d| d.fingerprint() == wanted || d.key_hex() == wanted)
            .collect();
        let device = match matches.as_slice() {
            [] => return Err(unknown()),
            [one] => one.clone(),
            _ => return Err(MetaError::AmbiguousDevice(fingerprint_or_key.to_owned())),
        };
        if !device.revoked {
            self.db.update(
                DEVICES,
                record_id(DEVICES, &device.key),
                fields! { "revoked" => true, "revoked_at" => Date::now() },
            )?;
        }
        Ok(Device {
            revoked: true,
            ..device
        })
    }

    // --- hosted databases -----------------------------------------------------------------

    /// The file of the hosted database `name`.
    pub fn database_path(&self, name: &str) -> Result<PathBuf, MetaError> {
        check_database_name(name)?;
        Ok(self
            .data_dir
            .join(DATABASES_DIR)
            .join(database_file_name(name)))
    }

    /// Creates the hosted database `name`: its file (encrypted with the master key) and its
    /// entry in the meta store.
    pub fn create_database(&self, name: &str) -> Result<PathBuf, MetaError> {
        let path = self.database_path(name)?;
        if self.has_database(name)? {
            return Err(MetaError::DatabaseExists(name.to_owned()));
        }
        match Database::create(&path, &self.password) {
            Ok(db) => drop(db),
            // Left over from an interrupted create: it must open with our key.
            Err(CoreError::Open(OpenError::AlreadyExists { .. })) => {
                drop(Database::open(&path, &self.password).map_err(open_error)?)
            }
            Err(e) => return Err(open_error(e)),
        }
        restrict_database_files(&path).map_err(|source| MetaError::Io {
            what: "cannot restrict the permissions of",
            path: path.clone(),
            source,
        })?;
        let record = fields! { "name" => name, "created_at" => Date::now() };
        match self
            .db
            .insert_with_id(DATABASES, record_id(DATABASES, name.as_bytes()), record)
        {
            Ok(()) => Ok(path),
            Err(CoreError::RecordExists { .. }) => Err(MetaError::DatabaseExists(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// True when a hosted database of this name exists.
    pub fn has_database(&self, name: &str) -> Result<bool, MetaError> {
        if check_database_name(name).is_err() {
            return Ok(false);
        }
        Ok(self
            .db
            .get(DATABASES, record_id(DATABASES, name.as_bytes()))?
            .is_some())
    }

    /// The names of every hosted database, sorted.
    pub fn list_databases(&self) -> Result<Vec<String>, MetaError> {
        let mut names = self
            .db
            .fetch_all(DATABASES)?
            .iter()
            .map(|r| field_str(r, DATABASES, "name"))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    // --- access rules ---------------------------------------------------------------------

    /// Validates `text` as a rules file and makes it the rules of `database`, replacing any
    /// (one transaction: a refused file changes nothing). Returns the rules now in force.
    pub fn set_access_rules(&self, database: &str, text: &str) -> Result<Rules, MetaError> {
        let rules = Rules::parse(text)?;
        if !self.has_database(database)? {
            return Err(MetaError::UnknownDatabase(database.to_owned()));
        }
        self.check_mode_changes(database, self.access_rules(database)?.as_ref(), &rules)?;
        self.store_rules(database, &rules)?;
        Ok(rules)
    }

    /// Sets the mode (and routing fields) of one collection of `database`, in its access
    /// rules (`admin database mode`). Returns the rules now in force.
    pub fn set_collection_mode(
        &self,
        database: &str,
        collection: &str,
        settings: CollectionSettings,
    ) -> Result<Rules, MetaError> {
        if !self.has_database(database)? {
            return Err(MetaError::UnknownDatabase(database.to_owned()));
        }
        let Some(old) = self.access_rules(database)? else {
            return Err(MetaError::NoRules(database.to_owned()));
        };
        let mut rules = old.clone();
        rules.declare(collection, settings);
        // Parsed again: a rule that reads a field the collection now seals is refused.
        let rules = Rules::parse(&rules.to_toml())?;
        self.check_mode_changes(database, Some(&old), &rules)?;
        self.store_rules(database, &rules)?;
        Ok(rules)
    }

    /// The changes of collection modes from `old` to `new` the server allows: an e2e
    /// collection stays e2e (its devices never send it readable again), and a collection
    /// becomes e2e, or changes its routing fields, only while the server holds none of its
    /// records (values stored readable would stay so, and devices that learned the old
    /// routing fields would seal what the rules read).
    fn check_mode_changes(
        &self,
        database: &str,
        old: Option<&Rules>,
        new: &Rules,
    ) -> Result<(), MetaError> {
        let smart = CollectionSettings::default();
        let settings_in = |rules: Option<&Rules>, c: &str| {
            rules
                .and_then(|r| r.settings(c))
                .cloned()
                .unwrap_or_default()
        };
        let mut names: BTreeSet<String> = new
            .collection_settings()
            .map(|(c, _)| c.to_owned())
            .collect();
        if let Some(old) = old {
            names.extend(old.collection_settings().map(|(c, _)| c.to_owned()));
        }
        let mut hosted = None;
        for collection in names {
            let before = settings_in(old, &collection);
            let after = settings_in(Some(new), &collection);
            if before == after || (before == smart && after.mode() == CollectionMode::Smart) {
                continue;
            }
            let refuse = |reason: String| MetaError::ModeChange {
                collection: collection.clone(),
                reason,
            };
            if before.mode() == CollectionMode::E2e && after.mode() == CollectionMode::Smart {
                return Err(refuse(
                    "it is end to end and stays so (mode = \"e2e\"): its devices seal it and \
                     never send it readable again"
                        .into(),
                ));
            }
            if hosted.is_none() {
                hosted = Some(self.open_database(database)?);
            }
            let held = hosted.as_ref().map_or(Ok(0), |db| db.count(&collection))?;
            if held > 0 {
                return Err(refuse(format!(
                    "the server holds {held} of its records; a collection becomes end to end, \
                     or changes its routing fields, only while it is empty here (values stored \
                     readable would stay readable)"
                )));
            }
        }
        Ok(())
    }

    fn store_rules(&self, database: &str, rules: &Rules) -> Result<(), MetaError> {
        let id = record_id(ACCESS_RULES, database.as_bytes());
        let record = fields! {
            "database" => database,
            "rules" => rules.to_toml(),
            "set_at" => Date::now(),
        };
        self.db.transaction(|tx| match tx.get(ACCESS_RULES, id)? {
            Some(_) => tx.update(ACCESS_RULES, id, record),
            None => tx.insert_with_id(ACCESS_RULES, id, record),
        })?;
        Ok(())
    }

    /// The access rules of `database`, or `None` when it has none (every enrolled user reads
    /// and writes everything). Reads the store; see [`MetaStore::current_access_rules`].
    pub fn access_rules(&self, database: &str) -> Result<Option<Rules>, MetaError> {
        let Some(record) = self
            .db
            .get(ACCESS_RULES, record_id(ACCESS_RULES, database.as_bytes()))?
        else {
            return Ok(None);
        };
        let text = field_str(&record, ACCESS_RULES, "rules")?;
        Rules::parse(&text)
            .map(Some)
            .map_err(|e| MetaError::Corrupt(format!("the access rules of {database:?}: {e}")))
    }

    /// Like [`MetaStore::access_rules`], cheap to call per connection or per operation: parsed
    /// rules are kept until the store changes (in this process or another, e.g. `admin access
    /// set` while the server runs), so the caller always sees the rules in force.
    pub fn current_access_rules(&self, database: &str) -> Result<Option<Arc<Rules>>, MetaError> {
        let version = self.version()?;
        let mut cache = self
            .rules_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.0 != version {
            *cache = (version, HashMap::new());
        }
        if let Some(rules) = cache.1.get(database) {
            return Ok(rules.clone());
        }
        let rules = self.access_rules(database)?.map(Arc::new);
        cache.1.insert(database.to_owned(), rules.clone());
        Ok(rules)
    }

    /// What the device `fingerprint` of user `user` may read and write of `database` under
    /// the rules in force: `None` when the database has no rules (everything), nothing at
    /// all for a user the store no longer has. The context comes from this store only.
    pub fn device_access(
        &self,
        database: &str,
        user: &str,
        fingerprint: &str,
    ) -> Result<Option<(ReadScope, WriteScope)>, MetaError> {
        let Some(rules) = self.current_access_rules(database)? else {
            return Ok(None);
        };
        let ctx = match self.user(user)? {
            Some(user) => SecurityContext::new(user.name, user.teams, user.role, fingerprint),
            // No role: no rule applies, so nothing is readable or writable.
            None => SecurityContext::new(user, Vec::<String>::new(), "", fingerprint),
        };
        let read = ReadScope::from_rules(&rules, &ctx);
        Ok(Some((read, WriteScope::new(rules, ctx))))
    }

    // --- end-to-end keys ------------------------------------------------------------------

    /// Keeps wrapped scope keys and sealed previous keys of `database` (idempotent: one
    /// already kept is left as it is), in one transaction.
    pub fn store_e2e_keys(
        &self,
        database: &str,
        keys: &[KeyEnvelope],
        previous: &[PreviousKey],
    ) -> Result<(), MetaError> {
        self.db.transaction(|tx| {
            for k in keys {
                let id = record_id(
                    E2E_ENVELOPES,
                    &[database.as_bytes(), &[0], &k.key, &k.recipient].concat(),
                );
                if tx.get(E2E_ENVELOPES, id)?.is_none() {
                    tx.insert_with_id(
                        E2E_ENVELOPES,
                        id,
                        fields! {
                            "database" => database,
                            "collection" => k.collection.as_str(),
                            "scope" => k.scope.as_str(),
                            "epoch" => i64::from(k.epoch),
                            "key" => Value::Bytes(k.key.to_vec()),
                            "recipient" => Value::Bytes(k.recipient.clone()),
                            "wrapped" => Value::Bytes(k.wrapped.clone()),
                        },
                    )?;
                }
            }
            for p in previous {
                let id = record_id(
                    E2E_PREVIOUS,
                    &[database.as_bytes(), &[0], &p.key, &p.under].concat(),
                );
                if tx.get(E2E_PREVIOUS, id)?.is_none() {
                    tx.insert_with_id(
                        E2E_PREVIOUS,
                        id,
                        fields! {
                            "database" => database,
                            "collection" => p.collection.as_str(),
                            "scope" => p.scope.as_str(),
                            "epoch" => i64::from(p.epoch),
                            "key" => Value::Bytes(p.key.to_vec()),
                            "under" => Value::Bytes(p.under.to_vec()),
                            "sealed" => Value::Bytes(p.sealed.clone()),
                        },
                    )?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Every wrapped key and sealed previous key kept for `database`.
    pub fn e2e_keys(
        &self,
        database: &str,
    ) -> Result<(Vec<KeyEnvelope>, Vec<PreviousKey>), MetaError> {
        let text = |r: &Record, c: &str, f: &str| field_str(r, c, f);
        let bytes = |r: &Record, c: &str, f: &str| match r.fields.get(f) {
            Some(Value::Bytes(b)) => Ok(b.clone()),
            _ => Err(corrupt(c, f)),
        };
        let id = |r: &Record, c: &str, f: &str| -> Result<[u8; 4], MetaError> {
            bytes(r, c, f)?.try_into().map_err(|_| corrupt(c, f))
        };
        let epoch = |r: &Record, c: &str| match r.fields.get("epoch") {
            Some(Value::Int(e)) => u32::try_from(*e).map_err(|_| corrupt(c, "epoch")),
            _ => Err(corrupt(c, "epoch")),
        };
        let mine = |r: &&Record| r.fields.get("database") == Some(&Value::from(database));
        let keys = self
            .db
            .fetch_all(E2E_ENVELOPES)?
            .iter()
            .filter(mine)
            .map(|r| {
                let c = E2E_ENVELOPES;
                Ok(KeyEnvelope {
                    collection: text(r, c, "collection")?,
                    scope: text(r, c, "scope")?,
                    epoch: epoch(r, c)?,
                    key: id(r, c, "key")?,
                    recipient: bytes(r, c, "recipient")?,
                    wrapped: bytes(r, c, "wrapped")?,
                })
            })
            .collect::<Result<Vec<_>, MetaError>>()?;
        let previous = self
            .db
            .fetch_all(E2E_PREVIOUS)?
            .iter()
            .filter(mine)
            .map(|r| {
                let c = E2E_PREVIOUS;
                Ok(PreviousKey {
                    collection: text(r, c, "collection")?,
                    scope: text(r, c, "scope")?,
                    epoch: epoch(r, c)?,
                    key: id(r, c, "key")?,
                    under: id(r, c, "under")?,
                    sealed: bytes(r, c, "sealed")?,
                })
            })
            .collect::<Result<Vec<_>, MetaError>>()?;
        Ok((keys, previous))
    }

    /// Opens the hosted database `name` (which must exist).
    pub fn open_database(&self, name: &str) -> Result<Database, MetaError> {
        if !self.has_database(name)? {
            return Err(MetaError::UnknownDatabase(name.to_owned()));
        }
        let path = self.database_path(name)?;
        Database::open(&path, &self.password).map_err(open_error)
    }
}

/// Fields of a record, for tests that look at what is stored.
#[cfg(test)]
fn stored(store: &MetaStore, collection: &str) -> Vec<blazedb_core::Fields> {
    store
        .db
        .fetch_all(collection)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.fields)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let store = MetaStore::open_or_create(&dir.path().join("data"), &key).unwrap();
        (dir, store)
    }

    fn device_key(suite: Suite) -> Vec<u8> {
        StaticKeys::generate(suite).unwrap().public().to_vec()
    }

    #[test]
    fn users_are_added_listed_and_unique() {
        let (_dir, store) = store();
        let ada = store
            .add_user("ada", &["core".into(), "ops".into(), "core".into()], None)
            .unwrap();
        assert_eq!(ada.teams, ["core", "ops"]);
        assert_eq!(ada.role, DEFAULT_ROLE);
        store.add_user("bob", &[], Some("admin")).unwrap();
        let names: Vec<_> = store
            .list_users()
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["ada", "bob"]);
        assert!(matches!(
            store.add_user("ada", &[], None),
            Err(MetaError::UserExists(_))
        ));
        assert!(matches!(
            store.add_user("", &[], None),
            Err(MetaError::InvalidName { .. })
        ));
        assert!(matches!(
            store.add_user("x", &["bad\nteam".into()], None),
            Err(MetaError::InvalidName { .. })
        ));
        assert_eq!(store.user("bob").unwrap().unwrap().role, "admin");
        assert_eq!(store.user("carol").unwrap(), None);
    }

    #[test]
    fn names_with_invisible_or_bidi_characters_are_refused_and_look_alikes_fold_to_one() {
        let (_dir, store) = store();
        store.add_user("ada", &["red".into()], None).unwrap();
        for hidden in [
            "ada\u{200B}",         // zero-width space
            "a\u{200D}da",         // zero-width joiner
            "\u{202E}ada",         // right-to-left override
            "ad\u{2066}a\u{2069}", // isolate
            "ada\u{FEFF}",         // byte order mark
            "ada\u{E0041}",        // tag character
            "ada\u{00A0}lovelace", // no-break space
        ] {
            let refused = store.add_user(hidden, &[], None);
            assert!(
                matches!(refused, Err(MetaError::InvalidName { .. })),
                "{hidden:?}: {refused:?}"
            );
        }
        // Full-width letters and a ligature are the same names as their plain forms.
        assert!(matches!(
            store.add_user("\u{FF41}\u{FF44}\u{FF41}", &[], None),
            Err(MetaError::UserExists(name)) if name == "ada"
        ));
        let fi = store.add_user("\u{FB01}nn", &[], None).unwrap();
        assert_eq!(fi.name, "finn");
        assert_eq!(store.user("\u{FB01}nn").unwrap().unwrap().name, "finn");
        // A team name cannot hold the separator teams are listed with.
        let err = store
            .add_user("bob", &["red,blue".into()], None)
            .unwrap_err();
        assert!(err.to_string().contains("comma"), "{err}");
        // The error shows what is hidden.
        let err = store.add_user("ada\u{200B}", &[], None).unwrap_err();
        assert!(err.to_string().contains("\\u{200b}"), "{err}");
    }

    #[test]
    fn the_server_key_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let data = dir.path().join("data");
        let first = MetaStore::open_or_create(&data, &key).unwrap();
        let public = first.server_keys().public().to_vec();
        drop(first);
        let again = MetaStore::open_or_create(&data, &key).unwrap();
        assert_eq!(again.server_keys().public(), public);
    }

    #[test]
    fn the_server_has_a_key_pair_per_suite_each_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let data = dir.path().join("data");
        let first = MetaStore::open_or_create(&data, &key).unwrap();
        let publics: Vec<Vec<u8>> = Suite::ALL
            .into_iter()
            .map(|suite| {
                let keys = first.server_keys_for(suite).unwrap();
                assert_eq!(keys.suite(), suite);
                keys.public().to_vec()
            })
            .collect();
        assert_eq!(first.server_keys().suite(), Suite::default());
        drop(first);
        let again = MetaStore::open_or_create(&data, &key).unwrap();
        for (suite, public) in Suite::ALL.into_iter().zip(&publics) {
            assert_eq!(again.server_keys_for(suite).unwrap().public(), public);
        }
    }

    #[test]
    fn a_store_made_with_only_a_p256_key_keeps_it_and_gains_an_x25519_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data).unwrap();
        // A store as servers made it before they had a key per suite: one P-256 key pair.
        let old = Database::create(data.join(META_FILE), &key.password()).unwrap();
        let p256 = blazedb_sync::remote::node_keys(&old).unwrap();
        assert_eq!(p256.suite(), Suite::P256AesGcmSha256);
        drop(old);

        let upgraded = MetaStore::open_or_create(&data, &key).unwrap();
        assert_eq!(upgraded.server_keys().public(), p256.public());
        let x25519 = upgraded
            .server_keys_for(Suite::X25519AesGcmSha256)
            .unwrap()
            .public()
            .to_vec();
        drop(upgraded);
        let again = MetaStore::open_or_create(&data, &key).unwrap();
        assert_eq!(again.server_keys().public(), p256.public());
        assert_eq!(
            again
                .server_keys_for(Suite::X25519AesGcmSha256)
                .unwrap()
                .public(),
            x25519
        );
    }

    #[test]
    fn a_token_carries_the_server_key_of_its_suite_and_enrolls_only_a_device_of_that_suite() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        for suite in Suite::ALL {
            let text = store
                .create_token_with_suite("ada", Duration::from_secs(60), suite)
                .unwrap();
            let token = EnrollmentToken::parse(&text).unwrap();
            assert_eq!(token.server_suite(), suite);
            assert_eq!(
                token.server_key(),
                store.server_keys_for(suite).unwrap().public()
            );
            let other = Suite::ALL.into_iter().find(|s| *s != suite).unwrap();
            let err = store
                .enroll_device(&text, &device_key(other), other)
                .unwrap_err();
            assert!(
                matches!(err, MetaError::TokenSuiteMismatch { token, device } if token == suite && device == other),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains("a device must use the suite of its token"),
                "{err}"
            );
            // The refusal did not use the token up.
            let device = device_key(suite);
            store.enroll_device(&text, &device, suite).unwrap();
            assert_eq!(store.device(&device).unwrap().unwrap().suite, suite);
        }
    }

    #[test]
    fn a_wrong_master_key_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        drop(MetaStore::open_or_create(&data, &MasterKey::generate().unwrap()).unwrap());
        let err = MetaStore::open_or_create(&data, &MasterKey::generate().unwrap()).unwrap_err();
        assert!(matches!(err, MetaError::WrongMasterKey { .. }), "{err}");
        assert!(
            err.to_string().contains("the master key does not open"),
            "{err}"
        );
        assert!(err.to_string().contains("server.blazedb"), "{err}");
    }

    #[test]
    fn a_token_enrolls_exactly_one_device() {
        let (_dir, store) = store();
        store.add_user("ada", &["core".into()], None).unwrap();
        let token = store.create_token("ada", Duration::from_secs(60)).unwrap();
        assert!(token.starts_with("bzt1_"));
        let suite = store.server_keys().suite();
        let first = device_key(suite);
        let user = store.enroll_device(&token, &first, suite).unwrap();
        assert_eq!(user.name, "ada");
        let device = store.device(&first).unwrap().unwrap();
        assert_eq!(device.user, "ada");
        assert!(!device.revoked);

        let second = device_key(suite);
        assert!(matches!(
            store.enroll_device(&token, &second, suite),
            Err(MetaError::TokenUsed)
        ));
        assert_eq!(store.device(&second).unwrap(), None);
        assert_eq!(store.list_devices().unwrap().len(), 1);
    }

    #[test]
    fn the_secret_of_a_token_is_not_stored() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        let text = store.create_token("ada", Duration::from_secs(60)).unwrap();
        let token = EnrollmentToken::parse(&text).unwrap();
        let rows = stored(&store, TOKENS);
        assert_eq!(rows.len(), 1);
        let shown = format!("{rows:?}");
        assert!(!shown.contains(&text[5..]));
        assert_eq!(
            rows[0].get("secret_hash"),
            Some(&Value::Bytes(token.secret_hash().to_vec()))
        );
    }

    #[test]
    fn expired_unknown_foreign_and_malformed_tokens_are_distinct_errors() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        let suite = store.server_keys().suite();
        let key = device_key(suite);

        let token = store.create_token("ada", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            store.enroll_device(&token, &key, suite),
            Err(MetaError::TokenExpired)
        ));

        let unknown = EnrollmentToken::generate(store.server_keys())
            .unwrap()
            .encode();
        assert!(matches!(
            store.enroll_device(&unknown, &key, suite),
            Err(MetaError::TokenUnknown)
        ));

        let other = StaticKeys::generate(suite).unwrap();
        let foreign = EnrollmentToken::generate(&other).unwrap().encode();
        assert!(matches!(
            store.enroll_device(&foreign, &key, suite),
            Err(MetaError::TokenForeign)
        ));

        assert!(matches!(
            store.enroll_device("bzt1_nonsense", &key, suite),
            Err(MetaError::TokenMalformed(_))
        ));
        assert!(matches!(
            store.create_token("nobody", Duration::from_secs(5)),
            Err(MetaError::UnknownUser(_))
        ));
        assert!(matches!(
            store.create_token("ada", Duration::ZERO),
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(store.list_devices().unwrap().is_empty());
    }

    #[test]
    fn a_revoked_device_stays_known_as_revoked_and_cannot_enroll_again() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        let suite = store.server_keys().suite();
        let key = device_key(suite);
        let token = store.create_token("ada", Duration::from_secs(60)).unwrap();
        store.enroll_device(&token, &key, suite).unwrap();
        let fp = fingerprint(&key);
        let revoked = store.revoke_device(&fp.to_uppercase()).unwrap();
        assert!(revoked.revoked);
        assert!(store.device(&key).unwrap().unwrap().revoked);
        // By key too, and a second time.
        assert!(store.revoke_device(&to_hex(&key)).unwrap().revoked);
        assert!(matches!(
            store.revoke_device("0000000000000000"),
            Err(MetaError::UnknownDevice(_))
        ));
        let token = store.create_token("ada", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            store.enroll_device(&token, &key, suite),
            Err(MetaError::DeviceRevoked(_))
        ));
        // The refused attempt did not use the token up.
        let other = device_key(suite);
        store.enroll_device(&token, &other, suite).unwrap();
    }

    /// The id of a token's text, as `token list` shows it.
    fn id_of(text: &str) -> String {
        EnrollmentToken::parse(text).unwrap().id_hex()
    }

    #[test]
    fn the_token_list_shows_unused_used_expired_and_revoked_tokens_without_secrets() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        store.add_user("bob", &[], None).unwrap();
        let suite = store.server_keys().suite();
        let unused = store.create_token("ada", Duration::from_secs(60)).unwrap();
        let used = store.create_token("ada", Duration::from_secs(60)).unwrap();
        let key = device_key(suite);
        store.enroll_device(&used, &key, suite).unwrap();
        let revoked = store.create_token("bob", Duration::from_secs(60)).unwrap();
        store.revoke_token(&id_of(&revoked)).unwrap();
        let expired = store.create_token("bob", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));

        let listed = store.list_tokens().unwrap();
        // Tokens made in the same millisecond have no order among themselves.
        let mut states: Vec<_> = listed
            .iter()
            .map(|t| (t.user.as_str(), t.id.clone(), t.state.clone()))
            .collect();
        states.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut expected = [
            ("ada", id_of(&unused), TokenState::Unused),
            (
                "ada",
                id_of(&used),
                TokenState::Used {
                    device: fingerprint(&key),
                },
            ),
            ("bob", id_of(&revoked), TokenState::Revoked),
            ("bob", id_of(&expired), TokenState::Expired),
        ];
        expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(states, expected);
        assert_eq!(
            listed.iter().map(|t| t.user.as_str()).collect::<Vec<_>>(),
            ["ada", "ada", "bob", "bob"]
        );
        let used_info = listed.iter().find(|t| t.id == id_of(&used)).unwrap();
        assert!(used_info.expires > Date::now());
        let line = used_info.to_string();
        assert_eq!(
            line,
            format!(
                "{}\tada\t{}\tused by {}",
                id_of(&used),
                format_date(used_info.expires),
                fingerprint(&key)
            )
        );

        let shown = format!(
            "{listed:?} {}",
            listed.iter().map(|t| t.to_string()).collect::<String>()
        );
        for text in [&unused, &used, &revoked, &expired] {
            let token = EnrollmentToken::parse(text).unwrap();
            assert!(!shown.contains(&text[5..]));
            assert!(!shown.contains(&to_hex(&token.secret_hash())));
        }
    }

    #[test]
    fn a_revoked_token_cannot_enroll_and_the_refusal_says_revoked() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        let suite = store.server_keys().suite();
        let token = store.create_token("ada", Duration::from_secs(60)).unwrap();
        // Ids are taken in either case and revoking twice is harmless.
        let info = store.revoke_token(&id_of(&token).to_uppercase()).unwrap();
        assert_eq!(info.state, TokenState::Revoked);
        assert_eq!(info.user, "ada");
        store.revoke_token(&id_of(&token)).unwrap();

        let key = device_key(suite);
        let err = store.enroll_device(&token, &key, suite).unwrap_err();
        assert!(matches!(err, MetaError::TokenRevoked), "{err}");
        assert!(
            err.to_string().contains("the enrollment token was revoked"),
            "{err}"
        );
        assert_eq!(store.device(&key).unwrap(), None);

        // An expired token can be revoked too, and then reads as revoked.
        let expired = store.create_token("ada", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        store.revoke_token(&id_of(&expired)).unwrap();
        assert!(matches!(
            store.enroll_device(&expired, &key, suite),
            Err(MetaError::TokenRevoked)
        ));
    }

    #[test]
    fn revoking_an_unknown_or_malformed_token_id_is_an_error_naming_it() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        store.create_token("ada", Duration::from_secs(60)).unwrap();
        for id in ["00112233445566778899aabbccddeeff", "nonsense", ""] {
            let err = store.revoke_token(id).unwrap_err();
            assert!(matches!(err, MetaError::UnknownToken(_)), "{err}");
            assert!(err.to_string().contains(&format!("{id:?}")), "{err}");
        }
        assert_eq!(store.list_tokens().unwrap()[0].state, TokenState::Unused);
    }

    #[test]
    fn a_used_token_cannot_be_revoked_and_the_error_points_at_its_device() {
        let (_dir, store) = store();
        store.add_user("ada", &[], None).unwrap();
        let suite = store.server_keys().suite();
        let token = store.create_token("ada", Duration::from_secs(60)).unwrap();
        let key = device_key(suite);
        store.enroll_device(&token, &key, suite).unwrap();
        let err = store.revoke_token(&id_of(&token)).unwrap_err();
        assert!(matches!(err, MetaError::TokenAlreadyUsed { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("already used"), "{text}");
        assert!(
            text.contains(&format!("device revoke {}", fingerprint(&key))),
            "{text}"
        );
        // Nothing changed: the token still reads as used and the device is still active.
        assert!(matches!(
            store.list_tokens().unwrap()[0].state,
            TokenState::Used { .. }
        ));
        assert!(!store.device(&key).unwrap().unwrap().revoked);
    }

    #[test]
    fn databases_are_created_once_with_valid_names() {
        let (_dir, store) = store();
        let path = store.create_database("bugs").unwrap();
        assert!(path.ends_with("databases/bugs.blazedb"));
        assert!(path.exists());
        store.create_database("a.b_c-D9").unwrap();
        assert_eq!(store.list_databases().unwrap(), ["a.b_c-D9", "bugs"]);
        assert!(store.has_database("bugs").unwrap());
        assert!(!store.has_database("nope").unwrap());
        assert!(!store.has_database("../x").unwrap());
        assert!(matches!(
            store.create_database("bugs"),
            Err(MetaError::DatabaseExists(_))
        ));
        for bad in ["", "..", "a/b", "a b", "é", &"x".repeat(256)] {
            assert!(
                matches!(
                    store.create_database(bad),
                    Err(MetaError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        let long = "y".repeat(255);
        let path = store.create_database(&long).unwrap();
        assert!(path.file_name().unwrap().len() < 200);
        store.open_database(&long).unwrap();
        assert!(matches!(
            store.open_database("nope"),
            Err(MetaError::UnknownDatabase(_))
        ));
        let db = store.open_database("bugs").unwrap();
        db.insert("bugs", fields! { "title" => "x" }).unwrap();
    }
}
