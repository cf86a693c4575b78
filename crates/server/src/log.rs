//! The server's log: one line per event on standard error. Never secrets (keys, tokens).

use std::fmt;

/// Something the operator should act on.
pub(crate) fn warn(message: fmt::Arguments<'_>) {
    eprintln!("blazedb-server: warning: {message}");
}

/// Something that went wrong on the server's side.
pub(crate) fn error(message: fmt::Arguments<'_>) {
    eprintln!("blazedb-server: error: {message}");
}

/// A notable event (a device enrolled or refused).
pub(crate) fn info(message: fmt::Arguments<'_>) {
    eprintln!("blazedb-server: {message}");
}
