//! `blazedb-server`: hosts many BlazeDB databases and syncs devices with them over WebSocket
//! (optionally TLS 1.3), authenticated by Noise static keys that administrators enroll with
//! one-time tokens.
//!
//! * [`ServerConfig`]: a TOML file, flags and defaults.
//! * [`MasterKey`]: the key that encrypts every server file (environment variable, key file,
//!   or a development key with a loud warning).
//! * [`MetaStore`]: users, devices, tokens and hosted databases, in `server.blazedb`.
//! * [`Server::start`]: binds, serves `GET /health` and `GET /sync/{database}` (a WebSocket
//!   carrying a Noise session per device), and returns a [`ServerHandle`] whose
//!   [`ServerHandle::shutdown`] stops everything gracefully.
//!
//! ```no_run
//! use blazedb_server::{Server, ServerConfig};
//!
//! let config = ServerConfig {
//!     listen: "127.0.0.1:0".parse()?,
//!     ..ServerConfig::default()
//! };
//! let server = Server::start(config)?;
//! server.meta().create_database("bugs")?;
//! println!("listening on {}", server.url());
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod gate;
mod hosted;
mod keys;
mod log;
mod master_key;
mod meta;
mod server;
mod session;
pub mod tls;
mod util;

pub use config::{
    ConfigOverrides, DEFAULT_DATA_DIR, DEFAULT_HANDSHAKE_TIMEOUT_SECS, DEFAULT_LISTEN,
    DEFAULT_MAX_AUTH_FAILURES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_PER_SOURCE, DEFAULT_SEND_QUEUE, ServerConfig, TlsConfig, parse_listen,
};
pub use error::{ConfigError, MetaError, ServerError};
pub use master_key::{DEV_KEY_FILE, KeySource, MASTER_KEY_ENV, MasterKey, ResolvedKey};
pub use meta::{
    DATABASES_DIR, DEFAULT_ROLE, Device, MAX_TOKEN_TTL, META_FILE, MetaStore, STATIC_KEY_SETTING,
    TokenInfo, TokenState, User, check_database_name,
};
pub use server::{Server, ServerHandle};
pub use util::format_date;

/// Waits until `flag` turns true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
