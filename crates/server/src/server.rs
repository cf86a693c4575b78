//! The running server: HTTP routes (`/health`, `/sync/{database}`), the WebSocket upgrade,
//! the connection limit, TLS, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
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
    permits: Arc<Semaphore>,
    max_connections: usize,
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    fn connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.permits.available_permits())
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
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if let Some(notice) = made.renewal_notice(now) {
                    log::warn(format_args!("{notice}"));
                }
                Some(crate::tls::acceptor(&made.cert, &made.key)?)
            }
        };
        let meta = Arc::new(MetaStore::open_or_create(&config.data_dir, &key)?);
        drop(key);
        let hosted = Hosted::open_all(meta.clone())?;

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
        let state = Arc::new(AppState {
            hosted,
            session: Arc::new(SessionContext {
                meta: meta.clone(),
                handshake_timeout: config.handshake_timeout,
                send_queue: config.send_queue,
                revoked: revoked_rx,
            }),
            permits: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
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
            shutdown_rx.clone(),
        ));
        {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
            let header_timeout = config.handshake_timeout;
            let stop = shutdown_rx.clone();
            match acceptor {
                None => {
                    use axum::serve::ListenerExt;
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    runtime.spawn(serve_http(listener, app, header_timeout, stop, served_tx));
                }
                Some(acceptor) => {
                    let listener = crate::tls::listen(
                        listener,
                        acceptor,
                        config.handshake_timeout,
                        config.max_connections,
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
    L: axum::serve::Listener,
{
    // Every connection task holds a receiver; `closed()` says when the last one is gone.
    let (all_done, done) = watch::channel(());
    loop {
        let (io, _peer) = tokio::select! {
            () = crate::stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = crate::stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(done);
        });
    }
    drop(done);
    all_done.closed().await;
    let _ = served.send(());
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

    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is at its limit of {} connections; try again later",
                state.max_connections
            ),
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
        session::run(ws, context, hosted, shutdown, permit).await;
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
