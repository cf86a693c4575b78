//! `blazedb sync DB --server URL --database NAME`: sync a database file with a database on a
//! `blazedb-server`, once (until in step) or continuously.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::collections::HashSet;

use blazedb_core::{Database, Uuid};
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteState, RemoteStatus, SyncExt};
use blazedb_sync::{Mode, SyncPolicy};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::{self, Ctx};
use crate::error::Failure;

pub const HELP: &str = "\
The first time a database syncs with a server it needs an enrollment token from the server's
administrator (`blazedb-server admin token create USER`). The token names the server's key, so
even the first connection cannot be intercepted; the database then keeps the server's key and its
own key pair (encrypted, in the file) and needs no token again.

A command line is visible to other users of the machine: prefer `--enroll -` (the token is read
from standard input) or the BLAZEDB_ENROLL_TOKEN environment variable to `--enroll TOKEN`.

With --once (the default) the command returns when everything written here has reached the
server and everything the server had is here (at most --timeout seconds). With --follow it keeps
syncing, reconnecting after failures, until interrupted; writes other programs make to the file
are sent within 200 ms, and every change of connection state is
reported on stderr.

With --collections, --exclude-collections, --where and --exclude-field the database asks the
server for less than the access rules allow (a sync policy); records that leave what it asks
for are removed from this file only. Writes the server refuses (access rules) are undone here
by the server and kept in the file's rejection inbox; each is printed once per run.

EXAMPLES:
  BLAZEDB_ENROLL_TOKEN=bzt1_... blazedb sync bugs.blazedb --server ws://127.0.0.1:7420 --database bugs
  blazedb sync bugs.blazedb --server wss://sync.example.com --database bugs --follow
  blazedb sync bugs.blazedb --server wss://localhost:7420 --database bugs --ca-file cert.pem --once
  blazedb sync bugs.blazedb --server ws://127.0.0.1:7420 --database bugs --collections bugs \\
      --where '{\"status\": \"open\"}' --exclude-field auditLog";

/// Where the enrollment token comes from when `--enroll` is not given.
const TOKEN_ENV: &str = "BLAZEDB_ENROLL_TOKEN";

/// The `sync` command's arguments.
#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// The database file
    pub db: PathBuf,
    /// The server: ws://HOST:PORT or wss://HOST:PORT
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The database's name on the server
    #[arg(long, value_name = "NAME")]
    pub database: String,
    /// A one-time enrollment token (`-`: read it from standard input); needed only the first time
    #[arg(long, value_name = "TOKEN")]
    pub enroll: Option<String>,
    /// Sync until in step, then exit (the default)
    #[arg(long, conflicts_with = "follow")]
    pub once: bool,
    /// Keep syncing until interrupted
    #[arg(long)]
    pub follow: bool,
    /// Which way operations flow: bidirectional, read-only (only pull) or write-only (only push)
    #[arg(long, default_value = "bidirectional", value_parser = parse_mode)]
    pub mode: Mode,
    /// PEM file of the certificate authorities to trust for wss:// instead of the public ones
    /// (a private CA, or a development server's self-signed certificate)
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// With --once: give up after this many seconds
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = crate::topology::parse_timeout)]
    pub timeout: Duration,
    /// Sync only these collections (comma-separated); records of others already here are
    /// removed from this file, not from the server
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub collections: Vec<String>,
    /// Do not sync these collections (comma-separated)
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub exclude_collections: Vec<String>,
    /// Sync only records matching this filter (the language of `query --where`)
    #[arg(long = "where", value_name = "JSON")]
    pub filter: Option<String>,
    /// Do not sync this field (repeat for more)
    #[arg(long = "exclude-field", value_name = "FIELD")]
    pub exclude_fields: Vec<String>,
}

/// The sync policy the flags ask for, if any.
fn policy(args: &SyncArgs) -> Result<Option<SyncPolicy>, Failure> {
    let mut policy = SyncPolicy::new()
        .collections(args.collections.iter().filter(|c| !c.is_empty()))
        .exclude_collections(args.exclude_collections.iter().filter(|c| !c.is_empty()))
        .exclude_fields(args.exclude_fields.iter());
    if let Some(filter) = &args.filter {
        policy = policy
            .filter_json(filter)
            .map_err(|e| Failure::msg(format!("--where: {e}")))?;
    }
    Ok((!policy.is_everything()).then_some(policy))
}

/// Prints the writes the server refused that are not printed yet (they stay in the file's
/// rejection inbox).
fn print_rejections(db: &Database, seen: &mut HashSet<(Uuid, u64)>) {
    let Ok(rejections) = db.replication().rejections() else {
        return;
    };
    for r in rejections {
        if seen.insert((r.op.id.origin.0, r.op.id.seq)) {
            eprintln!(
                "blazedb: the server refused a write to {}/{} ({}): {}",
                r.op.collection, r.op.record, r.code, r.reason
            );
        }
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::from_str(s).map_err(|e| e.to_string())
}

fn token(arg: Option<&str>) -> Result<Option<String>, Failure> {
    match arg {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                Failure::io("cannot read the enrollment token from standard input", e)
            })?;
            let text = text.trim().to_owned();
            if text.is_empty() {
                return Err(Failure::msg("standard input held no enrollment token"));
            }
            Ok(Some(text))
        }
        Some(token) => Ok(Some(token.to_owned())),
        None => Ok(std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())),
    }
}

pub fn run(ctx: &Ctx, args: &SyncArgs) -> Result<(), Failure> {
    let token = token(args.enroll.as_deref())?;
    let db = commands::open(ctx, &args.db)?;
    let mut options = RemoteOptions::default().mode(args.mode).maybe_enroll(token);
    options.ca_file = args.ca_file.clone();
    options.policy = policy(args)?;
    let remote = RemoteNode::new(args.server.clone(), args.database.clone());
    let sync = db
        .enable_sync(remote, options)
        .map_err(|e| Failure::msg(e.to_string()))?;
    let mut seen = HashSet::new();
    if args.follow {
        follow(&sync, &db, &mut seen)
    } else {
        let result = once(&sync, &args.db, args.timeout);
        print_rejections(&db, &mut seen);
        result
    }
}

fn summary(status: &RemoteStatus) -> String {
    let (sent, applied) = status
        .connection
        .as_ref()
        .map_or((0, 0), |c| (c.ops_sent, c.ops_applied));
    let mut line = format!(
        "{sent} operations sent, {applied} received; {} bytes out, {} bytes in",
        status.bytes_sent, status.bytes_received
    );
    if let Some(c) = &status.connection {
        if c.rejections_received > 0 {
            line.push_str(&format!(
                "; {} writes refused by the server",
                c.rejections_received
            ));
        }
        if c.records_purged > 0 {
            line.push_str(&format!(
                "; {} records left this file's scope",
                c.records_purged
            ));
        }
    }
    line
}

fn once(
    sync: &blazedb_sync::remote::RemoteSync,
    db: &Path,
    timeout: Duration,
) -> Result<(), Failure> {
    let bar = ProgressBar::new(0);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {percent}%")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let result = sync.wait_synced(timeout, |status| {
        if let Some(c) = &status.connection {
            bar.set_length(1000);
            bar.set_position((c.catch_up_progress() * 1000.0) as u64);
            bar.set_message(match c.snapshot_in {
                // The server's log no longer reaches back to our cursor: record states come.
                Some((done, total)) => format!("receiving a snapshot, {done}/{total} records"),
                None => format!(
                    "syncing, {}/{} log entries, {} of ours pending",
                    c.cursor.saturating_sub(c.cursor_at_start),
                    c.peer_head.saturating_sub(c.cursor_at_start),
                    c.ops_pending
                ),
            });
        } else {
            bar.set_message(match &status.state {
                RemoteState::Connecting { attempt } => format!("connecting (attempt {attempt})"),
                RemoteState::Waiting { retry_in, .. } => {
                    format!("retrying in {} ms", retry_in.as_millis())
                }
                _ => "waiting".to_owned(),
            });
        }
        bar.tick();
    });
    bar.finish_and_clear();
    match result {
        Ok(status) => {
            println!("{} is in sync: {}", db.display(), summary(&status));
            Ok(())
        }
        Err(e) => {
            let status = sync.status();
            let why = status.last_error.unwrap_or_else(|| e.to_string());
            Err(Failure::msg(format!("sync did not finish: {why}")))
        }
    }
}

fn follow(
    sync: &blazedb_sync::remote::RemoteSync,
    db: &Database,
    seen: &mut HashSet<(Uuid, u64)>,
) -> Result<(), Failure> {
    let mut last: Option<String> = None;
    loop {
        print_rejections(db, seen);
        // Other programs may write to the file meanwhile: their commits do not wake this
        // process's engine, so it looks for new op-log entries at every round.
        let _ = sync.engine().rescan();
        let status = sync.status();
        let line = match &status.state {
            RemoteState::Connected => format!("connected ({})", summary(&status)),
            RemoteState::Connecting { attempt } => format!("connecting (attempt {attempt})"),
            RemoteState::Waiting { retry_in, .. } if !retry_in.is_zero() => format!(
                "disconnected: {}; retrying",
                status.last_error.clone().unwrap_or_default()
            ),
            RemoteState::Failed => {
                return Err(Failure::msg(format!(
                    "sync stopped: {}",
                    status.last_error.unwrap_or_default()
                )));
            }
            _ => String::new(),
        };
        let state_changed =
            last.as_deref().map(|l| l.split(' ').next()) != Some(line.split(' ').next());
        if !line.is_empty() && state_changed {
            eprintln!("blazedb: {line}");
            last = Some(line);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
