//! The server master key: 32 bytes that encrypt every file the server writes (its SQLCipher
//! password, as 64 hex characters).
//!
//! Where it comes from, in this order:
//!
//! 1. the environment variable [`MASTER_KEY_ENV`] (64 hex characters), or
//! 2. a key file (`--master-key-file` or `master_key_file`, 64 hex characters) outside the
//!    data folder: a key beside the data it protects protects nothing;
//! 3. neither: development mode. The key is generated once into `<data_dir>/dev-master.key`
//!    (mode 0600) and every start warns loudly that production needs one of the above.
//!
//! Giving both the variable and a file is refused rather than silently preferring one. The key
//! is never printed, logged or put on a command line.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::config::ServerConfig;
use crate::error::ConfigError;

/// The environment variable holding the master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "BLAZEDB_MASTER_KEY";
/// The development key's file name, inside the data folder.
pub const DEV_KEY_FILE: &str = "dev-master.key";
/// Bytes of a master key.
pub const MASTER_KEY_LEN: usize = 32;

/// A master key. Wiped from memory when dropped; `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The [`MASTER_KEY_ENV`] environment variable.
    Environment,
    /// A key file outside the data folder.
    File(PathBuf),
    /// The development key in the data folder; `created` when this start generated it.
    Development { path: PathBuf, created: bool },
}

impl KeySource {
    /// True for the development key, which sits beside the data.
    pub fn is_development(&self) -> bool {
        matches!(self, KeySource::Development { .. })
    }
}

/// A master key, where it came from, and what the operator should be warned about.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: MasterKey,
    pub source: KeySource,
    /// Lines to show the operator (development mode, a key file others can read). Never the
    /// key itself.
    pub warnings: Vec<String>,
}

impl MasterKey {
    /// A new random key from the operating system.
    pub fn generate() -> Result<MasterKey, ConfigError> {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        getrandom::fill(key.as_mut_slice()).map_err(|e| {
            ConfigError::MasterKey(format!(
                "the operating system's random number generator failed: {e}"
            ))
        })?;
        Ok(MasterKey { key })
    }

    /// Reads 64 hex characters (surrounding whitespace ignored). `what` names the source in
    /// the error, which never repeats the text.
    pub fn from_hex(text: &str, what: &str) -> Result<MasterKey, ConfigError> {
        let text = text.trim();
        let bad = || {
            ConfigError::MasterKey(format!(
                "{what} must hold exactly {} hexadecimal characters (0-9, a-f), found {} \
                 characters{}",
                MASTER_KEY_LEN * 2,
                text.chars().count(),
                if text.chars().all(|c| c.is_ascii_hexdigit()) {
                    ""
                } else {
                    " including non-hexadecimal ones"
                }
            ))
        };
        if text.len() != MASTER_KEY_LEN * 2 {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        for (slot, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
            *slot = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
        }
        Ok(MasterKey { key })
    }

    /// The key as 64 lowercase hex characters: the SQLCipher password of every server file.
    pub fn password(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(MASTER_KEY_LEN * 2));
        for b in self.key.iter() {
            let _ = fmt::Write::write_fmt(&mut *text, format_args!("{b:02x}"));
        }
        text
    }

    /// The key for `config`, from the process environment ([`MASTER_KEY_ENV`]), the key file,
    /// or development mode.
    pub fn resolve_from_environment(config: &ServerConfig) -> Result<ResolvedKey, ConfigError> {
        let env = match std::env::var(MASTER_KEY_ENV) {
            Ok(value) => Some(Zeroizing::new(value)),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::MasterKey(format!(
                    "{MASTER_KEY_ENV} is not valid text; it must hold 64 hexadecimal characters"
                )));
            }
        };
        MasterKey::resolve(config, env.as_deref().map(String::as_str))
    }

    /// Like [`MasterKey::resolve_from_environment`] with the variable's value given.
    pub fn resolve(config: &ServerConfig, env: Option<&str>) -> Result<ResolvedKey, ConfigError> {
        let env = env.filter(|v| !v.trim().is_empty());
        let dev_path = config.data_dir.join(DEV_KEY_FILE);
        match (env, &config.master_key_file) {
            (Some(_), Some(file)) => Err(ConfigError::MasterKey(format!(
                "both {MASTER_KEY_ENV} and a key file ({}) are given; use one",
                file.display()
            ))),
            (Some(value), None) => Ok(ResolvedKey {
                key: MasterKey::from_hex(value, MASTER_KEY_ENV)?,
                source: KeySource::Environment,
                warnings: Vec::new(),
            }),
            (None, Some(file)) => {
                let dev = is_same_file(file, &dev_path);
                if !dev && inside(&config.data_dir, file) {
                    return Err(ConfigError::MasterKey(format!(
                        "the key file {} is inside the data folder {}; keep the master key \
                         away from the data it protects",
                        file.display(),
                        config.data_dir.display()
                    )));
                }
                let key = read_key_file(file)?;
                let mut warnings = Vec::new();
                if let Some(w) = permission_warning(file) {
                    warnings.push(w);
                }
                if dev {
                    warnings.push(dev_warning(file, false));
                    Ok(ResolvedKey {
                        key,
                        source: KeySource::Development {
                            path: file.clone(),
                            created: false,
                        },
                        warnings,
                    })
                } else {
                    Ok(ResolvedKey {
                        key,
                        source: KeySource::File(file.clone()),
                        warnings,
                    })
                }
            }
            (None, None) => {
                let created = if dev_path.exists() {
                    false
                } else if config.meta_path().exists() {
                    // A data folder made with a real key: a development key would not open it,
                    // and must not be left behind in it.
                    return Err(ConfigError::MasterKey(format!(
                        "{} was created with a master key that is not given here; set \
                         {MASTER_KEY_ENV} or --master-key-file",
                        config.data_dir.display()
                    )));
                } else {
                    create_dev_key(&config.data_dir, &dev_path)?;
                    true
                };
                let key = read_key_file(&dev_path)?;
                Ok(ResolvedKey {
                    key,
                    warnings: vec![dev_warning(&dev_path, created)],
                    source: KeySource::Development {
                        path: dev_path,
                        created,
                    },
                })
            }
        }
    }
}

fn dev_warning(path: &Path, created: bool) -> String {
    format!(
        "WARNING: DEVELOPMENT MODE. {} the master key {} INSIDE the data folder, beside the \
         data it encrypts: anyone who copies the folder can read every database. In production \
         give the key in the {MASTER_KEY_ENV} environment variable or with --master-key-file \
         pointing outside the data folder.",
        if created { "Generated" } else { "Using" },
        path.display()
    )
}

fn read_key_file(path: &Path) -> Result<MasterKey, ConfigError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        ConfigError::MasterKey(format!("cannot read the key file {}: {e}", path.display()))
    })?);
    MasterKey::from_hex(&text, &format!("the key file {}", path.display()))
}

fn create_dev_key(data_dir: &Path, path: &Path) -> Result<(), ConfigError> {
    crate::meta::create_private_dir(data_dir).map_err(|e| {
        ConfigError::MasterKey(format!(
            "cannot create the data folder {}: {e}",
            data_dir.display()
        ))
    })?;
    let key = MasterKey::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let cannot = |e: std::io::Error| {
        ConfigError::MasterKey(format!(
            "cannot write the development key {}: {e}",
            path.display()
        ))
    };
    let mut file = options.open(path).map_err(cannot)?;
    let mut text = key.password();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(cannot)?;
    file.sync_all().map_err(cannot)?;
    Ok(())
}

/// The absolute, symlink-free form of `path`, as far as it exists.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

fn is_same_file(a: &Path, b: &Path) -> bool {
    resolved(a) == resolved(b)
}

fn inside(dir: &Path, file: &Path) -> bool {
    let dir = resolved(dir);
    let file = resolved(file);
    file.starts_with(&dir)
}

#[cfg(unix)]
fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "warning: the key file {} can be read by other users (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn permission_warning(_path: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn config(data_dir: &Path) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.to_owned(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn a_key_from_the_environment_is_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let resolved = MasterKey::resolve(&config(dir.path()), Some(KEY)).unwrap();
        assert_eq!(resolved.source, KeySource::Environment);
        assert!(resolved.warnings.is_empty());
        assert_eq!(resolved.key.password().as_str(), KEY);
        assert_eq!(format!("{:?}", resolved.key), "MasterKey(..)");
        assert!(!format!("{resolved:?}").contains(KEY));
    }

    #[test]
    fn a_malformed_key_is_refused_without_repeating_it() {
        for bad in [&KEY[..62], &format!("{KEY}00"), &KEY.replace('a', "g"), "x"] {
            let err = MasterKey::from_hex(bad, MASTER_KEY_ENV).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("64 hexadecimal"), "{text}");
            assert!(text.contains(MASTER_KEY_ENV), "{text}");
            if bad.len() > 8 {
                assert!(!text.contains(&bad[..8]), "{text}");
            }
        }
        // Uppercase and surrounding whitespace are fine.
        let key = MasterKey::from_hex(&format!(" {}\n", KEY.to_uppercase()), "k").unwrap();
        assert_eq!(key.password().as_str(), KEY);
    }

    #[test]
    fn a_key_file_outside_the_data_folder_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.key");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        let mut config = config(&dir.path().join("data"));
        config.master_key_file = Some(file.clone());
        let resolved = MasterKey::resolve(&config, None).unwrap();
        assert_eq!(resolved.source, KeySource::File(file));
        assert_eq!(resolved.key.password().as_str(), KEY);
    }

    #[test]
    fn a_key_file_inside_the_data_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("keys")).unwrap();
        let file = data.join("keys/master.key");
        std::fs::write(&file, KEY).unwrap();
        let mut config = config(&data);
        // Also through a path that does not look like it is inside.
        config.master_key_file = Some(dir.path().join("data/../data/keys/master.key"));
        let err = MasterKey::resolve(&config, None).unwrap_err();
        assert!(err.to_string().contains("inside the data folder"), "{err}");
    }

    #[test]
    fn both_the_variable_and_a_key_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.master_key_file = Some(dir.path().join("elsewhere.key"));
        let err = MasterKey::resolve(&config, Some(KEY)).unwrap_err();
        assert!(err.to_string().contains("use one"), "{err}");
    }

    #[test]
    fn without_a_key_a_development_key_is_generated_once_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = config(&data);
        let first = MasterKey::resolve(&config, None).unwrap();
        let path = data.join(DEV_KEY_FILE);
        assert_eq!(
            first.source,
            KeySource::Development {
                path: path.clone(),
                created: true
            }
        );
        assert!(
            first
                .warnings
                .iter()
                .any(|w| w.contains("DEVELOPMENT MODE"))
        );
        assert!(first.warnings.iter().any(|w| w.contains(MASTER_KEY_ENV)));
        assert!(
            !first
                .warnings
                .concat()
                .contains(first.key.password().as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = MasterKey::resolve(&config, None).unwrap();
        assert!(matches!(
            second.source,
            KeySource::Development { created: false, .. }
        ));
        assert_eq!(second.key.password(), first.key.password());
        assert!(!second.warnings.is_empty(), "every start warns");
    }

    #[test]
    fn naming_the_development_key_as_key_file_is_allowed_but_still_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut config = config(&data);
        let generated = MasterKey::resolve(&config, None).unwrap();
        config.master_key_file = Some(data.join(DEV_KEY_FILE));
        let named = MasterKey::resolve(&config, None).unwrap();
        assert!(named.source.is_development());
        assert!(!named.warnings.is_empty());
        assert_eq!(named.key.password(), generated.key.password());
    }

    #[test]
    fn a_missing_key_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(&dir.path().join("data"));
        config.master_key_file = Some(dir.path().join("missing.key"));
        let err = MasterKey::resolve(&config, None).unwrap_err();
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
