//! Framing: `[length: u32 big-endian][payload]` on a byte stream.
//!
//! [`encode_frame`] turns a message into a frame; a [`FrameDecoder`] turns a byte stream,
//! received in chunks of any size, back into messages. Neither does I/O.

use std::fmt;

use crate::error::{LocalFailure, Malformed, ProtocolError};
use crate::message::Message;

/// The frame limit a [`FrameDecoder`] uses unless told otherwise: 16 MiB of payload.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;
/// Bytes before each payload: its length as a big-endian `u32`.
pub const FRAME_HEADER_LEN: usize = 4;

/// Buffer capacity a [`FrameDecoder`] keeps when it runs empty; anything above is released,
/// so a connection that once received a large frame does not hold on to its memory.
const RETAINED_CAPACITY: usize = 64 * 1024;

fn frame(payload: &[u8]) -> Vec<u8> {
    // A payload longer than u32::MAX cannot be framed; its header then claims u32::MAX bytes,
    // more than any decoder accepts, so the receiver refuses it (FrameTooLarge) instead of
    // misreading the stream. `try_encode_frame` reports the problem to the sender instead.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frame carrying `message`: its encoded length as a big-endian `u32`, then
/// [`Message::encode`].
///
/// The sender is responsible for staying under the receiver's limit (by default
/// [`DEFAULT_MAX_FRAME_LEN`]) and for the rules of [`Message::validate`]; a peer refuses a
/// frame that breaks them. [`try_encode_frame`] checks both.
pub fn encode_frame(message: &Message) -> Vec<u8> {
    frame(&message.encode())
}

/// Like [`encode_frame`], but refuses a message the peer would refuse: one that breaks
/// [`Message::validate`] ([`LocalFailure::Unsendable`]) or whose payload is longer than
/// `max_frame_len` ([`LocalFailure::MessageTooLarge`]); split large operation batches.
pub fn try_encode_frame(message: &Message, max_frame_len: u32) -> Result<Vec<u8>, ProtocolError> {
    message.validate()?;
    let payload = message.encode();
    match u32::try_from(payload.len()) {
        Ok(len) if len <= max_frame_len => Ok(frame(&payload)),
        _ => Err(LocalFailure::MessageTooLarge {
            len: payload.len(),
            max: max_frame_len,
        }
        .into()),
    }
}

/// Reassembles frames from a byte stream and decodes their messages.
///
/// Feed it whatever the transport received with [`FrameDecoder::push`], then take messages
/// with [`FrameDecoder::next_message`] until it returns `Ok(None)`. It holds at most
/// `max_frame_len + 4` bytes: `push` takes only what fits and says how much that was, so the
/// usual loop is
///
/// ```
/// use blazedb_protocol::{encode_frame, FrameDecoder, Message, ProtocolError};
///
/// fn on_received(
///     decoder: &mut FrameDecoder,
///     mut bytes: &[u8],
///     handle: &mut impl FnMut(Message),
/// ) -> Result<(), ProtocolError> {
///     loop {
///         let taken = decoder.push(bytes);
///         bytes = bytes.get(taken..).unwrap_or_default();
///         while let Some(message) = decoder.next_message()? {
///             handle(message);
///         }
///         if bytes.is_empty() {
///             return Ok(());
///         }
///     }
/// }
///
/// let mut stream = Vec::new();
/// for nonce in 0..100 {
///     stream.extend(encode_frame(&Message::Ping { nonce }));
/// }
/// // A limit of 16 bytes: the decoder holds at most 20, the loop still sees every ping.
/// let mut decoder = FrameDecoder::new(16);
/// let mut seen = Vec::new();
/// on_received(&mut decoder, &stream, &mut |m| seen.push(m)).unwrap();
/// assert_eq!(seen.len(), 100);
/// assert_eq!(seen[99], Message::Ping { nonce: 99 });
/// ```
///
/// A frame header announcing more than `max_frame_len` bytes is refused as soon as its four
/// bytes arrive, before anything is allocated for it. Errors are final: after the first one
/// the stream cannot be trusted, every later call returns the same error and pushed bytes
/// are dropped. Send `Close` with [`ProtocolError::close_code`] and drop the connection.
pub struct FrameDecoder {
    /// Received bytes; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    max_frame_len: u32,
    error: Option<ProtocolError>,
}

impl FrameDecoder {
    /// A decoder that accepts frames of up to `max_frame_len` payload bytes.
    pub fn new(max_frame_len: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
            error: None,
        }
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Most bytes the decoder holds at once: the largest frame with its header.
    fn limit(&self) -> usize {
        usize::try_from(self.max_frame_len)
            .unwrap_or(usize::MAX)
            .saturating_add(FRAME_HEADER_LEN)
    }

    /// Bytes received but not yet returned as a message. Non-zero when the transport reaches
    /// end of stream means the peer stopped in the middle of a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// How many bytes the next [`FrameDecoder::push`] takes at most.
    pub fn free_space(&self) -> usize {
        self.limit().saturating_sub(self.buffered_len())
    }

    /// The first error this decoder returned, if any.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }

    /// Appends received bytes and returns how many it took: all of them unless the buffer
    /// would exceed `max_frame_len + 4` bytes. Then the buffer holds a complete frame (or a
    /// header that [`FrameDecoder::next_message`] refuses): take messages, then push the rest.
    /// After an error, bytes are dropped and reported as taken.
    #[must_use = "bytes beyond the returned count were not taken; push them again later"]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.error.is_some() {
            return bytes.len();
        }
        self.compact();
        let take = bytes.len().min(self.free_space());
        let Some(taken) = bytes.get(..take) else {
            return 0;
        };
        let needed = self.buf.len() + take;
        if needed > self.buf.capacity() {
            // Grow like Vec does, but never past the limit.
            let target = self
                .buf
                .capacity()
                .saturating_mul(2)
                .max(needed)
                .min(self.limit().max(needed));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(taken);
        take
    }

    /// Drops consumed bytes from the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > RETAINED_CAPACITY {
            self.buf.shrink_to(RETAINED_CAPACITY);
        }
    }

    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        self.buf = Vec::new();
        self.start = 0;
        self.error = Some(error.clone());
        error
    }

    /// The next complete frame's payload, undecoded; `Ok(None)` until more bytes arrive.
    /// For layers that put something other than a plain [`Message`] in frames (the secure
    /// channel will put ciphertext there); most callers want [`FrameDecoder::next_message`].
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let available = self.buf.get(self.start..).unwrap_or_default();
        let Some(header) = available.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        let have = available.len() - FRAME_HEADER_LEN;
        if len == 0 {
            return Err(self.fail(Malformed::EmptyFrame.into()));
        }
        if len > self.max_frame_len {
            return Err(self.fail(
                Malformed::FrameTooLarge {
                    len,
                    max: self.max_frame_len,
                }
                .into(),
            ));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if have < len {
            return Ok(None);
        }
        let begin = self.start + FRAME_HEADER_LEN;
        self.start = begin + len;
        Ok(self.buf.get(begin..begin + len))
    }

    /// The next complete message; `Ok(None)` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let Some(payload) = self.next_frame()? else {
            return Ok(None);
        };
        match Message::decode(payload) {
            Ok(message) => Ok(Some(message)),
            Err(error) => Err(self.fail(error)),
        }
    }
}

impl Default for FrameDecoder {
    /// A decoder with the [`DEFAULT_MAX_FRAME_LEN`] limit.
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered_len", &self.buffered_len())
            .field("max_frame_len", &self.max_frame_len)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use blazedb_format::{
        Date, DecodeError, Fields, NodeId, OpDigest, OpId, OpKind, Operation, Uuid, VersionVector,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::error::Rule;
    use crate::message::{CloseCode, OpCheck, PROTOCOL_VERSION};

    fn hello() -> Message {
        Message::Hello {
            protocol_version: 1,
            node: NodeId(Uuid::from_bytes([9; 16])),
            database: "notes".to_owned(),
            capabilities: crate::Capabilities::NONE,
            head: 0,
        }
    }

    fn push_all(decoder: &mut FrameDecoder, bytes: &[u8]) {
        assert_eq!(decoder.push(bytes), bytes.len());
    }

    #[test]
    fn a_frame_is_a_big_endian_length_then_the_message() {
        let frame = encode_frame(&Message::Ping { nonce: 42 });
        assert_eq!(frame, [0, 0, 0, 4, 0xB7, 0x16, 0x04, 42]);
        let payload = Message::Ping { nonce: 300 }.encode();
        let frame = encode_frame(&Message::Ping { nonce: 300 });
        assert_eq!(&frame[..4], &(payload.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], &payload[..]);
    }

    /// The examples in docs/protocol.md, byte for byte.
    #[test]
    fn the_documented_frames_are_exact() {
        assert_eq!(
            encode_frame(&Message::ack(300)),
            [0, 0, 0, 6, 0xB7, 0x16, 0x03, 0xAC, 0x02, 0x00]
        );
        let mut hello = vec![0, 0, 0, 0x1D, 0xB7, 0x16, 0x01, 0x03, 0x00];
        hello.extend([0x11; 16]);
        hello.extend([0x08, b'b', b'u', b'g', b's']);
        hello.extend([0x01, 0xAC, 0x02]); // capabilities: ZSTD; head: 300
        assert_eq!(
            encode_frame(&Message::Hello {
                protocol_version: PROTOCOL_VERSION,
                node: NodeId(Uuid::from_bytes([0x11; 16])),
                database: "bugs".to_owned(),
                capabilities: crate::Capabilities::ZSTD,
                head: 300,
            }),
            hello
        );
        // docs/protocol.md, Examples: `Records` with one record, its field's stamp the insert's.
        let stamp = blazedb_format::Stamp {
            lamport: 9,
            node: NodeId(Uuid::from_bytes([0x11; 16])),
        };
        let mut records = vec![0, 0, 0, 0x3A, 0xB7, 0x16, 0x0D, 0x01];
        records.extend([0x08, b'b', b'u', b'g', b's']);
        records.extend([0x33; 16]);
        records.extend([0x01, 0x09, 0x00]);
        records.extend([0x11; 16]);
        records.extend([0x01, 0x0A, b't', b'i', b't', b'l', b'e']);
        records.extend([0x45, b'C', b'r', b'a', b's', b'h', 0x00]);
        assert_eq!(
            encode_frame(&Message::Records {
                records: vec![blazedb_format::SnapshotRecord {
                    collection: "bugs".to_owned(),
                    id: Uuid::from_bytes([0x33; 16]),
                    state: blazedb_format::RecordState::inserted(
                        [("title".to_owned(), "Crash".into())].into(),
                        stamp,
                    ),
                }],
            }),
            records
        );
        let origin = NodeId(Uuid::from_bytes([0x11; 16]));
        let forbidden = |seq| crate::Rejection {
            op: blazedb_format::OpId { origin, seq },
            code: blazedb_format::RejectCode::Forbidden,
            reason: "team".to_owned(),
        };
        let mut ack = vec![0, 0, 0, 0x22, 0xB7, 0x16, 0x03, 0xAE, 0x02, 0x02, 0x00];
        ack.extend([0x11; 16]);
        ack.extend([0x03, 0x02, 0x08, b't', b'e', b'a', b'm']);
        ack.extend([0x01, 0x04, 0x02, 0x01]);
        assert_eq!(
            encode_frame(&Message::Ack {
                position: 302,
                rejected: vec![forbidden(3), forbidden(4)],
            }),
            ack
        );
        // The other selective-sync examples of docs/protocol.md.
        let bugs = |id: u8| crate::RecordKey::new("bugs", Uuid::from_bytes([id; 16]));
        let digest = crate::membership::MembershipDigest::of(1, &[bugs(0x22), bugs(0x33)]);
        assert_eq!(
            digest.buckets(),
            [0x5CC2_7999_F170_E518, 0xE0C3_6CAB_BA80_C82C]
        );
        let mut reconcile = vec![0, 0, 0, 0x14, 0xB7, 0x16, 0x0B, 0x01];
        reconcile.extend([0x5C, 0xC2, 0x79, 0x99, 0xF1, 0x70, 0xE5, 0x18]);
        reconcile.extend([0xE0, 0xC3, 0x6C, 0xAB, 0xBA, 0x80, 0xC8, 0x2C]);
        assert_eq!(
            encode_frame(&Message::Reconcile {
                level: 1,
                buckets: digest.buckets().to_vec(),
            }),
            reconcile
        );
        let mut held = vec![0, 0, 0, 0x1C, 0xB7, 0x16, 0x0C, 0x01, 0x01, 0x01, 0x01];
        held.extend([0x08, b'b', b'u', b'g', b's']);
        held.extend([0x44; 16]);
        assert_eq!(
            encode_frame(&Message::Held {
                level: 1,
                buckets: vec![1],
                records: vec![bugs(0x44)],
            }),
            held
        );
        let mut purge = vec![0, 0, 0, 0x2B, 0xB7, 0x16, 0x0E, 0x01, 0x02];
        purge.extend([0x08, b'b', b'u', b'g', b's']);
        purge.extend([0x22; 16]);
        purge.push(0x01);
        purge.extend([0x44; 16]);
        assert_eq!(
            encode_frame(&Message::Purge {
                reason: blazedb_format::PurgeReason::RecordChanged,
                records: vec![bugs(0x22), bugs(0x44)],
            }),
            purge
        );
        let mut policy = vec![0, 0, 0, 0x23, 0xB7, 0x16, 0x0F, 0x01];
        policy.extend([0x08, b'b', b'u', b'g', b's', 0x00, 0x22]);
        policy.extend(br#"{"status":"open"}"#);
        policy.extend([0x01, 0x0A, b'n', b'o', b't', b'e', b's']);
        assert_eq!(
            encode_frame(&Message::Policy {
                only: vec!["bugs".to_owned()],
                except: vec![],
                filter: r#"{"status":"open"}"#.to_owned(),
                exclude_fields: vec!["notes".to_owned()],
            }),
            policy
        );
        let mut enroll = vec![0, 0, 0, 0x0C, 0xB7, 0x16, 0x08, 0x10];
        enroll.extend(b"bzt1_abc");
        assert_eq!(
            encode_frame(&Message::Enroll {
                token: "bzt1_abc".to_owned(),
            }),
            enroll
        );
        assert_eq!(
            encode_frame(&Message::close(CloseCode::Normal, "bye")),
            [0, 0, 0, 8, 0xB7, 0x16, 0x06, 0x00, 0x06, b'b', b'y', b'e']
        );

        let n1 = NodeId(Uuid::from_bytes([0x11; 16]));
        let n2 = NodeId(Uuid::from_bytes([0x22; 16]));
        assert_eq!(
            encode_frame(&Message::Ops {
                from: 4,
                to: 5,
                ops: vec![],
            }),
            [0, 0, 0, 6, 0xB7, 0x16, 0x02, 0x04, 0x05, 0x00]
        );

        let delete = Operation {
            id: OpId { origin: n1, seq: 3 },
            lamport: 9,
            wall: Date::from_unix_millis(1_700_000_000_000),
            kind: OpKind::Delete,
            collection: "bugs".to_owned(),
            record: Uuid::from_bytes([0x22; 16]),
            fields: Fields::new(),
        };
        let mut ops = vec![0, 0, 0, 0x38, 0xB7, 0x16, 0x02];
        ops.extend([0xAC, 0x02, 0xAE, 0x02, 0x01, 0x00]);
        ops.extend([0x11; 16]);
        ops.extend([0x03, 0x09, 0x80, 0xA0, 0xAB, 0xFE, 0xF9, 0x62, 0x03]);
        ops.extend([0x08, b'b', b'u', b'g', b's']);
        ops.extend([0x22; 16]);
        ops.push(0x00);
        assert_eq!(
            encode_frame(&Message::Ops {
                from: 300,
                to: 302,
                ops: vec![delete],
            }),
            ops
        );

        let mut pull = vec![0, 0, 0, 0x35, 0xB7, 0x16, 0x07, 0xAC, 0x02, 0x02, 0x00];
        pull.extend([0x11; 16]);
        pull.extend([0x07, 0x00]);
        pull.extend([0x22; 16]);
        pull.push(0x01);
        // One check: node 1 (a reference to its entry in the node table), seq 7, digest.
        pull.extend([0x01, 0x01, 0x07]);
        pull.extend([0xD1; 8]);
        assert_eq!(
            encode_frame(&Message::Pull {
                from: 300,
                vector: VersionVector::from_iter([(n2, 1), (n1, 7)]),
                checks: vec![OpCheck {
                    node: n1,
                    seq: 7,
                    digest: OpDigest([0xD1; 8]),
                }],
            }),
            pull
        );
    }

    #[test]
    fn a_decoder_waits_for_the_whole_frame() {
        let frame = encode_frame(&hello());
        let mut decoder = FrameDecoder::default();
        for (i, byte) in frame.iter().enumerate() {
            assert_eq!(decoder.next_message(), Ok(None), "after {i} bytes");
            push_all(&mut decoder, &[*byte]);
        }
        assert_eq!(decoder.next_message(), Ok(Some(hello())));
        assert_eq!(decoder.next_message(), Ok(None));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn several_frames_in_one_chunk_come_out_in_order() {
        let messages = [
            hello(),
            Message::ack(3),
            Message::close(CloseCode::Normal, "bye"),
        ];
        let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
        let mut decoder = FrameDecoder::default();
        push_all(&mut decoder, &stream);
        for message in &messages {
            assert_eq!(decoder.next_message().as_ref(), Ok(&Some(message.clone())));
        }
        assert_eq!(decoder.next_message(), Ok(None));
    }

    #[test]
    fn a_zero_length_frame_is_refused() {
        let mut decoder = FrameDecoder::default();
        push_all(&mut decoder, &[0, 0, 0, 0]);
        assert_eq!(decoder.next_message(), Err(Malformed::EmptyFrame.into()));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header_alone() {
        let mut decoder = FrameDecoder::new(100);
        push_all(&mut decoder, &[0, 0, 0]);
        assert_eq!(decoder.next_message(), Ok(None));
        push_all(&mut decoder, &[101]);
        let err = decoder.next_message().unwrap_err();
        assert_eq!(
            err,
            ProtocolError::from(Malformed::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            err.to_string(),
            "frame of 101 bytes exceeds the limit of 100 bytes"
        );
        assert!(err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
    }

    #[test]
    fn a_frame_exactly_at_the_limit_is_accepted() {
        let frame = encode_frame(&hello());
        let mut decoder = FrameDecoder::new((frame.len() - 4) as u32);
        push_all(&mut decoder, &frame);
        assert_eq!(decoder.next_message(), Ok(Some(hello())));
    }

    #[test]
    fn errors_are_final() {
        let mut decoder = FrameDecoder::default();
        push_all(&mut decoder, &[0, 0, 0, 3, 0xB7, 0x16, 0x7E]);
        let err = ProtocolError::from(Malformed::UnknownMessageType { code: 0x7E });
        assert_eq!(decoder.next_message(), Err(err.clone()));
        push_all(&mut decoder, &encode_frame(&hello()));
        assert_eq!(decoder.next_message(), Err(err.clone()));
        assert_eq!(decoder.error(), Some(&err));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn a_malformed_payload_is_a_decode_error() {
        let mut decoder = FrameDecoder::default();
        push_all(&mut decoder, &[0, 0, 0, 2, 0xB8, 0x16]);
        assert_eq!(
            decoder.next_message(),
            Err(ProtocolError::Malformed(Malformed::Decode(
                DecodeError::BadMagic { found: 0xB8 }
            )))
        );
    }

    #[test]
    fn push_takes_no_more_than_the_largest_frame_and_its_header() {
        let ping = encode_frame(&Message::Ping { nonce: 1 });
        let stream: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 10).collect();
        // The largest frame is a whole ping, so the decoder holds 1.5 pings' bytes.
        let mut decoder = FrameDecoder::new(ping.len() as u32);
        let taken = decoder.push(&stream);
        assert_eq!(taken, ping.len() + 4);
        assert_eq!(decoder.free_space(), 0);
        assert_eq!(decoder.push(&stream[taken..]), 0);
        assert!(decoder.buf.capacity() <= ping.len() + 4);
        assert_eq!(decoder.next_message(), Ok(Some(Message::Ping { nonce: 1 })));
        assert_eq!(decoder.push(&stream[taken..]), ping.len());
    }

    #[test]
    fn the_buffer_shrinks_after_a_large_frame() {
        let big = Message::close(CloseCode::Normal, "x".repeat(1000));
        let frame = encode_frame(&big);
        let mut decoder = FrameDecoder::default();
        push_all(&mut decoder, &frame);
        assert_eq!(decoder.next_message(), Ok(Some(big)));
        // Grow the buffer past what it retains, then drain it.
        let pings: Vec<u8> = (0..20_000)
            .flat_map(|nonce| encode_frame(&Message::Ping { nonce }))
            .collect();
        push_all(&mut decoder, &pings);
        while decoder.next_message().unwrap().is_some() {}
        assert!(decoder.buf.capacity() > RETAINED_CAPACITY);
        push_all(&mut decoder, &[]);
        assert!(decoder.buf.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn try_encode_frame_refuses_what_the_peer_would_refuse() {
        let hello = hello();
        let len = hello.encode().len();
        assert_eq!(
            try_encode_frame(&hello, len as u32),
            Ok(encode_frame(&hello))
        );
        let err = try_encode_frame(&hello, len as u32 - 1).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::from(LocalFailure::MessageTooLarge {
                len,
                max: len as u32 - 1
            })
        );
        assert!(!err.is_malformed_input());
        assert_eq!(err.close_code(), CloseCode::InternalError);
        let nameless = Message::Hello {
            protocol_version: 1,
            node: NodeId(Uuid::nil()),
            database: String::new(),
            capabilities: crate::Capabilities::NONE,
            head: 0,
        };
        assert_eq!(
            try_encode_frame(&nameless, DEFAULT_MAX_FRAME_LEN),
            Err(ProtocolError::from(LocalFailure::Unsendable(
                Rule::DatabaseNameEmpty
            )))
        );
        for (from, to) in [(3, 3), (4, 3)] {
            let err = try_encode_frame(
                &Message::Ops {
                    from,
                    to,
                    ops: vec![],
                },
                DEFAULT_MAX_FRAME_LEN,
            )
            .unwrap_err();
            assert!(
                matches!(err, ProtocolError::Local(LocalFailure::Unsendable(_))),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                "message cannot be sent: ops range is empty or reversed (from must be less than to)"
            );
        }
    }

    fn cases() -> u32 {
        if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
            10_000
        } else {
            256
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Whatever length a header claims beyond the limit, the decoder refuses it without
        /// reserving room for it: its buffer never grows past the bytes actually pushed.
        #[test]
        fn frames_over_the_limit_are_refused_without_allocating(
            max in prop_oneof![0u32..64, 0u32..100_000, Just(DEFAULT_MAX_FRAME_LEN)],
            excess in prop_oneof![1u32..16, any::<u32>()],
            body in proptest::collection::vec(any::<u8>(), 0..64),
            split in any::<prop::sample::Index>(),
        ) {
            let len = max.saturating_add(excess).max(max + 1);
            let mut stream = len.to_be_bytes().to_vec();
            stream.extend(&body);
            let mut decoder = FrameDecoder::new(max);
            let cut = split.index(stream.len() + 1);
            let mut taken = decoder.push(&stream[..cut]);
            if cut >= 4 {
                let err = decoder.next_message().unwrap_err();
                prop_assert_eq!(err, ProtocolError::from(Malformed::FrameTooLarge { len, max }));
            } else {
                prop_assert_eq!(decoder.next_message(), Ok(None));
                prop_assert!(decoder.buf.capacity() <= 2 * stream.len());
                taken += decoder.push(&stream[cut..]);
                prop_assert!(decoder.buf.capacity() <= 2 * stream.len());
                prop_assert_eq!(
                    decoder.next_message(),
                    Err(ProtocolError::from(Malformed::FrameTooLarge { len, max }))
                );
            }
            prop_assert!(taken <= stream.len());
            // After the error the buffer is released.
            prop_assert_eq!(decoder.buf.capacity(), 0);
        }
    }
}
