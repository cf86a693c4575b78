//! The filter language: Mongo-style JSON filters mapped to core [`Filter`]s.
//!
//! `{"status": "open", "priority": {"$gt": 2}}` is `status = "open" AND priority > 2`. Values
//! use the JSON mapping of [`crate::json`]; on the field `"id"` a UUID string is read as a UUID.
//! Several entries of one object are combined with AND; `{}` matches everything.
//!
//! Two dialects share this parser:
//! * queries (`blazedb query --where`, [`parse_query`]): a string is always a string;
//! * rules ([`FilterTemplate`]): a string operand that starts with `$` is a context variable
//!   (`$user`, `$teams`, `$role`, `$device`), bound later by [`FilterTemplate::bind`]; a literal
//!   string starting with `$` is written `{"$literal": "$…"}`.
//!
//! Variables in rules:
//! * `$user`, `$role`, `$device` are strings, usable wherever a value is (`$eq`, `$ne`, `$gt`,
//!   `$gte`, `$lt`, `$lte`, `$contains`, a plain value, an element of `$in`).
//! * `$teams` is a list. `{"$in": "$teams"}` means "one of the user's teams"; inside an `$in`
//!   array it contributes every team (`{"$in": ["$teams", "public"]}`). Comparing with it
//!   (`{"team": "$teams"}`, `$eq`, `$ne`, ranges, `$contains`) is an error: equality with a list
//!   would silently match nothing, which is never what a rule means. A user in no team matches
//!   no `$in` over `$teams`.
//! * Variables are whole operands: a string starting with `$` inside an array or map value is
//!   refused (it would otherwise look like a variable that is not one).

use std::fmt::{self, Write as _};

use blazedb_core::{Filter, Value};
use serde_json::{Map, Value as Json};

use crate::context::SecurityContext;
use crate::json::{self, JsonError};

const OPERATORS: &str = "$eq, $ne, $gt, $gte, $lt, $lte, $in, $contains, $null";
const COMBINATORS: &str = "$and, $or, $not";
const VARIABLES: &str = "$user, $teams, $role, $device";

/// One step from a filter document's top into it: an object key (as written) or an array
/// index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Why a filter does not parse, and where in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Outermost first.
    path: Vec<PathSegment>,
    message: String,
}

impl FilterError {
    fn new(message: impl Into<String>) -> FilterError {
        FilterError {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn within(mut self, segment: PathSegment) -> FilterError {
        self.path.insert(0, segment);
        self
    }

    /// Where the mistake is: the keys and indexes leading to it from the filter's top.
    pub fn path(&self) -> &[PathSegment] {
        &self.path
    }
}

impl fmt::Display for FilterError {
    // The message already names the field; the path is for locating it (e.g. a TOML line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

/// A context variable of the rules dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Variable {
    /// `$user`: the user's name.
    User,
    /// `$teams`: the user's teams (a list).
    Teams,
    /// `$role`: the user's role.
    Role,
    /// `$device`: the device's fingerprint.
    Device,
}

impl Variable {
    /// Every variable.
    pub const ALL: [Variable; 4] = [
        Variable::User,
        Variable::Teams,
        Variable::Role,
        Variable::Device,
    ];

    /// The name as written in a rule, with its `$`.
    pub fn name(self) -> &'static str {
        match self {
            Variable::User => "$user",
            Variable::Teams => "$teams",
            Variable::Role => "$role",
            Variable::Device => "$device",
        }
    }

    fn from_name(name: &str) -> Option<Variable> {
        Variable::ALL.into_iter().find(|v| v.name() == name)
    }

    fn is_list(self) -> bool {
        self == Variable::Teams
    }

    fn scalar(self, ctx: &SecurityContext) -> &str {
        match self {
            Variable::User => &ctx.user,
            Variable::Role => &ctx.role,
            Variable::Device => &ctx.device,
            // Refused by the parser wherever a single value is expected.
            Variable::Teams => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Query,
    Rules,
}

/// A value an operator compares with: a constant, or a variable bound later.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Value(Value),
    Var(Variable),
}

/// A filter with unbound variables; mirrors [`Filter`] one to one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Eq(String, Operand),
    NotEq(String, Operand),
    Gt(String, Operand),
    Gte(String, Operand),
    Lt(String, Operand),
    Lte(String, Operand),
    In(String, Vec<Operand>),
    /// The operand is a string or a single-valued variable (the parser sees to it).
    Contains(String, Operand),
    IsNull(String),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// A parsed rule filter whose context variables are not bound yet. [`FilterTemplate::bind`]
/// turns it into a core [`Filter`] for one [`SecurityContext`].
///
/// ```
/// use blazedb_access::{FilterTemplate, SecurityContext};
/// use blazedb_core::{Filter, Value};
///
/// let template = FilterTemplate::parse_json(r#"{"teamId": {"$in": "$teams"}}"#)?;
/// let alice = SecurityContext::new("alice", ["ios"], "developer", "d1");
/// assert_eq!(template.bind(&alice), Filter::In("teamId".into(), vec![Value::from("ios")]));
/// # Ok::<(), blazedb_access::FilterError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FilterTemplate(pub(crate) Node);

impl FilterTemplate {
    /// Matches every record (`{}`).
    pub fn everything() -> FilterTemplate {
        FilterTemplate(Node::And(Vec::new()))
    }

    /// Matches no record (`false` in a rules file).
    pub fn nothing() -> FilterTemplate {
        FilterTemplate(Node::Or(Vec::new()))
    }

    /// Is this the template that matches no record?
    pub fn is_nothing(&self) -> bool {
        matches!(&self.0, Node::Or(list) if list.is_empty())
    }

    /// Parses a rule filter from JSON text.
    pub fn parse_json(text: &str) -> Result<FilterTemplate, FilterError> {
        let json = json::parse(text).map_err(|e| FilterError::new(e.to_string()))?;
        FilterTemplate::from_json(&json)
    }

    /// Parses a rule filter from a JSON document (variables allowed).
    pub fn from_json(json: &Json) -> Result<FilterTemplate, FilterError> {
        Parser {
            dialect: Dialect::Rules,
        }
        .node(json)
        .map(FilterTemplate)
    }

    /// The filter for one context: each variable replaced by its value.
    pub fn bind(&self, ctx: &SecurityContext) -> Filter {
        bind(&self.0, Some(ctx))
    }
}

impl FilterTemplate {
    /// The top-level fields the filter reads (the first part of each dotted path), sorted.
    pub fn fields(&self) -> std::collections::BTreeSet<&str> {
        fn walk<'a>(node: &'a Node, out: &mut std::collections::BTreeSet<&'a str>) {
            match node {
                Node::And(nodes) | Node::Or(nodes) => nodes.iter().for_each(|n| walk(n, out)),
                Node::Not(inner) => walk(inner, out),
                leaf_node => {
                    if let Some((field, _)) = leaf(leaf_node) {
                        out.insert(field.split('.').next().unwrap_or(field));
                    }
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(&self.0, &mut out);
        out
    }
}

impl fmt::Display for FilterTemplate {
    /// The canonical TOML form (an inline table, or `false` for [`FilterTemplate::nothing`]);
    /// parsing it gives the same template.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_nothing() {
            return f.write_str("false");
        }
        let mut out = String::new();
        write_node(&mut out, &self.0);
        f.write_str(&out)
    }
}

/// Parses a query filter (`--where`): no variables, every string is a string.
pub fn parse_query(json: &Json) -> Result<Filter, FilterError> {
    let node = Parser {
        dialect: Dialect::Query,
    }
    .node(json)?;
    Ok(bind(&node, None))
}

// --- parsing -------------------------------------------------------------------------------

struct Parser {
    dialect: Dialect,
}

fn unescape(key: &str) -> &str {
    match key.strip_prefix("$$") {
        Some(_) => key.get(1..).unwrap_or(key),
        None => key,
    }
}

/// Is this object an operator object (`{"$gt": 2, …}`) rather than a value?
fn is_operator_object(map: &Map<String, Json>) -> bool {
    map.keys().any(|k| {
        k.starts_with('$')
            && !k.starts_with("$$")
            && !matches!(k.as_str(), "$uuid" | "$date" | "$bytes" | "$double")
    })
}

fn is_literal(map: &Map<String, Json>) -> bool {
    map.len() == 1 && map.contains_key("$literal")
}

fn key(k: &str) -> PathSegment {
    PathSegment::Key(k.to_owned())
}

impl Parser {
    fn rules(&self) -> bool {
        self.dialect == Dialect::Rules
    }

    /// A filter from a JSON object; several entries are combined with AND.
    fn node(&self, json: &Json) -> Result<Node, FilterError> {
        let Json::Object(map) = json else {
            return Err(FilterError::new(format!(
                "a filter must be a JSON object, found {json}"
            )));
        };
        let mut parts = Vec::new();
        for (k, value) in map {
            let part = |e: FilterError| e.within(key(k));
            match k.as_str() {
                "$and" | "$or" => {
                    let Json::Array(items) = value else {
                        return Err(part(FilterError::new(format!(
                            "{k} takes an array of filters"
                        ))));
                    };
                    let list = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            self.node(item)
                                .map_err(|e| part(e.within(PathSegment::Index(i))))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(if k == "$and" {
                        Node::And(list)
                    } else {
                        Node::Or(list)
                    });
                }
                "$not" => parts.push(Node::Not(Box::new(self.node(value).map_err(part)?))),
                k if k.starts_with('$') && !k.starts_with("$$") => {
                    return Err(part(FilterError::new(format!(
                        "unknown operator {k:?} at the top of a filter (expected a field name or \
                         one of {COMBINATORS})"
                    ))));
                }
                _ => parts.extend(self.field_filters(unescape(k), value).map_err(part)?),
            }
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or(Node::And(Vec::new())),
            _ => Node::And(parts),
        })
    }

    fn field_filters(&self, field: &str, value: &Json) -> Result<Vec<Node>, FilterError> {
        let map = match value {
            Json::Object(map) if is_operator_object(map) && !(self.rules() && is_literal(map)) => {
                map
            }
            v => return Ok(vec![Node::Eq(field.into(), self.single(field, v)?)]),
        };
        let mut out = Vec::new();
        for (op, v) in map {
            let f = field.to_owned();
            let at = |e: FilterError| e.within(key(op));
            out.push(match op.as_str() {
                "$eq" => Node::Eq(f, self.single(field, v).map_err(at)?),
                "$ne" => Node::NotEq(f, self.single(field, v).map_err(at)?),
                "$gt" => Node::Gt(f, self.single(field, v).map_err(at)?),
                "$gte" => Node::Gte(f, self.single(field, v).map_err(at)?),
                "$lt" => Node::Lt(f, self.single(field, v).map_err(at)?),
                "$lte" => Node::Lte(f, self.single(field, v).map_err(at)?),
                "$in" => Node::In(f, self.in_list(field, v).map_err(at)?),
                "$contains" => Node::Contains(f, self.text(field, v).map_err(at)?),
                "$null" => match v {
                    Json::Bool(true) => Node::IsNull(f),
                    Json::Bool(false) => Node::Not(Box::new(Node::IsNull(f))),
                    _ => {
                        return Err(at(FilterError::new(format!(
                            "{field}: $null takes true or false"
                        ))));
                    }
                },
                other if other.starts_with('$') && !other.starts_with("$$") => {
                    return Err(at(FilterError::new(format!(
                        "{field}: unknown operator {other:?} (expected one of {OPERATORS})"
                    ))));
                }
                other => {
                    return Err(at(FilterError::new(format!(
                        "{field}: cannot mix operators and the plain key {other:?} in one object"
                    ))));
                }
            });
        }
        Ok(out)
    }

    /// The operand of `$in`: an array (whose `$teams` contributes every team) or `"$teams"`.
    fn in_list(&self, field: &str, v: &Json) -> Result<Vec<Operand>, FilterError> {
        match v {
            Json::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    self.operand(field, x)
                        .map_err(|e| e.within(PathSegment::Index(i)))
                })
                .collect(),
            Json::String(s) if self.rules() && s.starts_with('$') => {
                match self.operand(field, v)? {
                    Operand::Var(Variable::Teams) => Ok(vec![Operand::Var(Variable::Teams)]),
                    _ => Err(FilterError::new(format!(
                        "{field}: $in takes an array of values or \"$teams\", found {s:?}"
                    ))),
                }
            }
            _ => Err(FilterError::new(format!(
                "{field}: $in takes an array of values"
            ))),
        }
    }

    /// The operand of `$contains`: a string or a single-valued variable.
    fn text(&self, field: &str, v: &Json) -> Result<Operand, FilterError> {
        let is_text = match v {
            Json::String(_) => true,
            Json::Object(map) => self.rules() && is_literal(map),
            _ => false,
        };
        if !is_text {
            return Err(FilterError::new(format!(
                "{field}: $contains takes a string"
            )));
        }
        self.single(field, v)
    }

    /// An operand that must be one value (not the list `$teams`).
    fn single(&self, field: &str, v: &Json) -> Result<Operand, FilterError> {
        match self.operand(field, v)? {
            Operand::Var(var) if var.is_list() => Err(FilterError::new(format!(
                "{field}: {} is a list of names and cannot be compared with one value; \
                 write {{ \"$in\" = \"{}\" }} to match any of them",
                var.name(),
                var.name()
            ))),
            operand => Ok(operand),
        }
    }

    /// The value an operator compares with. On `"id"` a UUID string means the UUID.
    fn operand(&self, field: &str, v: &Json) -> Result<Operand, FilterError> {
        if self.rules() {
            match v {
                Json::String(s) if s.starts_with('$') => {
                    return Variable::from_name(s).map(Operand::Var).ok_or_else(|| {
                        FilterError::new(format!(
                            "{field}: unknown variable {s:?} (expected one of {VARIABLES}; write \
                             a literal string that starts with '$' as {{ \"$literal\" = {s:?} }})"
                        ))
                    });
                }
                Json::Object(map) if is_literal(map) => {
                    return match map.get("$literal") {
                        Some(Json::String(s)) => Ok(Operand::Value(Value::String(s.clone()))),
                        _ => Err(FilterError::new(format!(
                            "{field}: $literal takes a string"
                        ))),
                    };
                }
                Json::Array(_) | Json::Object(_) => no_nested_variables(field, v)?,
                _ => {}
            }
        }
        if field == "id"
            && let Json::String(s) = v
            && let Ok(u) = blazedb_core::Uuid::parse_str(s)
        {
            return Ok(Operand::Value(Value::Uuid(u)));
        }
        json::to_value(v)
            .map(Operand::Value)
            .map_err(|e: JsonError| FilterError::new(format!("{field}: {e}")))
    }
}

/// Refuses `$…` strings inside an array or map operand (variables are whole operands).
fn no_nested_variables(field: &str, v: &Json) -> Result<(), FilterError> {
    match v {
        Json::String(s) if s.starts_with('$') => Err(FilterError::new(format!(
            "{field}: {s:?} inside an array or map value: variables are whole operands, and a \
             string starting with '$' is only allowed as a whole operand"
        ))),
        Json::Array(items) => items.iter().try_for_each(|x| no_nested_variables(field, x)),
        // Typed forms (`{"$date": "…"}`) hold no strings that could be variables.
        Json::Object(map) => map
            .iter()
            .filter(|(k, _)| !k.starts_with('$') || k.starts_with("$$"))
            .try_for_each(|(_, x)| no_nested_variables(field, x)),
        _ => Ok(()),
    }
}

// --- binding -------------------------------------------------------------------------------

fn bind_value(operand: &Operand, ctx: Option<&SecurityContext>) -> Value {
    match (operand, ctx) {
        (Operand::Value(v), _) => v.clone(),
        (Operand::Var(var), Some(ctx)) => Value::String(var.scalar(ctx).to_owned()),
        // Only queries bind without a context, and queries have no variables.
        (Operand::Var(_), None) => Value::Null,
    }
}

fn bind(node: &Node, ctx: Option<&SecurityContext>) -> Filter {
    let v = |o: &Operand| bind_value(o, ctx);
    match node {
        Node::Eq(f, o) => Filter::Eq(f.clone(), v(o)),
        Node::NotEq(f, o) => Filter::NotEq(f.clone(), v(o)),
        Node::Gt(f, o) => Filter::Gt(f.clone(), v(o)),
        Node::Gte(f, o) => Filter::Gte(f.clone(), v(o)),
        Node::Lt(f, o) => Filter::Lt(f.clone(), v(o)),
        Node::Lte(f, o) => Filter::Lte(f.clone(), v(o)),
        Node::In(f, list) => {
            let mut values = Vec::with_capacity(list.len());
            for o in list {
                match (o, ctx) {
                    (Operand::Var(Variable::Teams), Some(ctx)) => {
                        values.extend(ctx.teams.iter().map(|t| Value::String(t.clone())));
                    }
                    _ => values.push(v(o)),
                }
            }
            Filter::In(f.clone(), values)
        }
        Node::Contains(f, o) => match v(o) {
            Value::String(s) => Filter::Contains(f.clone(), s),
            // Unreachable (the parser allows only strings); match nothing rather than panic.
            _ => Filter::Or(Vec::new()),
        },
        Node::IsNull(f) => Filter::IsNull(f.clone()),
        Node::And(list) => Filter::And(list.iter().map(|n| bind(n, ctx)).collect()),
        Node::Or(list) => Filter::Or(list.iter().map(|n| bind(n, ctx)).collect()),
        Node::Not(n) => Filter::Not(Box::new(bind(n, ctx))),
    }
}

// --- canonical TOML form ---------------------------------------------------------------------

/// A TOML basic string.
pub(crate) fn toml_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A TOML key: bare when it can be, else quoted.
pub(crate) fn toml_key(out: &mut String, k: &str) {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        out.push_str(k);
    } else {
        toml_string(out, k);
    }
}

/// `[a, b, …]`, each item written by `item`.
pub(crate) fn write_array<T>(out: &mut String, items: &[T], item: fn(&mut String, &T)) {
    out.push('[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        item(out, x);
    }
    out.push(']');
}

fn write_json(out: &mut String, json: &Json) {
    match json {
        // TOML has no null, and no rule can hold one: a TOML document never yields it.
        Json::Null => out.push_str("{}"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(d)) => {
                // Debug of a finite f64 always has a '.' or an exponent: TOML reads a float.
                let _ = write!(out, "{d:?}");
            }
            (None, None) => out.push_str("nan"),
        },
        Json::String(s) => toml_string(out, s),
        Json::Array(items) => write_array(out, items, write_json),
        Json::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{ ");
            for (i, (k, x)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                toml_key(out, k);
                out.push_str(" = ");
                write_json(out, x);
            }
            out.push_str(" }");
        }
    }
}

fn write_operand(out: &mut String, operand: &Operand) {
    match operand {
        Operand::Var(var) => toml_string(out, var.name()),
        Operand::Value(Value::String(s)) if s.starts_with('$') => {
            out.push_str("{ \"$literal\" = ");
            toml_string(out, s);
            out.push_str(" }");
        }
        Operand::Value(v) => write_json(out, &json::from_value(v)),
    }
}

/// The field and operator key of a single-field node, as the parser would meet them.
fn leaf(node: &Node) -> Option<(&str, &'static str)> {
    Some(match node {
        Node::Eq(f, _) => (f, "$eq"),
        Node::NotEq(f, _) => (f, "$ne"),
        Node::Gt(f, _) => (f, "$gt"),
        Node::Gte(f, _) => (f, "$gte"),
        Node::Lt(f, _) => (f, "$lt"),
        Node::Lte(f, _) => (f, "$lte"),
        Node::In(f, _) => (f, "$in"),
        Node::Contains(f, _) => (f, "$contains"),
        Node::IsNull(f) => (f, "$null"),
        Node::Not(inner) => match inner.as_ref() {
            Node::IsNull(f) => (f, "$null"),
            _ => return None,
        },
        _ => return None,
    })
}

fn escape_field(field: &str) -> String {
    if field.starts_with('$') {
        format!("${field}")
    } else {
        field.to_owned()
    }
}

fn write_leaf_value(out: &mut String, node: &Node) {
    match node {
        Node::Eq(_, o)
        | Node::NotEq(_, o)
        | Node::Gt(_, o)
        | Node::Gte(_, o)
        | Node::Lt(_, o)
        | Node::Lte(_, o)
        | Node::Contains(_, o) => write_operand(out, o),
        Node::In(_, list) => write_array(out, list, write_operand),
        Node::IsNull(_) => out.push_str("true"),
        _ => out.push_str("false"),
    }
}

/// Writes `key = …` for leaves of one field, in the order the parser reads them back.
fn write_group(out: &mut String, field: &str, nodes: &[&Node]) {
    toml_key(out, &escape_field(field));
    out.push_str(" = ");
    if let [only @ Node::Eq(..)] = nodes {
        write_leaf_value(out, only);
        return;
    }
    out.push_str("{ ");
    for (i, node) in nodes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let op = leaf(node).map_or("$eq", |(_, op)| op);
        toml_string(out, op);
        out.push_str(" = ");
        write_leaf_value(out, node);
    }
    out.push_str(" }");
}

fn write_list(out: &mut String, combinator: &str, list: &[Node]) {
    out.push_str("{ ");
    toml_string(out, combinator);
    out.push_str(" = ");
    write_array(out, list, write_node);
    out.push_str(" }");
}

/// Writes a node as an inline table that parses back to exactly this node.
fn write_node(out: &mut String, node: &Node) {
    match node {
        Node::And(list) if list.is_empty() => out.push_str("{}"),
        Node::And(list) if list.len() >= 2 => {
            // One object when the parser would read its entries back in this very order.
            let keys: Option<Vec<(String, &str, &Node)>> = list
                .iter()
                .map(|n| leaf(n).map(|(f, op)| (escape_field(f), op, n)))
                .collect();
            let ordered = keys.as_ref().is_some_and(|keys| {
                keys.windows(2).all(|w| match w {
                    [a, b] => (&a.0, a.1) < (&b.0, b.1),
                    _ => true,
                })
            });
            match keys {
                Some(keys) if ordered => {
                    out.push_str("{ ");
                    let mut first = true;
                    let mut i = 0;
                    while let Some((field, _, _)) = keys.get(i) {
                        let group: Vec<&Node> = keys
                            .iter()
                            .skip(i)
                            .take_while(|(f, _, _)| f == field)
                            .map(|(_, _, n)| *n)
                            .collect();
                        if !first {
                            out.push_str(", ");
                        }
                        first = false;
                        let name =
                            leaf(group.first().copied().unwrap_or(node)).map_or("", |(f, _)| f);
                        write_group(out, name, &group);
                        i += group.len();
                    }
                    out.push_str(" }");
                }
                _ => write_list(out, "$and", list),
            }
        }
        Node::And(list) => write_list(out, "$and", list),
        Node::Or(list) => write_list(out, "$or", list),
        Node::Not(inner) if !matches!(inner.as_ref(), Node::IsNull(_)) => {
            out.push_str("{ \"$not\" = ");
            write_node(out, inner);
            out.push_str(" }");
        }
        leaf_node => {
            let field = leaf(leaf_node).map_or("", |(f, _)| f);
            out.push_str("{ ");
            write_group(out, field, &[leaf_node]);
            out.push_str(" }");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn ctx() -> SecurityContext {
        SecurityContext::new("alice", ["ios", "web"], "developer", "ab12")
    }

    fn bound(text: &str) -> Filter {
        FilterTemplate::parse_json(text).unwrap().bind(&ctx())
    }

    fn refused(text: &str) -> String {
        FilterTemplate::parse_json(text).unwrap_err().to_string()
    }

    #[test]
    fn scalar_variables_bind_to_the_context_values() {
        assert_eq!(
            bound(r#"{"author":"$user"}"#),
            Filter::eq("author", "alice")
        );
        assert_eq!(
            bound(r#"{"r":{"$ne":"$role"}}"#),
            Filter::not_eq("r", "developer")
        );
        assert_eq!(
            bound(r#"{"d":{"$contains":"$device"}}"#),
            Filter::contains("d", "ab12")
        );
    }

    #[test]
    fn in_teams_matches_any_of_the_users_teams_and_spreads_inside_a_list() {
        assert_eq!(
            bound(r#"{"t":{"$in":"$teams"}}"#),
            Filter::is_in("t", ["ios", "web"])
        );
        assert_eq!(
            bound(r#"{"t":{"$in":["$teams","public","$user"]}}"#),
            Filter::is_in("t", ["ios", "web", "public", "alice"])
        );
        let nobody = SecurityContext::new("x", Vec::<String>::new(), "r", "d");
        let f = FilterTemplate::parse_json(r#"{"t":{"$in":"$teams"}}"#).unwrap();
        assert_eq!(f.bind(&nobody), Filter::In("t".into(), vec![]));
    }

    #[test]
    fn comparing_with_the_teams_list_is_an_error_that_suggests_in() {
        assert!(refused(r#"{"t":"$teams"}"#).contains("write { \"$in\" = \"$teams\" }"));
        assert!(refused(r#"{"t":{"$ne":"$teams"}}"#).contains("$teams is a list"));
        assert!(refused(r#"{"t":{"$in":"$user"}}"#).contains("$in takes an array"));
    }

    #[test]
    fn unknown_variables_are_errors_and_literal_escapes_a_dollar_string() {
        let e = refused(r#"{"t":"$team"}"#);
        assert!(e.contains("unknown variable \"$team\""), "{e}");
        assert!(e.contains("$literal"), "{e}");
        assert_eq!(
            bound(r#"{"t":{"$literal":"$team"}}"#),
            Filter::eq("t", "$team")
        );
        assert_eq!(
            bound(r#"{"t":{"$in":[{"$literal":"$x"}]}}"#),
            Filter::is_in("t", ["$x"])
        );
        assert!(refused(r#"{"t":{"$literal":1}}"#).contains("$literal takes a string"));
        assert!(refused(r#"{"t":["$user"]}"#).contains("whole operand"));
    }

    #[test]
    fn queries_read_dollar_strings_as_plain_strings() {
        let json = json::parse(r#"{"t":"$user"}"#).unwrap();
        assert_eq!(parse_query(&json).unwrap(), Filter::eq("t", "$user"));
    }

    #[test]
    fn errors_carry_the_path_to_the_mistake() {
        let e =
            FilterTemplate::parse_json(r#"{"$or":[{"a":1},{"b":{"$regex":"x"}}]}"#).unwrap_err();
        assert_eq!(
            e.path(),
            [key("$or"), PathSegment::Index(1), key("b"), key("$regex")]
        );
    }

    #[test]
    fn the_canonical_form_reads_back_as_the_same_template() {
        for text in [
            r#"{}"#,
            r#"{"teamId":{"$in":"$teams"}}"#,
            r#"{"a":1,"b":{"$gt":1,"$lt":5},"c":{"$null":false}}"#,
            r#"{"$or":[{"a":"$user"},{"$not":{"b":{"$literal":"$x"}}}]}"#,
            r#"{"$and":[{"a":1}]}"#,
            r#"{"$$odd key":{"$uuid":"0190c0de-7f00-7abc-8def-0123456789ab"}}"#,
        ] {
            let t = FilterTemplate::parse_json(text).unwrap();
            let file = format!("[roles.r.c]\nread = {t}\n");
            let rules = crate::Rules::parse(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let read = rules.rule("r", "c").unwrap().read();
            assert_eq!(read, &t, "{file}");
        }
    }
}
