//! A node's long-term Noise static key pair and the server keys it pinned, kept as local
//! settings of its own database: encrypted with it, never synced.

use blazedb_core::Database;
use blazedb_protocol::ProtocolError;
use blazedb_protocol::secure::{StaticKeys, Suite};
use zeroize::Zeroizing;

use super::error::RemoteError;

/// Local setting holding this node's static key pair: suite id, then the private key.
pub const STATIC_KEY_SETTING: &str = "sync/static-key";
/// Prefix of the local settings pinning a server's static key: suite id, then public key.
const SERVER_KEY_SETTING: &str = "sync/server-key/";

/// This database's static key pair, made (with the default suite) and stored on first use.
pub fn node_keys(db: &Database) -> Result<StaticKeys, RemoteError> {
    if let Some(stored) = db
        .replication()
        .local_setting(STATIC_KEY_SETTING)?
        .map(Zeroizing::new)
    {
        let (&suite, private) = stored
            .split_first()
            .ok_or(ProtocolError::InvalidStaticKeys {
                what: "the stored static key is empty",
            })?;
        return Ok(StaticKeys::from_private(Suite::from_id(suite)?, private)?);
    }
    let keys = StaticKeys::generate(Suite::default())?;
    let mut stored = Zeroizing::new(Vec::with_capacity(1 + keys.private().len()));
    stored.push(keys.suite().id());
    stored.extend_from_slice(keys.private());
    db.replication()
        .set_local_setting(STATIC_KEY_SETTING, Some(&stored))?;
    Ok(keys)
}

/// Forgets this database's static key pair and its enrolments, keeping the server keys it
/// pinned: for a file given a new node id ([`Database::reidentify`]), since a server binds a
/// device key to one node id. The next connection makes a new key pair and needs a new
/// enrolment token. Returns true when the file had a key.
pub fn forget_node_keys(db: &Database) -> Result<bool, RemoteError> {
    let had = db
        .replication()
        .local_setting(STATIC_KEY_SETTING)?
        .is_some();
    db.replication()
        .set_local_setting(STATIC_KEY_SETTING, None)?;
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
    let (&suite, key) = stored
        .split_first()
        .ok_or(ProtocolError::InvalidStaticKeys {
            what: "the pinned server key is empty",
        })?;
    Ok(Some((Suite::from_id(suite)?, key.to_vec())))
}

/// Pins `key` as the static key of `server` (after a successful enrolment).
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
