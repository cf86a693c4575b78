//! The one error type of the tool: a message for `blazedb: <message>` on stderr.

use std::fmt;
use std::io;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Printed as one line, exit code 1.
    Message(String),
    /// The reader of standard output went away (`blazedb export db c | head`): stop quietly.
    BrokenPipe,
}

impl Failure {
    pub fn msg(message: impl Into<String>) -> Self {
        Failure::Message(message.into())
    }

    /// The same failure with `prefix: ` before its message (a broken pipe stays as it is).
    pub fn context(self, prefix: impl fmt::Display) -> Self {
        match self {
            Failure::Message(m) => Failure::Message(format!("{prefix}: {m}")),
            Failure::BrokenPipe => Failure::BrokenPipe,
        }
    }

    /// An I/O error while doing `what` (e.g. "cannot write out.jsonl").
    pub fn io(what: impl fmt::Display, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Message(format!("{what}: {e}"))
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Always one line, whatever the underlying error text holds.
            Failure::Message(m) => {
                let mut lines = m.lines().map(str::trim).filter(|l| !l.is_empty());
                if let Some(first) = lines.next() {
                    f.write_str(first)?;
                }
                for l in lines {
                    write!(f, "; {l}")?;
                }
                Ok(())
            }
            Failure::BrokenPipe => f.write_str("broken pipe"),
        }
    }
}

impl From<blazedb_core::Error> for Failure {
    fn from(e: blazedb_core::Error) -> Self {
        Failure::Message(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}
