//! [`SyncExt::enable_sync`]: keeps a database in step with a database on a server, over a
//! secure WebSocket, reconnecting with exponential backoff and jitter.
//!
//! The sync engine runs as for local sync; a small thread with a tokio runtime owns the
//! network side: it connects, runs the handshake, hands the engine a [`WsRelay`] and, when
//! the connection ends, waits and connects again. Nothing needs replaying by hand: on every
//! connection each side pulls from its durable cursor into the other's op log, so writes the
//! server never acknowledged are sent again and writes it has are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blazedb_core::Database;
use blazedb_protocol::enroll::EnrollmentToken;
use blazedb_protocol::secure::{StaticKeys, Suite, fingerprint};
use blazedb_protocol::{CloseCode, Message};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::error::RemoteError;
use super::keys::{node_keys_for, pin_server_key, pinned_server_key};
use super::relay::RelayOptions;
use super::session::{connect_handshake, websocket_config};
use crate::e2e::DeviceSealing;
use crate::engine::{ConnectOptions, ConnectionStatus, EngineOptions, Mode, SyncEngine};
use crate::relay::ConnectionId;
use blazedb_access::SyncPolicy;

/// A database on a sync server: the server's URL (`ws://host:port` or `wss://host:port`)
/// and the database's name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub url: String,
    pub database: String,
}

impl RemoteNode {
    /// A remote database.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> RemoteNode {
        RemoteNode {
            url: url.into(),
            database: database.into(),
        }
    }
}

/// How [`SyncExt::enable_sync`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// A one-time enrollment token, needed the first time this database talks to the server.
    pub enroll_token: Option<String>,
    /// Which way operations flow (default: both).
    pub mode: Mode,
    /// PEM file of the certificate authorities to trust for `wss://` instead of the public
    /// ones (Mozilla's roots, compiled in): for a private CA, or a self-signed development
    /// server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Limit for the TCP (and TLS) connection and the WebSocket upgrade.
    pub connect_timeout: Duration,
    /// Limit for the Noise handshake (and enrollment).
    pub handshake_timeout: Duration,
    /// First wait before reconnecting; doubles after every failed attempt, up to
    /// `backoff_max`. Each wait is drawn at random between half and all of it (jitter), so
    /// devices cut off together do not come back together.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub relay: RelayOptions,
    pub engine: EngineOptions,
    /// What to ask the server for (default: everything the rules allow); change it while
    /// syncing with [`RemoteSync::update_policy`].
    pub policy: Option<SyncPolicy>,
    /// When the server says this device was revoked (`Close { Revoked }`, over the
    /// authenticated channel), remove every record of the database from this file (no
    /// tombstones, nothing synced; watchers get
    /// [`PurgeReason::DeviceRevoked`](blazedb_core::PurgeReason::DeviceRevoked)). On by
    /// default: a revoked device is usually a lost or stolen one.
    pub purge_on_revoke: bool,
    /// Collections this application seals end to end whatever the server says, each with
    /// its routing fields (docs/e2e.md). The server's own list is learned in the session;
    /// both are remembered in the file.
    pub sealed: BTreeMap<String, BTreeSet<String>>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            enroll_token: None,
            mode: Mode::Bidirectional,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            relay: RelayOptions::default(),
            engine: EngineOptions::default(),
            policy: None,
            purge_on_revoke: true,
            sealed: BTreeMap::new(),
        }
    }
}

impl RemoteOptions {
    /// Options with an enrollment token.
    pub fn enroll(mut self, token: impl Into<String>) -> RemoteOptions {
        self.enroll_token = Some(token.into());
        self
    }

    /// Options with this enrollment token, or none: what an application that reads an optional
    /// token (a setting, an environment variable) has in hand. `None` clears a token set
    /// before.
    pub fn maybe_enroll(mut self, token: Option<impl Into<String>>) -> RemoteOptions {
        self.enroll_token = token.map(Into::into);
        self
    }

    /// Options with a mode.
    pub fn mode(mut self, mode: Mode) -> RemoteOptions {
        self.mode = mode;
        self
    }

    /// Options asking the server for less than the rules allow.
    pub fn policy(mut self, policy: SyncPolicy) -> RemoteOptions {
        self.policy = Some(policy);
        self
    }

    /// Options sealing `collection` end to end, keeping `routing_fields` in clear, even
    /// before (or whatever) the server says.
    pub fn sealed<I, F>(mut self, collection: impl Into<String>, routing_fields: I) -> RemoteOptions
    where
        I: IntoIterator<Item = F>,
        F: Into<String>,
    {
        self.sealed.insert(
            collection.into(),
            routing_fields.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Options trusting the certificates in a PEM file for `wss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> RemoteOptions {
        self.ca_file = Some(path.into());
        self
    }
}

/// Where the connection to the server stands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RemoteState {
    /// Connecting (attempt number, from 1).
    Connecting { attempt: u32 },
    /// The session is up.
    Connected,
    /// Waiting before the next attempt.
    Waiting { attempt: u32, retry_in: Duration },
    /// Given up: a permanent error (see [`RemoteError::is_permanent`]); `last_error` says
    /// which.
    Failed,
    /// Sync was stopped.
    Stopped,
}

/// A snapshot of [`RemoteSync`]'s state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteStatus {
    pub state: RemoteState,
    /// The current (or last) connection, as the engine sees it: pending ops, last ack, lag,
    /// catch-up progress.
    pub connection: Option<ConnectionStatus>,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
    /// Sessions established since sync was enabled.
    pub sessions: u64,
    /// Bytes written to and read from the network (TCP payload: TLS, WebSocket, Noise and
    /// protocol bytes together), over all connections.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The server's static key fingerprint, once known.
    pub server_key: Option<String>,
}

impl RemoteStatus {
    /// True when connected, everything we wrote is acknowledged and everything the server
    /// has announced is applied here. (The server may hold back ranges holding only our own
    /// operations for a moment; [`RemoteSync::wait_synced`] asks for them with a barrier.)
    pub fn is_synced(&self) -> bool {
        self.state == RemoteState::Connected
            && self.connection.as_ref().is_some_and(|c| {
                c.connected && c.ops_pending == 0 && c.cursor >= c.peer_head && c.lag.is_zero()
            })
    }

    /// Like [`RemoteStatus::is_synced`], but not yet caught up with the server's head: the
    /// moment to send a barrier.
    fn is_quiet(&self) -> bool {
        self.state == RemoteState::Connected
            && self
                .connection
                .as_ref()
                .is_some_and(|c| c.connected && c.ops_pending == 0 && c.lag.is_zero())
    }
}

/// The state, the current connection and the last error.
type StateCell = Mutex<Option<(RemoteState, Option<ConnectionId>, Option<String>)>>;

#[derive(Default)]
struct Shared {
    state: StateCell,
    sessions: AtomicU64,
    bytes_sent: Arc<AtomicU64>,
    bytes_received: Arc<AtomicU64>,
    server_key: Mutex<Option<String>>,
    /// The policy each new connection asks for.
    policy: Mutex<Option<SyncPolicy>>,
}

impl Shared {
    fn set(&self, state: RemoteState, connection: Option<ConnectionId>, error: Option<String>) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let last_error = error.or_else(|| guard.as_ref().and_then(|(_, _, e)| e.clone()));
        *guard = Some((state, connection, last_error));
    }
}

/// Sync with a server, running in the background until stopped or dropped.
#[must_use = "dropping it stops syncing at once: keep it as long as the database should sync"]
pub struct RemoteSync {
    engine: Arc<SyncEngine>,
    sealing: Arc<DeviceSealing>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// Adds [`SyncExt::enable_sync`] to [`Database`].
pub trait SyncExt {
    /// Starts keeping this database in step with `remote`, reconnecting whenever the
    /// connection breaks. The first time, `options.enroll_token` must hold a token from the
    /// server's administrator: the token carries the server's key (which this database then
    /// pins) and lets the server enroll this database's own key.
    fn enable_sync(
        &self,
        remote: RemoteNode,
        options: RemoteOptions,
    ) -> Result<RemoteSync, RemoteError>;
}

impl SyncExt for Database {
    fn enable_sync(
        &self,
        remote: RemoteNode,
        options: RemoteOptions,
    ) -> Result<RemoteSync, RemoteError> {
        RemoteSync::connect(self, remote, options)
    }
}

/// Everything one connection attempt needs, resolved once.
struct Plan {
    remote: RemoteNode,
    /// ws(s)://host:port (no path): the key under which the server's key is pinned.
    server: String,
    request: String,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// This database's key pair for the suite it speaks with the server.
    keys: StaticKeys,
    token: Option<EnrollmentToken>,
}

impl RemoteSync {
    /// Starts keeping `db` in step with `remote`, reconnecting whenever the connection
    /// breaks (the same as [`SyncExt::enable_sync`], without importing the trait). The first
    /// time, `options` must hold an enrollment token from the server's administrator
    /// ([`RemoteOptions::enroll`]).
    pub fn connect(
        db: &Database,
        remote: RemoteNode,
        options: RemoteOptions,
    ) -> Result<RemoteSync, RemoteError> {
        let db = db.clone();
        let plan = plan(&db, &remote, &options)?;
        let sealing = Arc::new(
            DeviceSealing::new(&db, &remote.database, &options.sealed)?.with_identity(&plan.keys),
        );
        let engine = Arc::new(SyncEngine::start_with(
            db.clone(),
            &remote.database,
            options.engine,
        )?);
        let shared = Arc::new(Shared {
            policy: Mutex::new(options.policy.clone()),
            ..Shared::default()
        });
        shared.set(RemoteState::Connecting { attempt: 1 }, None, None);
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::InvalidOption(format!("cannot start a runtime: {e}")))?;
        let thread = std::thread::Builder::new()
            .name(format!("blazedb-remote {}", remote.database))
            .spawn({
                let engine = engine.clone();
                let shared = shared.clone();
                let sealing = sealing.clone();
                move || runtime.block_on(run(db, plan, options, engine, shared, sealing, stopped))
            })
            .map_err(crate::error::SyncError::Io)?;
        Ok(RemoteSync {
            engine,
            sealing,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the server for `policy` from now on (`None`: everything the rules allow): it
    /// sends the records that enter it and purges those that leave it
    /// ([`PurgeReason::PolicyChanged`](blazedb_core::PurgeReason::PolicyChanged)), on the
    /// open connection without reconnecting, and on every later one.
    pub fn update_policy(&self, policy: Option<SyncPolicy>) -> Result<(), RemoteError> {
        *self
            .shared
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = policy.clone();
        let connection = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|(_, id, _)| *id);
        if let Some(id) = connection {
            match self.engine.set_policy(id, policy) {
                // The connection ended meanwhile: the next one asks with the new policy.
                Ok(()) | Err(crate::error::SyncError::UnknownConnection(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The device's end-to-end layer for this database: its sealed collections and keys.
    pub fn sealing(&self) -> &DeviceSealing {
        &self.sealing
    }

    /// The engine that syncs this database (for its counters and status).
    pub fn engine(&self) -> &SyncEngine {
        &self.engine
    }

    /// Where sync stands.
    pub fn status(&self) -> RemoteStatus {
        let (state, connection, last_error) = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or((RemoteState::Stopped, None, None));
        let connection =
            connection.and_then(|id| self.engine.status().ok()?.into_iter().find(|c| c.id == id));
        RemoteStatus {
            state,
            connection,
            last_error,
            sessions: self.shared.sessions.load(Ordering::Relaxed),
            bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.shared.bytes_received.load(Ordering::Relaxed),
            server_key: self
                .shared
                .server_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Waits until this database and the server are in step: connected, everything written
    /// here acknowledged, then a barrier round trip (a `Ping` the server answers after
    /// everything it had queued for us), and everything before it applied. Calls `progress`
    /// with each status seen (about every 10 ms). An error when sync failed for good or the
    /// time ran out.
    pub fn wait_synced(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(&RemoteStatus),
    ) -> Result<RemoteStatus, RemoteError> {
        let deadline = Instant::now() + timeout;
        // The barrier sent on the current connection: (connection, number).
        let mut barrier: Option<(ConnectionId, u64)> = None;
        loop {
            let status = self.status();
            progress(&status);
            if status.state == RemoteState::Failed {
                return Err(RemoteError::SyncFailed(
                    status.last_error.unwrap_or_default(),
                ));
            }
            if let Some(c) = status.connection.as_ref().filter(|_| status.is_quiet()) {
                match barrier {
                    Some((id, n)) if id == c.id && c.barrier >= n => {
                        if status.is_synced() {
                            return Ok(status);
                        }
                        // More arrived meanwhile: another round.
                        barrier = self.engine.barrier(c.id).ok().map(|n| (c.id, n));
                    }
                    Some((id, _)) if id == c.id => {}
                    _ => barrier = self.engine.barrier(c.id).ok().map(|n| (c.id, n)),
                }
            }
            if Instant::now() >= deadline {
                return Err(RemoteError::Timeout(timeout, "waiting to be in sync"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops syncing: closes the connection, saves the cursor and stops the engine.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.engine.shutdown();
    }
}

impl Drop for RemoteSync {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn invalid_url(url: &str, reason: impl Into<String>) -> RemoteError {
    RemoteError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

fn plan(db: &Database, remote: &RemoteNode, options: &RemoteOptions) -> Result<Plan, RemoteError> {
    let url = remote.url.trim_end_matches('/');
    let (secure, rest) = if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else {
        return Err(invalid_url(url, "it must start with ws:// or wss://"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| invalid_url(url, format!("{port:?} is not a port number")))?,
        ),
        _ => (authority, if secure { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid_url(url, "it has no host"));
    }
    // The server's rule, so that a name it would refuse is refused here, with the reason.
    if let Err(e) = blazedb_protocol::DatabaseName::new(remote.database.as_str()) {
        return Err(RemoteError::InvalidOption(e.to_string()));
    }
    let tls = if secure {
        let roots = match &options.ca_file {
            Some(ca_file) => roots_from_file(ca_file)?,
            // Without a CA file, the public roots browsers trust (Mozilla's), compiled in.
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RemoteError::InvalidOption(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| invalid_url(url, format!("bad host name: {e}")))?;
        Some((Arc::new(config), name))
    } else {
        None
    };
    let token = options
        .enroll_token
        .as_deref()
        .map(EnrollmentToken::parse)
        .transpose()
        .map_err(|e| RemoteError::InvalidOption(e.to_string()))?;
    let server = format!("{}://{authority}", if secure { "wss" } else { "ws" });
    // The suite of the token until it has enrolled us (the server enrolls a key only with a
    // token of its suite), then the suite of the server key we pinned.
    let pinned = pinned_server_key(db, &server)?.map(|(suite, _)| suite);
    let suite: Suite = match (&token, pinned) {
        (Some(token), _) if !is_enrolled(db, &server)? => token.server_suite(),
        (_, Some(suite)) => suite,
        (Some(token), None) => token.server_suite(),
        (None, None) => return Err(RemoteError::NotEnrolled { server }),
    };
    Ok(Plan {
        remote: remote.clone(),
        request: format!("{url}/sync/{}", remote.database),
        server,
        host: host.to_owned(),
        port,
        tls,
        keys: node_keys_for(db, suite)?,
        token,
    })
}

/// Counts the bytes a connection moves.
struct Counted<S> {
    inner: S,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            self.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type BoxedTransport = Box<dyn TransportObject>;
trait TransportObject: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TransportObject for T {}

/// One attempt: TCP, TLS, WebSocket upgrade, handshake, enrollment. Returns the session,
/// ready to become a relay.
async fn open(
    db: &Database,
    plan: &Plan,
    options: &RemoteOptions,
    shared: &Shared,
) -> Result<super::session::Session<BoxedTransport>, RemoteError> {
    let address = format!("{}:{}", plan.host, plan.port);
    let connect = async {
        let tcp = TcpStream::connect((plan.host.as_str(), plan.port))
            .await
            .map_err(|source| RemoteError::Connect {
                address: address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let counted = Counted {
            inner: tcp,
            sent: shared.bytes_sent.clone(),
            received: shared.bytes_received.clone(),
        };
        let stream: BoxedTransport = match &plan.tls {
            None => Box::new(counted),
            Some((config, name)) => Box::new(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), counted)
                    .await
                    .map_err(|e| RemoteError::Tls {
                        address: address.clone(),
                        reason: e.to_string(),
                    })?,
            ),
        };
        let request = plan.request.as_str().into_client_request()?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config()))
                .await?;
        Ok::<_, RemoteError>(ws)
    };
    let ws = tokio::time::timeout(options.connect_timeout, connect)
        .await
        .unwrap_or(Err(RemoteError::Timeout(
            options.connect_timeout,
            "connecting to the server",
        )))?;
    // The key to expect: the one pinned for our suite, else the one in the token.
    let pinned =
        pinned_server_key(db, &plan.server)?.filter(|(suite, _)| *suite == plan.keys.suite());
    let expected = match (&pinned, &plan.token) {
        (Some((_, key)), _) => key.clone(),
        (None, Some(token)) => token.server_key().to_vec(),
        (None, None) => {
            return Err(RemoteError::NotEnrolled {
                server: plan.server.clone(),
            });
        }
    };
    *shared
        .server_key
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(fingerprint(&expected));
    let mut session = connect_handshake(
        ws,
        &plan.keys,
        &plan.remote.database,
        &expected,
        options.handshake_timeout,
    )
    .await?;
    // Until a session with the server has got as far as its Hello, enrollment may not have
    // happened (the connection may have been cut right after Enroll), so the token is sent
    // again; the server ignores it for a key it knows.
    if let Some(token) = &plan.token
        && !is_enrolled(db, &plan.server)?
    {
        session
            .send(&Message::Enroll {
                token: token.encode(),
            })
            .await?;
        // Pinned now: a refused enrollment is reported by the server's first message, and a
        // key that passed the token check is the server's either way.
        pin_server_key(db, &plan.server, session.suite(), session.peer_key())?;
    }
    Ok(session)
}

/// Prefix of the local settings marking that a session with a server got past enrollment.
pub(super) const ENROLLED_SETTING_PREFIX: &str = "sync/enrolled/";

/// Local setting marking that a session with a server got past enrollment.
fn enrolled_setting(server: &str) -> String {
    format!("{ENROLLED_SETTING_PREFIX}{server}")
}

fn is_enrolled(db: &Database, server: &str) -> Result<bool, RemoteError> {
    Ok(db
        .replication()
        .local_setting(&enrolled_setting(server))?
        .is_some())
}

/// Removes every record of `db` (a revoked device): purged, so nothing is synced or
/// tombstoned, in one transaction. Returns how many were removed.
fn purge_everything(db: &Database) -> Result<usize, blazedb_core::Error> {
    let mut keys: Vec<(String, blazedb_core::Uuid)> = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = db
            .replication()
            .snapshot_page(after.as_ref(), 1000, 1 << 20)?;
        keys.extend(page.into_iter().map(|r| (r.collection, r.id)));
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    db.transaction(|tx| {
        let mut removed = 0;
        for (collection, id) in &keys {
            if tx
                .replication()
                .purge(collection, *id, blazedb_core::PurgeReason::DeviceRevoked)?
            {
                removed += 1;
            }
        }
        Ok(removed)
    })
}

/// The reconnect loop.
async fn run(
    db: Database,
    plan: Plan,
    options: RemoteOptions,
    engine: Arc<SyncEngine>,
    shared: Arc<Shared>,
    sealing: Arc<DeviceSealing>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    let mut backoff = options.backoff_initial;
    while !*stopped.borrow() {
        attempt += 1;
        shared.set(RemoteState::Connecting { attempt }, None, None);
        let opened = tokio::select! {
            opened = open(&db, &plan, &options, &shared) => opened,
            _ = stopped.changed() => break,
        };
        match opened {
            Ok(session) => {
                let relay = session
                    .into_relay(None, options.relay.clone())
                    .with_layer(sealing.clone());
                let mut finished = relay.finished();
                // A server accepts only this node's own operations from it (the device link's
                // trust): what came from other nodes reached the server by their own links.
                let mut connect = ConnectOptions::new(plan.remote.database.clone())
                    .mode(options.mode)
                    .forward(false)
                    .name(format!("{}/{}", plan.server, plan.remote.database));
                connect.policy = shared
                    .policy
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let id = match engine.connect(relay, connect) {
                    Ok(id) => id,
                    Err(e) => {
                        shared.set(RemoteState::Failed, None, Some(e.to_string()));
                        return;
                    }
                };
                shared.sessions.fetch_add(1, Ordering::Relaxed);
                shared.set(RemoteState::Connected, Some(id), None);
                let started = Instant::now();
                let mut enrolled = is_enrolled(&db, &plan.server).unwrap_or(false);
                let mut tick = tokio::time::interval(Duration::from_millis(25));
                loop {
                    tokio::select! {
                        _ = finished.wait_for(|done| *done) => break,
                        _ = stopped.changed() => break,
                        _ = tick.tick(), if !enrolled => {
                            // The server's Hello arrived: it accepted our key.
                            let connected = engine.status().ok().is_some_and(|all| {
                                all.iter().any(|c| c.id == id && c.connected)
                            });
                            if connected {
                                enrolled = db
                                    .replication().set_local_setting(&enrolled_setting(&plan.server), Some(&[1]))
                                    .is_ok();
                            }
                        }
                    }
                }
                // Keep the final status (close reason) before the engine forgets it.
                let last = engine
                    .status()
                    .ok()
                    .and_then(|all| all.into_iter().find(|c| c.id == id));
                let _ = engine.disconnect(id);
                if *stopped.borrow() {
                    break;
                }
                let reason = last
                    .as_ref()
                    .and_then(|c| c.closed_reason.clone())
                    .unwrap_or_else(|| "the connection ended".into());
                // Retrying cannot help: the server refused us, one of the two found that this
                // file or the server's source is a copy of another database file, or our op log
                // lost writes the server never got.
                let refused = last.as_ref().is_some_and(|c| {
                    c.peer_close_code.is_some_and(CloseCode::stops_retrying)
                        || c.close_code.is_some_and(CloseCode::stops_retrying)
                        || c.log_compacted_past_peer
                });
                let revoked = last
                    .as_ref()
                    .is_some_and(|c| c.peer_close_code == Some(CloseCode::Revoked));
                if revoked && options.purge_on_revoke {
                    let reason = match purge_everything(&db) {
                        Ok(n) => format!(
                            "{reason}; {n} records of the database were removed from this file"
                        ),
                        Err(e) => format!(
                            "{reason}; removing the database's records from this file failed: {e}"
                        ),
                    };
                    shared.set(RemoteState::Failed, None, Some(reason));
                    return;
                }
                if refused {
                    shared.set(RemoteState::Failed, None, Some(reason));
                    return;
                }
                shared.set(
                    RemoteState::Waiting {
                        attempt,
                        retry_in: Duration::ZERO,
                    },
                    None,
                    Some(reason),
                );
                // A session that lasted resets the backoff.
                if started.elapsed() > Duration::from_secs(10) {
                    attempt = 0;
                    backoff = options.backoff_initial;
                }
            }
            Err(e) if e.is_permanent() => {
                shared.set(RemoteState::Failed, None, Some(e.to_string()));
                return;
            }
            Err(e) => shared.set(
                RemoteState::Waiting {
                    attempt,
                    retry_in: backoff,
                },
                None,
                Some(e.to_string()),
            ),
        }
        // Full jitter over the upper half: between backoff/2 and backoff.
        let half = backoff / 2;
        let jitter = half.mul_f64(rand::random::<f64>());
        let wait = half + jitter;
        shared.set(
            RemoteState::Waiting {
                attempt,
                retry_in: wait,
            },
            None,
            None,
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => break,
        }
        backoff = (backoff * 2).min(options.backoff_max);
    }
    shared.set(RemoteState::Stopped, None, None);
}

/// The certificate authorities in a PEM file: the only ones trusted then.
fn roots_from_file(ca_file: &std::path::Path) -> Result<rustls::RootCertStore, RemoteError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            RemoteError::InvalidOption(format!("cannot read {}: {e}", ca_file.display()))
        })?;
    if certs.is_empty() {
        return Err(RemoteError::InvalidOption(format!(
            "{} holds no certificate",
            ca_file.display()
        )));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| RemoteError::InvalidOption(format!("{}: {e}", ca_file.display())))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_optional_token_sets_or_clears_the_enrollment() {
        let none: Option<String> = None;
        assert_eq!(
            RemoteOptions::default()
                .enroll("a")
                .maybe_enroll(none)
                .enroll_token,
            None
        );
        assert_eq!(
            RemoteOptions::default()
                .enroll("a")
                .maybe_enroll(Some("b"))
                .enroll_token
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_database_name_the_server_would_refuse_is_refused_before_connecting() {
        let db = Database::in_memory().unwrap();
        for name in ["..", ".", "", "my bugs", "../bugs"] {
            let remote = RemoteNode::new("ws://127.0.0.1:9", name);
            let err = RemoteSync::connect(&db, remote, RemoteOptions::default().enroll("t"))
                .err()
                .unwrap_or_else(|| panic!("{name:?} was accepted"));
            assert!(
                matches!(&err, RemoteError::InvalidOption(m) if m.contains("invalid database name")),
                "{name:?}: {err}"
            );
        }
    }
}
