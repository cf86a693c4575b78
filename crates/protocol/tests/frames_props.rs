//! Property tests of message encoding and framing.
//!
//! Every property runs 256 cases; set `BLAZEDB_LONG=1` to run 10 000.
//!
//! Messages are compared by their encodings: the encoding is canonical, so equal bytes mean
//! equal messages, and unlike `==` this also holds for messages carrying NaN doubles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_format::{
    Date, Encoder, FieldState, Fields, Kind, NodeId, OpDigest, OpId, OpKind, Operation,
    PurgeReason, RecordState, RejectCode, SnapshotRecord, Stamp, Uuid, Value, VersionVector,
};
use blazedb_protocol::{
    Capabilities, CloseCode, DEFAULT_COMPRESSION_THRESHOLD, DEFAULT_MAX_FRAME_LEN,
    FRAME_HEADER_LEN, FrameDecoder, LocalFailure, MAX_CLOSE_REASON_LEN, MAX_DATABASE_NAME_LEN,
    MAX_PULL_CHECKS, MAX_REJECT_REASON_LEN, MAX_TOKEN_LEN, Malformed, Message, OpCheck,
    ProtocolError, RecordKey, Rejection, encode_frame, fuzz, try_encode_frame,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;

/// 256 cases normally, 10 000 with `BLAZEDB_LONG=1`.
fn cases() -> u32 {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        10_000
    } else {
        256
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn text(max_chars: usize) -> impl Strategy<Value = String> + Clone {
    vec(
        prop_oneof![
            6 => proptest::char::range('a', 'e'),
            1 => Just('\0'),
            2 => any::<char>(),
        ],
        0..max_chars,
    )
    .prop_map(String::from_iter)
}

/// Strings that often repeat (exercising the string table) and some that do not.
fn string() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => select(vec![
            String::new(),
            "a".to_owned(),
            "title".to_owned(),
            "bugs".to_owned(),
            "日本語".to_owned(),
            "x".repeat(64),
        ]),
        3 => text(12),
        1 => text(80),
    ]
}

fn uuid() -> impl Strategy<Value = Uuid> + Clone {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn counter() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![3 => 0u64..300, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

/// Node ids from a pool of three (so node back-references appear) or random.
fn node() -> impl Strategy<Value = NodeId> + Clone {
    prop_oneof![
        3 => (1u8..=3).prop_map(|n| NodeId(Uuid::from_bytes([n; 16]))),
        1 => uuid().prop_map(NodeId),
    ]
}

fn op_check() -> impl Strategy<Value = OpCheck> {
    (node(), 1u64..=u64::MAX, any::<[u8; 8]>()).prop_map(|(node, seq, digest)| OpCheck {
        node,
        seq,
        digest: OpDigest(digest),
    })
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (0i64..128).prop_map(Value::Int),
        any::<u64>().prop_map(|bits| Value::Double(f64::from_bits(bits))),
        Just(Value::Double(f64::NAN)),
        string().prop_map(Value::String),
        uuid().prop_map(Value::Uuid),
        any::<i64>().prop_map(|n| Value::Date(Date::from_unix_millis(n))),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(string(), inner, 0..4).prop_map(Value::Map),
        ]
    })
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        (node(), counter(), counter(), any::<i64>()),
        select(vec![OpKind::Insert, OpKind::Update, OpKind::Delete]),
        string(),
        uuid(),
        btree_map(string(), value(), 0..5),
    )
        .prop_map(
            |((origin, seq, lamport, wall), kind, collection, record, fields)| Operation {
                id: OpId { origin, seq },
                lamport,
                wall: Date::from_unix_millis(wall),
                kind,
                collection,
                record,
                fields: if kind == OpKind::Delete {
                    Fields::new()
                } else {
                    fields
                },
            },
        )
}

/// A valid `Ops` range: `from < to`, often small, sometimes at the ends of `u64`.
fn ops_range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        3 => (0u64..300, 1u64..4).prop_map(|(from, len)| (from, from + len)),
        1 => (counter(), counter()).prop_map(|(a, b)| match a.cmp(&b) {
            std::cmp::Ordering::Less => (a, b),
            std::cmp::Ordering::Greater => (b, a),
            std::cmp::Ordering::Equal if a == u64::MAX => (a - 1, a),
            std::cmp::Ordering::Equal => (a, a + 1),
        }),
        1 => Just((u64::MAX - 1, u64::MAX)),
    ]
}

/// Version vectors: empty, over the pool of nodes, or with many random nodes.
fn version_vector() -> impl Strategy<Value = VersionVector> {
    prop_oneof![
        1 => Just(VersionVector::new()),
        3 => vec((node(), counter()), 0..6).prop_map(VersionVector::from_iter),
        1 => vec((uuid().prop_map(NodeId), counter()), 0..64).prop_map(VersionVector::from_iter),
    ]
}

fn stamp() -> impl Strategy<Value = Stamp> + Clone {
    (counter(), node()).prop_map(|(lamport, node)| Stamp { lamport, node })
}

/// Record states built directly, not by merging: any stamps, tombstones, registers of any
/// age. The protocol carries whatever state the sender has.
fn record_state() -> impl Strategy<Value = RecordState> {
    (
        proptest::option::of(stamp()),
        proptest::option::of(stamp()),
        btree_map(
            string(),
            (value(), stamp()).prop_map(|(value, stamp)| FieldState { value, stamp }),
            0..4,
        ),
    )
        .prop_map(|(created, deleted, fields)| RecordState {
            created,
            deleted,
            fields,
        })
}

fn snapshot_record() -> impl Strategy<Value = SnapshotRecord> {
    (string(), uuid(), record_state()).prop_map(|(collection, id, state)| SnapshotRecord {
        collection,
        id,
        state,
    })
}

/// Snapshot part numbers: mostly the first few, and the extremes.
fn part() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![3 => 1u32..5, 1 => 1..=u32::MAX, 1 => Just(u32::MAX)]
}

/// A valid snapshot part holding `records`: `total` is at least the number of records.
fn snapshot(records: impl Strategy<Value = Vec<SnapshotRecord>>) -> impl Strategy<Value = Message> {
    (
        counter(),
        part(),
        prop_oneof![3 => 0u64..10, 1 => any::<u64>()],
        records,
        proptest::option::of(version_vector()),
    )
        .prop_map(
            |(position, part, extra, records, vector)| Message::Snapshot {
                position,
                part,
                total: (records.len() as u64).saturating_add(extra),
                records,
                vector,
            },
        )
}

fn close_code() -> impl Strategy<Value = CloseCode> {
    select(CloseCode::ALL.to_vec())
}

/// Capability sets: none, the known ones, and unknown bits (which a receiver keeps).
fn capabilities() -> impl Strategy<Value = Capabilities> + Clone {
    prop_oneof![
        Just(Capabilities::NONE),
        Just(Capabilities::ZSTD),
        any::<u64>().prop_map(Capabilities),
    ]
}

/// Enrollment tokens: printable ASCII like a real token, any text, and the longest allowed.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~]{1,64}",
        1 => text(40).prop_filter("a token is not empty", |s| !s.is_empty()),
        1 => (1..=MAX_TOKEN_LEN).prop_map(|n| "t".repeat(n)),
    ]
}

/// The frame of `message` as sent to a peer with `peer` capabilities.
fn frame_for(message: &Message, peer: Capabilities, threshold: usize) -> Vec<u8> {
    let payload = message.encode_for(peer, threshold);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

fn threshold() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(DEFAULT_COMPRESSION_THRESHOLD), 0usize..4096,]
}

/// Any valid message, including the extremes of each field's range.
fn message() -> impl Strategy<Value = Message> {
    let database = prop_oneof![
        4 => string().prop_filter("a database name is not empty", |s| !s.is_empty()),
        1 => (1..=MAX_DATABASE_NAME_LEN).prop_map(|n| "d".repeat(n)),
        1 => Just("é".repeat(MAX_DATABASE_NAME_LEN / 2)),
    ];
    let reason = prop_oneof![
        4 => string(),
        1 => (0..=MAX_CLOSE_REASON_LEN).prop_map(|n| "r".repeat(n)),
    ];
    prop_oneof![
        (any::<u16>(), node(), database, capabilities(), counter()).prop_map(
            |(protocol_version, node, database, capabilities, head)| Message::Hello {
                protocol_version,
                node,
                database,
                capabilities,
                head,
            }
        ),
        token().prop_map(|token| Message::Enroll { token }),
        (ops_range(), vec(operation(), 0..5)).prop_map(|((from, to), ops)| Message::Ops {
            from,
            to,
            ops
        }),
        // Batches large enough to be compressed at the default threshold.
        (ops_range(), vec(operation(), 10..40)).prop_map(|((from, to), ops)| Message::Ops {
            from,
            to,
            ops
        }),
        (
            counter(),
            version_vector(),
            vec(op_check(), 0..=MAX_PULL_CHECKS)
        )
            .prop_map(|(from, vector, checks)| Message::Pull {
                from,
                vector,
                checks
            }),
        counter().prop_map(Message::ack),
        (counter(), vec(rejection(), 1..4))
            .prop_map(|(position, rejected)| Message::Ack { position, rejected }),
        counter().prop_map(|nonce| Message::Ping { nonce }),
        counter().prop_map(|nonce| Message::Pong { nonce }),
        (close_code(), reason).prop_map(|(code, reason)| Message::Close { code, reason }),
        snapshot(vec(snapshot_record(), 0..4)),
        // Parts large enough to be compressed at the default threshold.
        snapshot(vec(snapshot_record(), 10..40)),
        part().prop_map(|part| Message::SnapshotAck { part }),
        (0..=6u8, any::<u64>()).prop_map(|(level, seed)| Message::Reconcile {
            level,
            buckets: (0..1u64 << level)
                .map(|n| seed.wrapping_mul(n + 1))
                .collect(),
        }),
        (
            0..=12u8,
            proptest::collection::btree_set(any::<u32>(), 0..8),
            vec(record_key(), 0..6)
        )
            .prop_map(|(level, buckets, records)| Message::Held {
                level,
                buckets: buckets
                    .into_iter()
                    .map(|b| b % (1 << level))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                records,
            }),
        vec(snapshot_record(), 0..4).prop_map(|records| Message::Records { records }),
        (select(PurgeReason::ALL.to_vec()), vec(record_key(), 0..6))
            .prop_map(|(reason, records)| Message::Purge { reason, records }),
        (
            vec(string(), 0..3),
            vec(string(), 0..3),
            string(),
            vec(string(), 0..3)
        )
            .prop_map(|(only, except, filter, exclude_fields)| Message::Policy {
                only,
                except,
                filter,
                exclude_fields,
            }),
    ]
}

fn rejection() -> impl Strategy<Value = Rejection> {
    (
        node(),
        1..u64::MAX,
        select(RejectCode::ALL.to_vec()),
        prop_oneof![
            Just(String::new()),
            string(),
            (0..=MAX_REJECT_REASON_LEN).prop_map(|n| "r".repeat(n))
        ],
    )
        .prop_map(|(origin, seq, code, reason)| Rejection {
            op: OpId { origin, seq },
            code,
            reason,
        })
}

fn record_key() -> impl Strategy<Value = RecordKey> {
    (
        prop_oneof![Just("bugs".to_owned()), Just("comments".to_owned())],
        any::<u128>(),
    )
        .prop_map(|(collection, id)| RecordKey::new(collection, Uuid::from_u128(id)))
}

/// How a stream is cut into the chunks a transport receives.
#[derive(Debug, Clone)]
enum Chunking {
    /// Everything at once.
    Whole,
    /// One byte at a time.
    Bytes,
    /// Chunks of these sizes, repeated.
    Sizes(Vec<usize>),
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        1 => Just(Chunking::Whole),
        1 => Just(Chunking::Bytes),
        3 => vec(prop_oneof![1usize..8, 1usize..300], 1..8).prop_map(Chunking::Sizes),
    ]
}

fn chunks<'a>(stream: &'a [u8], chunking: &Chunking) -> Vec<&'a [u8]> {
    match chunking {
        Chunking::Whole => vec![stream],
        Chunking::Bytes => stream.chunks(1).collect(),
        Chunking::Sizes(sizes) => {
            let mut out = Vec::new();
            let mut rest = stream;
            for &size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                out.push(chunk);
                rest = tail;
            }
            out
        }
    }
}

/// Feeds chunks as a transport would: push, take every message, push what was not taken.
fn receive(decoder: &mut FrameDecoder, chunks: &[&[u8]]) -> Result<Vec<Message>, ProtocolError> {
    let mut received = Vec::new();
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        loop {
            let taken = decoder.push(rest);
            rest = &rest[taken..];
            let before = received.len();
            while let Some(message) = decoder.next_message()? {
                received.push(message);
            }
            if rest.is_empty() {
                break;
            }
            assert!(
                taken > 0 || received.len() > before,
                "decoder stalled with a full buffer"
            );
        }
    }
    Ok(received)
}

fn encodings(messages: &[Message]) -> Vec<Vec<u8>> {
    messages.iter().map(Message::encode).collect()
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_message_decodes_to_itself(message in message()) {
        let bytes = message.encode();
        let decoded = Message::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.encode(), bytes);
        prop_assert!(message.validate().is_ok());
        prop_assert_eq!(try_encode_frame(&message, DEFAULT_MAX_FRAME_LEN), Ok(encode_frame(&message)));
    }

    #[test]
    fn any_message_round_trips_through_encode_for_with_and_without_zstd(
        message in message(),
        peer in capabilities(),
        threshold in threshold(),
    ) {
        let plain = message.encode();
        for peer in [Capabilities::NONE, Capabilities::ZSTD, peer] {
            let sent = message.encode_for(peer, threshold);
            if sent[2] == 0x7f {
                prop_assert!(peer.contains(Capabilities::ZSTD));
                prop_assert!(plain.len() >= threshold);
                prop_assert!(sent.len() < plain.len());
            } else {
                prop_assert_eq!(&sent, &plain);
            }
            let decoded = Message::decode(&sent).unwrap();
            prop_assert_eq!(decoded.encode(), plain.clone());
        }
        // Without ZSTD nothing is ever compressed, whatever the threshold.
        prop_assert_eq!(message.encode_for(Capabilities(peer.0 & !1), threshold), plain);
    }

    #[test]
    fn compressed_and_plain_frames_mix_in_one_stream(
        messages in vec((message(), any::<bool>()), 0..8),
        threshold in threshold(),
        chunking in chunking(),
    ) {
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|(m, zstd)| {
                let peer = if *zstd { Capabilities::ZSTD } else { Capabilities::NONE };
                frame_for(m, peer, threshold)
            })
            .collect();
        let mut decoder = FrameDecoder::default();
        let received = receive(&mut decoder, &chunks(&stream, &chunking)).unwrap();
        let sent: Vec<Message> = messages.into_iter().map(|(m, _)| m).collect();
        prop_assert_eq!(encodings(&received), encodings(&sent));
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    /// Whatever is done to the zstd frame of a compressed payload, the decoder never panics,
    /// and what it returns is a message or an error blaming the peer.
    #[test]
    fn corrupted_compressed_payloads_never_panic_the_decoder(
        message in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let sent = message.encode_for(Capabilities::ZSTD, 0);
        let mut bytes = sent.clone();
        for (at, xor) in flips {
            let i = 3 + at.index(bytes.len() - 3);
            bytes[i] ^= xor;
        }
        bytes.truncate(3 + cut.index(bytes.len() - 2));
        match Message::decode(&bytes) {
            Ok(decoded) => {
                let again = decoded.encode();
                prop_assert_eq!(Message::decode(&again).unwrap().encode(), again);
            }
            Err(error) => prop_assert!(error.is_malformed_input(), "{}", error),
        }
    }

    #[test]
    fn messages_survive_framing_in_any_chunking_and_arrive_in_order(
        messages in vec(message(), 0..8),
        chunking in chunking(),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
        let mut decoder = FrameDecoder::default();
        let received = receive(&mut decoder, &chunks(&stream, &chunking)).unwrap();
        prop_assert_eq!(encodings(&received), encodings(&messages));
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn a_decoder_whose_limit_is_the_largest_frame_still_receives_every_message(
        messages in vec(message(), 1..8),
        chunking in chunking(),
        slack in prop_oneof![Just(0u32), 0u32..16],
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
        let largest = messages.iter().map(|m| m.encode().len()).max().unwrap();
        let mut decoder = FrameDecoder::new(largest as u32 + slack);
        let received = receive(&mut decoder, &chunks(&stream, &chunking)).unwrap();
        prop_assert_eq!(encodings(&received), encodings(&messages));
        prop_assert!(decoder.free_space() == largest + slack as usize + FRAME_HEADER_LEN);
    }

    #[test]
    fn a_stream_cut_short_yields_the_complete_messages_and_waits_for_the_rest(
        messages in vec(message(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let frames: Vec<Vec<u8>> = messages.iter().map(encode_frame).collect();
        let stream = frames.concat();
        let cut = cut.index(stream.len());
        let mut decoder = FrameDecoder::default();
        let received = receive(&mut decoder, &[&stream[..cut]]).unwrap();
        let mut complete = 0;
        let mut end = 0;
        for frame in &frames {
            if end + frame.len() > cut {
                break;
            }
            end += frame.len();
            complete += 1;
        }
        prop_assert_eq!(encodings(&received), encodings(&messages[..complete]));
        prop_assert_eq!(decoder.buffered_len(), cut - end);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in vec(any::<u8>(), 0..600),
        chunking in chunking(),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0u32..300],
    ) {
        let mut decoder = FrameDecoder::new(max);
        if let Err(error) = receive(&mut decoder, &chunks(&bytes, &chunking)) {
            prop_assert!(error.is_malformed_input());
            prop_assert!(!error.to_string().is_empty());
            prop_assert_eq!(decoder.next_message(), Err(error.clone()));
            prop_assert_eq!(decoder.push(&[0, 0, 0, 4]), 4);
            prop_assert_eq!(decoder.next_message(), Err(error));
        }
        prop_assert!(decoder.buffered_len() <= max as usize + FRAME_HEADER_LEN);
    }

    #[test]
    fn arbitrary_payloads_never_panic_the_message_decoder(
        payload in prop_oneof![
            vec(any::<u8>(), 0..200),
            // A valid header and type byte, then noise: reaches the body decoders.
            (prop_oneof![1u8..=0x0a, Just(0x7f)], vec(any::<u8>(), 0..200)).prop_map(|(t, body)| {
                let mut p = vec![blazedb_format::MAGIC, 0x16, t];
                p.extend(body);
                p
            }),
        ],
    ) {
        if let Ok(message) = Message::decode(&payload) {
            let bytes = message.encode();
            prop_assert_eq!(Message::decode(&bytes).unwrap().encode(), bytes);
        }
    }

    #[test]
    fn an_ops_batch_with_an_empty_or_reversed_range_is_refused_both_ways(
        (from, to) in prop_oneof![
            counter().prop_map(|n| (n, n)),
            (counter(), counter()).prop_filter("reversed", |(a, b)| a > b),
        ],
        ops in vec(operation(), 0..3),
    ) {
        let message = Message::Ops { from, to, ops };
        let refused = Message::decode(&message.encode()).unwrap_err();
        prop_assert!(matches!(refused, ProtocolError::Malformed(Malformed::Invalid(_))), "{}", refused);
        let unsendable = try_encode_frame(&message, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        prop_assert!(matches!(unsendable, ProtocolError::Local(LocalFailure::Unsendable(_))), "{}", unsendable);
    }

    /// A Pull written entry by entry decodes exactly when its entries are strictly
    /// increasing by node id with sequence numbers of at least 1, and then to those entries.
    #[test]
    fn a_pull_decodes_only_with_a_canonical_vector(
        from in counter(),
        entries in prop_oneof![
            vec((node(), counter()), 0..6),
            // Already sorted and distinct, so that the accepted case is common.
            btree_map(node(), 1u64..1000, 0..6).prop_map(|m| m.into_iter().collect()),
        ],
    ) {
        let mut e = Encoder::new(Kind::Message);
        e.byte(0x07);
        e.varint(from);
        e.varint(entries.len() as u64);
        for &(node, seq) in &entries {
            e.node(node);
            e.varint(seq);
        }
        e.varint(0);
        let bytes = e.finish();
        let canonical = entries.windows(2).all(|w| w[0].0 < w[1].0)
            && entries.iter().all(|&(_, seq)| seq >= 1);
        match Message::decode(&bytes) {
            Ok(Message::Pull { from: decoded_from, vector, checks }) => {
                prop_assert!(canonical, "accepted {:?}", entries);
                prop_assert_eq!(decoded_from, from);
                prop_assert_eq!(vector.iter().collect::<Vec<_>>(), entries);
                prop_assert_eq!(Message::Pull { from, vector, checks }.encode(), bytes);
            }
            Ok(other) => prop_assert!(false, "decoded as {:?}", other),
            Err(error) => {
                prop_assert!(!canonical, "refused {:?}: {}", entries, error);
                prop_assert!(matches!(error, ProtocolError::Malformed(Malformed::Invalid(_))), "{}", error);
            }
        }
    }

    /// A snapshot part written field by field decodes exactly when its part number is in
    /// `1..=u32::MAX`, it holds no more records than its total and its vector flag is 0 or 1.
    #[test]
    fn a_snapshot_part_decodes_only_with_a_valid_part_total_and_flag(
        position in counter(),
        part in prop_oneof![Just(0u64), 1u64..5, Just(u64::from(u32::MAX)), Just(u64::from(u32::MAX) + 1), any::<u64>()],
        total in prop_oneof![0u64..4, any::<u64>()],
        records in vec(snapshot_record(), 0..3),
        flag in prop_oneof![3 => 0u8..=1, 1 => any::<u8>()],
        vector in version_vector(),
    ) {
        let mut e = Encoder::new(Kind::Message);
        e.byte(0x09);
        e.varint(position);
        e.varint(part);
        e.varint(total);
        e.varint(records.len() as u64);
        for record in &records {
            e.key(&record.collection);
            e.uuid(&record.id);
            e.record_state(&record.state);
        }
        e.byte(flag);
        if flag == 1 {
            e.varint(vector.len() as u64);
            for (node, seq) in vector.iter() {
                e.node(node);
                e.varint(seq);
            }
        }
        let bytes = e.finish();
        let valid = (1..=u64::from(u32::MAX)).contains(&part)
            && records.len() as u64 <= total
            && flag <= 1;
        match Message::decode(&bytes) {
            Ok(message) => {
                prop_assert!(valid, "accepted part {} of {} with flag {}", part, total, flag);
                let expected = Message::Snapshot {
                    position,
                    part: part as u32,
                    total,
                    records,
                    vector: (flag == 1).then_some(vector),
                };
                prop_assert_eq!(message.encode(), expected.encode());
                prop_assert_eq!(expected.encode(), bytes);
            }
            Err(error) => {
                prop_assert!(!valid, "refused: {}", error);
                prop_assert!(matches!(error, ProtocolError::Malformed(Malformed::Invalid(_))), "{}", error);
            }
        }
    }

    #[test]
    fn the_fuzz_target_accepts_arbitrary_bytes(data in vec(any::<u8>(), 0..600)) {
        fuzz::frames(&data);
    }

    #[test]
    fn the_fuzz_target_accepts_corrupted_compressed_streams(
        first in any::<u8>(),
        messages in vec(message(), 1..4),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut data = vec![first];
        data.extend(messages.iter().flat_map(|m| frame_for(m, Capabilities::ZSTD, 0)));
        for (at, xor) in flips {
            let i = 1 + at.index(data.len() - 1);
            data[i] ^= xor;
        }
        fuzz::frames(&data);
    }

    #[test]
    fn the_token_fuzz_target_accepts_arbitrary_bytes(data in vec(any::<u8>(), 0..300)) {
        fuzz::token(&data);
    }

    #[test]
    fn the_fuzz_target_accepts_corrupted_valid_streams(
        first in any::<u8>(),
        messages in vec(message(), 1..5),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut data = vec![first];
        data.extend(messages.iter().flat_map(encode_frame));
        for (at, xor) in flips {
            let i = 1 + at.index(data.len() - 1);
            data[i] ^= xor;
        }
        fuzz::frames(&data);
    }
}

#[test]
fn the_fuzz_target_round_trips_a_clean_stream_in_every_chunk_size() {
    let messages = [
        Message::Hello {
            protocol_version: 1,
            node: NodeId(Uuid::from_bytes([1; 16])),
            database: "db".to_owned(),
            capabilities: blazedb_protocol::Capabilities::SUPPORTED,
            head: 42,
        },
        Message::Enroll {
            token: "bzt1_token".to_owned(),
        },
        Message::Pull {
            from: 3,
            vector: VersionVector::from_iter([(NodeId(Uuid::from_bytes([2; 16])), 5)]),
            checks: Vec::new(),
        },
        // The sender's log starts after 3: a snapshot, then the log from its position.
        Message::Snapshot {
            position: 6,
            part: 1,
            total: 1,
            records: vec![SnapshotRecord {
                collection: "bugs".to_owned(),
                id: Uuid::from_bytes([3; 16]),
                state: RecordState {
                    created: Some(Stamp {
                        lamport: 4,
                        node: NodeId(Uuid::from_bytes([1; 16])),
                    }),
                    deleted: None,
                    fields: [(
                        "title".to_owned(),
                        FieldState {
                            value: "Crash".into(),
                            stamp: Stamp {
                                lamport: 4,
                                node: NodeId(Uuid::from_bytes([1; 16])),
                            },
                        },
                    )]
                    .into(),
                },
            }],
            vector: Some(VersionVector::from_iter([(
                NodeId(Uuid::from_bytes([1; 16])),
                4,
            )])),
        },
        Message::SnapshotAck { part: 1 },
        Message::Ops {
            from: 6,
            to: 9,
            ops: vec![],
        },
        Message::ack(9),
        Message::Ping { nonce: 7 },
        Message::close(CloseCode::GoingAway, "restart"),
    ];
    let mut stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
    // The same messages again, each compressed when that is smaller.
    stream.extend(
        messages
            .iter()
            .flat_map(|m| frame_for(m, Capabilities::ZSTD, 0)),
    );
    for first in 0..=u8::MAX {
        let mut data = vec![first];
        data.extend(&stream);
        fuzz::frames(&data);
    }
}
