//! `blazedb-server`: serve (the default) and administer a BlazeDB sync server.
//!
//! ```text
//! blazedb-server                                  # serve with defaults (127.0.0.1:7420)
//! blazedb-server serve --listen 0.0.0.0:7420 --tls-self-signed
//! blazedb-server admin init                                 # a new data folder
//! blazedb-server admin user add ada --team core --role admin
//! blazedb-server admin token create ada --expires-in 3600   # prints only the token
//! blazedb-server admin token create ada --suite 25519       # for an X25519 device
//! blazedb-server admin token list
//! blazedb-server admin token revoke ID                      # ID from `token list`
//! blazedb-server admin database create bugs
//! blazedb-server admin access set bugs rules.toml          # see docs/access.md
//! blazedb-server admin access show bugs
//! blazedb-server admin user update ada --team core --role manager
//! ```
//!
//! The master key comes from `BLAZEDB_MASTER_KEY` or `--master-key-file`, never from a flag
//! holding the key itself.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use blazedb_protocol::secure::Suite;
use blazedb_server::{
    ConfigOverrides, META_FILE, MasterKey, MetaStore, Server, ServerConfig, ServerError,
    format_date,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "blazedb-server",
    version,
    about = "Hosts BlazeDB databases and syncs devices with them",
    long_about = "Hosts BlazeDB databases and syncs devices with them. Without a subcommand it \
                  serves. The master key comes from the BLAZEDB_MASTER_KEY environment variable \
                  (64 hex characters) or --master-key-file; without either, a development key \
                  is generated inside the data folder (with a warning)."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Args)]
struct CommonArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder of the server's files [default: ./blazedb-server-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the master key (64 hex characters), outside the data folder.
    #[arg(long, global = true, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Address to listen on, IP:PORT (port 0 picks a free port) [default: 127.0.0.1:7420].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Most simultaneous sync connections [default: 4096].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Messages queued for one connection before it counts as too slow [default: 1024].
    #[arg(long, value_name = "N")]
    send_queue: Option<usize>,
    /// Seconds a client has for its HTTP request headers, and from connecting to being authenticated [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout_secs: Option<u64>,
    /// Connections not authenticated yet, from all addresses [default: 256].
    #[arg(long, value_name = "N")]
    max_pending: Option<usize>,
    /// Connections not authenticated yet, from one address (IPv6: one /64) [default: 32].
    #[arg(long, value_name = "N")]
    max_pending_per_source: Option<usize>,
    /// Failed authentications one address may have in a minute before it is throttled [default: 30].
    #[arg(long, value_name = "N")]
    max_auth_failures: Option<u32>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// TLS with a self-signed certificate for localhost, written to <data-dir>/tls/cert.pem.
    #[arg(long)]
    tls_self_signed: bool,
    /// Newest op-log entries each database keeps; older devices get a snapshot [default: 100000].
    #[arg(long, value_name = "N")]
    oplog_keep: Option<u64>,
    /// Seconds between op-log compactions [default: 60].
    #[arg(long, value_name = "SECS")]
    compact_interval_secs: Option<u64>,
}

impl ServeArgs {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.max_connections.is_none()
            && self.send_queue.is_none()
            && self.handshake_timeout_secs.is_none()
            && self.max_pending.is_none()
            && self.max_pending_per_source.is_none()
            && self.max_auth_failures.is_none()
            && self.tls_cert.is_none()
            && self.tls_key.is_none()
            && !self.tls_self_signed
            && self.oplog_keep.is_none()
            && self.compact_interval_secs.is_none()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Serve(ServeArgs),
    /// Manage users, enrollment tokens, devices and databases (works while the server runs).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Creates a new data folder and the server's identity (its key pair). The other admin
    /// commands refuse a folder that holds no server, so that a mistyped --data-dir cannot
    /// start a second, empty one.
    Init,
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// One-time enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Hosted databases.
    #[command(subcommand)]
    Database(DatabaseCommand),
    /// Access rules of hosted databases (docs/access.md).
    #[command(subcommand)]
    Access(AccessCommand),
}

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// Validates a rules file (TOML) and makes it DATABASE's rules, replacing the old ones
    /// at once; a bad file is refused with its line and reason, and the old rules stay.
    Set {
        database: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Prints the rules in force for DATABASE (canonical form).
    Show { database: String },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Adds a user.
    Add {
        name: String,
        /// A team the user belongs to (repeat for several).
        #[arg(long = "team", value_name = "TEAM")]
        teams: Vec<String>,
        /// The user's role [default: member].
        #[arg(long)]
        role: Option<String>,
    },
    /// Lists users: name, role, teams (tab-separated).
    List,
    /// Changes a user's teams and role.
    Update {
        name: String,
        /// The user's teams: replaces them all (repeat for several).
        #[arg(long = "team", value_name = "TEAM", conflicts_with = "no_teams")]
        teams: Vec<String>,
        /// Removes the user from every team.
        #[arg(long)]
        no_teams: bool,
        /// The user's new role.
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a one-time enrollment token for USER and prints it (only it) on stdout.
    Create {
        user: String,
        /// Seconds until the token expires.
        #[arg(long, value_name = "SECS", default_value_t = 86_400)]
        expires_in: u64,
        /// The Noise suite the device will speak: the token carries the server's key of that
        /// suite.
        #[arg(long, value_enum, default_value_t = SuiteArg::P256)]
        suite: SuiteArg,
    },
    /// Lists tokens: id, user, expires at, state (tab-separated); never the secret.
    List,
    /// Revokes an unused token: enrolling with it is refused.
    Revoke {
        /// The token's id (32 hex characters), as `token list` shows it.
        id: String,
    },
}

/// A Noise suite, as `--suite` names it.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SuiteArg {
    /// Noise_XX_P256_AESGCM_SHA256 (the default).
    #[value(name = "p256", alias = "P-256")]
    P256,
    /// Noise_XX_25519_AESGCM_SHA256.
    #[value(name = "25519", alias = "x25519")]
    X25519,
}

impl From<SuiteArg> for Suite {
    fn from(suite: SuiteArg) -> Suite {
        match suite {
            SuiteArg::P256 => Suite::P256AesGcmSha256,
            SuiteArg::X25519 => Suite::X25519AesGcmSha256,
        }
    }
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Lists devices: fingerprint, user, enrolled at, status, suite (tab-separated).
    List,
    /// Revokes a device: its next connection is refused.
    Revoke {
        /// The device's fingerprint (16 hex characters) or whole public key in hex.
        #[arg(value_name = "FINGERPRINT_OR_KEYHEX")]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum DatabaseCommand {
    /// Creates a hosted database (1 to 255 characters of A-Z a-z 0-9 . _ -).
    Create { name: String },
    /// Lists hosted databases.
    List,
    /// Sets how a collection travels and rests (docs/e2e.md): `smart`, the server reads its
    /// values; `e2e`, devices seal them and the server sees only ids, stamps and the routing
    /// fields. Changes the database's access rules; an e2e collection stays e2e.
    Mode {
        database: String,
        collection: String,
        mode: ModeArg,
        /// A field kept in clear for the rules and routing (e2e only; repeat for more).
        #[arg(long = "routing-field")]
        routing_fields: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// The server reads the values (the default).
    Smart,
    /// Values sealed end to end on the devices.
    E2e,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("blazedb-server: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        None => serve(&cli.common, cli.serve),
        Some(Command::Serve(args)) => {
            if !cli.serve.is_empty() {
                return Err("give the serve options after `serve`".to_owned());
            }
            serve(&cli.common, args)
        }
        Some(Command::Admin(command)) => {
            if !cli.serve.is_empty() {
                return Err("serve options (--listen, --tls-…) do not apply to admin".to_owned());
            }
            admin(&cli.common, command)
        }
    }
}

fn load_config(common: &CommonArgs, serve: ServeArgs) -> Result<ServerConfig, String> {
    let overrides = ConfigOverrides {
        data_dir: common.data_dir.clone(),
        listen: serve.listen,
        max_connections: serve.max_connections,
        send_queue: serve.send_queue,
        handshake_timeout_secs: serve.handshake_timeout_secs,
        max_pending: serve.max_pending,
        max_pending_per_source: serve.max_pending_per_source,
        max_auth_failures: serve.max_auth_failures,
        tls_cert: serve.tls_cert,
        tls_key: serve.tls_key,
        tls_self_signed: serve.tls_self_signed,
        oplog_keep: serve.oplog_keep,
        compact_interval_secs: serve.compact_interval_secs,
        master_key_file: common.master_key_file.clone(),
    };
    ServerConfig::load(common.config.as_deref(), &overrides).map_err(|e| e.to_string())
}

fn master_key(config: &ServerConfig) -> Result<MasterKey, String> {
    let resolved = MasterKey::resolve_from_environment(config).map_err(|e| e.to_string())?;
    for warning in &resolved.warnings {
        eprintln!("blazedb-server: {warning}");
    }
    Ok(resolved.key)
}

fn serve(common: &CommonArgs, args: ServeArgs) -> Result<(), String> {
    let config = load_config(common, args)?;
    let key = master_key(&config)?;
    // Catch the signals before the address is printed: a script that reads it may signal at
    // once.
    let signals = Signals::install()?;
    let server = Server::start_with_key(config, key).map_err(|e: ServerError| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", server.url());
        let _ = out.flush();
    }
    signals.wait()?;
    eprintln!("blazedb-server: shutting down");
    server.shutdown();
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment this is made.
struct Signals {
    runtime: tokio::runtime::Runtime,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot wait for signals: {e}"))?;
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let guard = runtime.enter();
            let interrupt =
                signal(SignalKind::interrupt()).map_err(|e| format!("cannot catch SIGINT: {e}"))?;
            let terminate = signal(SignalKind::terminate())
                .map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
            drop(guard);
            Ok(Signals {
                runtime,
                interrupt,
                terminate,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals { runtime })
    }

    /// Waits for the first signal.
    fn wait(self) -> Result<(), String> {
        #[cfg(unix)]
        {
            let Signals {
                runtime,
                mut interrupt,
                mut terminate,
            } = self;
            runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            });
            Ok(())
        }
        #[cfg(not(unix))]
        {
            self.runtime.block_on(async {
                tokio::signal::ctrl_c()
                    .await
                    .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))
            })
        }
    }
}

/// `NAME (role R, teams: A, B)`.
fn describe(user: &blazedb_server::User) -> String {
    format!(
        "{} (role {}, teams: {})",
        user.name,
        user.role,
        if user.teams.is_empty() {
            "none".to_owned()
        } else {
            user.teams.join(", ")
        }
    )
}

fn admin(common: &CommonArgs, command: AdminCommand) -> Result<(), String> {
    let config = load_config(common, ServeArgs::default())?;
    let store = config.data_dir.join(META_FILE);
    let existed = store.exists();
    // Checked before the master key is resolved: in development mode resolving it writes a
    // key into the folder.
    if !existed && !matches!(command, AdminCommand::Init) {
        return Err(format!(
            "{} holds no BlazeDB server (there is no {META_FILE}); check --data-dir, or make a \
             new server there with `blazedb-server admin init`",
            config.data_dir.display()
        ));
    }
    let key = master_key(&config)?;
    let meta = MetaStore::open_or_create(&config.data_dir, &key).map_err(|e| e.to_string())?;
    drop(key);
    let mut out = std::io::stdout().lock();
    let mut print = |line: String| writeln!(out, "{line}").map_err(|e| e.to_string());
    match command {
        AdminCommand::Init => {
            let keys: Vec<String> = Suite::ALL
                .into_iter()
                .filter_map(|suite| meta.server_keys_for(suite))
                .map(|keys| format!("{} for {}", keys.fingerprint(), keys.suite()))
                .collect();
            print(format!(
                "{} server in {} (server keys {})",
                if existed {
                    "there already is a"
                } else {
                    "created a new"
                },
                config.data_dir.display(),
                keys.join(", ")
            ))?;
        }
        AdminCommand::User(UserCommand::Add { name, teams, role }) => {
            let user = meta
                .add_user(&name, &teams, role.as_deref())
                .map_err(|e| e.to_string())?;
            print(format!("added user {}", describe(&user)))?;
        }
        AdminCommand::User(UserCommand::Update {
            name,
            teams,
            no_teams,
            role,
        }) => {
            let teams = (no_teams || !teams.is_empty()).then_some(teams.as_slice());
            if teams.is_none() && role.is_none() {
                return Err("nothing to change: give --team, --no-teams or --role".to_owned());
            }
            let user = meta
                .update_user(&name, teams, role.as_deref())
                .map_err(|e| e.to_string())?;
            print(format!(
                "updated user {}; devices get it at their next connection",
                describe(&user)
            ))?;
        }
        AdminCommand::User(UserCommand::List) => {
            for user in meta.list_users().map_err(|e| e.to_string())? {
                print(format!(
                    "{}\t{}\t{}",
                    user.name,
                    user.role,
                    user.teams.join(",")
                ))?;
            }
        }
        AdminCommand::Token(TokenCommand::Create {
            user,
            expires_in,
            suite,
        }) => {
            let suite = Suite::from(suite);
            let token = meta
                .create_token_with_suite(&user, Duration::from_secs(expires_in), suite)
                .map_err(|e| e.to_string())?;
            print(token.to_string())?;
            let expires = blazedb_core::Date::from_unix_millis(
                blazedb_core::Date::now().unix_millis().saturating_add(
                    i64::try_from(expires_in.saturating_mul(1000)).unwrap_or(i64::MAX),
                ),
            );
            let server_key = meta
                .server_keys_for(suite)
                .map(|keys| keys.fingerprint())
                .unwrap_or_default();
            eprintln!(
                "blazedb-server: one-time enrollment token for user {user:?}, valid until {} \
                 (server key {server_key}, {suite})",
                format_date(expires),
            );
        }
        AdminCommand::Token(TokenCommand::List) => {
            for token in meta.list_tokens().map_err(|e| e.to_string())? {
                print(token.to_string())?;
            }
        }
        AdminCommand::Token(TokenCommand::Revoke { id }) => {
            let token = meta.revoke_token(&id).map_err(|e| e.to_string())?;
            print(format!(
                "revoked token {} of user {}; enrolling with it is refused",
                token.id, token.user
            ))?;
        }
        AdminCommand::Device(DeviceCommand::List) => {
            for device in meta.list_devices().map_err(|e| e.to_string())? {
                print(device.to_string())?;
            }
        }
        AdminCommand::Device(DeviceCommand::Revoke { device }) => {
            let device = meta.revoke_device(&device).map_err(|e| e.to_string())?;
            print(format!(
                "revoked device {} of user {}; its next connection is refused",
                device.fingerprint(),
                device.user
            ))?;
        }
        AdminCommand::Database(DatabaseCommand::Create { name }) => {
            meta.create_database(&name).map_err(|e| e.to_string())?;
            print(format!("created database {name}"))?;
        }
        AdminCommand::Access(AccessCommand::Set { database, file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let rules = meta.set_access_rules(&database, &text).map_err(|e| {
                format!("{}: {e}; the rules in force are unchanged", file.display())
            })?;
            let roles: Vec<&str> = rules.roles().collect();
            print(format!(
                "set the access rules of {database} (roles: {})",
                if roles.is_empty() {
                    "none: nobody reads or writes anything".to_owned()
                } else {
                    roles.join(", ")
                }
            ))?;
        }
        AdminCommand::Access(AccessCommand::Show { database }) => {
            if !meta.has_database(&database).map_err(|e| e.to_string())? {
                return Err(blazedb_server::MetaError::UnknownDatabase(database).to_string());
            }
            match meta.access_rules(&database).map_err(|e| e.to_string())? {
                Some(rules) if rules.is_empty() => print(format!(
                    "# {database}: rules that name no role: nobody reads or writes anything"
                ))?,
                Some(rules) => print(rules.to_toml().trim_end().to_owned())?,
                None => print(format!(
                    "# {database} has no access rules: every enrolled user reads and writes \
                     everything"
                ))?,
            }
        }
        AdminCommand::Database(DatabaseCommand::Mode {
            database,
            collection,
            mode,
            routing_fields,
        }) => {
            let mode = match mode {
                ModeArg::Smart if !routing_fields.is_empty() => {
                    return Err(
                        "--routing-field applies to e2e collections only (a smart collection's \
                         fields are all readable)"
                            .to_owned(),
                    );
                }
                ModeArg::Smart => blazedb_access::CollectionMode::Smart,
                ModeArg::E2e => blazedb_access::CollectionMode::E2e,
            };
            let settings = blazedb_access::CollectionSettings::new(mode, routing_fields);
            meta.set_collection_mode(&database, &collection, settings)
                .map_err(|e| format!("{e}; the rules in force are unchanged"))?;
            print(format!(
                "collection {collection} of {database} is now {}; connected devices reconnect \
                 to learn it",
                mode.name()
            ))?;
        }
        AdminCommand::Database(DatabaseCommand::List) => {
            for name in meta.list_databases().map_err(|e| e.to_string())? {
                print(name)?;
            }
        }
    }
    Ok(())
}
