//! Selective sync on a session (docs/access.md, "How reads are enforced").
//!
//! The sending side of a connection with a [`ReadScope`] (a server, towards one device)
//! sends only what the peer may read: operations on records it holds, with hidden fields
//! removed; the full state of a record that enters its scope; a `Purge` for one that leaves
//! it. To know what the peer holds, the session keeps the set of its records in memory: at
//! the start, the two sides compare summaries ([`MembershipDigest`]) and exchange ids only
//! where the summaries differ (`Reconcile`, `Held`); then every record sent, purged or
//! written by the peer updates the set.
//!
//! The receiving side (a device) answers `Reconcile` with what it holds, joins `Records`
//! like snapshot parts, and purges what a `Purge` names, except records it changed that the
//! peer has not acknowledged yet: the server has not ruled on those writes.

use std::collections::{BTreeSet, HashMap, HashSet};

use blazedb_access::{ReadScope, SyncPolicy, WriteRefusal};
use blazedb_core::{OpKind, Operation, PurgeReason, RecordState, SnapshotRecord, VersionVector};
use blazedb_protocol::membership::MembershipDigest;
use blazedb_protocol::{CloseCode, Message, RecordKey, Rejection};

use super::{
    MAX_POLICIES_PER_PERIOD, PULL_PERIOD, PeerTrust, SNAPSHOT_PART_BYTES, SNAPSHOT_PART_RECORDS,
    Session, SessionLog,
};

/// What the sending side knows of the records a scoped peer holds.
#[derive(Default)]
pub(crate) struct Held {
    /// The records the peer holds, as far as we know (valid once `known`).
    keys: HashSet<RecordKey>,
    /// A `Reconcile` was sent: `keys` is our best knowledge.
    pub(super) known: bool,
    /// The level of the `Reconcile` whose `Held` answer we wait for.
    awaiting: Option<u8>,
    /// Where the stream to the peer stood when that `Reconcile` went out (`None`: a
    /// snapshot was due, which carries every record the peer may read).
    reconciled_at: Option<u64>,
    /// When the engine routes records to connections (it indexes who holds what): every
    /// change to `keys` since it last looked.
    journal: Option<Vec<HeldChange>>,
}

/// One change to what a scoped peer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeldChange {
    Added(RecordKey),
    Removed(RecordKey),
}

impl Held {
    /// How many records the peer holds, as far as we know.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The records the peer holds, as far as we know.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &RecordKey> {
        self.keys.iter()
    }

    /// Starts noting every change (see [`Held::take_changes`]).
    pub(crate) fn keep_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes since the last call (none without [`Held::keep_journal`]).
    pub(crate) fn take_changes(&mut self) -> Vec<HeldChange> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn contains(&self, key: &RecordKey) -> bool {
        self.keys.contains(key)
    }

    /// Notes that the peer holds `key`; false if it was known.
    fn insert(&mut self, key: RecordKey) -> bool {
        if self.keys.contains(&key) {
            return false;
        }
        if let Some(journal) = &mut self.journal {
            journal.push(HeldChange::Added(key.clone()));
        }
        self.keys.insert(key)
    }

    /// Notes that the peer no longer holds `key`; false if it was not known to.
    fn remove(&mut self, key: &RecordKey) -> bool {
        let removed = self.keys.remove(key);
        if removed && let Some(journal) = &mut self.journal {
            journal.push(HeldChange::Removed(key.clone()));
        }
        removed
    }

    /// Starts over: nothing known (the journal stays on).
    fn reset(&mut self) {
        self.replace_keys(HashSet::new());
        self.known = false;
        self.awaiting = None;
        self.reconciled_at = None;
    }

    /// Replaces every key, noting the difference.
    fn replace_keys(&mut self, keys: HashSet<RecordKey>) {
        let old = std::mem::replace(&mut self.keys, keys);
        if let Some(journal) = &mut self.journal {
            journal.extend(
                old.iter()
                    .filter(|k| !self.keys.contains(*k))
                    .map(|k| HeldChange::Removed(k.clone())),
            );
            journal.extend(
                self.keys
                    .iter()
                    .filter(|k| !old.contains(*k))
                    .map(|k| HeldChange::Added(k.clone())),
            );
        }
    }
}

/// What one batch of our log becomes for a scoped peer.
#[derive(Default)]
pub(super) struct Filtered {
    /// The operations to send, hidden fields removed.
    pub(super) ops: Vec<Operation>,
    /// Records that entered the peer's scope: their full states.
    pub(super) entered: Vec<SnapshotRecord>,
    /// Records that left it.
    pub(super) left: Vec<RecordKey>,
}

/// What to do with the operations of one record in one batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Send them (the peer holds the record and may read it).
    Send,
    /// Send nothing: the state went out instead, or the record is not for the peer.
    Skip,
}

/// Every record of `log` (tombstones included), page by page.
fn each_record(
    log: &mut impl SessionLog,
    mut f: impl FnMut(SnapshotRecord),
) -> blazedb_core::Result<()> {
    let mut after = None;
    loop {
        let (page, next) =
            log.snapshot_page(after.as_ref(), SNAPSHOT_PART_RECORDS, SNAPSHOT_PART_BYTES)?;
        for record in page {
            f(record);
        }
        match next {
            Some(key) => after = Some(key),
            None => return Ok(()),
        }
    }
}

/// The records `scope` lets the peer read, with their states as it may see them.
fn visible(
    log: &mut impl SessionLog,
    scope: &ReadScope,
) -> blazedb_core::Result<HashMap<RecordKey, RecordState>> {
    let mut out = HashMap::new();
    each_record(log, |record| {
        if scope.may_read_state(&record.collection, record.id, &record.state) {
            let state = scope.strip_state(&record.collection, &record.state);
            out.insert(RecordKey::new(record.collection, record.id), state);
        }
    })?;
    Ok(out)
}

/// The records `log` holds (not deleted).
fn live_keys(log: &mut impl SessionLog) -> blazedb_core::Result<Vec<RecordKey>> {
    let mut out = Vec::new();
    each_record(log, |record| {
        if record.state.is_visible() {
            out.push(RecordKey::new(record.collection, record.id));
        }
    })?;
    Ok(out)
}

/// Calls `f` with each operation in our log after position `from`, up to and including `to`,
/// with its position, page by page; stops early when `f` returns false.
fn each_op_between(
    log: &mut impl SessionLog,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, Operation) -> bool,
) -> blazedb_core::Result<()> {
    let mut at = from;
    while at < to {
        let Some(entries) = log.entries_after(at)? else {
            break;
        };
        let Some(&(last, _)) = entries.last() else {
            break;
        };
        for (position, op) in entries {
            if position > to || !f(position, op) {
                return Ok(());
            }
        }
        at = last;
    }
    Ok(())
}

/// Is `state` exactly what insert `op` made (no other write, before or after it)?
fn is_exactly(state: &RecordState, op: &Operation) -> bool {
    let stamp = op.stamp();
    op.kind == OpKind::Insert
        && state.created == Some(stamp)
        && state.deleted.is_none()
        && state.fields.len() == op.fields.len()
        && state.fields.values().all(|f| f.stamp == stamp)
}

/// Cuts `records` into `Records` messages of about a snapshot part each.
fn records_messages(records: Vec<SnapshotRecord>) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for record in records {
        bytes +=
            blazedb_format::encode_record_state(&record.state).len() + record.collection.len() + 16;
        part.push(record);
        if part.len() >= SNAPSHOT_PART_RECORDS || bytes >= SNAPSHOT_PART_BYTES {
            messages.push(Message::Records {
                records: std::mem::take(&mut part),
            });
            bytes = 0;
        }
    }
    if !part.is_empty() {
        messages.push(Message::Records { records: part });
    }
    messages
}

impl Session {
    /// Does this side filter what it sends by a scope?
    pub(super) fn is_scoped(&self) -> bool {
        self.options.scope.is_some()
    }

    /// Starts comparing what the peer holds with what it may read: our summary goes out,
    /// and until the answer, we take it that the peer holds exactly what it may read.
    pub(super) fn start_reconcile(
        &mut self,
        log: &mut impl SessionLog,
    ) -> blazedb_core::Result<()> {
        let Some(scope) = &self.options.scope else {
            return Ok(());
        };
        let visible = visible(log, scope)?;
        let level = MembershipDigest::level_for(visible.len());
        let digest = MembershipDigest::of(level, visible.keys());
        let reconciled_at = self.outbound.as_ref().and_then(|out| {
            (out.snapshot.is_none() && out.sent_to >= log.start()).then_some(out.sent_to)
        });
        self.held.replace_keys(visible.into_keys().collect());
        self.held.known = true;
        self.held.awaiting = Some(level);
        self.held.reconciled_at = reconciled_at;
        self.send(Message::Reconcile {
            level,
            buckets: digest.buckets().to_vec(),
        });
        Ok(())
    }

    /// The peer's answer to our `Reconcile`: in the buckets that differ, the records it
    /// holds. It gets the states of the readable records it lacks, and a `Purge` of those
    /// it may not hold.
    pub(super) fn on_held(
        &mut self,
        log: &mut impl SessionLog,
        level: u8,
        buckets: &[u32],
        records: Vec<RecordKey>,
    ) -> blazedb_core::Result<()> {
        if !self.is_scoped() || self.held.awaiting != Some(level) {
            // An answer to a summary a newer one replaced, or one we never asked for.
            return Ok(());
        }
        self.held.awaiting = None;
        let Some(scope) = self.options.scope.clone() else {
            return Ok(());
        };
        let buckets: BTreeSet<usize> = buckets.iter().map(|b| *b as usize).collect();
        let in_buckets =
            |key: &RecordKey| buckets.contains(&MembershipDigest::bucket_at(level, key));
        let mut visible = visible(log, &scope)?;
        visible.retain(|key, _| in_buckets(key));
        let theirs: HashSet<RecordKey> = records.into_iter().filter(|k| in_buckets(k)).collect();
        let mut left = Vec::new();
        for key in &theirs {
            if visible.contains_key(key) {
                continue;
            }
            // A record we never saw is one the peer wrote and has not sent yet; a deleted one
            // goes away with its delete. Only a live record it may not read is purged.
            if log.record_state(key)?.is_some_and(|s| s.is_visible()) {
                left.push(key.clone());
            }
        }
        // A record the stream carries whole (its insert came after the `Reconcile`, or a
        // snapshot was due) arrives as operations, unless the stream passed it over; only
        // the others go as states now.
        let coming = self.inserted_ahead(log)?;
        let mut entered = Vec::new();
        for (key, state) in visible {
            let streamed =
                self.held.contains(&key) && coming.as_ref().is_none_or(|c| c.contains(&key));
            if !theirs.contains(&key) && !streamed {
                self.held.insert(key.clone());
                entered.push(SnapshotRecord {
                    collection: key.collection,
                    id: key.id,
                    state,
                });
            }
        }
        for key in &left {
            self.held.remove(key);
        }
        self.send_scope_changes(entered, left, PurgeReason::AccessChanged);
        Ok(())
    }

    /// The records inserted in our log after where the stream stood at the last
    /// `Reconcile`, by operations the peer did not have: the stream carries them whole.
    /// `None` when a snapshot was due then: it carries every record.
    fn inserted_ahead(
        &self,
        log: &mut impl SessionLog,
    ) -> blazedb_core::Result<Option<HashSet<RecordKey>>> {
        let mut ahead = HashSet::new();
        let (Some(_), Some(from)) = (&self.outbound, self.held.reconciled_at) else {
            return Ok(None);
        };
        if from < log.start() {
            // Compacted since: what is left of the range cannot be read; send states.
            return Ok(Some(ahead));
        }
        // What the peer had when it pulled (the stream's own record grows with what it sent).
        let had = self.pulled.as_ref().map(|(_, v)| v);
        let head = log.head();
        each_op_between(log, from, head, |_, op| {
            if op.kind == OpKind::Insert && !had.is_some_and(|v| v.contains(op.id)) {
                ahead.insert(RecordKey::new(op.collection, op.record));
            }
            true
        })?;
        Ok(Some(ahead))
    }

    /// Replaces what the rules let the peer read (they, or the user's teams, changed) and
    /// sends the difference: the states of records that entered its scope (and of records
    /// whose hidden fields became readable), a `Purge` of those that left it.
    pub(crate) fn set_scope(
        &mut self,
        log: &mut impl SessionLog,
        scope: Option<ReadScope>,
        reason: PurgeReason,
    ) {
        self.base_scope = scope;
        let effective = self.effective_scope();
        if let Err(e) = self.try_set_scope(log, effective, reason) {
            self.internal_error(&e);
        }
    }

    /// The rules' scope narrowed by the peer's policy.
    fn effective_scope(&self) -> Option<ReadScope> {
        match &self.peer_policy {
            Some(policy) => Some(policy.narrow(self.base_scope.as_ref())),
            None => self.base_scope.clone(),
        }
    }

    /// The peer asks for less (or for all again): from now on it gets what both its policy
    /// and the rules allow, and the difference at once.
    pub(super) fn on_policy(
        &mut self,
        log: &mut impl SessionLog,
        only: Vec<String>,
        except: Vec<String>,
        filter: &str,
        exclude_fields: Vec<String>,
        now: std::time::Instant,
    ) {
        if super::over_limit(&mut self.policies, now, MAX_POLICIES_PER_PERIOD) {
            self.close_with(
                CloseCode::ProtocolError,
                format!(
                    "more than {MAX_POLICIES_PER_PERIOD} Policy messages within {} s",
                    PULL_PERIOD.as_secs()
                ),
            );
            return;
        }
        let mut policy = SyncPolicy::new()
            .exclude_collections(except)
            .exclude_fields(exclude_fields);
        if !only.is_empty() {
            policy = policy.collections(only);
        }
        if !filter.is_empty() {
            policy = match policy.filter_json(filter) {
                Ok(policy) => policy,
                Err(e) => {
                    self.close_with(CloseCode::ProtocolError, format!("the peer's {e}"));
                    return;
                }
            };
        }
        if let Some((collection, field)) = self
            .options
            .write_scope
            .as_ref()
            .and_then(|write| policy.reads_sealed_field(write.rules()))
        {
            self.close_with(
                CloseCode::ProtocolError,
                format!(
                    "the peer's sync policy filter reads the field {field:?}, which collection \
                     {collection:?} seals end to end: the server sees only its sealed bytes. \
                     Filter on the record id or the routing fields there, or leave the \
                     collection out of the policy"
                ),
            );
            return;
        }
        self.peer_policy = (!policy.is_everything()).then_some(policy);
        let effective = self.effective_scope();
        if let Err(e) = self.try_set_scope(log, effective, PurgeReason::PolicyChanged) {
            self.internal_error(&e);
        }
    }

    /// Changes what we ask the peer for, and tells it.
    pub(crate) fn set_policy(&mut self, policy: Option<SyncPolicy>) {
        self.send_policy(policy.as_ref());
        self.options.policy = policy;
    }

    pub(super) fn send_policy(&mut self, policy: Option<&SyncPolicy>) {
        let policy = policy.cloned().unwrap_or_default();
        self.send(Message::Policy {
            only: policy.only().map(<[String]>::to_vec).unwrap_or_default(),
            except: policy.except().to_vec(),
            filter: policy.filter_text().unwrap_or_default().to_owned(),
            exclude_fields: policy.excluded_fields().to_vec(),
        });
    }

    fn try_set_scope(
        &mut self,
        log: &mut impl SessionLog,
        scope: Option<ReadScope>,
        reason: PurgeReason,
    ) -> blazedb_core::Result<()> {
        if self.options.scope == scope {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.options.scope, scope);
        self.scope_changes += 1;
        // Routed for the old scope: the stream reads everything again until rerouted.
        self.route_hint = None;
        if self.outbound.is_none() || !self.is_open() {
            // Nothing streams yet: the first Pull starts with the new scope.
            self.held.reset();
            return Ok(());
        }
        let Some(new) = self.options.scope.clone() else {
            // Filtering ends: the peer may read everything, whole.
            let mut entered = Vec::new();
            each_record(log, |record| {
                if record.state.is_visible() {
                    entered.push(record);
                }
            })?;
            self.held.reset();
            self.send_scope_changes(entered, Vec::new(), reason);
            return Ok(());
        };
        let old = old.filter(|_| self.held.known);
        let hid =
            |scope: Option<&ReadScope>, c: &str, f: &str| scope.is_some_and(|s| s.hides(c, f));
        // Collections where a field the peer may read now was hidden before (its copies lack
        // the values), and where one it could read is hidden now (its copies must lose them).
        let mut revealed = HashSet::new();
        let mut concealed = HashSet::new();
        for c in new.collections() {
            let was_read = old.as_ref().is_none_or(|o| o.reads_collection(c));
            if old
                .as_ref()
                .is_some_and(|o| o.hidden_fields(c).any(|f| !new.hides(c, f)))
                || !was_read
            {
                revealed.insert(c.to_owned());
            }
            if new.hidden_fields(c).any(|f| !hid(old.as_ref(), c, f)) {
                concealed.insert(c.to_owned());
            }
        }
        if old.is_none() {
            // Filtering starts: find out what the peer holds.
            self.start_reconcile(log)?;
        }
        let visible = visible(log, &new)?;
        let mut left: Vec<RecordKey> = self
            .held
            .keys()
            .filter(|key| !visible.contains_key(*key) || concealed.contains(&key.collection))
            .cloned()
            .collect();
        left.sort();
        for key in &left {
            self.held.remove(key);
        }
        let mut entered = Vec::new();
        for (key, state) in visible {
            if self.held.insert(key.clone()) || revealed.contains(&key.collection) {
                entered.push(SnapshotRecord {
                    collection: key.collection,
                    id: key.id,
                    state,
                });
            }
        }
        self.send_scope_changes(entered, left, reason);
        Ok(())
    }

    fn send_scope_changes(
        &mut self,
        entered: Vec<SnapshotRecord>,
        left: Vec<RecordKey>,
        reason: PurgeReason,
    ) {
        if !left.is_empty() {
            self.purges_sent += left.len() as u64;
            self.send(Message::Purge {
                reason,
                records: left,
            });
        }
        self.states_sent += entered.len() as u64;
        for message in records_messages(entered) {
            self.send(message);
        }
    }

    /// Sends what a batch of our log became for the scoped peer (before its `Ops`).
    pub(super) fn send_filtered_extras(&mut self, filtered: &mut Filtered) {
        let entered = std::mem::take(&mut filtered.entered);
        let left = std::mem::take(&mut filtered.left);
        self.send_scope_changes(entered, left, PurgeReason::RecordChanged);
    }

    /// Cuts one batch of our log down to the scoped peer, deciding per record on its state
    /// now (later operations in the log are then sent as well, and change nothing the state
    /// already has).
    pub(super) fn filter_for_scope(
        &mut self,
        log: &mut impl SessionLog,
        entries: Vec<(u64, Operation)>,
    ) -> blazedb_core::Result<Filtered> {
        // Taken out for the batch, not copied: this runs for every connection on every commit.
        let Some(scope) = self.options.scope.take() else {
            return Ok(Filtered {
                ops: entries.into_iter().map(|(_, op)| op).collect(),
                ..Filtered::default()
            });
        };
        let filtered = self.filter_with(log, &scope, entries);
        self.options.scope = Some(scope);
        filtered
    }

    fn filter_with(
        &mut self,
        log: &mut impl SessionLog,
        scope: &ReadScope,
        entries: Vec<(u64, Operation)>,
    ) -> blazedb_core::Result<Filtered> {
        let mut out = Filtered::default();
        let mut decided: HashMap<RecordKey, Decision> = HashMap::new();
        // A record whose operations in this batch are all the peer's own, accepted with the
        // record still readable to it, goes on as the peer has it: no state to read.
        if !self.own_readable.is_empty() {
            let mut own_only: HashMap<RecordKey, bool> = HashMap::new();
            for (_, op) in &entries {
                let own = self.own_readable.contains(&op.id);
                *own_only
                    .entry(RecordKey::new(op.collection.clone(), op.record))
                    .or_insert(true) &= own;
            }
            for (_, op) in &entries {
                self.own_readable.remove(&op.id);
            }
            for (key, own) in own_only {
                if own && self.held.contains(&key) {
                    decided.insert(key, Decision::Send);
                }
            }
        }
        for (_, op) in entries {
            let key = RecordKey::new(op.collection.clone(), op.record);
            let decision = match decided.get(&key) {
                Some(d) => *d,
                None => {
                    let d = self.decide(log, scope, &key, &op, &mut out)?;
                    decided.insert(key, d);
                    d
                }
            };
            if decision != Decision::Send {
                continue;
            }
            if self.blank_for_peer.remove(&op.id) {
                out.ops.push(scope.blank_hidden(&op));
            } else if let Some(op) = scope.strip_operation(&op) {
                out.ops.push(op);
            }
        }
        Ok(out)
    }

    fn decide(
        &mut self,
        log: &mut impl SessionLog,
        scope: &ReadScope,
        key: &RecordKey,
        op: &Operation,
        out: &mut Filtered,
    ) -> blazedb_core::Result<Decision> {
        let view = log.record_view(key)?;
        let readable = view
            .as_ref()
            .and_then(|v| v.record.as_ref())
            .is_some_and(|r| scope.may_read_record(&key.collection, r));
        let held = self.held.contains(key);
        Ok(match (readable, held) {
            (true, true) => Decision::Send,
            (true, false) => {
                self.held.insert(key.clone());
                if view.as_ref().is_some_and(|v| is_exactly(&v.state, op)) {
                    // A new record that nothing else touched yet: its insert is its whole
                    // state, and cheaper to send than the state.
                    return Ok(Decision::Send);
                }
                if let Some(view) = view {
                    out.entered.push(SnapshotRecord {
                        collection: key.collection.clone(),
                        id: key.id,
                        state: scope.strip_state(&key.collection, &view.state),
                    });
                }
                Decision::Skip
            }
            (false, true) => {
                self.held.remove(key);
                if view.as_ref().is_some_and(|v| !v.state.is_visible()) && op.kind == OpKind::Delete
                {
                    // Deleted: the peer deletes its copy as everyone does.
                    Decision::Send
                } else {
                    out.left.push(key.clone());
                    Decision::Skip
                }
            }
            (false, false) => Decision::Skip,
        })
    }

    /// A snapshot page cut down to the scoped peer: the records it may read, stripped, and
    /// a `Purge` of those it holds and may no longer read.
    pub(super) fn filter_snapshot_page(
        &mut self,
        records: Vec<SnapshotRecord>,
    ) -> Vec<SnapshotRecord> {
        let Some(scope) = self.options.scope.take() else {
            return records;
        };
        let kept = self.filter_page_with(&scope, records);
        self.options.scope = Some(scope);
        kept
    }

    fn filter_page_with(
        &mut self,
        scope: &ReadScope,
        records: Vec<SnapshotRecord>,
    ) -> Vec<SnapshotRecord> {
        let mut kept = Vec::new();
        let mut left = Vec::new();
        for record in records {
            let key = RecordKey::new(record.collection.clone(), record.id);
            if scope.may_read_state(&record.collection, record.id, &record.state) {
                self.held.insert(key);
                kept.push(SnapshotRecord {
                    state: scope.strip_state(&record.collection, &record.state),
                    ..record
                });
            } else if self.held.remove(&key) {
                if record.state.is_visible() {
                    left.push(key);
                } else {
                    kept.push(SnapshotRecord {
                        state: scope.strip_state(&record.collection, &record.state),
                        ..record
                    });
                }
            }
        }
        self.send_scope_changes(Vec::new(), left, PurgeReason::RecordChanged);
        kept
    }

    /// Operations the peer wrote reached us: it holds those records (or deleted them).
    pub(super) fn peer_wrote(&mut self, ops: &[Operation]) {
        if !self.is_scoped() {
            return;
        }
        for op in ops {
            let key = RecordKey::new(op.collection.clone(), op.record);
            if op.kind == OpKind::Delete {
                self.held.remove(&key);
            } else {
                self.held.insert(key);
            }
        }
    }

    /// Counts what this side refused of the peer's operations and returns the rejections
    /// for its `Ack`. The operations that undo its writes carry null, not the value, in the
    /// fields it may not read (see [`ReadScope::blank_hidden`]).
    pub(super) fn refused_from_peer(
        &mut self,
        refused: Vec<(blazedb_core::OpId, WriteRefusal, Option<Operation>)>,
    ) -> Vec<Rejection> {
        self.ops_refused += refused.len() as u64;
        refused
            .into_iter()
            .map(|(op, refusal, undo)| {
                if let Some(undo) = undo.filter(|u| u.kind == OpKind::Update) {
                    self.blank_for_peer.insert(undo.id);
                }
                Rejection {
                    op,
                    code: refusal.code,
                    reason: refusal.reason,
                }
            })
            .collect()
    }

    // -- the receiving side ------------------------------------------------------------------

    /// The peer refused some of our operations in the range up to `position`: they go to
    /// the rejection inbox (the peer's undoing of them arrives as ordinary operations).
    pub(super) fn on_rejected(
        &mut self,
        log: &mut impl SessionLog,
        from: u64,
        position: u64,
        rejected: Vec<Rejection>,
    ) -> blazedb_core::Result<()> {
        let Some(peer) = self.peer else {
            return Ok(());
        };
        let own = log.node();
        let mut wanted: HashMap<u64, Rejection> = rejected
            .into_iter()
            .filter(|r| r.op.origin == own)
            .map(|r| (r.op.seq, r))
            .collect();
        let mut found = Vec::new();
        if !wanted.is_empty() {
            each_op_between(log, from, position, |_, op| {
                if op.id.origin == own
                    && let Some(r) = wanted.remove(&op.id.seq)
                {
                    found.push((op, r.code, r.reason));
                }
                !wanted.is_empty()
            })?;
        }
        self.rejections_received += found.len() as u64;
        log.reject(peer, &found)
    }

    /// Filtering messages change our records: a device's link may not send them.
    fn refuse_if_origin_only(&mut self, what: &str) -> bool {
        if let PeerTrust::Origin(node) = self.options.trust {
            self.close_with(
                CloseCode::Unauthorized,
                format!("node {node} may send only its own operations, not {what}"),
            );
            return true;
        }
        false
    }

    /// The peer's summary of what we may read: we answer with what we hold where ours
    /// differs.
    pub(super) fn on_reconcile(
        &mut self,
        log: &mut impl SessionLog,
        level: u8,
        buckets: Vec<u64>,
    ) -> blazedb_core::Result<()> {
        // A server never filters by what a device holds: a device that sends this would
        // only make it list its records.
        if self.refuse_if_origin_only("a Reconcile") || !self.options.mode.receives() {
            return Ok(());
        }
        let Some(theirs) = MembershipDigest::from_buckets(level, buckets) else {
            self.close_with(
                CloseCode::ProtocolError,
                "a Reconcile summary does not have 2^level buckets".into(),
            );
            return Ok(());
        };
        self.peer_filters = true;
        let keys = live_keys(log)?;
        let ours = MembershipDigest::of(level, &keys);
        let differing = ours.differing(&theirs).unwrap_or_default();
        let set: BTreeSet<usize> = differing.iter().copied().collect();
        let records = keys
            .into_iter()
            .filter(|k| set.contains(&MembershipDigest::bucket_at(level, k)))
            .collect();
        self.send(Message::Held {
            level,
            buckets: differing
                .into_iter()
                .filter_map(|b| u32::try_from(b).ok())
                .collect(),
            records,
        });
        Ok(())
    }

    /// Records that entered our scope: joined like snapshot records.
    pub(super) fn on_records(&mut self, log: &mut impl SessionLog, records: Vec<SnapshotRecord>) {
        if self.refuse_if_origin_only("record states") || !self.options.mode.receives() {
            return;
        }
        let Some(peer) = self.peer else { return };
        self.peer_filters = true;
        match log.apply_snapshot(peer, &records, None) {
            Ok(applied) => self.states_applied += applied as u64,
            Err(e @ blazedb_core::Error::InvalidSnapshot { .. }) => self.close_with(
                CloseCode::ProtocolError,
                format!("the peer sent an invalid record state: {e}"),
            ),
            Err(e) => self.internal_error(&e),
        }
    }

    /// Records that left our scope: removed, except those we changed that the peer has not
    /// acknowledged (it has not ruled on those writes yet; it sends them again if it keeps
    /// them from us).
    pub(super) fn on_purge(
        &mut self,
        log: &mut impl SessionLog,
        reason: PurgeReason,
        records: Vec<RecordKey>,
    ) -> blazedb_core::Result<()> {
        if self.refuse_if_origin_only("a purge") || !self.options.mode.receives() {
            return Ok(());
        }
        self.peer_filters = true;
        let pending = self.unacknowledged_own(log)?;
        let keys: Vec<RecordKey> = records
            .into_iter()
            .filter(|k| !pending.contains(k))
            .collect();
        self.records_purged += log.purge(&keys, reason)? as u64;
        Ok(())
    }

    /// The records our own operations after what the peer acknowledged touch.
    fn unacknowledged_own(
        &mut self,
        log: &mut impl SessionLog,
    ) -> blazedb_core::Result<HashSet<RecordKey>> {
        let mut pending = HashSet::new();
        if self.outbound.is_none() {
            return Ok(pending);
        }
        let own = log.node();
        let head = log.head();
        each_op_between(log, self.acked, head, |_, op| {
            if op.id.origin == own {
                pending.insert(RecordKey::new(op.collection, op.record));
            }
            true
        })?;
        Ok(pending)
    }

    /// For a peer that filters: every operation it left out of `ops`' range was not for us,
    /// so each origin counts as here up to its last operation in the batch (each origin's
    /// operations are in order in the peer's log).
    pub(super) fn covered_by(
        &self,
        own: blazedb_core::NodeId,
        ops: &[Operation],
    ) -> Option<VersionVector> {
        if !self.peer_filters {
            return None;
        }
        let mut covered = VersionVector::new();
        for op in ops {
            if op.id.origin != own {
                covered.observe_op(op.id);
            }
        }
        Some(covered)
    }
}
