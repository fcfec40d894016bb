//! The archived message a handler reads is the very memory the codec's buffer holds: no copy
//! between the socket buffer and the handler, even across threads.

use bytes::BytesMut;
use garrison_protocol::{FrameCodec, FrameMeta, Protocol};
use garrison_tests::wire::{Chat, TestMessage};
use tokio_util::codec::Decoder;

#[test]
fn handler_reads_the_codec_buffer_in_place() {
    let mut codec = FrameCodec::default();
    // An odd-sized prefix frame first, so the second frame's payload lands at an odd offset.
    let mut wire = BytesMut::with_capacity(4096);
    codec
        .encode_message(
            &Chat {
                from: "eleven char".into(),
                text: "b".into(),
            },
            FrameMeta::default(),
            &mut wire,
        )
        .unwrap();
    let chat = Chat {
        from: "server".into(),
        text: "a message too long to be inlined".into(),
    };
    codec
        .encode_message(&chat, FrameMeta::seq(2), &mut wire)
        .unwrap();
    let buffer_range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();

    let _first = codec.decode(&mut wire).unwrap().unwrap();
    let frame = codec.decode(&mut wire).unwrap().unwrap();
    assert_ne!(
        frame.payload().as_ptr() as usize % 4,
        0,
        "the test wants a misaligned payload"
    );
    let TestMessage::Chat(message) = TestMessage::validate(frame).unwrap() else {
        panic!("not a chat")
    };

    // Move the validated message to another thread, as a gateway hands it to an entity.
    let (root, text) = std::thread::spawn(move || {
        let root = &*message as *const _ as usize;
        let text = message.text.as_str();
        assert_eq!(text, "a message too long to be inlined");
        (root, text.as_ptr() as usize)
    })
    .join()
    .unwrap();
    assert!(
        buffer_range.contains(&root),
        "the archived root is not in the codec's buffer"
    );
    assert!(
        buffer_range.contains(&text),
        "the archived string is not in the codec's buffer"
    );
}
