//! Routing: which scoped connections a batch of new log entries concerns.
//!
//! Without it, every connection looks at every new entry: a server with 1,000 devices, each
//! reading one team's records, would decide 1,000 times per record that 980 of them get
//! nothing. A connection whose stream has caught up is instead *parked* (see
//! [`Session::routable`]), and the engine routes each new entry once: to the connections
//! whose scope may read the record now (connections with equal scopes form one group, so
//! the rule runs once per group), and to those that hold it (an index kept from their
//! [`Held`] journals; they may have to purge it or get its delete). Only those are pumped.
//! The others pass over the range later, in one step, as a pump would have
//! ([`Session::pass_over`]): nothing in it is for them.
//!
//! [`Session::routable`]: super::session::Session::routable
//! [`Session::pass_over`]: super::session::Session::pass_over
//! [`Held`]: super::session::Held

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use blazedb_access::ReadScope;
use blazedb_core::Uuid;
use blazedb_protocol::RecordKey;

use super::session::{HeldChange, Session, SessionLog};
use crate::relay::ConnectionId;

/// Most operations routed in one round: past it (a large transaction, a catch-up after a
/// stall), every parked connection is simply pumped.
const MAX_ROUTED_OPS: usize = 4 * super::MAX_BATCH_OPS;

/// Connections with the same read scope.
struct Group {
    scope: ReadScope,
    members: Vec<ConnectionId>,
}

/// Where one connection stands in the routing.
#[derive(Default)]
pub(super) struct Membership {
    /// Its group (none without a scope).
    group: Option<u64>,
    /// The session's `scope_changes` when it joined that group.
    scope_changes: u64,
}

impl Membership {
    /// Is the connection in a group (it has a scope)?
    pub(super) fn grouped(&self) -> bool {
        self.group.is_some()
    }
}

/// Which connections new log entries concern.
pub(super) enum Route {
    /// These connections (and no other parked one), each with the records that concern it.
    To(HashMap<ConnectionId, HashSet<Uuid>>),
    /// Every connection: the entries could not be routed (too many, or compacted).
    Everyone,
}

#[derive(Default)]
pub(super) struct Routing {
    groups: HashMap<u64, Group>,
    next_group: u64,
    /// Who holds each record, from the connections' [`Held`] journals.
    ///
    /// [`Held`]: super::session::Held
    holders: HashMap<RecordKey, Vec<ConnectionId>>,
    /// Entries up to here were routed: a parked connection whose stream stands before it
    /// has nothing in between.
    pub(super) routed_to: u64,
    /// Since when parked connections have ranges passed over that they have not been told
    /// of (see [`Session::pass_over`]).
    ///
    /// [`Session::pass_over`]: super::session::Session::pass_over
    pub(super) passed_over_since: Option<Instant>,
}

impl Routing {
    /// Takes note of what connection `id`'s session changed: the records its peer holds,
    /// and its scope.
    pub(super) fn note(&mut self, id: ConnectionId, at: &mut Membership, session: &mut Session) {
        for change in session.held.take_changes() {
            match change {
                HeldChange::Added(key) => self.holders.entry(key).or_default().push(id),
                HeldChange::Removed(key) => self.unhold(id, &key),
            }
        }
        if session.scope_changes != at.scope_changes || at.group.is_none() {
            at.scope_changes = session.scope_changes;
            self.regroup(id, at, session.options.scope.as_ref());
        }
    }

    fn unhold(&mut self, id: ConnectionId, key: &RecordKey) {
        if let Some(holders) = self.holders.get_mut(key) {
            holders.retain(|h| *h != id);
            if holders.is_empty() {
                self.holders.remove(key);
            }
        }
    }

    /// Moves connection `id` to the group of `scope`.
    fn regroup(&mut self, id: ConnectionId, at: &mut Membership, scope: Option<&ReadScope>) {
        if let Some(old) = at.group.take() {
            if self
                .groups
                .get(&old)
                .is_some_and(|g| Some(&g.scope) == scope)
            {
                at.group = Some(old);
                return;
            }
            self.leave_group(id, old);
        }
        let Some(scope) = scope else {
            return;
        };
        let existing = self
            .groups
            .iter()
            .find(|(_, g)| g.scope == *scope)
            .map(|(gid, _)| *gid);
        let gid = existing.unwrap_or_else(|| {
            self.next_group += 1;
            self.groups.insert(
                self.next_group,
                Group {
                    scope: scope.clone(),
                    members: Vec::new(),
                },
            );
            self.next_group
        });
        if let Some(group) = self.groups.get_mut(&gid) {
            group.members.push(id);
        }
        at.group = Some(gid);
    }

    fn leave_group(&mut self, id: ConnectionId, gid: u64) {
        if let Some(group) = self.groups.get_mut(&gid) {
            group.members.retain(|m| *m != id);
            if group.members.is_empty() {
                self.groups.remove(&gid);
            }
        }
    }

    /// Connection `id` is gone.
    pub(super) fn remove(&mut self, id: ConnectionId, at: &Membership, session: &mut Session) {
        if let Some(gid) = at.group {
            self.leave_group(id, gid);
        }
        session.held.take_changes();
        let held: Vec<RecordKey> = session.held.keys().cloned().collect();
        for key in held {
            self.unhold(id, &key);
        }
    }

    /// Is any connection grouped by scope (so that routing can leave some out)?
    pub(super) fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    /// The connections that the entries after `routed_to`, up to the log's head, concern:
    /// the members of every group that may read a record they touch (as it is now), and
    /// the holders of those records. Moves `routed_to` to the end of what was read.
    pub(super) fn route(&mut self, log: &mut impl SessionLog) -> blazedb_core::Result<Route> {
        let mut keys = HashSet::new();
        let mut at = self.routed_to;
        let mut ops = 0;
        while at < log.head() {
            let Some(entries) = log.entries_after(at)? else {
                return Ok(self.give_up(log));
            };
            let Some(&(last, _)) = entries.last() else {
                break;
            };
            ops += entries.len();
            if ops > MAX_ROUTED_OPS {
                return Ok(self.give_up(log));
            }
            keys.extend(
                entries
                    .into_iter()
                    .map(|(_, op)| RecordKey::new(op.collection, op.record)),
            );
            at = last;
        }
        self.routed_to = self.routed_to.max(at);
        let mut to: HashMap<ConnectionId, HashSet<Uuid>> = HashMap::new();
        for key in keys {
            let mut concerns = |id: ConnectionId| {
                to.entry(id).or_default().insert(key.id);
            };
            if let Some(holders) = self.holders.get(&key) {
                holders.iter().copied().for_each(&mut concerns);
            }
            let view = log.record_view(&key)?;
            let Some(record) = view.as_ref().and_then(|v| v.record.as_ref()) else {
                continue;
            };
            for group in self.groups.values() {
                if group.scope.may_read_record(&key.collection, record) {
                    group.members.iter().copied().for_each(&mut concerns);
                }
            }
        }
        Ok(Route::To(to))
    }

    /// The entries cannot be routed: every connection looks at them itself.
    fn give_up(&mut self, log: &impl SessionLog) -> Route {
        self.routed_to = self.routed_to.max(log.head());
        Route::Everyone
    }
}
