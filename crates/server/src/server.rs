//! The running server: HTTP routes (`/health`, `/sync/{database}`), the WebSocket upgrade,
//! the connection limit, TLS, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::config::{ServerConfig, TlsConfig};
use crate::error::ServerError;
use crate::gate::{Gate, GateLimits, Ticket};
use crate::hosted::Hosted;
use crate::log;
use crate::master_key::MasterKey;
use crate::meta::MetaStore;
use crate::session::{self, SessionContext};

/// How long shutdown waits for connections to end, and for the HTTP server to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by every request.
struct AppState {
    hosted: Hosted,
    session: Arc<SessionContext>,
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// Authenticated sync connections.
    fn connections(&self) -> usize {
        let session = &self.session;
        session
            .max_connections
            .saturating_sub(session.permits.available_permits())
    }
}

/// How often the gate's refusals and failures are logged, in aggregate.
const GATE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The open-file limit the server asks for at start (the soft limit is raised towards the
/// hard one): every connection is a descriptor, and the common soft default of 1,024 runs
/// out long before `max_connections`.
const WANTED_OPEN_FILES: u64 = 1 << 20;

/// The ticket of one HTTP connection, until its WebSocket upgrade takes it along.
#[derive(Clone)]
struct TicketSlot(Arc<std::sync::Mutex<Option<Ticket>>>);

impl TicketSlot {
    fn take(&self) -> Option<Ticket> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn holds(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

/// Raises the soft open-file limit as far as the hard limit allows, and says what it got.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(WANTED_OPEN_FILES) {
        Ok(limit) if limit < 4096 => log::warn(format_args!(
            "the open-file limit is {limit}: each connection takes one, so the server refuses \
             connections past about {limit}; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        )),
        Ok(_) => {}
        Err(e) => log::warn(format_args!("cannot raise the open-file limit: {e}")),
    }
}

/// Starts servers. See [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Starts a server with the master key from the environment, a key file or development
    /// mode (see [`MasterKey::resolve_from_environment`]); warnings about the key go to
    /// standard error.
    pub fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
        let key = MasterKey::resolve_from_environment(&config)?;
        for warning in &key.warnings {
            log::warn(format_args!("{warning}"));
        }
        Server::start_with_key(config, key.key)
    }

    /// Starts a server with this master key: opens the meta store and every hosted database,
    /// starts their sync engines, binds `config.listen` and serves on a runtime of its own
    /// (two worker threads). Returns once the socket is bound.
    pub fn start_with_key(
        config: ServerConfig,
        key: MasterKey,
    ) -> Result<ServerHandle, ServerError> {
        let acceptor = match &config.tls {
            TlsConfig::Off => None,
            TlsConfig::Files { cert, key } => Some(crate::tls::acceptor(cert, key)?),
            TlsConfig::SelfSigned => {
                let made = crate::tls::self_signed(&config.data_dir)?;
                log::warn(format_args!(
                    "TLS uses a self-signed certificate for localhost ({}{}); clients must trust \
                     that file explicitly. Use a real certificate ([tls] cert and key) in \
                     production.",
                    made.cert.display(),
                    if made.made { ", made now" } else { "" }
                ));
                if let Some(notice) = made.renewal_notice(crate::tls::unix_now()) {
                    log::warn(format_args!("{notice}"));
                }
                Some(crate::tls::acceptor(&made.cert, &made.key)?)
            }
        };
        let meta = Arc::new(MetaStore::open_or_create(&config.data_dir, &key)?);
        drop(key);
        let hosted = Hosted::open_all(meta.clone())?;
        for name in meta.list_databases()? {
            if meta.access_rules(&name)?.is_none() {
                log::warn(format_args!(
                    "database {name} has no access rules: every enrolled user reads and writes \
                     everything (set them with `blazedb-server admin access set {name} FILE`)"
                ));
            }
        }

        let std_listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = std_listener.local_addr().map_err(bind_error)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("blazedb-server")
            .enable_all()
            .build()
            .map_err(|e| ServerError::Internal(format!("cannot start the async runtime: {e}")))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let initially_revoked = meta.revoked_keys()?;
        let (revoked_tx, revoked_rx) = watch::channel(Arc::new(initially_revoked));
        let (version_tx, version_rx) = watch::channel(meta.version()?);
        raise_open_file_limit();
        let gate = Gate::new(GateLimits {
            total: config.max_pending,
            per_source: config.max_pending_per_source,
            time: config.handshake_timeout,
            failures: config.max_auth_failures,
        });
        let state = Arc::new(AppState {
            hosted,
            session: Arc::new(SessionContext {
                meta: meta.clone(),
                send_queue: config.send_queue,
                revoked: revoked_rx,
                meta_version: version_rx,
                gate: gate.clone(),
                permits: Arc::new(Semaphore::new(config.max_connections)),
                max_connections: config.max_connections,
            }),
            shutdown: shutdown_rx.clone(),
        });
        let app = Router::new()
            .route("/health", get(health))
            .route("/sync/{database}", get(sync))
            .with_state(state.clone());

        runtime.spawn(compact_periodically(
            state.clone(),
            config.oplog_keep,
            config.compact_interval,
            shutdown_rx.clone(),
        ));
        let (served_tx, served) = std_mpsc::channel();
        runtime.spawn(session::watch_revocations(
            meta.clone(),
            revoked_tx,
            version_tx,
            shutdown_rx.clone(),
        ));
        runtime.spawn(log_gate_summaries(gate.clone(), shutdown_rx.clone()));
        {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
            let header_timeout = config.handshake_timeout;
            let stop = shutdown_rx.clone();
            match acceptor {
                None => {
                    let listener = GatedTcp::new(listener, gate);
                    runtime.spawn(serve_http(listener, app, header_timeout, stop, served_tx));
                }
                Some(acceptor) => {
                    let listener = crate::tls::listen(
                        GatedTcp::new(listener, gate),
                        acceptor,
                        shutdown_rx.clone(),
                    )
                    .map_err(bind_error)?;
                    runtime.spawn(serve_http(listener, app, header_timeout, stop, served_tx));
                }
            }
        }

        Ok(ServerHandle {
            oplog_keep: config.oplog_keep,
            local_addr,
            tls: !matches!(config.tls, TlsConfig::Off),
            meta,
            state,
            shutdown: shutdown_tx,
            served,
            runtime: Some(runtime),
        })
    }
}

/// A running server. [`ServerHandle::shutdown`] (or dropping the handle) stops it.
#[must_use = "dropping the handle stops the server at once"]
pub struct ServerHandle {
    oplog_keep: u64,
    local_addr: SocketAddr,
    tls: bool,
    meta: Arc<MetaStore>,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    served: std_mpsc::Receiver<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address the server listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// True when the server speaks TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's base URL: `ws://127.0.0.1:7420` or `wss://…`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "wss" } else { "ws" },
            self.local_addr
        )
    }

    /// The meta store (users, tokens, devices, databases), e.g. to create a token in-process.
    pub fn meta(&self) -> &Arc<MetaStore> {
        &self.meta
    }

    /// The access rules in force for `database` (`None`: it has none, everyone reads and
    /// writes everything). Cheap: parsed rules are cached until the meta store changes, so
    /// polling this sees `admin access set` made by another process. Blocking (SQLite).
    pub fn access_rules(
        &self,
        database: &str,
    ) -> Result<Option<Arc<blazedb_access::Rules>>, ServerError> {
        Ok(self.meta.current_access_rules(database)?)
    }

    /// Sync connections open now.
    pub fn connections(&self) -> usize {
        self.state.connections()
    }

    /// The sync engine's view of database `name`'s connections (`None` for an unknown
    /// database): one entry per device connected now. Blocking.
    pub fn engine_connections(
        &self,
        name: &str,
    ) -> Result<Option<Vec<blazedb_sync::ConnectionStatus>>, ServerError> {
        let Some(hosted) = self.state.hosted.get(name)? else {
            return Ok(None);
        };
        hosted
            .engine
            .status()
            .map(Some)
            .map_err(|source| ServerError::Engine {
                name: name.to_owned(),
                source,
            })
    }

    /// Compacts every open database's op log now, as the server does every
    /// `compact_interval`: each keeps its newest `oplog_keep` entries and whatever a
    /// connected device still streams from. Returns each database's new op-log start.
    /// Blocking.
    pub fn compact_oplogs(&self) -> Result<Vec<(String, u64)>, ServerError> {
        self.state.hosted.compact_all(self.oplog_keep)
    }

    /// Hosted databases open now.
    pub fn databases(&self) -> usize {
        self.state.hosted.count()
    }

    /// Stops accepting, closes every connection (`Close { GoingAway }` from each sync
    /// engine), waits for connections to end (at most a few seconds), stops the engines and
    /// the runtime. Blocking; call it outside async code.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        // 1. Stop accepting; connection tasks that are still setting up give up.
        self.shutdown.send_replace(true);
        let _ = self.served.recv_timeout(SHUTDOWN_GRACE);
        // 2. Every engine closes its connections and stops.
        self.state.hosted.shutdown();
        // 3. Wait until every connection task has given its slot back.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.state.connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves HTTP/1.1 on the connections `listener` accepts until `shutdown`, then lets the
/// requests under way finish. This is `axum::serve` plus a limit on reading each request's
/// headers (`header_timeout`): a client that connects and sends nothing, or trickles a request
/// byte by byte, loses its socket instead of holding it forever. Returns once every
/// connection has ended (an upgraded WebSocket is handed off and ends its HTTP connection),
/// and says so on `served`.
async fn serve_http<L>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    served: std_mpsc::Sender<()>,
) where
    L: axum::serve::Listener<Addr = Ticket>,
{
    // Every connection task holds a receiver; `closed()` says when the last one is gone.
    let (all_done, done) = watch::channel(());
    loop {
        let (io, ticket) = tokio::select! {
            () = crate::stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let deadline = ticket.deadline();
        let slot = TicketSlot(Arc::new(std::sync::Mutex::new(Some(ticket))));
        // Each request of the connection can reach its ticket (the upgrade takes it along).
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(slot.clone())),
        );
        let mut stop = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let mut expired = std::pin::pin!(tokio::time::sleep_until(deadline));
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = crate::stopped(&mut stop) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                        break;
                    }
                    // A connection that has not authenticated by its deadline (plain HTTP
                    // kept open, an upgrade still in progress) loses its socket; one whose
                    // upgrade took the ticket is the session's to time out.
                    () = expired.as_mut(), if slot.holds() => {
                        if slot.holds() {
                            break;
                        }
                    }
                }
            }
            drop(slot);
            drop(done);
        });
    }
    drop(done);
    all_done.closed().await;
    let _ = served.send(());
}

/// Accepts TCP connections and lets in those the gate has room for (each with its ticket);
/// the others are closed at once. Accept errors (out of file descriptors, …) are logged, at
/// most one line a second with how many there were.
pub(crate) struct GatedTcp {
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    errors: u64,
    last_error_log: Option<Instant>,
}

impl GatedTcp {
    fn new(listener: tokio::net::TcpListener, gate: Arc<Gate>) -> GatedTcp {
        GatedTcp {
            listener,
            gate,
            errors: 0,
            last_error_log: None,
        }
    }

    /// The next connection the gate lets in.
    pub(crate) async fn next(&mut self) -> (tokio::net::TcpStream, Ticket) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    let Ok(ticket) = self.gate.enter(peer.ip()) else {
                        // Dropped before any handshake; counted in the gate's summary.
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    return (tcp, ticket);
                }
                Err(e) => {
                    self.errors += 1;
                    let due = self
                        .last_error_log
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                    if due {
                        log::error(format_args!(
                            "accepting connections failed ({} times since the last report): {e}",
                            self.errors
                        ));
                        self.errors = 0;
                        self.last_error_log = Some(Instant::now());
                    }
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl axum::serve::Listener for GatedTcp {
    type Io = tokio::net::TcpStream;
    type Addr = Ticket;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other(
            "a gated listener has no address of its own",
        ))
    }
}

/// Logs the gate's summary of refusals and failures once a minute, when there were any.
async fn log_gate_summaries(gate: Arc<Gate>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(GATE_SUMMARY_EVERY) => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        if let Some(line) = gate.summary() {
            log::warn(format_args!("{line}"));
        }
    }
}

/// Compacts every hosted database's op log every `interval` until shutdown. A failure is
/// logged and retried at the next round: the log only grows meanwhile.
async fn compact_periodically(
    state: Arc<AppState>,
    keep: u64,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        let state = state.clone();
        match tokio::task::spawn_blocking(move || state.hosted.compact_all(keep)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error(format_args!("op-log compaction failed: {e}")),
            Err(e) => log::error(format_args!("op-log compaction stopped: {e}")),
        }
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "databases": state.hosted.count(),
        "connections": state.connections(),
        "pending": state.session.gate.pending(),
    }))
    .into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

/// True when header `name` lists `token` (comma-separated, case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

async fn sync(
    State(state): State<Arc<AppState>>,
    Extension(slot): Extension<TicketSlot>,
    Path(database): Path<String>,
    mut request: Request,
) -> Response {
    let lookup = {
        let state = state.clone();
        let name = database.clone();
        tokio::task::spawn_blocking(move || state.hosted.get(&name)).await
    };
    let hosted = match lookup {
        Ok(Ok(Some(hosted))) => hosted,
        Ok(Ok(None)) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("unknown database {database:?}"),
            );
        }
        Ok(Err(e)) => {
            log::error(format_args!("opening database {database:?} failed: {e}"));
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the server cannot open database {database:?}"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            );
        }
    };

    let headers = request.headers();
    if !header_has_token(headers, UPGRADE, "websocket")
        || !header_has_token(headers, CONNECTION, "upgrade")
    {
        return text(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks WebSocket only (Connection: Upgrade, Upgrade: websocket)"
                .to_owned(),
        );
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported".to_owned(),
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the WebSocket upgrade has no Sec-WebSocket-Key".to_owned(),
        );
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned(),
        );
    };

    // The slot is taken once the device authenticates (in the session); checked here too, so
    // that a full server answers before any handshake.
    if state.session.permits.available_permits() == 0 {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is at its limit of {} connections; try again later",
                state.session.max_connections
            ),
        );
    }
    let Some(ticket) = slot.take() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this connection has no room to authenticate; try again".to_owned(),
        );
    };
    if *state.shutdown.borrow() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".to_owned(),
        );
    }

    let on_upgrade = hyper::upgrade::on(&mut request);
    let context = state.session.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(blazedb_sync::remote::websocket_config()),
        )
        .await;
        session::run(ws, context, hosted, shutdown, ticket).await;
    });

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens_are_matched_in_lists_and_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(header_has_token(&headers, CONNECTION, "upgrade"));
        assert!(!header_has_token(&headers, CONNECTION, "close"));
        assert!(!header_has_token(&headers, UPGRADE, "websocket"));
    }
}
