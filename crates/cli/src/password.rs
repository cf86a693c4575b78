//! Where passwords come from: a file, an environment variable or the terminal — never the
//! command line, where other users could read it in the process list.

use std::io::IsTerminal;
use std::path::Path;

use crate::error::Failure;

/// The environment variable holding the database password.
pub const PASSWORD_ENV: &str = "BLAZEDB_PASSWORD";
/// The environment variable holding the new password for `passwd`.
pub const NEW_PASSWORD_ENV: &str = "BLAZEDB_NEW_PASSWORD";

/// Where a password is looked for, in order: the file, the variable, the terminal.
pub struct Source<'a> {
    pub file: Option<&'a Path>,
    pub env: &'static str,
    pub file_flag: &'static str,
    /// What is asked on the terminal (e.g. "Password for bugs.db").
    pub prompt: String,
    /// Ask twice on the terminal and compare (when choosing a new password).
    pub confirm: bool,
}

impl Source<'_> {
    pub fn get(&self) -> Result<String, Failure> {
        if let Some(path) = self.file {
            return from_file(path);
        }
        if let Some(value) = std::env::var_os(self.env) {
            let value = value
                .into_string()
                .map_err(|_| Failure::msg(format!("{} is not valid UTF-8", self.env)))?;
            if value.is_empty() {
                return Err(Failure::msg(format!("{} is set but empty", self.env)));
            }
            return Ok(value);
        }
        if !std::io::stdin().is_terminal() {
            return Err(Failure::msg(format!(
                "no password: set {}, pass {}, or run in a terminal",
                self.env, self.file_flag
            )));
        }
        let first = prompt(&format!("{}: ", self.prompt))?;
        if first.is_empty() {
            return Err(Failure::msg("the password is empty"));
        }
        if self.confirm {
            let second = prompt("Repeat the password: ")?;
            if second != first {
                return Err(Failure::msg("the passwords do not match"));
            }
        }
        Ok(first)
    }
}

fn prompt(text: &str) -> Result<String, Failure> {
    rpassword::prompt_password(text)
        .map_err(|e| Failure::msg(format!("cannot read the password from the terminal: {e}")))
}

/// The first line of a file, without its line ending.
fn from_file(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::msg(format!("cannot read password file {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Failure::msg(format!(
            "password file {} is not valid UTF-8",
            path.display()
        ))
    })?;
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(Failure::msg(format!(
            "password file {} has an empty first line",
            path.display()
        )));
    }
    Ok(line.to_owned())
}
