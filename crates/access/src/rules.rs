//! The rules file: per role, per collection, a `read` filter, a `write` filter and
//! `hidden_fields` (see docs/access.md).
//!
//! ```toml
//! [roles.developer.bugs]
//! read  = { teamId = { "$in" = "$teams" } }
//! write = { teamId = { "$in" = "$teams" } }
//! hidden_fields = ["auditLog"]
//! ```
//!
//! A role or collection the file does not name sees nothing and writes nothing. `read` and
//! `write` default to `false` (nothing), `hidden_fields` to none.
//!
//! A collection may be declared end-to-end encrypted; its values are then sealed on the
//! devices, and rules on it may read only the record id and the fields it keeps in clear:
//!
//! ```toml
//! [collections.bugs]
//! mode = "e2e"
//! routing_fields = ["teamId"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use blazedb_core::{Filter, Record, RejectCode, Value};
use serde_json::{Map, Value as Json};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use unicode_normalization::UnicodeNormalization;

use crate::context::SecurityContext;
use crate::filter::{FilterTemplate, PathSegment, toml_key, toml_string, write_array};
use crate::json;

const COLLECTION_KEYS: &str = "read, write, hidden_fields";
const SETTINGS_KEYS: &str = "mode, routing_fields";
const TOP_KEYS: &str = "roles, collections";

/// Why a rules file is refused: always with the line (and column, both from 1) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// Not valid TOML.
    #[error("line {line}, column {column}: invalid TOML: {reason}")]
    Syntax {
        line: usize,
        column: usize,
        reason: String,
    },
    /// A key the format does not have (a typo, or a misplaced table).
    #[error("line {line}, column {column}: unknown key {key:?} in {place} (expected {expected})")]
    UnknownKey {
        line: usize,
        column: usize,
        key: String,
        place: String,
        expected: &'static str,
    },
    /// A value of the wrong kind.
    #[error("line {line}, column {column}: {place} must be {expected}, found {found}")]
    WrongType {
        line: usize,
        column: usize,
        place: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A filter that does not parse: unknown operator, unknown variable, bad value.
    #[error("line {line}, column {column}: {place}: {reason}")]
    Filter {
        line: usize,
        column: usize,
        place: String,
        reason: String,
    },
    /// A value of the right kind that cannot be used (an empty name, hiding `id`).
    #[error("line {line}, column {column}: {place}: {reason}")]
    Invalid {
        line: usize,
        column: usize,
        place: String,
        reason: String,
    },
}

impl RulesError {
    /// The line (from 1) of the mistake.
    pub fn line(&self) -> usize {
        match self {
            RulesError::Syntax { line, .. }
            | RulesError::UnknownKey { line, .. }
            | RulesError::WrongType { line, .. }
            | RulesError::Filter { line, .. }
            | RulesError::Invalid { line, .. } => *line,
        }
    }
}

/// The rules of one role for one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRule {
    read: FilterTemplate,
    write: FilterTemplate,
    hidden_fields: BTreeSet<String>,
}

impl CollectionRule {
    /// Which records the role reads.
    pub fn read(&self) -> &FilterTemplate {
        &self.read
    }
    /// Which records the role writes (checked before and after each write).
    pub fn write(&self) -> &FilterTemplate {
        &self.write
    }
    /// Fields that never reach the role and that it cannot write.
    pub fn hidden_fields(&self) -> impl Iterator<Item = &str> {
        self.hidden_fields.iter().map(String::as_str)
    }
}

/// What one context may do in one collection: the rules bound to its variables.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CollectionScope {
    /// The records it reads.
    pub read: Filter,
    /// The records it writes; `None` when it writes nothing.
    pub write: Option<Filter>,
    /// Fields removed from what it reads, and refused in what it writes.
    pub hidden_fields: Vec<String>,
}

/// How a collection's values travel and rest on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CollectionMode {
    /// The server reads the values (it validates, filters and queries them): the default.
    #[default]
    Smart,
    /// Values are sealed on the devices (docs/e2e.md); the server sees only the record id,
    /// the stamps and the routing fields.
    E2e,
}

impl CollectionMode {
    /// The name in the rules file.
    pub fn name(self) -> &'static str {
        match self {
            CollectionMode::Smart => "smart",
            CollectionMode::E2e => "e2e",
        }
    }
}

/// What the rules file says of one collection (`[collections.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CollectionSettings {
    mode: CollectionMode,
    routing_fields: BTreeSet<String>,
}

impl CollectionSettings {
    pub fn mode(&self) -> CollectionMode {
        self.mode
    }

    /// Fields kept in clear in an e2e collection, for rules and routing.
    pub fn routing_fields(&self) -> impl Iterator<Item = &str> {
        self.routing_fields.iter().map(String::as_str)
    }

    /// Settings of the given mode and routing fields.
    pub fn new(mode: CollectionMode, routing_fields: impl IntoIterator<Item = String>) -> Self {
        CollectionSettings {
            mode,
            routing_fields: routing_fields.into_iter().collect(),
        }
    }

    /// Is `field` a routing field?
    pub fn is_routing_field(&self, field: &str) -> bool {
        self.routing_fields.contains(field)
    }

    /// The fields of `filter` an e2e collection seals (none in smart mode).
    fn sealed_fields<'f>(&self, filter: &'f FilterTemplate) -> Vec<&'f str> {
        if self.mode != CollectionMode::E2e {
            return Vec::new();
        }
        filter
            .fields()
            .into_iter()
            .filter(|f| *f != "id" && !self.routing_fields.contains(*f))
            .collect()
    }
}

/// The access rules of one hosted database. See the crate documentation for an example.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rules {
    roles: BTreeMap<String, BTreeMap<String, CollectionRule>>,
    collections: BTreeMap<String, CollectionSettings>,
}

impl Rules {
    /// Parses and validates a rules file.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let doc = DeTable::parse(text).map_err(|e| {
            let (line, column) = position(text, e.span().map_or(0, |s| s.start));
            RulesError::Syntax {
                line,
                column,
                reason: e.message().trim().to_owned(),
            }
        })?;
        let at = |span: Range<usize>| position(text, span.start);
        let mut rules = Rules::default();
        // Collections first, wherever they are in the file: the roles' rules are checked
        // against their modes.
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "collections" => rules.collections = collection_settings(text, value)?,
                "roles" => {}
                _ => return Err(unknown_key(at(key.span()), key, "the file", TOP_KEYS)),
            }
        }
        for (key, value) in doc.get_ref().iter() {
            if key.get_ref() != "roles" {
                continue;
            }
            let roles = table(value, "roles", "a table of roles", at)?;
            for (role, value) in roles.iter() {
                let place = format!("[roles.{}]", dotted(&[role.get_ref()]));
                check_name(role, "a role name", &place, at)?;
                // The server keeps role names in NFKC form (look-alikes are one name), so a
                // rule must name a role the same way to ever apply.
                let role_name: String = role.get_ref().nfkc().collect();
                if rules.roles.contains_key(&role_name) {
                    let (line, column) = at(role.span());
                    return Err(RulesError::Invalid {
                        line,
                        column,
                        place,
                        reason: format!(
                            "the role {role_name:?} is named twice (role names are compared in \
                             Unicode NFKC form)"
                        ),
                    });
                }
                let collections = table(value, &place, "a table of collections", at)?;
                let mut per_collection = BTreeMap::new();
                for (collection, value) in collections.iter() {
                    let place = format!(
                        "[roles.{}]",
                        dotted(&[role.get_ref(), collection.get_ref()])
                    );
                    check_name(collection, "a collection name", &place, at)?;
                    let settings = rules.collections.get(collection.get_ref().as_ref());
                    let rule = collection_rule(text, value, &place, collection, settings)?;
                    per_collection.insert(collection.get_ref().to_string(), rule);
                }
                rules.roles.insert(role_name, per_collection);
            }
        }
        Ok(rules)
    }

    /// The canonical text of these rules (what `admin access show` prints); parsing it gives
    /// rules equal to these.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for (collection, settings) in &self.collections {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("[collections.");
            out.push_str(&dotted(&[collection]));
            out.push_str("]\n");
            out.push_str(&format!("mode = \"{}\"\n", settings.mode.name()));
            if !settings.routing_fields.is_empty() {
                out.push_str("routing_fields = ");
                let fields: Vec<&str> = settings.routing_fields().collect();
                write_array(&mut out, &fields, |out, f| toml_string(out, f));
                out.push('\n');
            }
        }
        for (role, collections) in &self.roles {
            for (collection, rule) in collections {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str("[roles.");
                out.push_str(&dotted(&[role, collection]));
                out.push_str("]\n");
                out.push_str(&format!("read = {}\n", rule.read));
                out.push_str(&format!("write = {}\n", rule.write));
                if !rule.hidden_fields.is_empty() {
                    out.push_str("hidden_fields = ");
                    let fields: Vec<&str> = rule.hidden_fields().collect();
                    write_array(&mut out, &fields, |out, f| toml_string(out, f));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// How `collection`'s values travel and rest (smart unless the file says otherwise).
    pub fn mode(&self, collection: &str) -> CollectionMode {
        self.collections
            .get(collection)
            .map_or(CollectionMode::Smart, |s| s.mode)
    }

    /// Declares `collection` with `settings` (the default settings remove a declaration).
    /// Check the result by parsing its [`Rules::to_toml`]: a rule may now read a field the
    /// collection seals.
    pub fn declare(&mut self, collection: &str, settings: CollectionSettings) {
        if settings == CollectionSettings::default() {
            self.collections.remove(collection);
        } else {
            self.collections.insert(collection.to_owned(), settings);
        }
    }

    /// What the file says of `collection`, if it declares it.
    pub fn settings(&self, collection: &str) -> Option<&CollectionSettings> {
        self.collections.get(collection)
    }

    /// What the file says of each collection it declares (`[collections.NAME]`), by name.
    pub fn collection_settings(&self) -> impl Iterator<Item = (&str, &CollectionSettings)> {
        self.collections.iter().map(|(c, s)| (c.as_str(), s))
    }

    /// Has no role any rule? (Then nobody reads or writes anything.)
    pub fn is_empty(&self) -> bool {
        self.roles.values().all(BTreeMap::is_empty)
    }

    /// The roles named, sorted.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The collections `role` has rules for, with the rules, sorted by name.
    pub fn collections_of(&self, role: &str) -> impl Iterator<Item = (&str, &CollectionRule)> {
        self.roles
            .get(role)
            .into_iter()
            .flat_map(|c| c.iter().map(|(name, rule)| (name.as_str(), rule)))
    }

    /// The rule of `role` for `collection`, if the file names it.
    pub fn rule(&self, role: &str, collection: &str) -> Option<&CollectionRule> {
        self.roles.get(role)?.get(collection)
    }

    /// What `ctx` may do in `collection`; `None` when its role does not name the collection
    /// (it sees nothing there and writes nothing).
    pub fn scope_for(&self, ctx: &SecurityContext, collection: &str) -> Option<CollectionScope> {
        let rule = self.rule(&ctx.role, collection)?;
        Some(CollectionScope {
            read: rule.read.bind(ctx),
            write: (!rule.write.is_nothing()).then(|| rule.write.bind(ctx)),
            hidden_fields: rule.hidden_fields.iter().cloned().collect(),
        })
    }

    /// May `ctx` read `record` of `collection`?
    pub fn may_read(&self, ctx: &SecurityContext, collection: &str, record: &Record) -> bool {
        self.rule(&ctx.role, collection)
            .is_some_and(|rule| rule.read.bind(ctx).matches(record))
    }

    /// Checks a write that turns `before` (`None` for an insert) into `after` (`None` for a
    /// delete), setting `written_fields`: the collection must be writable for the role, no
    /// written field hidden, and the write filter must match the state before (update,
    /// delete) and after (insert, update). A refusal carries the code and the reason the
    /// server sends back; the reason names only what the writer itself wrote, never a value
    /// it may not read.
    pub fn check_write(
        &self,
        ctx: &SecurityContext,
        collection: &str,
        before: Option<&Record>,
        after: Option<&Record>,
        written_fields: &[&str],
    ) -> Result<(), WriteRefusal> {
        let rule = self
            .rule(&ctx.role, collection)
            .filter(|r| !r.write.is_nothing());
        let filter = rule.map(|r| r.write.bind(ctx));
        let bound = rule
            .zip(filter.as_ref())
            .map(|(r, f)| (f, &r.hidden_fields));
        check_bound(&ctx.role, collection, bound, before, after, written_fields)
    }
}

/// [`Rules::check_write`] with the role's rule for the collection already bound: its write
/// filter and hidden fields, `None` when the role may not write the collection.
pub(crate) fn check_bound(
    role: &str,
    collection: &str,
    rule: Option<(&Filter, &BTreeSet<String>)>,
    before: Option<&Record>,
    after: Option<&Record>,
    written_fields: &[&str],
) -> Result<(), WriteRefusal> {
    let refuse = |code, reason: String| Err(WriteRefusal { code, reason });
    let Some((filter, hidden)) = rule else {
        return refuse(
            RejectCode::ReadOnly,
            format!("the collection {collection:?} is read-only for the role {role:?}"),
        );
    };
    if let Some(field) = written_fields.iter().find(|f| hidden.contains(**f)) {
        return refuse(
            RejectCode::HiddenField,
            format!("the field {field:?} of {collection:?} is hidden from the role {role:?}"),
        );
    }
    let outside = |what| {
        refuse(
            RejectCode::Forbidden,
            format!(
                "the record {what} is outside what the role {role:?} may write in {collection:?}"
            ),
        )
    };
    match (before, after) {
        (None, None) => outside("(neither before nor after the write)"),
        (Some(r), _) if !filter.matches(r) => outside("as it was"),
        (_, Some(r)) if !filter.matches(r) => outside("as written"),
        _ => Ok(()),
    }
}

/// Why a write is refused ([`Rules::check_write`]): what the server tells the writer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
#[non_exhaustive]
pub struct WriteRefusal {
    pub code: RejectCode,
    pub reason: String,
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// Line and column (from 1, the column in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// `a.b` with each key quoted when it must be.
fn dotted(keys: &[&str]) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        toml_key(&mut out, k);
    }
    out
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn unknown_key(
    (line, column): (usize, usize),
    key: &Spanned<std::borrow::Cow<'_, str>>,
    place: &str,
    expected: &'static str,
) -> RulesError {
    RulesError::UnknownKey {
        line,
        column,
        key: key.get_ref().to_string(),
        place: place.to_owned(),
        expected,
    }
}

fn table<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    place: &str,
    expected: &'static str,
    at: impl Fn(Range<usize>) -> (usize, usize),
) -> Result<&'a DeTable<'i>, RulesError> {
    match value.get_ref() {
        DeValue::Table(t) => Ok(t),
        other => {
            let (line, column) = at(value.span());
            Err(RulesError::WrongType {
                line,
                column,
                place: place.to_owned(),
                expected,
                found: kind(other),
            })
        }
    }
}

fn check_name(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    what: &str,
    place: &str,
    at: impl Fn(Range<usize>) -> (usize, usize),
) -> Result<(), RulesError> {
    if !name.get_ref().trim().is_empty() {
        return Ok(());
    }
    let (line, column) = at(name.span());
    Err(RulesError::Invalid {
        line,
        column,
        place: place.to_owned(),
        reason: format!("{what} cannot be empty"),
    })
}

/// The `[collections]` table: per collection, its mode and routing fields.
fn collection_settings(
    text: &str,
    value: &Spanned<DeValue<'_>>,
) -> Result<BTreeMap<String, CollectionSettings>, RulesError> {
    let at = |span: Range<usize>| position(text, span.start);
    let mut out = BTreeMap::new();
    for (collection, value) in table(value, "collections", "a table of collections", at)?.iter() {
        let place = format!("[collections.{}]", dotted(&[collection.get_ref()]));
        check_name(collection, "a collection name", &place, at)?;
        let entries = table(value, &place, "a table of mode and routing_fields", at)?;
        let mut settings = CollectionSettings::default();
        for (key, value) in entries.iter() {
            let name = key.get_ref().as_ref();
            let here = format!("{place} {name}");
            match name {
                "mode" => {
                    settings.mode = match value.get_ref() {
                        DeValue::String(s) if s == "smart" => CollectionMode::Smart,
                        DeValue::String(s) if s == "e2e" => CollectionMode::E2e,
                        other => {
                            let (line, column) = at(value.span());
                            return Err(RulesError::WrongType {
                                line,
                                column,
                                place: here,
                                expected: "\"smart\" or \"e2e\"",
                                found: kind(other),
                            });
                        }
                    }
                }
                "routing_fields" => {
                    settings.routing_fields =
                        field_names(text, value, &here, "the record id is always in clear")?;
                }
                _ => return Err(unknown_key(at(key.span()), key, &place, SETTINGS_KEYS)),
            }
        }
        out.insert(collection.get_ref().to_string(), settings);
    }
    Ok(out)
}

fn collection_rule(
    text: &str,
    value: &Spanned<DeValue<'_>>,
    place: &str,
    collection: &Spanned<std::borrow::Cow<'_, str>>,
    settings: Option<&CollectionSettings>,
) -> Result<CollectionRule, RulesError> {
    let at = |span: Range<usize>| position(text, span.start);
    let entries = table(value, place, "a table of read, write and hidden_fields", at)?;
    let mut rule = CollectionRule {
        read: FilterTemplate::nothing(),
        write: FilterTemplate::nothing(),
        hidden_fields: BTreeSet::new(),
    };
    for (key, value) in entries.iter() {
        let name = key.get_ref().as_ref();
        let here = format!("{place} {name}");
        match name {
            "read" | "write" => {
                let parsed = filter(text, value, &here)?;
                if let Some(settings) = settings
                    && let Some(sealed) = settings.sealed_fields(&parsed).first()
                {
                    let (line, column) = at(value.span());
                    let routing: Vec<&str> = settings.routing_fields().collect();
                    return Err(RulesError::Invalid {
                        line,
                        column,
                        place: here,
                        reason: format!(
                            "reads the field {sealed:?}, which collection {:?} seals end to \
                             end (mode = \"e2e\"): the server cannot read it. A rule there may \
                             read only the record id and the routing fields ({})",
                            collection.get_ref(),
                            if routing.is_empty() {
                                "none declared".to_owned()
                            } else {
                                routing.join(", ")
                            }
                        ),
                    });
                }
                if name == "read" {
                    rule.read = parsed;
                } else {
                    rule.write = parsed;
                }
            }
            "hidden_fields" => {
                rule.hidden_fields =
                    field_names(text, value, &here, "the record id cannot be hidden")?;
            }
            _ => return Err(unknown_key(at(key.span()), key, place, COLLECTION_KEYS)),
        }
    }
    Ok(rule)
}

/// An array of field names, none empty and none `id` (`id_reason` says why not).
fn field_names(
    text: &str,
    value: &Spanned<DeValue<'_>>,
    place: &str,
    id_reason: &'static str,
) -> Result<BTreeSet<String>, RulesError> {
    let wrong = |span: Range<usize>, found| {
        let (line, column) = position(text, span.start);
        RulesError::WrongType {
            line,
            column,
            place: place.to_owned(),
            expected: "an array of field names",
            found,
        }
    };
    let DeValue::Array(items) = value.get_ref() else {
        return Err(wrong(value.span(), kind(value.get_ref())));
    };
    let mut fields = BTreeSet::new();
    for item in items.iter() {
        let DeValue::String(name) = item.get_ref() else {
            return Err(wrong(item.span(), kind(item.get_ref())));
        };
        let reason = if name.is_empty() {
            Some("a field name cannot be empty")
        } else if name == "id" {
            Some(id_reason)
        } else {
            None
        };
        if let Some(reason) = reason {
            let (line, column) = position(text, item.span().start);
            return Err(RulesError::Invalid {
                line,
                column,
                place: place.to_owned(),
                reason: reason.to_owned(),
            });
        }
        fields.insert(name.to_string());
    }
    Ok(fields)
}

/// A `read` or `write` value: `false`, or a filter table.
fn filter(
    text: &str,
    value: &Spanned<DeValue<'_>>,
    place: &str,
) -> Result<FilterTemplate, RulesError> {
    let fail = |span: Range<usize>, reason: String| {
        let (line, column) = position(text, span.start);
        RulesError::Filter {
            line,
            column,
            place: place.to_owned(),
            reason,
        }
    };
    match value.get_ref() {
        DeValue::Boolean(false) => Ok(FilterTemplate::nothing()),
        DeValue::Table(_) => {
            let json = to_json(value).map_err(|(span, reason)| fail(span, reason))?;
            FilterTemplate::from_json(&json)
                .map_err(|e| fail(span_of(value, e.path()), e.to_string()))
        }
        other => {
            let (line, column) = position(text, value.span().start);
            Err(RulesError::WrongType {
                line,
                column,
                place: place.to_owned(),
                expected: "a filter table or false",
                found: kind(other),
            })
        }
    }
}

/// The span of the deepest value on `path` that exists.
fn span_of(value: &Spanned<DeValue<'_>>, path: &[PathSegment]) -> Range<usize> {
    let mut here = value;
    for segment in path {
        let next = match (here.get_ref(), segment) {
            (DeValue::Table(t), PathSegment::Key(k)) => {
                t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v)
            }
            (DeValue::Array(a), PathSegment::Index(i)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => here = v,
            None => break,
        }
    }
    here.span()
}

/// A TOML filter as the JSON document the filter language reads: tables are objects,
/// date-times are `{"$date": …}`, non-finite floats `{"$double": …}`.
fn to_json(value: &Spanned<DeValue<'_>>) -> Result<Json, (Range<usize>, String)> {
    Ok(match value.get_ref() {
        DeValue::String(s) => Json::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Json::Number(n.into()),
            Err(_) => {
                return Err((
                    value.span(),
                    format!("the integer {} does not fit in 64 bits", i.as_str()),
                ));
            }
        },
        DeValue::Float(f) => {
            let d: f64 = f.as_str().parse().map_err(|_| {
                (
                    value.span(),
                    format!("the float {} cannot be read", f.as_str()),
                )
            })?;
            json::from_value(&Value::Double(d))
        }
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(d) => json::single("$date", Json::String(d.to_string())),
        DeValue::Array(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        DeValue::Table(t) => {
            let mut map = Map::new();
            for (k, v) in t.iter() {
                map.insert(k.get_ref().to_string(), to_json(v)?);
            }
            Json::Object(map)
        }
    })
}
