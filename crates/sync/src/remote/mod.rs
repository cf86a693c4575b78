//! Sync with a remote node over a secure WebSocket: the session (Noise `XX` handshake, sealed
//! messages), the [`WsRelay`] the engine drives, and the device side,
//! [`SyncExt::enable_sync`], with reconnection. The server side (`blazedb-server`) uses
//! [`accept_handshake_with`] and [`Session::into_relay`].

mod client;
mod error;
mod keys;
mod peer;
mod relay;
mod session;

pub use client::{RemoteNode, RemoteOptions, RemoteState, RemoteStatus, RemoteSync, SyncExt};
pub use error::RemoteError;
pub use keys::{
    STATIC_KEY_SETTING, forget_node_keys, node_keys, node_keys_for, pin_server_key,
    pinned_server_key,
};
pub use peer::PeerSync;
pub use relay::{RelayCounters, RelayInjector, RelayOptions, WsRelay};
pub use session::{
    Accepted, Session, Transport, accept_handshake, accept_handshake_with, connect_handshake,
    websocket_config,
};
