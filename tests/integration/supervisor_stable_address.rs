//! A child's handle survives restarts: later messages reach the new incarnation, queued ones
//! are delivered to it in order, and the message that crashed is never redelivered.

use std::time::Duration;

use garrison_supervisor::{ChildSpec, Overflow, SendError, Sent, Start, SupervisorBuilder};
use garrison_tests::probe::{Command, Log, Probe, eventually};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reaches_the_next_incarnation() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("p", Probe::start(&log)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let probe = root.child::<Command>("p").await.unwrap();
    assert_eq!(probe.call(Command::Incarnation).await.unwrap(), 1);
    probe.send(Command::Panic).unwrap();
    // The same handle, never refreshed, reaches incarnation 2.
    eventually("the restart", LIMIT, || {
        let restarted = probe.incarnations() == 2;
        async move { restarted }
    })
    .await;
    assert_eq!(probe.call(Command::Incarnation).await.unwrap(), 2);
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_survive_and_the_crashing_one_is_not_redelivered() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("p", Probe::start(&log)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let probe = root.child::<Command>("p").await.unwrap();
    // Hold the probe on a gate so everything below queues behind it.
    let (open, gate) = oneshot::channel();
    probe.send(Command::Gate(gate)).unwrap();
    probe.send(Command::Note(0)).unwrap();
    probe.send(Command::Panic).unwrap();
    for n in 1..=5 {
        probe.send(Command::Note(n)).unwrap();
    }
    // The gate is taken; the other seven wait in the child's own mailbox, not ractor's.
    eventually("the gate taken", LIMIT, || {
        let queued = probe.depth() == 7;
        async move { queued }
    })
    .await;
    open.send(()).unwrap();
    eventually("the queued notes", LIMIT, || {
        let done = log.len() >= 8;
        async move { done }
    })
    .await;
    let _ = root.which_children().await.unwrap();
    assert_eq!(
        log.entries(),
        [
            "start p#1",
            "msg p#1 0",
            "start p#2",
            "msg p#2 1",
            "msg p#2 2",
            "msg p#2 3",
            "msg p#2 4",
            "msg p#2 5"
        ]
    );
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_hands_the_message_back_or_evicts_the_oldest() {
    let log = Log::default();
    let probe = Probe {
        log: log.clone(),
        failures: Default::default(),
    };
    let rejecting = probe.clone();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new(
            "reject",
            Start::worker_with_mailbox(move || rejecting.clone(), 2, Overflow::Reject),
        ))
        .child(ChildSpec::new(
            "latest",
            Start::worker_with_mailbox(move || probe.clone(), 2, Overflow::DropOldest),
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    for id in ["reject", "latest"] {
        let child = root.child::<Command>(id).await.unwrap();
        let (_open, gate) = oneshot::channel();
        child.send(Command::Gate(gate)).unwrap();
        eventually("the gate taken", LIMIT, || {
            let empty = child.depth() == 0;
            async move { empty }
        })
        .await;
        assert!(matches!(child.send(Command::Note(1)), Ok(Sent::Queued)));
        assert!(matches!(child.send(Command::Note(2)), Ok(Sent::Queued)));
        match (id, child.send(Command::Note(3))) {
            ("reject", Err(SendError::Full(Command::Note(3)))) => {}
            ("latest", Ok(Sent::Evicted(Command::Note(1)))) => {}
            (id, other) => panic!("{id}: unexpected {other:?}"),
        }
        assert_eq!(child.depth(), 2);
    }
    let kill = tokio::time::timeout(LIMIT, root.terminate_child("reject"));
    kill.await.expect("terminate in time").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_close_when_the_tree_stops() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("p", Probe::start(&log)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let probe = root.child::<Command>("p").await.unwrap();
    root.stop().await.unwrap();
    assert!(matches!(
        probe.send(Command::Note(1)),
        Err(SendError::Closed(Command::Note(1)))
    ));
}
