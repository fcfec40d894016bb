//! Restart intensity: exceeding it stops the children in reverse and escalates to the parent
//! exactly once; starts that fail count toward it; backoff delays restarts and holds messages.

use std::time::Duration;

use garrison_supervisor::{
    Backoff, ChildSpec, Error, EventKind, ExitReason, Start, Strategy, SupervisorBuilder,
};
use garrison_tests::probe::{Command, Log, Probe, StartFailures, eventually};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intensity_exceeded_escalates_to_the_parent_exactly_once() {
    let log = Log::default();
    let inner = SupervisorBuilder::new("inner")
        .intensity(1, Duration::from_secs(60))
        .child(ChildSpec::new("a", Probe::start(&log)))
        .child(ChildSpec::new("w", Probe::start(&log)))
        .build()
        .unwrap();
    let root = SupervisorBuilder::new("root")
        .intensity(5, Duration::from_secs(60))
        .child(ChildSpec::new("inner", Start::supervisor(inner)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let worker = root
        .supervisor("inner")
        .await
        .unwrap()
        .child::<Command>("w")
        .await
        .unwrap();
    worker.send(Command::Panic).unwrap(); // restart 1 of 1: allowed
    eventually("first restart", LIMIT, || {
        let restarted = worker.incarnations() == 2;
        async move { restarted }
    })
    .await;
    worker.send(Command::Panic).unwrap(); // restart 2 of 1: escalate
    eventually("the parent restarting inner", LIMIT, || {
        let restarted = worker.incarnations() == 3;
        async move { restarted }
    })
    .await;
    let _ = root.which_children().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(format!(
            "{}/{} {:?}",
            event.supervisor, event.child, event.kind
        ));
    }
    let escalations = seen
        .iter()
        .filter(|line| line.ends_with(" Escalated"))
        .count();
    assert_eq!(escalations, 1, "{seen:#?}");
    let parent_restarts = seen
        .iter()
        .filter(|line| line.starts_with("root/inner Restarting"))
        .count();
    assert_eq!(parent_restarts, 1, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|line| line.starts_with("root/inner Exited(Escalated(")),
        "{seen:#?}"
    );
    // Inner stopped its children in reverse before failing, then the parent restarted it whole.
    assert_eq!(
        log.entries(),
        [
            "start a#1",
            "start w#1",
            "start w#2",
            "stop a#1",
            "start a#2",
            "start w#3"
        ],
        "w#2 crashed, so only a stops in order; then inner restarts a and w"
    );
    root.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_escalates_reports_why_and_closes_its_handles() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .intensity(0, Duration::from_secs(60))
        .child(ChildSpec::new("w", Probe::start(&log)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let worker = root.child::<Command>("w").await.unwrap();
    worker.send(Command::Fail).unwrap();
    let reason = tokio::time::timeout(LIMIT, root.wait())
        .await
        .expect("root exits");
    assert!(
        matches!(&reason, ExitReason::Escalated(why) if why.contains("error: failed w")),
        "{reason:?}"
    );
    assert!(worker.send(Command::Note(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_fails_to_start_fails_the_tree_start_and_earlier_children_stop() {
    let log = Log::default();
    let failures = StartFailures::default();
    failures.fail_next(1);
    let error = SupervisorBuilder::new("root")
        .child(ChildSpec::new("a", Probe::start(&log)))
        .child(ChildSpec::new("b", Probe::start_failing(&log, &failures)))
        .child(ChildSpec::new("c", Probe::start(&log)))
        .build()
        .unwrap()
        .start()
        .await
        .expect_err("b refuses to start");
    assert_eq!(
        error,
        Error::StartFailed {
            supervisor: "root".into(),
            child: "b".into(),
            reason: "refused to start b".into()
        }
    );
    assert_eq!(log.entries(), ["start a#1", "start-failed b#1", "stop a#1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restarts_count_toward_intensity() {
    let log = Log::default();
    let failures = StartFailures::default();
    let root = SupervisorBuilder::new("root")
        .intensity(2, Duration::from_secs(60))
        .child(ChildSpec::new("w", Probe::start_failing(&log, &failures)))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    failures.fail_next(u32::MAX);
    root.child::<Command>("w")
        .await
        .unwrap()
        .send(Command::Panic)
        .unwrap();
    let reason = tokio::time::timeout(LIMIT, root.wait())
        .await
        .expect("root escalates");
    assert!(matches!(reason, ExitReason::Escalated(_)), "{reason:?}");
    // The crash, then two failed restarts (allowed), then the third failure escalates.
    assert_eq!(
        log.entries(),
        ["start w#1", "start-failed w#2", "start-failed w#2"]
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_restarts_and_holds_messages_meanwhile() {
    let log = Log::default();
    let root = SupervisorBuilder::new("root")
        .strategy(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(ChildSpec::new("w", Probe::start(&log)).backoff(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            random_factor: 0.0,
            reset_after: Duration::from_secs(10),
        }))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let worker = root.child::<Command>("w").await.unwrap();
    let mut delays = Vec::new();
    for round in 0..3u32 {
        let crashed_at = tokio::time::Instant::now();
        worker.send(Command::Panic).unwrap();
        worker.send(Command::Note(round)).unwrap();
        eventually("the restart", LIMIT, || {
            let restarted = worker.incarnations() == u64::from(round) + 2;
            async move { restarted }
        })
        .await;
        delays.push(crashed_at.elapsed());
    }
    let mut announced = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Restarting { delay, .. } = event.kind {
            announced.push(delay);
        }
    }
    assert_eq!(
        announced,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    for (waited, announced) in delays.iter().zip(&announced) {
        assert!(
            waited >= announced,
            "restarted after {waited:?}, before its {announced:?} backoff"
        );
    }
    let _ = worker.call(Command::Incarnation).await.unwrap();
    let notes: Vec<String> = log
        .entries()
        .into_iter()
        .filter(|line| line.starts_with("msg"))
        .collect();
    assert_eq!(
        notes,
        ["msg w#2 0", "msg w#3 1", "msg w#4 2"],
        "messages sent during backoff were held"
    );
    root.stop().await.unwrap();
}

/// The restart delays announced in `events` so far.
fn announced_delays(
    events: &mut tokio::sync::broadcast::Receiver<garrison_supervisor::LifecycleEvent>,
) -> Vec<Duration> {
    let mut delays = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Restarting { delay, .. } = event.kind {
            delays.push(delay);
        }
    }
    delays
}

#[tokio::test(start_paused = true)]
async fn backoff_keeps_growing_while_restarts_fail_and_resets_only_after_staying_up() {
    let log = Log::default();
    let failures = StartFailures::default();
    let root = SupervisorBuilder::new("root")
        .intensity(20, Duration::from_secs(60))
        .child(
            ChildSpec::new("w", Probe::start_failing(&log, &failures)).backoff(Backoff {
                random_factor: 0.0,
                ..Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
            }),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut events = root.events().unwrap();
    let worker = root.child::<Command>("w").await.unwrap();
    // One crash, then six restarts that fail to start, then one that stays up.
    failures.fail_next(6);
    worker.send(Command::Panic).unwrap();
    eventually("the restart that starts", LIMIT, || {
        let up = worker.incarnations() == 2;
        async move { up }
    })
    .await;
    assert_eq!(
        announced_delays(&mut events),
        [100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis),
        "a failed start never ran for reset_after, so the delay keeps growing to its max"
    );
    // Up for longer than reset_after (the scenario, on the paused clock): the next crash starts
    // the delays over.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    worker.send(Command::Panic).unwrap();
    eventually("the restart after staying up", LIMIT, || {
        let up = worker.incarnations() == 3;
        async move { up }
    })
    .await;
    assert_eq!(announced_delays(&mut events), [Duration::from_millis(100)]);
    // A crash soon after that start does not reset: it is the second attempt.
    worker.send(Command::Panic).unwrap();
    eventually("the next restart", LIMIT, || {
        let up = worker.incarnations() == 4;
        async move { up }
    })
    .await;
    assert_eq!(announced_delays(&mut events), [Duration::from_millis(200)]);
    root.stop().await.unwrap();
}

#[test]
fn backoff_grows_exponentially_up_to_its_maximum() {
    let backoff = Backoff {
        min: Duration::from_millis(10),
        max: Duration::from_secs(1),
        random_factor: 0.5,
        reset_after: Duration::ZERO,
    };
    let delays: Vec<_> = (0..10).map(|attempt| backoff.delay(attempt, 0.0)).collect();
    assert_eq!(delays[..4], [10, 20, 40, 80].map(Duration::from_millis));
    assert_eq!(delays[9], Duration::from_secs(1));
    assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(15));
}
