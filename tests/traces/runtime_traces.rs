//! Every handled message runs in a span with the game attributes, parented to the sender's span,
//! or to the client's span when the message carried a W3C trace context.

use garrison_protocol::TraceContext;
use garrison_runtime::{KindConfig, SessionId, Sessions, telemetry::Sampling};
use garrison_tests::traces::CaptureLayer;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use super::counter::{Counter, Msg, get, start};

#[tokio::test]
async fn handling_spans_carry_game_attributes_and_the_senders_parent() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    // Current-thread runtime: entities run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let config = KindConfig {
        zone: Some("arena-3".into()),
        ..KindConfig::default()
    };
    let (counters, _, tree) = start(config).await;
    let sessions = Sessions::new();
    let (connection, _frames) = tokio::sync::mpsc::channel(4);
    sessions.attach(SessionId(77), std::sync::Arc::new(connection));
    let session = sessions.get(SessionId(77)).expect("open");
    session.bind(&counters, 12);

    async {
        assert!(
            session
                .send::<Counter>(Msg::Add {
                    sender: 0,
                    seq: 0,
                    amount: 1
                })
                .is_ok()
        );
    }
    .instrument(tracing::info_span!("gateway.frame"))
    .await;
    let _ = get(&counters, 12).await;

    let handled = captured.named("garrison.entity.handle");
    let add = handled
        .iter()
        .find(|span| span.fields.get("game.event.type").map(String::as_str) == Some("add"))
        .unwrap();
    for (field, value) in [
        ("game.session.id", "77"),
        ("game.event.type", "add"),
        ("game.world.zone", "arena-3"),
        ("game.entity.kind", "counter"),
        ("game.entity.key", "12"),
        ("game.entity.incarnation", "1"),
    ] {
        assert_eq!(
            add.fields.get(field).map(String::as_str),
            Some(value),
            "{field} in {add:?}"
        );
    }
    assert_eq!(
        add.parent.as_deref(),
        Some("garrison.session.send"),
        "the session hop is the parent"
    );
    let sent = captured.named("garrison.session.send");
    assert_eq!(sent.len(), 1);
    for (field, value) in [
        ("game.session.id", "77"),
        ("game.event.type", "add"),
        ("game.world.zone", "arena-3"),
        ("game.entity.kind", "counter"),
    ] {
        assert_eq!(sent[0].fields.get(field).map(String::as_str), Some(value));
    }
    assert_eq!(
        sent[0].parent.as_deref(),
        Some("gateway.frame"),
        "the sender's span is the session hop's parent"
    );
    tree.stop().await.unwrap();
}

#[tokio::test]
async fn a_clients_trace_context_makes_the_handling_span_its_child() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let (counters, _, tree) = start(KindConfig::default()).await;

    let client = TraceContext {
        trace_id: [0x4b; 16],
        span_id: [0x1f; 8],
        flags: 1,
    };
    assert!(counters.send(&1, Msg::Traced(client)).is_ok());
    let _ = get(&counters, 1).await;
    tree.stop().await.unwrap();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let handled = spans
        .iter()
        .find(|span| {
            // Exported under `kind.event`, so each is its own operation in Jaeger.
            span.name == "counter.traced"
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "game.event.type" && kv.value.as_str() == "traced")
        })
        .unwrap_or_else(|| {
            panic!(
                "the traced message's span was exported: {:?}",
                spans
                    .iter()
                    .map(|span| (&span.name, &span.attributes))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(
        handled.span_context.trace_id(),
        TraceId::from_bytes(client.trace_id),
        "joins the client's trace"
    );
    assert_eq!(
        handled.parent_span_id,
        SpanId::from_bytes(client.span_id),
        "child of the client's span"
    );
    assert!(handled.parent_span_is_remote);
}

#[tokio::test]
async fn a_restart_is_recorded_inside_the_trace_of_the_message_that_crashed() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let (counters, _, tree) = start(KindConfig::default()).await;
    async {
        assert!(counters.send(&2, Msg::Poison).is_ok());
    }
    .instrument(tracing::info_span!("gateway.frame"))
    .await;
    let (_, incarnation) = get(&counters, 2).await;
    assert_eq!(incarnation, 2);
    let restart = captured.named("garrison.supervisor.restart");
    assert_eq!(restart.len(), 1);
    assert_eq!(
        restart[0].parent.as_deref(),
        Some("garrison.entity.handle"),
        "inside the poison's span"
    );
    assert_eq!(
        restart[0]
            .fields
            .get("game.entity.kind")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        restart[0].fields.get("game.entity.key").map(String::as_str),
        Some("2")
    );
    let handled = captured.named("garrison.entity.handle");
    let poison = handled
        .iter()
        .find(|span| span.fields.get("game.event.type").map(String::as_str) == Some("poison"))
        .unwrap();
    assert_eq!(
        poison.parent.as_deref(),
        Some("gateway.frame"),
        "which sits in the sender's trace"
    );
    tree.stop().await.unwrap();
}

#[tokio::test]
async fn work_from_an_unsampled_trace_creates_no_spans() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let (counters, _, tree) = start(KindConfig::default()).await;
    let sessions = Sessions::new();
    let (connection, _frames) = tokio::sync::mpsc::channel(4);
    sessions.attach(SessionId(5), std::sync::Arc::new(connection));
    let session = sessions.get(SessionId(5)).expect("open");
    session.bind(&counters, 3);
    let add = |amount| Msg::Add {
        sender: 0,
        seq: 0,
        amount,
    };

    // Sampled out (as the gateway marks a frame its head sampling dropped): the session hop and
    // the entity's handling create no span.
    garrison_runtime::telemetry::with_sampling(Sampling::Dropped, || {
        assert!(session.send::<Counter>(add(1)).is_ok());
    });
    assert_eq!(get(&counters, 3).await.0.total, 1);
    let handled = |captured: &garrison_tests::traces::Captured| {
        captured
            .named("garrison.entity.handle")
            .iter()
            .filter(|span| span.fields.get("game.event.type").map(String::as_str) == Some("add"))
            .count()
    };
    assert_eq!(handled(&captured), 0);
    assert!(captured.named("garrison.session.send").is_empty());

    // The same message from sampled work is traced.
    garrison_runtime::telemetry::with_sampling(Sampling::Kept, || {
        assert!(session.send::<Counter>(add(1)).is_ok());
    });
    assert_eq!(get(&counters, 3).await.0.total, 2);
    assert_eq!(handled(&captured), 1);
    assert_eq!(captured.named("garrison.session.send").len(), 1);
    tree.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_forwarded_for_a_session_carries_its_id_without_a_binding() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let (counters, _, tree) = start(KindConfig::default()).await;
    // No session bound to counter 9: an entity forwarding its player's request needs none.
    let add = Msg::Add {
        sender: 0,
        seq: 0,
        amount: 4,
    };
    assert!(counters.send_for(SessionId(41), &9, add).is_ok());
    assert_eq!(get(&counters, 9).await.0.total, 4);
    let handled = captured.named("garrison.entity.handle");
    let add = handled
        .iter()
        .find(|span| span.fields.get("game.event.type").map(String::as_str) == Some("add"))
        .expect("the forwarded message was handled in a span");
    assert_eq!(
        add.fields.get("game.session.id").map(String::as_str),
        Some("41")
    );
    tree.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_activation_is_a_span_naming_the_kind_the_key_and_the_reason() {
    let layer = CaptureLayer::default();
    let captured = layer.captured.clone();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let config = KindConfig {
        zone: Some("arena-3".into()),
        ..KindConfig::default()
    };
    let (counters, _, tree) = start(config).await;
    counters.register_passivated(31, bytes::Bytes::from_static(b"garbage"));
    assert!(
        counters
            .send(
                &31,
                Msg::Add {
                    sender: 0,
                    seq: 0,
                    amount: 1
                }
            )
            .is_ok()
    );
    garrison_tests::probe::eventually(
        "the failed activation",
        std::time::Duration::from_secs(10),
        || {
            let failed = !counters.quarantined().is_empty();
            async move { failed }
        },
    )
    .await;
    let failed = captured.named("garrison.entity.activation_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    for (field, value) in [
        ("game.entity.kind", "counter"),
        ("game.entity.key", "31"),
        ("game.world.zone", "arena-3"),
        ("quarantined", "7"),
    ] {
        assert_eq!(
            failed[0].fields.get(field).map(String::as_str),
            Some(value),
            "{field} in {failed:?}"
        );
    }
    assert!(
        failed[0].fields["reason"].starts_with("snapshot refused:"),
        "{failed:?}"
    );
    tree.stop().await.unwrap();
}
