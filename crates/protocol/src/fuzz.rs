//! Bodies of fuzz targets, kept here so that they build and run with the crate's own tests
//! (the cargo-fuzz crate only calls them).

use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, encode_frame};
use crate::message::Message;

/// Pushes `data` into a [`FrameDecoder`] in chunks and checks every decoded message.
///
/// The first byte chooses the chunk size (1 to 64 bytes, low six bits) and the frame limit
/// (bit 6: 256 bytes, so partial pushes and oversized frames are reached quickly; otherwise
/// [`DEFAULT_MAX_FRAME_LEN`]); the rest is the byte stream. Panics when:
///
/// * a decoded message breaks [`Message::validate`];
/// * re-encoding a decoded message and decoding that again does not give the same bytes
///   back (the encoding is canonical, so this is a round trip; comparing bytes rather than
///   messages keeps NaN doubles comparable);
/// * the frame of a decoded message does not decode to it through a fresh decoder;
/// * an error is not about malformed input, or is not repeated by the next call;
/// * the decoder stalls: it takes no bytes although it returns no message.
pub fn frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x3F) + 1;
    let max = if first & 0x40 == 0 {
        DEFAULT_MAX_FRAME_LEN
    } else {
        256
    };
    let mut decoder = FrameDecoder::new(max);
    for mut piece in stream.chunks(chunk) {
        loop {
            let taken = decoder.push(piece);
            piece = piece.get(taken..).unwrap_or_default();
            let mut decoded = false;
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        check_round_trip(&message);
                        decoded = true;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        assert!(error.is_malformed_input(), "unexpected error: {error}");
                        assert_eq!(decoder.next_message(), Err(error), "errors are final");
                        return;
                    }
                }
            }
            if piece.is_empty() {
                break;
            }
            assert!(taken > 0 || decoded, "decoder stalled with a full buffer");
        }
    }
}

fn check_round_trip(message: &Message) {
    assert!(
        message.validate().is_ok(),
        "decoded an invalid {}",
        message.type_name()
    );
    let payload = message.encode();
    let again = Message::decode(&payload);
    assert!(
        again.is_ok(),
        "re-encoded {} does not decode: {again:?}",
        message.type_name()
    );
    if let Ok(again) = again {
        assert!(
            again.encode() == payload,
            "{} does not round trip",
            message.type_name()
        );
    }
    // The re-encoding can be a little longer than the frame it came from (see the codec's
    // notes on string interning), so the check uses the largest limit.
    let frame = encode_frame(message);
    let mut decoder = FrameDecoder::new(u32::MAX);
    assert_eq!(decoder.push(&frame), frame.len());
    match decoder.next_message() {
        Ok(Some(framed)) => assert!(framed.encode() == payload, "framing changed a message"),
        other => panic!("a frame of a valid message does not decode: {other:?}"),
    }
}
