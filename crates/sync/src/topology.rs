//! [`Topology`]: databases of one process, registered by name and connected in any shape.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use blazedb_core::{Database, NodeId};

use crate::engine::{ConnectOptions, ConnectionStatus, Mode, SyncEngine};
use crate::error::{Result, SyncError};
use crate::relay::{ConnectionId, InMemoryRelay, Relay};

struct Node {
    name: String,
    id: NodeId,
    db: Database,
    /// `None` for a local-only node: it never syncs.
    engine: Option<SyncEngine>,
}

struct Edge {
    from: NodeId,
    to: NodeId,
    mode: Mode,
    /// The connection on `from`'s engine and on `to`'s engine.
    from_conn: ConnectionId,
    to_conn: ConnectionId,
}

/// The databases of one process and the connections between them.
///
/// ```
/// use blazedb_core::{Database, fields};
/// use blazedb_sync::{Mode, Topology};
/// use std::time::Duration;
///
/// let bugs = Database::in_memory()?;
/// let users = Database::in_memory()?;
/// let mut topology = Topology::new();
/// let b = topology.register(&bugs, "bugs")?;
/// let u = topology.register(&users, "users")?;
/// topology.connect_local(b, u, Mode::Bidirectional)?;
///
/// bugs.insert("bugs", fields! { "title" => "Crash on launch" })?;
/// assert!(topology.wait_idle(Duration::from_secs(10))?);
/// assert_eq!(users.count("bugs")?, 1);
/// println!("{}", topology.graph()?.to_dot());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Topology {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Registers a database under a unique name and starts its sync engine; returns its node
    /// id, by which it is connected.
    pub fn register(&mut self, db: &Database, name: &str) -> Result<NodeId> {
        self.add(db, name, true)
    }

    /// Registers a database that never syncs (it appears in the graph; connecting it fails).
    pub fn register_local_only(&mut self, db: &Database, name: &str) -> Result<NodeId> {
        self.add(db, name, false)
    }

    fn add(&mut self, db: &Database, name: &str, syncs: bool) -> Result<NodeId> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(SyncError::DuplicateName(name.to_owned()));
        }
        let id = db.node_id();
        if let Some(other) = self.nodes.iter().find(|n| n.id == id) {
            return Err(SyncError::InvalidArgument(format!(
                "this database is already registered as {:?}",
                other.name
            )));
        }
        let engine = if syncs {
            Some(SyncEngine::start(db.clone(), name)?)
        } else {
            None
        };
        self.nodes.push(Node {
            name: name.to_owned(),
            id,
            db: db.clone(),
            engine,
        });
        Ok(id)
    }

    /// Removes a node: its connections are closed and its engine stops. Cursors stay in the
    /// databases, so registering the database again and reconnecting resumes where it was.
    pub fn unregister(&mut self, node: NodeId) -> Result<()> {
        let index = self.index(node)?;
        let touching: Vec<(NodeId, NodeId)> = self
            .edges
            .iter()
            .filter(|e| e.from == node || e.to == node)
            .map(|e| (e.from, e.to))
            .collect();
        for (from, to) in touching {
            self.disconnect(from, to)?;
        }
        // Dropping the node stops its engine.
        self.nodes.remove(index);
        Ok(())
    }

    /// Connects two registered nodes in one process. `mode` is seen from `from`: read-only
    /// means `from` pulls `to`'s operations and sends none; write-only means `from` pushes
    /// and accepts none.
    pub fn connect_local(&mut self, from: NodeId, to: NodeId, mode: Mode) -> Result<()> {
        let (a, b) = InMemoryRelay::pair();
        self.connect_with(from, to, mode, a, b)
    }

    /// Connects two registered nodes through a given pair of relays (`from_end` is used by
    /// `from`'s engine, `to_end` by `to`'s): for transports other than the in-memory one, or
    /// a test that controls delivery.
    pub fn connect_with(
        &mut self,
        from: NodeId,
        to: NodeId,
        mode: Mode,
        from_end: impl Relay,
        to_end: impl Relay,
    ) -> Result<()> {
        if from == to {
            return Err(SyncError::SelfConnection(self.name(from)?.to_owned()));
        }
        if self.edge(from, to).is_some() {
            return Err(SyncError::AlreadyConnected {
                from: self.name(from)?.to_owned(),
                to: self.name(to)?.to_owned(),
            });
        }
        let from_node = self.node(from)?;
        let to_node = self.node(to)?;
        let from_engine = from_node
            .engine
            .as_ref()
            .ok_or_else(|| SyncError::LocalOnly(from_node.name.clone()))?;
        let to_engine = to_node
            .engine
            .as_ref()
            .ok_or_else(|| SyncError::LocalOnly(to_node.name.clone()))?;
        let from_conn = from_engine.connect(
            from_end,
            ConnectOptions::new(to_node.name.clone()).mode(mode),
        )?;
        let to_conn = to_engine.connect(
            to_end,
            ConnectOptions::new(from_node.name.clone()).mode(mode.reversed()),
        )?;
        self.edges.push(Edge {
            from,
            to,
            mode,
            from_conn,
            to_conn,
        });
        Ok(())
    }

    /// Closes the connection between two nodes (given in either order).
    pub fn disconnect(&mut self, a: NodeId, b: NodeId) -> Result<()> {
        let index = self.edge(a, b).ok_or_else(|| self.not_connected(a, b))?;
        let edge = self.edges.remove(index);
        for (node, conn) in [(edge.from, edge.from_conn), (edge.to, edge.to_conn)] {
            if let Some(engine) = self.node(node)?.engine.as_ref() {
                // Already gone when the peer closed first: nothing left to do.
                match engine.disconnect(conn) {
                    Ok(()) | Err(SyncError::UnknownConnection(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Changes the mode of the connection between `from` and `to` while running (`mode` seen
    /// from `from`). No operation is lost or applied twice (see [`SyncEngine::set_mode`]).
    pub fn set_mode(&mut self, from: NodeId, to: NodeId, mode: Mode) -> Result<()> {
        let index = self
            .edge(from, to)
            .ok_or_else(|| self.not_connected(from, to))?;
        let edge = self
            .edges
            .get_mut(index)
            .ok_or_else(|| SyncError::UnknownNode(from.to_string()))?;
        // Stored the way the edge was made.
        let mode = if edge.from == from {
            mode
        } else {
            mode.reversed()
        };
        edge.mode = mode;
        let (f, fc, t, tc) = (edge.from, edge.from_conn, edge.to, edge.to_conn);
        self.engine(f)?.set_mode(fc, mode)?;
        self.engine(t)?.set_mode(tc, mode.reversed())?;
        Ok(())
    }

    /// The engine of a registered node (`None` for a local-only node).
    pub fn engine_of(&self, node: NodeId) -> Option<&SyncEngine> {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .and_then(|n| n.engine.as_ref())
    }

    /// The node registered under `name`.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().find(|n| n.name == name).map(|n| n.id)
    }

    /// Waits until every operation has reached every node it can reach: each connection that
    /// sends to a peer that receives has streamed and had acknowledged everything, and no
    /// engine has anything left to apply. Returns false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        // Quiet twice in a row: an engine that just applied something may forward it.
        let mut quiet = 0;
        while Instant::now() < deadline {
            if self.quiet(deadline)? {
                quiet += 1;
                if quiet == 2 {
                    return Ok(true);
                }
            } else {
                quiet = 0;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(false)
    }

    fn quiet(&self, deadline: Instant) -> Result<bool> {
        for node in &self.nodes {
            if let Some(engine) = &node.engine {
                let left = deadline.saturating_duration_since(Instant::now());
                if !engine.wait_idle(left)? {
                    return Ok(false);
                }
            }
        }
        for edge in &self.edges {
            for (node, conn, mode) in [
                (edge.from, edge.from_conn, edge.mode),
                (edge.to, edge.to_conn, edge.mode.reversed()),
            ] {
                if !mode.sends() {
                    continue;
                }
                let status = self.status_of(node, conn)?;
                if let Some(s) = status
                    && s.closed_reason.is_none()
                    && (!s.streaming || s.ops_pending > 0)
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn status_of(&self, node: NodeId, conn: ConnectionId) -> Result<Option<ConnectionStatus>> {
        Ok(self
            .engine(node)?
            .status()?
            .into_iter()
            .find(|s| s.id == conn))
    }

    /// The nodes and connections with their counters, as a serialisable value.
    pub fn graph(&self) -> Result<Graph> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            nodes.push(GraphNode {
                name: n.name.clone(),
                node_id: n.id.to_string(),
                local_only: n.engine.is_none(),
                ops_in_log: n.db.replication().oplog_ops_through(u64::MAX)?,
            });
        }
        let mut edges = Vec::with_capacity(self.edges.len());
        for e in &self.edges {
            let a = self.status_of(e.from, e.from_conn)?;
            let b = self.status_of(e.to, e.to_conn)?;
            let lag = |s: &Option<ConnectionStatus>| s.as_ref().map_or(Duration::ZERO, |s| s.lag);
            edges.push(GraphEdge {
                from: self.name(e.from)?.to_owned(),
                to: self.name(e.to)?.to_owned(),
                mode: e.mode,
                transport: a.as_ref().map_or("in-memory", |s| s.transport).to_owned(),
                connected: a.as_ref().is_some_and(|s| s.connected)
                    && b.as_ref().is_some_and(|s| s.connected),
                ops_sent: a.as_ref().map_or(0, |s| s.ops_sent),
                ops_received: a.as_ref().map_or(0, |s| s.ops_applied),
                ops_pending: a.as_ref().map_or(0, |s| s.ops_pending)
                    + b.as_ref().map_or(0, |s| s.ops_pending),
                lag_ms: lag(&a).max(lag(&b)).as_secs_f64() * 1000.0,
            });
        }
        Ok(Graph { nodes, edges })
    }

    fn index(&self, node: NodeId) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == node)
            .ok_or_else(|| SyncError::UnknownNode(node.to_string()))
    }

    fn node(&self, node: NodeId) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .ok_or_else(|| SyncError::UnknownNode(node.to_string()))
    }

    fn name(&self, node: NodeId) -> Result<&str> {
        Ok(&self.node(node)?.name)
    }

    fn engine(&self, node: NodeId) -> Result<&SyncEngine> {
        let n = self.node(node)?;
        n.engine
            .as_ref()
            .ok_or_else(|| SyncError::LocalOnly(n.name.clone()))
    }

    fn edge(&self, a: NodeId, b: NodeId) -> Option<usize> {
        self.edges
            .iter()
            .position(|e| (e.from == a && e.to == b) || (e.from == b && e.to == a))
    }

    fn not_connected(&self, a: NodeId, b: NodeId) -> SyncError {
        let name = |n: NodeId| self.name(n).map_or_else(|_| n.to_string(), str::to_owned);
        SyncError::InvalidArgument(format!("{:?} and {:?} are not connected", name(a), name(b)))
    }
}

/// A snapshot of a topology: nodes and connections with their counters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

/// One database in a [`Graph`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphNode {
    pub name: String,
    pub node_id: String,
    /// Registered as local-only: never syncs.
    pub local_only: bool,
    /// Operations in the node's op log (its own and merged ones).
    pub ops_in_log: u64,
}

/// One connection in a [`Graph`]; `mode` is seen from `from`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub mode: Mode,
    pub transport: String,
    /// Both sides have completed the handshake and neither has closed.
    pub connected: bool,
    /// Operations `from` sent to `to`.
    pub ops_sent: u64,
    /// Operations from `to` that `from` merged for the first time.
    pub ops_received: u64,
    /// Operations not yet acknowledged, both directions together.
    pub ops_pending: u64,
    /// Age of the oldest unacknowledged batch in either direction, in milliseconds.
    pub lag_ms: f64,
}

impl Graph {
    /// The graph in Graphviz DOT: arrows point the way operations flow.
    pub fn to_dot(&self) -> String {
        let mut dot = String::from(
            "digraph blazedb {\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
        );
        for n in &self.nodes {
            let style = if n.local_only { ", style=dashed" } else { "" };
            let _ = writeln!(
                dot,
                "    {} [label=\"{}\\n{} ops{}\"{}];",
                quote(&n.name),
                escape(&n.name),
                n.ops_in_log,
                if n.local_only { "\\nlocal-only" } else { "" },
                style
            );
        }
        for e in &self.edges {
            // Operations flow from → to when `from` sends, to → from when it receives.
            let dir = match e.mode {
                Mode::Bidirectional => "both",
                Mode::WriteOnly => "forward",
                Mode::ReadOnly => "back",
            };
            let style = if e.connected { "solid" } else { "dashed" };
            let _ = writeln!(
                dot,
                "    {} -> {} [dir={dir}, style={style}, label=\"{}\\nsent {} / received {}\\nlag {:.1} ms\"];",
                quote(&e.from),
                quote(&e.to),
                e.mode,
                e.ops_sent,
                e.ops_received,
                e.lag_ms
            );
        }
        dot.push_str("}\n");
        dot
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}
