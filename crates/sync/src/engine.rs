//! [`SyncEngine`]: one per database; streams its op log to peers and merges theirs.
//!
//! The engine runs on its own thread and sleeps on one channel. It wakes when the database
//! commits (through [`Database::on_commit`], so there is no polling loop), when a relay
//! delivers a message, or when the application asks for something (connect, mode change,
//! status). SQLite calls block, so a dedicated thread keeps them off any async runtime, and
//! an in-process sync costs two channel hops and no encoding.
//!
//! The session on each connection is the one specified in `docs/protocol.md` ("Session"):
//! `Hello`, then `Pull { from, vector }` from a side that wants to receive, then a stream of
//! `Ops { from, to, ops }` answered by `Ack { position }`. The receiver stores its cursor (the
//! last `to` it applied) in the same SQLite transaction as the operations, so a restart can
//! neither lose nor repeat anything; acknowledgements only feed the status.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blazedb_core::{CommitListener, Database, NodeId, OpId, Operation, SnapshotKey, VersionVector};
use blazedb_format::SnapshotRecord;
use blazedb_protocol::{
    Capabilities, CloseCode, Message, OpCheck, PROTOCOL_VERSION, negotiate_version,
};

use crate::error::{Result, SyncError};
use crate::relay::{ConnectionId, Hold, Inbox, Relay};

/// Most operations read from the op log for one `Ops` message (entries are never split, so
/// a message may exceed it by one entry's worth). Big enough to amortise a transaction on
/// the receiving side, small enough to keep a message well under the frame limit.
pub const MAX_BATCH_OPS: usize = 4096;

/// Most `Ops` messages in flight (sent, not yet acknowledged) per connection. A slow peer
/// therefore holds at most this many batches of our memory and its relay's.
pub const WINDOW: usize = 8;

/// Most records in one `Snapshot` part: many records per transaction on the receiving side.
pub const SNAPSHOT_PART_RECORDS: usize = 1000;

/// About the most bytes of record states in one `Snapshot` part (a part ends after the record
/// that crosses it), so that each message stays far below the frame limit.
pub const SNAPSHOT_PART_BYTES: usize = 1 << 20;

/// Most events handled before the engine applies what it collected; bounds the size of one
/// apply transaction while still merging bursts.
const MAX_EVENTS_PER_ROUND: usize = 256;

/// Most `Pull`s a peer may send within [`PULL_PERIOD`]; one more closes the connection. A
/// session needs one, plus one per gap it recovers from or mode change: far fewer.
pub const MAX_PULLS_PER_PERIOD: u32 = 64;
/// See [`MAX_PULLS_PER_PERIOD`].
pub const PULL_PERIOD: Duration = Duration::from_secs(10);

/// Recent op-log entries kept in memory from commit events, so that a connection that is
/// caught up streams a new commit without reading it back from SQLite.
const RECENT_ENTRIES: usize = 256;
/// Most operations those entries hold together: the cache is for small commits, and a peer
/// that sends big batches (each applied as one entry) must not make it hold 256 of them.
const RECENT_OPS: usize = 4096;

/// Which way operations flow on a connection, seen from the side that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Both sides send and receive.
    Bidirectional,
    /// This side only pulls: it receives the peer's operations and sends none.
    ReadOnly,
    /// This side only pushes: it sends its operations and accepts none.
    WriteOnly,
}

impl Mode {
    /// Does this side send its operations?
    pub fn sends(self) -> bool {
        matches!(self, Mode::Bidirectional | Mode::WriteOnly)
    }

    /// Does this side accept the peer's operations?
    pub fn receives(self) -> bool {
        matches!(self, Mode::Bidirectional | Mode::ReadOnly)
    }

    /// The same connection seen from the other side.
    pub fn reversed(self) -> Mode {
        match self {
            Mode::Bidirectional => Mode::Bidirectional,
            Mode::ReadOnly => Mode::WriteOnly,
            Mode::WriteOnly => Mode::ReadOnly,
        }
    }

    /// The name used in graphs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bidirectional => "bidirectional",
            Mode::ReadOnly => "read-only",
            Mode::WriteOnly => "write-only",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = SyncError;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "bidirectional" | "both" => Ok(Mode::Bidirectional),
            "read-only" | "pull" => Ok(Mode::ReadOnly),
            "write-only" | "push" => Ok(Mode::WriteOnly),
            other => Err(SyncError::InvalidArgument(format!(
                "unknown mode {other:?} (expected bidirectional, read-only or write-only)"
            ))),
        }
    }
}

/// How to run one connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// A label for status and graphs (usually the peer's name).
    pub name: String,
    /// The name of the database on the other side, sent in `Hello`.
    pub remote_database: String,
    /// Which way operations flow, seen from this side.
    pub mode: Mode,
    /// Send operations that other nodes made (relay them), not only our own. On by default:
    /// chains and rings need it, and version vectors keep it from sending anything twice.
    pub forward: bool,
    /// Whose operations the peer may send us. [`PeerTrust::Relay`] by default: the
    /// application links databases it owns. A server sets [`PeerTrust::Origin`] on every
    /// device link.
    pub trust: PeerTrust,
}

/// Whose operations a connection's peer may send, decided by the side that accepts the
/// connection from what authenticated the peer (docs/protocol.md, "Trust on a link").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerTrust {
    /// The peer relays: its operations may have been made by any node, and it may send
    /// snapshots. For links between databases of one application, and for links the
    /// operator declared as relays (server to server, trusted peers).
    Relay,
    /// The peer is the node with this id and nothing else: its `Hello` must carry this id,
    /// every operation it sends must have been made by this node, and it may not send a
    /// snapshot (a snapshot carries other nodes' writes). A server binds a device's node id
    /// to its key at enrolment and sets this on the device's link; anything else closes
    /// the connection with `Unauthorized` before a byte of it is stored.
    Origin(NodeId),
}

impl ConnectOptions {
    /// A bidirectional, forwarding connection to `remote_database`, labelled with its name.
    pub fn new(remote_database: impl Into<String>) -> ConnectOptions {
        let remote_database = remote_database.into();
        ConnectOptions {
            name: remote_database.clone(),
            remote_database,
            mode: Mode::Bidirectional,
            forward: true,
            trust: PeerTrust::Relay,
        }
    }

    /// Sets whose operations the peer may send (see [`PeerTrust`]).
    pub fn trust(mut self, trust: PeerTrust) -> ConnectOptions {
        self.trust = trust;
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> ConnectOptions {
        self.mode = mode;
        self
    }

    /// Sets whether operations made by other nodes are relayed on this connection.
    pub fn forward(mut self, forward: bool) -> ConnectOptions {
        self.forward = forward;
        self
    }

    /// Sets the label.
    pub fn name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.name = name.into();
        self
    }
}

/// The state of one connection, as [`SyncEngine::status`] reports it.
#[derive(Debug, Clone)]
pub struct ConnectionStatus {
    pub id: ConnectionId,
    pub name: String,
    /// The relay's kind ("in-memory", "unix", …).
    pub transport: &'static str,
    pub mode: Mode,
    /// The peer's node id, once its `Hello` arrived.
    pub peer: Option<NodeId>,
    /// True from the peer's `Hello` until the connection ends.
    pub connected: bool,
    /// Operations in our op log that the peer has not acknowledged (0 when this side does
    /// not send).
    pub ops_pending: u64,
    /// The last op-log position the peer acknowledged, and when.
    pub last_ack: Option<(u64, Instant)>,
    /// How long the oldest unacknowledged batch has been waiting (zero when all are acked).
    pub lag: Duration,
    /// Operations sent to the peer.
    pub ops_sent: u64,
    /// Operations from the peer merged here for the first time.
    pub ops_applied: u64,
    /// Operations from the peer that were already here (arrived by another path, or resent).
    pub ops_duplicate: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// True while the peer has pulled and this side streams its op log to it.
    pub streaming: bool,
    /// Our durable cursor into the peer's op log: how far its operations are applied here.
    pub cursor: u64,
    /// The cursor when this connection's session started.
    pub cursor_at_start: u64,
    /// The furthest op-log position the peer has announced (its head when the session
    /// started, or a later range's end). `cursor` reaching it means caught up.
    pub peer_head: u64,
    /// The highest [`SyncEngine::barrier`] the peer has answered.
    pub barrier: u64,
    /// Why the connection ended, if it did.
    pub closed_reason: Option<String>,
    /// The code of the peer's `Close`, when the peer ended the connection with one.
    pub peer_close_code: Option<CloseCode>,
    /// The code of our `Close`, when this side ended the connection with one (a peer that
    /// broke the rules gets `ProtocolError` or `Unauthorized`).
    pub close_code: Option<CloseCode>,
    /// A snapshot being received from the peer: (records applied so far, records in all).
    pub snapshot_in: Option<(u64, u64)>,
    /// A snapshot being sent to the peer: (records sent so far, records in all).
    pub snapshot_out: Option<(u64, u64)>,
}

/// What a user does about a copied database file.
const REIDENTIFY: &str = "give the copy a new identity with `blazedb reidentify FILE` (a copy \
                          enrolled with a server then needs a new enrolment token)";

/// Why a connection closes when operation `op` differs between this database (node `own`)
/// and the peer (node `peer`): the close reason the peer's user reads.
fn copy_reason(own: NodeId, peer: NodeId, op: OpId) -> String {
    if op.origin == own {
        format!(
            "operation {op} under this database's node id differs from the peer's: this \
             database file is a copy of another with the same node id, or the other is a copy \
             of it; {REIDENTIFY}"
        )
    } else if op.origin == peer {
        format!(
            "your operation {op} differs from the one with that id here: your database file \
             is a copy of another with the same node id that synced here first; {REIDENTIFY}"
        )
    } else {
        format!(
            "operation {op} differs from the one with that id here: two database files share \
             node id {} (one is a copy of the other); {REIDENTIFY}",
            op.origin
        )
    }
}

/// How long a range with nothing the peer lacks may wait for a batch to ride with (its own
/// operations coming back, on a two-way connection): one message instead of two per write,
/// and the peer's cursor lags by at most this much.
pub const ECHO_FLUSH_AFTER: Duration = Duration::from_millis(200);

/// The bit that marks a `Ping` nonce as a barrier (keepalive pings never set it).
const BARRIER_NONCE: u64 = 1 << 63;

/// What wakes the engine thread.
pub(crate) enum Event {
    /// The database committed a transaction that wrote op-log entries `first..=last`,
    /// holding `ops`.
    Committed {
        first: u64,
        last: u64,
        ops: Arc<[Operation]>,
    },
    /// A message from a connection's peer, with the relay budget it holds (if any) until
    /// the engine is done with it.
    Message {
        connection: ConnectionId,
        message: Message,
        hold: Option<Hold>,
    },
    /// A connection ended.
    Closed {
        connection: ConnectionId,
        reason: String,
    },
    Command(Command),
}

pub(crate) enum Command {
    Connect {
        id: ConnectionId,
        relay: Box<dyn Relay>,
        options: ConnectOptions,
    },
    Disconnect {
        id: ConnectionId,
        /// What the peer is told (`Normal`, "disconnected" by default).
        close: Option<(CloseCode, String)>,
        reply: Sender<Result<()>>,
    },
    SetMode {
        id: ConnectionId,
        mode: Mode,
        reply: Sender<Result<()>>,
    },
    Status {
        /// One connection, or all of them.
        only: Option<ConnectionId>,
        reply: Sender<Result<Vec<ConnectionStatus>>>,
    },
    Barrier {
        id: ConnectionId,
        reply: Sender<Result<u64>>,
    },
    Rescan,
    CompactOplog {
        keep: u64,
        reply: Sender<Result<u64>>,
    },
    WaitIdle {
        deadline: Instant,
        reply: Sender<bool>,
    },
    Shutdown,
}

/// How an engine watches its connections.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// After this long without hearing from a peer, send it a `Ping`.
    pub ping_after: Duration,
    /// After this long without hearing from a peer, close the connection: a peer that hangs
    /// without closing (a frozen process, a half-open socket) must not hold a connection open.
    pub close_after: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ping_after: Duration::from_secs(15),
            close_after: Duration::from_secs(45),
        }
    }
}

/// Counters shared with the application without a round trip to the engine thread.
#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    sent: AtomicU64,
}

/// Keeps one database in step with its peers. Dropping the engine closes its connections
/// (with `Close { GoingAway }`) and stops its thread.
#[must_use = "dropping the engine closes its connections and stops it at once"]
pub struct SyncEngine {
    node: NodeId,
    name: String,
    events: Sender<Event>,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
    _commits: CommitListener,
}

impl fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncEngine")
            .field("name", &self.name)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// Starts the engine of `db`, known to peers as `name` (the database name they put in
    /// their `Hello`).
    pub fn start(db: Database, name: &str) -> Result<SyncEngine> {
        SyncEngine::start_with(db, name, EngineOptions::default())
    }

    /// Like [`SyncEngine::start`], with options.
    pub fn start_with(db: Database, name: &str, options: EngineOptions) -> Result<SyncEngine> {
        if name.is_empty() || name.len() > blazedb_protocol::MAX_DATABASE_NAME_LEN {
            return Err(SyncError::InvalidArgument(format!(
                "a database name has 1 to {} bytes, not {}",
                blazedb_protocol::MAX_DATABASE_NAME_LEN,
                name.len()
            )));
        }
        let (events, rx) = mpsc::channel();
        let head = db.oplog_head()?;
        let oplog_start = db.oplog_start()?;
        let commits = {
            let events = events.clone();
            db.on_commit(move |commit| {
                if let (Some(first), Some(last)) = (commit.first_op_seq, commit.last_op_seq) {
                    let _ = events.send(Event::Committed {
                        first,
                        last,
                        ops: commit.ops.clone(),
                    });
                }
            })
        };
        let counters = Arc::new(Counters::default());
        let node = db.node_id();
        let worker = Worker {
            db,
            name: name.to_owned(),
            node,
            head,
            oplog_start,
            events: events.clone(),
            connections: HashMap::new(),
            waiters: Vec::new(),
            counters: counters.clone(),
            options,
            recent: VecDeque::new(),
            recent_ops: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("blazedb-sync {name}"))
            .spawn(move || worker.run(rx))?;
        Ok(SyncEngine {
            node,
            name: name.to_owned(),
            events,
            next_id: AtomicU64::new(1),
            counters,
            thread: Mutex::new(Some(thread)),
            _commits: commits,
        })
    }

    /// The node id of the engine's database.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The name peers use for this database.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts syncing over `relay`. Returns at once; the handshake runs on the engine thread.
    pub fn connect(&self, relay: impl Relay, options: ConnectOptions) -> Result<ConnectionId> {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.command(Command::Connect {
            id,
            relay: Box::new(relay),
            options,
        })?;
        Ok(id)
    }

    /// Closes a connection (with `Close { Normal }`) and forgets it.
    pub fn disconnect(&self, id: ConnectionId) -> Result<()> {
        self.ask(|reply| Command::Disconnect {
            id,
            close: None,
            reply,
        })?
    }

    /// Like [`SyncEngine::disconnect`], telling the peer why with `code` and `reason` (a
    /// server that revokes a device says `Unauthorized`, so the device stops retrying).
    pub fn disconnect_with(
        &self,
        id: ConnectionId,
        code: CloseCode,
        reason: impl Into<String>,
    ) -> Result<()> {
        let close = Some((code, reason.into()));
        self.ask(|reply| Command::Disconnect { id, close, reply })?
    }

    /// Changes a connection's mode while running, without losing or repeating anything: a
    /// side that starts receiving pulls again from its durable cursor; a side that starts
    /// sending resumes from what the peer acknowledged (the peer skips what it already has).
    pub fn set_mode(&self, id: ConnectionId, mode: Mode) -> Result<()> {
        self.ask(|reply| Command::SetMode { id, mode, reply })?
    }

    /// Sends the peer a barrier: a `Ping` that the peer answers after everything it sent
    /// before. Returns the barrier's number; [`ConnectionStatus::barrier`] reaches it when
    /// the `Pong` arrived, and by then everything the peer had sent us before is applied.
    /// (Used to tell "in sync with the server" from "nothing arrived yet".)
    pub fn barrier(&self, id: ConnectionId) -> Result<u64> {
        self.ask(|reply| Command::Barrier { id, reply })?
    }

    /// Looks for op-log entries this engine was not told about: writes made through
    /// another handle to the same file (another process). The engine hears of commits made
    /// through its own [`Database`] handle by itself; a program that shares the file with
    /// other writers calls this now and then (`blazedb sync --follow` does, every 200 ms).
    pub fn rescan(&self) -> Result<()> {
        self.command(Command::Rescan)
    }

    /// Drops op-log entries so that about the newest `keep` remain, but none that a connected
    /// peer still streams from (it would need a snapshot mid-stream). A peer whose cursor is
    /// older gets a snapshot when it next pulls (docs/protocol.md, "Snapshots"). Returns the
    /// new start of the log: the newest position dropped.
    pub fn compact_oplog(&self, keep: u64) -> Result<u64> {
        self.ask(|reply| Command::CompactOplog { keep, reply })?
    }

    /// The state of every connection, in connection order.
    pub fn status(&self) -> Result<Vec<ConnectionStatus>> {
        self.ask(|reply| Command::Status { only: None, reply })?
    }

    /// The state of one connection (`None` once forgotten or never made): cheaper than
    /// [`SyncEngine::status`] on an engine with many connections.
    pub fn connection_status(&self, id: ConnectionId) -> Result<Option<ConnectionStatus>> {
        let all = self.ask(|reply| Command::Status {
            only: Some(id),
            reply,
        })??;
        Ok(all.into_iter().next())
    }

    /// Waits until this engine has nothing left to do: every connection that sends has had
    /// everything acknowledged, and nothing received is waiting to be applied. Returns false
    /// on timeout. (Other engines may still be busy; see `Topology::wait_idle`.)
    pub fn wait_idle(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        self.ask(|reply| Command::WaitIdle { deadline, reply })
    }

    /// Operations from peers merged here for the first time, since the engine started.
    pub fn ops_applied(&self) -> u64 {
        self.counters.applied.load(Ordering::Relaxed)
    }

    /// Operations from peers that were already here, since the engine started.
    pub fn ops_duplicate(&self) -> u64 {
        self.counters.duplicates.load(Ordering::Relaxed)
    }

    /// Operations sent to peers, since the engine started.
    pub fn ops_sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    /// Closes every connection and stops the engine thread (also done on drop).
    pub fn shutdown(&self) {
        let _ = self.events.send(Event::Command(Command::Shutdown));
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) -> Result<()> {
        self.events
            .send(Event::Command(command))
            .map_err(|_| SyncError::EngineStopped)
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T> {
        let (reply, answer) = mpsc::channel();
        self.command(make(reply))?;
        answer.recv().map_err(|_| SyncError::EngineStopped)
    }
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sending half of a session: where the peer asked us to stream from, and what we think
/// it has.
/// A snapshot being sent on one connection (it replaces `Ops` until its last part).
struct SnapshotOut {
    /// Our op-log head when it started: where `Ops` continue after it.
    position: u64,
    vector: VersionVector,
    total: u64,
    records_sent: u64,
    /// Where the next part continues; `None` before the first part.
    after: Option<SnapshotKey>,
    parts_sent: u32,
    parts_acked: u32,
}

/// A snapshot being received on one connection.
struct SnapshotIn {
    position: u64,
    total: u64,
    records: u64,
    next_part: u32,
}

struct Outbound {
    /// Set while a snapshot is sent instead of the op log.
    snapshot: Option<SnapshotOut>,
    /// Position in our op log up to which we have sent, or passed over because the peer
    /// has every operation there.
    sent_to: u64,
    /// The `to` of the last `Ops` actually sent: the next one starts there. Behind `sent_to`
    /// while ranges with nothing for the peer wait (see [`ECHO_FLUSH_AFTER`]).
    wire_to: u64,
    /// Since when a range with nothing for the peer waits to be sent.
    deferred_since: Option<Instant>,
    /// The peer's version vector as its `Pull` gave it, plus every operation sent to it or
    /// received from it since: operations it certainly has.
    peer_has: VersionVector,
    /// Unacknowledged `Ops`: their `to` and when they were sent.
    in_flight: VecDeque<(u64, Instant)>,
}

struct Conn {
    id: ConnectionId,
    relay: Box<dyn Relay>,
    options: ConnectOptions,
    transport: &'static str,
    peer: Option<NodeId>,
    /// Our durable cursor into the peer's op log (cached; the truth is in the database).
    cursor: u64,
    /// The cursor when the peer's `Hello` arrived, and the highest op-log position the peer
    /// has announced (its `Hello`'s head, or an `Ops` range's end): initial-sync progress.
    cursor_at_hello: u64,
    peer_head: u64,
    /// We asked the peer to stream again from `cursor` and ignore what does not continue it.
    repull_pending: bool,
    /// `cursor` moved past ranges with nothing to apply and is not saved yet.
    cursor_unsaved: bool,
    /// Ops messages received and not yet applied: (from, to, ops, the relay budget the
    /// message holds until it is applied or dropped).
    inbound: Vec<(u64, u64, Vec<Operation>, Option<Hold>)>,
    /// When the current count of `Pull`s started, and how many arrived since.
    pulls: (Instant, u32),
    /// The peer's last `Pull`: where it asked us to start, and its version vector.
    pulled: Option<(u64, VersionVector)>,
    /// The stream to the peer, while it has pulled and this side sends.
    outbound: Option<Outbound>,
    acked: u64,
    last_ack: Option<(u64, Instant)>,
    closed_reason: Option<String>,
    peer_close_code: Option<CloseCode>,
    close_code: Option<CloseCode>,
    ops_sent: u64,
    ops_applied: u64,
    ops_duplicate: u64,
    messages_sent: u64,
    messages_received: u64,
    /// When the peer last said anything, and whether we pinged it since.
    last_heard: Instant,
    pinged: bool,
    /// Barriers sent, and the highest one answered.
    barriers_sent: u64,
    barrier: u64,
    /// Everything in our log up to here is acknowledged or was passed over because the
    /// peer has it (so it is not pending).
    skipped_to: u64,
    snapshot_in: Option<SnapshotIn>,
}

impl ConnectionStatus {
    /// How much of what the peer had when the session started is applied here, from 0.0 to
    /// 1.0 (0.0 until the peer's `Hello` told its head; 1.0 when there was nothing to catch
    /// up): initial-sync progress.
    pub fn catch_up_progress(&self) -> f64 {
        if self.peer.is_none() {
            return 0.0;
        }
        if let Some((done, total)) = self.snapshot_in {
            // The cursor moves only with the last part: count records until then.
            return if total == 0 {
                0.0
            } else {
                (done.min(total) as f64 / total as f64).min(0.999)
            };
        }
        let total = self.peer_head.saturating_sub(self.cursor_at_start);
        if total == 0 {
            return 1.0;
        }
        let done = self.cursor.saturating_sub(self.cursor_at_start).min(total);
        done as f64 / total as f64
    }
}

impl Conn {
    /// Sends the ranges passed over because the peer had everything in them, as one empty
    /// `Ops`, so that the peer's cursor catches up.
    fn flush_deferred(&mut self) {
        let Some(out) = &mut self.outbound else {
            return;
        };
        if out.wire_to >= out.sent_to || !self.options.mode.sends() {
            return;
        }
        let (from, to) = (out.wire_to, out.sent_to);
        out.wire_to = to;
        out.deferred_since = None;
        out.in_flight.push_back((to, Instant::now()));
        self.send(Message::Ops {
            from,
            to,
            ops: Vec::new(),
        });
    }

    /// When the ranges passed over must go out at the latest.
    fn flush_due(&self) -> Option<Instant> {
        self.outbound
            .as_ref()
            .and_then(|o| o.deferred_since)
            .map(|since| since + ECHO_FLUSH_AFTER)
    }

    fn open(&self) -> bool {
        self.closed_reason.is_none()
    }

    /// When this connection's liveness must next be checked: its ping when the peer has not
    /// been pinged since it last spoke, its closing otherwise.
    fn liveness_due(&self, options: &EngineOptions) -> Instant {
        let after = if self.pinged || options.ping_after >= options.close_after {
            options.close_after
        } else {
            options.ping_after
        };
        self.last_heard + after
    }

    fn send(&mut self, message: Message) -> bool {
        if !self.open() {
            return false;
        }
        match self.relay.send(message) {
            Ok(()) => {
                self.messages_sent += 1;
                true
            }
            Err(e) => {
                self.end(format!("sending failed: {e}"));
                false
            }
        }
    }

    /// Sends `Close` (when the connection is still up) and ends the connection.
    fn close_with(&mut self, code: CloseCode, reason: String) {
        if self.open() {
            self.close_code = Some(code);
            let _ = self.relay.send(Message::close(code, reason.clone()));
        }
        self.end(reason);
    }

    fn end(&mut self, reason: String) {
        if self.closed_reason.is_none() {
            self.closed_reason = Some(reason);
        }
        self.relay.close();
        self.outbound = None;
        self.inbound.clear();
        self.snapshot_in = None;
    }

    fn idle(&self, head: u64) -> bool {
        if !self.inbound.is_empty() {
            return false;
        }
        if !self.open() {
            return true;
        }
        if self.peer.is_none() {
            return false;
        }
        if self.snapshot_in.is_some() {
            return false;
        }
        match &self.outbound {
            Some(out) => out.snapshot.is_none() && out.sent_to >= head && out.in_flight.is_empty(),
            None => true,
        }
    }
}

struct Worker {
    db: Database,
    name: String,
    node: NodeId,
    /// Position of the newest op-log entry we know of.
    head: u64,
    /// The newest position dropped from our op log (0: none); a peer behind it gets a snapshot.
    oplog_start: u64,
    events: Sender<Event>,
    connections: HashMap<ConnectionId, Conn>,
    waiters: Vec<(Instant, Sender<bool>)>,
    counters: Arc<Counters>,
    options: EngineOptions,
    /// The newest single-entry commits (position, operations), from commit events.
    recent: VecDeque<(u64, Arc<[Operation]>)>,
    /// Operations in `recent`.
    recent_ops: usize,
}

impl Worker {
    fn run(mut self, rx: Receiver<Event>) {
        loop {
            // Each connection's own deadline, so that a silent peer is pinged `ping_after`
            // after it last spoke and closed `close_after` after, not up to a polling
            // interval later.
            let options = self.options;
            let next_check = self
                .connections
                .values()
                .filter(|c| c.open())
                .map(|c| c.liveness_due(&options))
                .min();
            let flush = self.connections.values().filter_map(Conn::flush_due).min();
            let deadline = self
                .waiters
                .iter()
                .map(|(d, _)| *d)
                .chain(next_check)
                .chain(flush)
                .min();
            let first = match deadline {
                None => match rx.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                },
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            self.check_liveness();
                            self.flush_due();
                            self.answer_waiters();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut stop = false;
            let mut event = Some(first);
            let mut handled = 0;
            while let Some(e) = event.take() {
                if matches!(e, Event::Command(Command::Shutdown)) {
                    stop = true;
                    break;
                }
                self.handle(e);
                handled += 1;
                if handled < MAX_EVENTS_PER_ROUND {
                    event = rx.try_recv().ok();
                }
            }
            self.apply_all();
            self.pump_all();
            self.flush_due();
            self.answer_waiters();
            if stop {
                break;
            }
        }
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            self.save_cursor(id);
        }
        for conn in self.connections.values_mut() {
            conn.close_with(
                CloseCode::GoingAway,
                "the sync engine is shutting down".into(),
            );
        }
        for (_, reply) in self.waiters.drain(..) {
            let _ = reply.send(false);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Committed { first, last, ops } => {
                self.head = self.head.max(last);
                // Keep single-entry commits to stream without reading them back.
                if first == last && !ops.is_empty() && ops.len() <= RECENT_OPS {
                    self.recent_ops += ops.len();
                    self.recent.push_back((last, ops));
                    while self.recent.len() > RECENT_ENTRIES || self.recent_ops > RECENT_OPS {
                        let Some((_, dropped)) = self.recent.pop_front() else {
                            break;
                        };
                        self.recent_ops -= dropped.len();
                    }
                }
            }
            Event::Message {
                connection,
                message,
                hold,
            } => self.on_message(connection, message, hold),
            Event::Closed { connection, reason } => {
                self.apply_inbound(connection);
                self.save_cursor(connection);
                if let Some(conn) = self.connections.get_mut(&connection) {
                    conn.end(reason);
                }
            }
            Event::Command(command) => self.on_command(command),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { id, relay, options } => self.on_connect(id, relay, options),
            Command::Disconnect { id, close, reply } => {
                self.apply_inbound(id);
                self.save_cursor(id);
                let result = match self.connections.remove(&id) {
                    Some(mut conn) => {
                        let (code, reason) =
                            close.unwrap_or((CloseCode::Normal, "disconnected".into()));
                        conn.close_with(code, reason);
                        Ok(())
                    }
                    None => Err(SyncError::UnknownConnection(id.0)),
                };
                let _ = reply.send(result);
            }
            Command::Rescan => {
                // `pump_all` at the end of this round sends what is new. A failing read is
                // left for that pump, which reports storage errors per connection.
                if let Ok(head) = self.db.oplog_head() {
                    self.head = self.head.max(head);
                }
            }
            Command::CompactOplog { keep, reply } => {
                let _ = reply.send(self.compact_oplog(keep));
            }
            Command::Barrier { id, reply } => {
                self.apply_inbound(id);
                let result = match self.connections.get_mut(&id) {
                    Some(conn) if conn.open() => {
                        conn.barriers_sent += 1;
                        let nonce = BARRIER_NONCE | conn.barriers_sent;
                        conn.send(Message::Ping { nonce });
                        Ok(conn.barriers_sent)
                    }
                    Some(_) => Err(SyncError::RelayClosed),
                    None => Err(SyncError::UnknownConnection(id.0)),
                };
                let _ = reply.send(result);
            }
            Command::SetMode { id, mode, reply } => {
                let _ = reply.send(self.set_mode(id, mode));
            }
            Command::Status { only, reply } => {
                let _ = reply.send(self.status(only));
            }
            Command::WaitIdle { deadline, reply } => self.waiters.push((deadline, reply)),
            Command::Shutdown => {}
        }
    }

    fn on_connect(&mut self, id: ConnectionId, mut relay: Box<dyn Relay>, options: ConnectOptions) {
        let inbox = Inbox {
            connection: id,
            events: self.events.clone(),
        };
        let transport = relay.kind();
        let started = relay.start(inbox);
        let mut conn = Conn {
            id,
            relay,
            options,
            transport,
            peer: None,
            cursor: 0,
            cursor_at_hello: 0,
            peer_head: 0,
            repull_pending: false,
            cursor_unsaved: false,
            inbound: Vec::new(),
            pulls: (Instant::now(), 0),
            pulled: None,
            outbound: None,
            acked: 0,
            last_ack: None,
            closed_reason: None,
            peer_close_code: None,
            close_code: None,
            ops_sent: 0,
            ops_applied: 0,
            ops_duplicate: 0,
            messages_sent: 0,
            messages_received: 0,
            last_heard: Instant::now(),
            pinged: false,
            barriers_sent: 0,
            barrier: 0,
            skipped_to: 0,
            snapshot_in: None,
        };
        match started {
            Ok(()) => {
                let hello = self.hello(&conn);
                conn.send(hello);
            }
            Err(e) => conn.end(format!("the relay did not start: {e}")),
        }
        self.connections.insert(id, conn);
    }

    /// Pings peers that went quiet and closes connections to peers silent for too long.
    fn check_liveness(&mut self) {
        let now = Instant::now();
        let options = self.options;
        for conn in self.connections.values_mut().filter(|c| c.open()) {
            let silent = now.saturating_duration_since(conn.last_heard);
            if silent >= options.close_after {
                conn.close_with(
                    CloseCode::GoingAway,
                    format!("heard nothing from the peer for {} s", silent.as_secs()),
                );
            } else if silent >= options.ping_after && !conn.pinged {
                conn.pinged = true;
                let nonce = conn.messages_sent;
                conn.send(Message::Ping { nonce });
            }
        }
    }

    fn hello(&self, conn: &Conn) -> Message {
        Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node: self.node,
            database: conn.options.remote_database.clone(),
            capabilities: Capabilities::SUPPORTED,
            head: self.head,
        }
    }

    fn set_mode(&mut self, id: ConnectionId, mode: Mode) -> Result<()> {
        self.apply_inbound(id);
        let Some(conn) = self.connections.get_mut(&id) else {
            return Err(SyncError::UnknownConnection(id.0));
        };
        let old = std::mem::replace(&mut conn.options.mode, mode);
        if !mode.sends() {
            conn.outbound = None;
        } else if conn.outbound.is_none() {
            // Resume from what the peer has confirmed. Only its Pull's vector is certain:
            // batches sent before the pause may have been ignored, so they go again (the
            // peer skips what it has).
            conn.outbound = conn.pulled.as_ref().map(|(from, vector)| Outbound {
                snapshot: None,
                sent_to: conn.acked.max(*from),
                wire_to: conn.acked.max(*from),
                deferred_since: None,
                peer_has: vector.clone(),
                in_flight: VecDeque::new(),
            });
        }
        if mode.receives() && !old.receives() && conn.peer.is_some() {
            conn.repull_pending = false;
            self.pull(id);
        }
        Ok(())
    }

    fn on_message(&mut self, id: ConnectionId, message: Message, hold: Option<Hold>) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if !conn.open() {
            return;
        }
        conn.messages_received += 1;
        conn.last_heard = Instant::now();
        conn.pinged = false;
        if let Message::Ops { from, to, ops } = message {
            if conn.peer.is_none() {
                conn.close_with(CloseCode::ProtocolError, "Ops before Hello".into());
                return;
            }
            if let PeerTrust::Origin(node) = conn.options.trust
                && let Some(op) = ops.iter().find(|op| op.id.origin != node)
            {
                // Nothing of this connection is applied from here on: `close_with` drops
                // what it queued, and the peer's cursor stays where it was.
                conn.close_with(
                    CloseCode::Unauthorized,
                    format!(
                        "operation {} was made by another node; this link carries only \
                         the operations of node {node}",
                        op.id
                    ),
                );
                return;
            }
            if conn.options.mode.receives() {
                conn.peer_head = conn.peer_head.max(to);
                conn.inbound.push((from, to, ops, hold));
            }
            // Otherwise (write-only, or the mode just changed): not applied and not
            // acknowledged; the peer sends it again after our next Pull.
            return;
        }
        // Everything else is handled in order after what was received before it.
        self.apply_inbound(id);
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        match message {
            Message::Hello {
                protocol_version,
                node,
                database,
                head,
                ..
            } => {
                if let Err(e) = negotiate_version(protocol_version) {
                    conn.close_with(e.close_code(), e.to_string());
                    return;
                }
                if database != self.name {
                    conn.close_with(
                        CloseCode::UnknownDatabase,
                        format!("this is database {:?}, not {database:?}", self.name),
                    );
                    return;
                }
                if node == self.node {
                    conn.close_with(
                        CloseCode::CopiedDatabase,
                        format!(
                            "the peer has this database's node id {node}: one of the two \
                             database files is a copy of the other; {REIDENTIFY}"
                        ),
                    );
                    return;
                }
                if let PeerTrust::Origin(bound) = conn.options.trust
                    && bound != node
                {
                    conn.close_with(
                        CloseCode::Unauthorized,
                        format!(
                            "the Hello says node {node}, but this link belongs to node {bound}"
                        ),
                    );
                    return;
                }
                match conn.peer {
                    Some(p) if p == node => return, // a repeated Hello changes nothing
                    Some(_) => {
                        conn.close_with(
                            CloseCode::ProtocolError,
                            "the peer's node id changed within a connection".into(),
                        );
                        return;
                    }
                    None => conn.peer = Some(node),
                }
                match self.db.peer_cursor(node) {
                    Ok(cursor) => {
                        if let Some(conn) = self.connections.get_mut(&id) {
                            conn.cursor = cursor;
                            conn.cursor_at_hello = cursor;
                            conn.peer_head = conn.peer_head.max(head);
                        }
                        self.pull(id);
                    }
                    Err(e) => self.internal_error(id, &e.into()),
                }
            }
            Message::Pull {
                from,
                vector,
                checks,
            } => {
                let Some(peer) = conn.peer else {
                    conn.close_with(CloseCode::ProtocolError, "Pull before Hello".into());
                    return;
                };
                if !self.check_ops(id, peer, &checks) {
                    return;
                }
                let Some(conn) = self.connections.get_mut(&id) else {
                    return;
                };
                // Each Pull restarts the stream (reads the log again): a peer may send a few,
                // not a flood.
                let now = Instant::now();
                if now.saturating_duration_since(conn.pulls.0) >= PULL_PERIOD {
                    conn.pulls = (now, 0);
                }
                conn.pulls.1 += 1;
                if conn.pulls.1 > MAX_PULLS_PER_PERIOD {
                    conn.close_with(
                        CloseCode::ProtocolError,
                        format!(
                            "more than {MAX_PULLS_PER_PERIOD} Pulls within {} s",
                            PULL_PERIOD.as_secs()
                        ),
                    );
                    return;
                }
                if from > self.head {
                    self.head = self.head.max(self.db.oplog_head().unwrap_or(self.head));
                }
                let Some(conn) = self.connections.get_mut(&id) else {
                    return;
                };
                if from > self.head {
                    // Positions are never reused, so the peer's cursor belongs to another
                    // history of this log: this file is a copy of one that went further, or a
                    // restored backup; streaming would skip entries.
                    conn.close_with(
                        CloseCode::CopiedDatabase,
                        format!(
                            "the peer's cursor {from} into the op log of node {node} is past \
                             its end ({}): node {node}'s database file is a copy of another with \
                             the same node id that synced further, or a restored backup of it; \
                             {REIDENTIFY}",
                            self.head,
                            node = self.node
                        ),
                    );
                    return;
                }
                // The peer holds everything up to `from` durably: that counts as acknowledged.
                conn.acked = conn.acked.max(from);
                // Kept even while this side does not send, to start streaming when it does.
                conn.pulled = Some((from, vector.clone()));
                if conn.options.mode.sends() {
                    conn.outbound = Some(Outbound {
                        snapshot: None,
                        sent_to: from,
                        wire_to: from,
                        deferred_since: None,
                        peer_has: vector,
                        in_flight: VecDeque::new(),
                    });
                }
            }
            Message::Ack { position } => {
                conn.acked = conn.acked.max(position);
                conn.last_ack = Some((position, Instant::now()));
                if let Some(out) = &mut conn.outbound {
                    while out.in_flight.front().is_some_and(|(to, _)| *to <= position) {
                        out.in_flight.pop_front();
                    }
                    if out.in_flight.is_empty() {
                        // Everything after the last batch was passed over: the peer has it.
                        conn.skipped_to = conn.skipped_to.max(out.sent_to);
                    }
                }
            }
            Message::SnapshotAck { part } => {
                if let Some(snapshot) = conn.outbound.as_mut().and_then(|o| o.snapshot.as_mut()) {
                    snapshot.parts_acked = snapshot.parts_acked.max(part.min(snapshot.parts_sent));
                }
            }
            Message::Snapshot {
                position,
                part,
                total,
                records,
                vector,
            } => self.on_snapshot_part(id, position, part, total, records, vector),
            Message::Ping { nonce } => {
                // The Pong must follow everything sent before it, passed-over ranges too: a
                // barrier means "you have all I had".
                conn.flush_deferred();
                conn.send(Message::Pong { nonce });
            }
            Message::Pong { nonce } => {
                if nonce & BARRIER_NONCE != 0 {
                    conn.barrier = conn.barrier.max(nonce & !BARRIER_NONCE);
                }
            }
            Message::Close { code, reason } => {
                conn.peer_close_code = Some(code);
                conn.end(format!("the peer closed the connection ({code}): {reason}"));
            }
            // Queued above, before anything else was looked at.
            Message::Ops { .. } => {}
            // Enrolment is between a device and a server's connection handler, before the
            // engine sees the connection.
            Message::Enroll { .. } => conn.close_with(
                CloseCode::ProtocolError,
                "Enroll is only sent to a server, before the session starts".into(),
            ),
        }
    }

    /// Asks the peer to stream from our durable cursor (if this side receives).
    fn pull(&mut self, id: ConnectionId) {
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        if !conn.options.mode.receives() || !conn.open() {
            return;
        }
        let peer = conn.peer;
        let pull = self.db.version_vector().and_then(|vector| {
            // The peer's operation we have last, and our own last: the peer compares their
            // digests with its own (see `check_ops`).
            let mut checks = Vec::new();
            for node in peer.into_iter().chain([self.node]) {
                let seq = vector.get(node);
                if seq == 0 {
                    continue;
                }
                if let Some(digest) = self.db.op_digest(OpId { origin: node, seq })? {
                    checks.push(OpCheck { node, seq, digest });
                }
            }
            Ok((vector, checks))
        });
        match pull {
            Ok((vector, checks)) => {
                if let Some(conn) = self.connections.get_mut(&id) {
                    let from = conn.cursor;
                    conn.send(Message::Pull {
                        from,
                        vector,
                        checks,
                    });
                }
            }
            Err(e) => self.internal_error(id, &e.into()),
        }
    }

    /// Compares the digests of a peer's Pull with those of the same operations here. A
    /// difference means two database files share a node id: the connection closes with
    /// [`CloseCode::CopiedDatabase`] before anything is streamed, and false is returned. A
    /// match on our own operation confirms that the peer has ours up to it.
    fn check_ops(&mut self, id: ConnectionId, peer: NodeId, checks: &[OpCheck]) -> bool {
        for check in checks {
            let op = OpId {
                origin: check.node,
                seq: check.seq,
            };
            let here = match self.db.op_digest(op) {
                Ok(here) => here,
                Err(e) => {
                    self.internal_error(id, &e.into());
                    return false;
                }
            };
            match here {
                Some(here) if here != check.digest => {
                    let reason = copy_reason(self.node, peer, op);
                    if let Some(conn) = self.connections.get_mut(&id) {
                        conn.close_with(CloseCode::CopiedDatabase, reason);
                    }
                    return false;
                }
                Some(_) if check.node == self.node => {
                    if let Err(e) = self.db.confirm_own(check.seq) {
                        self.internal_error(id, &e.into());
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Saves a cursor that moved in memory only (see `apply_inbound`). Best effort: if it
    /// fails, the peer resends ranges with nothing in them.
    fn save_cursor(&mut self, id: ConnectionId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let (Some(peer), true) = (conn.peer, conn.cursor_unsaved) else {
            return;
        };
        let cursor = conn.cursor;
        if self
            .db
            .transaction(|tx| tx.set_peer_cursor(peer, cursor))
            .is_ok()
            && let Some(conn) = self.connections.get_mut(&id)
        {
            conn.cursor_unsaved = false;
        }
    }

    fn internal_error(&mut self, id: ConnectionId, e: &SyncError) {
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.close_with(CloseCode::InternalError, format!("internal error: {e}"));
        }
    }

    fn apply_all(&mut self) {
        let ids: Vec<ConnectionId> = self
            .connections
            .values()
            .filter(|c| !c.inbound.is_empty())
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.apply_inbound(id);
        }
    }

    /// Applies the `Ops` received on a connection that continue our cursor, in one
    /// transaction together with the new cursor, then acknowledges.
    fn apply_inbound(&mut self, id: ConnectionId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if conn.inbound.is_empty() {
            return;
        }
        let Some(peer) = conn.peer else {
            conn.inbound.clear();
            return;
        };
        let start = conn.cursor;
        let mut to = start;
        let mut ops = Vec::new();
        let mut duplicate_range = false;
        let mut gap = false;
        // The operations move into `ops`; their budget goes back to the relay once this
        // function is done with them.
        let mut held = Vec::new();
        for (from, end, batch, hold) in conn.inbound.drain(..) {
            held.extend(hold);
            if end <= to {
                duplicate_range = true;
            } else if from > to {
                gap = true;
                break;
            } else {
                ops.extend(batch);
                to = end;
            }
        }
        conn.inbound.clear();
        if to > start && ops.is_empty() {
            // Nothing to apply (the peer echoes entries made of what we have): move the
            // cursor in memory only and save it with the next write. Saving it late is
            // harmless: a restart pulls from the older cursor and gets the same nothing again.
            conn.repull_pending = false;
            conn.cursor = to;
            conn.cursor_unsaved = true;
            conn.send(Message::Ack { position: to });
        } else if to > start {
            conn.repull_pending = false;
            let result = self.db.transaction(|tx| {
                let report = tx.apply_remote(&ops)?;
                tx.set_peer_cursor(peer, to)?;
                Ok(report)
            });
            let Some(conn) = self.connections.get_mut(&id) else {
                return;
            };
            match result {
                Ok(report) => {
                    conn.cursor = to;
                    conn.cursor_unsaved = false;
                    conn.ops_applied += report.applied as u64;
                    conn.ops_duplicate += report.duplicates as u64;
                    self.counters
                        .applied
                        .fetch_add(report.applied as u64, Ordering::Relaxed);
                    self.counters
                        .duplicates
                        .fetch_add(report.duplicates as u64, Ordering::Relaxed);
                    if let Some(out) = &mut conn.outbound {
                        for op in &ops {
                            out.peer_has.observe_op(op.id);
                        }
                    }
                    conn.send(Message::Ack { position: to });
                }
                Err(blazedb_core::Error::CopiedDatabase { op }) => {
                    let reason = copy_reason(self.node, conn.peer.unwrap_or(op.origin), op);
                    conn.close_with(CloseCode::CopiedDatabase, reason);
                    return;
                }
                Err(e @ blazedb_core::Error::InvalidOperation { .. }) => {
                    conn.close_with(
                        CloseCode::ProtocolError,
                        format!("the peer sent an invalid operation: {e}"),
                    );
                    return;
                }
                Err(e) => {
                    conn.close_with(CloseCode::InternalError, format!("applying failed: {e}"));
                    return;
                }
            }
        } else if duplicate_range {
            conn.send(Message::Ack { position: start });
        }
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if gap && !conn.repull_pending {
            conn.repull_pending = true;
            self.pull(id);
        }
    }

    /// Sends the passed-over ranges that have waited long enough.
    fn flush_due(&mut self) {
        let now = Instant::now();
        for conn in self.connections.values_mut() {
            if conn.open() && conn.flush_due().is_some_and(|due| due <= now) {
                conn.flush_deferred();
            }
        }
    }

    fn pump_all(&mut self) {
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.pump(id) {
                self.internal_error(id, &e);
            }
        }
    }

    /// Sends what the peer pulled and has not got yet, up to the window.
    fn pump(&mut self, id: ConnectionId) -> Result<()> {
        loop {
            let Some(conn) = self.connections.get(&id) else {
                return Ok(());
            };
            let Some(out) = &conn.outbound else {
                return Ok(());
            };
            if !conn.open() || !conn.options.mode.sends() {
                return Ok(());
            }
            if out.snapshot.is_some() || out.sent_to < self.oplog_start {
                if !self.pump_snapshot(id)? {
                    return Ok(());
                }
                continue;
            }
            if out.in_flight.len() >= WINDOW || out.sent_to >= self.head {
                return Ok(());
            }
            let from = out.sent_to;
            let entries = match self.recent_after(from) {
                Some(entries) => entries,
                None => match self.db.oplog_since(from, MAX_BATCH_OPS) {
                    Ok(entries) => entries,
                    Err(e @ blazedb_core::Error::OplogCompacted { .. }) => {
                        // Another handle compacted the log under this stream: a snapshot
                        // continues it.
                        let start = self.db.oplog_start()?;
                        if start <= self.oplog_start {
                            return Err(e.into());
                        }
                        self.oplog_start = start;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let Some(conn) = self.connections.get_mut(&id) else {
                return Ok(());
            };
            let Some((to, _)) = entries.last() else {
                // The head we were told of is not visible yet (or was rolled back).
                self.head = from;
                return Ok(());
            };
            let to = *to;
            self.head = self.head.max(to);
            let forward = conn.options.forward;
            let Some(out) = &mut conn.outbound else {
                return Ok(());
            };
            let mut ops = Vec::with_capacity(entries.len());
            for (_, op) in entries {
                if out.peer_has.contains(op.id) || (!forward && op.id.origin != self.node) {
                    continue;
                }
                out.peer_has.observe_op(op.id);
                ops.push(op);
            }
            out.sent_to = to;
            if ops.is_empty() {
                // Nothing the peer lacks (usually its own operations coming back): no message
                // now. The range goes out with the next batch, before a Pong, or after
                // ECHO_FLUSH_AFTER, so the peer's cursor still moves past it.
                out.deferred_since.get_or_insert_with(Instant::now);
                if out.in_flight.is_empty() {
                    conn.skipped_to = conn.skipped_to.max(to);
                }
                continue;
            }
            let from = std::mem::replace(&mut out.wire_to, to);
            out.deferred_since = None;
            out.in_flight.push_back((to, Instant::now()));
            let n = ops.len() as u64;
            if conn.send(Message::Ops { from, to, ops }) {
                conn.ops_sent += n;
                self.counters.sent.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Sends the next part of the snapshot this connection gets, starting one if needed.
    /// Returns whether a part went out (`false`: the window is full).
    fn pump_snapshot(&mut self, id: ConnectionId) -> Result<bool> {
        let Some(out) = self.connections.get(&id).and_then(|c| c.outbound.as_ref()) else {
            return Ok(false);
        };
        let (started, after) = match &out.snapshot {
            Some(s) if s.parts_sent.saturating_sub(s.parts_acked) as usize >= WINDOW => {
                return Ok(false);
            }
            Some(s) => (None, s.after.clone()),
            None => (Some(self.db.snapshot_info()?), None),
        };
        let (records, next) =
            self.db
                .snapshot_page(after.as_ref(), SNAPSHOT_PART_RECORDS, SNAPSHOT_PART_BYTES)?;
        let Some(conn) = self.connections.get_mut(&id) else {
            return Ok(false);
        };
        let Some(out) = conn.outbound.as_mut() else {
            return Ok(false);
        };
        if let Some(info) = started {
            self.head = self.head.max(info.position);
            out.snapshot = Some(SnapshotOut {
                position: info.position,
                vector: info.vector,
                total: info.records,
                records_sent: 0,
                after: None,
                parts_sent: 0,
                parts_acked: 0,
            });
        }
        let Some(snapshot) = out.snapshot.as_mut() else {
            return Ok(false);
        };
        snapshot.parts_sent += 1;
        snapshot.records_sent += records.len() as u64;
        // Records written while the snapshot is read may be in it too: never report fewer.
        snapshot.total = snapshot.total.max(snapshot.records_sent);
        let (part, position, total) = (snapshot.parts_sent, snapshot.position, snapshot.total);
        let last = next.is_none();
        snapshot.after = next;
        let vector = last.then(|| snapshot.vector.clone());
        if let Some(vector) = &vector {
            // From here the stream is our op log after the snapshot's position, and the peer
            // has everything the snapshot included. The peer's `Ack { position }` closes it.
            out.snapshot = None;
            out.sent_to = position;
            out.wire_to = position;
            out.deferred_since = None;
            out.peer_has.merge(vector);
            out.in_flight.push_back((position, Instant::now()));
        }
        conn.send(Message::Snapshot {
            position,
            part,
            total,
            records,
            vector,
        });
        Ok(true)
    }

    /// Applies one received snapshot part in its own transaction; the last part also counts
    /// the snapshot's operations as merged and moves the cursor to its position, in the same
    /// transaction. A part applied before a crash stays (joining is idempotent) while the
    /// cursor stays behind, so the next `Pull` gets a whole new snapshot.
    fn on_snapshot_part(
        &mut self,
        id: ConnectionId,
        position: u64,
        part: u32,
        total: u64,
        records: Vec<SnapshotRecord>,
        vector: Option<VersionVector>,
    ) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let Some(peer) = conn.peer else {
            conn.close_with(CloseCode::ProtocolError, "Snapshot before Hello".into());
            return;
        };
        if let PeerTrust::Origin(node) = conn.options.trust {
            conn.close_with(
                CloseCode::Unauthorized,
                format!(
                    "node {node} may send only its own operations, and a snapshot carries \
                     other nodes' writes"
                ),
            );
            return;
        }
        if !conn.options.mode.receives() {
            // Not applied: the peer sends it again after our next Pull.
            return;
        }
        let expected = conn.snapshot_in.as_ref().map_or(1, |s| s.next_part);
        if part == 1 {
            // A new snapshot (the peer answers a newer Pull) replaces one under way.
            conn.snapshot_in = Some(SnapshotIn {
                position,
                total,
                records: 0,
                next_part: 1,
            });
        } else if part != expected
            || conn
                .snapshot_in
                .as_ref()
                .is_some_and(|s| s.position != position)
        {
            conn.close_with(
                CloseCode::ProtocolError,
                format!("snapshot part {part} arrived where part {expected} was due"),
            );
            return;
        }
        let n = records.len() as u64;
        let result = self.db.transaction(|tx| {
            let report = tx.apply_snapshot(peer, &records)?;
            if let Some(vector) = &vector {
                tx.merge_version_vector(vector)?;
                tx.set_peer_cursor(peer, position)?;
            }
            Ok(report)
        });
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        match result {
            Ok(report) => {
                conn.ops_applied += report.applied as u64;
                if let Some(s) = conn.snapshot_in.as_mut() {
                    s.records += n;
                    s.total = s.total.max(total).max(s.records);
                    s.next_part = part.saturating_add(1);
                }
                conn.send(Message::SnapshotAck { part });
                if let Some(vector) = vector {
                    conn.snapshot_in = None;
                    conn.cursor = position;
                    conn.cursor_unsaved = false;
                    conn.repull_pending = false;
                    conn.peer_head = conn.peer_head.max(position);
                    if let Some(out) = &mut conn.outbound {
                        out.peer_has.merge(&vector);
                    }
                    conn.send(Message::Ack { position });
                }
            }
            Err(e @ blazedb_core::Error::InvalidSnapshot { .. }) => conn.close_with(
                CloseCode::ProtocolError,
                format!("the peer sent an invalid snapshot: {e}"),
            ),
            Err(e) => conn.close_with(
                CloseCode::InternalError,
                format!("applying a snapshot failed: {e}"),
            ),
        }
    }

    /// See [`SyncEngine::compact_oplog`].
    fn compact_oplog(&mut self, keep: u64) -> Result<u64> {
        self.head = self.head.max(self.db.oplog_head()?);
        let mut through = self.head.saturating_sub(keep);
        for conn in self.connections.values().filter(|c| c.open()) {
            if let Some(out) = &conn.outbound {
                let streams_from = match &out.snapshot {
                    Some(s) => s.position,
                    None => conn.acked.min(out.sent_to),
                };
                through = through.min(streams_from);
            }
        }
        self.oplog_start = self.db.compact_oplog(through)?;
        Ok(self.oplog_start)
    }

    /// The entries right after position `from`, if the commit events kept them: positions
    /// `from + 1`, `from + 2`, … with nothing between (an entry at `from + 1` is certainly
    /// the next one).
    fn recent_after(&self, from: u64) -> Option<Vec<(u64, Operation)>> {
        let mut out = Vec::new();
        let mut position = from;
        while out.len() < MAX_BATCH_OPS {
            let Some((p, ops)) = self.recent.iter().find(|(p, _)| *p == position + 1) else {
                break;
            };
            out.extend(ops.iter().map(|op| (*p, op.clone())));
            position = *p;
        }
        (!out.is_empty()).then_some(out)
    }

    fn status(&self, only: Option<ConnectionId>) -> Result<Vec<ConnectionStatus>> {
        let total = self.db.oplog_ops_through(u64::MAX)?;
        let mut out = Vec::with_capacity(self.connections.len());
        let mut conns: Vec<&Conn> = self
            .connections
            .values()
            .filter(|c| only.is_none_or(|id| c.id == id))
            .collect();
        conns.sort_by_key(|c| c.id);
        let now = Instant::now();
        for c in conns {
            let ops_pending = if c.options.mode.sends() {
                total.saturating_sub(self.db.oplog_ops_through(c.acked.max(c.skipped_to))?)
            } else {
                0
            };
            let lag = c
                .outbound
                .as_ref()
                .and_then(|o| o.in_flight.front())
                .map_or(Duration::ZERO, |(_, sent)| {
                    now.saturating_duration_since(*sent)
                });
            out.push(ConnectionStatus {
                id: c.id,
                name: c.options.name.clone(),
                transport: c.transport,
                mode: c.options.mode,
                peer: c.peer,
                connected: c.open() && c.peer.is_some(),
                ops_pending,
                last_ack: c.last_ack,
                lag,
                ops_sent: c.ops_sent,
                ops_applied: c.ops_applied,
                ops_duplicate: c.ops_duplicate,
                messages_sent: c.messages_sent,
                messages_received: c.messages_received,
                streaming: c.open() && c.outbound.is_some(),
                cursor: c.cursor,
                cursor_at_start: c.cursor_at_hello,
                peer_head: c.peer_head,
                barrier: c.barrier,
                closed_reason: c.closed_reason.clone(),
                peer_close_code: c.peer_close_code,
                close_code: c.close_code,
                snapshot_in: c.snapshot_in.as_ref().map(|s| (s.records, s.total)),
                snapshot_out: c
                    .outbound
                    .as_ref()
                    .and_then(|o| o.snapshot.as_ref())
                    .map(|s| (s.records_sent, s.total)),
            });
        }
        Ok(out)
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let idle = self.connections.values().all(|c| c.idle(self.head));
        let now = Instant::now();
        self.waiters.retain(|(deadline, reply)| {
            if idle {
                let _ = reply.send(true);
                false
            } else if *deadline <= now {
                let _ = reply.send(false);
                false
            } else {
                true
            }
        });
    }
}
