//! `blazedb topology FILE`: open the databases a topology file lists, sync them with each other
//! in this process, and print the resulting graph.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use blazedb_core::{Database, NodeId};
use blazedb_sync::{Graph, Mode, Topology};
use serde::Deserialize;

use crate::commands::{self, Ctx, Out};
use crate::error::Failure;
use crate::password::{self, Source};

pub const HELP: &str = "\
TOPOLOGY FILE:
  {
    \"nodes\": [
      {\"name\": \"bugs\", \"path\": \"bugs.blazedb\"},
      {\"name\": \"users\", \"path\": \"users.blazedb\"},
      {\"name\": \"archive\", \"path\": \"archive.blazedb\", \"local_only\": true}
    ],
    \"edges\": [
      {\"from\": \"bugs\", \"to\": \"users\", \"mode\": \"bidirectional\"}
    ]
  }
Paths are relative to the directory of the topology file (absolute paths work too). \"mode\" is
seen from \"from\": bidirectional (the default), read-only (\"from\" only pulls \"to\"'s
operations) or write-only (\"from\" only pushes). Local-only nodes never sync and cannot have
edges. Unknown keys are errors. Every database is opened with the same password
(--password-file, BLAZEDB_PASSWORD or one prompt).

The command connects every edge, waits until nothing is left to send (at most --timeout
seconds), then prints the graph. If sync does not finish in time the graph is printed anyway
and the command fails.

EXAMPLES:
  blazedb topology topo.json
  blazedb topology topo.json --format dot | dot -Tsvg > topo.svg";

/// The longest `--timeout` accepted, in seconds (about 11.5 days).
const MAX_TIMEOUT_SECS: f64 = 1_000_000.0;

/// How the graph is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables of nodes and edges
    Text,
    /// The graph as pretty-printed JSON
    Json,
    /// Graphviz DOT
    Dot,
}

/// `--timeout`: seconds, fractions allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (like 30 or 0.5)"))?;
    if !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "the timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// The file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    nodes: Vec<NodeSpec>,
    #[serde(default)]
    edges: Vec<EdgeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: String,
    path: PathBuf,
    #[serde(default)]
    local_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeSpec {
    from: String,
    to: String,
    #[serde(default)]
    mode: Option<String>,
}

/// A checked topology file: names unique, edges between known syncing nodes, modes valid.
#[derive(Debug)]
struct Plan {
    /// Name, resolved path, local-only.
    nodes: Vec<(String, PathBuf, bool)>,
    /// From, to (names), mode.
    edges: Vec<(String, String, Mode)>,
}

/// `edge 2 (bugs → users)` in messages.
struct EdgeLabel<'a>(usize, &'a EdgeSpec);

impl fmt::Display for EdgeLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edge {} ({} → {})", self.0 + 1, self.1.from, self.1.to)
    }
}

/// Parses and checks the topology file text; `base` is the directory relative paths start from.
fn plan(text: &str, base: &Path) -> Result<Plan, String> {
    let spec: Spec = serde_json::from_str(text).map_err(|e| format!("invalid topology: {e}"))?;
    if spec.nodes.is_empty() {
        return Err("the topology has no nodes".to_owned());
    }
    let mut local_only = std::collections::HashMap::new();
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for (i, n) in spec.nodes.into_iter().enumerate() {
        if n.name.trim().is_empty() {
            return Err(format!("node {} has an empty name", i + 1));
        }
        if n.path.as_os_str().is_empty() {
            return Err(format!("node {:?} has an empty path", n.name));
        }
        if local_only.insert(n.name.clone(), n.local_only).is_some() {
            return Err(format!("two nodes are named {:?}", n.name));
        }
        nodes.push((n.name, base.join(n.path), n.local_only));
    }
    let known = || {
        nodes
            .iter()
            .map(|(name, _, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen = HashSet::new();
    let mut edges = Vec::with_capacity(spec.edges.len());
    for (i, e) in spec.edges.iter().enumerate() {
        let label = EdgeLabel(i, e);
        for name in [&e.from, &e.to] {
            match local_only.get(name) {
                None => {
                    return Err(format!(
                        "{label}: there is no node named {name:?} (nodes: {})",
                        known()
                    ));
                }
                Some(true) => {
                    return Err(format!(
                        "{label}: node {name:?} is local-only and never syncs; remove the edge \
                         or its \"local_only\""
                    ));
                }
                Some(false) => {}
            }
        }
        if e.from == e.to {
            return Err(format!(
                "{label}: a node cannot sync with itself ({:?})",
                e.from
            ));
        }
        let pair = if e.from < e.to {
            (e.from.as_str(), e.to.as_str())
        } else {
            (e.to.as_str(), e.from.as_str())
        };
        if !seen.insert(pair) {
            return Err(format!(
                "{label}: {:?} and {:?} are already connected by an earlier edge",
                e.from, e.to
            ));
        }
        let mode = match &e.mode {
            None => Mode::Bidirectional,
            Some(m) => Mode::from_str(m).map_err(|err| format!("{label}: {err}"))?,
        };
        edges.push((e.from.clone(), e.to.clone(), mode));
    }
    Ok(Plan { nodes, edges })
}

// ---------------------------------------------------------------------------------------------
// The command

pub fn run(ctx: &Ctx, file: &Path, format: Format, timeout: Duration) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::msg(format!("cannot read topology file {}: {e}", file.display())))?;
    let base = file.parent().unwrap_or(Path::new(""));
    let plan = plan(&text, base).map_err(|m| Failure::msg(format!("{}: {m}", file.display())))?;

    // Every file exists before the password is asked for.
    for (name, path, _) in &plan.nodes {
        commands::check_database_file(path).map_err(|e| e.context(format!("node {name:?}")))?;
    }
    let password = if ctx.no_encryption {
        None
    } else {
        Some(
            Source {
                file: ctx.password_file.as_deref(),
                env: password::PASSWORD_ENV,
                file_flag: "--password-file",
                prompt: format!("Password for the databases of {}", file.display()),
                confirm: false,
            }
            .get()?,
        )
    };
    let mut databases: Vec<(String, Database, bool)> = Vec::with_capacity(plan.nodes.len());
    for (name, path, local_only) in &plan.nodes {
        let db = commands::open_with(ctx, path, password.as_deref())
            .map_err(|e| e.context(format!("node {name:?}")))?;
        databases.push((name.clone(), db, *local_only));
    }

    let mut topology = Topology::new();
    let mut ids: Vec<(&str, NodeId)> = Vec::with_capacity(databases.len());
    for (name, db, local_only) in &databases {
        let registered = if *local_only {
            topology.register_local_only(db, name)
        } else {
            topology.register(db, name)
        };
        let id = registered.map_err(|e| Failure::msg(format!("node {name:?}: {e}")))?;
        ids.push((name, id));
    }
    let id_of = |name: &str| {
        ids.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| Failure::msg(format!("no node named {name:?}")))
    };
    for (from, to, mode) in &plan.edges {
        topology
            .connect_local(id_of(from)?, id_of(to)?, *mode)
            .map_err(|e| Failure::msg(format!("cannot connect {from} → {to}: {e}")))?;
    }

    let finished = topology
        .wait_idle(timeout)
        .map_err(|e| Failure::msg(format!("sync failed: {e}")))?;
    let graph = topology
        .graph()
        .map_err(|e| Failure::msg(format!("cannot read the topology graph: {e}")))?;
    // Stop the engines (joining their threads) before the databases close.
    drop(topology);
    drop(databases);

    print_graph(&graph, format)?;
    if finished {
        Ok(())
    } else {
        Err(Failure::msg(format!(
            "sync did not finish within {} s; the graph shows where it stood",
            timeout.as_secs_f64()
        )))
    }
}

fn print_graph(graph: &Graph, format: Format) -> Result<(), Failure> {
    let mut out = Out::stdout();
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(graph)
                .map_err(|e| Failure::msg(format!("cannot write the graph as JSON: {e}")))?;
            out.line(&text)?;
        }
        Format::Dot => out.line(graph.to_dot().trim_end())?,
        Format::Text => {
            for line in text_lines(graph) {
                out.line(&line)?;
            }
        }
    }
    out.finish()
}

// ---------------------------------------------------------------------------------------------
// Text tables

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// The graph as two tables, nodes then edges.
fn text_lines(graph: &Graph) -> Vec<String> {
    let mut lines = vec!["nodes:".to_owned()];
    let rows = graph
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.ops_in_log.to_string(),
                yes_no(n.local_only).to_owned(),
            ]
        })
        .collect();
    lines.extend(table(
        &[
            ("name", Align::Left),
            ("ops in log", Align::Right),
            ("local-only", Align::Left),
        ],
        rows,
    ));
    if graph.edges.is_empty() {
        lines.push("edges: none".to_owned());
        return lines;
    }
    lines.push("edges:".to_owned());
    let rows = graph
        .edges
        .iter()
        .map(|e| {
            vec![
                format!("{} → {}", e.from, e.to),
                e.mode.to_string(),
                yes_no(e.connected).to_owned(),
                e.ops_sent.to_string(),
                e.ops_received.to_string(),
                e.ops_pending.to_string(),
                format!("{:.1}", e.lag_ms),
            ]
        })
        .collect();
    lines.extend(table(
        &[
            ("from → to", Align::Left),
            ("mode", Align::Left),
            ("connected", Align::Left),
            ("sent", Align::Right),
            ("received", Align::Right),
            ("pending", Align::Right),
            ("lag ms", Align::Right),
        ],
        rows,
    ));
    lines
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Columns padded to their widest cell, two spaces apart, indented by two.
fn table(columns: &[(&str, Align)], rows: Vec<Vec<String>>) -> Vec<String> {
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let all: Vec<Vec<String>> = std::iter::once(header).chain(rows).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| {
            all.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    all.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(columns.iter().zip(&widths))
                .map(|(cell, ((_, align), &width))| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            format!("  {}", cells.join("  ")).trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn check(text: &str) -> Result<Plan, String> {
        plan(text, Path::new("/topo"))
    }

    #[test]
    fn paths_are_relative_to_the_topology_file_and_modes_default_to_bidirectional() {
        let p = check(
            r#"{"nodes": [{"name": "a", "path": "a.db"}, {"name": "b", "path": "/abs/b.db"},
                          {"name": "c", "path": "c.db", "local_only": true}],
                "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a2", "mode": "x"}]}"#,
        );
        assert!(p.unwrap_err().contains("no node named \"a2\""));
        let p = check(
            r#"{"nodes": [{"name": "a", "path": "a.db"}, {"name": "b", "path": "/abs/b.db"},
                          {"name": "c", "path": "c.db", "local_only": true}],
                "edges": [{"from": "a", "to": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(p.nodes[0].1, PathBuf::from("/topo/a.db"));
        assert_eq!(p.nodes[1].1, PathBuf::from("/abs/b.db"));
        assert!(p.nodes[2].2);
        assert_eq!(p.edges[0].2, Mode::Bidirectional);
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let cases = [
            (r#"{"nodes": []}"#, "no nodes"),
            (
                r#"{"nodes": [{"name": "a", "path": "a", "extra": 1}]}"#,
                "unknown field `extra`",
            ),
            (r#"{"nodes": [{"name": "a"}]}"#, "missing field `path`"),
            (
                "{\"nodes\": [\n  {\"name\": \"a\" \"path\": \"a\"}]}",
                "line 2 column",
            ),
            (
                r#"{"nodes": [{"name": "a", "path": "a"}, {"name": "a", "path": "b"}]}"#,
                "two nodes are named \"a\"",
            ),
            (
                r#"{"nodes": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
                    "edges": [{"from": "a", "to": "b", "mode": "sideways"}]}"#,
                "edge 1 (a → b): unknown mode \"sideways\"",
            ),
            (
                r#"{"nodes": [{"name": "a", "path": "a"}], "edges": [{"from": "a", "to": "a"}]}"#,
                "cannot sync with itself",
            ),
            (
                r#"{"nodes": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
                    "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]}"#,
                "edge 2 (b → a): \"b\" and \"a\" are already connected",
            ),
            (
                r#"{"nodes": [{"name": "a", "path": "a"}, {"name": "b", "path": "b", "local_only": true}],
                    "edges": [{"from": "a", "to": "b"}]}"#,
                "node \"b\" is local-only",
            ),
        ];
        for (text, expected) in cases {
            let err = check(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn timeouts_take_fractions_but_not_nonsense() {
        assert_eq!(parse_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("0").unwrap(), Duration::ZERO);
        for bad in ["-1", "NaN", "inf", "1e300", "soon"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_align_their_columns() {
        let lines = table(
            &[("name", Align::Left), ("n", Align::Right)],
            vec![
                vec!["a".into(), "1".into()],
                vec!["long".into(), "100".into()],
            ],
        );
        assert_eq!(lines, ["  name    n", "  a       1", "  long  100"]);
    }
}
