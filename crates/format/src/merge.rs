//! The merge rules: a record's replicated state and how an operation changes it.
//!
//! A [`RecordState`] is a join-semilattice: applying the same set of operations in any order,
//! with any duplicates, gives the same state. See `docs/merge.md` for the rules with examples.
//!
//! * Every field is a last-writer-wins register ordered by [`Stamp`] (Lamport time, then node).
//! * `created` is the greatest insert stamp, `deleted` the greatest delete stamp. The record is
//!   visible while `created > deleted`.
//! * Delete wins over updates: an update never brings a deleted record back. Only an insert
//!   newer than the delete does, and an insert replaces the whole record: the visible fields are
//!   exactly those written at or after the newest insert.
//! * Registers that can never be visible again (older than `created`, or not newer than
//!   `deleted`) are dropped, so the state stays small and equal histories give equal bytes.

use std::collections::BTreeMap;

use crate::ids::Stamp;
use crate::operation::{OpKind, Operation};
use crate::value::{Fields, Value};

/// One field register: its value and the stamp of the write that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldState {
    pub value: Value,
    pub stamp: Stamp,
}

/// The full replicated state of one record, visible or not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordState {
    /// Stamp of the newest insert seen, if any.
    pub created: Option<Stamp>,
    /// Stamp of the newest delete seen, if any.
    pub deleted: Option<Stamp>,
    /// Field registers (only ones that can still be visible).
    pub fields: BTreeMap<String, FieldState>,
}

/// What applying one operation did to the visible record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The record was not visible and now is.
    Created,
    /// The record was visible and its visible fields changed.
    Updated,
    /// The record was visible and now is not.
    Deleted,
    /// Nothing visible changed (an older write lost, or the record stays hidden).
    None,
}

impl RecordState {
    /// The state of a record after just this insert.
    pub fn inserted(fields: Fields, stamp: Stamp) -> Self {
        RecordState {
            created: Some(stamp),
            deleted: None,
            fields: fields
                .into_iter()
                .map(|(name, value)| (name, FieldState { value, stamp }))
                .collect(),
        }
    }

    /// Is the record visible (inserted after its last delete)?
    pub fn is_visible(&self) -> bool {
        self.created > self.deleted
    }

    /// The visible fields, or `None` when the record is not visible.
    pub fn visible_fields(&self) -> Option<Fields> {
        if !self.is_visible() {
            return None;
        }
        Some(
            self.fields
                .iter()
                .map(|(k, f)| (k.clone(), f.value.clone()))
                .collect(),
        )
    }

    /// The visible value of one field.
    pub fn visible_field(&self, name: &str) -> Option<&Value> {
        if !self.is_visible() {
            return None;
        }
        self.fields.get(name).map(|f| &f.value)
    }

    /// Merges one operation into the state. Deterministic, commutative and idempotent.
    pub fn apply(&mut self, op: &Operation) -> Effect {
        let before = self.visible_fields();
        self.apply_parts(op.kind, &op.fields, op.stamp());
        self.effect_since(before)
    }

    /// What changed on the visible record since it showed `before`.
    fn effect_since(&self, before: Option<Fields>) -> Effect {
        match (before, self.visible_fields()) {
            (None, Some(_)) => Effect::Created,
            (Some(_), None) => Effect::Deleted,
            (Some(a), Some(b)) if !same_fields(&a, &b) => Effect::Updated,
            _ => Effect::None,
        }
    }

    fn apply_parts(&mut self, kind: OpKind, fields: &Fields, stamp: Stamp) {
        match kind {
            OpKind::Insert => {
                if self.created.is_none_or(|c| stamp > c) {
                    self.created = Some(stamp);
                }
                self.write_fields(fields, stamp);
            }
            OpKind::Update => self.write_fields(fields, stamp),
            OpKind::Delete => {
                if self.deleted.is_none_or(|d| stamp > d) {
                    self.deleted = Some(stamp);
                }
            }
        }
        self.prune();
    }

    fn write_fields(&mut self, fields: &Fields, stamp: Stamp) {
        for (name, value) in fields {
            match self.fields.get_mut(name) {
                Some(existing) if existing.stamp >= stamp => {}
                Some(existing) => {
                    existing.value = value.clone();
                    existing.stamp = stamp;
                }
                None => {
                    self.fields.insert(
                        name.clone(),
                        FieldState {
                            value: value.clone(),
                            stamp,
                        },
                    );
                }
            }
        }
    }

    /// Drops registers that can never be visible again.
    fn prune(&mut self) {
        let created = self.created;
        let deleted = self.deleted;
        self.fields.retain(|_, f| {
            let after_insert = created.is_none_or(|c| f.stamp >= c);
            let after_delete = deleted.is_none_or(|d| f.stamp > d);
            after_insert && after_delete
        });
    }

    /// Joins another replica's state of the same record into this one: the result is the
    /// state after the union of both histories (what applying every operation either side has
    /// seen would give). Returns the effect on the visible record, as [`RecordState::apply`].
    ///
    /// Each part is a `max` (`created`, `deleted`, and per field the register with the greater
    /// stamp), then the registers that can never be visible again are pruned as in `apply`.
    /// Pruning commutes with the union: a register one side pruned is older than that side's
    /// `created` or not newer than its `deleted`, so it would be pruned from the union too. So
    /// `join` is commutative, associative and idempotent, and joining the states of two
    /// histories gives the state of both histories applied.
    pub fn join(&mut self, other: &RecordState) -> Effect {
        let before = self.visible_fields();
        self.created = self.created.max(other.created);
        self.deleted = self.deleted.max(other.deleted);
        for (name, theirs) in &other.fields {
            match self.fields.get_mut(name) {
                // Equal stamps are the same write, so keeping ours is enough.
                Some(ours) if ours.stamp >= theirs.stamp => {}
                Some(ours) => *ours = theirs.clone(),
                None => {
                    self.fields.insert(name.clone(), theirs.clone());
                }
            }
        }
        self.prune();
        self.effect_since(before)
    }

    /// The greatest stamp in this state (for advancing a Lamport clock).
    pub fn max_stamp(&self) -> Option<Stamp> {
        let fields = self.fields.values().map(|f| f.stamp);
        self.created
            .into_iter()
            .chain(self.deleted)
            .chain(fields)
            .max()
    }
}

/// Are two field maps the same, bit for bit? `==` would call a NaN changed when nothing
/// happened (and `0.0` unchanged when it became `-0.0`), so doubles compare by their bits.
fn same_fields(a: &Fields, b: &Fields) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Map(x), Value::Map(y)) => same_fields(x, y),
        _ => a == b,
    }
}

/// One record of a snapshot: its collection, its id and its full replicated state (tombstones
/// included), so that a receiver can [`RecordState::join`] it into its own copy.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub collection: String,
    pub id: uuid::Uuid,
    pub state: RecordState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields;
    use crate::ids::{NodeId, OpId};
    use crate::value::Date;
    use uuid::Uuid;

    fn node(n: u8) -> NodeId {
        NodeId(Uuid::from_bytes([n; 16]))
    }

    fn op(kind: OpKind, lamport: u64, n: u8, fields: Fields) -> Operation {
        Operation {
            id: OpId {
                origin: node(n),
                seq: lamport,
            },
            lamport,
            wall: Date::from_unix_millis(0),
            kind,
            collection: "bugs".into(),
            record: Uuid::nil(),
            fields,
        }
    }

    #[test]
    fn newer_field_write_wins_and_older_loses() {
        let mut s = RecordState::default();
        s.apply(&op(OpKind::Insert, 1, 1, fields! {"a" => 1}));
        assert_eq!(
            s.apply(&op(OpKind::Update, 3, 2, fields! {"a" => 3})),
            Effect::Updated
        );
        assert_eq!(
            s.apply(&op(OpKind::Update, 2, 1, fields! {"a" => 2})),
            Effect::None
        );
        assert_eq!(s.visible_field("a"), Some(&Value::Int(3)));
    }

    #[test]
    fn equal_lamport_ties_break_on_node_id() {
        let mut a = RecordState::default();
        let mut b = RecordState::default();
        let base = op(OpKind::Insert, 1, 1, fields! {"a" => 0});
        let x = op(OpKind::Update, 5, 1, fields! {"a" => 1});
        let y = op(OpKind::Update, 5, 2, fields! {"a" => 2});
        for o in [&base, &x, &y] {
            a.apply(o);
        }
        for o in [&base, &y, &x] {
            b.apply(o);
        }
        assert_eq!(a, b);
        assert_eq!(a.visible_field("a"), Some(&Value::Int(2)));
    }

    #[test]
    fn delete_wins_over_a_concurrent_newer_update() {
        let mut s = RecordState::default();
        s.apply(&op(OpKind::Insert, 1, 1, fields! {"a" => 1}));
        assert_eq!(
            s.apply(&op(OpKind::Delete, 2, 1, fields! {})),
            Effect::Deleted
        );
        assert_eq!(
            s.apply(&op(OpKind::Update, 3, 2, fields! {"a" => 2})),
            Effect::None
        );
        assert!(!s.is_visible());
    }

    #[test]
    fn a_newer_insert_resurrects_with_only_its_own_fields() {
        let mut s = RecordState::default();
        s.apply(&op(OpKind::Insert, 1, 1, fields! {"a" => 1, "b" => 1}));
        s.apply(&op(OpKind::Delete, 2, 1, fields! {}));
        s.apply(&op(OpKind::Update, 3, 2, fields! {"b" => 2}));
        assert_eq!(
            s.apply(&op(OpKind::Insert, 4, 1, fields! {"c" => 4})),
            Effect::Created
        );
        assert_eq!(s.visible_fields(), Some(fields! {"c" => 4}));
    }

    #[test]
    fn an_insert_older_than_the_delete_stays_deleted() {
        let mut s = RecordState::default();
        s.apply(&op(OpKind::Delete, 5, 1, fields! {}));
        assert_eq!(
            s.apply(&op(OpKind::Insert, 4, 2, fields! {"a" => 1})),
            Effect::None
        );
        assert!(s.fields.is_empty());
    }

    fn state_of(ops: &[Operation]) -> RecordState {
        let mut s = RecordState::default();
        for o in ops {
            s.apply(o);
        }
        s
    }

    #[test]
    fn joining_concurrent_field_writes_keeps_the_newest_per_field() {
        let base = op(
            OpKind::Insert,
            1,
            1,
            fields! {"title" => "a", "status" => "open"},
        );
        let x = op(OpKind::Update, 2, 1, fields! {"status" => "closed"});
        let y = op(OpKind::Update, 2, 2, fields! {"status" => "wontfix"});
        let z = op(OpKind::Update, 3, 2, fields! {"title" => "b"});
        let mut a = state_of(&[base.clone(), x.clone()]);
        let b = state_of(&[base.clone(), y.clone(), z.clone()]);
        assert_eq!(a.join(&b), Effect::Updated);
        assert_eq!(a, state_of(&[base, x, y, z]));
        assert_eq!(
            a.visible_fields(),
            Some(fields! {"title" => "b", "status" => "wontfix"})
        );
    }

    #[test]
    fn joining_a_newer_delete_hides_the_record() {
        let insert = op(OpKind::Insert, 1, 1, fields! {"a" => 1});
        let mut a = state_of(std::slice::from_ref(&insert));
        let b = state_of(&[insert, op(OpKind::Delete, 2, 2, fields! {})]);
        assert_eq!(a.join(&b), Effect::Deleted);
        assert!(!a.is_visible());
        assert!(a.fields.is_empty(), "registers the delete hides are pruned");
    }

    #[test]
    fn joining_a_resurrecting_insert_shows_only_its_fields() {
        let mut a = state_of(&[
            op(OpKind::Insert, 1, 1, fields! {"a" => 1, "b" => 1}),
            op(OpKind::Delete, 2, 1, fields! {}),
        ]);
        let b = state_of(&[op(OpKind::Insert, 4, 2, fields! {"c" => 4})]);
        assert_eq!(a.join(&b), Effect::Created);
        assert_eq!(a.visible_fields(), Some(fields! {"c" => 4}));
        assert_eq!(a.deleted.map(|d| d.lamport), Some(2));
    }

    #[test]
    fn joining_an_older_or_equal_state_changes_nothing() {
        let insert = op(OpKind::Insert, 1, 1, fields! {"a" => 1});
        let older = state_of(std::slice::from_ref(&insert));
        let mut newer = state_of(&[insert, op(OpKind::Update, 2, 1, fields! {"a" => 2})]);
        let before = newer.clone();
        assert_eq!(newer.join(&older), Effect::None);
        assert_eq!(newer.join(&before), Effect::None);
        assert_eq!(newer, before);
        assert_eq!(newer.join(&RecordState::default()), Effect::None);
        assert_eq!(newer, before);
    }

    #[test]
    fn joining_into_an_empty_state_copies_it() {
        let b = state_of(&[op(OpKind::Update, 2, 1, fields! {"a" => 2})]);
        let mut a = RecordState::default();
        assert_eq!(a.join(&b), Effect::None, "an update alone is not visible");
        assert_eq!(a, b);
    }

    #[test]
    fn rewriting_a_nan_field_with_itself_is_no_visible_change() {
        let mut s = RecordState::default();
        s.apply(&op(OpKind::Insert, 1, 1, fields! {"a" => f64::NAN}));
        let effect = s.apply(&op(OpKind::Update, 2, 1, fields! {"a" => f64::NAN}));
        assert_eq!(effect, Effect::None);
        let effect = s.apply(&op(OpKind::Update, 3, 1, fields! {"a" => -f64::NAN}));
        assert_eq!(
            effect,
            Effect::Updated,
            "a NaN with another sign bit is another value"
        );
    }

    #[test]
    fn an_update_that_arrives_before_its_insert_is_kept() {
        let mut s = RecordState::default();
        assert_eq!(
            s.apply(&op(OpKind::Update, 2, 1, fields! {"a" => 2})),
            Effect::None
        );
        assert_eq!(
            s.apply(&op(OpKind::Insert, 1, 1, fields! {"a" => 1, "b" => 1})),
            Effect::Created
        );
        assert_eq!(s.visible_fields(), Some(fields! {"a" => 2, "b" => 1}));
    }
}
