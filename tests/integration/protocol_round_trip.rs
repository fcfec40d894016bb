//! Every message shape survives encode -> decode -> validate -> read unchanged, with its header.

use bytes::BytesMut;
use garrison_protocol::{DecodeConfig, FrameCodec, FrameMeta, Protocol, TraceContext};
use garrison_tests::wire::{Chat, Command, Input, Inventory, Item, Owned, TestMessage};
use tokio_util::codec::Decoder;

pub fn samples() -> Vec<Owned> {
    vec![
        Owned::Input(Input {
            entity: u64::MAX,
            x: -5,
            y: i32::MAX,
            seq: 9,
            tick: 60,
        }),
        Owned::Chat(Chat {
            from: String::new(),
            text: "ünïcödé and a string longer than inline".into(),
        }),
        Owned::Chat(Chat {
            from: "ab".into(),
            text: "x".into(),
        }),
        Owned::Command(Command::Idle),
        Owned::Command(Command::Move { dx: -3, dy: 4 }),
        Owned::Command(Command::Attack(42)),
        Owned::Command(Command::Emote("wave".repeat(20))),
        Owned::Inventory(Inventory {
            owner: 7,
            items: (0..50)
                .map(|i| Item {
                    id: i,
                    count: (i * 3) as u16,
                    name: format!("item-{i}"),
                })
                .collect(),
            tags: vec!["rare".into(), String::new(), "bound".into()],
            dropped_at: Some((-10, 20)),
            locked: true,
            queue: vec![
                Command::Idle,
                Command::Attack(1),
                Command::Emote("hi".into()),
            ],
        }),
        Owned::Inventory(Inventory {
            owner: 0,
            items: vec![],
            tags: vec![],
            dropped_at: None,
            locked: false,
            queue: vec![],
        }),
    ]
}

#[test]
fn every_shape_round_trips_with_its_header() {
    let mut codec = FrameCodec::new(DecodeConfig::for_protocol::<TestMessage>());
    let mut wire = BytesMut::new();
    let messages = samples();
    let trace = TraceContext {
        trace_id: [0xab; 16],
        span_id: [0xcd; 8],
        flags: 1,
    };
    for (seq, message) in messages.iter().enumerate() {
        let meta = FrameMeta {
            seq: seq as u32,
            trace: (seq % 2 == 0).then_some(trace),
            // Every combination of the two flags.
            reply: seq % 4 < 2,
        };
        message.encode(&mut codec, meta, &mut wire).expect("encode");
    }
    for (seq, expected) in messages.iter().enumerate() {
        let frame = codec
            .decode(&mut wire)
            .expect("decode")
            .expect("a whole frame");
        assert_eq!(frame.kind(), expected.kind());
        assert_eq!(frame.header().seq, seq as u32);
        assert_eq!(frame.header().trace, (seq % 2 == 0).then_some(trace));
        assert_eq!(
            frame.header().reply,
            seq % 4 < 2,
            "the reply flag of frame {seq}"
        );
        assert_eq!(
            frame.wire()[5] & garrison_protocol::FLAG_REPLY != 0,
            seq % 4 < 2
        );
        let message = TestMessage::validate(frame).expect("validate");
        assert_eq!(&Owned::try_from(&message).expect("read"), expected);
    }
    assert!(wire.is_empty());
    assert!(codec.decode_eof(&mut wire).expect("clean end").is_none());
}

#[test]
fn archived_fields_read_in_place() {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    let input = Input {
        entity: 3,
        x: -1,
        y: 2,
        seq: 4,
        tick: 5,
    };
    codec
        .encode_message(&input, FrameMeta::default(), &mut wire)
        .expect("encode");
    let frame = codec.decode(&mut wire).expect("decode").expect("frame");
    let TestMessage::Input(archived) = TestMessage::validate(frame).expect("validate") else {
        panic!("an Input frame validated as another message");
    };
    assert_eq!(
        (
            archived.entity.to_native(),
            archived.x.to_native(),
            archived.y.to_native(),
            archived.seq.to_native(),
            archived.tick.to_native()
        ),
        (3, -1, 2, 4, 5)
    );
}

#[test]
fn encoder_refuses_a_frame_over_the_maximum_and_leaves_the_buffer_as_it_was() {
    let mut codec = FrameCodec::new(DecodeConfig::default().with_max_frame_len(64));
    let mut wire = BytesMut::from(&b"earlier frames"[..]);
    let error = codec
        .encode_message(
            &Chat {
                from: "a".into(),
                text: "y".repeat(100),
            },
            FrameMeta::default(),
            &mut wire,
        )
        .expect_err("over the maximum");
    assert_eq!(
        error.to_string(),
        "frame of 128 bytes exceeds the maximum of 64 bytes"
    );
    assert_eq!(&wire[..], b"earlier frames");
}
