//! [`Relay`]: the only thing the sync engine knows about transport.

use std::collections::VecDeque;
use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

use blazedb_protocol::Message;

use crate::engine::Event;
use crate::error::{Result, SyncError};

/// Identifies one connection of one [`SyncEngine`](crate::SyncEngine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One connection to one peer, as the sync engine sees it: messages go out through
/// [`Relay::send`], and whatever the peer says comes back through the [`Inbox`] handed to
/// [`Relay::start`].
///
/// Both directions are non-blocking: `send` queues (a relay that cannot keep up closes the
/// connection rather than block the engine), and a relay delivers incoming messages from its
/// own thread or task through [`Inbox::deliver`]. That is what lets a thread-based engine use
/// an async transport (a WebSocket on tokio) as easily as a socket or an in-memory channel.
pub trait Relay: Send + 'static {
    /// Starts delivering the peer's messages to `inbox`. Called once, before any `send`.
    fn start(&mut self, inbox: Inbox) -> Result<()>;
    /// Queues one message for the peer. An error means the connection is gone.
    fn send(&mut self, message: Message) -> Result<()>;
    /// Closes the connection (idempotent). The peer's side sees it end.
    fn close(&mut self);
    /// What kind of transport this is, for status and graphs ("in-memory", "unix", …).
    fn kind(&self) -> &'static str;
}

/// Where a relay delivers what arrives from its peer. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Inbox {
    pub(crate) connection: ConnectionId,
    pub(crate) events: Sender<Event>,
}

/// Memory a relay lent to one received message: dropped (and so given back to the relay's
/// inbound budget) once the engine has applied the message or let it go. A relay that reads
/// from the network takes budget before decoding and stops reading while it has none, so a
/// peer cannot make the engine hold more of its messages than the budget (backpressure).
pub(crate) struct Hold(#[allow(dead_code)] Box<dyn Send>);

impl Hold {
    #[cfg(feature = "remote")]
    pub(crate) fn new(inner: impl Send + 'static) -> Hold {
        Hold(Box::new(inner))
    }
}

impl Inbox {
    /// Hands one message from the peer to the engine. Returns false once the engine is gone
    /// (the relay should then stop reading).
    pub fn deliver(&self, message: Message) -> bool {
        self.deliver_held(message, None)
    }

    /// Like [`Inbox::deliver`], with the budget the message holds (if any) until the engine
    /// is done with it.
    pub(crate) fn deliver_held(&self, message: Message, hold: Option<Hold>) -> bool {
        self.events
            .send(Event::Message {
                connection: self.connection,
                message,
                hold,
            })
            .is_ok()
    }

    /// Tells the engine the connection has ended (the peer closed it, or it broke).
    pub fn closed(&self, reason: impl Into<String>) {
        let _ = self.events.send(Event::Closed {
            connection: self.connection,
            reason: reason.into(),
        });
    }

    /// The connection this inbox belongs to.
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("connection", &self.connection)
            .finish()
    }
}

/// State shared by the two ends of an [`InMemoryRelay`] pair: where each end delivers, and
/// what was sent before the other end started.
#[derive(Default)]
struct Wire {
    /// Indexed by end (0 or 1): the inbox of that end once started.
    inbox: [Option<Inbox>; 2],
    /// Messages sent to an end before it started.
    early: [VecDeque<Message>; 2],
    closed: bool,
}

/// A relay between two engines in one process: a message goes straight into the peer
/// engine's inbox, with no encoding and no extra thread. Made in pairs by
/// [`InMemoryRelay::pair`].
pub struct InMemoryRelay {
    wire: Arc<Mutex<Wire>>,
    end: usize,
}

impl InMemoryRelay {
    /// Two connected ends: what one sends, the other receives.
    pub fn pair() -> (InMemoryRelay, InMemoryRelay) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        (
            InMemoryRelay {
                wire: wire.clone(),
                end: 0,
            },
            InMemoryRelay { wire, end: 1 },
        )
    }

    fn other(&self) -> usize {
        1 - self.end
    }
}

impl Relay for InMemoryRelay {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        let end = self.end;
        if let Some(early) = wire.early.get_mut(end) {
            for message in early.drain(..) {
                inbox.deliver(message);
            }
        }
        if wire.closed {
            inbox.closed("the other end closed the connection");
        }
        if let Some(slot) = wire.inbox.get_mut(end) {
            *slot = Some(inbox);
        }
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<()> {
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        if wire.closed {
            return Err(SyncError::RelayClosed);
        }
        let other = self.other();
        match wire.inbox.get(other) {
            Some(Some(inbox)) => {
                if !inbox.deliver(message) {
                    return Err(SyncError::RelayClosed);
                }
            }
            _ => {
                if let Some(early) = wire.early.get_mut(other) {
                    early.push_back(message);
                }
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        if wire.closed {
            return;
        }
        wire.closed = true;
        if let Some(Some(inbox)) = wire.inbox.get(self.other()) {
            inbox.closed("the other end closed the connection");
        }
    }

    fn kind(&self) -> &'static str {
        "in-memory"
    }
}

impl Drop for InMemoryRelay {
    fn drop(&mut self) {
        self.close();
    }
}
