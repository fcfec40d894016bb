//! What a game reaches for first, each against its contract in docs/runtime-semantics.md:
//! `call` (a typed answer, or the reason there is none), entity timers (one-shot and periodic,
//! owned by the incarnation, not activity, bounded), session events at the bound entity, and a
//! group that broadcasts one encoding and keeps its members across a restart.

use std::{sync::Arc, time::Duration};

use garrison_protocol::{Frame, Protocol, Snapshot};
use garrison_runtime::{
    Activation, CallError, Entities, Entity, EntityContext, EntityMessage, Group, HandlerError,
    KindConfig, Outbound, Refusal, Reply, SessionEvent, SessionId, Sessions, Timer, TimerError,
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder, SupervisorRef};
use garrison_tests::{
    probe::eventually,
    wire::{Chat, TestMessage},
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

const LIMIT: Duration = Duration::from_secs(10);
const SECOND: Duration = Duration::from_secs(1);

#[derive(Archive, Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Dial {
    asked: u32,
    fired: Vec<u32>,
    /// Ticks per timer label.
    ticks: [u32; 2],
    events: Vec<String>,
    group: Group,
}

impl Snapshot for Dial {
    const SCHEMA: &'static str = "test.dial";
    const VERSION: u16 = 1;
}

enum Msg {
    Ask(Reply<u32>),
    Ignore(Reply<u32>),
    CrashOn(Reply<u32>),
    Gate(oneshot::Receiver<()>),
    Read(Reply<Dial>),
    After(Duration, u32),
    Every {
        label: usize,
        period: Duration,
        kept: bool,
        armed: Reply<Result<(), TimerError>>,
    },
    CancelAll,
    Timers(Reply<usize>),
    Fired(u32),
    Tick(usize),
    Crash,
    End,
    Event(SessionId, SessionEvent),
    Join(SessionId),
    Leave(SessionId),
    Shout(u32),
}

impl EntityMessage for Msg {
    fn event_type(&self) -> &'static str {
        match self {
            Msg::Fired(_) => "fired",
            Msg::Tick(_) => "tick",
            Msg::Event(..) => "session_event",
            _ => "test",
        }
    }

    fn session_event(session: SessionId, event: SessionEvent) -> Option<Self> {
        Some(Msg::Event(session, event))
    }
}

struct Clock {
    sessions: Arc<Sessions>,
}

impl Entity for Clock {
    const KIND: &'static str = "clock";
    type Key = u64;
    type State = Dial;
    type Message = Msg;

    async fn activate(&self, _: &u64, recovered: Activation<Dial>) -> Result<Dial, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Msg,
        dial: &mut Dial,
    ) -> Result<(), HandlerError> {
        match message {
            Msg::Ask(reply) => {
                dial.asked += 1;
                reply.send(dial.asked);
            }
            Msg::Ignore(reply) => drop(reply),
            Msg::CrashOn(_reply) => panic!("crashed on a call"),
            Msg::Gate(gate) => {
                let _ = gate.await;
            }
            Msg::Read(reply) => {
                reply.send(dial.clone());
            }
            Msg::After(delay, value) => {
                context.send_after(delay, Msg::Fired(value))?;
            }
            Msg::Every {
                label,
                period,
                kept,
                armed,
            } => {
                let timer = Timer::every(period, move || Msg::Tick(label));
                let timer = if kept {
                    timer.surviving_restart()
                } else {
                    timer
                };
                armed.send(context.timer(timer).map(|_| ()));
            }
            Msg::CancelAll => {
                // Ids are handed out from 1 within an activation.
                for id in 1..=64 {
                    context.cancel_timer(garrison_runtime::TimerId(id));
                }
            }
            Msg::Timers(reply) => {
                reply.send(context.timers());
            }
            Msg::Fired(value) => dial.fired.push(value),
            Msg::Tick(label) => dial.ticks[label] += 1,
            Msg::Crash => panic!("told to crash"),
            Msg::End => context.stop(),
            Msg::Event(session, event) => {
                let event = match event {
                    SessionEvent::Connected => "connected".to_owned(),
                    SessionEvent::Disconnected { grace } => format!("disconnected {grace:?}"),
                    SessionEvent::Resumed => "resumed".to_owned(),
                    SessionEvent::Closed => "closed".to_owned(),
                    other => format!("{other:?}"),
                };
                dial.events.push(format!("{session} {event}"));
            }
            Msg::Join(session) => {
                dial.group.join(session);
            }
            Msg::Leave(session) => {
                dial.group.leave(session);
            }
            Msg::Shout(seq) => {
                let shout = Chat {
                    from: "clock".into(),
                    text: format!("shout {seq}"),
                };
                dial.group.broadcast(&self.sessions, seq, &shout);
            }
        }
        Ok(())
    }
}

async fn start(config: KindConfig) -> (Entities<Clock>, Arc<Sessions>, SupervisorRef) {
    let sessions = Arc::new(Sessions::new());
    let clocks = Entities::new(
        Clock {
            sessions: sessions.clone(),
        },
        config,
    )
    .unwrap();
    let tree = SupervisorBuilder::new("game")
        .child(ChildSpec::new("clocks", clocks.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    (clocks, sessions, tree)
}

async fn read(clocks: &Entities<Clock>, key: u64) -> Dial {
    clocks.call(&key, Msg::Read, SECOND).await.unwrap()
}

async fn every(clocks: &Entities<Clock>, key: u64, label: usize, kept: bool) {
    let period = Duration::from_millis(10);
    let armed = clocks
        .call(
            &key,
            |armed| Msg::Every {
                label,
                period,
                kept,
                armed,
            },
            SECOND,
        )
        .await
        .unwrap();
    armed.unwrap();
}

/// Waits until entity `key` has handled the one-shot `value` armed now, `delay` from now: a
/// barrier that orders "everything due before it" without sleeping.
async fn barrier(clocks: &Entities<Clock>, key: u64, delay: Duration, value: u32) {
    assert!(clocks.send(&key, Msg::After(delay, value)).is_ok());
    let clocks = clocks.clone();
    eventually("the barrier fired", LIMIT, || {
        let clocks = clocks.clone();
        async move { read(&clocks, key).await.fired.contains(&value) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_returns_its_typed_answer_or_says_why_there_is_none() {
    let (clocks, _, tree) = start(KindConfig::default()).await;
    let alice = clocks.get(1);
    assert_eq!(alice.call(Msg::Ask, SECOND).await, Ok(1));
    assert_eq!(alice.call(Msg::Ask, SECOND).await, Ok(2));

    // Dropped unanswered: told at once, not after the timeout.
    let started = std::time::Instant::now();
    let long = Duration::from_secs(30);
    assert_eq!(
        alice.call(Msg::Ignore, long).await,
        Err(CallError::NoReply { kind: "clock" })
    );
    // Crashed on it: the same, and the request is a dead letter.
    assert_eq!(
        alice.call(Msg::CrashOn, long).await,
        Err(CallError::NoReply { kind: "clock" })
    );
    assert!(started.elapsed() < long / 2, "no wait for the timeout");
    // The caller hears of it as the crash unwinds; the dead letter is recorded just after.
    eventually("the crashed request dead-lettered", LIMIT, || {
        let reasons: Vec<String> = clocks
            .dead_letters()
            .snapshot()
            .into_iter()
            .map(|letter| letter.reason)
            .collect();
        async move { reasons == ["crashed on a call"] }
    })
    .await;
    // The restart kept the state from before the crash.
    assert_eq!(alice.call(Msg::Ask, SECOND).await, Ok(3));

    // No answer in time.
    let (open, gate) = oneshot::channel();
    assert!(alice.send(Msg::Gate(gate)).is_ok());
    let timeout = Duration::from_millis(50);
    assert_eq!(
        alice.call(Msg::Ask, timeout).await,
        Err(CallError::Timeout {
            kind: "clock",
            timeout
        })
    );
    open.send(()).unwrap();
    // The late request was handled after all (its answer discarded).
    assert_eq!(alice.call(Msg::Ask, SECOND).await, Ok(5));

    // Not accepted.
    let idle = Entities::new(
        Clock {
            sessions: Arc::new(Sessions::new()),
        },
        KindConfig::default(),
    )
    .unwrap();
    assert_eq!(
        idle.call(&1, Msg::Ask, SECOND).await,
        Err(CallError::Refused(Refusal::KindNotRunning {
            kind: "clock"
        }))
    );
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_or_every_period_until_cancelled_and_are_bounded() {
    let (clocks, _, tree) = start(KindConfig {
        max_timers: 3,
        ..KindConfig::default()
    })
    .await;
    assert!(
        clocks
            .send(&1, Msg::After(Duration::from_millis(20), 7))
            .is_ok()
    );
    every(&clocks, 1, 0, false).await;
    eventually("ticks and the one-shot", LIMIT, || {
        let clocks = clocks.clone();
        async move {
            let dial = read(&clocks, 1).await;
            dial.ticks[0] >= 5 && dial.fired == [7]
        }
    })
    .await;
    // The one-shot is gone once fired; the periodic timer stays armed.
    assert_eq!(clocks.call(&1, Msg::Timers, SECOND).await, Ok(1));
    assert_eq!(clocks.timers_armed(), 1, "the kind's gauge");

    // Bounded: one periodic and two one-shots pending make three; a fourth is refused.
    assert!(clocks.send(&1, Msg::After(LIMIT * 6, 100)).is_ok());
    assert!(clocks.send(&1, Msg::After(LIMIT * 6, 101)).is_ok());
    let refused = clocks
        .call(
            &1,
            |armed| Msg::Every {
                label: 1,
                period: Duration::from_millis(10),
                kept: false,
                armed,
            },
            SECOND,
        )
        .await
        .unwrap();
    assert_eq!(
        refused,
        Err(TimerError::TooMany {
            kind: "clock",
            limit: 3
        })
    );

    // Cancelled: no tick after the cancel is handled, even one already queued.
    assert!(clocks.send(&1, Msg::CancelAll).is_ok());
    let at_cancel = read(&clocks, 1).await.ticks[0];
    assert_eq!(clocks.call(&1, Msg::Timers, SECOND).await, Ok(0));
    assert_eq!(clocks.timers_armed(), 0);
    barrier(&clocks, 1, Duration::from_millis(60), 8).await;
    assert_eq!(read(&clocks, 1).await.ticks[0], at_cancel);
    assert_eq!(clocks.timer_ticks_skipped(), 0);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_cancels_the_incarnations_timers_and_re_arms_the_kept_ones() {
    let (clocks, _, tree) = start(KindConfig::default()).await;
    every(&clocks, 1, 0, false).await;
    every(&clocks, 1, 1, true).await;
    eventually("both tick", LIMIT, || {
        let clocks = clocks.clone();
        async move {
            let dial = read(&clocks, 1).await;
            dial.ticks[0] >= 3 && dial.ticks[1] >= 3
        }
    })
    .await;
    assert!(clocks.send(&1, Msg::Crash).is_ok());
    // The restarted incarnation has the kept timer only.
    assert_eq!(clocks.call(&1, Msg::Timers, SECOND).await, Ok(1));
    // The crashed incarnation's state (its two timers) may be dropped just after the restart.
    eventually("the kind's gauge counts the kept timer only", LIMIT, || {
        let armed = clocks.timers_armed();
        async move { armed == 1 }
    })
    .await;
    let after_crash = read(&clocks, 1).await;
    barrier(&clocks, 1, Duration::from_millis(80), 9).await;
    let later = read(&clocks, 1).await;
    assert_eq!(
        later.ticks[0], after_crash.ticks[0],
        "the unkept timer died with its incarnation (a tick it had queued is ignored)"
    );
    assert!(
        later.ticks[1] > after_crash.ticks[1],
        "the kept timer ticks on: {after_crash:?} then {later:?}"
    );
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_do_not_keep_an_entity_from_passivating_and_passivation_ends_its_timers() {
    let (clocks, _, tree) = start(KindConfig {
        passivate_after: Some(Duration::from_millis(100)),
        ..KindConfig::default()
    })
    .await;
    every(&clocks, 1, 0, true).await;
    eventually("passivated while its timer ticks", LIMIT, || {
        let passivated = clocks.passivated_snapshot(&1).is_some();
        async move { passivated }
    })
    .await;
    // Reactivated by a message: its state came back, its timers did not.
    // The passivated incarnation's state (its timers with it) is dropped as it stops.
    eventually("passivation dropped the timer", LIMIT, || {
        let armed = clocks.timers_armed();
        async move { armed == 0 }
    })
    .await;
    let dial = read(&clocks, 1).await;
    assert!(dial.ticks[0] > 0, "the ticks were handled: {dial:?}");
    assert_eq!(clocks.call(&1, Msg::Timers, SECOND).await, Ok(0));
    tree.stop().await.unwrap();
}

/// A connection's outbound queue as a channel the test reads.
fn connection() -> (Arc<dyn Outbound>, mpsc::Receiver<Frame>) {
    let (sender, receiver) = mpsc::channel(16);
    (Arc::new(sender), receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_entity_hears_its_sessions_connect_disconnect_resume_and_close_in_order() {
    let (clocks, sessions, tree) = start(KindConfig::default()).await;
    let id = SessionId(5);
    let (session, _) = sessions.open(id);
    session.bind(&clocks, 1);
    let (first, _first) = connection();
    let (second, _second) = connection();
    sessions.attach(id, first.clone());
    let grace = Duration::from_millis(1_500);
    sessions.detach_with_grace(id, &first, grace);
    sessions.attach(id, second.clone());
    // A second login replaces the connection: a resume too.
    let (third, _third) = connection();
    sessions.attach(id, third);
    sessions.close(id);
    // A session closed before any connection (a refused handshake) tells nobody.
    let (never, _) = sessions.open(SessionId(6));
    never.bind(&clocks, 1);
    sessions.discard_unattached(SessionId(6));
    eventually("every event handled", LIMIT, || {
        let clocks = clocks.clone();
        async move { read(&clocks, 1).await.events.len() >= 5 }
    })
    .await;
    assert_eq!(
        read(&clocks, 1).await.events,
        [
            "5 connected",
            "5 disconnected 1.5s",
            "5 resumed",
            "5 resumed",
            "5 closed"
        ]
    );
    // An entity that ended is not brought back to hear that its player left (an arrival would
    // activate it).
    let id = SessionId(9);
    let (session, _) = sessions.open(id);
    session.bind(&clocks, 4);
    let (link, _link) = connection();
    sessions.attach(id, link.clone());
    assert!(clocks.is_active(&4), "Connected activates the bound entity");
    assert!(clocks.send(&4, Msg::End).is_ok());
    eventually("the entity ended", LIMIT, || {
        let active = clocks.is_active(&4);
        async move { !active }
    })
    .await;
    // The events are pushed (or not) before these calls return.
    sessions.detach_with_grace(id, &link, grace);
    sessions.close(id);
    assert!(!clocks.is_active(&4), "no activation to hear a departure");
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_broadcasts_one_encoding_to_its_members_and_keeps_them_across_a_restart() {
    let (clocks, sessions, tree) = start(KindConfig::default()).await;
    let mut inboxes = Vec::new();
    for player in 1..=3 {
        let (outbound, inbox) = connection();
        sessions.attach(SessionId(player), outbound);
        inboxes.push(inbox);
        assert!(clocks.send(&9, Msg::Join(SessionId(player))).is_ok());
    }
    // Joining twice changes nothing.
    assert!(clocks.send(&9, Msg::Join(SessionId(2))).is_ok());
    assert!(clocks.send(&9, Msg::Shout(1)).is_ok());
    let mut first = Vec::new();
    for inbox in &mut inboxes {
        first.push(
            tokio::time::timeout(LIMIT, inbox.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for frame in &first {
        // One encoding: the very same bytes for everyone.
        assert_eq!(frame.wire().as_ptr(), first[0].wire().as_ptr());
        assert_eq!((frame.header().seq, frame.header().reply), (1, false));
    }
    // The room crashes; its group is part of its checkpointed state.
    assert!(clocks.send(&9, Msg::Crash).is_ok());
    assert!(clocks.send(&9, Msg::Leave(SessionId(1))).is_ok());
    assert!(clocks.send(&9, Msg::Shout(2)).is_ok());
    for inbox in &mut inboxes[1..] {
        let frame = tokio::time::timeout(LIMIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        let TestMessage::Chat(chat) = TestMessage::validate(frame).unwrap() else {
            panic!("a chat");
        };
        assert_eq!(chat.text.as_str(), "shout 2");
    }
    let members: Vec<SessionId> = read(&clocks, 9).await.group.members().collect();
    assert_eq!(members, [SessionId(2), SessionId(3)]);
    assert!(
        inboxes[0].try_recv().is_err(),
        "the member who left heard nothing"
    );
    tree.stop().await.unwrap();
}
