//! [`ReadScope`]: what one connection's peer may read, the rules bound to its context, and
//! how the server cuts records and operations down to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blazedb_core::{
    Fields, Filter, OpKind, Operation, Record, RecordState, RejectCode, Uuid, Value,
};

use crate::context::SecurityContext;
use crate::rules::{CollectionMode, Rules, WriteRefusal, check_bound};

/// Which scope keys are current, for the sealed values of end-to-end collections: a
/// server's registry of published keys.
pub trait KeyCheck: Send + Sync + std::fmt::Debug {
    /// `Ok` when `key` (a sealed value's key id) is a current key of `scope` (named by
    /// [`blazedb_e2e::scope_of`]) in `collection`; else why not (rotated out, never
    /// published, another scope's).
    fn check(&self, collection: &str, scope: &str, key: [u8; 4]) -> Result<(), String>;
}

/// What a device may write: the rules in force bound to its context. The server checks
/// every operation a device sends with [`WriteScope::check`].
#[derive(Debug, Clone)]
pub struct WriteScope {
    rules: Arc<Rules>,
    ctx: SecurityContext,
    /// Per collection the role may write: its write filter bound to `ctx`, and the fields
    /// it may not write (bound once, not per operation).
    writable: BTreeMap<String, (Filter, BTreeSet<String>)>,
    /// The keys sealed values may be sealed under (none: any well-formed one).
    keys: Option<Arc<dyn KeyCheck>>,
}

impl PartialEq for WriteScope {
    fn eq(&self, other: &Self) -> bool {
        let same_keys = match (&self.keys, &other.keys) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.rules == other.rules && self.ctx == other.ctx && same_keys
    }
}

impl WriteScope {
    pub fn new(rules: Arc<Rules>, ctx: SecurityContext) -> WriteScope {
        let writable = rules
            .collections_of(&ctx.role)
            .filter(|(_, rule)| !rule.write().is_nothing())
            .map(|(collection, rule)| {
                let hidden = rule.hidden_fields().map(str::to_owned).collect();
                (collection.to_owned(), (rule.write().bind(&ctx), hidden))
            })
            .collect();
        WriteScope {
            rules,
            ctx,
            writable,
            keys: None,
        }
    }

    /// The rules this scope binds.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Is `collection` end to end (its values sealed, so the server cannot restore them)?
    pub fn is_sealed(&self, collection: &str) -> bool {
        self.rules.mode(collection) == CollectionMode::E2e
    }

    /// This scope, refusing sealed values under keys `keys` does not call current.
    pub fn with_key_check(mut self, keys: Arc<dyn KeyCheck>) -> WriteScope {
        self.keys = Some(keys);
        self
    }

    /// Checks `op` against the record's state here before it (`None`: never seen): the
    /// write rule must match the record as it was (update, delete) and as the operation
    /// leaves it (insert, update), and no field it writes may be hidden. The same answer as
    /// [`Rules::check_write`].
    pub fn check(&self, op: &Operation, before: Option<&RecordState>) -> Result<(), WriteRefusal> {
        self.check_leaving(op, before).map(|_| ())
    }

    /// Like [`WriteScope::check`]; an accepted operation also returns the record as it leaves
    /// it (`None`: deleted), for the caller to ask more of it (may the writer still read it?).
    pub fn check_leaving(
        &self,
        op: &Operation,
        before: Option<&RecordState>,
    ) -> Result<Option<Record>, WriteRefusal> {
        let record = |state: &RecordState| {
            state.visible_fields().map(|fields| Record {
                id: op.record,
                fields,
            })
        };
        let before_record = before.and_then(record);
        let after_record = if before.is_none() && op.kind == OpKind::Insert {
            // A new record is what the insert writes (the common case: no state to build).
            Some(Record {
                id: op.record,
                fields: op.fields.clone(),
            })
        } else {
            let mut after = before.cloned().unwrap_or_default();
            after.apply(op);
            record(&after)
        };
        let written: Vec<&str> = op.fields.keys().map(String::as_str).collect();
        if let Some(settings) = self
            .rules
            .settings(&op.collection)
            .filter(|s| s.mode() == CollectionMode::E2e)
            && let Some((field, _)) = op.fields.iter().find(|(field, value)| {
                !settings.is_routing_field(field)
                    && !matches!(value, Value::Bytes(b) if blazedb_e2e::SealedValue::is_sealed(b))
            })
        {
            return Err(WriteRefusal {
                code: RejectCode::NotSealed,
                reason: format!(
                    "the field {field:?} of {:?} is not sealed, and the collection is end to end: \
                     the server accepts only sealed values there",
                    op.collection
                ),
            });
        }
        let rule = self
            .writable
            .get(&op.collection)
            .map(|(filter, hidden)| (filter, hidden));
        check_bound(
            &self.ctx.role,
            &op.collection,
            rule,
            before_record.as_ref(),
            after_record.as_ref(),
            &written,
        )?;
        // Keys last: a write the rules refuse is refused for that, whatever it is sealed
        // under.
        if let (Some(keys), Some(settings), Some(record)) = (
            &self.keys,
            self.rules
                .settings(&op.collection)
                .filter(|s| s.mode() == CollectionMode::E2e),
            after_record.as_ref(),
        ) {
            // The scope the record is in once written: its values must be sealed under a
            // key of that scope (a member holding two teams' keys cannot seal one team's
            // record for the other).
            let routing: BTreeSet<String> = settings.routing_fields().map(str::to_owned).collect();
            let scope = blazedb_e2e::scope_of(&routing, |f| record.fields.get(f));
            for value in op.fields.values() {
                let Value::Bytes(bytes) = value else { continue };
                let Ok(sealed) = blazedb_e2e::SealedValue::decode(bytes) else {
                    continue;
                };
                if let Err(reason) = keys.check(&op.collection, &scope, sealed.key.0) {
                    return Err(WriteRefusal {
                        code: RejectCode::StaleKey,
                        reason,
                    });
                }
            }
        }
        Ok(after_record)
    }
}

/// What a device may read: per collection, a record filter and the fields it never sees.
/// A collection not named is invisible. Built by [`ReadScope::from_rules`]; a device's sync
/// policy can only narrow it ([`ReadScope::narrow`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadScope {
    collections: BTreeMap<String, CollectionView>,
    /// For collections not named: `None`, invisible (rules); `Some`, this view (a database
    /// without rules, where a device's policy narrows everything).
    others: Option<CollectionView>,
}

/// What a device asks for: some collections (or all but some), records matching a filter,
/// without some fields. It only ever narrows what the rules let it read; the server
/// intersects the two. Set it with `RemoteOptions::policy` (and change it while connected
/// with `RemoteSync::update_policy`), or `blazedb sync --collections … --where … --exclude-field …`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncPolicy {
    collections: Option<Vec<String>>,
    except: Vec<String>,
    filter: Option<(String, Filter)>,
    exclude_fields: Vec<String>,
}

impl SyncPolicy {
    /// Everything the rules allow.
    pub fn new() -> SyncPolicy {
        SyncPolicy::default()
    }

    /// Only these collections (an empty list asks for all).
    pub fn collections(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> SyncPolicy {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        self.collections = (!names.is_empty()).then_some(names);
        self
    }

    /// Not these collections.
    pub fn exclude_collections(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> SyncPolicy {
        self.except.extend(names.into_iter().map(Into::into));
        self.except.sort();
        self.except.dedup();
        self
    }

    /// Only records matching `filter`, in the language of `blazedb query --where` (for
    /// example `{"status": "open", "priority": {"$gte": 2}}`).
    pub fn filter_json(mut self, filter: &str) -> Result<SyncPolicy, PolicyError> {
        let json = crate::json::parse(filter).map_err(|e| PolicyError::Filter(e.to_string()))?;
        let parsed =
            crate::filter::parse_query(&json).map_err(|e| PolicyError::Filter(e.to_string()))?;
        self.filter = Some((filter.to_owned(), parsed));
        Ok(self)
    }

    /// The first (collection, field) where this policy's filter reads a field that an
    /// end-to-end collection it asks for seals under `rules`: the server sees only bytes
    /// there, so such a filter cannot mean what it says.
    pub fn reads_sealed_field(&self, rules: &Rules) -> Option<(String, String)> {
        let (_, filter) = self.filter.as_ref()?;
        let read = filter.fields();
        rules
            .collection_settings()
            .filter(|(c, s)| {
                s.mode() == CollectionMode::E2e
                    && self
                        .collections
                        .as_ref()
                        .is_none_or(|only| only.iter().any(|o| o == c))
                    && !self.except.iter().any(|e| e == c)
            })
            .find_map(|(c, s)| {
                read.iter()
                    .find(|f| **f != "id" && !s.is_routing_field(f))
                    .map(|f| (c.to_owned(), (*f).to_owned()))
            })
    }

    /// Without these fields (in every collection).
    pub fn exclude_fields(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> SyncPolicy {
        self.exclude_fields
            .extend(names.into_iter().map(Into::into));
        self.exclude_fields.sort();
        self.exclude_fields.dedup();
        self
    }

    /// Asks for nothing less than the rules allow?
    pub fn is_everything(&self) -> bool {
        self.collections.is_none()
            && self.except.is_empty()
            && self.filter.is_none()
            && self.exclude_fields.is_empty()
    }

    /// The collections asked for (`None`: all).
    pub fn only(&self) -> Option<&[String]> {
        self.collections.as_deref()
    }

    /// The collections left out.
    pub fn except(&self) -> &[String] {
        &self.except
    }

    /// The record filter as written.
    pub fn filter_text(&self) -> Option<&str> {
        self.filter.as_ref().map(|(text, _)| text.as_str())
    }

    /// The fields left out.
    pub fn excluded_fields(&self) -> &[String] {
        &self.exclude_fields
    }

    /// `scope` (what the rules allow; `None`: everything) narrowed by this policy.
    pub fn narrow(&self, scope: Option<&ReadScope>) -> ReadScope {
        let mut scope = scope.cloned().unwrap_or_else(ReadScope::everything);
        scope.narrow(
            self.collections.as_deref(),
            &self.except,
            self.filter.as_ref().map(|(_, f)| f),
            &self.exclude_fields,
        );
        scope
    }
}

/// A sync policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The record filter is not valid JSON or not a valid filter.
    #[error("invalid sync policy filter: {0}")]
    Filter(String),
}

/// One collection of a [`ReadScope`].
#[derive(Debug, Clone, PartialEq)]
struct CollectionView {
    read: Filter,
    hidden: BTreeSet<String>,
}

impl ReadScope {
    /// What `ctx` may read under `rules`: every collection its role names with a read filter
    /// that can match something.
    pub fn from_rules(rules: &Rules, ctx: &SecurityContext) -> ReadScope {
        let mut collections = BTreeMap::new();
        for (collection, rule) in rules.collections_of(&ctx.role) {
            if rule.read().is_nothing() {
                continue;
            }
            collections.insert(
                collection.to_owned(),
                CollectionView {
                    read: rule.read().bind(ctx),
                    hidden: rule.hidden_fields().map(str::to_owned).collect(),
                },
            );
        }
        ReadScope {
            collections,
            others: None,
        }
    }

    /// Every record of every collection, whole (a database without rules).
    pub fn everything() -> ReadScope {
        ReadScope {
            collections: BTreeMap::new(),
            others: Some(CollectionView {
                read: Filter::And(Vec::new()),
                hidden: BTreeSet::new(),
            }),
        }
    }

    /// The view of `collection`, if it is visible at all.
    fn view(&self, collection: &str) -> Option<&CollectionView> {
        self.collections.get(collection).or(self.others.as_ref())
    }

    /// Nothing at all (a revoked device, a role the rules do not name).
    pub fn nothing() -> ReadScope {
        ReadScope::default()
    }

    /// Narrows this scope: only the collections in `only` (all when `None`) and not in
    /// `except`, records that also match `filter`, and `exclude_fields` hidden too. Never
    /// widens.
    pub fn narrow(
        &mut self,
        only: Option<&[String]>,
        except: &[String],
        filter: Option<&Filter>,
        exclude_fields: &[String],
    ) {
        if let Some(only) = only {
            // Named collections the rules leave to `others` become named, so that the rest
            // can go.
            if let Some(others) = self.others.take() {
                for c in only {
                    self.collections
                        .entry(c.clone())
                        .or_insert_with(|| others.clone());
                }
            }
            self.collections.retain(|c, _| only.contains(c));
        }
        self.collections.retain(|c, _| !except.contains(c));
        if !except.is_empty()
            && let Some(others) = self.others.take()
        {
            // `others` stands for every unnamed collection, so the excluded ones need a
            // view of their own that reads nothing.
            self.others = Some(others);
            for c in except {
                self.collections.insert(
                    c.clone(),
                    CollectionView {
                        read: Filter::Or(Vec::new()),
                        hidden: BTreeSet::new(),
                    },
                );
            }
        }
        for view in self.collections.values_mut().chain(self.others.as_mut()) {
            if let Some(filter) = filter {
                view.read = view.read.clone().and(filter.clone());
            }
            view.hidden.extend(exclude_fields.iter().cloned());
        }
    }

    /// The collections the scope names, sorted (with [`ReadScope::everything`] as the
    /// start, others may be readable too: see [`ReadScope::reads_collection`]).
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(String::as_str)
    }

    /// May the peer read anything of `collection`?
    pub fn reads_collection(&self, collection: &str) -> bool {
        self.view(collection)
            .is_some_and(|v| v.read != Filter::Or(Vec::new()))
    }

    /// May the peer read this record (its fields as they are, hidden ones included)?
    pub fn may_read(&self, collection: &str, id: Uuid, fields: &Fields) -> bool {
        let Some(view) = self.view(collection) else {
            return false;
        };
        // `Filter::matches` takes a record; the clone is the price of the shared evaluator.
        view.read.matches(&Record {
            id,
            fields: fields.clone(),
        })
    }

    /// May the peer read `record` of `collection` (its fields as they are, hidden ones
    /// included)? Like [`ReadScope::may_read`], without copying the fields.
    pub fn may_read_record(&self, collection: &str, record: &Record) -> bool {
        self.view(collection)
            .is_some_and(|view| view.read.matches(record))
    }

    /// May the peer read the record whose replicated state is `state`? A deleted record is
    /// never readable.
    pub fn may_read_state(&self, collection: &str, id: Uuid, state: &RecordState) -> bool {
        state
            .visible_fields()
            .is_some_and(|fields| self.may_read(collection, id, &fields))
    }

    /// The fields of `collection` hidden from the peer, sorted.
    pub fn hidden_fields(&self, collection: &str) -> impl Iterator<Item = &str> {
        self.view(collection)
            .into_iter()
            .flat_map(|v| v.hidden.iter().map(String::as_str))
    }

    /// Is `field` of `collection` hidden from the peer?
    pub fn hides(&self, collection: &str, field: &str) -> bool {
        self.view(collection)
            .is_some_and(|v| v.hidden.contains(field))
    }

    /// `op` as the peer may see it: hidden fields removed. `None` when nothing is left for
    /// it (an update of hidden fields only). Whether the record is readable is the caller's
    /// question ([`ReadScope::may_read_state`]).
    pub fn strip_operation(&self, op: &Operation) -> Option<Operation> {
        if op.kind == OpKind::Delete {
            // Carries no field; a peer that holds the record (it wrote it) must lose it.
            return Some(op.clone());
        }
        let view = self.view(&op.collection)?;
        if view.hidden.is_empty() || !op.fields.keys().any(|f| view.hidden.contains(f)) {
            return Some(op.clone());
        }
        let mut stripped = op.clone();
        stripped
            .fields
            .retain(|name, _| !view.hidden.contains(name));
        if stripped.kind == OpKind::Update && stripped.fields.is_empty() {
            return None;
        }
        Some(stripped)
    }

    /// `op` with the values of hidden fields replaced by null: for the operation that undoes
    /// a refused write of the peer, which must overwrite what the peer wrote into a field it
    /// may not read without telling it the value.
    pub fn blank_hidden(&self, op: &Operation) -> Operation {
        let mut blanked = op.clone();
        if let Some(view) = self.view(&op.collection) {
            for (name, value) in &mut blanked.fields {
                if view.hidden.contains(name) {
                    *value = Value::Null;
                }
            }
        }
        blanked
    }

    /// A record's state as the peer may see it: the registers of hidden fields removed.
    pub fn strip_state(&self, collection: &str, state: &RecordState) -> RecordState {
        let mut stripped = state.clone();
        if let Some(view) = self.view(collection) {
            stripped
                .fields
                .retain(|name, _| !view.hidden.contains(name));
        }
        stripped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use blazedb_core::{Date, NodeId, OpId, fields};

    use super::*;

    const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
hidden_fields = ["auditLog"]

[roles.developer.reports]
read = false
write = {}
"#;

    fn alice() -> ReadScope {
        let rules = Rules::parse(RULES).unwrap();
        ReadScope::from_rules(
            &rules,
            &SecurityContext::new("alice", ["ios"], "developer", "d1"),
        )
    }

    fn op(kind: OpKind, fields: Fields) -> Operation {
        Operation {
            id: OpId {
                origin: NodeId(Uuid::from_bytes([1; 16])),
                seq: 1,
            },
            lamport: 1,
            wall: Date::from_unix_millis(0),
            kind,
            collection: "bugs".into(),
            record: Uuid::from_bytes([2; 16]),
            fields,
        }
    }

    #[test]
    fn a_scope_reads_only_what_its_role_may_read() {
        let scope = alice();
        let id = Uuid::from_bytes([3; 16]);
        assert!(scope.may_read("bugs", id, &fields! { "teamId" => "ios" }));
        assert!(!scope.may_read("bugs", id, &fields! { "teamId" => "android" }));
        // Writable but not readable: not in the scope.
        assert!(!scope.reads_collection("reports"));
        assert!(!scope.may_read("comments", id, &fields! {}));
        assert_eq!(scope.collections().collect::<Vec<_>>(), ["bugs"]);
    }

    #[test]
    fn hidden_fields_are_stripped_from_operations_and_states() {
        let scope = alice();
        let insert = op(
            OpKind::Insert,
            fields! { "teamId" => "ios", "auditLog" => "secret" },
        );
        let stripped = scope.strip_operation(&insert).unwrap();
        assert_eq!(stripped.fields, fields! { "teamId" => "ios" });
        // An update of hidden fields only leaves nothing to send.
        assert!(
            scope
                .strip_operation(&op(OpKind::Update, fields! { "auditLog" => "x" }))
                .is_none()
        );
        // A delete carries no fields and goes as it is.
        let delete = op(OpKind::Delete, fields! {});
        assert_eq!(scope.strip_operation(&delete), Some(delete));

        let mut state = RecordState::default();
        state.apply(&insert);
        let stripped = scope.strip_state("bugs", &state);
        assert!(stripped.fields.contains_key("teamId"));
        assert!(!stripped.fields.contains_key("auditLog"));
        assert!(scope.may_read_state("bugs", insert.record, &state));
    }

    #[test]
    fn a_write_scope_answers_as_the_rules_do() {
        let rules = Arc::new(Rules::parse(RULES).unwrap());
        let ctx = SecurityContext::new("alice", ["ios"], "developer", "d1");
        let scope = WriteScope::new(rules.clone(), ctx.clone());
        let mut ios = RecordState::default();
        ios.apply(&op(OpKind::Insert, fields! { "teamId" => "ios" }));
        let cases = [
            (op(OpKind::Insert, fields! { "teamId" => "ios" }), None),
            (op(OpKind::Insert, fields! { "teamId" => "android" }), None),
            (
                Operation {
                    lamport: 2,
                    ..op(OpKind::Update, fields! { "teamId" => "android" })
                },
                Some(&ios),
            ),
            (op(OpKind::Update, fields! { "title" => "x" }), Some(&ios)),
            (
                op(OpKind::Update, fields! { "auditLog" => "x" }),
                Some(&ios),
            ),
            (op(OpKind::Delete, fields! {}), Some(&ios)),
            (
                Operation {
                    collection: "comments".into(),
                    ..op(OpKind::Insert, fields! { "text" => "hi" })
                },
                None,
            ),
        ];
        let record =
            |state: &RecordState, id| state.visible_fields().map(|fields| Record { id, fields });
        let mut outcomes = Vec::new();
        for (op, before) in cases {
            let mut after = before.cloned().unwrap_or_default();
            after.apply(&op);
            let written: Vec<&str> = op.fields.keys().map(String::as_str).collect();
            let expected = rules.check_write(
                &ctx,
                &op.collection,
                before.and_then(|b| record(b, op.record)).as_ref(),
                record(&after, op.record).as_ref(),
                &written,
            );
            let got = scope.check(&op, before);
            assert_eq!(got, expected, "{op:?}");
            outcomes.push(got.map_err(|r| r.code));
        }
        use blazedb_core::RejectCode::*;
        assert_eq!(
            outcomes,
            [
                Ok(()),
                Err(Forbidden),
                Err(Forbidden),
                Ok(()),
                Err(HiddenField),
                Ok(()),
                Err(ReadOnly)
            ]
        );
    }

    #[test]
    fn narrowing_never_widens() {
        let mut scope = alice();
        scope.narrow(
            Some(&["bugs".to_owned(), "reports".to_owned()]),
            &[],
            Some(&Filter::eq("status", "open")),
            &["title".to_owned()],
        );
        let id = Uuid::from_bytes([3; 16]);
        assert!(!scope.reads_collection("reports"));
        assert!(scope.may_read(
            "bugs",
            id,
            &fields! { "teamId" => "ios", "status" => "open" }
        ));
        assert!(!scope.may_read(
            "bugs",
            id,
            &fields! { "teamId" => "ios", "status" => "done" }
        ));
        assert!(!scope.may_read(
            "bugs",
            id,
            &fields! { "teamId" => "android", "status" => "open" }
        ));
        assert!(scope.hides("bugs", "title") && scope.hides("bugs", "auditLog"));
    }
}
