//! BlazeDB access rules: the filter language shared by `blazedb query --where`, the server's
//! access rules and (later) a device's sync policy; context variables; the rules file.
//!
//! * [`json`]: the JSON ↔ [`blazedb_core::Value`] mapping that filters and the CLI use.
//! * [`parse_query`]: a `--where` filter (no variables) to a core [`blazedb_core::Filter`].
//! * [`FilterTemplate`]: a rule filter with context variables (`$user`, `$teams`, `$role`,
//!   `$device`), bound to a [`SecurityContext`] with [`FilterTemplate::bind`].
//! * [`Rules`]: a parsed, validated rules file (TOML), with the evaluation the server needs:
//!   [`Rules::scope_for`], [`Rules::may_read`], [`Rules::check_write`] (a refusal carries its
//!   code and reason), and its canonical text
//!   ([`Rules::to_toml`]).
//! * [`ReadScope`]: what one device may read (the rules bound to its context, narrowed by
//!   its policy), and the cutting of records and operations down to it.
//!
//! ```
//! use blazedb_access::{Rules, SecurityContext};
//! use blazedb_core::{Record, Uuid, fields};
//!
//! let rules = Rules::parse(r#"
//! [roles.developer.bugs]
//! read  = { teamId = { "$in" = "$teams" } }
//! write = { teamId = { "$in" = "$teams" } }
//! hidden_fields = ["auditLog"]
//! "#)?;
//! let alice = SecurityContext::new("alice", ["ios"], "developer", "3f2a9c01d4e5b677");
//! let ios_bug = Record { id: Uuid::new_v4(), fields: fields! { "teamId" => "ios" } };
//! let android_bug = Record { id: Uuid::new_v4(), fields: fields! { "teamId" => "android" } };
//!
//! assert!(rules.may_read(&alice, "bugs", &ios_bug));
//! assert!(!rules.may_read(&alice, "bugs", &android_bug));
//! assert!(!rules.may_read(&alice, "reports", &ios_bug)); // not named: invisible
//! // Moving a bug to another team fails the check on the state after the write.
//! assert!(rules.check_write(&alice, "bugs", Some(&ios_bug), Some(&android_bug), &["teamId"]).is_err());
//! // A hidden field cannot be written.
//! assert!(rules.check_write(&alice, "bugs", Some(&ios_bug), Some(&ios_bug), &["auditLog"]).is_err());
//! # Ok::<(), blazedb_access::RulesError>(())
//! ```
//!
//! Errors name the line and the reason:
//!
//! ```
//! let e = blazedb_access::Rules::parse("[roles.dev.bugs]\nread = { team = \"$team\" }\n")
//!     .unwrap_err();
//! assert_eq!(e.line(), 2);
//! assert!(e.to_string().contains("unknown variable \"$team\""));
//! ```

mod context;
mod filter;
pub mod json;
mod rules;
mod scope;

pub use context::SecurityContext;
pub use filter::{FilterError, FilterTemplate, PathSegment, Variable, parse_query};
pub use rules::{
    CollectionMode, CollectionRule, CollectionScope, CollectionSettings, Rules, RulesError,
    WriteRefusal,
};
pub use scope::{KeyCheck, PolicyError, ReadScope, SyncPolicy, WriteScope};
