//! Properties of the stream decoder: valid frames survive any split of the stream, and no byte
//! stream (random or a mutated valid one) panics or yields a message that fails to read.

use bytes::BytesMut;
use garrison_protocol::{FrameCodec, FrameMeta};
use garrison_tests::wire::{Chat, Command, Input, Owned, check_stream};
use proptest::prelude::*;

fn message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (
            any::<u64>(),
            any::<i32>(),
            any::<i32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(entity, x, y, seq, tick)| Owned::Input(Input {
                entity,
                x,
                y,
                seq,
                tick
            })),
        (".{0,20}", ".{0,40}").prop_map(|(from, text)| Owned::Chat(Chat { from, text })),
        prop_oneof![
            Just(Command::Idle),
            (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| Command::Move { dx, dy }),
            any::<u64>().prop_map(Command::Attack),
            ".{0,30}".prop_map(Command::Emote),
        ]
        .prop_map(Owned::Command),
    ]
}

fn encode_all(messages: &[Owned]) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for (seq, message) in messages.iter().enumerate() {
        message
            .encode(&mut codec, FrameMeta::seq(seq as u32), &mut wire)
            .unwrap();
    }
    wire.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_survive_any_split(
        messages in prop::collection::vec(message(), 0..20),
        splits in prop::collection::vec(0usize..64, 0..40),
    ) {
        let outcome = check_stream(&encode_all(&messages), &splits);
        prop_assert_eq!(outcome.error, None);
        prop_assert_eq!(outcome.messages, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..512),
        splits in prop::collection::vec(0usize..64, 0..16),
    ) {
        // `check_stream` itself asserts every validated message reads and re-encodes.
        let outcome = check_stream(&data, &splits);
        prop_assert!(outcome.error.is_some() || data.is_empty() || !outcome.messages.is_empty());
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        messages in prop::collection::vec(message(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        splits in prop::collection::vec(0usize..64, 0..16),
    ) {
        let mut data = encode_all(&messages);
        for (at, byte) in &flips {
            let at = at.index(data.len());
            data[at] = *byte;
        }
        let outcome = check_stream(&data, &splits);
        // Whatever passed is a prefix-consistent reading: never more messages than were sent.
        prop_assert!(outcome.messages.len() <= messages.len());
    }
}
