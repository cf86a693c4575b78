//! A node's long-term Noise static key pair and the server keys it pinned, kept as local
//! settings of its own database: encrypted with it, never synced.

use blazedb_core::Database;
use blazedb_protocol::secure::{StaticKeys, Suite};
use zeroize::Zeroizing;

use super::error::RemoteError;

/// Local setting holding this node's static key pair: suite id, then the private key. It holds
/// the first key pair the file made (of the default suite unless the first enrollment token
/// named another); a pair of another suite is kept beside it, under this name, `/` and the
/// suite id in two hex digits (`sync/static-key/02`).
pub const STATIC_KEY_SETTING: &str = "sync/static-key";
/// Prefix of the local settings pinning a server's static key: suite id, then public key.
const SERVER_KEY_SETTING: &str = "sync/server-key/";

/// This database's static key pair, made (with the default suite) and stored on first use.
pub fn node_keys(db: &Database) -> Result<StaticKeys, RemoteError> {
    match stored_keys(db, STATIC_KEY_SETTING)? {
        Some(keys) => Ok(keys),
        None => make_keys(db, STATIC_KEY_SETTING, Suite::default()),
    }
}

/// This database's static key pair for `suite`, made and stored on first use. A node speaks
/// one suite with a server (its enrollment token's), but may hold a pair for each.
pub fn node_keys_for(db: &Database, suite: Suite) -> Result<StaticKeys, RemoteError> {
    let setting = match stored_keys(db, STATIC_KEY_SETTING)? {
        Some(keys) if keys.suite() == suite => return Ok(keys),
        // The first pair stays where it is (a file made before there was a choice keeps its
        // key); this suite's pair goes beside it.
        Some(_) => format!("{STATIC_KEY_SETTING}/{:02x}", suite.id()),
        None => STATIC_KEY_SETTING.to_owned(),
    };
    match stored_keys(db, &setting)? {
        Some(keys) if keys.suite() == suite => Ok(keys),
        Some(_) => Err(RemoteError::DamagedKeyStore {
            what: "a stored static key is not of the suite its setting names",
        }),
        None => make_keys(db, &setting, suite),
    }
}

/// The key pair stored in `setting`, if any.
fn stored_keys(db: &Database, setting: &str) -> Result<Option<StaticKeys>, RemoteError> {
    let Some(stored) = db.replication().local_setting(setting)?.map(Zeroizing::new) else {
        return Ok(None);
    };
    let (&suite, private) = stored.split_first().ok_or(RemoteError::DamagedKeyStore {
        what: "the stored static key is empty",
    })?;
    Ok(Some(StaticKeys::from_private(
        stored_suite(suite)?,
        private,
    )?))
}

/// The suite a stored key names: one this version knows, or the store is damaged (not the
/// peer's doing, so not a protocol error).
fn stored_suite(id: u8) -> Result<Suite, RemoteError> {
    Suite::from_id(id).map_err(|_| RemoteError::DamagedKeyStore {
        what: "a stored key names a suite this version does not know",
    })
}

/// A new key pair of `suite`, stored in `setting`.
fn make_keys(db: &Database, setting: &str, suite: Suite) -> Result<StaticKeys, RemoteError> {
    let keys = StaticKeys::generate(suite)?;
    let mut stored = Zeroizing::new(Vec::with_capacity(1 + keys.private().len()));
    stored.push(keys.suite().id());
    stored.extend_from_slice(keys.private());
    db.replication().set_local_setting(setting, Some(&stored))?;
    Ok(keys)
}

/// Forgets this database's static key pair and its enrollments, keeping the server keys it
/// pinned: for a file given a new node id ([`Database::reidentify`]), since a server binds a
/// device key to one node id. The next connection makes a new key pair and needs a new
/// enrollment token. Returns true when the file had a key.
pub fn forget_node_keys(db: &Database) -> Result<bool, RemoteError> {
    let had = db
        .replication()
        .local_setting(STATIC_KEY_SETTING)?
        .is_some();
    db.replication()
        .set_local_setting(STATIC_KEY_SETTING, None)?;
    db.replication()
        .remove_local_settings(&format!("{STATIC_KEY_SETTING}/"))?;
    db.replication()
        .remove_local_settings(super::client::ENROLLED_SETTING_PREFIX)?;
    Ok(had)
}

/// The server key pinned for `server` (as [`pin_server_key`] stored it).
pub fn pinned_server_key(
    db: &Database,
    server: &str,
) -> Result<Option<(Suite, Vec<u8>)>, RemoteError> {
    let Some(stored) = db
        .replication()
        .local_setting(&format!("{SERVER_KEY_SETTING}{server}"))?
    else {
        return Ok(None);
    };
    let (&suite, key) = stored.split_first().ok_or(RemoteError::DamagedKeyStore {
        what: "the pinned server key is empty",
    })?;
    Ok(Some((stored_suite(suite)?, key.to_vec())))
}

/// Pins `key` as the static key of `server` (after a successful enrollment).
pub fn pin_server_key(
    db: &Database,
    server: &str,
    suite: Suite,
    key: &[u8],
) -> Result<(), RemoteError> {
    let mut stored = Vec::with_capacity(1 + key.len());
    stored.push(suite.id());
    stored.extend_from_slice(key);
    db.replication()
        .set_local_setting(&format!("{SERVER_KEY_SETTING}{server}"), Some(&stored))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_databases_static_key_is_made_once_and_kept() {
        let db = Database::in_memory().unwrap();
        let first = node_keys(&db).unwrap();
        let again = node_keys(&db).unwrap();
        assert_eq!(first.public(), again.public());
        assert_eq!(first.suite(), Suite::default());
    }

    #[test]
    fn a_database_keeps_its_first_key_and_makes_one_per_other_suite() {
        let db = Database::in_memory().unwrap();
        let first = node_keys(&db).unwrap();
        let x25519 = node_keys_for(&db, Suite::X25519AesGcmSha256).unwrap();
        assert_eq!(x25519.suite(), Suite::X25519AesGcmSha256);
        assert_eq!(node_keys(&db).unwrap().public(), first.public());
        assert_eq!(
            node_keys_for(&db, Suite::default()).unwrap().public(),
            first.public()
        );
        assert_eq!(
            node_keys_for(&db, Suite::X25519AesGcmSha256)
                .unwrap()
                .public(),
            x25519.public()
        );
        // Forgetting forgets every suite's pair.
        assert!(forget_node_keys(&db).unwrap());
        assert_ne!(
            node_keys_for(&db, Suite::X25519AesGcmSha256)
                .unwrap()
                .public(),
            x25519.public()
        );
    }

    #[test]
    fn a_database_whose_first_key_is_x25519_makes_its_p256_key_beside_it() {
        let db = Database::in_memory().unwrap();
        let x25519 = node_keys_for(&db, Suite::X25519AesGcmSha256).unwrap();
        assert_eq!(node_keys(&db).unwrap().public(), x25519.public());
        let p256 = node_keys_for(&db, Suite::P256AesGcmSha256).unwrap();
        assert_eq!(p256.suite(), Suite::P256AesGcmSha256);
        assert_eq!(
            node_keys_for(&db, Suite::P256AesGcmSha256)
                .unwrap()
                .public(),
            p256.public()
        );
    }

    #[test]
    fn forgotten_keys_are_made_anew_and_pinned_servers_are_kept() {
        let db = Database::in_memory().unwrap();
        let first = node_keys(&db).unwrap();
        pin_server_key(&db, "ws://a", Suite::default(), &[7; 32]).unwrap();
        db.replication()
            .set_local_setting("sync/enrolled/ws://a", Some(&[1]))
            .unwrap();
        assert!(forget_node_keys(&db).unwrap());
        assert!(!forget_node_keys(&db).unwrap());
        assert_eq!(
            db.replication()
                .local_setting("sync/enrolled/ws://a")
                .unwrap(),
            None
        );
        assert!(pinned_server_key(&db, "ws://a").unwrap().is_some());
        assert_ne!(node_keys(&db).unwrap().public(), first.public());
    }

    #[test]
    fn a_pinned_server_key_is_read_back() {
        let db = Database::in_memory().unwrap();
        assert!(pinned_server_key(&db, "ws://a").unwrap().is_none());
        pin_server_key(&db, "ws://a", Suite::X25519AesGcmSha256, &[7; 32]).unwrap();
        let (suite, key) = pinned_server_key(&db, "ws://a").unwrap().unwrap();
        assert_eq!(suite, Suite::X25519AesGcmSha256);
        assert_eq!(key, vec![7; 32]);
        assert!(pinned_server_key(&db, "ws://b").unwrap().is_none());
    }
}
