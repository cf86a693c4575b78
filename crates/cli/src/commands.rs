//! The subcommands.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use blazedb_core::{Database, Direction, Error as DbError, OpenError, OpenOptions, Uuid};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Failure;
use crate::json::{self, RecordInput};
use crate::password::{self, Source};
use crate::{Cli, Command, IndexCommand, QueryArgs, filter, topology};

/// Files larger than this get a progress bar on import.
const PROGRESS_MIN_BYTES: u64 = 1024 * 1024;

/// The global options every command needs to open a database.
pub(crate) struct Ctx {
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) no_encryption: bool,
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx {
        password_file: cli.password_file,
        no_encryption: cli.no_encryption,
    };
    match cli.command {
        Command::Init { db } => init(&ctx, &db),
        Command::Insert {
            db,
            collection,
            json,
        } => insert(&ctx, &db, &collection, json.as_deref()),
        Command::Get { db, collection, id } => get(&ctx, &db, &collection, id),
        Command::Query(args) => query(&ctx, &args),
        Command::Update {
            db,
            collection,
            id,
            json,
        } => update(&ctx, &db, &collection, id, &json),
        Command::Delete { db, collection, id } => {
            open(&ctx, &db)?.delete(&collection, id)?;
            Ok(())
        }
        Command::Index(cmd) => index(&ctx, cmd),
        Command::Import {
            db,
            collection,
            file,
            batch_size,
        } => import(&ctx, &db, &collection, &file, batch_size as usize),
        Command::Export {
            db,
            collection,
            output,
        } => export(&ctx, &db, &collection, output.as_deref()),
        Command::Stats { db, json } => stats(&ctx, &db, json),
        Command::Passwd {
            db,
            new_password_file,
        } => passwd(&ctx, &db, new_password_file.as_deref()),
        Command::Topology {
            file,
            format,
            timeout,
        } => topology::run(&ctx, &file, format, timeout),
        Command::Sync(args) => crate::sync::run(&ctx, &args),
        Command::Serve(args) => crate::peers::serve(&ctx, &args),
        Command::PeerKey { db } => crate::peers::key(&ctx, &db),
        Command::Reidentify { db } => reidentify(&ctx, &db),
        Command::Demo => crate::demo::run(),
    }
}

// ---------------------------------------------------------------------------------------------
// Opening

fn password(ctx: &Ctx, db: &Path, confirm: bool) -> Result<String, Failure> {
    Source {
        file: ctx.password_file.as_deref(),
        env: password::PASSWORD_ENV,
        file_flag: "--password-file",
        prompt: format!(
            "{} for {}",
            if confirm { "New password" } else { "Password" },
            db.display()
        ),
        confirm,
    }
    .get()
}

/// Opens an existing database, asking for the password only once the file is known to exist.
pub(crate) fn open(ctx: &Ctx, db: &Path) -> Result<Database, Failure> {
    check_database_file(db)?;
    let password = if ctx.no_encryption {
        None
    } else {
        Some(password(ctx, db, false)?)
    };
    open_with(ctx, db, password.as_deref())
}

/// Fails unless `db` is an existing file, so no password is asked for a mistyped path.
pub(crate) fn check_database_file(db: &Path) -> Result<(), Failure> {
    match std::fs::metadata(db) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Failure::msg(format!(
                "{} does not exist; create it with `blazedb init`",
                db.display()
            )));
        }
        Err(e) => return Err(Failure::msg(format!("cannot open {}: {e}", db.display()))),
        Ok(m) if m.is_dir() => {
            return Err(Failure::msg(format!(
                "{} is a directory, not a database file",
                db.display()
            )));
        }
        Ok(_) => {}
    }
    Ok(())
}

/// Opens an existing database with a password already obtained (`None` with
/// `--no-encryption`).
pub(crate) fn open_with(ctx: &Ctx, db: &Path, password: Option<&str>) -> Result<Database, Failure> {
    let result = match password {
        None => OpenOptions::new().open(db),
        Some(password) => OpenOptions::new().password(password).open(db),
    };
    result.map_err(|e| open_error(ctx, db, e))
}

/// Adds what the command line can do about an error opening a file.
fn open_error(ctx: &Ctx, db: &Path, e: DbError) -> Failure {
    match e {
        DbError::Open(OpenError::WrongPassword { .. }) if ctx.no_encryption => {
            Failure::msg(format!(
                "{} is encrypted or not a BlazeDB database (opened without a password because of \
             --no-encryption)",
                db.display()
            ))
        }
        DbError::Open(OpenError::NotADatabase { .. })
            if !ctx.no_encryption && is_plain_sqlite(db) =>
        {
            Failure::msg(format!(
                "{e}; if it is an unencrypted BlazeDB database, pass --no-encryption"
            ))
        }
        e => e.into(),
    }
}

fn is_plain_sqlite(path: &Path) -> bool {
    let mut header = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header == b"SQLite format 3\0"
}

// ---------------------------------------------------------------------------------------------
// Output

/// Buffered standard output whose errors become failures (a closed pipe ends quietly).
pub(crate) struct Out<W: Write> {
    inner: BufWriter<W>,
    name: String,
}

impl Out<io::StdoutLock<'static>> {
    pub(crate) fn stdout() -> Self {
        Out {
            inner: BufWriter::new(io::stdout().lock()),
            name: "standard output".into(),
        }
    }
}

impl<W: Write> Out<W> {
    pub(crate) fn line(&mut self, text: &str) -> Result<(), Failure> {
        self.inner
            .write_all(text.as_bytes())
            .and_then(|()| self.inner.write_all(b"\n"))
            .map_err(|e| Failure::io(format!("cannot write to {}", self.name), e))
    }

    pub(crate) fn finish(mut self) -> Result<(), Failure> {
        self.inner
            .flush()
            .map_err(|e| Failure::io(format!("cannot write to {}", self.name), e))
    }
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = Out::stdout();
    out.line(text)?;
    out.finish()
}

// ---------------------------------------------------------------------------------------------
// Commands

fn init(ctx: &Ctx, db: &Path) -> Result<(), Failure> {
    if db.exists() {
        return Err(DbError::Open(OpenError::AlreadyExists { path: db.into() }).into());
    }
    let created = if ctx.no_encryption {
        OpenOptions::new().create(db)?
    } else {
        OpenOptions::new()
            .password(&password(ctx, db, true)?)
            .create(db)?
    };
    drop(created);
    print(&format!(
        "created {} database {}",
        if ctx.no_encryption {
            "unencrypted"
        } else {
            "encrypted"
        },
        db.display()
    ))
}

/// JSON text from the argument, or from standard input for `None` and `"-"`.
fn json_text(arg: Option<&str>) -> Result<String, Failure> {
    match arg {
        Some(text) if text != "-" => Ok(text.to_owned()),
        _ => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::msg(format!("cannot read JSON from standard input: {e}")))?;
            if text.trim().is_empty() {
                return Err(Failure::msg("no JSON on standard input"));
            }
            Ok(text)
        }
    }
}

fn read_record(arg: Option<&str>) -> Result<RecordInput, Failure> {
    let text = json_text(arg)?;
    json::parse_record(&text).map_err(|e| Failure::msg(e.to_string()))
}

fn insert(ctx: &Ctx, db: &Path, collection: &str, arg: Option<&str>) -> Result<(), Failure> {
    let record = read_record(arg)?;
    let db = open(ctx, db)?;
    let id = match record.id {
        Some(id) => {
            db.insert_with_id(collection, id, record.fields)?;
            id
        }
        None => db.insert(collection, record.fields)?,
    };
    print(&id.to_string())
}

fn get(ctx: &Ctx, db: &Path, collection: &str, id: Uuid) -> Result<(), Failure> {
    match open(ctx, db)?.get(collection, id)? {
        Some(record) => print(&json::record_line(&record)),
        None => Err(DbError::RecordNotFound {
            collection: collection.into(),
            id,
        }
        .into()),
    }
}

fn update(ctx: &Ctx, db: &Path, collection: &str, id: Uuid, arg: &str) -> Result<(), Failure> {
    let record = read_record(Some(arg))?;
    if let Some(other) = record.id
        && other != id
    {
        return Err(Failure::msg(format!(
            "the JSON has \"id\" {other}, but the record to update is {id}; ids cannot change"
        )));
    }
    open(ctx, db)?.update(collection, id, record.fields)?;
    Ok(())
}

/// `FIELD`, `FIELD:asc` or `FIELD:desc`.
fn order_key(spec: &str) -> (&str, Direction) {
    if let Some((field, dir)) = spec.rsplit_once(':') {
        if dir.eq_ignore_ascii_case("asc") {
            return (field, Direction::Asc);
        }
        if dir.eq_ignore_ascii_case("desc") {
            return (field, Direction::Desc);
        }
    }
    (spec, Direction::Asc)
}

fn query(ctx: &Ctx, args: &QueryArgs) -> Result<(), Failure> {
    let filter = match &args.filter {
        Some(text) => filter::parse(text)?,
        None => None,
    };
    let db = open(ctx, &args.db)?;
    let mut q = db.query(&args.collection);
    if let Some(f) = filter {
        q = q.filter(f);
    }
    for spec in &args.order_by {
        let (field, dir) = order_key(spec);
        if field.is_empty() {
            return Err(Failure::msg(format!(
                "--order-by {spec:?}: the field name is empty"
            )));
        }
        q = q.order_by(field, dir);
    }
    if let Some(n) = args.limit {
        q = q.limit(n);
    }
    if let Some(n) = args.offset {
        q = q.offset(n);
    }
    if args.explain {
        return print(&q.explain()?.to_string());
    }
    if args.count {
        return print(&q.count()?.to_string());
    }
    let records = q.run()?;
    let mut out = Out::stdout();
    for r in &records {
        out.line(&json::record_line(r))?;
    }
    out.finish()
}

fn index(ctx: &Ctx, cmd: IndexCommand) -> Result<(), Failure> {
    match cmd {
        IndexCommand::Create {
            db,
            collection,
            field,
        } => {
            open(ctx, &db)?.create_index(&collection, &field)?;
            Ok(())
        }
        IndexCommand::Drop {
            db,
            collection,
            field,
        } => {
            open(ctx, &db)?.drop_index(&collection, &field)?;
            Ok(())
        }
        IndexCommand::List { db, collection } => {
            let fields = open(ctx, &db)?.indexes(&collection)?;
            let mut out = Out::stdout();
            for f in &fields {
                out.line(f)?;
            }
            out.finish()
        }
    }
}

fn import(
    ctx: &Ctx,
    db: &Path,
    collection: &str,
    file: &Path,
    batch_size: usize,
) -> Result<(), Failure> {
    let from_stdin = file.as_os_str() == "-";
    let name = if from_stdin {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let (reader, size): (Box<dyn BufRead>, u64) = if from_stdin {
        (Box::new(BufReader::new(io::stdin().lock())), 0)
    } else {
        let f = File::open(file).map_err(|e| Failure::msg(format!("cannot open {name}: {e}")))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(BufReader::with_capacity(1 << 16, f)), size)
    };
    let db = open(ctx, db)?;
    let progress = (size > PROGRESS_MIN_BYTES && io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(size);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let mut importer = Importer {
        db: &db,
        collection,
        name: &name,
        imported: 0,
        last_committed_line: 0,
        batch: Vec::with_capacity(batch_size.min(100_000)),
    };
    let result = importer.read_all(reader, batch_size, progress.as_ref());
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result?;
    print(&format!(
        "imported {} record{}",
        importer.imported,
        if importer.imported == 1 { "" } else { "s" }
    ))
}

struct Importer<'a> {
    db: &'a Database,
    collection: &'a str,
    name: &'a str,
    imported: u64,
    /// Every line up to this one is in the database.
    last_committed_line: u64,
    batch: Vec<(u64, RecordInput)>,
}

impl Importer<'_> {
    fn read_all(
        &mut self,
        mut reader: Box<dyn BufRead>,
        batch_size: usize,
        progress: Option<&ProgressBar>,
    ) -> Result<(), Failure> {
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        let mut bytes = 0u64;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| self.fail(line_no + 1, format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            bytes += n as u64;
            if let Some(bar) = progress {
                bar.set_position(bytes);
            }
            let text = std::str::from_utf8(&buf)
                .map_err(|e| self.fail(line_no, format!("the line is not valid UTF-8: {e}")))?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let record = json::parse_record(text).map_err(|e| self.fail(line_no, e.to_string()))?;
            self.batch.push((line_no, record));
            if self.batch.len() >= batch_size {
                self.commit(line_no)?;
            }
        }
        self.commit(line_no)
    }

    /// Inserts the pending batch in one transaction; on success every line up to `upto` is in.
    fn commit(&mut self, upto: u64) -> Result<(), Failure> {
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        let mut failed_line = None;
        let collection = self.collection;
        let result = self.db.transaction(|tx| {
            for (line, record) in batch {
                let inserted = match record.id {
                    Some(id) => tx.insert_with_id(collection, id, record.fields),
                    None => tx.insert(collection, record.fields).map(|_| ()),
                };
                if let Err(e) = inserted {
                    failed_line = Some(line);
                    return Err(e);
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.imported += n;
                self.last_committed_line = upto;
                Ok(())
            }
            Err(e) => Err(self.fail(failed_line.unwrap_or(upto), e.to_string())),
        }
    }

    fn fail(&self, line: u64, reason: String) -> Failure {
        let kept = match self.imported {
            0 => "nothing was imported".to_owned(),
            n => format!(
                "{n} record{} from lines 1-{} were imported and stay",
                if n == 1 { "" } else { "s" },
                self.last_committed_line
            ),
        };
        Failure::msg(format!("{}:{line}: {reason} ({kept})", self.name))
    }
}

fn export(ctx: &Ctx, db: &Path, collection: &str, output: Option<&Path>) -> Result<(), Failure> {
    let db = open(ctx, db)?;
    if !db.collections()?.iter().any(|c| c == collection) {
        return Err(Failure::msg(format!(
            "there is no collection {collection:?} in {}",
            db.path()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    match output {
        None => export_to(&db, collection, Out::stdout()),
        Some(path) => {
            let file = File::create(path)
                .map_err(|e| Failure::msg(format!("cannot create {}: {e}", path.display())))?;
            let out = Out {
                inner: BufWriter::new(file),
                name: path.display().to_string(),
            };
            export_to(&db, collection, out)
        }
    }
}

/// Streams the collection as JSON Lines: records are never all in memory at once.
fn export_to<W: Write>(db: &Database, collection: &str, mut out: Out<W>) -> Result<(), Failure> {
    let mut failed = None;
    db.scan(collection, |r| match out.line(&json::record_line(&r)) {
        Ok(()) => Ok(true),
        Err(e) => {
            failed = Some(e);
            Ok(false)
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => out.finish(),
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut size = bytes as f64 / 1024.0;
    let mut unit = "KiB";
    for u in UNITS.iter().skip(1) {
        if size < 1024.0 {
            break;
        }
        size /= 1024.0;
        unit = u;
    }
    format!("{size:.1} {unit} ({bytes} bytes)")
}

fn stats(ctx: &Ctx, db_path: &Path, as_json: bool) -> Result<(), Failure> {
    let db = open(ctx, db_path)?;
    let s = db.stats()?;
    if as_json {
        let collections: Vec<serde_json::Value> = s
            .collections
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "records": c.records,
                    "indexes": c.indexes,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "path": db_path.display().to_string(),
            "encrypted": !ctx.no_encryption,
            "node_id": s.node_id.to_string(),
            "lamport": s.lamport,
            "oplog_len": s.oplog_len,
            "size_bytes": s.size_bytes,
            "collections": collections,
        });
        return print(&doc.to_string());
    }
    let mut out = Out::stdout();
    out.line(&format!("database:    {}", db_path.display()))?;
    out.line(&format!(
        "encrypted:   {}",
        if ctx.no_encryption { "no" } else { "yes" }
    ))?;
    out.line(&format!("node id:     {}", s.node_id))?;
    out.line(&format!("lamport:     {}", s.lamport))?;
    out.line(&format!("op log:      {} operations", s.oplog_len))?;
    out.line(&format!("size:        {}", human_size(s.size_bytes)))?;
    if s.collections.is_empty() {
        out.line("collections: none")?;
    } else {
        out.line("collections:")?;
        let width = s
            .collections
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for c in &s.collections {
            let indexes = if c.indexes.is_empty() {
                "no indexes".to_owned()
            } else {
                format!("indexes: {}", c.indexes.join(", "))
            };
            out.line(&format!(
                "  {:width$}  {} record{}  {indexes}",
                c.name,
                c.records,
                if c.records == 1 { "" } else { "s" },
            ))?;
        }
    }
    out.finish()
}

fn passwd(ctx: &Ctx, db_path: &Path, new_password_file: Option<&Path>) -> Result<(), Failure> {
    if ctx.no_encryption {
        return Err(Failure::msg(
            "passwd changes the password of an encrypted database; an unencrypted one has none",
        ));
    }
    let db = open(ctx, db_path)?;
    let new = Source {
        file: new_password_file,
        env: password::NEW_PASSWORD_ENV,
        file_flag: "--new-password-file",
        prompt: format!("New password for {}", db_path.display()),
        confirm: true,
    }
    .get()?;
    db.change_password(&new)?;
    drop(db);
    print(&format!("changed the password of {}", db_path.display()))
}

fn reidentify(ctx: &Ctx, db_path: &Path) -> Result<(), Failure> {
    let done = open(ctx, db_path)?.reidentify()?;
    // A server binds a key to one node id: the new node needs a key of its own.
    let had_key = blazedb_sync::remote::forget_node_keys(&open(ctx, db_path)?).map_err(|e| {
        Failure::msg(format!(
            "{} has a new node id, but its old sync key could not be removed: {e}",
            db_path.display()
        ))
    })?;
    let mut text = format!(
        "{} is node {} now (it was {}): {} operations written after the last one a peer \
         confirmed ({}) will sync under the new id; {} records restamped",
        db_path.display(),
        done.new,
        done.old,
        done.renamed,
        done.confirmed,
        done.restamped
    );
    if had_key {
        text.push_str(
            "\nits sync key was replaced: enroll it again with a new token \
             (blazedb sync FILE --server URL --database NAME --enroll -)",
        );
    }
    print(&text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn order_keys_take_an_optional_direction() {
        assert_eq!(order_key("p"), ("p", Direction::Asc));
        assert_eq!(order_key("p:desc"), ("p", Direction::Desc));
        assert_eq!(order_key("p:ASC"), ("p", Direction::Asc));
        assert_eq!(order_key("a:b"), ("a:b", Direction::Asc));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(10), "10 bytes");
        assert_eq!(human_size(2048), "2.0 KiB (2048 bytes)");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB (3145728 bytes)");
    }
}
