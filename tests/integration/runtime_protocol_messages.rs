//! An entity can take validated protocol messages directly: the frame validated at the edge is
//! read in place by the entity, its kind name is the event type, and its trace context parents
//! the handling span.

use bytes::BytesMut;
use garrison_protocol::{DecodeConfig, FrameCodec, FrameMeta, Protocol, Snapshot, TraceContext};
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig,
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder};
use garrison_tests::{
    probe::eventually,
    wire::{Chat, Input, TestMessage},
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio_util::codec::Decoder;

#[derive(Archive, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Position {
    x: i32,
    y: i32,
    last_chat: String,
}

impl Snapshot for Position {
    const SCHEMA: &'static str = "test.position";
    const VERSION: u16 = 1;
}

struct Avatar(std::sync::Arc<std::sync::Mutex<Vec<(Position, &'static str)>>>);

impl Entity for Avatar {
    const KIND: &'static str = "avatar";
    type Key = u64;
    type State = Position;
    type Message = TestMessage;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<Position>,
    ) -> Result<Position, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        message: TestMessage,
        state: &mut Position,
    ) -> Result<(), HandlerError> {
        let event = message.event_type();
        match &message {
            // Read in place from the frame's bytes: no deserialization.
            TestMessage::Input(input) => {
                state.x = input.x.to_native();
                state.y = input.y.to_native();
            }
            TestMessage::Chat(chat) => state.last_chat = chat.text.as_str().to_owned(),
            _ => {}
        }
        self.0.lock().unwrap().push((state.clone(), event));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_frames_go_straight_to_an_entity() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let avatars = Entities::new(Avatar(seen.clone()), KindConfig::default()).unwrap();
    let tree = SupervisorBuilder::new("game")
        .child(ChildSpec::new("avatars", avatars.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();

    let mut codec = FrameCodec::new(DecodeConfig::for_protocol::<TestMessage>());
    let mut wire = BytesMut::new();
    let trace = TraceContext {
        trace_id: [9; 16],
        span_id: [8; 8],
        flags: 1,
    };
    codec
        .encode_message(
            &Input {
                entity: 1,
                x: 10,
                y: -4,
                seq: 1,
                tick: 2,
            },
            FrameMeta {
                seq: 1,
                trace: Some(trace),
                reply: false,
            },
            &mut wire,
        )
        .unwrap();
    codec
        .encode_message(
            &Chat {
                from: "p1".into(),
                text: "glhf".into(),
            },
            FrameMeta::seq(2),
            &mut wire,
        )
        .unwrap();
    while let Some(frame) = codec.decode(&mut wire).unwrap() {
        let message = TestMessage::validate(frame).unwrap();
        if let TestMessage::Input(input) = &message {
            assert_eq!(
                message.trace_context(),
                Some(trace),
                "the frame's trace context"
            );
            assert_eq!(input.entity.to_native(), 1);
        }
        assert!(avatars.send(&1, message).is_ok());
    }
    eventually(
        "both frames handled",
        std::time::Duration::from_secs(10),
        || {
            let done = seen.lock().unwrap().len() == 2;
            async move { done }
        },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (
            Position {
                x: 10,
                y: -4,
                last_chat: String::new()
            },
            "Input"
        )
    );
    assert_eq!(
        seen[1],
        (
            Position {
                x: 10,
                y: -4,
                last_chat: "glhf".into()
            },
            "Chat"
        )
    );
    tree.stop().await.unwrap();
}
