//! The key desk of a hosted database (docs/e2e.md, "Keys"): where the scope keys of its
//! end-to-end collections, wrapped to devices, are kept and passed on. The server cannot
//! open a wrapped key. It decides only who should get one, and asks a device that holds
//! the key to wrap it for them:
//!
//! - **A new key** (a device wrote first in a scope) arrives wrapped to its maker only; the
//!   desk asks the maker to wrap it for every other device the rules let read the scope.
//! - **A new device** gets, at the start of each session, every key wrapped to it; for a
//!   key it lacks, the desk asks a member online (if none is, it asks when one connects).
//! - **A device that lost access** (revoked, or its user left the team) makes the desk ask
//!   a remaining member for the scope's next key (a rotation): wrapped to the remaining
//!   devices, with the previous keys sealed under it. From then on writes under an older
//!   key are refused ([`KeyCheck`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use blazedb_access::{CollectionMode, KeyCheck};
use blazedb_core::{Record, Uuid};
use blazedb_protocol::{KeyEnvelope, Message, PreviousKey};
use blazedb_sync::e2e::{Inbound, MessageLayer, fields_of_scope};
use blazedb_sync::remote::RelayInjector;

use crate::error::MetaError;
use crate::meta::MetaStore;

/// A scope of an end-to-end collection: its name and the scope's name.
type ScopeName = (String, String);

pub(crate) struct KeyDesk {
    meta: Arc<MetaStore>,
    database: String,
    state: Mutex<DeskState>,
    /// The newest version of the server's store a plan was made for.
    planned_version: AtomicU64,
}

#[derive(Default)]
struct DeskState {
    envelopes: Vec<KeyEnvelope>,
    previous: Vec<PreviousKey>,
    /// Every key published: id → scope and epoch.
    keys: HashMap<[u8; 4], (ScopeName, u32)>,
    /// Devices connected now, by static public key: their connection's token and how to
    /// send them a message.
    online: HashMap<Vec<u8>, (u64, RelayInjector)>,
    next_token: u64,
    /// Tasks sent to devices connected now (device, the task's message), so that the same
    /// is not asked twice of one connection.
    asked: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for KeyDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDesk")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl KeyDesk {
    /// The desk of `database`, with the keys its store keeps.
    pub fn open(meta: Arc<MetaStore>, database: &str) -> Result<KeyDesk, MetaError> {
        let (envelopes, previous) = meta.e2e_keys(database)?;
        let mut state = DeskState::default();
        for envelope in &envelopes {
            state.keys.insert(
                envelope.key,
                (
                    (envelope.collection.clone(), envelope.scope.clone()),
                    envelope.epoch,
                ),
            );
        }
        state.envelopes = envelopes;
        state.previous = previous;
        Ok(KeyDesk {
            meta,
            database: database.to_owned(),
            state: Mutex::new(state),
            planned_version: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DeskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `device` receives at the start of a session: every key wrapped to it, and the
    /// older keys of those scopes sealed under newer ones. `None` when there is none.
    pub fn keys_for(&self, device: &[u8]) -> Option<Message> {
        let state = self.lock();
        let keys: Vec<KeyEnvelope> = state
            .envelopes
            .iter()
            .filter(|e| e.recipient == device)
            .cloned()
            .collect();
        (!keys.is_empty()).then(|| Message::Keys {
            previous: previous_of(&state.previous, &keys),
            keys,
        })
    }

    /// Registers the connection of `device`, which receives keys and tasks through
    /// `injector` until [`KeyDesk::detach`] with the returned token.
    pub fn attach(&self, device: &[u8], injector: RelayInjector) -> u64 {
        let mut state = self.lock();
        state.next_token += 1;
        let token = state.next_token;
        state.online.insert(device.to_vec(), (token, injector));
        state.asked.retain(|(d, _)| d != device);
        token
    }

    /// True for the first caller with store version `version` (or a newer one): what a
    /// change of the store needs planning once, not once per connected device.
    pub fn first_to_see(&self, version: u64) -> bool {
        self.planned_version.fetch_max(version, Ordering::AcqRel) < version
    }

    /// The connection `token` of `device` ended.
    pub fn detach(&self, device: &[u8], token: u64) {
        let mut state = self.lock();
        if state.online.get(device).is_some_and(|(t, _)| *t == token) {
            state.online.remove(device);
            state.asked.retain(|(d, _)| d != device);
        }
    }

    /// Keys `from` publishes: kept, passed to their recipients that are online, and the
    /// work they make (wrapping for devices that lack them) handed out.
    pub fn publish(
        &self,
        from: &[u8],
        keys: Vec<KeyEnvelope>,
        previous: Vec<PreviousKey>,
    ) -> Result<(), String> {
        let rules = self
            .meta
            .current_access_rules(&self.database)
            .map_err(|e| e.to_string())?;
        // Keys of a collection the server does not hold end to end (a device that seals it
        // on its own, say) are not kept: there is nothing to hand out.
        let e2e = |collection: &str| {
            rules
                .as_ref()
                .is_some_and(|r| r.mode(collection) == CollectionMode::E2e)
        };
        let keys: Vec<KeyEnvelope> = keys.into_iter().filter(|k| e2e(&k.collection)).collect();
        let previous: Vec<PreviousKey> = previous
            .into_iter()
            .filter(|p| e2e(&p.collection))
            .collect();
        {
            let state = self.lock();
            for key in &keys {
                let label = ((key.collection.clone(), key.scope.clone()), key.epoch);
                if state
                    .keys
                    .get(&key.key)
                    .is_some_and(|known| *known != label)
                {
                    return Err(format!(
                        "key {} is published under another scope or epoch than before",
                        hex(&key.key)
                    ));
                }
            }
        }
        // Only a device that may read a scope hands out its keys. One that made a key for a
        // scope it may not read (it wrote there) sees its write refused by the rules; its
        // key is not kept, and no device is asked to wrap it.
        let scopes: BTreeSet<ScopeName> = keys
            .iter()
            .map(|k| (k.collection.clone(), k.scope.clone()))
            .collect();
        let mut allowed = BTreeSet::new();
        for (collection, scope) in scopes {
            if self.authorised(&collection, &scope)?.contains(from) {
                allowed.insert((collection, scope));
            }
        }
        let in_scope = |collection: &str, scope: &str| {
            allowed.contains(&(collection.to_owned(), scope.to_owned()))
        };
        let keys: Vec<KeyEnvelope> = keys
            .into_iter()
            .filter(|k| in_scope(&k.collection, &k.scope))
            .collect();
        let previous: Vec<PreviousKey> = previous
            .into_iter()
            .filter(|p| in_scope(&p.collection, &p.scope))
            .collect();
        if keys.is_empty() && previous.is_empty() {
            return Ok(());
        }
        self.meta
            .store_e2e_keys(&self.database, &keys, &previous)
            .map_err(|e| e.to_string())?;
        {
            let mut state = self.lock();
            for key in &keys {
                state.keys.insert(
                    key.key,
                    ((key.collection.clone(), key.scope.clone()), key.epoch),
                );
                if !state.envelopes.contains(key) {
                    state.envelopes.push(key.clone());
                }
            }
            for p in &previous {
                if !state.previous.contains(p) {
                    state.previous.push(p.clone());
                }
            }
            // Recipients online get theirs now.
            let mut by_recipient: HashMap<&[u8], Vec<KeyEnvelope>> = HashMap::new();
            for key in keys.iter().filter(|k| k.recipient != from) {
                by_recipient
                    .entry(&key.recipient)
                    .or_default()
                    .push(key.clone());
            }
            for (recipient, theirs) in by_recipient {
                if let Some((_, injector)) = state.online.get(recipient) {
                    injector.send(&Message::Keys {
                        previous: previous_of(&state.previous, &theirs),
                        keys: theirs,
                    });
                }
            }
        }
        self.plan()
    }

    /// Hands out what the keys need: a rotation for each scope a device holding its key may
    /// no longer read, else the current keys wrapped for the devices that may read the
    /// scope and lack them. Each task goes to a device online that holds the key (none
    /// online: it waits until one connects).
    pub fn plan(&self) -> Result<(), String> {
        let Some(rules) = self
            .meta
            .current_access_rules(&self.database)
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let scopes: BTreeSet<ScopeName> =
            self.lock().keys.values().map(|(s, _)| s.clone()).collect();
        for (collection, scope) in scopes {
            if rules.mode(&collection) != CollectionMode::E2e {
                continue;
            }
            let authorised = self.authorised(&collection, &scope)?;
            let mut state = self.lock();
            let epochs = state
                .keys
                .iter()
                .filter(|(_, (s, _))| s.0 == collection && s.1 == scope);
            let newest = epochs.clone().map(|(_, (_, e))| *e).max().unwrap_or(0);
            let current: Vec<[u8; 4]> = epochs
                .filter(|(_, (_, e))| *e == newest)
                .map(|(k, _)| *k)
                .collect();
            let holders = |state: &DeskState, key: &[u8; 4]| -> HashSet<Vec<u8>> {
                state
                    .envelopes
                    .iter()
                    .filter(|e| e.key == *key)
                    .map(|e| e.recipient.clone())
                    .collect()
            };
            let holding: HashSet<Vec<u8>> =
                current.iter().flat_map(|k| holders(&state, k)).collect();
            let recipients: Vec<Vec<u8>> = authorised.iter().cloned().collect();
            let online_holder = |state: &DeskState, among: &HashSet<Vec<u8>>| {
                among
                    .iter()
                    .filter(|d| authorised.contains(*d) && state.online.contains_key(*d))
                    .min()
                    .cloned()
            };
            if holding.iter().any(|d| !authorised.contains(d)) {
                // A holder lost access: the scope gets its next key.
                if let Some(device) = online_holder(&state, &holding) {
                    let task = Message::KeyTask {
                        collection: collection.clone(),
                        scope: scope.clone(),
                        epoch: newest.saturating_add(1),
                        key: None,
                        recipients: recipients.clone(),
                    };
                    ask(&mut state, &device, &task);
                }
                continue;
            }
            for key in &current {
                let holders = holders(&state, key);
                let missing: Vec<Vec<u8>> = recipients
                    .iter()
                    .filter(|d| !holders.contains(*d))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                if let Some(device) = online_holder(&state, &holders) {
                    let task = Message::KeyTask {
                        collection: collection.clone(),
                        scope: scope.clone(),
                        epoch: newest,
                        key: Some(*key),
                        recipients: missing,
                    };
                    ask(&mut state, &device, &task);
                }
            }
        }
        Ok(())
    }

    /// The static public keys of the devices (not revoked) whose rules let them read the
    /// records of `scope` in `collection`.
    fn authorised(&self, collection: &str, scope: &str) -> Result<BTreeSet<Vec<u8>>, String> {
        let fail = |e: MetaError| e.to_string();
        let rules = self
            .meta
            .current_access_rules(&self.database)
            .map_err(fail)?;
        let routing: BTreeSet<String> = rules
            .as_ref()
            .and_then(|r| r.settings(collection))
            .map(|s| s.routing_fields().map(str::to_owned).collect())
            .unwrap_or_default();
        let Some(fields) = fields_of_scope(&routing, scope) else {
            return Ok(BTreeSet::new());
        };
        let record = Record {
            id: Uuid::nil(),
            fields,
        };
        let mut authorised = BTreeSet::new();
        for device in self.meta.list_devices().map_err(fail)? {
            if device.revoked {
                continue;
            }
            let access = self
                .meta
                .device_access(&self.database, &device.user, &device.fingerprint())
                .map_err(fail)?;
            if access.is_none_or(|(read, _)| read.may_read_record(collection, &record)) {
                authorised.insert(device.key);
            }
        }
        Ok(authorised)
    }
}

/// Sends `task` to `device` unless this connection was asked the same already.
fn ask(state: &mut DeskState, device: &[u8], task: &Message) {
    let entry = (device.to_vec(), task.encode());
    if state.asked.contains(&entry) {
        return;
    }
    if let Some((_, injector)) = state.online.get(device)
        && injector.send(task)
    {
        state.asked.insert(entry);
    }
}

/// The older keys of the scopes of `keys`.
fn previous_of(previous: &[PreviousKey], keys: &[KeyEnvelope]) -> Vec<PreviousKey> {
    let scopes: HashSet<(&str, &str)> = keys
        .iter()
        .map(|k| (k.collection.as_str(), k.scope.as_str()))
        .collect();
    previous
        .iter()
        .filter(|p| scopes.contains(&(p.collection.as_str(), p.scope.as_str())))
        .cloned()
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyCheck for KeyDesk {
    fn check(&self, collection: &str, record_scope: &str, key: [u8; 4]) -> Result<(), String> {
        let state = self.lock();
        let Some(((c, scope), epoch)) = state.keys.get(&key) else {
            return Err(format!(
                "sealed under key {}, which no device published to this server",
                hex(&key)
            ));
        };
        if c != collection {
            return Err(format!(
                "sealed under key {} of another collection ({c:?})",
                hex(&key)
            ));
        }
        if scope != record_scope {
            return Err(format!(
                "sealed under key {} of scope {scope:?}, but the record is in scope \
                 {record_scope:?}",
                hex(&key)
            ));
        }
        let newest = state
            .keys
            .values()
            .filter(|((kc, ks), _)| kc == collection && ks == scope)
            .map(|(_, e)| *e)
            .max()
            .unwrap_or(0);
        if *epoch < newest {
            return Err(format!(
                "sealed under key {} of epoch {epoch}; the keys of scope {scope:?} were rotated \
                 to epoch {newest}",
                hex(&key)
            ));
        }
        Ok(())
    }
}

/// The layer of one device's connection: its `Keys` go to the desk; what the desk sends
/// it goes through the connection's injector; everything else passes.
pub(crate) struct DeviceDesk {
    pub desk: Arc<KeyDesk>,
    /// The device's static public key.
    pub device: Vec<u8>,
}

impl MessageLayer for DeviceDesk {
    fn outbound(&self, message: Message) -> Result<Vec<Message>, String> {
        Ok(vec![message])
    }

    fn inbound(&self, message: Message) -> Result<Inbound, String> {
        match message {
            Message::Keys { keys, previous } => {
                self.desk.publish(&self.device, keys, previous)?;
                Ok(Inbound::Consumed(Vec::new()))
            }
            Message::KeyTask { .. } | Message::Collections { .. } => Err(format!(
                "a device may not send {} (a server's message)",
                message.type_name()
            )),
            other => Ok(Inbound::Deliver(other)),
        }
    }
}
