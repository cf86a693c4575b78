//! End-to-end collections on a device (docs/e2e.md): what leaves for a server is sealed,
//! what comes from it is opened, and the keys and the modes a device learned are kept in
//! its own (encrypted) file.
//!
//! [`DeviceSealing`] works on whole [`Message`]s, bytes in and bytes out apart from reading
//! the device's own records (the routing fields of a record an update does not carry) and
//! saving what it learns. A WebSocket relay runs it on every message it sends and receives,
//! so the sync engine never sees a sealed value and the server never sees a readable one.
//!
//! - **Sealed collections.** The server lists them in [`Message::Collections`] before its
//!   `Hello`; an application may also declare them itself
//!   ([`crate::remote::RemoteOptions::sealed`]). Either way the device remembers, and from
//!   then on never sends a readable value of the collection, even to a server that later
//!   says otherwise.
//! - **Scope.** The values of a record's routing fields name its scope (a team, say). Each
//!   scope has its own keys; a collection without routing fields has one scope, `""`.
//! - **Keys.** A [`Keyring`] in the file's local settings. A device that writes to a scope
//!   it has no key for makes the scope's first key (epoch 1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use blazedb_core::{Database, Fields, Operation, RecordState, SnapshotRecord, Uuid, Value};
use blazedb_e2e::{
    FieldSlot, KeyKind, KeyLabel, SealedValue, WrappedKey, open_previous_key, open_value,
    seal_previous_key, seal_value, unwrap_key, wrap_key,
};
use blazedb_format::{NodeId, Stamp, decode_value, encode_value};
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_protocol::{CollectionInfo, KeyEnvelope, Message, PreviousKey};
use zeroize::Zeroizing;

use crate::error::Result;

pub use blazedb_e2e::{KeyId, ScopeKey, fields_of_scope, scope_of};

/// What a connection's message layer made of a message from the peer.
#[derive(Debug)]
pub enum Inbound {
    /// Hand this to the engine.
    Deliver(Message),
    /// The layer's own message (modes, keys): nothing for the engine; send the peer these
    /// replies.
    Consumed(Vec<Message>),
    /// Not yet: it is sealed under a key this side does not hold (the reason says which).
    /// Keep it, and everything after it, until a consumed message brings keys.
    Later(Message, String),
}

/// A layer between a connection and the sync engine: what it sends passes through
/// [`MessageLayer::outbound`], what it receives through [`MessageLayer::inbound`]. A
/// device's end-to-end sealing is one ([`DeviceSealing`]); a server's key desk another.
/// An error ends the connection, with the reason told to the peer.
pub trait MessageLayer: Send + Sync {
    /// What to send for `message` from the engine, in order.
    fn outbound(&self, message: Message) -> std::result::Result<Vec<Message>, String>;
    /// What to do with `message` from the peer.
    fn inbound(&self, message: Message) -> std::result::Result<Inbound, String>;
}

/// Prefix of the local settings that hold scope keys.
const KEY_SETTING_PREFIX: &str = "e2e/key/";
/// Prefix of the local settings that remember sealed collections.
const SEALED_SETTING_PREFIX: &str = "e2e/sealed/";

/// One scope key a device holds, with its label.
#[derive(Clone)]
pub struct HeldKey {
    pub database: String,
    pub collection: String,
    pub scope: String,
    pub epoch: u32,
    pub key: ScopeKey,
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldKey")
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("scope", &self.scope)
            .field("epoch", &self.epoch)
            .field("id", &self.key.id())
            .finish()
    }
}

impl HeldKey {
    fn label(&self) -> KeyLabel<'_> {
        KeyLabel {
            database: &self.database,
            collection: &self.collection,
            scope: &self.scope,
            epoch: self.epoch,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let map: BTreeMap<String, Value> = [
            ("database".to_owned(), Value::from(self.database.as_str())),
            (
                "collection".to_owned(),
                Value::from(self.collection.as_str()),
            ),
            ("scope".to_owned(), Value::from(self.scope.as_str())),
            ("epoch".to_owned(), Value::Int(i64::from(self.epoch))),
            ("key".to_owned(), Value::Bytes(self.key.as_bytes().to_vec())),
        ]
        .into();
        encode_value(&Value::Map(map))
    }

    fn decode(bytes: &[u8]) -> Option<HeldKey> {
        let Ok(Value::Map(map)) = decode_value(bytes) else {
            return None;
        };
        let text = |name: &str| match map.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let epoch = match map.get("epoch") {
            Some(Value::Int(e)) => u32::try_from(*e).ok()?,
            _ => return None,
        };
        let key = match map.get("key") {
            Some(Value::Bytes(b)) => ScopeKey::from_bytes(b).ok()?,
            _ => return None,
        };
        Some(HeldKey {
            database: text("database")?,
            collection: text("collection")?,
            scope: text("scope")?,
            epoch,
            key,
        })
    }
}

/// The scope keys a device holds, kept in its file's local settings (encrypted with the
/// file, never synced).
#[derive(Clone)]
pub struct Keyring {
    db: Database,
}

impl Keyring {
    pub fn new(db: &Database) -> Keyring {
        Keyring { db: db.clone() }
    }

    /// Every key held.
    pub fn keys(&self) -> Result<Vec<HeldKey>> {
        Ok(self
            .db
            .replication()
            .local_settings_with_prefix(KEY_SETTING_PREFIX)?
            .into_iter()
            .filter_map(|(_, bytes)| HeldKey::decode(&bytes))
            .collect())
    }

    /// Keeps `key` (idempotent). Returns its id.
    pub fn add(&self, key: &HeldKey) -> Result<KeyId> {
        let id = key.key.id();
        self.db
            .replication()
            .set_local_setting(&format!("{KEY_SETTING_PREFIX}{id}"), Some(&key.encode()))?;
        Ok(id)
    }
}

/// Why a message could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealingError {
    /// The server sent a value this device refuses: not sealed in a sealed collection, or
    /// sealed but changed, moved or replayed (a server that tampers with what it stores).
    #[error("the server sent a value of {collection}/{record} field {field:?} that {reason}")]
    Refused {
        collection: String,
        record: Uuid,
        field: String,
        reason: String,
    },
    /// A value sealed under a key this device does not hold (yet).
    #[error(
        "a value of {collection}/{record} field {field:?} is sealed under key {key}, which this \
         device does not hold"
    )]
    MissingKey {
        collection: String,
        record: Uuid,
        field: String,
        key: KeyId,
    },
    /// Sealing failed on this device (its storage, or its random number generator).
    #[error("sealing failed on this device: {0}")]
    Local(String),
}

struct State {
    /// Sealed collections and their routing fields.
    sealed: BTreeMap<String, BTreeSet<String>>,
    keys: HashMap<KeyId, HeldKey>,
    /// Keys made here and not yet published to the server.
    unpublished: Vec<KeyEnvelope>,
    /// This device's node id, from its `Hello`.
    node: Option<NodeId>,
}

/// The device's static key pair, as HPKE uses it to receive wrapped keys.
struct Identity {
    kind: KeyKind,
    private: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
}

/// A device's end-to-end layer for one database of one server: see the module docs.
pub struct DeviceSealing {
    db: Database,
    /// The database's name on the server: every key and seal is bound to it.
    database: String,
    keyring: Keyring,
    state: Mutex<State>,
    identity: Option<Identity>,
}

impl DeviceSealing {
    /// The layer for `database` on the server, with what `db` learned before and the
    /// collections the application declares sealed (`declared`: name → routing fields).
    pub fn new(
        db: &Database,
        database: &str,
        declared: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<DeviceSealing> {
        let keyring = Keyring::new(db);
        let keys = keyring
            .keys()?
            .into_iter()
            .filter(|k| k.database == database)
            .map(|k| (k.key.id(), k))
            .collect();
        let sealing = DeviceSealing {
            db: db.clone(),
            database: database.to_owned(),
            keyring,
            state: Mutex::new(State {
                sealed: BTreeMap::new(),
                keys,
                unpublished: Vec::new(),
                node: None,
            }),
            identity: None,
        };
        let prefix = sealing.sealed_prefix();
        let mut known = BTreeMap::new();
        for (name, bytes) in db.replication().local_settings_with_prefix(&prefix)? {
            let Some(collection) = name.strip_prefix(&prefix) else {
                continue;
            };
            let fields = match decode_value(&bytes) {
                Ok(Value::Array(fields)) => fields
                    .into_iter()
                    .filter_map(|f| match f {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect(),
                _ => BTreeSet::new(),
            };
            known.insert(collection.to_owned(), fields);
        }
        sealing.lock().sealed = known;
        for (collection, fields) in declared {
            sealing.learn(collection, fields)?;
        }
        Ok(sealing)
    }

    /// The layer of a device whose static key pair (its Noise key with the server) is
    /// `keys`: it receives wrapped keys with it, and publishes the keys it makes.
    pub fn with_identity(mut self, keys: &StaticKeys) -> DeviceSealing {
        self.identity = Some(Identity {
            kind: if keys.suite() == Suite::X25519AesGcmSha256 {
                KeyKind::X25519
            } else {
                KeyKind::P256
            },
            private: Zeroizing::new(keys.private().to_vec()),
            public: keys.public().to_vec(),
        });
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sealed_prefix(&self) -> String {
        format!("{SEALED_SETTING_PREFIX}{}/", self.database)
    }

    /// The sealed collections known, with their routing fields.
    pub fn sealed_collections(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.lock().sealed.clone()
    }

    /// The layer's answer to `message` from the server, as [`MessageLayer::inbound`].
    fn inbound_message(&self, message: Message) -> Result<Inbound, SealingError> {
        match message {
            Message::Collections { collections } => {
                self.learn_all(&collections)
                    .map_err(|e| SealingError::Local(e.to_string()))?;
                Ok(Inbound::Consumed(Vec::new()))
            }
            Message::Keys { keys, previous } => {
                self.accept_keys(&keys, &previous)?;
                Ok(Inbound::Consumed(Vec::new()))
            }
            Message::KeyTask {
                collection,
                scope,
                epoch,
                key,
                recipients,
            } => {
                let reply =
                    self.key_task(&collection, &scope, epoch, key.map(KeyId), &recipients)?;
                Ok(Inbound::Consumed(vec![reply]))
            }
            message => match self.missing_key(&message) {
                Some(missing) => Ok(Inbound::Later(message, missing.to_string())),
                None => Ok(Inbound::Deliver(self.open(message)?)),
            },
        }
    }

    /// The first value `message` carries under a key this device does not hold.
    fn missing_key(&self, message: &Message) -> Option<SealingError> {
        let state = self.lock();
        if state.sealed.is_empty() {
            return None;
        }
        let missing = |collection: &str, record: Uuid, field: &str, value: &Value| {
            let routing = state.sealed.get(collection)?;
            if routing.contains(field) {
                return None;
            }
            let Value::Bytes(bytes) = value else {
                return None;
            };
            let key = SealedValue::decode(bytes).ok()?.key;
            (!state.keys.contains_key(&key)).then(|| SealingError::MissingKey {
                collection: collection.to_owned(),
                record,
                field: field.to_owned(),
                key,
            })
        };
        match message {
            Message::Ops { ops, .. } => ops.iter().find_map(|op| {
                op.fields
                    .iter()
                    .find_map(|(f, v)| missing(&op.collection, op.record, f, v))
            }),
            Message::Snapshot { records, .. } | Message::Records { records } => {
                records.iter().find_map(|r| {
                    r.state
                        .fields
                        .iter()
                        .find_map(|(f, s)| missing(&r.collection, r.id, f, &s.value))
                })
            }
            _ => None,
        }
    }

    /// Keeps the keys wrapped to this device, and older keys sealed under keys it holds.
    fn accept_keys(
        &self,
        keys: &[KeyEnvelope],
        previous: &[PreviousKey],
    ) -> Result<(), SealingError> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let refused = |what: &KeyEnvelope, reason: String| SealingError::Refused {
            collection: what.collection.clone(),
            record: Uuid::nil(),
            field: format!("(key {} of scope {:?})", KeyId(what.key), what.scope),
            reason,
        };
        for envelope in keys.iter().filter(|k| k.recipient == identity.public) {
            if self.lock().keys.contains_key(&KeyId(envelope.key)) {
                continue;
            }
            let label = KeyLabel {
                database: &self.database,
                collection: &envelope.collection,
                scope: &envelope.scope,
                epoch: envelope.epoch,
            };
            let wrapped = WrappedKey::decode(&envelope.wrapped)
                .map_err(|e| refused(envelope, format!("is not a wrapped key: {e}")))?;
            let key = unwrap_key(&wrapped, &label, &identity.private)
                .map_err(|e| refused(envelope, format!("does not open: {e}")))?;
            if key.id() != KeyId(envelope.key) {
                return Err(refused(envelope, "is another key than its id says".into()));
            }
            self.add_key(HeldKey {
                database: self.database.clone(),
                collection: envelope.collection.clone(),
                scope: envelope.scope.clone(),
                epoch: envelope.epoch,
                key,
            })
            .map_err(|e| SealingError::Local(e.to_string()))?;
        }
        // Older keys, newest first as far as the chain goes.
        loop {
            let mut learned = false;
            for p in previous {
                let (held, under) = {
                    let state = self.lock();
                    (
                        state.keys.contains_key(&KeyId(p.key)),
                        state.keys.get(&KeyId(p.under)).cloned(),
                    )
                };
                let (false, Some(under)) = (held, under) else {
                    continue;
                };
                let label = KeyLabel {
                    database: &self.database,
                    collection: &p.collection,
                    scope: &p.scope,
                    epoch: p.epoch,
                };
                let Ok(key) = open_previous_key(&under.key, &p.sealed, &label) else {
                    continue;
                };
                if key.id() != KeyId(p.key) || under.collection != p.collection {
                    continue;
                }
                self.add_key(HeldKey {
                    database: self.database.clone(),
                    collection: p.collection.clone(),
                    scope: p.scope.clone(),
                    epoch: p.epoch,
                    key,
                })
                .map_err(|e| SealingError::Local(e.to_string()))?;
                learned = true;
            }
            if !learned {
                return Ok(());
            }
        }
    }

    /// Does what a [`Message::KeyTask`] asks: wraps a key held here to `recipients`, or
    /// makes the scope's key of `epoch` (a rotation) and wraps it to them, with the
    /// scope's current keys sealed under it.
    fn key_task(
        &self,
        collection: &str,
        scope: &str,
        epoch: u32,
        key: Option<KeyId>,
        recipients: &[Vec<u8>],
    ) -> Result<Message, SealingError> {
        let held = |id| self.lock().keys.get(&id).cloned();
        let (key, previous) = match key {
            Some(id) => {
                let key = held(id)
                    .filter(|k| k.collection == collection && k.scope == scope && k.epoch == epoch)
                    .ok_or_else(|| {
                        SealingError::Local(format!(
                            "asked to wrap key {id}, which this device does not hold"
                        ))
                    })?;
                (key, Vec::new())
            }
            None => {
                let (existing, current) = {
                    let state = self.lock();
                    let of_scope = || {
                        state
                            .keys
                            .values()
                            .filter(|k| k.collection == collection && k.scope == scope)
                    };
                    let existing = of_scope()
                        .filter(|k| k.epoch == epoch)
                        .min_by_key(|k| k.key.id())
                        .cloned();
                    let newest = of_scope().map(|k| k.epoch).filter(|e| *e < epoch).max();
                    let current: Vec<HeldKey> = of_scope()
                        .filter(|k| Some(k.epoch) == newest)
                        .cloned()
                        .collect();
                    (existing, current)
                };
                // Asked again (the answer was lost): the same key, not another one.
                let key = match existing {
                    Some(key) => key,
                    None => {
                        let key = HeldKey {
                            database: self.database.clone(),
                            collection: collection.to_owned(),
                            scope: scope.to_owned(),
                            epoch,
                            key: ScopeKey::generate()
                                .map_err(|e| SealingError::Local(e.to_string()))?,
                        };
                        self.add_key(key.clone())
                            .map_err(|e| SealingError::Local(e.to_string()))?;
                        key
                    }
                };
                let previous = current
                    .iter()
                    .map(|old| {
                        let sealed = seal_previous_key(&key.key, &old.key, &old.label())
                            .map_err(|e| SealingError::Local(e.to_string()))?;
                        Ok(PreviousKey {
                            collection: old.collection.clone(),
                            scope: old.scope.clone(),
                            epoch: old.epoch,
                            key: old.key.id().0,
                            under: key.key.id().0,
                            sealed,
                        })
                    })
                    .collect::<Result<Vec<_>, SealingError>>()?;
                (key, previous)
            }
        };
        let mut keys = Vec::with_capacity(recipients.len() + 1);
        for recipient in recipients {
            let kind = match recipient.len() {
                32 => KeyKind::X25519,
                _ => KeyKind::P256,
            };
            keys.push(envelope_for(&key, recipient, kind)?);
        }
        if let Some(identity) = &self.identity
            && !recipients.contains(&identity.public)
        {
            keys.push(envelope_for(&key, &identity.public, identity.kind)?);
        }
        Ok(Message::Keys { keys, previous })
    }

    /// Keeps `key` in the keyring and uses it from now on.
    pub fn add_key(&self, key: HeldKey) -> Result<KeyId> {
        let id = self.keyring.add(&key)?;
        self.lock().keys.insert(id, key);
        Ok(id)
    }

    /// Remembers that `collection` is sealed, with these routing fields. Routing fields
    /// only ever grow here: a field once sealed is never sent readable again.
    fn learn(&self, collection: &str, routing: &BTreeSet<String>) -> Result<()> {
        let mut state = self.lock();
        let known = state.sealed.get(collection);
        // A field this device seals stays sealed: only a first declaration sets them.
        let fields = match known {
            Some(fields) => fields.intersection(routing).cloned().collect(),
            None => routing.clone(),
        };
        if known == Some(&fields) {
            return Ok(());
        }
        let encoded = encode_value(&Value::Array(
            fields.iter().map(|f| Value::from(f.as_str())).collect(),
        ));
        self.db.replication().set_local_setting(
            &format!("{}{collection}", self.sealed_prefix()),
            Some(&encoded),
        )?;
        state.sealed.insert(collection.to_owned(), fields);
        Ok(())
    }

    /// What goes to the server: every value of a sealed collection sealed, except its
    /// routing fields.
    pub fn seal(&self, message: Message) -> Result<Message, SealingError> {
        if self.lock().sealed.is_empty() {
            return Ok(message);
        }
        map_values(
            message,
            |op| self.seal_op(op),
            |records| self.seal_records(records),
        )
    }

    /// `message` without the digests of this device's own operations in a `Pull`, once
    /// the device seals anything. The server holds those operations sealed and the device
    /// readable, so their digests differ although the operations are the same; compared,
    /// they would look like a copied database file. (A copy that writes other operations
    /// under the same ids still shows: its sealed operations differ from the first's.)
    fn without_own_checks(&self, message: Message) -> Message {
        match message {
            Message::Pull {
                from,
                vector,
                checks,
            } => {
                let state = self.lock();
                let own = state.node;
                let checks = if state.sealed.is_empty() {
                    checks
                } else {
                    checks.into_iter().filter(|c| Some(c.node) != own).collect()
                };
                Message::Pull {
                    from,
                    vector,
                    checks,
                }
            }
            other => other,
        }
    }

    /// Every key held here, wrapped to this device, as a [`Message::Keys`] (none without an
    /// identity or keys).
    fn republish(&self) -> Result<Option<Message>, SealingError> {
        let Some(identity) = &self.identity else {
            return Ok(None);
        };
        let held: Vec<HeldKey> = self.lock().keys.values().cloned().collect();
        let keys = held
            .iter()
            .map(|key| envelope_for(key, &identity.public, identity.kind))
            .collect::<Result<Vec<_>, _>>()?;
        self.lock().unpublished.clear();
        Ok((!keys.is_empty()).then_some(Message::Keys {
            keys,
            previous: Vec::new(),
        }))
    }

    /// Keys made here that the server has not been sent yet, as a [`Message::Keys`].
    fn take_unpublished(&self) -> Option<Message> {
        let keys = std::mem::take(&mut self.lock().unpublished);
        (!keys.is_empty()).then_some(Message::Keys {
            keys,
            previous: Vec::new(),
        })
    }

    /// What comes from the server: values of sealed collections opened.
    pub fn open(&self, message: Message) -> Result<Message, SealingError> {
        map_values(
            message,
            |op| self.open_op(op),
            |records| self.open_records(records),
        )
    }

    fn learn_all(&self, collections: &[CollectionInfo]) -> Result<()> {
        for info in collections.iter().filter(|c| c.sealed) {
            let fields = info.routing_fields.iter().cloned().collect();
            self.learn(&info.name, &fields)?;
        }
        Ok(())
    }

    fn routing_of(&self, collection: &str) -> Option<BTreeSet<String>> {
        self.lock().sealed.get(collection).cloned()
    }

    fn seal_op(&self, mut op: Operation) -> Result<Operation, SealingError> {
        let Some(routing) = self.routing_of(&op.collection) else {
            return Ok(op);
        };
        if op.fields.keys().all(|f| routing.contains(f)) {
            return Ok(op);
        }
        // The scope: the routing values this operation writes, else the record's own.
        let scope = if routing.iter().all(|f| op.fields.contains_key(f)) {
            scope_of(&routing, |f| op.fields.get(f))
        } else {
            let state = self
                .db
                .replication()
                .record_state(&op.collection, op.record)
                .map_err(|e| SealingError::Local(e.to_string()))?;
            let current = |f: &str| {
                op.fields.get(f).or_else(|| {
                    state
                        .as_ref()
                        .and_then(|s| s.fields.get(f).map(|v| &v.value))
                })
            };
            scope_of(&routing, current)
        };
        let key = self.current_key(&op.collection, &scope)?;
        let stamp = op.stamp();
        op.fields = Self::seal_fields(&key, &routing, op.record, op.fields, stamp)?;
        Ok(op)
    }

    fn seal_records(
        &self,
        records: Vec<SnapshotRecord>,
    ) -> Result<Vec<SnapshotRecord>, SealingError> {
        self.each_sealed_record(records, |routing, record| {
            let scope = scope_of(routing, |f| record.state.fields.get(f).map(|s| &s.value));
            let key = self.current_key(&record.collection, &scope)?;
            seal_state(&key, routing, record.id, &mut record.state)
        })
    }

    /// `records` with `f` applied to each one of a sealed collection.
    fn each_sealed_record(
        &self,
        records: Vec<SnapshotRecord>,
        f: impl Fn(&BTreeSet<String>, &mut SnapshotRecord) -> Result<(), SealingError>,
    ) -> Result<Vec<SnapshotRecord>, SealingError> {
        records
            .into_iter()
            .map(|mut record| {
                if let Some(routing) = self.routing_of(&record.collection) {
                    f(&routing, &mut record)?;
                }
                Ok(record)
            })
            .collect()
    }

    /// An operation's fields, all written under its one `stamp`, sealed except the routing
    /// fields.
    fn seal_fields(
        key: &HeldKey,
        routing: &BTreeSet<String>,
        record: Uuid,
        fields: Fields,
        stamp: Stamp,
    ) -> Result<Fields, SealingError> {
        fields
            .into_iter()
            .map(|(field, value)| {
                if routing.contains(&field) {
                    return Ok((field, value));
                }
                let sealed = seal_one(key, record, &field, stamp, &value)?;
                Ok((field, Value::Bytes(sealed)))
            })
            .collect()
    }

    /// The newest key of a scope; a scope without one gets its first key now.
    fn current_key(&self, collection: &str, scope: &str) -> Result<HeldKey, SealingError> {
        let newest = self
            .lock()
            .keys
            .values()
            .filter(|k| k.collection == collection && k.scope == scope)
            // Two keys of one epoch (made by two devices at once): the smaller id, so that
            // every device picks the same.
            .max_by_key(|k| (k.epoch, std::cmp::Reverse(k.key.id())))
            .cloned();
        if let Some(key) = newest {
            return Ok(key);
        }
        let key = HeldKey {
            database: self.database.clone(),
            collection: collection.to_owned(),
            scope: scope.to_owned(),
            epoch: 1,
            key: ScopeKey::generate().map_err(|e| SealingError::Local(e.to_string()))?,
        };
        self.add_key(key.clone())
            .map_err(|e| SealingError::Local(e.to_string()))?;
        // Published (wrapped to this device) before anything sealed under it is sent, so
        // that the server knows the key, and asks this device to wrap it for the others.
        if let Some(identity) = &self.identity {
            let envelope = envelope_for(&key, &identity.public, identity.kind)?;
            self.lock().unpublished.push(envelope);
        }
        Ok(key)
    }

    fn open_op(&self, mut op: Operation) -> Result<Operation, SealingError> {
        let Some(routing) = self.routing_of(&op.collection) else {
            return Ok(op);
        };
        let stamp = op.stamp();
        let origin = op.id.origin;
        let (collection, record) = (op.collection.clone(), op.record);
        op.fields = op
            .fields
            .into_iter()
            .map(|(field, value)| {
                if routing.contains(&field) {
                    return Ok((field, value));
                }
                let opened = self.open_one(&collection, record, &field, stamp, origin, &value)?;
                Ok((field, opened))
            })
            .collect::<Result<_, SealingError>>()?;
        Ok(op)
    }

    fn open_records(
        &self,
        records: Vec<SnapshotRecord>,
    ) -> Result<Vec<SnapshotRecord>, SealingError> {
        self.each_sealed_record(records, |routing, record| {
            for (field, state) in &mut record.state.fields {
                if routing.contains(field) {
                    continue;
                }
                state.value = self.open_one(
                    &record.collection,
                    record.id,
                    field,
                    state.stamp,
                    state.stamp.node,
                    &state.value,
                )?;
            }
            Ok(())
        })
    }

    fn open_one(
        &self,
        collection: &str,
        record: Uuid,
        field: &str,
        stamp: Stamp,
        origin: NodeId,
        value: &Value,
    ) -> Result<Value, SealingError> {
        let refused = |reason: String| SealingError::Refused {
            collection: collection.to_owned(),
            record,
            field: field.to_owned(),
            reason,
        };
        let Value::Bytes(bytes) = value else {
            return Err(refused(
                "is readable, in a collection this device seals end to end".into(),
            ));
        };
        let parts =
            SealedValue::decode(bytes).map_err(|e| refused(format!("is not sealed: {e}")))?;
        let key =
            self.lock()
                .keys
                .get(&parts.key)
                .cloned()
                .ok_or_else(|| SealingError::MissingKey {
                    collection: collection.to_owned(),
                    record,
                    field: field.to_owned(),
                    key: parts.key,
                })?;
        if key.collection != collection {
            return Err(refused(format!(
                "is sealed under a key of collection {:?}",
                key.collection
            )));
        }
        let slot = FieldSlot {
            label: key.label(),
            record,
            field,
            stamp,
            origin,
        };
        open_value(&key.key, &slot, bytes).map_err(|e| refused(format!("does not open: {e}")))
    }
}

/// `key` wrapped to the device whose static public key is `recipient`.
fn envelope_for(
    key: &HeldKey,
    recipient: &[u8],
    kind: KeyKind,
) -> Result<KeyEnvelope, SealingError> {
    let wrapped = wrap_key(&key.key, &key.label(), kind, recipient)
        .map_err(|e| SealingError::Local(format!("wrapping a key failed: {e}")))?;
    Ok(KeyEnvelope {
        collection: key.collection.clone(),
        scope: key.scope.clone(),
        epoch: key.epoch,
        key: key.key.id().0,
        recipient: recipient.to_vec(),
        wrapped: wrapped.encode(),
    })
}

impl MessageLayer for DeviceSealing {
    fn outbound(&self, message: Message) -> std::result::Result<Vec<Message>, String> {
        let message = self.without_own_checks(message);
        if let Message::Hello { node, .. } = message {
            self.lock().node = Some(node);
            // Every session publishes again the keys this device holds (wrapped to itself;
            // the server keeps each once): a key whose first publication was lost with a
            // connection reaches the server all the same.
            let again = self.republish().map_err(|e| e.to_string())?;
            return Ok([message].into_iter().chain(again).collect());
        }
        let sealed = self.seal(message).map_err(|e| e.to_string())?;
        // Keys the sealing just made go first: the server must know a key before anything
        // sealed under it.
        Ok(match self.take_unpublished() {
            Some(keys) => vec![keys, sealed],
            None => vec![sealed],
        })
    }

    fn inbound(&self, message: Message) -> std::result::Result<Inbound, String> {
        let message = self.without_own_checks(message);
        self.inbound_message(message).map_err(|e| e.to_string())
    }
}

/// `message` with the operations and records it carries passed through `op` and `records`.
fn map_values(
    message: Message,
    op: impl Fn(Operation) -> Result<Operation, SealingError>,
    records: impl Fn(Vec<SnapshotRecord>) -> Result<Vec<SnapshotRecord>, SealingError>,
) -> Result<Message, SealingError> {
    Ok(match message {
        Message::Ops { from, to, ops } => Message::Ops {
            from,
            to,
            ops: ops.into_iter().map(op).collect::<Result<_, _>>()?,
        },
        Message::Snapshot {
            position,
            part,
            total,
            records: parts,
            vector,
        } => Message::Snapshot {
            position,
            part,
            total,
            records: records(parts)?,
            vector,
        },
        Message::Records { records: parts } => Message::Records {
            records: records(parts)?,
        },
        other => other,
    })
}

fn seal_one(
    key: &HeldKey,
    record: Uuid,
    field: &str,
    stamp: Stamp,
    value: &Value,
) -> Result<Vec<u8>, SealingError> {
    let slot = FieldSlot {
        label: key.label(),
        record,
        field,
        stamp,
        origin: stamp.node,
    };
    seal_value(&key.key, &slot, value).map_err(|e| SealingError::Local(e.to_string()))
}

fn seal_state(
    key: &HeldKey,
    routing: &BTreeSet<String>,
    record: Uuid,
    state: &mut RecordState,
) -> Result<(), SealingError> {
    for (field, register) in &mut state.fields {
        if routing.contains(field) {
            continue;
        }
        let sealed = seal_one(key, record, field, register.stamp, &register.value)?;
        register.value = Value::Bytes(sealed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use blazedb_core::{OpId, OpKind, fields};
    use blazedb_format::{Date, FieldState};

    fn bugs_sealed() -> BTreeMap<String, BTreeSet<String>> {
        [("bugs".to_owned(), ["teamId".to_owned()].into())].into()
    }

    /// A device's layer with the shared ios key.
    fn device(key: &ScopeKey) -> (Database, DeviceSealing) {
        let db = Database::in_memory().unwrap();
        let sealing = DeviceSealing::new(&db, "tracker", &bugs_sealed()).unwrap();
        sealing
            .add_key(HeldKey {
                database: "tracker".into(),
                collection: "bugs".into(),
                scope: "ios".into(),
                epoch: 1,
                key: key.clone(),
            })
            .unwrap();
        (db, sealing)
    }

    fn op(record: Uuid, kind: OpKind, fields: Fields) -> Operation {
        Operation {
            id: OpId {
                origin: NodeId(Uuid::from_u128(7)),
                seq: 3,
            },
            lamport: 9,
            wall: Date::from_unix_millis(0),
            kind,
            collection: "bugs".into(),
            record,
            fields,
        }
    }

    fn ops(list: Vec<Operation>) -> Message {
        Message::Ops {
            from: 0,
            to: 1,
            ops: list,
        }
    }

    fn only_op(message: Message) -> Operation {
        match message {
            Message::Ops { mut ops, .. } => ops.remove(0),
            other => panic!("not Ops: {other:?}"),
        }
    }

    #[test]
    fn an_operation_travels_sealed_except_its_routing_fields_and_opens_on_another_device() {
        let key = ScopeKey::generate().unwrap();
        let (_, alice) = device(&key);
        let (_, bob) = device(&key);
        let original = op(
            Uuid::now_v7(),
            OpKind::Insert,
            fields! { "teamId" => "ios", "title" => "crash", "priority" => 2 },
        );
        let sealed = only_op(alice.seal(ops(vec![original.clone()])).unwrap());
        assert_eq!(sealed.fields.get("teamId"), Some(&Value::from("ios")));
        for field in ["title", "priority"] {
            assert!(
                matches!(sealed.fields.get(field), Some(Value::Bytes(b)) if SealedValue::decode(b).unwrap().key == key.id())
            );
        }
        // Deterministic: the same operation sealed again is the same bytes.
        assert_eq!(
            only_op(alice.seal(ops(vec![original.clone()])).unwrap()),
            sealed
        );
        let opened = only_op(bob.open(ops(vec![sealed])).unwrap());
        assert_eq!(opened, original);
    }

    #[test]
    fn an_update_without_its_routing_field_is_sealed_under_the_records_scope() {
        let key = ScopeKey::generate().unwrap();
        let (db, alice) = device(&key);
        let id = db
            .insert("bugs", fields! { "teamId" => "ios", "title" => "a" })
            .unwrap();
        let update = op(id, OpKind::Update, fields! { "title" => "b" });
        let sealed = only_op(alice.seal(ops(vec![update.clone()])).unwrap());
        let Some(Value::Bytes(bytes)) = sealed.fields.get("title") else {
            panic!("not sealed");
        };
        assert_eq!(SealedValue::decode(bytes).unwrap().key, key.id());
        let (_, bob) = device(&key);
        assert_eq!(only_op(bob.open(ops(vec![sealed])).unwrap()), update);
    }

    #[test]
    fn a_value_moved_replayed_readable_or_under_an_unknown_key_is_refused() {
        let key = ScopeKey::generate().unwrap();
        let (_, alice) = device(&key);
        let (_, bob) = device(&key);
        let original = op(
            Uuid::now_v7(),
            OpKind::Insert,
            fields! { "teamId" => "ios", "title" => "crash" },
        );
        let sealed = only_op(alice.seal(ops(vec![original])).unwrap());
        let moved = Operation {
            record: Uuid::now_v7(),
            ..sealed.clone()
        };
        let replayed = Operation {
            lamport: sealed.lamport + 1,
            ..sealed.clone()
        };
        let readable = Operation {
            fields: fields! { "teamId" => "ios", "title" => "injected" },
            ..sealed.clone()
        };
        for (forged, says) in [
            (moved, "does not open"),
            (replayed, "does not open"),
            (readable, "is readable"),
        ] {
            let err = bob.open(ops(vec![forged])).unwrap_err();
            assert!(matches!(err, SealingError::Refused { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
        let (_, stranger) = device(&ScopeKey::generate().unwrap());
        assert!(matches!(
            stranger.open(ops(vec![sealed.clone()])).unwrap_err(),
            SealingError::MissingKey { key: k, .. } if k == key.id()
        ));
        // As a layer, it waits for the key instead.
        assert!(matches!(
            stranger.inbound_message(ops(vec![sealed])).unwrap(),
            Inbound::Later(_, why) if why.contains(&key.id().to_string())
        ));
    }

    #[test]
    fn snapshot_records_are_sealed_with_each_fields_own_stamp() {
        let key = ScopeKey::generate().unwrap();
        let (_, alice) = device(&key);
        let (_, bob) = device(&key);
        let stamp = |lamport| Stamp {
            lamport,
            node: NodeId(Uuid::from_u128(lamport.into())),
        };
        let mut state =
            RecordState::inserted(fields! { "teamId" => "ios", "title" => "crash" }, stamp(1));
        state.fields.insert(
            "status".into(),
            FieldState {
                value: Value::from("open"),
                stamp: stamp(5),
            },
        );
        let record = SnapshotRecord {
            collection: "bugs".into(),
            id: Uuid::now_v7(),
            state,
        };
        let message = Message::Records {
            records: vec![record.clone()],
        };
        let sealed = alice.seal(message).unwrap();
        let Message::Records { records } = &sealed else {
            panic!()
        };
        assert!(matches!(
            records[0].state.fields["status"].value,
            Value::Bytes(_)
        ));
        assert_eq!(
            bob.open(sealed).unwrap(),
            Message::Records {
                records: vec![record]
            }
        );
    }

    #[test]
    fn a_sealed_collection_stays_sealed_whatever_the_server_says_later_and_across_restarts() {
        let db = Database::in_memory().unwrap();
        let first = DeviceSealing::new(&db, "tracker", &BTreeMap::new()).unwrap();
        assert!(first.sealed_collections().is_empty());
        let told = |sealed| Message::Collections {
            collections: vec![CollectionInfo {
                name: "notes".into(),
                sealed,
                routing_fields: vec!["owner".into()],
            }],
        };
        for sealed in [true, false] {
            assert!(matches!(
                first.inbound_message(told(sealed)).unwrap(),
                Inbound::Consumed(replies) if replies.is_empty()
            ));
        }
        let again = DeviceSealing::new(&db, "tracker", &BTreeMap::new()).unwrap();
        assert_eq!(
            again.sealed_collections(),
            [("notes".to_owned(), ["owner".to_owned()].into())].into()
        );
        // A routing field the server drops is sealed from then on; one it adds is not
        // unsealed.
        let fewer = Message::Collections {
            collections: vec![CollectionInfo {
                name: "notes".into(),
                sealed: true,
                routing_fields: vec!["kind".into()],
            }],
        };
        again.inbound_message(fewer).unwrap();
        assert!(again.sealed_collections()["notes"].is_empty());
        // Without a key for the scope, the first write makes one and keeps it.
        let write = Operation {
            collection: "notes".into(),
            ..op(Uuid::now_v7(), OpKind::Insert, fields! { "text" => "hi" })
        };
        let sealed = only_op(again.seal(ops(vec![write])).unwrap());
        assert!(matches!(sealed.fields["text"], Value::Bytes(_)));
        let held = Keyring::new(&db).keys().unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(
            (
                held[0].collection.as_str(),
                held[0].scope.as_str(),
                held[0].epoch
            ),
            ("notes", "", 1)
        );
    }

    #[test]
    fn a_scope_is_the_routing_values_in_field_order() {
        let routing: BTreeSet<String> = ["teamId".to_owned(), "area".to_owned()].into();
        let values = fields! { "teamId" => "ios", "area" => 3 };
        assert_eq!(
            scope_of(&routing, |f| values.get(f)),
            format!("#{}\u{1f}ios", {
                let hex: String = encode_value(&Value::Int(3))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                hex
            })
        );
        assert_eq!(
            fields_of_scope(&routing, &scope_of(&routing, |f| values.get(f))),
            Some(values.clone())
        );
        assert_eq!(scope_of(&BTreeSet::new(), |f| values.get(f)), "");
        assert_eq!(fields_of_scope(&BTreeSet::new(), ""), Some(Fields::new()));
        assert_eq!(fields_of_scope(&routing, "only one part"), None);
        let one: BTreeSet<String> = ["owner".to_owned()].into();
        assert_eq!(scope_of(&one, |f| values.get(f)), "");
    }

    /// One write of the convergence property: which device, which record, what.
    #[derive(Debug, Clone)]
    struct Write {
        device: usize,
        record: u8,
        kind: OpKind,
        title: Option<String>,
        n: Option<i64>,
    }

    fn write() -> impl proptest::strategy::Strategy<Value = Write> {
        use proptest::prelude::*;
        (
            0..3_usize,
            0..3_u8,
            prop_oneof![
                Just(OpKind::Insert),
                Just(OpKind::Update),
                Just(OpKind::Delete)
            ],
            proptest::option::of("[a-z]{0,6}"),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(device, record, kind, title, n)| Write {
                device,
                record,
                kind,
                title,
                n,
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A blind server that merges sealed operations per field by their stamps, in any
        /// order and with duplicates, ends with the states a server reading the values would
        /// have; devices open them to exactly those values, also after a restart.
        #[test]
        fn merging_sealed_values_blind_converges_to_merging_them_readable(
            writes in proptest::collection::vec(write(), 1..24),
            order in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..64),
            restart_at in 0..3_usize,
        ) {
            let key = ScopeKey::generate().unwrap();
            let devices: Vec<(Database, DeviceSealing)> = (0..3).map(|_| device(&key)).collect();
            let nodes: Vec<NodeId> = (0..3).map(|d| NodeId(Uuid::from_u128(100 + d))).collect();
            let records: Vec<Uuid> = (0..3).map(|r| Uuid::from_u128(1000 + r)).collect();
            let mut seq = [0_u64; 3];
            let mut plain = Vec::new();
            let mut sealed = Vec::new();
            for (lamport, w) in writes.iter().enumerate() {
                seq[w.device] += 1;
                let mut fields = Fields::new();
                if w.kind != OpKind::Delete {
                    fields.insert("teamId".into(), Value::from("ios"));
                    if let Some(t) = &w.title {
                        fields.insert("title".into(), Value::from(t.as_str()));
                    }
                    if let Some(n) = w.n {
                        fields.insert("n".into(), Value::Int(n));
                    }
                }
                let op = Operation {
                    id: OpId { origin: nodes[w.device], seq: seq[w.device] },
                    lamport: lamport as u64 + 1,
                    wall: Date::from_unix_millis(0),
                    kind: w.kind,
                    collection: "bugs".into(),
                    record: records[usize::from(w.record)],
                    fields,
                };
                sealed.push(only_op(devices[w.device].1.seal(ops(vec![op.clone()])).unwrap()));
                plain.push(op);
            }
            // The reference: readable operations merged in the order written.
            let mut reference: BTreeMap<Uuid, RecordState> = BTreeMap::new();
            for op in &plain {
                reference.entry(op.record).or_default().apply(op);
            }
            // The blind server: sealed operations in another order, some twice.
            let mut delivery: Vec<&Operation> = sealed.iter().collect();
            delivery.extend(order.iter().map(|i| &sealed[i.index(sealed.len())]));
            delivery.reverse();
            let mut blind: BTreeMap<Uuid, RecordState> = BTreeMap::new();
            for op in delivery {
                blind.entry(op.record).or_default().apply(op);
            }
            for state in blind.values() {
                for (field, register) in &state.fields {
                    proptest::prop_assert!(
                        field == "teamId" || matches!(register.value, Value::Bytes(_))
                    );
                }
            }
            // A device (restarted: its layer made again from its file) opens the server's
            // states to the reference.
            let (db, _) = &devices[restart_at];
            let reader = DeviceSealing::new(db, "tracker", &bugs_sealed()).unwrap();
            let records: Vec<SnapshotRecord> = blind
                .into_iter()
                .map(|(id, state)| SnapshotRecord { collection: "bugs".into(), id, state })
                .collect();
            let Message::Records { records: opened } =
                reader.open(Message::Records { records }).unwrap()
            else {
                panic!("not Records");
            };
            let opened: BTreeMap<Uuid, RecordState> =
                opened.into_iter().map(|r| (r.id, r.state)).collect();
            proptest::prop_assert_eq!(opened, reference);
        }
    }

    #[test]
    fn every_session_publishes_again_the_keys_a_device_holds_right_after_its_hello() {
        let key = ScopeKey::generate().unwrap();
        let (_, bare) = device(&key);
        let identity = StaticKeys::generate(Suite::default()).unwrap();
        let alice = bare.with_identity(&identity);
        let hello = Message::Hello {
            protocol_version: blazedb_protocol::PROTOCOL_VERSION,
            node: NodeId(Uuid::from_u128(1)),
            database: "tracker".into(),
            capabilities: blazedb_protocol::Capabilities::NONE,
            head: 0,
        };
        let sent = alice.outbound(hello.clone()).unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], hello);
        let Message::Keys { keys, .. } = &sent[1] else {
            panic!("not Keys: {:?}", sent[1]);
        };
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key, key.id().0);
        assert_eq!(keys[0].recipient, identity.public());
        // It opens with the device's own key.
        let wrapped = WrappedKey::decode(&keys[0].wrapped).unwrap();
        let label = KeyLabel {
            database: "tracker",
            collection: "bugs",
            scope: "ios",
            epoch: 1,
        };
        assert_eq!(
            unwrap_key(&wrapped, &label, identity.private())
                .unwrap()
                .id(),
            key.id()
        );
    }
}
