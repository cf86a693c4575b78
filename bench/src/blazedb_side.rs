//! The BlazeDB side: a real `blazedb-server` in this process, real devices
//! (`Database::enable_sync`), and light simulated devices that speak the protocol directly
//! (WebSocket upgrade, Noise `XX`, `Enroll`, `Hello`, `Pull`, then `Ops` answered by `Ack`)
//! without a database of their own, for the 1,000-device fan-out and the handshake timings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blazedb_core::{Database, NodeId, Uuid, VersionVector};
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_protocol::{Capabilities, CloseCode, Message, PROTOCOL_VERSION};
use blazedb_server::{MasterKey, Server, ServerConfig, ServerHandle};
use blazedb_sync::Mode;
use blazedb_sync::remote::{
    RemoteNode, RemoteOptions, RemoteSync, Session, SyncExt, connect_handshake, websocket_config,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Bug, COLLECTION, STALL, progress};

const USER: &str = "bench";
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A `blazedb-server` started in this process (its own runtime, two worker threads), with its
/// data in a temporary folder and a fresh random master key, plain `ws://` (no TLS).
pub struct BlazeServer {
    handle: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl BlazeServer {
    pub fn start() -> BlazeServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig {
            data_dir: dir.path().join("server"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: 8192,
            // Every bench device connects from 127.0.0.1, a thousand at once.
            max_pending: 8192,
            max_pending_per_source: 8192,
            ..ServerConfig::default()
        };
        let key = MasterKey::generate().expect("master key");
        let handle = Server::start_with_key(config, key).expect("start blazedb-server");
        handle
            .meta()
            .add_user(USER, &[], None)
            .expect("add the bench user");
        BlazeServer {
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle().local_addr()
    }

    pub fn url(&self) -> String {
        self.handle().url()
    }

    pub fn create_database(&self, name: &str) {
        self.handle()
            .meta()
            .create_database(name)
            .expect("create database");
    }

    /// A one-time enrollment token for the bench user.
    pub fn token(&self) -> String {
        self.handle()
            .meta()
            .create_token(USER, TOKEN_TTL)
            .expect("token")
            .to_string()
    }

    /// The server's static public key (what a token carries).
    pub fn server_key(&self) -> Vec<u8> {
        self.handle().meta().server_keys().public().to_vec()
    }

    /// Creates database `name` holding `n` bug records, written straight into the server's
    /// file (inserts in transactions of `batch`) before any device connects to it.
    /// Writes `n` bug records into hosted database `name` (created here) in transactions of
    /// `batch`; with `compact`, then drops its whole op log, so that a new device gets a
    /// snapshot instead.
    pub fn bulk_load(&self, name: &str, n: usize, batch: usize, compact: bool) {
        self.create_database(name);
        let db = self
            .handle()
            .meta()
            .open_database(name)
            .expect("open the hosted database");
        let mut done = 0;
        while done < n {
            let k = batch.min(n - done);
            let fields: Vec<_> = (done..done + k)
                .map(|i| Bug::nth(i as u64).fields())
                .collect();
            db.insert_many(COLLECTION, fields).expect("bulk insert");
            done += k;
        }
        assert_eq!(db.count(COLLECTION).expect("count"), n as u64);
        if compact {
            let head = db.replication().oplog_head().expect("op-log head");
            assert_eq!(db.replication().compact_oplog(head).expect("compact"), head);
        }
    }

    pub fn connections(&self) -> usize {
        self.handle().connections()
    }

    pub fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// A device: a database kept in step with a database on the server by `enable_sync`.
pub struct BlazeDevice {
    pub db: Database,
    pub sync: RemoteSync,
}

impl BlazeDevice {
    /// Enrolls `db` with `token` and waits until the first session is in sync.
    pub fn connect(
        db: Database,
        url: &str,
        database: &str,
        token: &str,
        mode: Mode,
    ) -> BlazeDevice {
        let sync = db
            .enable_sync(
                RemoteNode::new(url, database),
                RemoteOptions::default().enroll(token).mode(mode),
            )
            .expect("enable_sync");
        sync.wait_synced(STALL, |_| {}).expect("first sync");
        BlazeDevice { db, sync }
    }

    /// True when the server acknowledged every operation of this device's op log.
    pub fn idle(&self) -> bool {
        self.sync
            .status()
            .connection
            .is_some_and(|c| c.connected && c.ops_pending == 0)
    }

    /// Protocol messages the engine sent and received on the current connection.
    pub fn messages(&self) -> (u64, u64) {
        self.sync
            .status()
            .connection
            .map_or((0, 0), |c| (c.messages_sent, c.messages_received))
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated devices.

/// When each step of one connection set-up finished, from the start of the TCP connect.
#[derive(Debug, Clone, Copy)]
pub struct SetupTimes {
    pub tcp: Duration,
    pub websocket: Duration,
    pub noise: Duration,
    /// The server's `Hello` arrived.
    pub hello: Duration,
}

/// A connected simulated device.
pub struct SimSession {
    session: Session<TcpStream>,
    pub times: SetupTimes,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Connects like a device: TCP, WebSocket upgrade, Noise `XX` (checking the server's key),
/// `Enroll { token }` when given, our `Hello`, then waits for the server's `Hello`.
pub async fn sim_connect(
    addr: SocketAddr,
    database: &str,
    keys: &StaticKeys,
    node: NodeId,
    server_key: &[u8],
    token: Option<&str>,
) -> Result<SimSession, String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.map_err(err)?;
    let _ = tcp.set_nodelay(true);
    let tcp_done = start.elapsed();
    let request = format!("ws://{addr}/sync/{database}")
        .into_client_request()
        .map_err(err)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(websocket_config()))
            .await
            .map_err(err)?;
    let ws_done = start.elapsed();
    let mut session = connect_handshake(ws, keys, database, server_key, Duration::from_secs(60))
        .await
        .map_err(err)?;
    let noise_done = start.elapsed();
    if let Some(token) = token {
        session
            .send(&Message::Enroll {
                token: token.to_owned(),
            })
            .await
            .map_err(err)?;
    }
    session
        .send(&Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node,
            database: database.to_owned(),
            capabilities: Capabilities::SUPPORTED,
            head: 0,
        })
        .await
        .map_err(err)?;
    loop {
        if let Message::Hello { .. } = session.recv().await.map_err(err)? {
            break;
        }
    }
    let hello_done = start.elapsed();
    Ok(SimSession {
        session,
        times: SetupTimes {
            tcp: tcp_done,
            websocket: ws_done,
            noise: noise_done,
            hello: hello_done,
        },
    })
}

impl SimSession {
    /// Ends the session politely.
    pub async fn close(mut self) {
        let _ = self
            .session
            .send(&Message::close(CloseCode::Normal, "bench done"))
            .await;
    }

    /// Pulls the server's op log from the start and streams: every `Ops` is acknowledged at
    /// once, and the id of each record it carries is noted with the time it arrived. Runs until
    /// `stop` turns true or the connection ends; returns the notes.
    async fn receive(
        mut self,
        delivered: Arc<AtomicU64>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<(Uuid, Instant)> {
        let mut notes = Vec::new();
        let pull = Message::Pull {
            from: 0,
            vector: VersionVector::new(),
            checks: Vec::new(),
        };
        if self.session.send(&pull).await.is_err() {
            return notes;
        }
        loop {
            let message = tokio::select! {
                m = self.session.recv() => m,
                _ = stop.wait_for(|s| *s) => break,
            };
            match message {
                Ok(Message::Ops { to, ops, .. }) => {
                    let now = Instant::now();
                    notes.extend(ops.iter().map(|op| (op.record, now)));
                    delivered.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    if self.session.send(&Message::ack(to)).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Records { records }) => {
                    // Records that entered the device's scope (a server enforcing rules).
                    let now = Instant::now();
                    notes.extend(records.iter().map(|r| (r.id, now)));
                    delivered.fetch_add(records.len() as u64, Ordering::Relaxed);
                }
                Ok(Message::Ping { nonce }) => {
                    if self.session.send(&Message::Pong { nonce }).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("[bench] simulated device: {e}");
                    break;
                }
            }
        }
        self.close().await;
        notes
    }
}

/// Many simulated devices streaming one database, on a runtime of their own.
pub struct Fleet {
    pub delivered: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Uuid, Instant)>>>,
    pub connect_time: Duration,
}

impl Fleet {
    /// Enrolls and connects `n` devices to `database` (at most 32 handshakes at a time), and
    /// starts them pulling.
    pub fn connect(
        runtime: &tokio::runtime::Runtime,
        server: &BlazeServer,
        database: &str,
        n: usize,
    ) -> Fleet {
        let tokens: Vec<String> = (0..n).map(|_| server.token()).collect();
        Fleet::connect_with(runtime, server, database, tokens)
    }

    /// Like [`Fleet::connect`], one device per token (each token names its user).
    pub fn connect_with(
        runtime: &tokio::runtime::Runtime,
        server: &BlazeServer,
        database: &str,
        tokens: Vec<String>,
    ) -> Fleet {
        let n = tokens.len();
        let server_key = Arc::new(server.server_key());
        let addr = server.addr();
        let start = Instant::now();
        let sessions: Vec<SimSession> = runtime.block_on(async {
            let limit = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::new();
            for token in tokens {
                let (limit, server_key, database) =
                    (limit.clone(), server_key.clone(), database.to_owned());
                tasks.push(tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await.expect("semaphore");
                    let keys = StaticKeys::generate(Suite::default()).expect("keys");
                    sim_connect(
                        addr,
                        &database,
                        &keys,
                        NodeId::random(),
                        &server_key,
                        Some(&token),
                    )
                    .await
                }));
            }
            let mut sessions = Vec::new();
            for task in tasks {
                sessions.push(
                    task.await
                        .expect("task")
                        .expect("simulated device connects"),
                );
            }
            sessions
        });
        let connect_time = start.elapsed();
        let delivered = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = sessions
            .into_iter()
            .map(|s| runtime.spawn(s.receive(delivered.clone(), stopped.clone())))
            .collect();
        progress(&format!(
            "{n} simulated devices connected in {:.1} s; server has {} connections",
            connect_time.as_secs_f64(),
            server.connections()
        ));
        Fleet {
            delivered,
            stop,
            tasks,
            connect_time,
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Stops every device and returns what each noted.
    pub fn finish(self, runtime: &tokio::runtime::Runtime) -> Vec<Vec<(Uuid, Instant)>> {
        self.stop.send_replace(true);
        runtime.block_on(async {
            let mut all = Vec::new();
            for task in self.tasks {
                all.push(task.await.expect("device task"));
            }
            all
        })
    }
}
