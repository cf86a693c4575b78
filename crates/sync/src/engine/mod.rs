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
//! neither lose nor repeat anything. Acknowledgements open the window, bound compaction and
//! feed the status.
//!
//! The rules of one connection live in [`session::Session`], a state machine with no I/O
//! that reads the database through [`session::SessionLog`]; [`worker`] is the thread that
//! feeds it events and carries out what it asks for on the relay.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blazedb_access::{ReadScope, SyncPolicy, WriteScope};
use blazedb_core::{CommitListener, Database, NodeId, OpId, Operation, PurgeReason};
use blazedb_protocol::{CloseCode, Message};

use crate::error::{Result, SyncError};
use crate::relay::{ConnectionId, Hold, Relay};

mod routing;
pub(crate) mod session;
mod worker;

use worker::{DbLog, Worker};

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
/// Most `Policy` messages a peer may send within [`PULL_PERIOD`]; one more closes the
/// connection. Each makes this side read every record to find the difference.
pub const MAX_POLICIES_PER_PERIOD: u32 = 16;

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
    /// What the peer may read, when this side filters what it sends (a server enforcing
    /// access rules on a device's link); `None`: everything. Change it while connected with
    /// [`SyncEngine::set_scope`].
    pub scope: Option<ReadScope>,
    /// What the peer may write, when this side checks the operations it sends (a server
    /// enforcing access rules); `None`: everything. A refused operation is counted as
    /// received, undone everywhere by a newer operation, and reported in the `Ack`.
    pub write_scope: Option<WriteScope>,
    /// What this side asks the peer for (a device's sync policy), sent after `Hello`; the
    /// peer sends only what both this and its own rules allow. Change it while connected
    /// with [`SyncEngine::set_policy`].
    pub policy: Option<SyncPolicy>,
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
    /// to its key at enrollment and sets this on the device's link; anything else closes
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
            scope: None,
            write_scope: None,
            policy: None,
        }
    }

    /// Asks the peer for less (see [`ConnectOptions::policy`]).
    pub fn policy(mut self, policy: SyncPolicy) -> ConnectOptions {
        self.policy = Some(policy);
        self
    }

    /// Sends the peer only what `scope` lets it read (see [`ConnectOptions::scope`]).
    pub fn scope(mut self, scope: ReadScope) -> ConnectOptions {
        self.scope = Some(scope);
        self
    }

    /// Accepts from the peer only what `scope` lets it write (see
    /// [`ConnectOptions::write_scope`]).
    pub fn write_scope(mut self, scope: WriteScope) -> ConnectOptions {
        self.write_scope = Some(scope);
        self
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
#[non_exhaustive]
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
    /// The connection ended because this database's op log was compacted past the peer's
    /// cursor on a link that cannot send a snapshot instead (a device's link to its server):
    /// the writes in between can never reach the peer, and reconnecting cannot help. Only
    /// compaction outside [`SyncEngine::compact_oplog`] can cause it.
    pub log_compacted_past_peer: bool,
    /// The code of the peer's `Close`, when the peer ended the connection with one.
    pub peer_close_code: Option<CloseCode>,
    /// The code of our `Close`, when this side ended the connection with one (a peer that
    /// broke the rules gets `ProtocolError` or `Unauthorized`).
    pub close_code: Option<CloseCode>,
    /// A snapshot being received from the peer: (records applied so far, records in all).
    pub snapshot_in: Option<(u64, u64)>,
    /// A snapshot being sent to the peer: (records sent so far, records in all).
    pub snapshot_out: Option<(u64, u64)>,
    /// With a scope ([`ConnectOptions::scope`]): how many records the peer holds, as far as
    /// this side knows; record states sent because records entered its scope; records it
    /// was told to purge.
    pub scoped_records_held: Option<usize>,
    pub states_sent: u64,
    pub purges_sent: u64,
    /// Record states this side joined, and records it purged, because the peer filters
    /// what it sends (a server enforcing access rules).
    pub states_applied: u64,
    pub records_purged: u64,
    /// Operations of the peer this side refused ([`ConnectOptions::write_scope`]), and
    /// operations of ours the peer refused (now in the rejection inbox).
    pub ops_refused: u64,
    pub rejections_received: u64,
    /// Operations of our log this side looked at to decide what to send the peer. With
    /// scopes, the engine routes each new operation only to the connections it concerns
    /// (those that may read its record or hold it), so a device of one team examines little
    /// more than that team's writes.
    pub ops_examined: u64,
}

/// What a user does about a copied database file.
const REIDENTIFY: &str = "give the copy a new identity with `blazedb reidentify FILE` (a copy \
                          enrolled with a server then needs a new enrollment token)";

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
        options: Box<ConnectOptions>,
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
    SetScope {
        id: ConnectionId,
        scope: Option<Box<ReadScope>>,
        reason: PurgeReason,
        reply: Sender<Result<()>>,
    },
    SetWriteScope {
        id: ConnectionId,
        scope: Option<Box<WriteScope>>,
        reply: Sender<Result<()>>,
    },
    SetPolicy {
        id: ConnectionId,
        policy: Option<Box<SyncPolicy>>,
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
        if let Err(e) = blazedb_protocol::DatabaseName::new(name) {
            return Err(SyncError::InvalidArgument(e.to_string()));
        }
        let (events, rx) = mpsc::channel();
        // Listen before reading the head: a commit in between is then both in the head and
        // in the channel (`DbLog::committed` takes the max, so twice is harmless), never in
        // neither, which would leave it unsent until the next commit.
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
        let head = db.replication().oplog_head()?;
        let oplog_start = db.replication().oplog_start()?;
        let counters = Arc::new(Counters::default());
        let node = db.node_id();
        let worker = Worker::new(
            DbLog::new(db, head, oplog_start),
            name.to_owned(),
            events.clone(),
            counters.clone(),
            options,
        );
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
            options: Box::new(options),
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

    /// Replaces what a connection's peer may read (see [`ConnectOptions::scope`]) while it
    /// runs: the peer gets the full states of records that entered its scope and a purge of
    /// those that left it, with `reason`, without reconnecting or downloading again what it
    /// keeps. `None` lifts the filter.
    pub fn set_scope(
        &self,
        id: ConnectionId,
        scope: Option<ReadScope>,
        reason: PurgeReason,
    ) -> Result<()> {
        let scope = scope.map(Box::new);
        self.ask(|reply| Command::SetScope {
            id,
            scope,
            reason,
            reply,
        })?
    }

    /// Replaces what this side asks the peer for on a connection (see
    /// [`ConnectOptions::policy`]): the peer sends the records that now enter it and purges
    /// those that leave it, without reconnecting or sending again what stays.
    pub fn set_policy(&self, id: ConnectionId, policy: Option<SyncPolicy>) -> Result<()> {
        let policy = policy.map(Box::new);
        self.ask(|reply| Command::SetPolicy { id, policy, reply })?
    }

    /// Replaces what a connection's peer may write (see [`ConnectOptions::write_scope`]),
    /// from its next operation on.
    pub fn set_write_scope(&self, id: ConnectionId, scope: Option<WriteScope>) -> Result<()> {
        let scope = scope.map(Box::new);
        self.ask(|reply| Command::SetWriteScope { id, scope, reply })?
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
    /// peer still streams from (it would need a snapshot mid-stream), and none after what a
    /// peer that cannot take a snapshot has durably received, connected or not: on a link
    /// that does not forward (a device's link to its server), a snapshot cannot replace
    /// them, and the device's own writes would never reach the server. The engine stores
    /// that position per such peer at its first `Pull` and on each disconnect. Any other peer
    /// whose cursor is older gets a snapshot when it next pulls (docs/protocol.md,
    /// "Snapshots"). Returns the new start of the log: the newest position dropped.
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
