//! Shutdown policies, exit classification, auto-shutdown of significant children, and the
//! dynamic supervisor's limit.

use std::time::Duration;

use garrison_supervisor::{
    AutoShutdown, ChildSpec, Error, EventKind, ExitReason, Restart, Shutdown, Start,
    SupervisorBuilder,
};
use garrison_tests::probe::{Command, Log, Probe, eventually};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_kills_a_child_that_ignores_stop() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("polite", Probe::start(&log)))
        .child(
            ChildSpec::new("stubborn", Probe::start(&log))
                .shutdown(Shutdown::Timeout(Duration::from_millis(50))),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let stubborn = root.child::<Command>("stubborn").await.unwrap();
    stubborn.send(Command::Hang).unwrap();
    // Taken from the mailbox means its handler is running and will not return.
    eventually("the hang taken", LIMIT, || {
        let taken = stubborn.depth() == 0;
        async move { taken }
    })
    .await;
    tokio::time::timeout(LIMIT, root.stop())
        .await
        .expect("stop finishes")
        .unwrap();
    let mut stops = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Stopped(reason) = event.kind {
            stops.push((event.child.to_string(), reason));
        }
    }
    assert_eq!(
        stops,
        [
            ("stubborn".into(), ExitReason::Killed),
            ("polite".into(), ExitReason::Shutdown)
        ]
    );
    // A killed child does not run its stop hook; the polite one does.
    assert_eq!(
        log.entries(),
        ["start polite#1", "start stubborn#1", "stop polite#1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_classified_exactly() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .intensity(10, Duration::from_secs(60))
        .child(ChildSpec::new("w", Probe::start(&log)).restart(Restart::Transient))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let worker = root.child::<Command>("w").await.unwrap();
    let mut exits = Vec::new();
    for (round, command) in [Command::Panic, Command::Fail, Command::Stop]
        .into_iter()
        .enumerate()
    {
        worker.send(command).unwrap();
        eventually("the exit", LIMIT, || {
            while let Ok(event) = events.try_recv() {
                if let EventKind::Exited(reason) = event.kind {
                    exits.push(reason);
                }
            }
            let count = exits.len();
            async move { count > round }
        })
        .await;
        if exits.last() != Some(&ExitReason::Normal) {
            eventually("the restart", LIMIT, || {
                let n = worker.incarnations();
                async move { n as usize > round + 1 }
            })
            .await;
            let _ = root.which_children().await;
        }
    }
    assert_eq!(
        exits,
        [
            ExitReason::Panic("boom w".into()),
            ExitReason::Error("failed w".into()),
            ExitReason::Normal
        ]
    );
    assert!(exits[0].is_abnormal() && exits[1].is_abnormal() && !exits[2].is_abnormal());
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brutal_kill_is_classified_as_killed() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("w", Probe::start(&log)).shutdown(Shutdown::BrutalKill))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    root.terminate_child("w").await.unwrap();
    let event = events.try_recv().unwrap();
    assert_eq!(event.kind, EventKind::Stopped(ExitReason::Killed));
    assert_eq!(
        log.entries(),
        ["start w#1"],
        "a brutally killed child runs no stop hook"
    );
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_blocked_in_its_handler_ends_before_its_next_incarnation_starts() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("w", Probe::start(&log)).shutdown(Shutdown::BrutalKill))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let worker = root.child::<Command>("w").await.unwrap();
    let (entered, inside) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel();
    worker
        .send(Command::Block {
            entered,
            release: released,
        })
        .unwrap();
    inside.await.unwrap();
    // The kill ends the incarnation's actor; its handler goes on blocking its thread.
    let restart = tokio::spawn({
        let root = root.clone();
        async move { root.restart_child("w").await }
    });
    // A bounded look for what must never happen: the child reported stopped, or the next
    // incarnation started, while the killed one's handler still runs.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut stops = Vec::new();
    while tokio::time::Instant::now() < deadline {
        assert_eq!(log.entries(), ["start w#1"], "two incarnations ran at once");
        assert!(
            !restart.is_finished(),
            "the restart did not wait for the handler"
        );
        while let Ok(event) = events.try_recv() {
            if let EventKind::Stopped(reason) = event.kind {
                stops.push(reason);
            }
        }
        assert!(stops.is_empty(), "reported stopped while its handler ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send(()).unwrap();
    tokio::time::timeout(LIMIT, restart)
        .await
        .expect("the restart finishes")
        .unwrap()
        .unwrap();
    assert_eq!(log.entries(), ["start w#1", "end w#1", "start w#2"]);
    while let Ok(event) = events.try_recv() {
        if let EventKind::Stopped(reason) = event.kind {
            stops.push(reason);
        }
    }
    assert_eq!(stops, [ExitReason::Killed]);
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_stopping_itself_is_waited_for_before_its_next_incarnation_starts() {
    for shutdown in [Shutdown::Timeout(LIMIT), Shutdown::Infinity] {
        let log = Log::default();
        let root = SupervisorBuilder::new("root")
            .child(ChildSpec::new("w", Probe::start(&log)).shutdown(shutdown))
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let worker = root.child::<Command>("w").await.unwrap();
        let (entered, inside) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel();
        // The worker stops itself (ractor's stop is then taken) and blocks in its stop hook.
        worker
            .send(Command::StopBlocked {
                entered,
                release: released,
            })
            .unwrap();
        inside.await.unwrap();
        // Stopping it now finds its stop taken: it must still wait for the stop to end.
        let restart = tokio::spawn({
            let root = root.clone();
            async move { root.restart_child("w").await }
        });
        // A bounded look for what must never happen: the next incarnation starting while the
        // stopping one's hook still runs.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < deadline {
            assert_eq!(
                log.entries(),
                ["start w#1"],
                "{shutdown:?}: two incarnations ran at once"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).unwrap();
        tokio::time::timeout(LIMIT, restart)
            .await
            .expect("the restart finishes")
            .unwrap()
            .unwrap();
        assert_eq!(incarnation_of(&root, "w").await, 2);
        assert_eq!(
            log.entries(),
            ["start w#1", "stop w#1", "start w#2"],
            "{shutdown:?}"
        );
        root.stop().await.unwrap();
    }
}

/// Which incarnation of child `id` of `root` runs now.
async fn incarnation_of(root: &garrison_supervisor::SupervisorRef, id: &str) -> u64 {
    let worker = root.child::<Command>(id).await.unwrap();
    let (reply, incarnation) = tokio::sync::oneshot::channel();
    worker.send(Command::Incarnation(reply)).unwrap();
    tokio::time::timeout(LIMIT, incarnation)
        .await
        .unwrap_or_else(|_| panic!("child {id} does not answer"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_crashed_incarnations_state_is_dropped_before_the_next_one_starts() {
    // Killed while idle (ractor keeps the state of an actor killed between messages), killed
    // in a handler that ignores the stop (its task is aborted), crashed (the handler panics).
    #[derive(Debug)]
    enum Then {
        Idle,
        Hang,
        Panic,
    }
    let cases = [
        (Shutdown::BrutalKill, Then::Idle),
        (Shutdown::Timeout(Duration::from_millis(50)), Then::Hang),
        (Shutdown::Timeout(LIMIT), Then::Panic),
    ];
    for (shutdown, then) in cases {
        let log = Log::default();
        let root = SupervisorBuilder::new("root")
            .child(ChildSpec::new("w", Probe::start(&log)).shutdown(shutdown))
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let worker = root.child::<Command>("w").await.unwrap();
        worker.send(Command::LogDrop).unwrap();
        assert_eq!(incarnation_of(&root, "w").await, 1);
        match then {
            Then::Idle => {}
            Then::Hang => {
                // In the handler before the restart: a hang still queued would be the next
                // incarnation's.
                let (entered, inside) = tokio::sync::oneshot::channel();
                worker.send(Command::HangSaying(entered)).unwrap();
                inside.await.unwrap();
            }
            Then::Panic => {
                worker.send(Command::Panic).unwrap();
            }
        }
        if let Then::Panic = then {
            eventually("the restart", LIMIT, || async { log.len() >= 3 }).await;
        } else {
            tokio::time::timeout(LIMIT, root.restart_child("w"))
                .await
                .expect("the restart finishes")
                .unwrap();
        }
        assert_eq!(incarnation_of(&root, "w").await, 2);
        assert_eq!(
            log.entries(),
            ["start w#1", "drop w#1", "start w#2"],
            "{shutdown:?}, {then:?}"
        );
        tokio::time::timeout(LIMIT, root.stop())
            .await
            .expect("the tree stops")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_significant_child_ends_its_supervisor_under_auto_shutdown() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .auto_shutdown(AutoShutdown::AnySignificant)
        .child(ChildSpec::new("other", Probe::start(&log)))
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
    root.child::<Command>("match")
        .await
        .unwrap()
        .send(Command::Stop)
        .unwrap();
    let reason = tokio::time::timeout(LIMIT, root.wait())
        .await
        .expect("auto shutdown");
    assert_eq!(reason, ExitReason::Shutdown);
    assert_eq!(
        log.entries(),
        [
            "start other#1",
            "start match#1",
            "stop match#1",
            "stop other#1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_significant_waits_for_the_last_significant_child() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .auto_shutdown(AutoShutdown::AllSignificant)
        .child(
            ChildSpec::new("p1", Probe::start(&log))
                .restart(Restart::Transient)
                .significant(true),
        )
        .child(
            ChildSpec::new("p2", Probe::start(&log))
                .restart(Restart::Transient)
                .significant(true),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    root.child::<Command>("p1")
        .await
        .unwrap()
        .send(Command::Stop)
        .unwrap();
    eventually("p1 stopped", LIMIT, || {
        let stopped = log.entries().contains(&"stop p1#1".to_string());
        async move { stopped }
    })
    .await;
    assert_eq!(
        root.count_children().await.unwrap().active,
        1,
        "one significant child left: still running"
    );
    root.child::<Command>("p2")
        .await
        .unwrap()
        .send(Command::Stop)
        .unwrap();
    let reason = tokio::time::timeout(LIMIT, root.wait())
        .await
        .expect("auto shutdown");
    assert_eq!(reason, ExitReason::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_supervisor_refuses_past_max_children() {
    let log = Log::default();
    let rooms = SupervisorBuilder::dynamic("rooms", 2).build().unwrap();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("rooms", Start::supervisor(rooms)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let rooms = root.supervisor("rooms").await.unwrap();
    rooms
        .start_child(ChildSpec::new("room-1", Probe::start(&log)))
        .await
        .unwrap();
    rooms
        .start_child(ChildSpec::new("room-2", Probe::start(&log)))
        .await
        .unwrap();
    assert_eq!(
        rooms
            .start_child(ChildSpec::new("room-3", Probe::start(&log)))
            .await,
        Err(Error::MaxChildren {
            supervisor: "rooms".into(),
            max: 2
        })
    );
    rooms.terminate_child("room-1").await.unwrap();
    rooms
        .start_child(ChildSpec::new("room-3", Probe::start(&log)))
        .await
        .unwrap();
    assert_eq!(
        rooms
            .start_child(ChildSpec::new("room-2", Probe::start(&log)))
            .await,
        Err(Error::DuplicateChild {
            supervisor: "rooms".into(),
            child: "room-2".into()
        })
    );
    let ids: Vec<String> = rooms
        .which_children()
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(ids, ["room-2", "room-3"]);
    root.stop().await.unwrap();
    assert_eq!(
        log.entries(),
        [
            "start room-1#1",
            "start room-2#1",
            "stop room-1#1",
            "start room-3#1",
            "stop room-3#1",
            "stop room-2#1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_dynamic_child_is_removed_alone_under_remove_child() {
    let log = Log::default();
    let rooms = SupervisorBuilder::dynamic("rooms", 10)
        .intensity(1, Duration::from_secs(60))
        .crash_loop(garrison_supervisor::CrashLoop::RemoveChild)
        .build()
        .unwrap();
    let root = SupervisorBuilder::new("root")
        .child(ChildSpec::new("rooms", Start::supervisor(rooms)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let rooms = root.supervisor("rooms").await.unwrap();
    rooms
        .start_child(ChildSpec::new("poison", Probe::start(&log)))
        .await
        .unwrap();
    rooms
        .start_child(ChildSpec::new("healthy", Probe::start(&log)))
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let poison = rooms.child::<Command>("poison").await.unwrap();
    poison.send(Command::Panic).unwrap();
    eventually("first restart", LIMIT, || {
        let n = poison.incarnations();
        async move { n == 2 }
    })
    .await;
    poison.send(Command::Panic).unwrap();
    let mut gave_up = false;
    eventually("the give-up", LIMIT, || {
        while let Ok(event) = events.try_recv() {
            gave_up |= &*event.child == "poison" && event.kind == EventKind::GaveUp;
        }
        let done = gave_up;
        async move { done }
    })
    .await;
    let ids: Vec<String> = rooms
        .which_children()
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(ids, ["healthy"], "only the crash-looping child is gone");
    assert!(matches!(
        poison.send(Command::Note(1)),
        Err(garrison_supervisor::SendError::Closed(_))
    ));
    let healthy = rooms.child::<Command>("healthy").await.unwrap();
    assert_eq!(
        healthy.call(Command::Incarnation).await.unwrap(),
        1,
        "the sibling was never restarted"
    );
    assert_eq!(
        root.count_children().await.unwrap().active,
        1,
        "the kind's supervisor did not escalate"
    );
    root.stop().await.unwrap();
}
