//! The gRPC baseline: the same relay path as BlazeDB's server, on tonic (HTTP/2) and prost.
//!
//! * [`GrpcServer`]: the `Relay` service. Each device opens one bidirectional `Sync` stream and
//!   says `Hello { database }`; the server answers `Hello`. A `Records` message from a device is
//!   (in the `store` variant) written to the server's own encrypted copy of that database in
//!   one transaction, as BlazeDB's server applies an `Ops`, then forwarded to every other
//!   device streaming the same database, and acknowledged to its sender with `Ack { seq }`.
//! * [`GrpcDevice`]: a device: a BlazeDB database (encrypted file) and a stream to the server,
//!   driven by a thread with a current-thread tokio runtime (as `enable_sync` runs). Records
//!   it receives are applied to its database in one transaction per message and acknowledged.
//!
//! No TLS (the BlazeDB side runs `ws://`, without TLS, too); no gRPC compression unless asked
//! for (`zstd`: both directions, every message).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Uuid, fields};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::support::{Bug, COLLECTION, PASSWORD, STALL};

pub mod pb {
    tonic::include_proto!("relay");
}

use pb::envelope::Kind;
use pb::relay_client::RelayClient;
use pb::relay_server::{Relay, RelayServer};
use pb::{Ack, Envelope, Hello, Records};

fn envelope(kind: Kind) -> Envelope {
    Envelope { kind: Some(kind) }
}

fn uuid(bytes: &[u8]) -> Uuid {
    Uuid::from_slice(bytes).unwrap_or_default()
}

pub fn to_pb(id: Uuid, bug: &Bug) -> pb::Bug {
    pb::Bug {
        id: id.as_bytes().to_vec(),
        title: bug.title.clone(),
        status: bug.status.to_owned(),
        team_id: bug.team.as_bytes().to_vec(),
        assignee: bug.assignee.as_bytes().to_vec(),
    }
}

/// Writes received records to `db` in one transaction, under their own ids.
fn apply(db: &Database, bugs: &[pb::Bug]) {
    db.transaction(|t| {
        for b in bugs {
            t.insert_with_id(
                COLLECTION,
                uuid(&b.id),
                fields! {
                    "title" => b.title.as_str(),
                    "status" => b.status.as_str(),
                    "teamId" => uuid(&b.team_id),
                    "assignee" => uuid(&b.assignee),
                },
            )?;
        }
        Ok(())
    })
    .expect("apply records");
}

// ---------------------------------------------------------------------------------------------
// Server.

type Outbox = mpsc::Sender<Result<Envelope, Status>>;

struct Shared {
    /// Where the server keeps its copies of the databases; `None`: forward only.
    store: Option<PathBuf>,
    databases: Mutex<HashMap<String, Database>>,
    streams: Mutex<HashMap<String, Vec<(u64, Outbox)>>>,
    next_stream: AtomicU64,
}

impl Shared {
    fn database(&self, name: &str) -> Option<Database> {
        let dir = self.store.as_ref()?;
        let mut dbs = self.databases.lock().expect("lock");
        Some(
            dbs.entry(name.to_owned())
                .or_insert_with(|| {
                    Database::create(dir.join(format!("{name}.blazedb")), PASSWORD)
                        .expect("server database")
                })
                .clone(),
        )
    }

    fn others(&self, database: &str, me: u64) -> Vec<Outbox> {
        self.streams
            .lock()
            .expect("lock")
            .get(database)
            .map(|v| {
                v.iter()
                    .filter(|(id, _)| *id != me)
                    .map(|(_, tx)| tx.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct RelayService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Relay for RelayService {
    type SyncStream = ReceiverStream<Result<Envelope, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let me = shared.next_stream.fetch_add(1, Ordering::Relaxed);
            let mut joined: Option<(String, Option<Database>)> = None;
            while let Ok(Some(message)) = incoming.message().await {
                match message.kind {
                    Some(Kind::Hello(hello)) => {
                        let db = shared.database(&hello.database);
                        shared
                            .streams
                            .lock()
                            .expect("lock")
                            .entry(hello.database.clone())
                            .or_default()
                            .push((me, tx.clone()));
                        let answer = envelope(Kind::Hello(Hello {
                            database: hello.database.clone(),
                        }));
                        joined = Some((hello.database, db));
                        if tx.send(Ok(answer)).await.is_err() {
                            break;
                        }
                    }
                    Some(Kind::Records(records)) => {
                        let Some((name, db)) = &joined else { break };
                        if let Some(db) = db {
                            apply(db, &records.bugs);
                        }
                        let seq = records.seq;
                        let forward = envelope(Kind::Records(records));
                        for other in shared.others(name, me) {
                            let _ = other.send(Ok(forward.clone())).await;
                        }
                        if tx.send(Ok(envelope(Kind::Ack(Ack { seq })))).await.is_err() {
                            break;
                        }
                    }
                    Some(Kind::Ack(_)) | None => {}
                }
            }
            if let Some((name, _)) = joined
                && let Some(list) = shared.streams.lock().expect("lock").get_mut(&name)
            {
                list.retain(|(id, _)| *id != me);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A running gRPC relay server with a runtime of its own (two worker threads, like BlazeDB's
/// server).
pub struct GrpcServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: Option<tempfile::TempDir>,
}

impl GrpcServer {
    /// `store`: keep an encrypted copy of every database and apply each `Records` to it
    /// before forwarding (what BlazeDB's server does); otherwise forward only.
    pub fn start(store: bool) -> GrpcServer {
        let dir = store.then(|| tempfile::tempdir().expect("tempdir"));
        let shared = Arc::new(Shared {
            store: dir.as_ref().map(|d| d.path().to_owned()),
            databases: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(if store { "grpc-store" } else { "grpc-fwd" })
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let incoming = TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RelayServer::new(RelayService { shared })
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Zstd);
        runtime.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("[bench] gRPC server failed: {e}");
            }
        });
        GrpcServer {
            addr,
            stop: Some(stop),
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Devices.

async fn client(addr: SocketAddr, zstd: bool) -> RelayClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("gRPC connect");
    let client = RelayClient::new(channel);
    if zstd {
        client
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd)
    } else {
        client
    }
}

/// A device syncing one database through the gRPC relay.
pub struct GrpcDevice {
    pub db: Database,
    tx: mpsc::Sender<Envelope>,
    seq: AtomicU64,
    acked: Arc<AtomicU64>,
    /// Messages this device sent (records and acks) and received.
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcDevice {
    /// Connects `db` to the server at `addr` for `database` and returns once the server's
    /// `Hello` arrived.
    pub fn connect(addr: SocketAddr, database: &str, db: Database, zstd: bool) -> GrpcDevice {
        let (tx, rx) = mpsc::channel::<Envelope>(4096);
        let acked = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        tx.try_send(envelope(Kind::Hello(Hello {
            database: database.to_owned(),
        })))
        .expect("queue hello");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let thread = std::thread::Builder::new()
            .name("grpc-device".into())
            .spawn({
                let (db, acked, tx) = (db.clone(), acked.clone(), tx.clone());
                let (sent, received) = (sent.clone(), received.clone());
                move || {
                    runtime.block_on(async move {
                        let mut client = client(addr, zstd).await;
                        let run = async {
                            let response = client
                                .sync(ReceiverStream::new(rx))
                                .await
                                .expect("open the Sync stream");
                            let mut incoming = response.into_inner();
                            while let Ok(Some(message)) = incoming.message().await {
                                received.fetch_add(1, Ordering::SeqCst);
                                match message.kind {
                                    Some(Kind::Hello(_)) => {
                                        let _ = ready_tx.send(());
                                    }
                                    Some(Kind::Records(records)) => {
                                        apply(&db, &records.bugs);
                                        let ack = envelope(Kind::Ack(Ack { seq: records.seq }));
                                        sent.fetch_add(1, Ordering::SeqCst);
                                        if tx.send(ack).await.is_err() {
                                            break;
                                        }
                                    }
                                    Some(Kind::Ack(ack)) => acked.store(ack.seq, Ordering::SeqCst),
                                    None => {}
                                }
                            }
                        };
                        tokio::select! {
                            () = run => {}
                            _ = stopped => {}
                        }
                    });
                }
            })
            .expect("thread");
        ready.recv_timeout(STALL).expect("gRPC hello");
        GrpcDevice {
            db,
            tx,
            seq: AtomicU64::new(0),
            acked,
            sent,
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Sends records (already committed to this device's database) in one message; returns
    /// its sequence number.
    pub fn send(&self, records: Vec<pb::Bug>) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.tx
            .blocking_send(envelope(Kind::Records(Records { seq, bugs: records })))
            .expect("send records");
        seq
    }

    /// Inserts `bug` into this device's database and sends it: the app's write path.
    pub fn insert_and_send(&self, bug: &Bug) -> Uuid {
        let id = self.db.insert(COLLECTION, bug.fields()).expect("insert");
        self.send(vec![to_pb(id, bug)]);
        id
    }

    /// Inserts `bugs` in one transaction and sends them in one message.
    pub fn insert_many_and_send(&self, bugs: &[Bug]) -> Vec<Uuid> {
        let ids = self
            .db
            .insert_many(COLLECTION, bugs.iter().map(Bug::fields))
            .expect("insert_many");
        let records = ids.iter().zip(bugs).map(|(id, b)| to_pb(*id, b)).collect();
        self.send(records);
        ids
    }

    /// Messages sent and received so far (the `Hello`s included).
    pub fn messages(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::SeqCst),
            self.received.load(Ordering::SeqCst),
        )
    }

    /// True when the server acknowledged everything this device sent.
    pub fn all_acked(&self) -> bool {
        self.acked.load(Ordering::SeqCst) == self.seq.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcDevice {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One gRPC connection set-up, timed: TCP and HTTP/2 connection, then the `Sync` stream
/// opened with a `Hello` until the server's `Hello` arrives. Returns (connected, first Hello)
/// from the start.
pub async fn handshake_once(addr: SocketAddr, database: &str) -> (Duration, Duration) {
    let start = Instant::now();
    let mut client = client(addr, false).await;
    let connected = start.elapsed();
    let (tx, rx) = mpsc::channel::<Envelope>(4);
    tx.send(envelope(Kind::Hello(Hello {
        database: database.to_owned(),
    })))
    .await
    .expect("queue hello");
    let response = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("open the Sync stream");
    let mut incoming = response.into_inner();
    match incoming.message().await {
        Ok(Some(Envelope {
            kind: Some(Kind::Hello(_)),
        })) => {}
        other => panic!("expected the server's Hello, got {other:?}"),
    }
    let hello = start.elapsed();
    drop(tx);
    (connected, hello)
}
