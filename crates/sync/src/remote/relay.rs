//! [`WsRelay`]: a [`Relay`] over a secure WebSocket session, for the thread-based engine.
//!
//! Two tokio tasks carry a connection: a **reader** that opens each sealed message, decodes
//! it and hands it to the engine's inbox, and a **writer** that takes what [`Relay::send`]
//! queued, encodes (compressing large batches when the peer accepts zstd), seals and writes
//! it, flushing when the queue runs empty. `send` never waits: the queue is bounded, and a
//! peer that stops reading has its connection closed instead (it catches up from its cursor
//! when it reconnects), so a stalled device cannot slow the others or grow memory.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blazedb_protocol::secure::SecureChannel;
use blazedb_protocol::{Capabilities, CloseCode, DEFAULT_COMPRESSION_THRESHOLD, Message};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::session::{Session, Transport};
use crate::e2e::{Inbound, MessageLayer};
use crate::error::{Result, SyncError};
use crate::relay::{Hold, Inbox, Relay};

/// How a [`WsRelay`] behaves.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Most messages queued for a peer that does not read them; one more closes the
    /// connection.
    pub queue_limit: usize,
    /// Most bytes (of plain message encodings) queued for a peer that does not read them;
    /// a message that would go beyond closes the connection (a message alone in the queue
    /// always fits).
    pub queue_bytes: usize,
    /// Most memory the peer's messages may take once decoded, while the engine has not
    /// applied them yet. The reader takes this budget as it decompresses and decodes each
    /// message, and stops reading while there is none left, so a peer that sends faster than
    /// the engine applies is slowed down (TCP backpressure) instead of growing memory.
    pub inbound_bytes: usize,
    /// Encoded messages of at least this many bytes are compressed when the peer accepts
    /// zstd.
    pub compression_threshold: usize,
    /// How long [`Relay::close`] lets the writer send what is queued before it gives up.
    pub close_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            queue_limit: 1024,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            inbound_bytes: DEFAULT_INBOUND_BYTES,
            compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Default [`RelayOptions::queue_bytes`]: 32 MiB, room for the engine's whole window of
/// batches ([`crate::WINDOW`]) to a peer on a slow link.
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;
/// Default [`RelayOptions::inbound_bytes`]: 16 MiB of decoded messages (as
/// [`blazedb_protocol::Message::decode_weighed`] weighs them), about 16,000 small operations.
/// A message heavier than the budget takes all of it, so it is held alone.
pub const DEFAULT_INBOUND_BYTES: usize = 16 << 20;

/// How long a side that sent its close frame keeps reading for the peer's answer.
pub(crate) const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Bytes and messages a relay moved, as sealed WebSocket payloads.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RelayCounters {
    pub payload_bytes_sent: AtomicU64,
    pub payload_bytes_received: AtomicU64,
    pub compressed_messages: AtomicU64,
}

/// How the tasks of a relay are told to stop.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    Running,
    /// Stop now, telling the peer why with a WebSocket close frame (or not at all).
    Abort(Option<(WsCloseCode, String)>),
}

struct Pending<S> {
    session: Session<S>,
    first: Option<Message>,
}

/// One message for the writer: its plain encoding, and its code when it is a `Close` (after
/// which the writer writes nothing more and closes the WebSocket with the matching code).
struct Outgoing {
    plain: Vec<u8>,
    close: Option<CloseCode>,
}

impl Outgoing {
    fn new(message: &Message) -> Outgoing {
        Outgoing {
            plain: message.encode(),
            close: match message {
                Message::Close { code, .. } => Some(*code),
                _ => None,
            },
        }
    }
}

/// A connection to a remote node over a secure WebSocket [`Session`]. Made with
/// [`Session::into_relay`]; hand it to [`crate::SyncEngine::connect`].
pub struct WsRelay<S> {
    pending: Option<Pending<S>>,
    options: RelayOptions,
    queue: Option<mpsc::Sender<Outgoing>>,
    /// The writer's end of `queue`, until the relay starts.
    queued: Option<mpsc::Receiver<Outgoing>>,
    /// Bytes in `queue`, not yet written.
    queued_bytes: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    stop: Arc<watch::Sender<Stop>>,
    finished_tx: Arc<watch::Sender<bool>>,
    finished: watch::Receiver<bool>,
    counters: Arc<RelayCounters>,
    inbox: Option<Inbox>,
    runtime: Option<tokio::runtime::Handle>,
    /// A layer between the connection and the engine (a device's end-to-end sealing, a
    /// server's key desk).
    layer: Option<Arc<dyn MessageLayer>>,
}

impl<S: Transport> WsRelay<S> {
    pub(crate) fn new(session: Session<S>, first: Option<Message>, options: RelayOptions) -> Self {
        let (stop, _) = watch::channel(Stop::Running);
        let (finished_tx, finished) = watch::channel(false);
        let (queue, queued) = mpsc::channel(options.queue_limit.max(1));
        WsRelay {
            pending: Some(Pending { session, first }),
            options,
            queue: Some(queue),
            queued: Some(queued),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(stop),
            finished_tx: Arc::new(finished_tx),
            finished,
            counters: Arc::new(RelayCounters::default()),
            inbox: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            layer: None,
        }
    }

    /// Runs every message through `layer`: what the engine sends through
    /// [`MessageLayer::outbound`], what the peer sends through [`MessageLayer::inbound`]
    /// (docs/e2e.md). A message it refuses ends the connection.
    pub fn with_layer(mut self, layer: Arc<dyn MessageLayer>) -> Self {
        self.layer = Some(layer);
        self
    }

    /// A handle that queues messages to the peer from outside the engine (a layer's own
    /// messages, such as keys), after what is queued already. Usable once the relay
    /// started; it stops working when the relay closes.
    pub fn injector(&self) -> RelayInjector {
        RelayInjector {
            queue: self.queue.as_ref().map(mpsc::Sender::downgrade),
            queued_bytes: self.queued_bytes.clone(),
            closed: self.closed.clone(),
        }
    }

    /// Becomes true once the connection is over (both tasks ended). Take it before handing
    /// the relay to the engine, to know when to reconnect or clean up.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.finished.clone()
    }

    /// The relay's byte counters.
    pub fn counters(&self) -> Arc<RelayCounters> {
        self.counters.clone()
    }

    fn abort(&self, frame: Option<(WsCloseCode, String)>) {
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(Stop::Abort(frame));
    }
}

impl<S: Transport> Relay for WsRelay<S> {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        let Some(Pending { session, first }) = self.pending.take() else {
            return Err(SyncError::InvalidArgument(
                "the relay was already started".into(),
            ));
        };
        let Some(runtime) = self.runtime.clone() else {
            return Err(SyncError::InvalidArgument(
                "a WebSocket relay must be made inside a tokio runtime".into(),
            ));
        };
        let Some(queued) = self.queued.take() else {
            return Err(SyncError::InvalidArgument(
                "the relay was already started".into(),
            ));
        };
        let Some(queue) = &self.queue else {
            return Err(SyncError::RelayClosed);
        };
        // Weak: the queue still ends when the engine closes the relay.
        let queue_for_reader = queue.downgrade();
        self.inbox = Some(inbox.clone());
        let (sink, stream) = session.ws.split();
        let channel = Arc::new(Mutex::new(session.channel));
        let peer = Arc::new(AtomicU64::new(0));
        if let Some(first) = first {
            if let Message::Hello { capabilities, .. } = &first {
                peer.store(capabilities.0, Ordering::Release);
            }
            inbox.deliver(first);
        }
        let reader_inbox = inbox.clone();
        let budget = Arc::new(Semaphore::new(self.options.inbound_bytes.max(1)));
        let parting = Parting {
            injector: RelayInjector {
                queue: Some(queue_for_reader),
                queued_bytes: self.queued_bytes.clone(),
                closed: self.closed.clone(),
            },
            drain_for: self.options.close_timeout,
        };
        let reader = read(
            stream,
            channel.clone(),
            peer.clone(),
            (inbox, self.layer.clone()),
            self.counters.clone(),
            budget,
            parting,
        );
        let stop = self.stop.clone();
        let closed = self.closed.clone();
        let mut stop_reading = self.stop.subscribe();
        let finished = self.finished_tx.clone();
        let (reader_done_tx, mut reader_done) = watch::channel(false);
        runtime.spawn(async move {
            tokio::select! {
                (frame, reason) = reader => {
                    // The writer learns the close frame before the engine hears of the end
                    // (and closes the relay), so the peer gets this frame, not a normal close.
                    closed.store(true, Ordering::Release);
                    stop.send_replace(Stop::Abort(frame));
                    if let Some(reason) = reason {
                        reader_inbox.closed(reason);
                    }
                }
                () = stopped(&mut stop_reading) => {}
            }
            reader_done_tx.send_replace(true);
        });
        let writer = Writer {
            sink,
            channel,
            peer,
            counters: self.counters.clone(),
            threshold: self.options.compression_threshold,
            queued_bytes: self.queued_bytes.clone(),
        };
        let stop_writing = self.stop.subscribe();
        let stop = self.stop.clone();
        let writer_inbox = self.inbox.clone();
        runtime.spawn(async move {
            let written = writer.run(queued, stop_writing).await;
            if !written && let Some(inbox) = writer_inbox {
                inbox.closed("writing to the peer failed");
            }
            if written {
                // Our close frame is out: keep reading until the peer answers it (or a
                // moment passes). Closing a socket with unread bytes makes the kernel send a
                // reset, which can destroy our last messages before the peer reads them.
                let _ = tokio::time::timeout(CLOSE_DRAIN, reader_done.wait_for(|done| *done)).await;
            }
            // The reader stops too (if it has not already).
            stop.send_replace(Stop::Abort(None));
            finished.send_replace(true);
        });
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SyncError::RelayClosed);
        }
        let messages = match &self.layer {
            None => vec![message],
            Some(layer) => match layer.outbound(message) {
                Ok(messages) => messages,
                Err(reason) => {
                    // Nothing the layer refused may leave (a readable value of a sealed
                    // collection): end the connection.
                    if let Some(inbox) = &self.inbox {
                        inbox.closed(format!("not sent: {reason}"));
                    }
                    self.abort(Some((WsCloseCode::Error, "device error".into())));
                    return Err(SyncError::RelayClosed);
                }
            },
        };
        for message in messages {
            self.queue_one(&message)?;
        }
        Ok(())
    }

    fn close(&mut self) {
        WsRelay::close_now(self);
    }

    fn kind(&self) -> &'static str {
        "websocket"
    }
}

impl<S: Transport> WsRelay<S> {
    /// Queues one message for the writer, or closes the connection when the peer stopped
    /// reading.
    fn queue_one(&mut self, message: &Message) -> Result<()> {
        let Some(queue) = &self.queue else {
            return Err(SyncError::RelayClosed);
        };
        // Encoded here, so the queue is measured in bytes (the writer compresses and seals).
        let outgoing = Outgoing::new(message);
        let len = outgoing.plain.len();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        let full = if queued > 0 && queued.saturating_add(len) > self.options.queue_bytes {
            Some(format!(
                "the peer stopped reading: {queued} bytes were waiting to be sent"
            ))
        } else {
            // Counted before the writer can see the message (it subtracts what it takes).
            self.queued_bytes.fetch_add(len, Ordering::AcqRel);
            let sent = queue.try_send(outgoing);
            if sent.is_err() {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            }
            match sent {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(format!(
                    "the peer stopped reading: {} messages were waiting to be sent",
                    self.options.queue_limit
                )),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(SyncError::RelayClosed),
            }
        };
        match full {
            None => Ok(()),
            Some(reason) => {
                if let Some(inbox) = &self.inbox {
                    inbox.closed(reason.clone());
                }
                self.abort(Some((
                    WsCloseCode::Policy,
                    "too slow: send queue full".into(),
                )));
                Err(SyncError::RelayClosed)
            }
        }
    }

    fn close_now(&mut self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropping the queue lets the writer send what is queued, then close normally.
        self.queue = None;
        if self.pending.take().is_some() {
            self.finished_tx.send_replace(true);
            return;
        }
        if let Some(runtime) = &self.runtime {
            let stop = self.stop.clone();
            let timeout = self.options.close_timeout;
            runtime.spawn(async move {
                tokio::time::sleep(timeout).await;
                stop.send_replace(Stop::Abort(None));
            });
        }
    }
}

impl<S> Drop for WsRelay<S> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.queue = None;
        if self.pending.take().is_some() {
            self.finished_tx.send_replace(true);
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<Stop>) {
    let _ = stop.wait_for(|s| *s != Stop::Running).await;
}

/// How reading ended: the close frame to send the peer, and what to tell the engine (nothing
/// when the engine itself is gone).
type ReadEnd = (Option<(WsCloseCode, String)>, Option<String>);

/// Queues messages to the peer from outside the engine (see [`WsRelay::injector`]).
#[derive(Clone)]
pub struct RelayInjector {
    /// The writer's queue, while the engine has not closed the relay.
    queue: Option<mpsc::WeakSender<Outgoing>>,
    queued_bytes: Arc<AtomicUsize>,
    /// Set once a `Close` is queued: nothing may follow it.
    closed: Arc<AtomicBool>,
}

impl RelayInjector {
    /// Queues `message` after what is queued already; false when it cannot (the relay is
    /// closed, or its queue is full).
    pub fn send(&self, message: &Message) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.push(message)
    }

    fn push(&self, message: &Message) -> bool {
        let Some(queue) = self.queue.as_ref().and_then(mpsc::WeakSender::upgrade) else {
            return false;
        };
        let outgoing = Outgoing::new(message);
        let len = outgoing.plain.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let queued = queue.try_send(outgoing).is_ok();
        if !queued {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        }
        queued
    }
}

/// What the reader needs to answer the peer: a layer's replies, and a sealed `Close` that
/// tells a peer that broke the protocol why.
struct Parting {
    injector: RelayInjector,
    /// How long the reader waits for the peer to answer the `Close`.
    drain_for: Duration,
}

impl Parting {
    /// Queues `close` after what is queued already; false when it cannot (the relay is
    /// closed, or the queue is full).
    fn queue_close(&self, close: &Message) -> bool {
        if self.injector.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.injector.push(close)
    }
}

/// Reads until the connection ends.
async fn read<S: Transport>(
    mut stream: SplitStream<WebSocketStream<S>>,
    channel: Arc<Mutex<SecureChannel>>,
    peer: Arc<AtomicU64>,
    (inbox, layer): (Inbox, Option<Arc<dyn MessageLayer>>),
    counters: Arc<RelayCounters>,
    budget: Arc<Semaphore>,
    parting: Parting,
) -> ReadEnd {
    let limit = budget.available_permits().max(1);
    let mut waiting = Waiting::default();
    loop {
        let next = match waiting.deadline {
            None => stream.next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let reason = format!(
                        "closing the connection: waited {} s for a key: {}",
                        KEY_WAIT.as_secs(),
                        waiting.why
                    );
                    return refuse(&parting, &inbox, CloseCode::GoingAway, reason);
                }
            },
        };
        let data = match next {
            None => return (None, Some("the connection ended".into())),
            Some(Err(e)) => return (None, Some(format!("WebSocket error: {e}"))),
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Text(_))) => {
                return (
                    Some((WsCloseCode::Protocol, "binary messages only".into())),
                    Some("the peer sent a text message".into()),
                );
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let reason = match frame {
                    Some(f) if !f.reason.is_empty() => {
                        format!("the peer closed the WebSocket: {}", f.reason)
                    }
                    _ => "the peer closed the WebSocket".into(),
                };
                return (None, Some(reason));
            }
            Some(Ok(_)) => continue,
        };
        counters
            .payload_bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let opened = channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(&data);
        drop(data);
        // Budget first (the plain length, which decompressing allocates), then decode, then
        // the rest of what the decoded message weighs: while the engine holds `limit` bytes
        // of this peer's messages, nothing more is read (and the peer's writes stall). A
        // message heavier than the whole budget takes all of it, so it is held alone.
        let mut held = match &opened {
            Ok(plain) => take(&budget, Message::plain_len(plain).clamp(1, limit)).await,
            Err(_) => None,
        };
        let decoded = opened.and_then(|plain| Message::decode_weighed(&plain));
        if let Ok((_, weight)) = &decoded {
            let taken = held.as_ref().map_or(0, |p| p.num_permits());
            let more = (*weight).min(limit).saturating_sub(taken);
            if more > 0
                && let Some(permit) = take(&budget, more).await
            {
                match &mut held {
                    Some(held) => held.merge(permit),
                    None => held = Some(permit),
                }
            }
        }
        let weight = decoded.as_ref().map_or(0, |(_, weight)| *weight);
        if let Ok((Message::Hello { capabilities, .. }, _)) = &decoded {
            peer.store(capabilities.0, Ordering::Release);
        }
        let decoded = match (decoded.map(|(message, _)| message), &layer) {
            (Ok(message), Some(layer)) => {
                let handled = layer.inbound(message).and_then(|inbound| {
                    waiting.take(inbound, weight, limit, layer.as_ref(), &parting)
                });
                match handled {
                    Ok(ready) => {
                        // The budget taken for this message goes with the first one out.
                        let mut hold = held.map(Hold::new);
                        for message in ready {
                            if !inbox.deliver_held(message, hold.take()) {
                                return (Some((WsCloseCode::Away, "going away".into())), None);
                            }
                        }
                        continue;
                    }
                    // A value refused (tampered, moved, readable where it must be sealed):
                    // nothing of the message is applied, the peer is told why, and the
                    // connection ends; the cursor stays before it.
                    Err(refused) => {
                        let reason = format!("closing the connection: {refused}");
                        return refuse(&parting, &inbox, CloseCode::ProtocolError, reason);
                    }
                }
            }
            (decoded, _) => decoded,
        };
        match decoded {
            Ok(message) => {
                if !inbox.deliver_held(message, held.map(Hold::new)) {
                    return (Some((WsCloseCode::Away, "going away".into())), None);
                }
            }
            Err(e) => {
                // Decrypt failures (tampering, replay, reordering) and malformed messages
                // end the connection; nothing more from this peer is trusted.
                let reason = format!("closing the connection: {e}");
                let failed = channel
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_failed();
                // A payload that opened but does not decode leaves the channel working: the
                // peer is told why with a sealed Close (the writer then closes the
                // WebSocket), and read on until it answers, so that a reset cannot destroy
                // the Close before it is read.
                if !failed && parting.queue_close(&Message::close(e.close_code(), e.to_string())) {
                    inbox.closed(reason);
                    let _ = tokio::time::timeout(parting.drain_for, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    })
                    .await;
                    return (Some((WsCloseCode::Protocol, "protocol error".into())), None);
                }
                return (
                    Some((WsCloseCode::Protocol, "protocol error".into())),
                    Some(reason),
                );
            }
        }
    }
}

/// How long a reader keeps messages sealed under a key it lacks, waiting for the key.
const KEY_WAIT: Duration = Duration::from_secs(10);

/// Messages a reader keeps, in order, because the first of them is sealed under a key this
/// side does not hold yet: everything after it waits too, so that the engine sees the
/// peer's messages in order. Without their budget (the reader must go on reading to get
/// the key), so bounded by weight instead.
#[derive(Default)]
struct Waiting {
    kept: std::collections::VecDeque<Message>,
    weight: usize,
    /// Why the first one waits (the key it needs).
    why: String,
    deadline: Option<tokio::time::Instant>,
}

impl Waiting {
    /// Takes what the layer made of one message; returns what can go to the engine now.
    fn take(
        &mut self,
        inbound: Inbound,
        weight: usize,
        limit: usize,
        layer: &dyn MessageLayer,
        parting: &Parting,
    ) -> Result<Vec<Message>, String> {
        match inbound {
            Inbound::Deliver(message) if self.kept.is_empty() => Ok(vec![message]),
            Inbound::Deliver(message) => {
                self.keep(message, weight, limit)?;
                Ok(Vec::new())
            }
            Inbound::Later(message, why) => {
                if self.kept.is_empty() {
                    self.why = why;
                    self.deadline = Some(tokio::time::Instant::now() + KEY_WAIT);
                }
                self.keep(message, weight, limit)?;
                Ok(Vec::new())
            }
            Inbound::Consumed(replies) => {
                for reply in &replies {
                    parting.injector.send(reply);
                }
                // Keys may have come: what waited goes on, up to the next that cannot.
                let mut ready = Vec::new();
                while let Some(message) = self.kept.pop_front() {
                    match layer.inbound(message)? {
                        Inbound::Deliver(message) => ready.push(message),
                        Inbound::Later(message, why) => {
                            self.kept.push_front(message);
                            self.why = why;
                            return Ok(ready);
                        }
                        Inbound::Consumed(_) => {}
                    }
                }
                self.weight = 0;
                self.deadline = None;
                Ok(ready)
            }
        }
    }

    fn keep(&mut self, message: Message, weight: usize, limit: usize) -> Result<(), String> {
        self.weight = self.weight.saturating_add(weight);
        if self.weight > limit {
            return Err(format!(
                "more than {limit} bytes of messages waited for a key: {}",
                self.why
            ));
        }
        self.kept.push_back(message);
        Ok(())
    }
}

/// Ends reading: tells the peer why with a sealed `Close` (and the engine), as for a
/// message that does not decode.
fn refuse(parting: &Parting, inbox: &Inbox, code: CloseCode, reason: String) -> ReadEnd {
    let frame = Some((WsCloseCode::Protocol, "refused a message".into()));
    if parting.queue_close(&Message::close(
        code,
        reason
            .trim_start_matches("closing the connection: ")
            .to_owned(),
    )) {
        inbox.closed(reason);
        return (frame, None);
    }
    (frame, Some(reason))
}

/// `n` bytes of a reader's budget, once available (`None` if the budget was closed).
async fn take(budget: &Arc<Semaphore>, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    budget.clone().acquire_many_owned(n).await.ok()
}

struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, WsMessage>,
    channel: Arc<Mutex<SecureChannel>>,
    peer: Arc<AtomicU64>,
    counters: Arc<RelayCounters>,
    threshold: usize,
    queued_bytes: Arc<AtomicUsize>,
}

/// How the writer's queue ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Written {
    /// The queue closed (the engine closed the relay) and everything in it was written.
    All,
    /// A `Close` with this code was written: nothing may follow it.
    Close(CloseCode),
    /// Writing failed.
    Failed,
}

impl<S: Transport> Writer<S> {
    /// Writes until the queue closes, a `Close` is written or the relay stops; false when
    /// writing failed.
    async fn run(
        mut self,
        mut queued: mpsc::Receiver<Outgoing>,
        mut stop: watch::Receiver<Stop>,
    ) -> bool {
        let outcome = tokio::select! {
            outcome = self.write_all(&mut queued) => Some(outcome),
            () = stopped(&mut stop) => None,
        };
        if outcome == Some(Written::Failed) {
            // Sealing fails once the reader found a bad payload (the channel is shared and
            // failed for good); the reader is about to say which close frame to send.
            let _ = tokio::time::timeout(Duration::from_millis(200), stopped(&mut stop)).await;
        }
        let frame = match (outcome, stop.borrow().clone()) {
            // After a sealed Close, the close frame of its code (docs/protocol.md).
            (Some(Written::Close(code)), _) => Some((
                WsCloseCode::from(code.websocket_close_code()),
                code.to_string(),
            )),
            // The reader (or a full queue) asked for a close frame: it says why.
            (_, Stop::Abort(Some(frame))) => Some(frame),
            // The engine closed the relay and everything queued was written.
            (Some(Written::All), _) => Some((WsCloseCode::Normal, String::new())),
            _ => None,
        };
        if let Some((code, reason)) = frame {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.sink.send(WsMessage::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))),
            )
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        outcome != Some(Written::Failed)
    }

    /// Writes until the queue is closed, a `Close` is written, or writing fails.
    async fn write_all(&mut self, queued: &mut mpsc::Receiver<Outgoing>) -> Written {
        while let Some(message) = queued.recv().await {
            let mut next = Some(message);
            while let Some(message) = next.take() {
                let close = message.close;
                if !self.feed(message.plain).await {
                    return Written::Failed;
                }
                if let Some(code) = close {
                    return match self.sink.flush().await {
                        Ok(()) => Written::Close(code),
                        Err(_) => Written::Failed,
                    };
                }
                next = queued.try_recv().ok();
            }
            if self.sink.flush().await.is_err() {
                return Written::Failed;
            }
        }
        Written::All
    }

    /// Compresses (when worth it), seals and writes one encoded message.
    async fn feed(&mut self, plain: Vec<u8>) -> bool {
        self.queued_bytes.fetch_sub(plain.len(), Ordering::AcqRel);
        let peer = Capabilities(self.peer.load(Ordering::Acquire));
        let plain = Message::compress_encoded(plain, peer, self.threshold);
        if plain.get(2) == Some(&0x7f) {
            self.counters
                .compressed_messages
                .fetch_add(1, Ordering::Relaxed);
        }
        let sealed = self
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seal(&plain);
        let Ok(sealed) = sealed else {
            return false;
        };
        self.counters
            .payload_bytes_sent
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        self.sink
            .feed(WsMessage::Binary(sealed.into()))
            .await
            .is_ok()
    }
}
