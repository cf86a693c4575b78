//! `blazedb`: create, inspect, query, import, export and sync BlazeDB databases.
//!
//! Every error ends the program with one line `blazedb: <message>` on stderr and exit code 1
//! (2 for a command line clap rejects). See docs/cli.md.

mod commands;
mod demo;
mod error;
mod filter;
mod password;
mod peers;
mod sync;
mod topology;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use blazedb_access::json;
use blazedb_core::Uuid;
use clap::{Args, Parser, Subcommand};

use crate::error::Failure;

const ABOUT: &str = "BlazeDB command line tool: create, inspect, query, import, export and \
                     sync encrypted BlazeDB databases";

const LONG_ABOUT: &str = "\
BlazeDB command line tool: create, inspect, query, import, export and sync encrypted BlazeDB
databases.

The database path is the first argument of every command but topology, which takes a JSON file
listing databases and the connections between them, and demo, which makes its own. The password never goes on the command line;
it comes from --password-file PATH (first line of the file), else from the BLAZEDB_PASSWORD
environment variable, else from a prompt when standard input is a terminal. Use --no-encryption
for unencrypted databases.

Records are printed as JSON Lines (one object per line, \"id\" first). Errors are one line on stderr,
'blazedb: <message>', with exit code 1 (2 for a bad command line).";

#[derive(Parser, Debug)]
#[command(
    name = "blazedb",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = json::MAPPING_HELP,
)]
struct Cli {
    /// Read the password from the first line of this file (instead of BLAZEDB_PASSWORD or a
    /// prompt)
    #[arg(long, global = true, value_name = "PATH")]
    password_file: Option<PathBuf>,

    /// The database is not encrypted: open or create it without a password
    #[arg(long, global = true, conflicts_with = "password_file")]
    no_encryption: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new, empty database (asks for the password twice on a terminal)
    Init {
        /// Path of the database file to create (must not exist)
        db: PathBuf,
    },

    /// Insert one record and print its id
    #[command(after_long_help = json::MAPPING_HELP)]
    Insert {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The record as a JSON object; read from standard input when omitted or "-". An "id"
        /// key with a UUID string inserts the record with that id
        json: Option<String>,
    },

    /// Print one record as a JSON line (exit code 1 when there is none)
    #[command(after_long_help = json::MAPPING_HELP)]
    Get {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The record id (a UUID)
        #[arg(value_parser = parse_uuid)]
        id: Uuid,
    },

    /// Print the records that match a filter, as JSON Lines
    #[command(after_long_help = QUERY_HELP)]
    Query(QueryArgs),

    /// Set fields of a record; fields not named keep their values
    #[command(after_long_help = json::MAPPING_HELP)]
    Update {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The record id (a UUID)
        #[arg(value_parser = parse_uuid)]
        id: Uuid,
        /// The fields to set, as a JSON object ("-" reads it from standard input)
        json: String,
    },

    /// Delete a record
    Delete {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The record id (a UUID)
        #[arg(value_parser = parse_uuid)]
        id: Uuid,
    },

    /// Create, drop or list secondary indexes
    #[command(subcommand)]
    Index(IndexCommand),

    /// Insert the records of a JSON Lines file (one object per line)
    #[command(after_long_help = IMPORT_HELP)]
    Import {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The JSON Lines file ("-" for standard input)
        file: PathBuf,
        /// Records per transaction
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },

    /// Print every record of a collection as JSON Lines
    #[command(after_long_help = json::MAPPING_HELP)]
    Export {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// Write to this file instead of standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Show collections (records, indexes), op log length, node id, Lamport clock and size
    Stats {
        /// The database file
        db: PathBuf,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },

    /// Change the password of an encrypted database
    #[command(after_long_help = PASSWD_HELP)]
    Passwd {
        /// The database file
        db: PathBuf,
        /// Read the new password from the first line of this file (instead of
        /// BLAZEDB_NEW_PASSWORD or a prompt)
        #[arg(long, value_name = "PATH")]
        new_password_file: Option<PathBuf>,
    },

    /// Give a copied database file a new node id; its unconfirmed writes sync again under it
    #[command(after_long_help = REIDENTIFY_HELP)]
    Reidentify {
        /// The database file (the copy)
        db: PathBuf,
    },

    /// Start a sync server and two devices on loopback and show sync at work (leaves nothing
    /// behind)
    Demo,

    /// Sync a database with a database on a blazedb-server (once, or --follow)
    #[command(after_long_help = sync::HELP)]
    Sync(sync::SyncArgs),

    /// Sync a database with peer devices directly, without a server, until interrupted
    #[command(after_long_help = peers::HELP)]
    Serve(peers::ServeArgs),

    /// Print the public key a database's peers must trust (hex)
    PeerKey {
        /// The database file
        db: PathBuf,
    },

    /// Sync the databases a topology file lists, in this process, and print the graph
    #[command(after_long_help = topology::HELP)]
    Topology {
        /// The topology file (JSON): nodes (name, path, local_only) and edges (from, to, mode)
        file: PathBuf,
        /// How to print the graph
        #[arg(long, value_enum, default_value_t = topology::Format::Text)]
        format: topology::Format,
        /// Give up waiting for sync after this many seconds (the graph is printed anyway)
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = topology::parse_timeout)]
        timeout: Duration,
    },
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// The database file
    db: PathBuf,
    /// The collection
    collection: String,
    /// Filter as a JSON object, e.g. '{"status": "open", "priority": {"$gt": 2}}'
    #[arg(long = "where", value_name = "JSON")]
    filter: Option<String>,
    /// Sort by FIELD, ascending unless ":desc" follows; repeat for more keys
    #[arg(long, value_name = "FIELD[:asc|desc]")]
    order_by: Vec<String>,
    /// Print at most N records
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Skip the first N records
    #[arg(long, value_name = "N")]
    offset: Option<usize>,
    /// Print how the query would run (full scan, id lookup or index scan) instead of results
    #[arg(long, conflicts_with = "count")]
    explain: bool,
    /// Print the number of matching records (ignores --limit and --offset)
    #[arg(long)]
    count: bool,
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Create an index on FIELD and fill it from the existing records
    Create {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The field ("id" is the record id)
        field: String,
    },
    /// Remove the index on FIELD
    Drop {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
        /// The field ("id" is the record id)
        field: String,
    },
    /// List the indexed fields of a collection
    List {
        /// The database file
        db: PathBuf,
        /// The collection
        collection: String,
    },
}

const QUERY_HELP: &str = "\
FILTERS (--where):
  {\"status\": \"open\"}                    status equals \"open\"
  {\"priority\": {\"$gt\": 2}}              operators: $eq $ne $gt $gte $lt $lte,
                                        $in [values], $contains \"substring\",
                                        $null true (null or missing) / false
  {\"a\": 1, \"b\": {\"$lt\": 5}}             several fields: all must match (AND)
  {\"$or\": [{...}, {...}]}               $and / $or take arrays of filters
  {\"$not\": {...}}                       $not takes a filter
  {\"id\": \"<uuid>\"}                      on \"id\" a UUID string means the record id
Range operators only match values of the same kind (numbers with numbers, strings with
strings, ...); Int and Double compare by value. Values use the JSON mapping of
'blazedb --help'. Ties in --order-by end in id order.

EXAMPLES:
  blazedb query bugs.db bugs --where '{\"status\": \"open\"}' --order-by priority:desc --limit 10
  blazedb query bugs.db bugs --where '{\"priority\": {\"$in\": [1, 2]}}' --explain";

const IMPORT_HELP: &str = "\
Each non-empty line is one JSON object; an \"id\" key with a UUID string keeps that id.
Records are inserted in transactions of --batch-size records. On a bad line the import stops
with 'FILE:LINE: reason': the batches committed before stay in the database, the batch holding
the bad line and everything after it are not imported. A progress bar is shown on stderr for
files over 1 MiB when stderr is a terminal.";

const REIDENTIFY_HELP: &str = "\
Two database files with one node id (one copied from the other, both written) cannot sync: their
operations share ids. Sync refuses them with a 'copy' error, and this command repairs the file it
is run on: the file gets a new node id, and every write made in it after the last one a server or
peer confirmed is renamed to the new node and syncs again, so nothing written in either file is
lost. The file's sync key is replaced too (a server binds a key to one node id): enroll it again
with a new token. Stop every program using the file first.

EXAMPLE:
  blazedb reidentify desktop.db
  blazedb sync desktop.db --server ws://127.0.0.1:7420 --database notes --enroll -";

const PASSWD_HELP: &str = "\
The current password comes from --password-file, BLAZEDB_PASSWORD or a prompt; the new one from
--new-password-file, BLAZEDB_NEW_PASSWORD or a prompt (asked twice).";

fn parse_uuid(s: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s).map_err(|e| format!("not a UUID: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            // `eprintln!` would panic if stderr is closed; there is nobody to tell then.
            let _ = writeln!(std::io::stderr(), "blazedb: {e}");
            ExitCode::FAILURE
        }
    }
}
