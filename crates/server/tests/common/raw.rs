//! A device speaking the protocol by hand: the WebSocket upgrade, the Noise handshake and
//! sealed messages, so that tests can send what a well-behaved client never would.

use std::net::SocketAddr;
use std::time::Duration;

use blazedb_core::NodeId;
use blazedb_format::VersionVector;
use blazedb_protocol::secure::{Initiator, SecureChannel, StaticKeys, Suite};
use blazedb_protocol::{Capabilities, CloseCode, Message, PROTOCOL_VERSION};
use blazedb_sync::remote::websocket_config;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A hand-made device: its static keys and the node id it says hello with.
pub struct RawDevice {
    pub keys: StaticKeys,
    pub node: NodeId,
}

impl RawDevice {
    pub fn new() -> RawDevice {
        RawDevice {
            keys: StaticKeys::generate(Suite::default()).unwrap(),
            node: NodeId::random(),
        }
    }

    /// Its `Hello` for `database`.
    pub fn hello(&self, database: &str) -> Message {
        hello_as(self.node, database)
    }

    /// Its key's fingerprint, as the server logs and names it.
    pub fn fingerprint(&self) -> String {
        blazedb_protocol::secure::fingerprint(self.keys.public())
    }
}

/// A `Hello` for `database` from `node`.
pub fn hello_as(node: NodeId, database: &str) -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node,
        database: database.into(),
        capabilities: Capabilities::NONE,
        head: 0,
    }
}

/// One side of a hand-made session: the WebSocket and the sealed channel.
pub struct RawSession {
    pub ws: WebSocketStream<TcpStream>,
    pub channel: SecureChannel,
}

impl RawSession {
    /// Upgrades to a WebSocket on `/sync/{database}` and runs the Noise handshake with `keys`.
    pub async fn connect(address: SocketAddr, database: &str, keys: &StaticKeys) -> RawSession {
        RawSession::try_connect(address, database, keys)
            .await
            .expect("the server accepts the connection and the handshake")
    }

    /// Like [`RawSession::connect`]; `None` when the server drops the connection first.
    pub async fn try_connect(
        address: SocketAddr,
        database: &str,
        keys: &StaticKeys,
    ) -> Option<RawSession> {
        let tcp = TcpStream::connect(address).await.ok()?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{address}/sync/{database}"),
            tcp,
            Some(websocket_config()),
        )
        .await
        .ok()?;
        let (initiator, first) = Initiator::new(keys, database, PROTOCOL_VERSION)
            .unwrap()
            .write_first()
            .unwrap();
        ws.send(WsMessage::Binary(first.into())).await.ok()?;
        let second = loop {
            if let WsMessage::Binary(b) = ws.next().await?.ok()? {
                break b;
            }
        };
        let (established, third) = initiator
            .read_second(&second)
            .unwrap()
            .write_third()
            .unwrap();
        ws.send(WsMessage::Binary(third.into())).await.ok()?;
        Some(RawSession {
            ws,
            channel: established.into_channel(),
        })
    }

    /// Connects as `device`, enrolls with `token`, says hello and pulls from the start.
    pub async fn enrolled(
        address: SocketAddr,
        database: &str,
        device: &RawDevice,
        token: String,
    ) -> RawSession {
        let mut session = RawSession::connect(address, database, &device.keys).await;
        for message in [
            Message::Enroll { token },
            device.hello(database),
            Message::Pull {
                from: 0,
                vector: VersionVector::new(),
                checks: Vec::new(),
            },
        ] {
            session.send(&message).await;
        }
        session
    }

    /// Seals and sends one message.
    pub async fn send(&mut self, message: &Message) {
        let sealed = self.channel.seal(&message.encode()).unwrap();
        self.ws
            .send(WsMessage::Binary(sealed.into()))
            .await
            .unwrap();
    }

    /// The next sealed message, or `None` when the connection ends first (within `limit`).
    pub async fn recv(&mut self, limit: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) | Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => {
                    return None;
                }
                Ok(Some(Ok(WsMessage::Binary(b)))) => {
                    return Some(Message::decode(&self.channel.open(&b).unwrap()).unwrap());
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Reads until the server sends its sealed `Close`; returns its code and reason. Panics
    /// when the connection ends without one.
    pub async fn close_from_server(&mut self) -> (CloseCode, String) {
        loop {
            match self.recv(Duration::from_secs(10)).await {
                Some(Message::Close { code, reason }) => return (code, reason),
                Some(_) => {}
                None => panic!("the connection ended without a Close from the server"),
            }
        }
    }

    /// Reads until the server ends the connection; returns its close frame's code, if any.
    pub async fn closed_by_server(&mut self) -> Option<u16> {
        closed_by_server(&mut self.ws).await
    }
}

/// Reads until the server ends the connection; returns its close frame's code, if any.
pub async fn closed_by_server(ws: &mut WebSocketStream<TcpStream>) -> Option<u16> {
    close_frame(ws).await.map(|(code, _)| code)
}

/// Reads until the server ends the connection; returns its close frame's code and reason, if
/// it sent one.
pub async fn close_frame(ws: &mut WebSocketStream<TcpStream>) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the server did not close the connection"),
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                eprintln!("close_frame: {e}");
                return None;
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The plaintext of every sealed message the server sends `session` until it has been
/// quiet for `quiet`: what the device reads, as bytes (ask for no compression in its
/// `Hello` to read them as they were encoded).
pub async fn plaintexts(session: &mut RawSession, quiet: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(quiet, session.ws.next()).await {
        if let WsMessage::Binary(sealed) = frame {
            out.push(session.channel.open(&sealed).unwrap());
        }
    }
    out
}

/// Does `haystack` hold the bytes of `needle`?
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
