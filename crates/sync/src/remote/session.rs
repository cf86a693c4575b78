//! The secure session over a WebSocket: the Noise `XX` handshake on either side, then sealed
//! messages. See docs/protocol.md, "WebSocket transport".
//!
//! Each WebSocket binary message carries one unit: a handshake message, then one sealed
//! payload whose plaintext is one encoded [`Message`]. The WebSocket delimits them, so no
//! frame header is added.

use std::time::Duration;

use blazedb_protocol::secure::{
    Established, Initiator, Responder, SecureChannel, StaticKeys, Suite, fingerprint,
};
use blazedb_protocol::{CloseCode, Message, PROTOCOL_VERSION, secure};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::error::RemoteError;
use super::relay::{RelayOptions, WsRelay};

/// How much one read of a WebSocket takes from the socket at most. tungstenite zeroes
/// this much before every read (its default, 128 KiB, cost a server with a thousand
/// devices more CPU in `memset` than in cryptography) and keeps it per connection; most
/// of our messages are far smaller, and a large one simply takes several reads.
pub const WEBSOCKET_READ_BUFFER: usize = 16 * 1024;

/// The WebSocket settings both sides use: one message holds at most one sealed payload of
/// the largest message the protocol allows.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
        .max_message_size(Some(secure::MAX_SEALED_LEN))
        .max_frame_size(Some(secure::MAX_SEALED_LEN))
}

/// What a byte stream must be to carry a session.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A WebSocket after the handshake: the peer is authenticated by its static key and every
/// message is sealed. On a server, check [`Session::peer_key`] (is it enrolled?) before
/// [`Session::into_relay`].
pub struct Session<S> {
    pub(crate) ws: WebSocketStream<S>,
    pub(crate) channel: SecureChannel,
    suite: Suite,
    peer_key: Vec<u8>,
}

/// A session a server accepted: [`accept_handshake`]'s result.
pub type Accepted<S> = Session<S>;

impl<S: Transport> Session<S> {
    /// The peer's static public key, authenticated by the handshake.
    pub fn peer_key(&self) -> &[u8] {
        &self.peer_key
    }

    /// The peer's key as a short fingerprint, for logs and errors.
    pub fn peer_fingerprint(&self) -> String {
        fingerprint(&self.peer_key)
    }

    /// The suite of the handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Sends one sealed message.
    pub async fn send(&mut self, message: &Message) -> Result<(), RemoteError> {
        self.send_payload(&message.encode()).await
    }

    /// Seals and sends a payload encoded already: a message's [`Message::encode`] or
    /// [`Message::encode_for`] (compressed), as a sender that encodes ahead of time has it.
    pub async fn send_payload(&mut self, payload: &[u8]) -> Result<(), RemoteError> {
        let sealed = self.channel.seal(payload)?;
        self.ws.send(WsMessage::Binary(sealed.into())).await?;
        Ok(())
    }

    /// Receives the next sealed message. A `Close` from the peer is
    /// [`RemoteError::Refused`].
    pub async fn recv(&mut self) -> Result<Message, RemoteError> {
        let sealed = next_binary(&mut self.ws, "the session").await?;
        let message = Message::decode(&self.channel.open(&sealed)?)?;
        match message {
            Message::Close { code, reason } => Err(RemoteError::Refused { code, reason }),
            other => Ok(other),
        }
    }

    /// Refuses the session: a sealed `Close` with `code` and `reason`, then the WebSocket
    /// closes (with [`CloseCode::websocket_close_code`]: 1008, policy violation, for the
    /// refusals), reading on until the peer answers the close (at most a second): a socket
    /// closed with the peer's messages unread would send a TCP reset, which can destroy the
    /// `Close` before the peer reads it. Waits at most a second for a peer that does not
    /// read.
    pub async fn refuse(mut self, code: CloseCode, reason: &str) {
        let close = Message::close(code, reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if let Ok(sealed) = self.channel.seal(&close.encode()) {
                let _ = self.ws.send(WsMessage::Binary(sealed.into())).await;
            }
            let _ = self
                .ws
                .close(Some(CloseFrame {
                    code: WsCloseCode::from(code.websocket_close_code()),
                    reason: code.to_string().into(),
                }))
                .await;
        })
        .await;
        drain(&mut self.ws).await;
    }

    /// Ends the session after [`Session::recv`] failed with `error`: a message that opened but
    /// does not decode is answered with a sealed `Close` saying what is wrong (as
    /// [`Session::refuse`]); a payload that does not open, or a text message, with a
    /// WebSocket close 1002 and no sealed reply (the channel has failed, or the WebSocket
    /// carried something the protocol does not). After anything else (the peer's `Close`,
    /// the connection broke) nothing more is sent.
    pub async fn end_after(mut self, error: &RemoteError) {
        match error {
            RemoteError::Protocol(e) if !self.channel.is_failed() => {
                self.refuse(e.close_code(), &e.to_string()).await;
            }
            RemoteError::Protocol(_) | RemoteError::WebSocket(_) => {
                close_failed(&mut self.ws, error).await;
            }
            _ => {}
        }
    }

    /// The relay the sync engine drives over this session. Its tasks run on the current tokio
    /// runtime, so call this from within it. `first` is a message already received (with
    /// [`Session::recv`]) that the engine must still see.
    pub fn into_relay(self, first: Option<Message>, options: RelayOptions) -> WsRelay<S> {
        WsRelay::new(self, first, options)
    }
}

/// Reads the next binary WebSocket message (skipping pings and pongs).
pub(crate) async fn next_binary<S: Transport>(
    ws: &mut WebSocketStream<S>,
    during: &'static str,
) -> Result<Vec<u8>, RemoteError> {
    loop {
        match ws.next().await {
            None => return Err(RemoteError::Closed(during)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WsMessage::Binary(data))) => return Ok(data.into()),
            Some(Ok(WsMessage::Text(_))) => {
                return Err(RemoteError::WebSocket(
                    "the peer sent a text message (the protocol uses binary messages only)".into(),
                ));
            }
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(RemoteError::WebSocket(match frame {
                    Some(f) => format!("the peer closed the WebSocket ({}): {}", f.code, f.reason),
                    None => "the peer closed the WebSocket".into(),
                }));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Closes a WebSocket whose handshake failed, saying why in the close frame (the reason is
/// not secret: it names what was malformed, or the suite this side has no key for). Waits at
/// most a second.
async fn close_failed<S: Transport>(ws: &mut WebSocketStream<S>, error: &RemoteError) {
    let (code, reason) = match error {
        // The protocol error's own text: RemoteError's "the peer broke the protocol" would be
        // wrong for what is not the peer's fault (a suite without a key here), and too long.
        RemoteError::Protocol(e) if e.close_code() == CloseCode::InternalError => {
            (WsCloseCode::Error, e.to_string())
        }
        RemoteError::Protocol(e) => (WsCloseCode::Protocol, e.to_string()),
        RemoteError::WebSocket(_) => (WsCloseCode::Protocol, error.to_string()),
        RemoteError::Timeout(..) | RemoteError::ServerKeyMismatch { .. } => {
            (WsCloseCode::Policy, error.to_string())
        }
        _ => (WsCloseCode::Error, error.to_string()),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        ws.close(Some(CloseFrame {
            code,
            reason: close_frame_reason(reason).into(),
        })),
    )
    .await;
    drain(ws).await;
}

/// Longest reason a WebSocket close frame carries (its payload is at most 125 bytes, 2 of
/// them the code).
const MAX_CLOSE_FRAME_REASON: usize = 123;

/// `reason` cut to fit a close frame, at a character boundary and marked with `…` when cut.
fn close_frame_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_FRAME_REASON {
        let mut end = MAX_CLOSE_FRAME_REASON - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// After our close frame: reads on (ignoring what comes) until the peer answers it or
/// [`super::relay::CLOSE_DRAIN`] passes, so that the socket is not closed with the peer's
/// bytes unread, which would make the kernel send a reset that can destroy our last frames.
async fn drain<S: Transport>(ws: &mut WebSocketStream<S>) {
    let _ = tokio::time::timeout(super::relay::CLOSE_DRAIN, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The session once the handshake (run under `timeout`) ended; on failure the WebSocket is
/// closed with the reason.
async fn finish<S: Transport>(
    mut ws: WebSocketStream<S>,
    result: Result<Result<Established, RemoteError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<Session<S>, RemoteError> {
    match result.unwrap_or(Err(RemoteError::Timeout(
        timeout,
        "waiting for the handshake",
    ))) {
        Ok(established) => Ok(Session {
            suite: established.suite(),
            peer_key: established.remote_static().to_vec(),
            channel: established.into_channel(),
            ws,
        }),
        Err(e) => {
            close_failed(&mut ws, &e).await;
            Err(e)
        }
    }
}

/// The responder's side of the handshake with one key pair: [`accept_handshake_with`] for
/// its suite only.
pub async fn accept_handshake<S: Transport>(
    ws: WebSocketStream<S>,
    keys: &StaticKeys,
    database: &str,
    timeout: Duration,
) -> Result<Accepted<S>, RemoteError> {
    let lookup = |suite| (suite == keys.suite()).then_some(keys);
    accept_handshake_with(ws, lookup, database, timeout).await
}

/// The responder's side of the handshake, on a server: reads message 1, answers with
/// message 2 (this side's static key for the suite message 1 names, from `keys`), reads
/// message 3 (the device's). `database` is the one the device asked for in the URL; it goes
/// into the prologue, so a device that meant another database fails the handshake. On
/// failure the WebSocket is closed with the reason.
pub async fn accept_handshake_with<'k, S: Transport>(
    mut ws: WebSocketStream<S>,
    keys: impl FnOnce(Suite) -> Option<&'k StaticKeys>,
    database: &str,
    timeout: Duration,
) -> Result<Accepted<S>, RemoteError> {
    let result = tokio::time::timeout(timeout, async {
        let first = next_binary(&mut ws, "the handshake").await?;
        let responder = Responder::read_first(keys, database, PROTOCOL_VERSION, &first)?;
        let (responder, second) = responder.write_second()?;
        ws.send(WsMessage::Binary(second.into())).await?;
        let third = next_binary(&mut ws, "the handshake").await?;
        Ok::<_, RemoteError>(responder.read_third(&third)?)
    })
    .await;
    finish(ws, result, timeout).await
}

/// The initiator's side of the handshake, on a device: writes message 1, reads message 2
/// and checks that the server's static key is `server_key` (pinned at enrollment, or taken
/// from the enrollment token) before revealing its own in message 3.
pub async fn connect_handshake<S: Transport>(
    mut ws: WebSocketStream<S>,
    keys: &StaticKeys,
    database: &str,
    server_key: &[u8],
    timeout: Duration,
) -> Result<Session<S>, RemoteError> {
    let result = tokio::time::timeout(timeout, async {
        let (initiator, first) = Initiator::new(keys, database, PROTOCOL_VERSION)?.write_first()?;
        ws.send(WsMessage::Binary(first.into())).await?;
        let second = next_binary(&mut ws, "the handshake").await?;
        let initiator = initiator.read_second(&second)?;
        if initiator.remote_static() != server_key {
            return Err(RemoteError::ServerKeyMismatch {
                expected: fingerprint(server_key),
                got: fingerprint(initiator.remote_static()),
            });
        }
        let (established, third) = initiator.write_third()?;
        ws.send(WsMessage::Binary(third.into())).await?;
        Ok(established)
    })
    .await;
    finish(ws, result, timeout).await
}
