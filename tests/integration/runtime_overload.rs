//! Adaptive limits per entity kind and per gateway: a kind's limit counts its messages from
//! acceptance to the end of their handling and refuses past it with a retry-after, lets critical
//! messages through, and sheds sheddable ones while the kind's mailbox wait is over the target;
//! a gateway's limit sheds new sessions with `Refused` (code 105, retry-after) and
//! `Close(Overloaded)`, and never a resuming player.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use garrison_client::{Client, ClientConfig, ClientError};
use garrison_protocol::Snapshot;
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, HandlerError, KindConfig, Refusal, SessionEvent,
    SessionId, Sessions, entity_messages,
    gateway::{CloseCode, GatewayBuilder, GatewayConfig, RefusalCode, ticket},
    overload::OverloadConfig,
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder};
use garrison_tests::{probe::eventually, wire::TestMessage};
use rkyv::{Archive, Deserialize, Serialize};

const LIMIT: Duration = Duration::from_secs(10);
const KEY: &[u8] = b"overload-ticket-key";

#[derive(Archive, Serialize, Deserialize, Default)]
struct Handled(u32);

impl Snapshot for Handled {
    const SCHEMA: &'static str = "test.gated";
    const VERSION: u16 = 1;
}

entity_messages! {
    /// What a gated entity handles.
    #[derive(Debug)]
    enum GateMsg {
        /// Ordinary work.
        Work => "work",
        /// Work that must not be shed.
        Urgent => "urgent",
        /// A join: shed first.
        Join => "join",
        /// A session event.
        Session(SessionId, SessionEvent) => "session",
    }
    session_event = Session;
    critical = [Urgent];
    sheddable = [Join];
}

/// Each message waits for a place at the gate before it is handled.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    handled: Arc<AtomicUsize>,
}

impl Entity for Gated {
    const KIND: &'static str = "gated";
    type Key = u64;
    type State = Handled;
    type Message = GateMsg;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<Handled>,
    ) -> Result<Handled, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        _: GateMsg,
        handled: &mut Handled,
    ) -> Result<(), HandlerError> {
        self.gate.acquire().await?.forget();
        handled.0 += 1;
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn overloaded(refusal: &Refusal, event: &str) {
    match refusal {
        Refusal::Overloaded { what, retry_after } => {
            assert_eq!(*what, event);
            assert!(
                (Duration::from_secs(1)..Duration::from_millis(1_500)).contains(retry_after),
                "the configured retry-after, spread by at most half: {retry_after:?}"
            );
        }
        other => panic!("expected an overload refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_limit_holds_each_message_until_handled_and_sheds_joins_while_over_target() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let config = KindConfig {
        overload: Some(OverloadConfig {
            initial_limit: 4,
            min_limit: 1,
            min_samples: 4,
            target: Duration::from_millis(1),
            // Only the first window runs on its own (the starting point); the test reads the
            // next one itself.
            window: Duration::from_secs(3600),
            ..OverloadConfig::default()
        }),
        ..KindConfig::default()
    };
    let gated = Entities::new(
        Gated {
            gate: gate.clone(),
            handled: handled.clone(),
        },
        config,
    )
    .unwrap();
    let tree = SupervisorBuilder::new("overload")
        .child(ChildSpec::new("gated", gated.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let limit = gated.overload_limit().expect("configured").clone();
    assert_eq!(limit.name(), "gated");
    eventually("the limit's first window", LIMIT, || {
        let windows = limit.stats().windows;
        async move { windows >= 1 }
    })
    .await;

    // Four messages take the four places, queued or held at the gate.
    for _ in 0..4 {
        gated.send(&1, GateMsg::Work).unwrap();
    }
    let refused = gated.send(&1, GateMsg::Work).unwrap_err();
    overloaded(&refused.reason, "work");
    assert!(matches!(refused.message, GateMsg::Work), "handed back");
    // A critical message passes over the limit, and holds a place too.
    gated.send(&1, GateMsg::Urgent).unwrap();
    assert_eq!(limit.stats().in_use, 5);

    // The queued messages wait longer than the 1 ms target before the gate opens: the
    // latency under test, not a wait for an event.
    let queued = Instant::now();
    while queued.elapsed() < Duration::from_millis(3) {
        tokio::task::yield_now().await;
    }
    gate.add_permits(5);
    eventually(
        "every message handled and its place given back",
        LIMIT,
        || {
            let done = handled.load(Ordering::SeqCst) == 5 && limit.stats().in_use == 0;
            async move { done }
        },
    )
    .await;
    limit.update();
    let stats = limit.stats();
    assert!(stats.over_target, "{stats:?}");
    assert!(stats.signal >= Duration::from_millis(1), "{stats:?}");
    assert_eq!(stats.limit, 1, "cut to what is in use, held at the minimum");

    // Over the target: a join is shed, while work below the limit is still admitted.
    overloaded(&gated.send(&1, GateMsg::Join).unwrap_err().reason, "join");
    gated.send(&1, GateMsg::Work).unwrap();
    overloaded(&gated.send(&1, GateMsg::Work).unwrap_err().reason, "work");
    let stats = limit.stats();
    // Admitted: 5 work, 1 urgent; shed: 2 work, 1 join.
    assert_eq!(stats.admitted, [1, 5, 0], "{stats:?}");
    assert_eq!(stats.shed, [0, 2, 1], "{stats:?}");
    gate.add_permits(1);
    eventually("the last message handled", LIMIT, || {
        let done = handled.load(Ordering::SeqCst) == 6;
        async move { done }
    })
    .await;
    tree.stop().await.unwrap();
}

#[test]
fn a_kind_with_a_limit_needs_a_runtime_to_recompute_it() {
    let config = KindConfig {
        overload: Some(OverloadConfig::default()),
        ..KindConfig::default()
    };
    let error = Entities::<Gated>::declare(config).unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

/// A player entity that does nothing with what it gets.
struct Idle;

impl Entity for Idle {
    const KIND: &'static str = "idle";
    type Key = u64;
    type State = Handled;
    type Message = TestMessage;

    async fn activate(
        &self,
        _: &u64,
        recovered: Activation<Handled>,
    ) -> Result<Handled, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        _: TestMessage,
        handled: &mut Handled,
    ) -> Result<(), HandlerError> {
        handled.0 += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_limit_sheds_new_sessions_with_a_retry_after_and_never_a_resume() {
    let idle = Entities::new(Idle, KindConfig::default()).unwrap();
    let tree = SupervisorBuilder::new("overload")
        .child(ChildSpec::new("idle", idle.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let sessions = Arc::new(Sessions::new());
    let mut settings = GatewayConfig::new(KEY);
    settings.tcp = Some("127.0.0.1:0".parse().unwrap());
    settings.event_loops = 1;
    let gateway = GatewayBuilder::to_entity(
        settings,
        sessions.clone(),
        &idle,
        |session| session.player(),
        |message| message,
    )
    .overload(OverloadConfig {
        initial_limit: 2,
        min_limit: 1,
        ..OverloadConfig::default()
    })
    .start()
    .unwrap();
    let address = gateway.tcp_addr().unwrap();
    let config = |player: u64| {
        ClientConfig::new(address, ticket::mint(KEY, player, ticket::unix_now() + 60))
    };
    let first = Client::<TestMessage>::connect(config(1)).await.unwrap();
    let _second = Client::<TestMessage>::connect(config(2)).await.unwrap();
    match Client::<TestMessage>::connect(config(3)).await {
        Err(ClientError::Refused {
            code,
            retry_after,
            reason,
            ..
        }) => {
            assert_eq!(code, RefusalCode::Overloaded.code());
            let retry_after = retry_after.expect("a retry-after");
            assert!(
                (Duration::from_secs(1)..Duration::from_millis(1_500)).contains(&retry_after),
                "the configured retry-after, spread by at most half: {retry_after:?}"
            );
            assert!(reason.contains("new sessions"), "{reason}");
        }
        other => panic!("expected the new session shed, got {other:?}"),
    }
    assert!(
        !sessions.contains(SessionId(3)),
        "a shed login leaves no session"
    );
    // Player 1 loses its connection and comes back within the grace window: a player in play
    // is never shed, whatever the limit.
    drop(first);
    let resumed = Client::<TestMessage>::connect(config(1)).await.unwrap();
    assert_eq!(resumed.session(), 1);
    let limit = gateway.overload_limit().expect("configured");
    let stats = limit.stats();
    assert_eq!(stats.shed, [0, 0, 1], "{stats:?}");
    assert_eq!(stats.admitted, [1, 0, 2], "{stats:?}");
    eventually("the shed connection's close counted", LIMIT, || {
        let closed = gateway.metrics().closed_with(CloseCode::Overloaded);
        async move { closed == 1 }
    })
    .await;
    gateway.shutdown().await;
    tree.stop().await.unwrap();
}
