//! A child gone for good closes its mailbox: every later send fails with `Closed`, and every
//! message still queued reaches the mailbox's undelivered hook with the reason, so no accepted
//! message vanishes: after an auto-shutdown, a give-up, a shutdown, a dynamic supervisor's restart
//! and an abandoned start alike.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use garrison_supervisor::{
    Abandon, AutoShutdown, ChildRef, ChildSpec, CrashLoop, EventKind, ExitReason, HandlerError,
    MailboxClosed, Restart, SendError, Shutdown, Start, SupervisorBuilder, Worker, WorkerContext,
};
use garrison_tests::probe::{Command, Log, Probe, eventually};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(10);

/// What an undelivered hook received: the message as text, and why.
type Undelivered = Arc<Mutex<Vec<(String, MailboxClosed)>>>;

fn collect(handle: &ChildRef<Command>) -> Undelivered {
    let undelivered = Undelivered::default();
    let sink = undelivered.clone();
    handle.on_undelivered(move |message, why| {
        sink.lock()
            .unwrap()
            .push((format!("{message:?}"), why.clone()));
    });
    undelivered
}

/// A root supervisor over one dynamic supervisor `rooms` built by `kind`; returns the root and
/// the dynamic supervisor's handle.
async fn under_root(
    kind: garrison_supervisor::SupervisorBuilder,
) -> (
    garrison_supervisor::SupervisorRef,
    garrison_supervisor::SupervisorRef,
) {
    let kind = kind.build().unwrap();
    let rooms = kind.handle();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("rooms", Start::supervisor(kind)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    (root, rooms)
}

fn closed<M: Send + 'static>(handle: &ChildRef<M>, message: M) -> bool {
    matches!(handle.send(message), Err(SendError::Closed(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_auto_shuts_down_closes_every_mailbox_in_its_tree() {
    let log = Log::default();
    let zone = SupervisorBuilder::new("zone")
        .child(ChildSpec::new("npc", Probe::start(&log)))
        .build()
        .unwrap();
    let root = SupervisorBuilder::new("root")
        .auto_shutdown(AutoShutdown::AnySignificant)
        .child(ChildSpec::new("other", Probe::start(&log)))
        .child(ChildSpec::new("zone", Start::supervisor(zone)))
        .child(
            ChildSpec::new("match", Probe::start(&log))
                .restart(Restart::Transient)
                .significant(true),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let other = root.child::<Command>("other").await.unwrap();
    let npc = root
        .supervisor("zone")
        .await
        .unwrap()
        .child::<Command>("npc")
        .await
        .unwrap();
    let matched = root.child::<Command>("match").await.unwrap();
    matched.send(Command::Stop).unwrap();
    let reason = tokio::time::timeout(LIMIT, root.wait())
        .await
        .expect("auto shutdown");
    assert_eq!(reason, ExitReason::Shutdown);
    for (name, handle) in [("other", &other), ("npc", &npc), ("match", &matched)] {
        assert!(
            closed(handle, Command::Note(1)),
            "{name} still accepts sends after its root stopped itself"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_hands_the_queue_behind_the_crash_loop_to_the_undelivered_hook() {
    let log = Log::default();
    let (root, rooms) = under_root(
        SupervisorBuilder::dynamic("rooms", 10)
            .intensity(1, Duration::from_secs(60))
            .crash_loop(CrashLoop::RemoveChild),
    )
    .await;
    let spec = ChildSpec::new("w", Probe::start(&log)).restart(Restart::Transient);
    let handle = spec.handle::<Command>().unwrap();
    let undelivered = collect(&handle);
    rooms.start_child(spec).await.unwrap();

    // Everything is queued behind a gate, so the crashes happen with the notes still waiting.
    let (open, gate) = oneshot::channel();
    handle.send(Command::Gate(gate)).unwrap();
    handle.send(Command::Panic).unwrap();
    handle.send(Command::Panic).unwrap();
    for note in 1..=5 {
        handle.send(Command::Note(note)).unwrap();
    }
    open.send(()).unwrap();
    eventually("the give-up", LIMIT, || {
        let done = undelivered.lock().unwrap().len() == 5;
        async move { done }
    })
    .await;
    let undelivered = undelivered.lock().unwrap().clone();
    let notes: Vec<&str> = undelivered.iter().map(|(note, _)| note.as_str()).collect();
    assert_eq!(
        notes,
        ["Note(1)", "Note(2)", "Note(3)", "Note(4)", "Note(5)"],
        "in the order sent"
    );
    for (_, why) in &undelivered {
        assert_eq!(
            *why,
            MailboxClosed::GaveUp(ExitReason::Panic("boom w".into()))
        );
    }
    assert!(closed(&handle, Command::Note(6)));
    assert!(
        !log.entries().iter().any(|line| line.starts_with("msg")),
        "no note was handled: {:?}",
        log.entries()
    );
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_still_queued_when_the_tree_stops_reach_the_undelivered_hook() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("w", Probe::start(&log)).shutdown(Shutdown::BrutalKill))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let handle = root.child::<Command>("w").await.unwrap();
    let undelivered = collect(&handle);
    let (_held, gate) = oneshot::channel::<()>();
    handle.send(Command::Gate(gate)).unwrap();
    handle.send(Command::Note(1)).unwrap();
    handle.send(Command::Note(2)).unwrap();
    eventually("the gate to be taken", LIMIT, || {
        let taken = handle.depth() == 2;
        async move { taken }
    })
    .await;
    root.stop().await.unwrap();
    assert_eq!(
        *undelivered.lock().unwrap(),
        [
            ("Note(1)".to_owned(), MailboxClosed::Shutdown),
            ("Note(2)".to_owned(), MailboxClosed::Shutdown),
        ]
    );
    assert!(closed(&handle, Command::Note(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_supervisor_that_restarts_closes_its_former_childrens_mailboxes() {
    let log = Log::default();
    let (root, rooms) = under_root(SupervisorBuilder::dynamic("rooms", 10)).await;
    let spec = ChildSpec::new("w", Probe::start(&log));
    let handle = spec.handle::<Command>().unwrap();
    rooms.start_child(spec).await.unwrap();
    root.restart_child("rooms").await.unwrap();
    assert_eq!(rooms.count_children().await.unwrap().specs, 0);
    assert!(
        closed(&handle, Command::Note(1)),
        "a child the restarted supervisor no longer has must not accept messages"
    );
    root.stop().await.unwrap();
}

/// Starts once; every later start abandons: a state that can never be restored.
struct Fragile {
    log: Log,
}

impl Worker for Fragile {
    type Message = Command;
    type State = ();

    async fn start(&self, context: &WorkerContext<Command>) -> Result<(), HandlerError> {
        if context.incarnation() > 1 {
            self.log.push("abandon".into());
            return Err(Abandon("the checkpoint cannot be restored".into()).into());
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: &WorkerContext<Command>,
        message: Command,
        _: &mut (),
    ) -> Result<(), HandlerError> {
        match message {
            Command::Panic => panic!("boom"),
            Command::Gate(gate) => {
                let _ = gate.await;
            }
            other => self.log.push(format!("{other:?}")),
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_start_is_not_retried_and_hands_its_queue_over() {
    let log = Log::default();
    let (root, rooms) =
        under_root(SupervisorBuilder::dynamic("rooms", 10).intensity(10, Duration::from_secs(60)))
            .await;
    let mut events = root.events().unwrap();
    let worker_log = log.clone();
    let spec = ChildSpec::new(
        "w",
        Start::worker(move || Fragile {
            log: worker_log.clone(),
        }),
    )
    .restart(Restart::Transient);
    let handle = spec.handle::<Command>().unwrap();
    let undelivered = collect(&handle);
    rooms.start_child(spec).await.unwrap();
    let (open, gate) = oneshot::channel();
    handle.send(Command::Gate(gate)).unwrap();
    handle.send(Command::Panic).unwrap();
    handle.send(Command::Note(1)).unwrap();
    open.send(()).unwrap();
    eventually("the queue handed over", LIMIT, || {
        let done = !undelivered.lock().unwrap().is_empty();
        async move { done }
    })
    .await;
    let abandoned = ExitReason::Abandoned("the checkpoint cannot be restored".into());
    assert_eq!(
        *undelivered.lock().unwrap(),
        [(
            "Note(1)".to_owned(),
            MailboxClosed::Exited(abandoned.clone())
        )]
    );
    assert_eq!(log.entries(), ["abandon"], "one abandoned start, no retry");
    let mut exits = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Exited(reason) = event.kind {
            exits.push(reason);
        }
    }
    assert_eq!(exits, [ExitReason::Panic("boom".into()), abandoned]);
    assert!(closed(&handle, Command::Note(2)));
    assert_eq!(rooms.count_children().await.unwrap().specs, 0);
    root.stop().await.unwrap();
}
