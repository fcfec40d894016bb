//! Hostile bytes get the exact typed error that names what was wrong, and never a panic.

use bytes::{Bytes, BytesMut};
use garrison_protocol::{
    DecodeConfig, Error, FIXED_HEADER_LEN, Frame, FrameCodec, FrameMeta, Protocol,
    TRACE_CONTEXT_LEN, TraceContext,
};
use garrison_tests::wire::{Chat, Command, Input, Inventory, TestMessage};
use tokio_util::codec::Decoder;

fn config() -> DecodeConfig {
    DecodeConfig::for_protocol::<TestMessage>()
}

fn encode<M: garrison_protocol::Message>(message: &M, trace: Option<TraceContext>) -> Vec<u8> {
    let mut wire = BytesMut::new();
    FrameCodec::new(config())
        .encode_message(
            message,
            FrameMeta {
                seq: 1,
                trace,
                reply: false,
            },
            &mut wire,
        )
        .expect("encode");
    wire.to_vec()
}

fn input() -> Vec<u8> {
    encode(
        &Input {
            entity: 1,
            x: 2,
            y: 3,
            seq: 4,
            tick: 5,
        },
        None,
    )
}

fn chat() -> Vec<u8> {
    encode(
        &Chat {
            from: "ab".into(),
            text: "hello there general".into(),
        },
        None,
    )
}

/// Decodes `wire` as exactly one frame and validates it; the whole edge path a WebSocket message
/// takes.
fn decode_exact(wire: &[u8]) -> Result<TestMessage, Error> {
    Frame::decode_exact(Bytes::copy_from_slice(wire), &config()).and_then(TestMessage::validate)
}

/// Decodes `wire` as a byte stream that then ends; the path a TCP connection takes.
fn decode_stream(wire: &[u8]) -> Result<Vec<TestMessage>, Error> {
    let mut codec = FrameCodec::new(config());
    let mut buffer = BytesMut::from(wire);
    let mut messages = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buffer)? {
        messages.push(TestMessage::validate(frame)?);
    }
    Ok(messages)
}

fn check(name: &str, wire: &[u8], expected: &str) {
    let exact = decode_exact(wire).map(|_| ()).expect_err(name).to_string();
    assert!(
        exact.starts_with(expected),
        "{name}: decode_exact said {exact:?}, expected {expected:?}"
    );
    if wire.is_empty() {
        // An empty stream is a clean end of stream, not a truncated frame.
        assert!(decode_stream(wire).expect("empty stream").is_empty());
        return;
    }
    let streamed = decode_stream(wire).map(|_| ()).expect_err(name).to_string();
    // A stream cannot have trailing bytes: they are the start of the next frame.
    let expected_streamed = if expected.contains("trailing") {
        "truncated"
    } else {
        expected
    };
    assert!(
        streamed.starts_with(expected_streamed),
        "{name}: stream decoder said {streamed:?}, expected {expected_streamed:?}"
    );
}

fn with(mut wire: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut wire);
    wire
}

#[test]
fn truncated_at_every_byte_of_the_header() {
    let plain = input();
    for have in 0..FIXED_HEADER_LEN {
        check(
            &format!("plain header cut at {have}"),
            &plain[..have],
            &format!("truncated header: have {have} bytes, the header needs {FIXED_HEADER_LEN}"),
        );
    }
    let traced = encode(
        &Input {
            entity: 1,
            x: 2,
            y: 3,
            seq: 4,
            tick: 5,
        },
        Some(TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 1,
        }),
    );
    let need = FIXED_HEADER_LEN + TRACE_CONTEXT_LEN;
    for have in FIXED_HEADER_LEN..need {
        check(
            &format!("traced header cut at {have}"),
            &traced[..have],
            &format!("truncated header: have {have} bytes, the header needs {need}"),
        );
    }
    for have in need..traced.len() {
        check(
            &format!("traced payload cut at {have}"),
            &traced[..have],
            &format!(
                "truncated frame: have {have} bytes, the length prefix declares {}",
                traced.len()
            ),
        );
    }
}

#[test]
fn hostile_frame_table() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "length 0",
            with(input(), |w| w[..4].copy_from_slice(&0u32.to_le_bytes())),
            "frame length 0 is shorter than its 8-byte header",
        ),
        (
            "length below the fixed header",
            with(input(), |w| w[..4].copy_from_slice(&7u32.to_le_bytes())),
            "frame length 7 is shorter than its 8-byte header",
        ),
        (
            "length prefix of 4 GiB",
            with(input(), |w| w[..4].copy_from_slice(&u32::MAX.to_le_bytes())),
            "frame of 4294967299 bytes exceeds the maximum of 65536 bytes",
        ),
        (
            "length one over the maximum",
            with(input(), |w| {
                w[..4].copy_from_slice(&(65536u32 - 3).to_le_bytes())
            }),
            "frame of 65537 bytes exceeds the maximum of 65536 bytes",
        ),
        (
            "wrong version",
            with(input(), |w| w[4] = 1),
            "unsupported protocol version 1 (this build speaks version 3)",
        ),
        (
            "version 0",
            with(input(), |w| w[4] = 0),
            "unsupported protocol version 0",
        ),
        (
            "reserved flag",
            with(input(), |w| w[5] = 0x80),
            "reserved flag bits set: 0x80",
        ),
        (
            "unknown kind",
            with(input(), |w| {
                w[6..8].copy_from_slice(&0x0999u16.to_le_bytes())
            }),
            "unknown message kind 0x0999",
        ),
        (
            "trace flag without room for the context",
            with(input(), |w| w[5] = 1),
            "frame length 32 is shorter than its 33-byte header",
        ),
        (
            "all-zero trace id",
            {
                let mut w = encode(
                    &Input {
                        entity: 1,
                        x: 2,
                        y: 3,
                        seq: 4,
                        tick: 5,
                    },
                    Some(TraceContext {
                        trace_id: [1; 16],
                        span_id: [2; 8],
                        flags: 1,
                    }),
                );
                w[12..28].fill(0);
                w
            },
            "invalid trace context: trace id is all zeroes",
        ),
        (
            "payload too short for its message",
            with(input(), |w| {
                w.truncate(w.len() - 4);
                let length = (w.len() - 4) as u32;
                w[..4].copy_from_slice(&length.to_le_bytes());
            }),
            "invalid archive for Input (kind 0x0001): ",
        ),
        (
            "out-of-bounds relative pointer",
            with(chat(), |w| {
                let n = w.len();
                w[n - 4..].copy_from_slice(&0x7fff_0000i32.to_le_bytes());
            }),
            "invalid archive for Chat (kind 0x0002): ",
        ),
        (
            "invalid enum tag",
            with(encode(&Command::Attack(5), None), |w| w[12] = 200),
            "invalid archive for Command (kind 0x0003): ",
        ),
        (
            "invalid UTF-8 in an out-of-line string",
            with(chat(), |w| w[12] = 0xff),
            "invalid archive for Chat (kind 0x0002): ",
        ),
        (
            "invalid UTF-8 in an inline string",
            with(chat(), |w| w[12 + 19] = 0xc3),
            "invalid archive for Chat (kind 0x0002): ",
        ),
        (
            "invalid bool",
            with(
                encode(
                    &Inventory {
                        owner: 1,
                        items: vec![],
                        tags: vec![],
                        dropped_at: None,
                        locked: true,
                        queue: vec![],
                    },
                    None,
                ),
                |w| {
                    let at = w.iter().rposition(|b| *b == 1).expect("the locked byte");
                    w[at] = 7;
                },
            ),
            "invalid archive for Inventory (kind 0x0004): ",
        ),
        (
            "trailing bytes",
            with(input(), |w| w.extend_from_slice(&[0, 0, 0])),
            "3 trailing bytes after the frame",
        ),
        (
            "junk before a fixed-size archive",
            with(input(), |w| {
                // Four bytes between the header and the (still valid) archive at the end.
                for _ in 0..4 {
                    w.insert(FIXED_HEADER_LEN, 0x5A);
                }
                let length = u32::from_le_bytes(w[..4].try_into().unwrap()) + 4;
                w[..4].copy_from_slice(&length.to_le_bytes());
            }),
            "invalid archive for Input (kind 0x0001): 4 bytes of the payload belong to no part \
             of the archive",
        ),
        (
            "junk before an archive with out-of-line strings",
            with(chat(), |w| {
                w.insert(FIXED_HEADER_LEN, 0x5A);
                let length = u32::from_le_bytes(w[..4].try_into().unwrap()) + 1;
                w[..4].copy_from_slice(&length.to_le_bytes());
            }),
            "invalid archive for Chat (kind 0x0002): 1 byte of the payload belongs to no part of \
             the archive",
        ),
    ];
    for (name, wire, expected) in &cases {
        check(name, wire, expected);
    }
}

#[test]
fn invalid_archives_carry_bytechecks_reason() {
    let wire = with(chat(), |w| {
        let n = w.len();
        w[n - 4..].copy_from_slice(&0x7fff_0000i32.to_le_bytes());
    });
    let Err(Error::InvalidArchive {
        message, reason, ..
    }) = decode_exact(&wire)
    else {
        panic!("an out-of-bounds pointer must be an invalid archive");
    };
    assert_eq!(message, "Chat");
    assert!(
        reason.to_string().contains("pointer overran range"),
        "reason: {reason}"
    );
}

#[test]
fn hostile_length_is_refused_before_the_buffer_grows() {
    let mut codec = FrameCodec::new(config());
    let mut buffer = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    let capacity = buffer.capacity();
    assert!(matches!(
        codec.decode(&mut buffer),
        Err(Error::Oversize { .. })
    ));
    assert_eq!(
        buffer.capacity(),
        capacity,
        "the decoder reserved room for a refused frame"
    );
}

#[test]
fn hostile_header_is_refused_before_its_payload_arrives() {
    // Only the 12 header bytes of a frame announcing 60,000 payload bytes: a wrong version must
    // be refused now, not after the client has been allowed to send the rest.
    let mut header = with(input(), |w| w[4] = 9);
    header[..4].copy_from_slice(&60_000u32.to_le_bytes());
    header.truncate(FIXED_HEADER_LEN);
    let mut buffer = BytesMut::from(&header[..]);
    let error = FrameCodec::new(config())
        .decode(&mut buffer)
        .expect_err("refused early");
    assert!(
        matches!(error, Error::UnsupportedVersion { found: 9, .. }),
        "{error}"
    );
}

#[test]
fn a_frame_validated_as_the_wrong_message_is_a_kind_mismatch() {
    let frame = Frame::decode_exact(Bytes::from(input()), &config()).expect("frame");
    let error = frame.validate::<Chat>().expect_err("kind mismatch");
    assert_eq!(
        error.to_string(),
        "frame of kind 0x0001 cannot be read as Chat (kind 0x0002)"
    );
}
