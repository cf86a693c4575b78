//! [`DatabaseName`]: the one rule for what names a database, checked once where a name
//! comes in: a server's admin commands, a device's options, a sync engine's name. (The wire
//! carries any name of 1 to 255 bytes; a name that breaks the rule names no database.)

use std::fmt;
use std::str::FromStr;

/// Longest database name, in bytes.
pub const MAX_DATABASE_NAME_LEN: usize = 255;

/// A valid database name: 1 to [`MAX_DATABASE_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`, and
/// not `.` or `..` (a server stores each hosted database in a file named after it).
///
/// ```
/// use blazedb_protocol::DatabaseName;
///
/// let name: DatabaseName = "bugs".parse()?;
/// assert_eq!(name.as_str(), "bugs");
/// assert!("..".parse::<DatabaseName>().is_err());
/// assert!("my bugs".parse::<DatabaseName>().is_err());
/// # Ok::<(), blazedb_protocol::InvalidDatabaseName>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatabaseName(String);

/// Why a string is not a [`DatabaseName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid database name {name:?}: {reason}")]
#[non_exhaustive]
pub struct InvalidDatabaseName {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl DatabaseName {
    /// Checks `name` against the rule.
    pub fn new(name: impl Into<String>) -> Result<DatabaseName, InvalidDatabaseName> {
        let name = name.into();
        match DatabaseName::check(&name) {
            Ok(()) => Ok(DatabaseName(name)),
            Err(reason) => Err(InvalidDatabaseName { name, reason }),
        }
    }

    /// Why `name` is not a valid database name, if it is not.
    pub fn check(name: &str) -> Result<(), &'static str> {
        match flaw(name) {
            Some(flaw) => Err(flaw.reason()),
            None => Ok(()),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DatabaseName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseName {
    type Err = InvalidDatabaseName;
    fn from_str(s: &str) -> Result<DatabaseName, InvalidDatabaseName> {
        DatabaseName::new(s)
    }
}

impl TryFrom<String> for DatabaseName {
    type Error = InvalidDatabaseName;
    fn try_from(s: String) -> Result<DatabaseName, InvalidDatabaseName> {
        DatabaseName::new(s)
    }
}

impl TryFrom<&str> for DatabaseName {
    type Error = InvalidDatabaseName;
    fn try_from(s: &str) -> Result<DatabaseName, InvalidDatabaseName> {
        DatabaseName::new(s)
    }
}

/// What can be wrong with a database name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    Empty,
    TooLong,
    Characters,
    Dots,
}

impl Flaw {
    /// Why the name is refused, after the name (an administrator's or a user's mistake).
    fn reason(self) -> &'static str {
        match self {
            Flaw::Empty => "it is empty",
            Flaw::TooLong => "it is longer than 255 bytes",
            Flaw::Characters => "only letters A-Z and a-z, digits, '.', '_' and '-' are allowed",
            Flaw::Dots => "'.' and '..' are not database names",
        }
    }
}

/// The first thing wrong with `name`, if anything is.
fn flaw(name: &str) -> Option<Flaw> {
    if name.is_empty() {
        Some(Flaw::Empty)
    } else if name.len() > MAX_DATABASE_NAME_LEN {
        Some(Flaw::TooLong)
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some(Flaw::Characters)
    } else if name == "." || name == ".." {
        Some(Flaw::Dots)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_of_letters_digits_dots_underscores_and_dashes_are_valid() {
        for name in [
            "bugs",
            "a",
            "team-1.bugs_v2",
            &"x".repeat(MAX_DATABASE_NAME_LEN),
            "...",
        ] {
            assert!(DatabaseName::new(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn empty_long_dotted_and_other_names_are_refused_with_the_reason() {
        for (name, reason) in [
            ("", "empty"),
            (&*"x".repeat(MAX_DATABASE_NAME_LEN + 1), "longer than 255"),
            (".", "'.' and '..'"),
            ("..", "'.' and '..'"),
            ("my bugs", "only letters"),
            ("../etc", "only letters"),
            ("bugs/x", "only letters"),
            ("büg", "only letters"),
        ] {
            let err = DatabaseName::new(name).expect_err(name);
            assert!(err.to_string().contains(reason), "{name:?}: {err}");
        }
    }
}
