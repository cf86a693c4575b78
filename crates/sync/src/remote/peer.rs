//! [`PeerSync`]: devices that sync with each other without a server (a mesh, a ring), over
//! the same WebSocket, Noise `XX` channel and protocol as with a server (docs/protocol.md).
//!
//! A device listens for peers and connects to peers by address. Trust is explicit: a device
//! accepts a peer only if it was told the peer's static public key ([`PeerSync::trust`]),
//! and connects only to a peer whose key it expects; keys travel between the devices of a
//! sync group however the application pairs them (docs/topologies.md). Each device runs one
//! sync engine for all its links; version vectors keep a write from going anywhere twice,
//! or back to where it came from.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blazedb_core::Database;
use blazedb_protocol::CloseCode;
use blazedb_protocol::secure::{StaticKeys, Suite, fingerprint};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::error::RemoteError;
use super::keys::node_keys_for;
use super::relay::RelayOptions;
use super::session::{accept_handshake_with, connect_handshake, websocket_config};
use crate::engine::{ConnectOptions, EngineOptions, SyncEngine};

/// How long a peer has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A device's links to its peers: one sync engine, a listener, outgoing connections that
/// reconnect. Stops when dropped.
#[must_use = "dropping a PeerSync stops syncing with its peers"]
pub struct PeerSync {
    engine: Arc<SyncEngine>,
    keys: StaticKeys,
    group: String,
    trusted: Arc<Mutex<HashSet<Vec<u8>>>>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
}

impl PeerSync {
    /// Starts syncing `db` with peers of the sync group `group` (the database's name on
    /// every peer: all of them must use the same), with the device's static key pair.
    pub fn start(db: &Database, group: &str) -> Result<PeerSync, RemoteError> {
        crate::DatabaseName::new(group)
            .map_err(|e| RemoteError::InvalidOption(format!("group {group:?}: {e}")))?;
        let keys = node_keys_for(db, Suite::default())?;
        let engine = Arc::new(SyncEngine::start_with(
            db.clone(),
            group,
            EngineOptions::default(),
        )?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("blazedb-peers {group}"))
            .enable_all()
            .build()
            .map_err(|e| RemoteError::InvalidOption(format!("cannot start a runtime: {e}")))?;
        let (stop, _) = watch::channel(false);
        Ok(PeerSync {
            engine,
            keys,
            group: group.to_owned(),
            trusted: Arc::new(Mutex::new(HashSet::new())),
            runtime: Some(runtime),
            stop,
        })
    }

    /// This device's static public key: what its peers must trust.
    pub fn public_key(&self) -> &[u8] {
        self.keys.public()
    }

    /// Accepts the peer whose static public key this is, from now on.
    pub fn trust(&self, public_key: &[u8]) {
        self.trusted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(public_key.to_vec());
    }

    /// The engine that syncs the database with every peer (status, counters).
    pub fn engine(&self) -> &SyncEngine {
        &self.engine
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, RemoteError> {
        self.runtime
            .as_ref()
            .ok_or(RemoteError::InvalidOption("the peers were stopped".into()))
    }

    /// Listens for peers on `address` (port 0: any free port); returns the address bound.
    /// A peer whose key is not trusted is refused (`Close { Unauthorized }`).
    pub fn listen(&self, address: SocketAddr) -> Result<SocketAddr, RemoteError> {
        let runtime = self.runtime()?;
        let listener = runtime
            .block_on(TcpListener::bind(address))
            .map_err(|source| RemoteError::Connect {
                address: address.to_string(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| RemoteError::Connect {
                address: address.to_string(),
                source,
            })?;
        let (engine, keys, group, trusted) = (
            self.engine.clone(),
            self.keys.clone(),
            self.group.clone(),
            self.trusted.clone(),
        );
        let mut stopped = self.stop.subscribe();
        runtime.spawn(async move {
            loop {
                let (tcp, from) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (engine, keys, group, trusted) =
                    (engine.clone(), keys.clone(), group.clone(), trusted.clone());
                tokio::spawn(async move {
                    let Ok(ws) =
                        tokio_tungstenite::accept_async_with_config(tcp, Some(websocket_config()))
                            .await
                    else {
                        return;
                    };
                    let ours = |suite| (suite == keys.suite()).then_some(&keys);
                    let Ok(session) =
                        accept_handshake_with(ws, ours, &group, HANDSHAKE_TIMEOUT).await
                    else {
                        return;
                    };
                    let known = trusted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(session.peer_key());
                    if !known {
                        let reason = format!(
                            "this device does not trust key {} in sync group {group:?}",
                            session.peer_fingerprint()
                        );
                        session.refuse(CloseCode::Unauthorized, &reason).await;
                        return;
                    }
                    let name = format!("peer {} ({from})", session.peer_fingerprint());
                    let relay = session.into_relay(None, RelayOptions::default());
                    let _ = engine.connect(relay, ConnectOptions::new(group).name(name));
                });
            }
        });
        Ok(bound)
    }

    /// Connects to the peer listening on `address` whose static public key is `peer_key`,
    /// and keeps reconnecting while this `PeerSync` lives.
    pub fn connect(&self, address: SocketAddr, peer_key: &[u8]) -> Result<(), RemoteError> {
        let runtime = self.runtime()?;
        let (engine, keys, group, peer_key) = (
            self.engine.clone(),
            self.keys.clone(),
            self.group.clone(),
            peer_key.to_vec(),
        );
        let mut stopped = self.stop.subscribe();
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let attempt = async {
                    let tcp = TcpStream::connect(address).await.map_err(|source| {
                        RemoteError::Connect {
                            address: address.to_string(),
                            source,
                        }
                    })?;
                    let _ = tcp.set_nodelay(true);
                    let (ws, _) = tokio_tungstenite::client_async_with_config(
                        format!("ws://{address}/peer/{group}"),
                        tcp,
                        Some(websocket_config()),
                    )
                    .await?;
                    connect_handshake(ws, &keys, &group, &peer_key, HANDSHAKE_TIMEOUT).await
                };
                if let Ok(session) = attempt.await {
                    backoff = Duration::from_millis(50);
                    let name = format!("peer {} ({address})", fingerprint(&peer_key));
                    let relay = session.into_relay(None, RelayOptions::default());
                    let mut finished = relay.finished();
                    let Ok(id) =
                        engine.connect(relay, ConnectOptions::new(group.clone()).name(name))
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = finished.wait_for(|done| *done) => {}
                        _ = stopped.changed() => return,
                    }
                    let _ = engine.disconnect(id);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Ok(())
    }

    /// Stops every link and the engine.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.send_replace(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        self.engine.shutdown();
    }
}

impl Drop for PeerSync {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop_now();
        }
    }
}
