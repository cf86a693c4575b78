//! A relay whose far end is the test itself, shared by the engine tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blazedb_protocol::Message;
use blazedb_sync::{Inbox, Relay, Result};

/// A relay whose far end is the test itself: it records what the engine sends and lets the
/// test speak as the peer.
#[derive(Clone, Default)]
pub struct Probe {
    pub sent: Arc<Mutex<Vec<Message>>>,
    inbox: Arc<Mutex<Option<Inbox>>>,
}

impl Relay for Probe {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        *self.inbox.lock().unwrap() = Some(inbox);
        Ok(())
    }
    fn send(&mut self, message: Message) -> Result<()> {
        self.sent.lock().unwrap().push(message);
        Ok(())
    }
    fn close(&mut self) {}
    fn kind(&self) -> &'static str {
        "probe"
    }
}

impl Probe {
    pub fn say(&self, m: Message) {
        let inbox = loop {
            if let Some(i) = self.inbox.lock().unwrap().clone() {
                break i;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(inbox.deliver(m));
    }

    pub fn wait_for(&self, what: impl Fn(&Message) -> bool) -> Message {
        for _ in 0..5000 {
            if let Some(m) = self.sent.lock().unwrap().iter().find(|m| what(m)) {
                return m.clone();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the engine never sent the expected message");
    }

    /// How many messages the engine sent that match.
    pub fn count(&self, what: impl Fn(&Message) -> bool) -> usize {
        self.sent.lock().unwrap().iter().filter(|m| what(m)).count()
    }

    /// Waits until `n` messages match (panics after about 5 s).
    pub fn wait_for_count(&self, n: usize, what: impl Fn(&Message) -> bool) {
        for _ in 0..5000 {
            if self.count(&what) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "the engine sent {} matching messages, not {n}",
            self.count(&what)
        );
    }
}
