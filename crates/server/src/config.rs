//! [`ServerConfig`]: an optional TOML file, overridden by command-line flags, with sensible
//! defaults for everything, so `blazedb-server` starts with no arguments at all.
//!
//! ```toml
//! data_dir = "/var/lib/blazedb"
//! listen = "0.0.0.0:7420"
//! max_connections = 4096
//! send_queue = 1024
//! handshake_timeout_secs = 10
//! max_pending = 256
//! max_pending_per_source = 32
//! max_auth_failures = 30
//! master_key_file = "/etc/blazedb/master.key"
//!
//! [tls]
//! cert = "/etc/blazedb/cert.pem"
//! key = "/etc/blazedb/key.pem"
//! ```
//!
//! Relative paths in the file are relative to the file's folder; relative paths in flags are
//! relative to the working directory. Unknown keys are refused, with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// Where the server keeps its files unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./blazedb-server-data";
/// Where the server listens unless told otherwise (loopback only: exposing the server is a
/// decision the operator makes).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// Default limit of simultaneous sync connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default bound of each connection's outgoing message queue.
pub const DEFAULT_SEND_QUEUE: usize = 1024;
/// Default time a client has to finish the TLS and Noise handshakes.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default number of newest op-log entries each hosted database keeps; a device whose cursor
/// is older gets a snapshot instead.
pub const DEFAULT_OPLOG_KEEP: u64 = 100_000;
/// Default seconds between two compactions of every hosted database's op log.
pub const DEFAULT_COMPACT_INTERVAL_SECS: u64 = 60;
const MAX_COMPACT_INTERVAL_SECS: u64 = 7 * 24 * 3600;

/// Default limit of connections that have not authenticated yet, from all sources.
pub const DEFAULT_MAX_PENDING: usize = 256;
/// Default limit of connections that have not authenticated yet, from one source address.
pub const DEFAULT_MAX_PENDING_PER_SOURCE: usize = 32;
/// Default number of failed authentications one source may have in a minute before it is
/// throttled.
pub const DEFAULT_MAX_AUTH_FAILURES: u32 = 30;

const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
const MAX_SEND_QUEUE: usize = 1_000_000;
const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 3600;

/// Whether and how the server speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsConfig {
    /// Plain WebSocket (`ws://`).
    #[default]
    Off,
    /// TLS 1.3 with this certificate chain and private key (PEM files).
    Files { cert: PathBuf, key: PathBuf },
    /// TLS 1.3 with a self-signed certificate for `localhost` and `127.0.0.1`, made at start
    /// and written to `<data_dir>/tls/cert.pem` (and `key.pem`) so clients can trust it.
    SelfSigned,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The folder holding `server.blazedb` and `databases/`.
    pub data_dir: PathBuf,
    /// The address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Simultaneous sync connections; more are answered with 503.
    pub max_connections: usize,
    /// Messages queued for one connection before it counts as too slow and is closed.
    pub send_queue: usize,
    /// Time a client has for each HTTP request's headers, and from its connection to being
    /// authenticated (TLS and Noise handshakes, its first messages) all together.
    pub handshake_timeout: Duration,
    /// Connections that have not authenticated yet, from all sources; more are dropped
    /// before any handshake.
    pub max_pending: usize,
    /// Connections that have not authenticated yet, from one source address (IPv6: per /64).
    pub max_pending_per_source: usize,
    /// Failed authentications (handshakes, enrollments, refused devices) one source may have
    /// in a minute; past that its connections are dropped for a backoff that doubles, up to
    /// a minute.
    pub max_auth_failures: u32,
    pub tls: TlsConfig,
    /// A file holding the master key (64 hex characters); `None` means the
    /// `BLAZEDB_MASTER_KEY` environment variable, or development mode.
    pub master_key_file: Option<PathBuf>,
    /// Newest op-log entries each hosted database keeps when it compacts (0: only what the
    /// connected devices still stream from).
    pub oplog_keep: u64,
    /// Time between two compactions.
    pub compact_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            send_queue: DEFAULT_SEND_QUEUE,
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_source: DEFAULT_MAX_PENDING_PER_SOURCE,
            max_auth_failures: DEFAULT_MAX_AUTH_FAILURES,
            tls: TlsConfig::Off,
            master_key_file: None,
            oplog_keep: DEFAULT_OPLOG_KEEP,
            compact_interval: Duration::from_secs(DEFAULT_COMPACT_INTERVAL_SECS),
        }
    }
}

/// Settings given as flags; each one that is set wins over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub max_connections: Option<usize>,
    pub send_queue: Option<usize>,
    pub handshake_timeout_secs: Option<u64>,
    pub max_pending: Option<usize>,
    pub max_pending_per_source: Option<usize>,
    pub max_auth_failures: Option<u32>,
    /// Both or neither of `tls_cert` and `tls_key`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: bool,
    pub master_key_file: Option<PathBuf>,
    pub oplog_keep: Option<u64>,
    pub compact_interval_secs: Option<u64>,
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    max_connections: Option<usize>,
    send_queue: Option<usize>,
    handshake_timeout_secs: Option<u64>,
    max_pending: Option<usize>,
    max_pending_per_source: Option<usize>,
    max_auth_failures: Option<u32>,
    tls: Option<FileTls>,
    tls_self_signed: Option<bool>,
    master_key_file: Option<PathBuf>,
    oplog_keep: Option<u64>,
    compact_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
}

impl ServerConfig {
    /// The configuration from `file` (if given), then `overrides`, then the defaults.
    pub fn load(
        file: Option<&Path>,
        overrides: &ConfigOverrides,
    ) -> Result<ServerConfig, ConfigError> {
        let (parsed, base) = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                        path: path.to_owned(),
                        source,
                    })?;
                let base = path.parent().map(Path::to_owned).unwrap_or_default();
                (parse_file(&text, path)?, base)
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        ServerConfig::merge(parsed, &base, overrides)
    }

    /// Parses configuration text as if read from `origin` (used in error messages; relative
    /// paths are resolved against its folder).
    pub fn from_toml(
        text: &str,
        origin: &Path,
        overrides: &ConfigOverrides,
    ) -> Result<ServerConfig, ConfigError> {
        let base = origin.parent().map(Path::to_owned).unwrap_or_default();
        ServerConfig::merge(parse_file(text, origin)?, &base, overrides)
    }

    fn merge(
        file: FileConfig,
        base: &Path,
        flags: &ConfigOverrides,
    ) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let from_file = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| file.data_dir.map(from_file))
            .unwrap_or(defaults.data_dir);
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "it is empty"));
        }
        let listen = match flags.listen.as_deref().or(file.listen.as_deref()) {
            Some(text) => parse_listen(text)?,
            None => defaults.listen,
        };
        let max_connections = ranged(
            "max_connections",
            flags.max_connections.or(file.max_connections),
            defaults.max_connections,
            1..=MAX_CONNECTIONS_LIMIT,
            "",
        )?;
        let send_queue = ranged(
            "send_queue",
            flags.send_queue.or(file.send_queue),
            defaults.send_queue,
            1..=MAX_SEND_QUEUE,
            "",
        )?;
        let timeout = ranged(
            "handshake_timeout_secs",
            flags.handshake_timeout_secs.or(file.handshake_timeout_secs),
            DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            1..=MAX_HANDSHAKE_TIMEOUT_SECS,
            " seconds",
        )?;
        let max_pending = ranged(
            "max_pending",
            flags.max_pending.or(file.max_pending),
            defaults.max_pending,
            1..=MAX_CONNECTIONS_LIMIT,
            "",
        )?;
        let max_pending_per_source = ranged(
            "max_pending_per_source",
            flags.max_pending_per_source.or(file.max_pending_per_source),
            defaults.max_pending_per_source,
            1..=MAX_CONNECTIONS_LIMIT,
            "",
        )?;
        let max_auth_failures = ranged(
            "max_auth_failures",
            flags.max_auth_failures.or(file.max_auth_failures),
            defaults.max_auth_failures,
            1..=1_000_000,
            "",
        )?;

        let file_tls = match (file.tls, file.tls_self_signed.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(invalid(
                    "tls",
                    "the configuration file sets both [tls] and tls_self_signed; choose one",
                ));
            }
            (Some(t), false) => TlsConfig::Files {
                cert: from_file(t.cert),
                key: from_file(t.key),
            },
            (None, true) => TlsConfig::SelfSigned,
            (None, false) => TlsConfig::Off,
        };
        let tls = match (&flags.tls_cert, &flags.tls_key, flags.tls_self_signed) {
            (Some(_), _, true) | (_, Some(_), true) => {
                return Err(invalid(
                    "tls",
                    "--tls-self-signed cannot be combined with --tls-cert/--tls-key",
                ));
            }
            (Some(cert), Some(key), false) => TlsConfig::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (Some(_), None, false) => {
                return Err(invalid("tls", "--tls-cert needs --tls-key too"));
            }
            (None, Some(_), false) => {
                return Err(invalid("tls", "--tls-key needs --tls-cert too"));
            }
            (None, None, true) => TlsConfig::SelfSigned,
            (None, None, false) => file_tls,
        };
        let master_key_file = flags
            .master_key_file
            .clone()
            .or_else(|| file.master_key_file.map(from_file));
        let oplog_keep = flags
            .oplog_keep
            .or(file.oplog_keep)
            .unwrap_or(defaults.oplog_keep);
        let compact_every = ranged(
            "compact_interval_secs",
            flags.compact_interval_secs.or(file.compact_interval_secs),
            DEFAULT_COMPACT_INTERVAL_SECS,
            1..=MAX_COMPACT_INTERVAL_SECS,
            " seconds",
        )?;

        Ok(ServerConfig {
            data_dir,
            listen,
            max_connections,
            send_queue,
            handshake_timeout: Duration::from_secs(timeout),
            max_pending,
            max_pending_per_source,
            max_auth_failures,
            tls,
            master_key_file,
            oplog_keep,
            compact_interval: Duration::from_secs(compact_every),
        })
    }

    /// The meta store's file.
    pub fn meta_path(&self) -> PathBuf {
        self.data_dir.join(crate::meta::META_FILE)
    }
}

/// The setting's value (`given`, else `default`), refused when outside `range`.
fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
    setting: &'static str,
    given: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<T, ConfigError> {
    let value = given.unwrap_or(default);
    if !range.contains(&value) {
        return Err(invalid(
            setting,
            format!(
                "{value} is not between {} and {}{unit}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

fn parse_file(text: &str, origin: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        // One line, as every error the server prints: "line L, column C: message" instead of
        // the parser's multi-line excerpt of the file.
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                // The line itself names the key; at most 80 characters of it.
                let source: String = text
                    .lines()
                    .nth(line - 1)
                    .unwrap_or("")
                    .trim()
                    .chars()
                    .take(80)
                    .collect();
                format!("line {line}, column {column} ({source}): {message}")
            }
            None => message,
        };
        ConfigError::Syntax {
            path: origin.to_owned(),
            reason,
        }
    })
}

/// Parses a listening address: an IP address and a port (`127.0.0.1:7420`, `[::1]:7420`).
pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            "listen",
            format!(
                "{text:?} is not an IP address and port such as 127.0.0.1:7420 or [::]:7420 \
                 (host names are not accepted)"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_toml(
            text,
            Path::new("/etc/blazedb/server.toml"),
            &ConfigOverrides::default(),
        )
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), ServerConfig::default());
        let defaults = ServerConfig::default();
        assert_eq!(defaults.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(defaults.max_connections, 4096);
        assert_eq!(defaults.send_queue, 1024);
        assert_eq!(defaults.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_setting_is_read_and_relative_paths_follow_the_file() {
        let config = parse(
            r#"
            data_dir = "data"
            listen = "0.0.0.0:9000"
            max_connections = 10
            send_queue = 5
            handshake_timeout_secs = 3
            master_key_file = "/secrets/master.key"
            [tls]
            cert = "cert.pem"
            key = "/keys/key.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/blazedb/data"));
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.max_connections, 10);
        assert_eq!(config.send_queue, 5);
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert_eq!(
            config.master_key_file.as_deref(),
            Some(Path::new("/secrets/master.key"))
        );
        assert_eq!(
            config.tls,
            TlsConfig::Files {
                cert: "/etc/blazedb/cert.pem".into(),
                key: "/keys/key.pem".into()
            }
        );
    }

    #[test]
    fn a_syntax_error_is_one_line_with_its_line_and_column() {
        let err = parse("data_dir = \"d\"\nlisten = 5\n").unwrap_err();
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("line 2, column 10"), "{text}");
        assert!(text.contains("expected a string"), "{text}");
        let err = parse("listen = [\n").unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let err = parse("listen = \"127.0.0.1:1\"\nmax_conections = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{text}");
        assert!(text.contains("max_conections"), "{text}");
        assert!(text.contains("server.toml"), "{text}");

        let err = parse("[tls]\ncert = \"a\"\nkey = \"b\"\npassword = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let err = parse("max_connections = \"many\"").unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
        assert!(parse("this is not toml").is_err());
    }

    #[test]
    fn a_bad_listen_address_is_refused_clearly() {
        for bad in [
            "localhost",
            "127.0.0.1",
            "127.0.0.1:99999",
            "nowhere:80",
            "",
        ] {
            let err = parse(&format!("listen = {bad:?}")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("listen"), "{text}");
            assert!(text.contains("IP address and port"), "{text}");
        }
        assert_eq!(parse_listen("[::1]:7420").unwrap().port(), 7420);
    }

    #[test]
    fn out_of_range_limits_are_refused() {
        for (text, setting) in [
            ("max_connections = 0", "max_connections"),
            ("send_queue = 0", "send_queue"),
            ("handshake_timeout_secs = 0", "handshake_timeout_secs"),
            ("handshake_timeout_secs = 100000", "handshake_timeout_secs"),
            ("max_pending = 0", "max_pending"),
            ("max_pending_per_source = 0", "max_pending_per_source"),
            ("max_auth_failures = 0", "max_auth_failures"),
            ("max_auth_failures = 2000000", "max_auth_failures"),
            ("compact_interval_secs = 0", "compact_interval_secs"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(setting), "{err}");
        }
        // A negative number is refused by its type, not wrapped around.
        assert!(parse("max_connections = -1").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let flags = ConfigOverrides {
            data_dir: Some("/flag/data".into()),
            listen: Some("127.0.0.1:0".into()),
            max_connections: Some(7),
            tls_self_signed: true,
            ..ConfigOverrides::default()
        };
        let config = ServerConfig::from_toml(
            "data_dir = \"filedata\"\nlisten = \"0.0.0.0:1\"\nmax_connections = 3\nsend_queue = 9\n\
             [tls]\ncert = \"c\"\nkey = \"k\"\n",
            Path::new("/etc/x.toml"),
            &flags,
        )
        .unwrap();
        assert_eq!(config.data_dir, Path::new("/flag/data"));
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.max_connections, 7);
        assert_eq!(
            config.send_queue, 9,
            "a setting without a flag keeps the file's value"
        );
        assert_eq!(config.tls, TlsConfig::SelfSigned);
    }

    #[test]
    fn tls_settings_that_contradict_each_other_are_refused() {
        assert!(parse("tls_self_signed = true\n[tls]\ncert = \"c\"\nkey = \"k\"\n").is_err());
        let half = ConfigOverrides {
            tls_cert: Some("c".into()),
            ..ConfigOverrides::default()
        };
        let err = ServerConfig::load(None, &half).unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let both = ConfigOverrides {
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            tls_self_signed: true,
            ..ConfigOverrides::default()
        };
        assert!(ServerConfig::load(None, &both).is_err());
        assert!(
            parse("[tls]\ncert = \"c\"\n").is_err(),
            "a [tls] table needs both files"
        );
    }

    #[test]
    fn a_missing_configuration_file_is_reported_with_its_path() {
        let err = ServerConfig::load(
            Some(Path::new("/nonexistent/blazedb.toml")),
            &ConfigOverrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Unreadable { .. }));
        assert!(
            err.to_string().contains("/nonexistent/blazedb.toml"),
            "{err}"
        );
    }
}
