//! [`UnixRelay`]: the sync protocol over a Unix domain socket, for two processes on one
//! machine (a CLI and a daemon, an app and its helper).
//!
//! The socket carries frames of `blazedb_protocol` (a 4-byte big-endian length, then one
//! encoded [`Message`]) and nothing else. Each started connection has two std threads:
//!
//! * a **reader** that feeds whatever arrives to a [`FrameDecoder`] (16 MiB frame limit)
//!   and hands each message to the engine's [`Inbox`]. A peer that breaks the protocol gets a
//!   `Close` frame with the matching close code, and the connection ends;
//! * a **writer** that takes what [`Relay::send`] queued, encodes it and writes it through a
//!   buffer that is flushed whenever the queue runs empty: a burst leaves in a few large
//!   writes, a lone message leaves at once.
//!
//! `send` never waits for the peer. The queue is bounded instead (see
//! [`UnixRelay::with_queue_limit`]): a peer that stops reading ends its connection rather than
//! grow our memory, which costs nothing durable because the engine resumes from its cursor
//! when the peer reconnects. A write that makes no progress for 30 seconds ends the
//! connection too.
//!
//! Writes go through `write(2)`, so a peer that vanishes mid-write raises `SIGPIPE`. Rust
//! programs ignore that signal from the start; a host embedding BlazeDB from another
//! language must ignore it too.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blazedb_protocol::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, Message, ProtocolError, try_encode_frame,
};

use crate::error::{Result, SyncError};
use crate::relay::{Inbox, Relay};

/// Bytes the reader asks the socket for at once.
const READ_BUFFER_LEN: usize = 64 * 1024;
/// Bytes the writer gathers before a write; a burst of small messages leaves in writes of
/// about this size.
const WRITE_BUFFER_LEN: usize = 64 * 1024;
/// A write that moves no byte for this long means the peer has stopped reading: the
/// connection ends instead of tying up its writer thread forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Relay::close`] waits for the writer to send what is still queued (the engine's
/// parting `Close`, typically) before it cuts the connection.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// First and longest pause between two looks for a connection in
/// [`UnixRelayListener::accept_timeout`].
const ACCEPT_POLL_MIN: Duration = Duration::from_millis(1);
const ACCEPT_POLL_MAX: Duration = Duration::from_millis(20);

/// The io error `error` with `what` and the path in front of its message, same kind.
fn with_path(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

// -- shared state of one connection -------------------------------------------------------

/// What the relay, its reader and its writer share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something was queued, or the connection is ending.
    work: Condvar,
    /// Wakes [`Relay::close`]: the writer has finished.
    writer_finished: Condvar,
}

struct State {
    /// Messages waiting for the writer.
    queue: VecDeque<Message>,
    /// Messages sent and not yet written: those in `queue` and the batch the writer holds.
    unwritten: usize,
    /// Most messages `unwritten` may reach.
    limit: usize,
    /// The connection is ending: `send` refuses, the writer sends what is queued, then shuts
    /// the socket down.
    closing: bool,
    /// Why our side ended the connection, when it did (the reader reports it to the inbox).
    failure: Option<String>,
    /// [`Relay::close`] was called: whoever called it knows, so nothing is reported.
    closed_locally: bool,
    /// The writer waits for `work`: a `send` must wake it.
    writer_waiting: bool,
    /// The writer thread has ended (the socket is shut down).
    writer_done: bool,
}

impl Shared {
    fn new(limit: usize) -> Shared {
        Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                unwritten: 0,
                limit,
                closing: false,
                failure: None,
                closed_locally: false,
                writer_waiting: false,
                writer_done: false,
            }),
            work: Condvar::new(),
            writer_finished: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Starts ending the connection because of `reason` (the first reason is the one kept)
    /// and drops what is queued: it would go to a peer we are leaving anyway.
    fn fail(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
        self.closing = true;
        self.unwritten = self.unwritten.saturating_sub(self.queue.len());
        self.queue.clear();
    }
}

// -- the relay ----------------------------------------------------------------------------

/// One connection over a Unix domain socket, as a [`Relay`] for the sync engine.
///
/// Made by [`UnixRelay::connect`], [`UnixRelayListener::accept`] or
/// [`UnixRelay::from_stream`]. Nothing is read or written until [`Relay::start`]; messages
/// sent before that wait in the queue. Dropping the relay closes the connection.
///
/// The [`Inbox`] learns of the connection's end (`closed`) when the peer closes it, a read
/// or write fails, the peer breaks the protocol or stops reading, but not after
/// [`Relay::close`]: like [`crate::InMemoryRelay`], a relay does not tell its own engine
/// about a close that engine asked for.
pub struct UnixRelay {
    /// The socket, kept to shut it down: that is what ends both threads.
    stream: UnixStream,
    shared: Arc<Shared>,
    started: bool,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl UnixRelay {
    /// Most messages a relay queues for a peer that does not read them (see
    /// [`UnixRelay::with_queue_limit`]).
    pub const DEFAULT_QUEUE_LIMIT: usize = 4096;

    /// Connects to the [`UnixRelayListener`] (or any peer speaking the protocol) at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<UnixRelay> {
        let path = path.as_ref();
        let stream =
            UnixStream::connect(path).map_err(|e| with_path(e, "cannot connect to", path))?;
        UnixRelay::from_stream(stream)
    }

    /// A relay over an already connected socket (one inherited from a parent process, one
    /// end of [`UnixStream::pair`]…). The socket is switched to blocking mode.
    pub fn from_stream(stream: UnixStream) -> Result<UnixRelay> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(UnixRelay {
            stream,
            shared: Arc::new(Shared::new(UnixRelay::DEFAULT_QUEUE_LIMIT)),
            started: false,
            reader: None,
            writer: None,
        })
    }

    /// Two relays connected to each other through an anonymous socket pair: the real
    /// transport without a file, for tests and for engines in one process that want it.
    pub fn pair() -> Result<(UnixRelay, UnixRelay)> {
        let (a, b) = UnixStream::pair()?;
        Ok((UnixRelay::from_stream(a)?, UnixRelay::from_stream(b)?))
    }

    /// Sets how many messages may wait to be written (at least 1; default
    /// [`UnixRelay::DEFAULT_QUEUE_LIMIT`]).
    ///
    /// A `send` beyond it closes the connection instead of queueing: a peer that has stopped
    /// reading must not make us hold an unbounded backlog, and nothing is lost by dropping
    /// it, since the engine resumes from its durable cursor when the peer reconnects. Each
    /// message is at most one 16 MiB frame, and the engine's batches are far smaller.
    #[must_use]
    pub fn with_queue_limit(self, messages: usize) -> UnixRelay {
        self.shared.lock().limit = messages.max(1);
        self
    }

    /// Ends the connection now: drops the queue and shuts the socket down both ways, which
    /// wakes both threads.
    fn cut(&self) {
        self.shared
            .lock()
            .fail("the connection was closed".to_owned());
        self.shared.work.notify_all();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Waits for a relay thread to end, unless it is the current thread (a relay dropped by its
/// own reader or writer), which then just ends on its own.
/// Gives the writer a moment to send what is queued (a parting `Close`, usually); a peer that
/// does not read gets cut off when the moment is over.
fn linger(shared: &Shared) {
    let mut state = shared.lock();
    let deadline = Instant::now() + CLOSE_LINGER;
    while !state.writer_done {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        state = shared
            .writer_finished
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    state.unwritten = state.unwritten.saturating_sub(state.queue.len());
    state.queue.clear();
}

fn join(handle: Option<JoinHandle<()>>) {
    if let Some(handle) = handle
        && handle.thread().id() != thread::current().id()
    {
        let _ = handle.join();
    }
}

impl Relay for UnixRelay {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        if self.started {
            return Err(SyncError::InvalidArgument(
                "this Unix socket relay was already started".to_owned(),
            ));
        }
        if self.shared.lock().closing {
            return Err(SyncError::RelayClosed);
        }
        self.started = true;
        let id = inbox.connection().0;

        let stream = self.stream.try_clone()?;
        let shared = self.shared.clone();
        let writer = thread::Builder::new()
            .name(format!("unix-relay-w{id}"))
            .spawn(move || write_side(&shared, &stream));
        match writer {
            Ok(handle) => self.writer = Some(handle),
            Err(e) => {
                self.cut();
                return Err(e.into());
            }
        }

        let stream = self.stream.try_clone()?;
        let shared = self.shared.clone();
        let reader = thread::Builder::new()
            .name(format!("unix-relay-r{id}"))
            .spawn(move || read_side(&shared, &stream, &inbox));
        match reader {
            Ok(handle) => self.reader = Some(handle),
            Err(e) => {
                self.cut();
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<()> {
        let mut state = self.shared.lock();
        if state.closing {
            return Err(SyncError::RelayClosed);
        }
        if state.unwritten >= state.limit {
            let reason = format!(
                "the peer stopped reading: {} messages were waiting to be sent",
                state.unwritten
            );
            state.fail(reason);
            drop(state);
            self.shared.work.notify_all();
            let _ = self.stream.shutdown(Shutdown::Both);
            return Err(SyncError::RelayClosed);
        }
        state.queue.push_back(message);
        state.unwritten += 1;
        if state.writer_waiting {
            // One wake-up per burst: the writer takes the whole queue when it runs.
            state.writer_waiting = false;
            drop(state);
            self.shared.work.notify_one();
        }
        Ok(())
    }

    fn close(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed_locally = true;
            state.closing = true;
            self.shared.work.notify_all();
        }
        let (writer, reader) = (self.writer.take(), self.reader.take());
        let finish = {
            let shared = self.shared.clone();
            let stream = self.stream.try_clone();
            move || {
                if writer.is_some() {
                    linger(&shared);
                }
                // Wakes a reader blocked in read (end of stream) and a writer blocked in write.
                if let Ok(stream) = &stream {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                join(writer);
                join(reader);
            }
        };
        // The linger can take `CLOSE_LINGER`: the caller (an engine thread serving other
        // connections) must not wait for it, so it runs on a thread of its own.
        if thread::Builder::new()
            .name("blazedb-unix-close".into())
            .spawn(finish)
            .is_err()
        {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    fn kind(&self) -> &'static str {
        "unix"
    }
}

impl Drop for UnixRelay {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for UnixRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("UnixRelay")
            .field("started", &self.started)
            .field("closing", &state.closing)
            .field("unwritten", &state.unwritten)
            .field("limit", &state.limit)
            .finish()
    }
}

// -- the writer thread --------------------------------------------------------------------

/// The writer thread: writes until the connection ends, then shuts the socket down.
fn write_side(shared: &Shared, stream: &UnixStream) {
    let outcome = write_messages(shared, stream);
    {
        let mut state = shared.lock();
        match outcome {
            Ok(()) => state.closing = true,
            Err(reason) => state.fail(reason),
        }
    }
    // The reader sees the end of the stream and reports the failure recorded above, if any.
    let _ = stream.shutdown(Shutdown::Both);
    shared.lock().writer_done = true;
    shared.writer_finished.notify_all();
}

/// Writes queued messages until the connection is closing and everything queued is out.
/// An error is the reason the connection ends.
fn write_messages(shared: &Shared, stream: &UnixStream) -> Result<(), String> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_LEN, stream);
    let mut batch = VecDeque::new();
    loop {
        let closing = {
            let mut state = shared.lock();
            while state.queue.is_empty() && !state.closing && out.buffer().is_empty() {
                state.writer_waiting = true;
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.writer_waiting = false;
            }
            std::mem::swap(&mut state.queue, &mut batch);
            state.closing
        };
        if batch.is_empty() {
            // The queue ran empty: what is buffered goes out now.
            out.flush().map_err(write_error)?;
            if closing {
                return Ok(());
            }
            continue;
        }
        let written = batch.len();
        for message in batch.drain(..) {
            let frame = try_encode_frame(&message, DEFAULT_MAX_FRAME_LEN)
                .map_err(|e| format!("could not send a {} message: {e}", message.type_name()))?;
            out.write_all(&frame).map_err(write_error)?;
        }
        let mut state = shared.lock();
        state.unwritten = state.unwritten.saturating_sub(written);
    }
}

fn write_error(error: io::Error) -> String {
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "the peer accepted no data for {} seconds",
            WRITE_TIMEOUT.as_secs()
        ),
        _ => format!("writing to the peer failed: {error}"),
    }
}

// -- the reader thread --------------------------------------------------------------------

/// How reading ended.
enum ReadEnd {
    /// End of stream; `mid_frame` if it cut a frame short.
    PeerClosed {
        mid_frame: bool,
    },
    Failed(io::Error),
    /// The peer sent bytes that are not valid frames of valid messages.
    Broke(ProtocolError),
    /// [`Inbox::deliver`] refused: nobody listens any more.
    EngineGone,
}

/// The reader thread: delivers messages until the connection ends, then tells the inbox why.
fn read_side(shared: &Shared, stream: &UnixStream, inbox: &Inbox) {
    let end = read_messages(stream, inbox);
    let reason = match end {
        ReadEnd::PeerClosed { mid_frame: false } => "the peer closed the connection".to_owned(),
        ReadEnd::PeerClosed { mid_frame: true } => {
            "the peer closed the connection in the middle of a frame".to_owned()
        }
        ReadEnd::Failed(error) => format!("reading from the peer failed: {error}"),
        ReadEnd::Broke(error) => {
            let reason = format!("the peer broke the protocol: {error}");
            let mut state = shared.lock();
            if !state.closing {
                // Tell the peer why, after anything half written; nothing else goes out.
                state.fail(reason.clone());
                state
                    .queue
                    .push_back(Message::close(error.close_code(), error.to_string()));
                state.unwritten += 1;
            }
            drop(state);
            shared.work.notify_all();
            // The writer shuts the rest down once the Close is out (or its write times out).
            let _ = stream.shutdown(Shutdown::Read);
            reason
        }
        ReadEnd::EngineGone => {
            let mut state = shared.lock();
            state.closed_locally = true;
            state.closing = true;
            drop(state);
            shared.work.notify_all();
            return;
        }
    };
    let mut state = shared.lock();
    // The peer is gone or unreadable: no more sends. The writer sends what is queued (a
    // half-closed peer may still read it) and ends.
    state.closing = true;
    let report = (!state.closed_locally).then(|| state.failure.clone().unwrap_or(reason));
    drop(state);
    shared.work.notify_all();
    if let Some(reason) = report {
        inbox.closed(reason);
    }
}

/// Reads frames and delivers their messages until the stream or the inbox ends.
fn read_messages(mut stream: &UnixStream, inbox: &Inbox) -> ReadEnd {
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0; READ_BUFFER_LEN];
    loop {
        let read = match stream.read(&mut buf) {
            Ok(0) => {
                return ReadEnd::PeerClosed {
                    mid_frame: decoder.buffered_len() > 0,
                };
            }
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return ReadEnd::Failed(e),
        };
        let mut bytes = buf.get(..read).unwrap_or_default();
        loop {
            let taken = decoder.push(bytes);
            bytes = bytes.get(taken..).unwrap_or_default();
            let mut delivered = false;
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        if !inbox.deliver(message) {
                            return ReadEnd::EngineGone;
                        }
                        delivered = true;
                    }
                    Ok(None) => break,
                    Err(error) => return ReadEnd::Broke(error),
                }
            }
            if bytes.is_empty() {
                break;
            }
            if taken == 0 && !delivered {
                // A full decoder always holds a message or refuses the header; never spin.
                return ReadEnd::Failed(io::Error::other("the frame decoder stopped taking bytes"));
            }
        }
    }
}

// -- the listener -------------------------------------------------------------------------

/// Listens on a Unix socket file for peers and hands each connection over as a
/// [`UnixRelay`].
///
/// Binding replaces a socket file left behind by a process that died (nobody accepts on it)
/// but refuses one that a live process listens on. The socket file is removed on drop,
/// unless another listener has replaced it meanwhile.
pub struct UnixRelayListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created: drop removes that file only.
    file: Option<(u64, u64)>,
    queue_limit: usize,
}

impl UnixRelayListener {
    /// Listens at `path`.
    ///
    /// A socket file already there is taken over if nobody listens on it (the leftover of a
    /// crashed process); if a process listens on it, the error has kind
    /// [`ErrorKind::AddrInUse`]. Any other file there is left alone, and is an error too.
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixRelayListener> {
        let path = path.as_ref();
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(e) if e.kind() == ErrorKind::AddrInUse => take_over_stale(path)?,
            Err(e) => return Err(with_path(e, "cannot listen on", path).into()),
        };
        // Non-blocking, so that accept_timeout can give up; accepted sockets are switched back.
        listener.set_nonblocking(true)?;
        let file = fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        Ok(UnixRelayListener {
            listener,
            path: path.to_owned(),
            file,
            queue_limit: UnixRelay::DEFAULT_QUEUE_LIMIT,
        })
    }

    /// Sets [`UnixRelay::with_queue_limit`] for every relay this listener accepts.
    #[must_use]
    pub fn with_queue_limit(mut self, messages: usize) -> UnixRelayListener {
        self.queue_limit = messages.max(1);
        self
    }

    /// The socket file's path, for peers to connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next peer and returns its connection (polling, like
    /// [`UnixRelayListener::accept_timeout`]).
    pub fn accept(&self) -> Result<UnixRelay> {
        loop {
            if let Some(relay) = self.accept_timeout(Duration::from_secs(3600))? {
                return Ok(relay);
            }
        }
    }

    /// Waits at most `timeout` for the next peer: `None` if none came, so that an accept
    /// loop can check whether it should stop. Polls every few milliseconds.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<UnixRelay>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = ACCEPT_POLL_MIN;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let relay = UnixRelay::from_stream(stream)?.with_queue_limit(self.queue_limit);
                    return Ok(Some(relay));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // A peer that gave up before we accepted, or a signal: look again.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(with_path(e, "cannot accept a connection on", &self.path).into());
                }
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => pause,
            };
            if left.is_zero() {
                return Ok(None);
            }
            thread::sleep(pause.min(left));
            pause = pause.saturating_mul(2).min(ACCEPT_POLL_MAX);
        }
    }
}

/// Binds at `path`, where a file already is: replaces it if it is a socket nobody listens on.
fn take_over_stale(path: &Path) -> Result<UnixListener> {
    let in_use = |what: &str| {
        SyncError::Io(io::Error::new(
            ErrorKind::AddrInUse,
            format!("cannot listen on {}: {what}", path.display()),
        ))
    };
    let is_socket = fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    if !is_socket {
        return Err(in_use("a file that is not a socket is in the way"));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(in_use("another process is already listening there")),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            // Nobody listens: the socket file of a process that died.
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(e, "cannot remove the stale socket", path).into()),
            }
            UnixListener::bind(path).map_err(|e| with_path(e, "cannot listen on", path).into())
        }
        Err(e) => Err(in_use(&format!(
            "a socket file is in the way, and connecting to it failed: {e}"
        ))),
    }
}

impl Drop for UnixRelayListener {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if ours.is_some() && ours == self.file {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl fmt::Debug for UnixRelayListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixRelayListener")
            .field("path", &self.path)
            .field("queue_limit", &self.queue_limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use std::sync::mpsc::{Receiver, channel};

    use blazedb_format::{NodeId, Uuid};
    use blazedb_protocol::{CloseCode, PROTOCOL_VERSION, encode_frame};

    use super::*;
    use crate::engine::Event;
    use crate::relay::ConnectionId;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn inbox(id: u64) -> (Inbox, Receiver<Event>) {
        let (tx, rx) = channel::<Event>();
        (
            Inbox {
                connection: ConnectionId(id),
                events: tx,
            },
            rx,
        )
    }

    fn hello() -> Message {
        Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            node: NodeId(Uuid::from_bytes([7; 16])),
            database: "notes".to_owned(),
            capabilities: blazedb_protocol::Capabilities::NONE,
            head: 0,
        }
    }

    fn next_message(rx: &Receiver<Event>) -> Message {
        match rx.recv_timeout(PATIENCE).expect("an event") {
            Event::Message { message, .. } => message,
            Event::Closed { reason, .. } => panic!("closed instead of a message: {reason}"),
            _ => panic!("an event a relay does not send"),
        }
    }

    fn closed_reason(rx: &Receiver<Event>) -> String {
        match rx.recv_timeout(PATIENCE).expect("an event") {
            Event::Closed { reason, .. } => reason,
            Event::Message { message, .. } => panic!("a message instead of closed: {message:?}"),
            _ => panic!("an event a relay does not send"),
        }
    }

    /// A listener in a fresh directory, and the directory (kept alive by the caller).
    fn listener() -> (tempfile::TempDir, UnixRelayListener) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixRelayListener::bind(dir.path().join("sync.sock")).unwrap();
        (dir, listener)
    }

    /// One end of a connection under test: the relay and what its inbox received.
    type End = (UnixRelay, Receiver<Event>);

    /// Both ends of one connection over a socket file, started, with their inboxes.
    fn connected() -> (tempfile::TempDir, End, End) {
        let (dir, listener) = listener();
        let mut client = UnixRelay::connect(listener.path()).unwrap();
        let mut server = listener.accept_timeout(PATIENCE).unwrap().unwrap();
        let (client_inbox, client_rx) = inbox(1);
        let (server_inbox, server_rx) = inbox(2);
        client.start(client_inbox).unwrap();
        server.start(server_inbox).unwrap();
        (dir, (client, client_rx), (server, server_rx))
    }

    /// A raw socket connected to a started relay accepted by the listener.
    fn raw_peer() -> (tempfile::TempDir, UnixStream, UnixRelay, Receiver<Event>) {
        let (dir, listener) = listener();
        let raw = UnixStream::connect(listener.path()).unwrap();
        raw.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut relay = listener.accept_timeout(PATIENCE).unwrap().unwrap();
        let (inbox, rx) = inbox(3);
        relay.start(inbox).unwrap();
        (dir, raw, relay, rx)
    }

    /// Everything the raw socket receives until end of stream (or a reset), as messages.
    fn read_to_end(raw: &mut UnixStream) -> Vec<Message> {
        let mut bytes = Vec::new();
        let mut buf = [0; 4096];
        loop {
            match raw.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading the raw socket failed: {e}"),
            }
        }
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.push(&bytes), bytes.len());
        let mut messages = Vec::new();
        while let Some(message) = decoder.next_message().unwrap() {
            messages.push(message);
        }
        assert_eq!(decoder.buffered_len(), 0);
        messages
    }

    fn assert_protocol_close(raw: &mut UnixStream, rx: &Receiver<Event>) {
        let reason = closed_reason(rx);
        assert!(
            reason.starts_with("the peer broke the protocol: "),
            "{reason}"
        );
        let received = read_to_end(raw);
        assert!(
            matches!(
                received.as_slice(),
                [Message::Close {
                    code: CloseCode::ProtocolError,
                    ..
                }]
            ),
            "{received:?}"
        );
    }

    #[test]
    fn a_message_sent_by_one_side_arrives_at_the_other() {
        let (_dir, (mut client, client_rx), (mut server, server_rx)) = connected();
        assert_eq!(client.kind(), "unix");
        client.send(hello()).unwrap();
        assert_eq!(next_message(&server_rx), hello());
        server.send(Message::ack(42)).unwrap();
        assert_eq!(next_message(&client_rx), Message::ack(42));
        match client_rx.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            _ => panic!("only one event was expected"),
        }
    }

    #[test]
    fn events_carry_the_connection_of_their_inbox() {
        let (_dir, (mut client, _client_rx), (_server, server_rx)) = connected();
        client.send(Message::Ping { nonce: 1 }).unwrap();
        match server_rx.recv_timeout(PATIENCE).unwrap() {
            Event::Message { connection, .. } => assert_eq!(connection, ConnectionId(2)),
            Event::Closed { reason, .. } => panic!("{reason}"),
            _ => panic!("an event a relay does not send"),
        }
    }

    #[test]
    fn many_messages_in_a_burst_arrive_in_order() {
        let (_dir, listener) = listener();
        let listener = listener.with_queue_limit(100_000);
        let mut client = UnixRelay::connect(listener.path())
            .unwrap()
            .with_queue_limit(100_000);
        let mut server = listener.accept_timeout(PATIENCE).unwrap().unwrap();
        let (client_inbox, _client_rx) = inbox(1);
        let (server_inbox, server_rx) = inbox(2);
        client.start(client_inbox).unwrap();
        server.start(server_inbox).unwrap();
        for nonce in 0..20_000 {
            client.send(Message::Ping { nonce }).unwrap();
        }
        client
            .send(Message::close(CloseCode::Normal, "x".repeat(1000)))
            .unwrap();
        for nonce in 0..20_000 {
            assert_eq!(next_message(&server_rx), Message::Ping { nonce });
        }
        assert_eq!(
            next_message(&server_rx),
            Message::close(CloseCode::Normal, "x".repeat(1000))
        );
    }

    #[test]
    fn both_directions_work_at_once() {
        let (_dir, (mut client, client_rx), (mut server, server_rx)) = connected();
        for nonce in 0..1000 {
            client.send(Message::Ping { nonce }).unwrap();
            server.send(Message::Pong { nonce }).unwrap();
        }
        for nonce in 0..1000 {
            assert_eq!(next_message(&server_rx), Message::Ping { nonce });
            assert_eq!(next_message(&client_rx), Message::Pong { nonce });
        }
    }

    #[test]
    fn closing_one_end_makes_the_other_report_closed() {
        let (_dir, (mut client, client_rx), (mut server, server_rx)) = connected();
        client.close();
        assert_eq!(closed_reason(&server_rx), "the peer closed the connection");
        assert!(matches!(
            server.send(Message::Ping { nonce: 1 }),
            Err(SyncError::RelayClosed)
        ));
        // The end that closed is not told about its own close.
        assert!(client_rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn dropping_one_end_makes_the_other_report_closed() {
        let (_dir, (client, _client_rx), (_server, server_rx)) = connected();
        drop(client);
        assert_eq!(closed_reason(&server_rx), "the peer closed the connection");
    }

    #[test]
    fn what_was_sent_before_close_still_arrives() {
        let (_dir, (mut client, _client_rx), (_server, server_rx)) = connected();
        for nonce in 0..1000 {
            client.send(Message::Ping { nonce }).unwrap();
        }
        client
            .send(Message::close(CloseCode::Normal, "bye"))
            .unwrap();
        client.close();
        for nonce in 0..1000 {
            assert_eq!(next_message(&server_rx), Message::Ping { nonce });
        }
        assert_eq!(
            next_message(&server_rx),
            Message::close(CloseCode::Normal, "bye")
        );
        assert_eq!(closed_reason(&server_rx), "the peer closed the connection");
    }

    #[test]
    fn send_after_close_is_refused_and_close_is_idempotent() {
        let (_dir, (mut client, _client_rx), (_server, _server_rx)) = connected();
        client.close();
        client.close();
        assert!(matches!(
            client.send(Message::Ping { nonce: 1 }),
            Err(SyncError::RelayClosed)
        ));
        let (inbox, _rx) = inbox(9);
        assert!(client.start(inbox).is_err());
    }

    #[test]
    fn a_relay_cannot_be_started_twice() {
        let (_dir, (mut client, _client_rx), _server) = connected();
        let (inbox, _rx) = inbox(9);
        assert!(matches!(
            client.start(inbox),
            Err(SyncError::InvalidArgument(_))
        ));
    }

    #[test]
    fn messages_sent_before_start_are_written_once_started() {
        let (mut a, mut b) = UnixRelay::pair().unwrap();
        a.send(hello()).unwrap();
        let (a_inbox, _a_rx) = inbox(1);
        let (b_inbox, b_rx) = inbox(2);
        b.start(b_inbox).unwrap();
        a.start(a_inbox).unwrap();
        assert_eq!(next_message(&b_rx), hello());
    }

    #[test]
    fn garbage_from_the_peer_ends_the_connection_with_a_protocol_close() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        // A frame whose message type does not exist.
        raw.write_all(&[0, 0, 0, 3, 0xB7, 0x16, 0x7F]).unwrap();
        assert_protocol_close(&mut raw, &rx);
    }

    #[test]
    fn bytes_that_are_not_even_a_message_end_the_connection() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        raw.write_all(b"\0\0\0\x05hello").unwrap();
        assert_protocol_close(&mut raw, &rx);
    }

    #[test]
    fn a_zero_length_frame_ends_the_connection() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        raw.write_all(&[0, 0, 0, 0]).unwrap();
        assert_protocol_close(&mut raw, &rx);
    }

    #[test]
    fn an_oversized_length_prefix_ends_the_connection_before_the_frame_arrives() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        raw.write_all(&(DEFAULT_MAX_FRAME_LEN + 1).to_be_bytes())
            .unwrap();
        assert_protocol_close(&mut raw, &rx);
    }

    #[test]
    fn messages_before_the_garbage_are_still_delivered() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        let mut bytes = encode_frame(&Message::Ping { nonce: 5 });
        bytes.extend([0, 0, 0, 0]);
        raw.write_all(&bytes).unwrap();
        assert_eq!(next_message(&rx), Message::Ping { nonce: 5 });
        assert_protocol_close(&mut raw, &rx);
    }

    #[test]
    fn a_peer_that_stops_mid_frame_is_reported_as_such() {
        let (_dir, mut raw, _relay, rx) = raw_peer();
        raw.write_all(&encode_frame(&hello())[..10]).unwrap();
        raw.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            closed_reason(&rx),
            "the peer closed the connection in the middle of a frame"
        );
    }

    #[test]
    fn closing_does_not_wait_for_a_writer_stuck_on_a_peer_that_does_not_read() {
        let (_dir, raw, mut relay, _rx) = raw_peer();
        let big = Message::close(CloseCode::Normal, "x".repeat(1000));
        // Fill the socket buffer until the writer blocks in write.
        for _ in 0..2000 {
            relay.send(big.clone()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        relay.close();
        // close() returned while the writer still waits: the linger runs elsewhere.
        assert!(!relay.shared.lock().writer_done);
        drop(raw);
    }

    #[test]
    fn a_peer_that_does_not_read_is_dropped_once_the_queue_is_full() {
        let (_dir, raw, relay, rx) = raw_peer();
        let mut relay = relay.with_queue_limit(8);
        let big = Message::close(CloseCode::Normal, "x".repeat(1000));
        let mut refused = None;
        for sent in 0..100_000 {
            if let Err(e) = relay.send(big.clone()) {
                refused = Some((sent, e));
                break;
            }
        }
        let (sent, error) = refused.expect("the queue limit was never reached");
        assert!(matches!(error, SyncError::RelayClosed), "{error}");
        assert!(sent >= 8, "only {sent} messages were sent");
        let reason = closed_reason(&rx);
        assert!(reason.starts_with("the peer stopped reading"), "{reason}");
        assert!(matches!(
            relay.send(Message::Ping { nonce: 1 }),
            Err(SyncError::RelayClosed)
        ));
        drop(raw);
    }

    #[test]
    fn a_message_that_cannot_be_encoded_ends_the_connection() {
        let (_dir, (mut client, client_rx), (_server, server_rx)) = connected();
        client
            .send(Message::Hello {
                protocol_version: PROTOCOL_VERSION,
                node: NodeId(Uuid::nil()),
                database: String::new(),
                capabilities: blazedb_protocol::Capabilities::NONE,
                head: 0,
            })
            .unwrap();
        let reason = closed_reason(&client_rx);
        assert!(
            reason.starts_with("could not send a Hello message"),
            "{reason}"
        );
        assert_eq!(closed_reason(&server_rx), "the peer closed the connection");
    }

    #[test]
    fn binding_over_a_stale_socket_file_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.sock");
        // A listener that "crashed": std leaves its socket file behind.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = UnixRelayListener::bind(&path).unwrap();
        let mut client = UnixRelay::connect(&path).unwrap();
        let mut server = listener.accept_timeout(PATIENCE).unwrap().unwrap();
        let (client_inbox, _client_rx) = inbox(1);
        let (server_inbox, server_rx) = inbox(2);
        client.start(client_inbox).unwrap();
        server.start(server_inbox).unwrap();
        client.send(Message::Ping { nonce: 3 }).unwrap();
        assert_eq!(next_message(&server_rx), Message::Ping { nonce: 3 });
    }

    #[test]
    fn binding_where_a_listener_is_alive_is_refused() {
        let (_dir, first) = listener();
        let error = UnixRelayListener::bind(first.path()).unwrap_err();
        match &error {
            SyncError::Io(e) => assert_eq!(e.kind(), ErrorKind::AddrInUse),
            other => panic!("{other}"),
        }
        assert!(error.to_string().contains("already listening"), "{error}");
        // The live listener keeps its socket file.
        assert!(first.path().exists());
        assert!(UnixRelay::connect(first.path()).is_ok());
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        fs::write(&path, "keep me").unwrap();
        let error = UnixRelayListener::bind(&path).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn dropping_the_listener_removes_its_socket_file() {
        let (_dir, listener) = listener();
        let path = listener.path().to_owned();
        assert!(path.exists());
        drop(listener);
        assert!(!path.exists());
        assert!(UnixRelay::connect(&path).is_err());
    }

    #[test]
    fn a_listener_leaves_a_socket_file_it_no_longer_owns() {
        let (_dir, old) = listener();
        let path = old.path().to_owned();
        fs::remove_file(&path).unwrap();
        let new = UnixRelayListener::bind(&path).unwrap();
        drop(old);
        assert!(path.exists());
        drop(new);
        assert!(!path.exists());
    }

    #[test]
    fn accept_timeout_returns_none_when_nobody_connects() {
        let (_dir, listener) = listener();
        let begin = Instant::now();
        assert!(
            listener
                .accept_timeout(Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        assert!(begin.elapsed() >= Duration::from_millis(50));
        assert!(listener.accept_timeout(Duration::ZERO).unwrap().is_none());
    }

    #[test]
    fn accept_waits_for_a_peer() {
        let (_dir, listener) = listener();
        let path = listener.path().to_owned();
        let connector = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            UnixRelay::connect(path).unwrap()
        });
        let mut server = listener.accept().unwrap();
        let mut client = connector.join().unwrap();
        let (client_inbox, client_rx) = inbox(1);
        let (server_inbox, _server_rx) = inbox(2);
        client.start(client_inbox).unwrap();
        server.start(server_inbox).unwrap();
        server.send(Message::Pong { nonce: 8 }).unwrap();
        assert_eq!(next_message(&client_rx), Message::Pong { nonce: 8 });
    }

    #[test]
    fn connecting_where_nobody_listens_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        let error = UnixRelay::connect(&path).unwrap_err();
        assert!(error.to_string().contains("nobody.sock"), "{error}");
    }

    #[test]
    fn the_reader_stops_when_the_engine_is_gone() {
        let (_dir, (mut client, _client_rx), (mut server, server_rx)) = connected();
        drop(server_rx);
        client.send(Message::Ping { nonce: 1 }).unwrap();
        // The server's reader finds nobody to deliver to and ends the connection.
        let deadline = Instant::now() + PATIENCE;
        while server.send(Message::Ping { nonce: 2 }).is_ok() {
            assert!(Instant::now() < deadline, "the server never noticed");
            thread::sleep(Duration::from_millis(5));
        }
    }
}
