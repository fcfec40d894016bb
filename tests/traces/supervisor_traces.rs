//! Every restart and escalation is a span carrying the supervisor, child, strategy, exit
//! reason, restart count, delay, and the child's game attributes.

use std::{sync::Arc, time::Duration};

use garrison_supervisor::{ChildSpec, GameAttributes, Start, Strategy, SupervisorBuilder};
use garrison_tests::{
    probe::{Command, Log, Probe, eventually},
    traces::CaptureLayer,
};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn restart_and_escalation_spans_carry_game_attributes() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    // Current-thread runtime: the supervisor's tasks run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let log = Log::default();
    let room = ChildSpec::new("room-7", Probe::start(&log)).attributes(GameAttributes {
        session_id: Some(Arc::from("s-42")),
        zone: Some(Arc::from("eu-west")),
        entity_kind: Some(Arc::from("room")),
        entity_key: Some(Arc::from("7")),
    });
    let rooms = SupervisorBuilder::new("rooms")
        .strategy(Strategy::RestForOne)
        .intensity(1, Duration::from_secs(60))
        .child(room)
        .build()
        .unwrap();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("rooms", Start::supervisor(rooms)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let handle = root
        .supervisor("rooms")
        .await
        .unwrap()
        .child::<Command>("room-7")
        .await
        .unwrap();
    handle.send(Command::Panic).unwrap();
    eventually("restart", Duration::from_secs(10), || {
        let n = handle.incarnations();
        async move { n == 2 }
    })
    .await;
    handle.send(Command::Fail).unwrap();
    eventually(
        "escalation and the parent's restart",
        Duration::from_secs(10),
        || {
            let n = handle.incarnations();
            async move { n == 3 }
        },
    )
    .await;

    let restarts = captured.named("garrison.supervisor.restart");
    let first = &restarts[0];
    for (field, value) in [
        ("supervisor.id", "rooms"),
        ("supervisor.strategy", "rest_for_one"),
        ("child.id", "room-7"),
        ("exit.kind", "panic"),
        ("exit.reason", "panic: boom room-7"),
        ("restart.count", "1"),
        ("restart.delay_ms", "0"),
        ("game.session.id", "s-42"),
        ("game.world.zone", "eu-west"),
        ("game.entity.kind", "room"),
        ("game.entity.key", "7"),
    ] {
        assert_eq!(
            first.fields.get(field).map(String::as_str),
            Some(value),
            "{field} in {first:?}"
        );
    }
    let escalations = captured.named("garrison.supervisor.escalate");
    assert_eq!(escalations.len(), 1);
    assert_eq!(
        escalations[0].fields.get("exit.reason").map(String::as_str),
        Some("error: failed room-7")
    );
    // The parent's restart of the escalated supervisor is traced too.
    assert!(
        restarts
            .iter()
            .any(
                |span| span.fields.get("child.id").map(String::as_str) == Some("rooms")
                    && span.fields.get("exit.kind").map(String::as_str) == Some("escalated")
            )
    );
    root.stop().await.unwrap();
}
