//! A `blazedb-server` in-process on 127.0.0.1 (a free port), with a test master key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A master key for tests (never a real one).
pub const KEY: &str = "6d61737465722d6b65792d666f722d74657374732d6f6e6c792d2d2d2d2d2d21";

/// Starts a server in-process on 127.0.0.1 (a free port) with the test master key, hosting
/// database `database` and knowing `users` (both made when missing, so a restarted server
/// keeps what it had).
pub fn start_server(data: &Path, database: &str, users: &[&str]) -> blazedb_server::ServerHandle {
    start_server_with(
        data,
        database,
        users,
        blazedb_server::ServerConfig::default(),
    )
}

/// [`start_server`] with other settings (its data folder and address are set here).
pub fn start_server_with(
    data: &Path,
    database: &str,
    users: &[&str],
    config: blazedb_server::ServerConfig,
) -> blazedb_server::ServerHandle {
    let config = blazedb_server::ServerConfig {
        data_dir: data.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..config
    };
    let key = blazedb_server::MasterKey::from_hex(KEY, "test").unwrap();
    let server = blazedb_server::Server::start_with_key(config, key).unwrap();
    let meta = server.meta();
    if !meta.has_database(database).unwrap() {
        meta.create_database(database).unwrap();
    }
    for user in users {
        if meta.user(user).unwrap().is_none() {
            meta.add_user(user, &[], None).unwrap();
        }
    }
    server
}

/// A one-time enrollment token for `user` on `server`, valid for ten minutes.
pub fn token(server: &blazedb_server::ServerHandle, user: &str) -> String {
    server
        .meta()
        .create_token(user, Duration::from_secs(600))
        .unwrap()
        .to_string()
}
